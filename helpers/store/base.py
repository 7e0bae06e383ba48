"""The session store's interface: session files as rows, and leases, over one SQL dialect."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any

from helpers.errors import NotYourSession

TABLES = (
    """CREATE TABLE IF NOT EXISTS session_files (
        session_id TEXT NOT NULL,
        path TEXT NOT NULL,
        content TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        modified_at DOUBLE PRECISION NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (session_id, path))""",
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
    user_id: str


_COLUMNS = "session_id, path, content, kind, created_at, modified_at, user_id"


class SessionStore(abc.ABC):
    """One interface over two engines; subclasses only say how to run a statement."""

    engine: str

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
        """Create the tables if they are missing (safe to call again)."""
        for sql in TABLES:
            await self.execute(sql)

    async def read(self, session_id: str, path: str) -> Row | None:
        """The row of ``path`` in the session, or ``None``."""
        rows, _ = await self.execute(
            f"SELECT {_COLUMNS} FROM session_files WHERE session_id = ? AND path = ?",
            (session_id, path),
        )
        return Row(*rows[0]) if rows else None

    async def write(self, session_id: str, user: str, path: str, content: str, kind: str) -> None:
        """Create or replace ``path`` (a ``file`` or a ``directory``)."""
        now = time.time()
        await self.execute(
            f"INSERT INTO session_files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (session_id, path) DO UPDATE SET content = excluded.content, "
            "kind = excluded.kind, modified_at = excluded.modified_at",
            (session_id, path, content, kind, now, now, user),
        )

    async def append(self, session_id: str, user: str, path: str, content: str) -> None:
        """Append to a file in one statement (created when missing)."""
        now = time.time()
        await self.execute(
            f"INSERT INTO session_files ({_COLUMNS}) VALUES (?, ?, ?, 'file', ?, ?, ?) "
            "ON CONFLICT (session_id, path) DO UPDATE SET "
            "content = session_files.content || excluded.content, "
            "modified_at = excluded.modified_at",
            (session_id, path, content, now, now, user),
        )

    async def under(self, session_id: str, folder: str) -> list[Row]:
        """Every row strictly inside ``folder``."""
        prefix = folder.rstrip("/") + "/"
        rows, _ = await self.execute(
            f"SELECT {_COLUMNS} FROM session_files "
            "WHERE session_id = ? AND substr(path, 1, ?) = ? ORDER BY path",
            (session_id, len(prefix), prefix),
        )
        return [Row(*r) for r in rows]

    async def has_under(self, session_id: str, folder: str) -> bool:
        """True when at least one row lies strictly inside ``folder`` (no content is read)."""
        prefix = folder.rstrip("/") + "/"
        rows, _ = await self.execute(
            "SELECT 1 FROM session_files WHERE session_id = ? AND substr(path, 1, ?) = ? LIMIT 1",
            (session_id, len(prefix), prefix),
        )
        return bool(rows)

    async def remove(self, session_id: str, path: str, recursive: bool) -> int:
        """Delete ``path`` (and, when ``recursive``, all under it); return rows deleted."""
        _, count = await self.execute(
            "DELETE FROM session_files WHERE session_id = ? AND path = ?", (session_id, path)
        )
        if recursive:
            prefix = path.rstrip("/") + "/"
            _, more = await self.execute(
                "DELETE FROM session_files WHERE session_id = ? AND substr(path, 1, ?) = ?",
                (session_id, len(prefix), prefix),
            )
            count += more
        return count

    async def move(self, session_id: str, src: str, dest: str) -> None:
        """Rename ``src`` (a file, or a folder with everything in it) to ``dest``."""
        await self.remove(session_id, dest, recursive=True)
        await self.execute(
            "UPDATE session_files SET path = ? WHERE session_id = ? AND path = ?",
            (dest, session_id, src),
        )
        prefix = src.rstrip("/") + "/"
        await self.execute(
            "UPDATE session_files SET path = ? || substr(path, CAST(? AS INTEGER)) "
            "WHERE session_id = ? AND substr(path, 1, ?) = ?",
            (dest.rstrip("/") + "/", len(prefix) + 1, session_id, len(prefix), prefix),
        )

    async def owner(self, session_id: str) -> str | None:
        """The user whose rows hold this session, or ``None`` for an unknown id."""
        rows, _ = await self.execute(
            "SELECT user_id FROM session_files WHERE session_id = ? LIMIT 1", (session_id,)
        )
        return rows[0][0] if rows else None

    async def check_owner(self, user: str, session_id: str) -> None:
        """Raise ``NotYourSession`` when the session exists and belongs to someone else."""
        owner = await self.owner(session_id)
        if owner is not None and owner != user:
            raise NotYourSession(f"session {session_id!r} is not a session of user {user!r}")

    async def rows(self, user: str | None = None, session_id: str | None = None) -> list[Row]:
        """All rows, or those of one user and/or one session."""
        where, args = ["1 = 1"], []
        if user is not None:
            where, args = [*where, "user_id = ?"], [*args, user]
        if session_id is not None:
            where, args = [*where, "session_id = ?"], [*args, session_id]
        rows, _ = await self.execute(
            f"SELECT {_COLUMNS} FROM session_files WHERE {' AND '.join(where)} "
            "ORDER BY session_id, path",
            tuple(args),
        )
        return [Row(*r) for r in rows]

    async def delete_user(self, user: str) -> int:
        """Delete every row (and lease) of the user's sessions; return the file rows deleted."""
        await self.execute(
            "DELETE FROM session_leases WHERE session_id IN "
            "(SELECT session_id FROM session_files WHERE user_id = ?)",
            (user,),
        )
        _, count = await self.execute("DELETE FROM session_files WHERE user_id = ?", (user,))
        return count

    async def try_lease(self, session_id: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease when it is free, expired or already ours; True if we hold it."""
        now = time.time()
        _, changed = await self.execute(
            "INSERT INTO session_leases (session_id, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (session_id) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE session_leases.expires_at < ? OR session_leases.holder = excluded.holder",
            (session_id, holder, now + ttl_s, now),
        )
        return changed == 1

    async def extend_lease(self, session_id: str, holder: str, ttl_s: float) -> bool:
        """Push ``holder``'s unexpired lease ``ttl_s`` ahead, in one statement; True if it did."""
        now = time.time()
        _, changed = await self.execute(
            "UPDATE session_leases SET expires_at = ? "
            "WHERE session_id = ? AND holder = ? AND expires_at >= ?",
            (now + ttl_s, session_id, holder, now),
        )
        return changed == 1

    async def lease_of(self, session_id: str) -> tuple[str, float] | None:
        """The current lease (holder, expiry as a UNIX time), or ``None``."""
        rows, _ = await self.execute(
            "SELECT holder, expires_at FROM session_leases WHERE session_id = ?", (session_id,)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def drop_lease(self, session_id: str, holder: str) -> bool:
        """Release the lease if ``holder`` holds it; True if it did."""
        _, changed = await self.execute(
            "DELETE FROM session_leases WHERE session_id = ? AND holder = ?", (session_id, holder)
        )
        return changed == 1
