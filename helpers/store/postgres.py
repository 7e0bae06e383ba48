"""The session store's PostgreSQL engine (psycopg 3, async), and its URL handling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from helpers.errors import StoreDown, StoreError
from helpers.store.base import NOW_POSTGRES, SessionStore, Statement, finish, refused

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5
# PostgreSQL text cannot hold NUL: it is stored as _ESC + U+E002, and _ESC itself as _ESC + U+E001.
_ESC = "\ue000"
log = logging.getLogger(__name__)


@dataclass
class Timeouts:
    """How long the database may take: the server's own limits, the pool's, and ours."""

    statement_s: float = 2.0  # statement_timeout: the server ends a statement running longer
    lock_s: float = 1.5  # lock_timeout: the longest a statement waits for a row another holds
    idle_in_transaction_s: float = 5.0  # the server ends a transaction its client left hanging
    pool_s: float = 2.0  # the longest a call waits for a free connection of the pool
    call_s: float = 2.5  # the longest a call waits for its answer (a stalled server answers none)
    pool_min: int = 4  # kept open and ready: a call does not wait for a new connection
    pool_max: int = 8


class PostgresStore(SessionStore):
    """The store in a PostgreSQL database, through a pool of psycopg 3 async connections.

    Each call takes a connection of its own from the pool, so a statement stuck on a row lock or a
    stalled server holds one connection, never the others' turn. The server bounds statements,
    lock waits and idle transactions; a call that gets no answer within ``call_s`` closes its
    connection (the pool replaces it) and raises ``StoreDown``.
    """

    engine = "postgresql"
    NOW = NOW_POSTGRES
    MIGRATION_LOCK = ("SELECT pg_advisory_xact_lock(720211)", ())

    def __init__(self, url: str, schema: str = "", timeouts: Timeouts | None = None) -> None:
        self.url, self.schema = url, schema
        self.timeouts = timeouts or Timeouts()
        self._pool: Any = None

    async def connect(self) -> PostgresStore:
        """Open the pool; raise ``StoreError`` with a clear, password-free message."""
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        parts = check_url(self.url)
        try:  # one plain connection first: its error says what is wrong (the pool's only waits)
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
        except psycopg.OperationalError as exc:
            raise StoreError(_why(exc, parts, self.describe())) from None
        async with conn:
            if self.schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=self.timeouts.pool_min,
            max_size=self.timeouts.pool_max,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            configure=self._configure,
            timeout=self.timeouts.pool_s,
            reconnect_timeout=3600,
            open=False,
            name="session-store",
        )
        await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        return self

    async def _configure(self, conn: Any) -> None:
        """Each new connection: the server's time limits and this store's schema."""
        t = self.timeouts
        settings = [
            f"SET {name} = {int(seconds * 1000)}"
            for name, seconds in (
                ("statement_timeout", t.statement_s),
                ("lock_timeout", t.lock_s),
                ("idle_in_transaction_session_timeout", t.idle_in_transaction_s),
            )
        ]
        if self.schema:
            settings.append(f'SET search_path TO "{self.schema}"')
        await conn.execute("; ".join(settings))  # one round trip

    async def execute(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple], int]:
        async def run(conn: Any) -> tuple[list[tuple], int]:
            cursor = await conn.execute(sql.replace("?", "%s"), args)
            rows = await cursor.fetchall() if cursor.description else []
            return rows, cursor.rowcount

        return await finish(self._call(run))

    async def transaction(
        self, statements: list[Statement], guard: Statement | None = None
    ) -> list[int]:
        async def run(conn: Any) -> list[int]:
            async with conn.transaction():
                if guard is not None:
                    cursor = await conn.execute(guard[0].replace("?", "%s"), guard[1])
                    if cursor.rowcount != 1:
                        raise refused(guard[1][0], guard[1][1])
                counts = []
                for sql, args in statements:
                    cursor = await conn.execute(sql.replace("?", "%s"), args)
                    counts.append(cursor.rowcount)
                return counts

        # Run to the end (or to ``call_s``) even when the caller is cancelled: a write is either
        # committed or not, never cut while its outcome is unknown to us.
        return await finish(self._call(run))

    async def _call(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work`` on a connection of the pool, within ``call_s`` of getting it."""
        from psycopg_pool import PoolTimeout

        if self._pool is None:
            raise StoreDown("the database is closed")
        try:
            conn = await self._pool.getconn()
        except PoolTimeout:
            raise StoreDown("the database gave no connection in time") from None
        task = asyncio.ensure_future(work(conn))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeouts.call_s)
            if not done:  # no answer: drop this connection (its state is unknown), not the pool
                log.warning(
                    "a statement got no answer in %.1f s: connection closed", self.timeouts.call_s
                )
                conn.pgconn.finish()
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 1.0)
                raise StoreDown("the database did not answer in time")
            return task.result()
        finally:
            await self._pool.putconn(conn)

    def encode(self, text: str) -> str:
        if "\x00" not in text and _ESC not in text:
            return text
        return text.replace(_ESC, _ESC + "\ue001").replace("\x00", _ESC + "\ue002")

    def decode(self, text: str) -> str:
        if _ESC not in text:
            return text
        return text.replace(_ESC + "\ue002", "\x00").replace(_ESC + "\ue001", _ESC)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=5)

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
