"""Plumbing for the notebooks: runtime, backends, stand-in model, display and widgets."""
