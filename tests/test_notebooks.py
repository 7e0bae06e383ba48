"""Execute the notebooks with papermill, with non-default parameters, and check what they left behind."""

from __future__ import annotations

import secrets

import nbformat
import papermill
import pytest
from conftest import REPO_ROOT, our_runtime_processes

from helpers.paths import LOGS, TMP

pytestmark = pytest.mark.notebook
NOTEBOOKS = REPO_ROOT / "notebooks"
OUT = TMP / "executed" / "tests"


def execute(name: str, **parameters: object) -> nbformat.NotebookNode:
    OUT.mkdir(parents=True, exist_ok=True)
    output = OUT / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(output), parameters=parameters, kernel_name="python3",
                               cwd=str(NOTEBOOKS), execution_timeout=300, progress_bar=False)
    return nbformat.read(output, as_version=4)


def all_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        parts.append(cell.source)
        for output in cell.get("outputs", []):
            parts.append(str(output))
    return "\n".join(parts)


def test_committed_notebooks_are_clean() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), path.name
        assert nb.metadata["kernelspec"]["name"] == "python3", path.name
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one parameters cell"


def test_notebook_01_with_other_parameters_and_a_secret_canary(monkeypatch: pytest.MonkeyPatch) -> None:
    canary = f"canary-{secrets.token_hex(8)}"
    monkeypatch.setenv("GITHUB_TOKEN", canary)
    monkeypatch.setenv("COPILOT_GITHUB_TOKEN", canary)
    logs_before = set(LOGS.glob("*.log")) if LOGS.exists() else set()
    running_before = set(our_runtime_processes())
    nb = execute("01_multi_user_long_lived.ipynb", CODENAME="ZEPHYR-42",
                 SESSION_A="alice-session-x", SESSION_B="bob-session-y")
    text = all_text(nb)
    assert "ZEPHYR-42" in text and "alice-session-x" in text and "bob-session-y" in text
    assert "AURORA-7" not in "".join(str(c.get("outputs")) for c in nb.cells)
    new_logs = set(LOGS.glob("*.log")) - logs_before
    assert new_logs, "the notebook should have written a runtime log"
    for log in new_logs:
        assert canary not in log.read_text(errors="replace"), f"secret canary leaked into {log.name}"
    assert canary not in text, "secret canary leaked into the executed notebook"
    assert not (TMP / "user-a").exists() and not (TMP / "user-b").exists(), "KEEP_STATE=False should clean up"
    assert set(our_runtime_processes()) <= running_before, "the notebook left a runtime running"


def test_notebook_02_with_other_parameters_leaves_no_session_state() -> None:
    running_before = set(our_runtime_processes())
    nb = execute("02_multi_user_short_lived.ipynb", NOTE_NAME="plan-b.txt", NOTE_TEXT="Deploy at dawn, quietly.",
                 KEEP_STATE=True)
    outputs = "".join(str(c.get("outputs")) for c in nb.cells)
    assert "plan-b.txt" in outputs and "Deploy at dawn, quietly." in outputs
    assert "Ship the tutorial on Friday." not in outputs
    home = TMP / "runtime-02"
    assert home.is_dir(), "KEEP_STATE=True should keep the runtime's home"
    assert [p.name for p in (home / "session-state").glob("[!.]*")] == [], "every session should have been deleted"
    assert set(our_runtime_processes()) <= running_before, "the notebook left a runtime running"
