"""The service's database: SQLite through ``aiosqlite`` (off the event loop), or PostgreSQL.

Notebook 04's ``SqliteStore`` runs each statement on the calling thread, which is fine in a
notebook but would stall every other request of a server while SQLite waits for the disk. This
engine keeps the same SQL and interface and runs the statements on aiosqlite's threads.
PostgreSQL goes through a pool of psycopg's async connections. Beside the sessions, the database
keeps what the web service must not lose on a restart (schema version 2, below).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from helpers.errors import StoreDown, StoreError
from helpers.run import relative
from helpers.store import open_store
from helpers.store.base import SessionStore, Statement, finish, refused
from helpers.store.schema import register_migration, upgrade

T = TypeVar("T")

# Version 2: what the web service keeps besides sessions. Users' files (the file tools' and the
# /files routes'), sign-in tokens as keyed digests, and settings such as the digests' key.
register_migration(
    2,
    "web service: users' files, sign-in tokens, settings",
    """CREATE TABLE IF NOT EXISTS user_files (
        owner TEXT NOT NULL,
        path TEXT NOT NULL,
        content TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        modified_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (owner, path))""",
    """CREATE TABLE IF NOT EXISTS web_tokens (
        id TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS web_tokens_owner ON web_tokens (owner)",
    """CREATE TABLE IF NOT EXISTS web_settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
)


class AsyncSqliteStore(SessionStore):
    """The store in one SQLite file, on a few aiosqlite connections (each with its own thread).

    Each call takes a connection of its own, so a writer waiting for SQLite's lock (at most
    ``busy_s``) holds one thread and one connection, never the event loop or the other calls;
    reads go on meanwhile (WAL). A call that gets no connection within ``wait_s`` is ``StoreDown``.
    """

    engine = "sqlite"

    def __init__(self, path: Path, size: int = 4, busy_s: float = 1.5, wait_s: float = 2.0) -> None:
        self.path = Path(path)
        self.size, self.busy_s, self.wait_s = size, busy_s, wait_s
        self._all: list[aiosqlite.Connection] = []
        self._free: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()

    async def connect(self) -> AsyncSqliteStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(self.size):
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


async def open_web_store(data: Path, schema: str = "") -> SessionStore:
    """PostgreSQL when ``DATABASE_URL`` is set (in ``schema``), else ``data/sessions.db``.

    Either way the tables are brought up to the newest schema (``helpers.store.schema``), the
    web service's own (users' files, tokens) included.
    """
    if os.environ.get("DATABASE_URL"):
        return await open_store(data, schema=schema)
    store = await AsyncSqliteStore(Path(data) / "sessions.db").connect()
    try:
        await upgrade(store)
    except BaseException:
        await store.close()
        raise
    return store


def instance_id(data: Path, given: str = "") -> tuple[str, int]:
    """This instance's stable name (``given``, else the one kept in ``data/instance``, made once),
    and an open file that locks the name for this process (close it at stop).

    Raises:
        StoreError: a bad name, or a process of this data folder runs under that name already
            (it would give back the other's leases at start: each instance needs its own name).
    """
    path = Path(data) / "instance"
    path.parent.mkdir(parents=True, exist_ok=True)
    name = given or (path.read_text().strip() if path.exists() else "")
    if not name:
        name = secrets.token_hex(4)
        path.write_text(name + "\n")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
        raise StoreError(f"instance name {name!r}: use 1-40 letters, digits, '-' or '_'")
    fd = os.open(Path(data) / f"instance-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(
            f"instance {name!r} is running already on this data folder: give this one its own "
            "name (--instance)"
        ) from None
    return name, fd


async def free_leases_of(store: SessionStore, label: str) -> int:
    """Delete every lease held by a request of ``label`` (holders ``label#...``); return them.

    Only for this instance's own label at start: its previous process is gone. Leases of other
    holders are left to run out (their holder may be a stalled machine that wakes up).
    """
    prefix = label + "#"
    _, changed = await store.execute(
        "DELETE FROM session_leases WHERE substr(holder, 1, ?) = ?", (len(prefix), prefix)
    )
    return changed


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
