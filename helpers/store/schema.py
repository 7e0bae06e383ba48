"""The store's schema as an ordered list of migrations, and the in-place upgrade that runs them.

Each migration is a version number, a name and SQL statements that work on SQLite and PostgreSQL
and are safe to run again (``CREATE TABLE IF NOT EXISTS``, ``CREATE INDEX IF NOT EXISTS``). Any
module may add its own with ``register_migration`` at import; ``upgrade`` (run by ``open_store``
and ``open_web_store`` whenever a store is opened) applies those above the version the
``schema_version`` table records, in order, in one transaction, and records them.
Versions are applied by what is recorded, not by the highest one: a store that recorded 1-3 and 7
(code whose steps landed out of order) still gets 4-6.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from helpers.store.base import TABLES, SessionStore

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        applied_at DOUBLE PRECISION NOT NULL)"""


@dataclass(frozen=True)
class Migration:
    """One step of the schema: its version, what it is for, and its statements."""

    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: dict[int, Migration] = {}


def register_migration(version: int, name: str, *statements: str) -> Migration:
    """Add a step to the schema (at import time); the same step registered twice is kept once.

    Raises:
        ValueError: another step already has ``version``.
    """
    step = Migration(version, name, tuple(statements))
    known = MIGRATIONS.setdefault(version, step)
    if known != step:
        raise ValueError(f"schema version {version} is taken by {known.name!r}")
    return step


# Version 1: the session store of notebook 04 (owners, session files as parts, leases), as made
# by every release before the schema carried a version: upgrading such a store changes nothing.
register_migration(1, "session store: owners, files, leases", *TABLES)


async def version_of(store: SessionStore) -> int:
    """The newest version applied to ``store`` (0: none recorded)."""
    # Under the migration lock: two PostgreSQL sessions creating the same table at once collide.
    lock = [store.MIGRATION_LOCK] if store.MIGRATION_LOCK else []
    await store.transaction([*lock, (VERSION_TABLE, ())])
    rows, _ = await store.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    return int(rows[0][0])


async def recorded(store: SessionStore) -> set[int]:
    """The versions the store records as applied."""
    await version_of(store)  # the version table made, under the migration lock
    rows, _ = await store.execute("SELECT version FROM schema_version")
    return {int(r[0]) for r in rows}


async def upgrade(store: SessionStore) -> list[int]:
    """Apply the registered migrations the store has not recorded, in order; return them."""
    done = await recorded(store)
    pending = [MIGRATIONS[v] for v in sorted(MIGRATIONS) if v not in done]
    if not pending:
        await store.create_tables()  # a session table dropped by hand is made again
        return []
    statements = [
        *([store.MIGRATION_LOCK] if store.MIGRATION_LOCK else []),
        *((sql, ()) for step in pending for sql in step.statements),
        *(
            (
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?) "
                "ON CONFLICT (version) DO NOTHING",
                (step.version, step.name, time.time()),
            )
            for step in pending
        ),
    ]
    await store.transaction(statements)
    return [step.version for step in pending]
