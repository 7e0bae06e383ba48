"""The session store for a server: SQLite through ``aiosqlite`` (off the event loop), or PostgreSQL.

Notebook 04's ``SqliteStore`` runs each statement on the calling thread, which is fine in a
notebook but would stall every other request of a server while SQLite waits for the disk. This
engine keeps the same SQL and interface and runs the statements on aiosqlite's own thread.
PostgreSQL already goes through psycopg's async API.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiosqlite

from helpers.errors import StoreDown
from helpers.run import relative
from helpers.store import open_store
from helpers.store.base import SessionStore, Statement, refused


class AsyncSqliteStore(SessionStore):
    """The store in one SQLite file, each statement run on aiosqlite's worker thread."""

    engine = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # one connection: a transaction's statements stay together

    async def connect(self) -> AsyncSqliteStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = aiosqlite.connect(self.path, isolation_level=None)
        # aiosqlite's worker thread is not a daemon, and Python waits for such threads *before*
        # it runs the exit hooks that would close the store: a kernel that ends without closing
        # it would hang. As a daemon it ends with the process; ``close_now`` stops it sooner.
        db._thread.daemon = True
        self._db = await db
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000"):
            await self._db.execute(f"PRAGMA {pragma}")
        return self

    async def execute(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple], int]:
        async with self._lock:
            async with self._open().execute(sql, args) as cursor:
                rows = await cursor.fetchall()
                return [tuple(r) for r in rows], cursor.rowcount

    async def transaction(
        self, statements: list[Statement], guard: Statement | None = None
    ) -> list[int]:
        async with self._lock:
            db = self._open()
            await db.execute("BEGIN IMMEDIATE")
            try:
                if guard is not None:  # a fenced write (see SessionStore.transaction)
                    async with db.execute(*guard) as cursor:
                        if cursor.rowcount != 1:
                            raise refused(guard[1][0], guard[1][1])
                counts = []
                for sql, args in statements:
                    async with db.execute(sql, args) as cursor:
                        counts.append(cursor.rowcount)
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")
            return counts

    def _open(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreDown(f"the session store ({self.describe()}) is closed")
        return self._db

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    def close_now(self) -> None:
        """Stop the worker thread without awaiting (for clean-up hooks at exit)."""
        db, self._db = self._db, None
        if db is not None:
            db.stop()

    def describe(self) -> str:
        return f"SQLite file {relative(self.path)}"


async def open_web_store(folder: Path, schema: str = "") -> SessionStore:
    """PostgreSQL when ``DATABASE_URL`` is set (notebook 04's engine), else SQLite via aiosqlite."""
    if os.environ.get("DATABASE_URL"):
        return await open_store(folder, schema=schema)
    store = await AsyncSqliteStore(Path(folder) / "sessions.db").connect()
    await store.create_tables()
    return store


async def forget_session_rows(store: SessionStore, session_id: str) -> int:
    """Delete one session's rows in every table (its files, lease and owner), in one transaction;
    return the file rows deleted."""
    tables = (*store.PER_SESSION_TABLES, "sessions")
    counts = await store.transaction(
        [(f"DELETE FROM {table} WHERE session_id = ?", (session_id,)) for table in tables]
    )
    return counts[list(tables).index("session_files")]


async def stored_orphans(store: SessionStore, older_than_s: float) -> list[str]:
    """Ids of sessions whose files are stored but that no user owns, untouched for ``older_than_s``.

    With ``session_fs`` the runtime keeps nothing on its own disk, so ``client.list_sessions()``
    lists none of these sessions (and ``delete_session`` answers "Session file not found"): the
    store, where the runtime wrote them, is the only place to find what a crashed request left.
    """
    rows, _ = await store.execute(
        "SELECT session_id FROM session_files"
        " WHERE session_id NOT IN (SELECT session_id FROM sessions)"
        " GROUP BY session_id HAVING MAX(modified_at) < ? ORDER BY session_id",
        (time.time() - older_than_s,),
    )
    return [r[0] for r in rows]
