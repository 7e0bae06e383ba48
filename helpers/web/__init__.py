"""A web backend (notebook 07): the patterns of notebooks 01-06 behind HTTP. A FastAPI app on
uvicorn with bearer tokens per user, replies streamed as Server-Sent Events while the model writes
them, a small page to try it, and the production rules of 03-05 (ownership, a lock and a lease per
turn, the prepared-ahead pool, sweep, drain, the TCP options). Notebook 09 operates it: a usage
ledger per model call, budgets and rates, a policy and an audit on tools (``usage.py``).
``python -m helpers.web`` runs it.
"""
