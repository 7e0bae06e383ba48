"""Shared fixtures (the stand-in model, one real runtime, a client of it) and the cost markers.

Every test that starts something costly carries its marker, so that
``-m "not runtime and not notebook and not browser and not postgres"`` runs the unit tests alone:
``runtime`` starts the Copilot runtime, ``notebook`` executes a notebook with papermill,
``browser`` drives JupyterLab in Chromium, ``postgres`` starts a throwaway PostgreSQL. A test
without the marker that starts one of them fails, at collection (by the fixtures it uses) or
when it starts it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from copilot import CopilotClient
from support import REPO_ROOT, our_runtime_processes

from helpers.model.backends import Backend, choose_backend
from helpers.runtime import transport
from helpers.runtime.server import RuntimeServer, start_server

# The suite's own clients run on the fixed transport, as the benches, the web service and
# notebooks 03-07 do; notebooks 01-02 run in kernels of their own on the SDK as shipped.
transport.install()

__all__ = ["REPO_ROOT", "our_runtime_processes"]

COSTS = ("runtime", "notebook", "browser", "postgres")
# The fixtures that start something costly, and the marker a test using them needs.
COSTLY_FIXTURES = {"server": "runtime", "client": "runtime", "postgres_url": "postgres"}


@pytest.fixture(scope="session")
def local_backend() -> Iterator[Backend]:
    backend = choose_backend("local", env={})
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def server(local_backend: Backend) -> Iterator[RuntimeServer]:
    srv = start_server(local_backend)
    yield srv
    srv.stop()


@pytest.fixture
async def client(server: RuntimeServer) -> AsyncIterator[CopilotClient]:
    """A started client of the shared test runtime."""
    async with server.connect() as connected:
        yield connected


@pytest.fixture
def session_kwargs(local_backend: Backend) -> dict:
    return dict(available_tools=[], **local_backend.session_kwargs())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test using a costly fixture without its marker is an error, named with the fix."""
    missing = []
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        for fixture, cost in COSTLY_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()) and cost not in marks:
                missing.append(f"{item.nodeid} uses {fixture!r}: mark it @pytest.mark.{cost}")
        module = getattr(item, "module", None)
        if (
            module is not None
            and "browser" not in marks
            and "playwright" in inspect.getsource(module)
        ):
            missing.append(f"{item.nodeid} is in a Playwright module: mark it @pytest.mark.browser")
    if missing:
        raise pytest.UsageError("Tests without their cost marker:\n  " + "\n  ".join(missing))


@pytest.fixture(autouse=True)
def _costly_starts_need_their_marker(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting the runtime, a notebook or PostgreSQL fails in a test without that marker."""
    marks = {mark.name for mark in request.node.iter_markers()}

    def refuse(cost: str, what: str):
        def refused(*args: object, **kwargs: object) -> None:
            pytest.fail(f"this test {what}: mark it @pytest.mark.{cost}", pytrace=False)

        return refused

    if "runtime" not in marks:
        from helpers.runtime import binary
        from helpers.runtime import server as runtime

        launch, refused = runtime._launch, refuse("runtime", "starts the Copilot runtime")
        real = {c.resolve() for c in binary._node_modules_candidates() if c.exists()}

        def launch_a_stand_in_only(binary, *args, **kwargs):  # a test's fake runtime is cheap
            return (refused if Path(binary).resolve() in real else launch)(binary, *args, **kwargs)

        monkeypatch.setattr(runtime, "_launch", launch_a_stand_in_only)
    if "notebook" not in marks:
        import papermill

        monkeypatch.setattr(papermill, "execute_notebook", refuse("notebook", "runs a notebook"))
    if "postgres" not in marks:
        from helpers.fleet import postgres

        monkeypatch.setattr(postgres, "_launch", refuse("postgres", "starts PostgreSQL"))
