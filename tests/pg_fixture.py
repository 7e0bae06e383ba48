"""A throwaway PostgreSQL server for the tests that need one (import the fixture to use it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg_server import INSTALL_HINT, find_bin_dir, start_postgres


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL server started for this test session; skip without binaries."""
    if find_bin_dir() is None:
        pytest.skip(INSTALL_HINT)
    server = start_postgres()
    try:
        yield server.url
    finally:
        server.stop()
