"""The model behind the runtime (every notebook): the backends (local stand-in, GitHub Copilot,
any OpenAI-compatible endpoint) and the deterministic stand-in model server.
"""
