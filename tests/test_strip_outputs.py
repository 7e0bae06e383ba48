"""The save hook that keeps the tutorial's notebooks free of outputs on disk."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
from conftest import REPO_ROOT

from helpers.notebook.strip_outputs import is_tutorial_notebook, strip

CONFIG = REPO_ROOT / ".venv" / "etc" / "jupyter" / "jupyter_server_config.json"


def executed_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('hi')", execution_count=3)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def test_strip_removes_outputs_counts_timing_and_widget_state() -> None:
    nb = json.loads(nbformat.writes(executed_notebook()))
    strip(nb)
    code = nb["cells"][1]
    assert code["outputs"] == [] and code["execution_count"] is None
    assert "execution" not in code["metadata"] and "widgets" not in nb["metadata"]
    assert (
        "".join(code["source"]) == "print('hi')" and "".join(nb["cells"][0]["source"]) == "# Title"
    )


def test_only_the_tutorials_numbered_notebooks_are_stripped() -> None:
    assert is_tutorial_notebook(REPO_ROOT / "notebooks" / "01_multi_user_long_lived.ipynb")
    assert not is_tutorial_notebook(REPO_ROOT / "notebooks" / "scratch.ipynb")
    assert not is_tutorial_notebook(REPO_ROOT / "tmp" / "01_copy.ipynb")


def test_a_jupyter_server_from_the_venv_saves_without_outputs() -> None:
    """What JupyterLab does on save: the contents manager with the config verify.sh writes."""
    assert "strip_outputs" in CONFIG.read_text(), "verify.sh writes the server config"
    name = "99_save_hook_check.ipynb"
    script = f"""
import asyncio, nbformat
from jupyter_server.serverapp import ServerApp
app = ServerApp()
app.initialize(["--ServerApp.root_dir={REPO_ROOT}", "--port=0", "--no-browser"])
for path in ["notebooks/{name}", "tmp/{name}"]:
    nb = nbformat.reads({nbformat.writes(executed_notebook())!r}, as_version=4)
    model = {{"type": "notebook", "format": "json", "content": nb}}
    asyncio.run(app.contents_manager.save(model, path))
"""
    saved = REPO_ROOT / "notebooks" / name
    elsewhere = REPO_ROOT / "tmp" / name
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        on_disk = nbformat.read(saved, as_version=4)
        assert on_disk.cells[1].outputs == [] and on_disk.cells[1].execution_count is None
        kept = nbformat.read(elsewhere, as_version=4)
        assert kept.cells[1].outputs, "a notebook outside notebooks/ keeps its outputs"
    finally:
        saved.unlink(missing_ok=True)
        elsewhere.unlink(missing_ok=True)
