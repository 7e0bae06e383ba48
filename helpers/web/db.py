"""The service's database: notebook 04's store (SQLite off the event loop, or a pool of
PostgreSQL connections), plus what the web service must not lose on a restart (schema version 2,
below), its instance's stable name, and the clean-up queries of the service.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import time
from pathlib import Path

from helpers.errors import StoreError
from helpers.store import open_store
from helpers.store.base import SessionStore, fence
from helpers.store.schema import register_migration

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


async def open_web_store(data: Path, schema: str = "") -> SessionStore:
    """PostgreSQL when ``DATABASE_URL`` is set (in ``schema``), else ``data/sessions.db``.

    Either way the tables are brought up to the newest schema (``helpers.store.schema``), the
    web service's own (users' files, tokens) included.
    """
    if not Path(data).exists():  # users' files and conversations: readable by the owner only
        Path(data).mkdir(mode=0o700, parents=True)
    return await open_store(data, schema=schema)


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


async def forget_session_rows(
    store: SessionStore, session_id: str, holder: str | None = None
) -> int:
    """Delete one session's rows in every table (its files, lease and owner), in one transaction;
    return the file rows deleted. With ``holder``, only while it holds the session's lease."""
    tables = (*store.PER_SESSION_TABLES, "sessions")
    statements = [(f"DELETE FROM {table} WHERE session_id = ?", (session_id,)) for table in tables]
    guard = fence(session_id, holder, store.NOW)
    counts = await store.transaction(statements, guard=guard)
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
