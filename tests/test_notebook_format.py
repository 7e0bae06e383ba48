"""Committed notebooks are written as nbformat writes them (keys sorted, one-space indent), so
saving an unchanged notebook in JupyterLab writes it back byte for byte (tests/test_jupyterlab.py
checks that in a browser; this finds it in a second)."""

from __future__ import annotations

import json

import pytest
from support import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_is_committed_as_nbformat_writes_it(path) -> None:
    text = path.read_text()
    # what nbformat.writes gives for a notebook whose sources are lists of lines, without its
    # schema validation (seconds per notebook on a loaded machine)
    canonical = json.dumps(json.loads(text), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if text != canonical:
        at = next(i for i, (a, b) in enumerate(zip(text, canonical, strict=False)) if a != b)
        pytest.fail(
            f"{path.name} differs from nbformat's form at character {at} (cells need their keys "
            "sorted, as json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) writes "
            "them, plus a newline): "
            f"{text[at - 60 : at + 40]!r}"
        )
