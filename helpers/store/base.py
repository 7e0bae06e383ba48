"""The session store's interface over one SQL dialect: who owns each session (one row per
session, made by the application before any turn), the session's files as rows, and leases.

A file's content is kept as the parts it was written and appended in (``session_file_parts``, in
``seq`` order, read back concatenated), so an append to ``events.jsonl`` costs the appended
bytes, not the whole history. (A store made before this layout, with a ``content`` column in
``session_files``, is not migrated: start a new one.)

The tables are made by an ordered list of migrations (``helpers.store.schema``, run by
``open_store``); the ``schema_version`` table records which have run, so a store upgrades in place
when it is opened.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from helpers.errors import WriteRefused
from helpers.serving.registry import SESSIONS_TABLE, new_session_id, refusal

# The ownership table of notebook 03's registry, plus ``ready``: set once the session's
# ``create_session`` returned (a create cut part-way leaves rows a resume cannot load).
STORE_SESSIONS_TABLE = SESSIONS_TABLE.rstrip(")") + ",\n        ready INTEGER NOT NULL DEFAULT 0)"

TABLES = (
    STORE_SESSIONS_TABLE,
    """CREATE TABLE IF NOT EXISTS session_files (
        session_id TEXT NOT NULL,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        modified_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (session_id, path))""",
    """CREATE TABLE IF NOT EXISTS session_file_parts (
        session_id TEXT NOT NULL,
        path TEXT NOT NULL,
        seq INTEGER NOT NULL,
        content TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (session_id, path, seq))""",
    """CREATE TABLE IF NOT EXISTS session_leases (
        session_id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL)""",
)


@dataclass
class Row:
    """One file or folder of a session, as stored."""

    session_id: str
    path: str
    content: str
    kind: str
    created_at: float
    modified_at: float


_COLUMNS = "session_id, path, kind, created_at, modified_at"
# A file's row with its parts in order (one result row per part; a folder has none).
_WITH_PARTS = (
    "SELECT f.session_id, f.path, f.kind, f.created_at, f.modified_at, p.content "
    "FROM session_files f LEFT JOIN session_file_parts p "
    "ON p.session_id = f.session_id AND p.path = f.path"
)
_NEXT_PART = (
    "INSERT INTO session_file_parts (session_id, path, seq, content, bytes) "
    "SELECT ?, ?, COALESCE(MAX(seq), 0) + 1, ?, ? FROM session_file_parts "
    "WHERE session_id = ? AND path = ?"
)
_INSIDE = "substr(path, 1, ?) = ?"
# "Now" as the database's clock says it, in UNIX seconds: every lease expiry is written and judged
# by it, so that app servers whose clocks disagree still agree on who holds a lease.
NOW_SQLITE = "((julianday('now') - 2440587.5) * 86400.0)"
NOW_POSTGRES = "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)"
# The fence: the first statement of every write made for a request. It matches (and, on
# PostgreSQL, locks until the transaction ends) the lease row only while ``holder`` holds it
# unexpired and the session still has its row in ``sessions``; no match, no write.
_FENCE = (
    "UPDATE session_leases SET holder = holder "
    "WHERE session_id = ? AND holder = ? AND expires_at >= {now} "
    "AND EXISTS (SELECT 1 FROM sessions WHERE session_id = ?)"
)
Statement = tuple[str, tuple[Any, ...]]
T = TypeVar("T")


def fence(session_id: str, holder: str | None, now: str) -> Statement | None:
    """The guard statement for a write by ``holder`` (``None``: an unfenced write); ``now`` is
    the engine's clock (``SessionStore.NOW``)."""
    if holder is None:
        return None
    return (_FENCE.format(now=now), (session_id, holder, session_id))


def refused(session_id: str, holder: str) -> WriteRefused:
    return WriteRefused(
        f"write to session {session_id!r} refused: {holder} no longer holds its lease "
        "(it ran out, was taken, or the session was deleted)"
    )


async def finish(work: Awaitable[T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled meanwhile, then re-raise that.

    ``work`` runs as a task of its own awaited through ``asyncio.shield``; a cancellation of the
    caller (also one repeated at every await, as an anyio cancel scope does) is held back until
    the task is done. ``work`` must bound its own time (every wait has a timeout).
    """
    task = asyncio.ensure_future(work)
    cancelled: BaseException | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done() and task.cancelled():
                raise
            cancelled = exc
    if cancelled is not None:
        task.exception() if not task.cancelled() else None  # noqa: B018 (retrieved: no warning)
        raise cancelled
    return task.result()


def _assemble(rows: list[tuple], decode: Callable[[str], str]) -> list[Row]:
    """Rows of ``_WITH_PARTS`` (ordered by session, path, seq) as one ``Row`` per file."""
    out: list[Row] = []
    parts: list[list[str]] = []
    for session_id, path, kind, created, modified, part in rows:
        if not out or (out[-1].session_id, out[-1].path) != (session_id, path):
            out.append(Row(session_id, path, "", kind, created, modified))
            parts.append([])
        if part:
            parts[-1].append(decode(part))
    for row, pieces in zip(out, parts, strict=True):
        row.content = "".join(pieces)
    return out


class SessionStore(abc.ABC):
    """One interface over two engines; subclasses only say how to run a statement."""

    engine: str
    NOW = NOW_SQLITE  # the database's clock as an SQL expression (UNIX seconds)

    @abc.abstractmethod
    async def execute(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple], int]:
        """Run one statement; return its rows and the number of rows it changed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the rows live, without any password."""

    async def create_tables(self) -> None:
        """Create the session tables if they are missing (safe to call again).

        ``helpers.store.schema.upgrade`` runs this after the versioned migrations, so a table
        dropped by hand is made again.
        """
        for sql in TABLES:
            await self.execute(sql)

    # The first statement of an upgrade's transaction: PostgreSQL takes a lock there so that two
    # instances starting at once upgrade one after the other (SQLite's BEGIN IMMEDIATE does it).
    MIGRATION_LOCK: Statement | None = None

    def encode(self, text: str) -> str:
        """Content as the engine stores it (PostgreSQL text cannot hold NUL: it escapes it)."""
        return text

    def decode(self, text: str) -> str:
        """The inverse of ``encode``."""
        return text

    async def read(self, session_id: str, path: str, content: bool = True) -> Row | None:
        """The row of ``path`` in the session, its parts joined, or ``None``.

        ``content=False``: the kind and times only (``content`` is ``""``), whatever the size.
        """
        if not content:
            rows, _ = await self.execute(
                f"SELECT {_COLUMNS} FROM session_files WHERE session_id = ? AND path = ?",
                (session_id, path),
            )
            return Row(rows[0][0], rows[0][1], "", *rows[0][2:]) if rows else None
        rows, _ = await self.execute(
            f"{_WITH_PARTS} WHERE f.session_id = ? AND f.path = ? ORDER BY p.seq",
            (session_id, path),
        )
        return _assemble(rows, self.decode)[0] if rows else None

    async def kinds(self, session_id: str, paths: list[str]) -> dict[str, str]:
        """``path -> kind`` for those of ``paths`` that have a row (one query, no content)."""
        if not paths:
            return {}
        rows, _ = await self.execute(
            "SELECT path, kind FROM session_files WHERE session_id = ? "
            f"AND path IN ({', '.join('?' * len(paths))})",
            (session_id, *paths),
        )
        return dict(rows)

    def _folders(
        self, session_id: str, folders: list[str], now: float
    ) -> list[tuple[str, tuple[Any, ...]]]:
        return [
            (
                f"INSERT INTO session_files ({_COLUMNS}) VALUES (?, ?, 'directory', ?, ?) "
                "ON CONFLICT (session_id, path) DO NOTHING",
                (session_id, folder, now, now),
            )
            for folder in folders
        ]

    async def write(
        self,
        session_id: str,
        path: str,
        content: str,
        kind: str,
        folders: list[str] = (),  # type: ignore[assignment]
        holder: str | None = None,
    ) -> None:
        """Create or replace ``path`` (a ``file`` or a ``directory``): one part, or none.

        ``folders`` (the missing parents) are created first, in the same transaction. With
        ``holder`` (a lease token) the write is fenced: it happens only if that token holds an
        unexpired lease on the session and the session has its row in ``sessions``, else it
        raises ``WriteRefused`` (the same for ``append``, ``remove`` and ``move``).
        """
        now = time.time()
        statements = self._folders(session_id, list(folders), now) + [
            (
                f"INSERT INTO session_files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (session_id, path) DO UPDATE SET "
                "kind = excluded.kind, modified_at = excluded.modified_at",
                (session_id, path, kind, now, now),
            ),
            (
                "DELETE FROM session_file_parts WHERE session_id = ? AND path = ?",
                (session_id, path),
            ),
        ]
        if content:
            statements.append(
                (
                    "INSERT INTO session_file_parts (session_id, path, seq, content, bytes) "
                    "VALUES (?, ?, 1, ?, ?)",
                    (session_id, path, self.encode(content), len(content.encode())),
                )
            )
        await self._fenced(statements, session_id, holder)

    async def append(
        self,
        session_id: str,
        path: str,
        content: str,
        folders: list[str] = (),  # type: ignore[assignment]
        holder: str | None = None,
    ) -> None:
        """Append one part to a file (created when missing): the cost is the part, not the file."""
        now = time.time()
        statements = self._folders(session_id, list(folders), now) + [
            (
                f"INSERT INTO session_files ({_COLUMNS}) VALUES (?, ?, 'file', ?, ?) "
                "ON CONFLICT (session_id, path) DO UPDATE SET modified_at = excluded.modified_at",
                (session_id, path, now, now),
            )
        ]
        if content:
            size = len(content.encode())
            statements.append(
                (_NEXT_PART, (session_id, path, self.encode(content), size, session_id, path))
            )
        await self._fenced(statements, session_id, holder)

    async def size(self, session_id: str, path: str) -> int:
        """The file's size in UTF-8 bytes, summed over its parts (no content is sent)."""
        rows, _ = await self.execute(
            "SELECT COALESCE(SUM(bytes), 0) FROM session_file_parts "
            "WHERE session_id = ? AND path = ?",
            (session_id, path),
        )
        return int(rows[0][0])

    async def under(self, session_id: str, folder: str, content: bool = True) -> list[Row]:
        """Every row strictly inside ``folder`` (``content=False``: names and kinds only)."""
        prefix = folder.rstrip("/") + "/"
        if not content:
            rows, _ = await self.execute(
                f"SELECT {_COLUMNS} FROM session_files "
                f"WHERE session_id = ? AND {_INSIDE} ORDER BY path",
                (session_id, len(prefix), prefix),
            )
            return [Row(r[0], r[1], "", *r[2:]) for r in rows]
        rows, _ = await self.execute(
            f"{_WITH_PARTS} WHERE f.session_id = ? AND substr(f.path, 1, ?) = ? "
            "ORDER BY f.path, p.seq",
            (session_id, len(prefix), prefix),
        )
        return _assemble(rows, self.decode)

    async def has_under(self, session_id: str, folder: str) -> bool:
        """True when at least one row lies strictly inside ``folder`` (no content is read)."""
        prefix = folder.rstrip("/") + "/"
        rows, _ = await self.execute(
            f"SELECT 1 FROM session_files WHERE session_id = ? AND {_INSIDE} LIMIT 1",
            (session_id, len(prefix), prefix),
        )
        return bool(rows)

    async def remove(
        self, session_id: str, path: str, recursive: bool, holder: str | None = None
    ) -> int:
        """Delete ``path`` (and, when ``recursive``, all under it); return rows deleted."""
        prefix = path.rstrip("/") + "/"
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for table in ("session_file_parts", "session_files"):
            statements.append(
                (f"DELETE FROM {table} WHERE session_id = ? AND path = ?", (session_id, path))
            )
            if recursive:
                statements.append(
                    (
                        f"DELETE FROM {table} WHERE session_id = ? AND {_INSIDE}",
                        (session_id, len(prefix), prefix),
                    )
                )
        changed = await self._fenced(statements, session_id, holder)
        return sum(changed[len(changed) // 2 :])  # the rows of session_files

    async def move(self, session_id: str, src: str, dest: str, holder: str | None = None) -> None:
        """Rename ``src`` (a file, or a folder with everything in it) to ``dest``."""
        await self.remove(session_id, dest, recursive=True, holder=holder)
        prefix = src.rstrip("/") + "/"
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for table in ("session_files", "session_file_parts"):
            statements += [
                (
                    f"UPDATE {table} SET path = ? WHERE session_id = ? AND path = ?",
                    (dest, session_id, src),
                ),
                (
                    f"UPDATE {table} SET path = ? || substr(path, CAST(? AS INTEGER)) "
                    f"WHERE session_id = ? AND {_INSIDE}",
                    (dest.rstrip("/") + "/", len(prefix) + 1, session_id, len(prefix), prefix),
                ),
            ]
        await self._fenced(statements, session_id, holder)

    async def _fenced(
        self, statements: list[Statement], session_id: str, holder: str | None
    ) -> list[int]:
        if holder is None:
            return await self.transaction(statements)
        return await self.transaction(statements, guard=fence(session_id, holder, self.NOW))

    # Ownership: one row per session in ``sessions``, written before the session's first turn.

    async def new_id(self, user: str) -> str:
        """Make an unguessable id for a new session of ``user`` and record the owner, atomically.

        The row exists before the runtime hears of the id, so no turn can run on an id that has no
        owner, and nobody can claim an id by sending to it first.
        """
        session_id = new_session_id(user)
        await self.execute(
            "INSERT INTO sessions (session_id, owner, created) VALUES (?, ?, ?)",
            (session_id, user, time.time()),
        )
        return session_id

    async def owner(self, session_id: str) -> str | None:
        """The user who owns ``session_id``, or ``None`` when the application never made it."""
        rows, _ = await self.execute(
            "SELECT owner FROM sessions WHERE session_id = ?", (session_id,)
        )
        return rows[0][0] if rows else None

    async def check_owner(self, user: str, session_id: str) -> None:
        """Raise ``NotYourSession`` unless ``user`` owns ``session_id``.

        An unknown id and another user's id get the same message, and nothing is written.
        """
        if await self.owner(session_id) != user:
            raise refusal(user, session_id)

    async def sessions_of(self, user: str) -> list[str]:
        """The ids ``user`` owns, oldest first."""
        rows, _ = await self.execute(
            "SELECT session_id FROM sessions WHERE owner = ? ORDER BY created, session_id", (user,)
        )
        return [r[0] for r in rows]

    async def started(self, session_id: str) -> bool:
        """True once the runtime has written any file of the session (so: resume, not create)."""
        return await self.has_under(session_id, "/")

    async def ready(self, session_id: str) -> bool:
        """True once ``create_session`` of the session returned (``mark_ready``): resume it.

        ``started`` is not enough: a create cut part-way (a cancelled first request) leaves
        folders and no history, and every resume of it fails.
        """
        rows, _ = await self.execute(
            "SELECT ready FROM sessions WHERE session_id = ?", (session_id,)
        )
        return bool(rows and rows[0][0])

    async def mark_ready(self, session_id: str, holder: str | None = None) -> None:
        """Record that the session was created whole (fenced on ``holder`` as a write is)."""
        statement = ("UPDATE sessions SET ready = 1 WHERE session_id = ?", (session_id,))
        await self._fenced([statement], session_id, holder)

    async def stored_ids(self) -> set[str]:
        """Every session with files stored: each one a runtime wrote through ``session_fs``."""
        rows, _ = await self.execute("SELECT DISTINCT session_id FROM session_files")
        return {r[0] for r in rows}

    async def rows(self, user: str | None = None, session_id: str | None = None) -> list[Row]:
        """All file rows, or those of one user's sessions and/or one session."""
        where, args = ["1 = 1"], []
        if user is not None:
            where, args = [*where, f"session_id IN ({_OWNED})"], [*args, user]
        if session_id is not None:
            where, args = [*where, "session_id = ?"], [*args, session_id]
        where = [w if w == "1 = 1" else f"f.{w}" for w in where]
        rows, _ = await self.execute(
            f"{_WITH_PARTS} WHERE {' AND '.join(where)} ORDER BY f.session_id, f.path, p.seq",
            tuple(args),
        )
        return _assemble(rows, self.decode)

    # Tables keyed by session id whose rows go with their session (leases first, then files).
    PER_SESSION_TABLES: tuple[str, ...] = ("session_leases", "session_file_parts", "session_files")

    async def delete_user(self, user: str) -> int:
        """Delete the user's sessions with every row that belongs to them, in one transaction.

        One ``DELETE`` per table keyed by session id, then the ownership rows; all or nothing.
        Returns the number of sessions deleted.
        """
        counts = await self.transaction(
            [
                *(
                    (f"DELETE FROM {table} WHERE session_id IN ({_OWNED})", (user,))
                    for table in self.PER_SESSION_TABLES
                ),
                ("DELETE FROM sessions WHERE owner = ?", (user,)),
            ]
        )
        return counts[-1]

    @abc.abstractmethod
    async def transaction(
        self, statements: list[Statement], guard: Statement | None = None
    ) -> list[int]:
        """Run ``statements`` in one transaction (all or none); return each one's changed rows.

        ``guard`` runs first in the same transaction; unless it changes exactly one row, nothing
        is written and ``WriteRefused`` is raised (the lease fence of ``write`` and the others).
        """

    # Leases: one row per session naming the one request (a token) that may hold it open.

    async def try_lease(self, session_id: str, holder: str, ttl_s: float) -> bool:
        """Take the lease for ``holder`` if it is free or expired, in one statement.

        A lease that is held and unexpired is never taken, not even by the same holder: each
        request brings its own token, so two requests can never both hold one session. Expiry
        is judged by the database's clock (``NOW``), never by this server's.
        """
        _, changed = await self.execute(
            "INSERT INTO session_leases (session_id, holder, expires_at) "
            f"VALUES (?, ?, {self.NOW} + ?) "
            "ON CONFLICT (session_id) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            f"WHERE session_leases.expires_at < {self.NOW}",
            (session_id, holder, ttl_s),
        )
        return changed == 1

    async def extend_lease(self, session_id: str, holder: str, ttl_s: float) -> bool:
        """Push ``holder``'s unexpired lease ``ttl_s`` ahead, in one statement; True if it did."""
        _, changed = await self.execute(
            f"UPDATE session_leases SET expires_at = {self.NOW} + ? "
            f"WHERE session_id = ? AND holder = ? AND expires_at >= {self.NOW}",
            (ttl_s, session_id, holder),
        )
        return changed == 1

    async def lease_live(self, session_id: str) -> tuple[str, bool] | None:
        """The current lease's holder and whether it is unexpired by the database's clock."""
        rows, _ = await self.execute(
            f"SELECT holder, CASE WHEN expires_at >= {self.NOW} THEN 1 ELSE 0 END "
            "FROM session_leases WHERE session_id = ?",
            (session_id,),
        )
        return (rows[0][0], bool(rows[0][1])) if rows else None

    async def lease_of(self, session_id: str) -> tuple[str, float] | None:
        """The current lease (holder, expiry as a UNIX time), or ``None``."""
        rows, _ = await self.execute(
            "SELECT holder, expires_at FROM session_leases WHERE session_id = ?", (session_id,)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def drop_lease(self, session_id: str, holder: str) -> bool:
        """Release the lease only if ``holder`` holds it; True if it did."""
        _, changed = await self.execute(
            "DELETE FROM session_leases WHERE session_id = ? AND holder = ?", (session_id, holder)
        )
        return changed == 1


_OWNED = "SELECT session_id FROM sessions WHERE owner = ?"
