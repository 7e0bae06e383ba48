"""The model behind the runtime (every notebook): the backends (local stand-in, GitHub Copilot,
any OpenAI-compatible endpoint) and the deterministic stand-in model, in three parts: reading the
request (prompts), composing the answer (replies), serving it over HTTP (standin).
"""
