"""Serving many users on one runtime (notebook 03): who owns which session, per-user credentials,
one turn per session at a time, sessions prepared ahead, orphans swept, a drain before a stop.
"""
