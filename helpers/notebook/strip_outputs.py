"""Keep the tutorial's notebooks free of outputs on disk when JupyterLab saves them.

JupyterLab autosaves a notebook with its outputs. For this repository's numbered notebooks that
would make ``git pull`` of a newer tutorial conflict and leave a learner's checkout dirty, so a
Jupyter server pre-save hook (enabled by ``verify.sh`` in ``.venv/etc/jupyter``) removes outputs,
execution counts and widget state before the file is written. The open notebook keeps its outputs
on screen; only the file on disk is clean. Other notebooks are saved as they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from helpers.run import REPO_ROOT

TUTORIAL_NOTEBOOKS = REPO_ROOT / "notebooks"
_NUMBERED = re.compile(r"^\d\d_.*\.ipynb$")


def is_tutorial_notebook(os_path: Path) -> bool:
    """True for ``notebooks/NN_*.ipynb`` of this repository."""
    os_path = Path(os_path).resolve()
    return os_path.parent == TUTORIAL_NOTEBOOKS.resolve() and bool(_NUMBERED.match(os_path.name))


def strip(notebook: dict[str, Any]) -> dict[str, Any]:
    """Put a notebook dict back in its committed form, in place.

    Outputs and execution counts go; so does what a kernel or a front end adds to the metadata
    (widget state, the kernel's ``language_info`` details, cell timings and trust), so that saving
    an unchanged notebook writes the file as it was committed.
    """
    metadata = notebook.setdefault("metadata", {})
    metadata.pop("widgets", None)
    language = metadata.get("language_info")
    if isinstance(language, dict) and "name" in language:
        metadata["language_info"] = {"name": language["name"]}
    for cell in notebook.get("cells", []):
        for key in ("execution", "trusted", "scrolled", "collapsed"):
            cell.get("metadata", {}).pop(key, None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return notebook


def pre_save_hook(model: dict[str, Any], path: str, contents_manager: Any, **_: Any) -> None:
    """Jupyter server ``FileContentsManager.pre_save_hook``: strip the tutorial's notebooks."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    root = Path(getattr(contents_manager, "root_dir", "."))
    if is_tutorial_notebook(root / path.lstrip("/")):
        strip(model["content"])
