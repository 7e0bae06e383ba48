"""Plumbing for the notebooks: the runtime, the backends, the stand-in model, display and widgets."""
