"""Secret-looking values out of what a notebook prints: keys named like a token, key or password."""

from __future__ import annotations

_SECRET_KEYS = ("api_key", "apikey", "token", "bearer", "password", "secret", "authorization")


def redacted(value: object) -> object:
    """A copy of ``value`` (dicts and lists, nested) with secret-looking keys' values as ``***``."""
    if isinstance(value, dict):
        return {
            k: "***" if any(s in str(k).lower() for s in _SECRET_KEYS) and v else redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value
