"""The session store in one SQLite file (nothing to install)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from helpers.run import relative
from helpers.store.base import SessionStore, Statement, refused


class SqliteStore(SessionStore):
    """The store in one SQLite file (nothing to install)."""

    engine = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")

    async def execute(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple], int]:
        cursor = self._db.execute(sql, args)
        return cursor.fetchall(), cursor.rowcount

    async def transaction(
        self, statements: list[Statement], guard: Statement | None = None
    ) -> list[int]:
        # No await inside: no other coroutine's statement can fall between BEGIN and COMMIT.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if guard is not None and self._db.execute(*guard).rowcount != 1:
                raise refused(guard[1][0], guard[1][1])
            counts = [self._db.execute(sql, args).rowcount for sql, args in statements]
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return counts

    async def close(self) -> None:
        self._db.close()

    def describe(self) -> str:
        return f"SQLite file {relative(self.path)}"
