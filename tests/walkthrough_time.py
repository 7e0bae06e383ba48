"""Estimate a learner-paced walk-through of each notebook from an executed copy (a script).

    ./verify.sh && .venv/bin/python tests/walkthrough_time.py [tmp/executed/01_….ipynb ...]

The method, stated so that anyone can redo it and argue with it:

- prose: the markdown's words (mermaid diagrams and exercise solutions left out) at 200 words a
  minute;
- code: 20 s per code cell to read it and press Run, plus 4 s per non-blank line to follow it;
- running: the cell's own run time, from papermill's ``metadata.papermill.duration``;
- exercises: 5 minutes each to try it before opening the solution, plus the solution's lines at
  4 s each;
- questions: 1 minute per end-of-notebook question.

Default input: every ``tmp/executed/[0-9][0-9]_*.ipynb`` that ``./verify.sh`` wrote. ``--sections``
prints the minutes of each ``## `` section as well (what a shortened workshop path skips). A
notebook over ``LIMIT_MIN`` is split or cut: tests/test_walkthrough.py checks the committed
notebooks, and the notebook tests check their executed copies.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
WORDS_PER_MIN = 200
CELL_S, LINE_S, EXERCISE_S, QUESTION_S = 20, 4, 300, 60
LIMIT_MIN = 60
SOLUTION = "solution"  # the tag of a cell a test appended to run an exercise's solution


def prose_and_solutions(source: str) -> tuple[str, list[str]]:
    """A markdown cell's prose without diagrams or solutions, and the solutions' code."""
    solutions = re.findall(r"<details>.*?```python\n(.*?)```", source, re.S)
    prose = re.sub(r"<details>.*?</details>", " ", source, flags=re.S)
    prose = re.sub(r"```mermaid.*?```", " ", prose, flags=re.S)
    return prose, solutions


def lines_of(code: str) -> int:
    return sum(1 for line in code.splitlines() if line.strip())


def estimate(path: Path) -> dict[str, float]:
    """Minutes per part for one notebook (executed: with its cells' run times)."""
    return _minutes(nbformat.read(path, as_version=4).cells)


def sections(path: Path) -> list[tuple[str, float]]:
    """Each ``## `` section's title and minutes, in order (what comes before the first: "start")."""
    parts: list[tuple[str, list]] = [("start", [])]
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            parts.append((cell.source.splitlines()[0][3:].strip(), []))
        parts[-1][1].append(cell)
    return [(title, _minutes(cells)["total"]) for title, cells in parts]


def _minutes(cells: list) -> dict[str, float]:
    words = code_s = run_s = exercise_s = question_s = 0.0
    for cell in cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "markdown":
            prose, solutions = prose_and_solutions(cell.source)
            words += len(re.findall(r"\w+", prose))
            if cell.source.startswith("### Exercise"):
                exercise_s += EXERCISE_S + LINE_S * sum(lines_of(s) for s in solutions)
            if cell.source.startswith("## Questions"):
                question_s += QUESTION_S * len(re.findall(r"^\d+\.", cell.source, re.M))
        elif cell.cell_type == "code" and not {"injected-parameters", SOLUTION} & set(tags):
            code_s += CELL_S + LINE_S * lines_of(cell.source)
            run_s += float(cell.metadata.get("papermill", {}).get("duration") or 0.0)
    parts = {
        "prose": words / WORDS_PER_MIN,
        "code": code_s / 60,
        "running": run_s / 60,
        "exercises": exercise_s / 60,
        "questions": question_s / 60,
    }
    parts["total"] = sum(parts.values())
    return parts


def main(args: list[str]) -> None:
    by_section = "--sections" in args
    paths = [a for a in args if a != "--sections"]
    found = [Path(p) for p in paths] or sorted(
        (ROOT / "tmp" / "executed").glob("[0-9][0-9]_*.ipynb")
    )
    if not found:
        sys.exit("no executed notebooks: run ./verify.sh first")
    names = ["prose", "code", "running", "exercises", "questions", "total"]
    print(f"{'notebook':<36}" + "".join(f"{n:>10}" for n in names) + "   (minutes)")
    for path in found:
        parts = estimate(path)
        print(f"{path.name:<36}" + "".join(f"{parts[n]:>10.1f}" for n in names))
        if by_section:
            for title, minutes in sections(path):
                print(f"    {minutes:5.1f}  {title}")


if __name__ == "__main__":
    main(sys.argv[1:])
