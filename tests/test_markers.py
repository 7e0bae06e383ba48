"""The cost markers hold: a test that uses the runtime's fixture, or starts the runtime or a
notebook itself, without its marker fails, so the fast unit-test command never starts one."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import conftest
import papermill
import pytest

from helpers.runtime.server import start_server


def item(nodeid: str, fixtures: tuple[str, ...], *marks: str) -> SimpleNamespace:
    """Enough of a collected test for the hook: its id, fixtures, markers and module."""
    return SimpleNamespace(
        nodeid=nodeid,
        fixturenames=fixtures,
        iter_markers=lambda: [SimpleNamespace(name=mark) for mark in marks],
        module=None,
    )


def test_a_costly_fixture_without_its_marker_stops_the_collection() -> None:
    fine = [item("t::a", ("server",), "runtime"), item("t::b", ("postgres_url",), "postgres")]
    conftest.pytest_collection_modifyitems(None, fine)  # type: ignore[arg-type]
    with pytest.raises(pytest.UsageError) as refused:
        conftest.pytest_collection_modifyitems(  # type: ignore[arg-type]
            None, [*fine, item("t::c", ("client",)), item("t::d", ("postgres_url",), "runtime")]
        )
    message = str(refused.value)
    assert "t::c uses 'client': mark it @pytest.mark.runtime" in message
    assert "t::d uses 'postgres_url': mark it @pytest.mark.postgres" in message
    assert "t::a" not in message and "t::b" not in message


def test_this_unmarked_test_cannot_start_the_runtime(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="mark it @pytest.mark.runtime"):
        start_server(None, home=tmp_path / "home")


def test_this_unmarked_test_cannot_run_a_notebook(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="mark it @pytest.mark.notebook"):
        papermill.execute_notebook("in.ipynb", str(tmp_path / "out.ipynb"))


def test_a_fake_runtime_needs_no_marker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "copilot"
    fake.write_text("#!/bin/sh\necho 'listening on port 4321'\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("COPILOT_CLI_PATH", str(fake))
    server = start_server(None, home=tmp_path / "home", timeout=10)
    assert server.url == "127.0.0.1:4321"
    server.stop()
