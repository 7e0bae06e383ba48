"""Shared fixtures: the stand-in model and one real runtime for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.model.backends import Backend, choose_backend
from helpers.runtime.server import RuntimeServer, start_server

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def local_backend() -> Iterator[Backend]:
    backend = choose_backend("local", env={})
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def server(local_backend: Backend) -> Iterator[RuntimeServer]:
    srv = start_server(local_backend.server_env, remove_env=local_backend.server_remove_env)
    yield srv
    srv.stop()


@pytest.fixture
def session_kwargs(local_backend: Backend) -> dict:
    return dict(available_tools=[], **local_backend.session_kwargs())


def our_runtime_processes() -> list[str]:
    """Command lines of headless runtimes started from this checkout."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "--headless" in cmd and str(REPO_ROOT) in cmd:
            found.append(f"{entry.name}: {cmd.strip()}")
    return found
