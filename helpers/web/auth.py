"""Who is calling: bearer tokens the application issues per user, kept only as keyed hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading


class TokenBook:
    """User -> token, stored as HMAC-SHA256 digests under a key of this process.

    A token is returned once, by ``issue``; the book keeps only its digest, so a leaked copy of
    the book (or of a log) holds nothing a caller could present.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._users: dict[str, str] = {}  # digest -> user
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenBook(tokens={len(self._users)})"

    def _digest(self, token: str) -> str:
        return hmac.new(self._key, token.encode("utf-8", "replace"), hashlib.sha256).hexdigest()

    def issue(self, user: str) -> str:
        """A new token for ``user`` (any earlier ones stay valid until revoked)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._users[self._digest(token)] = user
        return token

    def user_of(self, token: str | None) -> str | None:
        """The user a presented token belongs to, or ``None``."""
        if not token:
            return None
        digest = self._digest(token)
        with self._lock:
            for known, user in self._users.items():
                if hmac.compare_digest(known, digest):
                    return user
        return None

    def revoke(self, user: str) -> int:
        """Forget every token of ``user``; return how many there were."""
        with self._lock:
            gone = [d for d, u in self._users.items() if u == user]
            for digest in gone:
                del self._users[digest]
        return len(gone)

    def digests(self) -> list[str]:
        """What the book stores (for showing that no token is kept in the clear)."""
        with self._lock:
            return sorted(self._users)
