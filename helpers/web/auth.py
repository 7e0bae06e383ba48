"""Who is calling: bearer tokens the application issues per user, kept in the database as keyed
digests, with an expiry and a revocation, valid on every instance that shares the database."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass

from helpers.errors import StoreDown, StoreError
from helpers.store.base import SessionStore

KEY_ENV = "WEB_TOKEN_KEY"
DAYS = 30.0


@dataclass
class TokenInfo:
    """One token as listed: never the token, nor its digest."""

    id: str
    user: str
    created_at: float
    expires_at: float
    revoked: bool


class TokenBook:
    """User -> token, stored as HMAC-SHA256 digests under one key for every instance.

    The key comes from ``$WEB_TOKEN_KEY``, else it is made once and kept in the database. A token
    is returned once, by ``issue``; the database keeps only its digest, so a leaked copy of it (or
    of a log) holds nothing a caller could present. Every call is a statement through the store.
    """

    def __init__(self, days: float = DAYS) -> None:
        self.days = days
        self._store: SessionStore | None = None
        self._key = b""
        self._issued: set[str] = set()  # ids issued here and in force (for ``repr`` only)

    def __repr__(self) -> str:
        return f"TokenBook(tokens={len(self._issued)})"

    async def attach(self, store: SessionStore) -> TokenBook:
        """Keep the tokens in ``store``'s database (its key read, or made there once)."""
        env = os.environ.get(KEY_ENV, "")
        if env:
            self._store, self._key = store, env.encode()
            return self
        await store.execute(
            "INSERT INTO web_settings (name, value) VALUES ('token_key', ?) "
            "ON CONFLICT (name) DO NOTHING",
            (secrets.token_hex(32),),
        )
        rows, _ = await store.execute("SELECT value FROM web_settings WHERE name = 'token_key'")
        self._store, self._key = store, bytes.fromhex(rows[0][0])
        return self

    def _db(self) -> SessionStore:
        if self._store is None:
            raise StoreError("this token book keeps no tokens yet: attach it to a store")
        return self._store

    def _digest(self, token: str) -> str:
        return hmac.new(self._key, token.encode("utf-8", "replace"), hashlib.sha256).hexdigest()

    async def issue(self, user: str, days: float | None = None) -> str:
        """A new token for ``user``, valid ``days`` (default ``self.days``) unless revoked."""
        store = self._db()
        token, token_id, now = secrets.token_urlsafe(32), secrets.token_hex(6), time.time()
        life = (self.days if days is None else days) * 86400
        await store.execute(
            "INSERT INTO web_tokens (id, digest, owner, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (token_id, self._digest(token), user, now, now + life),
        )
        self._issued.add(token_id)
        return token

    async def user_of(self, token: str | None) -> str | None:
        """The user a presented token belongs to (unexpired, not revoked), or ``None``.

        Raises:
            StoreDown: the database did not answer (the caller answers 503, not 401).
        """
        if not token or self._store is None:
            return None
        try:
            rows, _ = await self._store.execute(
                "SELECT owner FROM web_tokens "
                "WHERE digest = ? AND revoked_at IS NULL AND expires_at > ?",
                (self._digest(token), time.time()),
            )
        except StoreDown:
            raise
        except Exception as exc:
            raise StoreDown(f"the database did not answer ({type(exc).__name__})") from exc
        return rows[0][0] if rows else None

    async def revoke(self, who: str) -> int:
        """Revoke every token of the user ``who``, or the one token whose id is ``who``.

        Returns:
            How many tokens were revoked now.
        """
        store = self._db()
        gone, _ = await store.execute(
            "SELECT id FROM web_tokens WHERE (owner = ? OR id = ?) AND revoked_at IS NULL",
            (who, who),
        )
        _, changed = await store.execute(
            "UPDATE web_tokens SET revoked_at = ? WHERE (owner = ? OR id = ?) "
            "AND revoked_at IS NULL",
            (time.time(), who, who),
        )
        self._issued -= {r[0] for r in gone}
        return changed

    async def list(self) -> list[TokenInfo]:
        """Every token, oldest first: id, user, times; never the token."""
        rows, _ = await self._db().execute(
            "SELECT id, owner, created_at, expires_at, revoked_at FROM web_tokens "
            "ORDER BY created_at, id"
        )
        return [TokenInfo(r[0], r[1], r[2], r[3], r[4] is not None) for r in rows]

    async def digests(self) -> list[str]:
        """What the database keeps of the tokens in force (to show no token is in the clear)."""
        rows, _ = await self._db().execute(
            "SELECT digest FROM web_tokens WHERE revoked_at IS NULL AND expires_at > ? "
            "ORDER BY digest",
            (time.time(),),
        )
        return [r[0] for r in rows]
