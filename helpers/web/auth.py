"""Who is calling: bearer tokens the application issues per user, kept in the database as keyed
digests, with an expiry and a revocation, valid on every instance that shares the database."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from helpers.errors import StoreDown, StoreError
from helpers.store.base import SessionStore

KEY_ENV = "WEB_TOKEN_KEY"
DAYS = 30.0
SYNC_TIMEOUT_S = 5.0
Run = Callable[[str, tuple[Any, ...]], tuple[list[tuple], int]]


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
    of a log) holds nothing a caller could present. ``issue``, ``revoke`` and ``list`` are for
    people (the command line, a notebook cell) and run on a short connection of their own;
    ``user_of`` runs on every request, through the service's own pool.
    """

    def __init__(self, store: SessionStore | None = None, days: float = DAYS) -> None:
        self.days = days
        self._store: SessionStore | None = None
        self._key = b""
        if store is not None:
            self.attach(store)

    def __repr__(self) -> str:
        try:
            count = str(len(self.digests()))
        except Exception:
            count = "?"
        return f"TokenBook(tokens={count})"

    def attach(self, store: SessionStore) -> TokenBook:
        """Keep the tokens in ``store``'s database (its key read, or made there once)."""
        self._store = store
        env = os.environ.get(KEY_ENV, "")
        if env:
            self._key = env.encode()
            return self
        fresh = secrets.token_hex(32)
        with self._sync() as run:
            run(
                "INSERT INTO web_settings (name, value) VALUES ('token_key', ?) "
                "ON CONFLICT (name) DO NOTHING",
                (fresh,),
            )
            rows, _ = run("SELECT value FROM web_settings WHERE name = 'token_key'", ())
        self._key = bytes.fromhex(rows[0][0])
        return self

    def _digest(self, token: str) -> str:
        if not self._key:
            raise StoreError("this token book keeps no tokens yet: attach it to a store")
        return hmac.new(self._key, token.encode("utf-8", "replace"), hashlib.sha256).hexdigest()

    def issue(self, user: str, days: float | None = None) -> str:
        """A new token for ``user``, valid ``days`` (default ``self.days``) unless revoked."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        life = (self.days if days is None else days) * 86400
        with self._sync() as run:
            run(
                "INSERT INTO web_tokens (id, digest, owner, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (secrets.token_hex(6), self._digest(token), user, now, now + life),
            )
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

    def revoke(self, who: str) -> int:
        """Revoke every token of the user ``who``, or the one token whose id is ``who``.

        Returns:
            How many tokens were revoked now.
        """
        with self._sync() as run:
            _, changed = run(
                "UPDATE web_tokens SET revoked_at = ? "
                "WHERE (owner = ? OR id = ?) AND revoked_at IS NULL",
                (time.time(), who, who),
            )
        return changed

    def list(self, user: str | None = None) -> list[TokenInfo]:
        """Every token (of ``user``), oldest first: id, user, times; never the token."""
        with self._sync() as run:
            rows, _ = run(
                "SELECT id, owner, created_at, expires_at, revoked_at FROM web_tokens "
                "WHERE owner = ? OR ? ORDER BY created_at, id",
                (user or "", user is None),
            )
        return [TokenInfo(r[0], r[1], r[2], r[3], r[4] is not None) for r in rows]

    def digests(self) -> list[str]:
        """What the database keeps of the tokens in force (to show no token is in the clear)."""
        with self._sync() as run:
            rows, _ = run(
                "SELECT digest FROM web_tokens WHERE revoked_at IS NULL AND expires_at > ? "
                "ORDER BY digest",
                (time.time(),),
            )
        return [r[0] for r in rows]

    @contextlib.contextmanager
    def _sync(self) -> Iterator[Run]:
        if self._store is None:
            raise StoreError("this token book keeps no tokens yet: attach it to a store")
        with sync_connection(self._store) as run:
            yield run


@contextlib.contextmanager
def sync_connection(store: SessionStore) -> Iterator[Run]:
    """A short connection of its own to ``store``'s database, every statement bounded in time."""
    if store.engine == "sqlite":
        db = sqlite3.connect(store.path, timeout=SYNC_TIMEOUT_S, isolation_level=None)  # type: ignore[attr-defined]
        try:

            def run_sqlite(sql: str, args: tuple[Any, ...]) -> tuple[list[tuple], int]:
                cursor = db.execute(sql, args)
                return cursor.fetchall(), cursor.rowcount

            yield run_sqlite
        finally:
            db.close()
        return
    import psycopg

    ms = int(SYNC_TIMEOUT_S * 1000)
    options = f"-c statement_timeout={ms} -c lock_timeout={ms}"
    schema = getattr(store, "schema", "")
    if schema:
        options += f" -c search_path={schema}"
    url = store.url  # type: ignore[attr-defined]
    with psycopg.connect(
        url, autocommit=True, connect_timeout=int(SYNC_TIMEOUT_S), options=options
    ) as conn:

        def run_pg(sql: str, args: tuple[Any, ...]) -> tuple[list[tuple], int]:
            cursor = conn.execute(sql.replace("?", "%s"), args)  # type: ignore[arg-type]
            return (cursor.fetchall() if cursor.description else []), cursor.rowcount

        yield run_pg
