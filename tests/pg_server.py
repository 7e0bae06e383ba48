"""A throwaway PostgreSQL server for the tests and benchmarks: ``helpers.fleet.postgres``, which
notebooks use too (initdb, start, restart, remove; as root, served as ``nobody``)."""

from __future__ import annotations

from helpers.fleet.postgres import (
    INSTALL_HINT,
    PgServer,
    PostgresNotFound,
    PostgresStartError,
    database_for_bench,
    find_bin_dir,
    start_postgres,
)

__all__ = [
    "INSTALL_HINT",
    "PgServer",
    "PostgresNotFound",
    "PostgresStartError",
    "database_for_bench",
    "find_bin_dir",
    "start_postgres",
]
