"""No notebook is over an hour at a learner's pace, by tests/walkthrough_time.py's formula.

This checks the committed notebooks (everything but the cells' run times, which only an executed
copy has); the notebook tests check the executed copies with their run times as well.
"""

from __future__ import annotations

import re

import nbformat
import pytest
from support import REPO_ROOT
from walkthrough_time import LIMIT_MIN, SOLUTION, estimate, sections

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_takes_at_most_an_hour(path) -> None:
    minutes = estimate(path)["total"]
    assert minutes <= LIMIT_MIN, f"{path.name}: {minutes:.1f} minutes; split or cut it"


def test_the_limit_catches_a_long_notebook(tmp_path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## 1. A section\n\n" + "word " * 2000)]
    nb.cells += [nbformat.v4.new_code_cell("x = 1\n" * 10) for _ in range(60)]
    path = tmp_path / "99_long.ipynb"
    nbformat.write(nb, path)
    assert estimate(path)["total"] > LIMIT_MIN  # 10 min of prose, 60 cells of 60 s
    assert [title for title, _ in sections(path)] == ["start", "1. A section"]


def test_run_times_count_and_appended_solutions_do_not(tmp_path) -> None:
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.metadata["papermill"] = {"duration": 120.0}
    appended = nbformat.v4.new_code_cell("y = 2\n" * 30, metadata={"tags": [SOLUTION]})
    nb = nbformat.v4.new_notebook(cells=[cell, appended])
    path = tmp_path / "98_run.ipynb"
    nbformat.write(nb, path)
    parts = estimate(path)
    assert parts["running"] == 2.0 and parts["code"] == pytest.approx(24 / 60)


STATED = re.compile(r"\*\*Time to learn\*\*: about (\d+) minutes")
ROW = re.compile(r"^\| (\d\d) \| (\d+) \|", re.M)


@pytest.mark.parametrize("number", ["01", "02", "03", "04", "05", "06", "07", "08", "09"])
def test_prerequisites_and_instructors_state_the_formulas_minutes(number: str) -> None:
    """The same minutes in the notebook and INSTRUCTORS.md, no fewer than the formula's parts
    without run times and at most 2 more (the cells' run times, which only a run has)."""
    path = next(p for p in NOTEBOOKS if p.name.startswith(number))
    stated = STATED.search(path.read_text())
    assert stated, f"{path.name} states no time to learn"
    table = dict(ROW.findall((REPO_ROOT / "notebooks" / "INSTRUCTORS.md").read_text()))
    assert table.get(number) == stated.group(1), "INSTRUCTORS.md states other minutes"
    static = estimate(path)["total"]
    assert static - 0.5 <= int(stated.group(1)) <= static + 2, (stated.group(1), static)
