"""Who owns which session: an application-level registry in an embedded SQLite file.

The runtime has no idea of users: any client that knows a session id can resume or delete it.
The application makes the ids (``user-<id>-<random hex>``, unguessable), records the owner of each
one here, and checks every resume and delete against it *before* it reaches the runtime.

The rule itself (``new_session_id``, ``SESSIONS_TABLE``, ``refusal``) is shared with the session
store of notebook 04 (``helpers.store``), which keeps the same table next to the session's files.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from copilot import CopilotClient
from copilot.session import CopilotSession

from helpers.errors import NotYourSession

_USER = re.compile(r"[a-z0-9]{1,32}")

# One ownership record per session, made when the application creates the session, before any turn.
SESSIONS_TABLE = """CREATE TABLE IF NOT EXISTS sessions (
        session_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL)"""


def new_session_id(user: str) -> str:
    """An unguessable id for a new session of ``user``: ``user-<name>-<16 random hex digits>``."""
    name = user.lower()
    if not _USER.fullmatch(name):
        raise ValueError(f"user {user!r}: use 1 to 32 letters or digits")
    return f"user-{name}-{secrets.token_hex(8)}"


def refusal(user: str, session_id: str) -> NotYourSession:
    """The one refusal, the same for an unknown id and for another user's id.

    It never tells a caller that some other user's session exists.
    """
    return NotYourSession(
        f"session {session_id!r} is not one of User {user}'s sessions: refused, "
        "nothing was read, changed or deleted"
    )


class SessionRegistry:
    """Session id -> owner, kept in one SQLite file (one table, one row per session)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute(SESSIONS_TABLE)

    def new_id(self, user: str) -> str:
        """Make an unguessable id for a new session of ``user`` and record the owner."""
        session_id = new_session_id(user)
        with self._lock:
            self._db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?)", (session_id, user, time.time())
            )
        return session_id

    def owner(self, session_id: str) -> str | None:
        """The user who owns ``session_id``, or ``None`` when the id is not ours."""
        with self._lock:
            row = self._db.execute(
                "SELECT owner FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return row[0] if row else None

    def check_owner(self, user: str, session_id: str) -> None:
        """Raise ``NotYourSession`` unless ``user`` owns ``session_id``.

        The message is the same for an unknown id and for another user's id, so a refusal never
        tells a caller that some other user's session exists.
        """
        if self.owner(session_id) != user:
            raise refusal(user, session_id)

    def sessions_of(self, user: str) -> list[str]:
        """The ids ``user`` owns, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id FROM sessions WHERE owner = ? ORDER BY created", (user,)
            ).fetchall()
        return [r[0] for r in rows]

    def rows(self) -> list[dict[str, str]]:
        """Every row, for display."""
        with self._lock:
            rows = self._db.execute("SELECT session_id, owner FROM sessions ORDER BY created")
            return [{"session_id": sid, "owner": owner} for sid, owner in rows.fetchall()]

    def forget(self, session_id: str) -> None:
        """Remove the row of a deleted session."""
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()


async def owned_resume(
    registry: SessionRegistry, client: CopilotClient, user: str, session_id: str, **options: Any
) -> CopilotSession:
    """Resume ``session_id`` for ``user`` only if ``user`` owns it (else ``NotYourSession``)."""
    registry.check_owner(user, session_id)
    return await client.resume_session(session_id, **options)


async def owned_open(
    registry: SessionRegistry, client: CopilotClient, user: str, session_id: str, **options: Any
) -> CopilotSession:
    """Like ``owned_resume``, but an id the user owns and the runtime never saw is created."""
    registry.check_owner(user, session_id)
    known = {meta.session_id for meta in await client.list_sessions()}
    if session_id in known:
        return await client.resume_session(session_id, **options)
    return await client.create_session(session_id=session_id, **options)


async def owned_delete(
    registry: SessionRegistry, client: CopilotClient, user: str, session_id: str
) -> None:
    """Delete ``session_id`` for ``user`` only if ``user`` owns it (else ``NotYourSession``)."""
    registry.check_owner(user, session_id)
    await client.delete_session(session_id)
    registry.forget(session_id)
