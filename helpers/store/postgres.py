"""The session store's PostgreSQL engine (psycopg 3, async), and its URL handling."""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

from helpers.errors import StoreError
from helpers.store.base import SessionStore, Statement, finish, refused

CONNECT_TIMEOUT_S = 5
# PostgreSQL text cannot hold NUL: it is stored as _ESC + U+E002, and _ESC itself as _ESC + U+E001.
_ESC = "\ue000"


class PostgresStore(SessionStore):
    """The store in a PostgreSQL database, through psycopg 3's async connection."""

    engine = "postgresql"

    def __init__(self, url: str, schema: str = "") -> None:
        self.url, self.schema = url, schema
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def connect(self) -> PostgresStore:
        """Open the connection; raise ``StoreError`` with a clear, password-free message."""
        import psycopg

        parts = check_url(self.url)
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
        except psycopg.OperationalError as exc:
            raise StoreError(_why(exc, parts, self.describe())) from None
        if self.schema:
            await self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await self._conn.execute(f'SET search_path TO "{self.schema}"')
        return self

    async def execute(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple], int]:
        return await finish(self._execute(sql.replace("?", "%s"), args))

    async def _execute(self, sql: str, args: tuple[Any, ...]) -> tuple[list[tuple], int]:
        async with self._lock:
            await self._reconnect()
            cursor = await self._conn.execute(sql, args)
            rows = await cursor.fetchall() if cursor.description else []
            return rows, cursor.rowcount

    async def _reconnect(self) -> None:
        """Open the connection again if it was closed (a server restart, a broken socket)."""
        if self._conn is not None and self._conn.closed:
            await self.connect()

    def encode(self, text: str) -> str:
        if "\x00" not in text and _ESC not in text:
            return text
        return text.replace(_ESC, _ESC + "\ue001").replace("\x00", _ESC + "\ue002")

    def decode(self, text: str) -> str:
        if _ESC not in text:
            return text
        return text.replace(_ESC + "\ue002", "\x00").replace(_ESC + "\ue001", _ESC)

    async def transaction(
        self, statements: list[Statement], guard: Statement | None = None
    ) -> list[int]:
        # Each statement runs to its end even when the caller is cancelled: a cancellation that
        # reached psycopg mid-query would close the connection (every later request would fail).
        return await finish(self._transaction(statements, guard))

    async def _transaction(self, statements: list[Statement], guard: Statement | None) -> list[int]:
        async with self._lock:
            await self._reconnect()
            async with self._conn.transaction():
                if guard is not None:
                    cursor = await self._conn.execute(guard[0].replace("?", "%s"), guard[1])
                    if cursor.rowcount != 1:
                        raise refused(guard[1][0], guard[1][1])
                counts = []
                for sql, args in statements:
                    cursor = await self._conn.execute(sql.replace("?", "%s"), args)
                    counts.append(cursor.rowcount)
                return counts

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    def describe(self) -> str:
        where = f", schema {self.schema}" if self.schema else ""
        return f"PostgreSQL {safe_url(self.url)}{where}"

    def drop_schema(self) -> None:
        """Remove this store's schema and every row in it (synchronous: for clean-up hooks)."""
        import psycopg

        if self.schema:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def safe_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_url(url: str) -> urllib.parse.SplitResult:
    """Refuse anything that is not ``postgresql://user:password@host:port/dbname``."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise StoreError(
            "DATABASE_URL must look like postgresql://user:password@host:port/dbname "
            f"(got {safe_url(url) if parts else 'an unparsable value'})"
        )
    return parts


def _why(exc: Exception, parts: urllib.parse.SplitResult, where: str) -> str:
    text = str(exc)
    if parts.password:
        text = text.replace(parts.password, "***")
    if "password authentication failed" in text:
        reason = f"password authentication failed for user {parts.username!r}: check DATABASE_URL"
    elif "does not exist" in text and "database" in text:
        reason = f"database {parts.path.lstrip('/')!r} does not exist: create it first"
    elif "refused" in text or "timeout" in text or "could not translate" in text:
        reason = "no PostgreSQL server answers there: start it, or fix host and port in the URL"
    else:
        reason = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
    return f"Cannot open the session store ({where}): {reason}."
