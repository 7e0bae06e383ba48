"""The session store in one SQLite file (nothing to install), its statements off the event loop.

Each statement runs on a thread of aiosqlite's, never on the event loop: a statement that waits for
SQLite's write lock (another process in a write, or one frozen inside it) holds that thread, not
every other coroutine of the notebook or the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from helpers.errors import StoreDown
from helpers.run import relative
from helpers.store.base import SessionStore, Statement, finish, refused

T = TypeVar("T")


class SqliteStore(SessionStore):
    """The store in one SQLite file, on a few aiosqlite connections (each with its own thread).

    Each call takes a connection of its own, so a writer waiting for SQLite's lock (at most
    ``busy_s``) holds one thread and one connection, never the event loop or the other calls;
    reads go on meanwhile (WAL). A call that gets no connection within ``wait_s`` is ``StoreDown``.
    """

    engine = "sqlite"

    def __init__(
        self, path: Path, connections: int = 4, busy_s: float = 1.5, wait_s: float = 2.0
    ) -> None:
        self.path = Path(path)
        self.connections, self.busy_s, self.wait_s = connections, busy_s, wait_s
        self._all: list[aiosqlite.Connection] = []
        self._free: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()

    async def connect(self) -> SqliteStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(self.connections):
            db = aiosqlite.connect(self.path, isolation_level=None)
            # aiosqlite's worker thread is not a daemon, and Python waits for such threads
            # *before* it runs the exit hooks that would close the store: a kernel that ends
            # without closing it would hang. As a daemon it ends with the process.
            db._thread.daemon = True
            db = await db
            pragmas = ("journal_mode=WAL", "synchronous=NORMAL")
            for pragma in (*pragmas, f"busy_timeout={int(self.busy_s * 1000)}"):
                await db.execute(f"PRAGMA {pragma}")
            self._all.append(db)
            self._free.put_nowait(db)
        return self

    async def execute(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple], int]:
        async def run(db: aiosqlite.Connection) -> tuple[list[tuple], int]:
            async with db.execute(sql, args) as cursor:
                rows = await cursor.fetchall()
                return [tuple(r) for r in rows], cursor.rowcount

        return await finish(self._call(run))

    async def transaction(
        self, statements: list[Statement], guard: Statement | None = None
    ) -> list[int]:
        async def run(db: aiosqlite.Connection) -> list[int]:
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

        # Run to the end even when the caller is cancelled: a connection goes back to the others
        # only outside a transaction (each statement is bounded by SQLite's busy timeout).
        return await finish(self._call(run))

    async def _call(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        if not self._all:
            raise StoreDown("the database is closed")
        try:
            db = await asyncio.wait_for(self._free.get(), self.wait_s)
        except TimeoutError:
            raise StoreDown("the database gave no connection in time") from None
        try:
            return await work(db)
        except sqlite3.OperationalError as exc:  # "database is locked" after busy_s, and kin
            raise StoreDown(f"the database did not answer ({exc})") from exc
        finally:
            if db in self._all:  # not one closed meanwhile (a call in flight during ``close``)
                self._free.put_nowait(db)

    async def close(self) -> None:
        dbs, self._all, self._free = self._all, [], asyncio.Queue()
        for db in dbs:
            with contextlib.suppress(Exception):
                await db.close()

    def close_now(self) -> None:
        """Stop the worker threads without awaiting (for clean-up hooks at exit)."""
        dbs, self._all, self._free = self._all, [], asyncio.Queue()
        for db in dbs:
            db.stop()

    def describe(self) -> str:
        return f"SQLite file {relative(self.path)}"
