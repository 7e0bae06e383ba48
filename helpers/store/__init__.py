"""Session state in the application's database (notebook 04): each session's files as rows
through the SDK's ``session_fs``, a lease per session, and a router over several runtimes.

SQLite by default; PostgreSQL when ``DATABASE_URL`` is set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from helpers.errors import StoreError
from helpers.store.base import SessionStore
from helpers.store.postgres import PostgresStore
from helpers.store.schema import upgrade
from helpers.store.sqlite import SqliteStore


async def open_store(
    run_folder: Path, database_url: str | None = None, schema: str = ""
) -> SessionStore:
    """PostgreSQL when ``database_url`` (default ``$DATABASE_URL``) is set, else SQLite.

    Args:
        run_folder: Where the SQLite file goes (``sessions.db`` in it).
        database_url: A ``postgresql://`` URL; ``None`` reads ``DATABASE_URL``.
        schema: PostgreSQL only: keep the tables in this schema (one per run), created if missing.

    Returns:
        A store whose tables exist.

    Raises:
        StoreError: a bad URL, an unreachable server, a wrong password (no password shown).
    """
    url = os.environ.get("DATABASE_URL", "") if database_url is None else database_url
    store: SessionStore
    if url:
        if schema and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise StoreError(f"schema {schema!r}: use lowercase letters, digits and '_'")
        store = await PostgresStore(url, schema).connect()
    else:
        store = await SqliteStore(Path(run_folder) / "sessions.db").connect()
    try:
        await upgrade(store)
    except BaseException:
        await store.close()
        raise
    return store
