"""Execute the notebooks headlessly: odd parameters, two runs at once, the exercises, and a bad
parameter stopping a run before anything starts."""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator

import nbformat
import papermill
import pytest
from support import REPO_ROOT, our_runtime_processes
from walkthrough_time import LIMIT_MIN, SOLUTION, estimate

from helpers.run import LOGS, RUNS, TMP

pytestmark = pytest.mark.notebook
NOTEBOOKS = REPO_ROOT / "notebooks"
OUT = TMP / "executed" / "tests"
NB01 = "01_multi_user_long_lived.ipynb"
NB02 = "02_multi_user_short_lived.ipynb"
CODENAME_NFD = "E\u0301meraude Heron 7"  # "Émeraude Heron 7" with É typed as E + a combining accent


def execute(
    name: str, source: nbformat.NotebookNode | None = None, tag: str = "", **parameters: object
) -> nbformat.NotebookNode:
    """Run a notebook (or a modified copy of it) with papermill; return the executed notebook."""
    OUT.mkdir(parents=True, exist_ok=True)
    output = OUT / f"{tag}{name}"
    given = NOTEBOOKS / name
    if source is not None:
        given = OUT / f"{tag}input-{name}"
        nbformat.write(source, given)
    papermill.execute_notebook(
        str(given),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        execution_timeout=300,
        progress_bar=False,
    )
    return nbformat.read(output, as_version=4)


def outputs_text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(str(c.get("outputs")) for c in nb.cells if c.cell_type == "code")


def printed(nb: nbformat.NotebookNode) -> str:
    """What the code cells printed (stream text only), as a learner reads it."""
    return "\n".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def line_after(text: str, label: str) -> str:
    """The rest of the first printed line that starts with ``label``; fails when there is none."""
    match = re.search(rf"^{re.escape(label)}(.*)$", text, re.M)
    assert match, f"nothing printed as {label!r}"
    return match.group(1).strip()


def committed(path: str) -> str:
    """The notebook as committed (what a clone gets), not as a JupyterLab session left it."""
    done = subprocess.run(
        ["git", "show", f"HEAD:{path}"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:  # not a git checkout: the files are all there is
        return (REPO_ROOT / path).read_text()
    return done.stdout


def with_solutions(name: str) -> nbformat.NotebookNode:
    """The notebook with each exercise's solution (the code in its <details>) appended as cells."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    blocks = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "<details>" in cell.source:
            details = cell.source.split("<details>", 1)[1]
            blocks += re.findall(r"```python\n(.*?)```", details, re.S)
    assert blocks, f"{name} should have exercises with solutions"
    tagged = {"tags": [SOLUTION]}  # not the lesson's: the walk-through time leaves them out
    nb.cells += [nbformat.v4.new_code_cell(block, metadata=tagged) for block in blocks]
    return nb


def within_an_hour(executed: nbformat.NotebookNode) -> None:
    """The executed notebook, run times included, takes at most LIMIT_MIN at a learner's pace."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"walkthrough-{secrets.token_hex(4)}.ipynb"
    nbformat.write(executed, path)
    try:
        parts = estimate(path)
    finally:
        path.unlink()
    assert parts["total"] <= LIMIT_MIN, f"{parts['total']:.1f} minutes at a learner's pace: {parts}"


# How each notebook's "Try it yourself" panel is sent to from a cell, for the streaming check.
PANEL_SENDS = {
    "01": 'panel.send("A", "What is the codename?")',
    "02": 'panel.send("A", "List my files.")',
    "03": 'panel.send_to("A", a_id, "What is the codename?")',
    "04": 'panel.send("A", "What is the codename?")',
    "05": 'panel.send("A", "What is the codename?")',
    "06": 'panel.send("A", "List my files.")',
}
STREAM_CHECK = """\
texts = []
shown_on = panel._handle


class Recorder:  # the panel's text form, each update recorded and passed on
    def update(self, bundle, raw):
        texts.append(bundle["text/plain"])
        shown_on.update(bundle, raw=raw)


panel._handle = Recorder()
streamed = await {send}
panel._handle = shown_on
assert streamed is not None, panel.transcript[-1]
pieces = panel.pieces
assert len(pieces) > 1, f"the reply came in {{len(pieces)}} piece(s): it did not stream"
assert "".join(pieces) == streamed.reply, (pieces, streamed.reply)
partials = [t.rsplit("\\n  writing: ", 1)[1] for t in texts if "\\n  writing: " in t]
assert len(partials) == len(pieces) and partials[-1] == streamed.reply, partials
assert all(b.startswith(a) for a, b in zip(partials, partials[1:])), "the text form grows"
assert "writing:" not in texts[-1] and streamed.as_text() in texts[-1], texts[-1]
assert panel.live.value == "", "the live line goes once the whole answer is shown"
print(f"the panel's reply streamed in {{len(pieces)}} pieces")
"""


def with_stream_check(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """``nb`` with a last cell that sends through its panel and checks that the reply streamed:
    more than one piece, the text form growing piece by piece, then the whole answer."""
    check = STREAM_CHECK.format(send=PANEL_SENDS[name[:2]])
    nb.cells.append(nbformat.v4.new_code_cell(check, metadata={"tags": [SOLUTION]}))
    return nb


def streamed(nb: nbformat.NotebookNode) -> None:
    assert "the panel's reply streamed in" in printed(nb), "the stream check did not run"


def runs_of(name: str) -> set[str]:
    return {p.name for p in RUNS.glob(f"{name[:2]}-*")} if RUNS.exists() else set()


@contextlib.contextmanager
def leaves_nothing(name: str) -> Iterator[None]:
    """The runs inside the block remove their own folders and stop every runtime they started."""
    running_before = set(our_runtime_processes())
    runs_before = runs_of(name)
    yield
    assert runs_of(name) <= runs_before, "KEEP_STATE=False: each run removes its own folder"
    assert set(our_runtime_processes()) <= running_before, "a notebook left a runtime running"


def twice_at_once(name: str, other: dict[str, object]) -> tuple[nbformat.NotebookNode, ...]:
    """Two runs 0.3 s apart in one checkout: one with the solutions (and the panel's streaming
    check), one with ``other`` values."""
    results: dict[str, object] = {}

    def run(key: str, **kwargs: object) -> None:
        try:
            results[key] = execute(name, tag=f"{key}-", **kwargs)
        except Exception as exc:  # reported below, with the other run's result
            results[key] = exc

    first = threading.Thread(
        target=run,
        args=("solutions",),
        kwargs={"source": with_stream_check(with_solutions(name), name)},
    )
    first.start()
    time.sleep(0.3)
    run("odd", **other)
    first.join(timeout=600)
    for key, result in results.items():
        assert isinstance(result, nbformat.NotebookNode), f"run {key!r} failed: {result}"
    return results["solutions"], results["odd"]  # type: ignore[return-value]


def test_committed_notebooks_are_clean() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "notebooks/*.ipynb"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.split()
    paths = listed or [str(p.relative_to(REPO_ROOT)) for p in NOTEBOOKS.glob("*.ipynb")]
    assert paths, "no notebooks found"
    for path in paths:
        nb = nbformat.reads(committed(path), as_version=4)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), path
        assert nb.metadata["kernelspec"]["name"] == "python3", path
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
            f"{path} is committed with outputs"
        )
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path} needs exactly one parameters cell"
        for cell in nb.cells:
            if cell.cell_type == "markdown" and "```" not in cell.source:
                later = [line for line in cell.source.splitlines()[1:] if line.startswith("#")]
                assert not later, f"{path}: a heading should start its own cell: {later[0]!r}"


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        (NB01, dict(CODENAME="ORION-5!")),
        (NB02, dict(NOTE_NAME="../escape.md")),
        ("03_serving_many_users.ipynb", dict(USERS_AT_ONCE=1)),
        ("05_routing_and_races.ipynb", dict(ROUTING="random")),
    ],
)
def test_a_bad_parameter_stops_the_run_before_anything_starts(
    name: str, bad: dict[str, object]
) -> None:
    """The rules themselves are unit-tested in test_params.py; this is the kernel's side of it."""
    logs_before = set(LOGS.glob("*.log")) if LOGS.exists() else set()
    running_before = set(our_runtime_processes())
    runs_before = runs_of(name)
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute(name, tag="bad-", **bad)
    assert failed.value.ename == "ParameterError", failed.value
    assert f"{next(iter(bad))} = " in str(failed.value), "the message names the bad parameter"
    assert runs_of(name) == runs_before, "no run folder made"
    assert (set(LOGS.glob("*.log")) if LOGS.exists() else set()) == logs_before, "no runtime log"
    assert set(our_runtime_processes()) <= running_before, "no runtime started"


def test_a_run_that_fails_part_way_leaves_nothing_behind() -> None:
    """The clean-up is registered as the run folder is made, not when the last section runs."""
    nb = nbformat.read(NOTEBOOKS / NB01, as_version=4)
    setup = next(i for i, c in enumerate(nb.cells) if "shared_server(" in c.source)
    nb.cells.insert(setup + 1, nbformat.v4.new_code_cell('raise RuntimeError("a cell failed")'))
    with leaves_nothing(NB01):
        with pytest.raises(papermill.PapermillExecutionError, match="a cell failed"):
            execute(NB01, source=nb, tag="fails-")


def test_notebook_01_twice_at_once_with_solutions_other_parameters_and_a_canary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two runs 0.3 s apart in one checkout: one with the solutions, one with odd values."""
    canary = f"canary-{secrets.token_hex(8)}"
    monkeypatch.setenv("GITHUB_TOKEN", canary)
    monkeypatch.setenv("COPILOT_GITHUB_TOKEN", canary)
    logs_before = set(LOGS.glob("*.log")) if LOGS.exists() else set()
    with leaves_nothing(NB01):
        solved, odd = twice_at_once(
            NB01,
            # accents and a space (issue: ASCII only), typed decomposed: the notebook uses NFC
            dict(CODENAME=CODENAME_NFD, SESSION_A="alice-session-x", SESSION_B="bob-session-y"),
        )
    text = outputs_text(odd)
    assert "alice-session-x" in text and "bob-session-y" in text and "AURORA-7" not in text
    said = printed(odd)
    assert "Émeraude Heron 7" in line_after(said, "C2 (User A, alice-session-x):"), "C2 recalls it"
    assert "émeraude" not in line_after(said, "C3 (User B, bob-session-y):").lower()
    streamed(solved)
    solutions = printed(solved)
    assert "teal-42" not in line_after(solutions, "User A's session says:").lower()
    assert "aurora-7" in line_after(solutions, "restored session says:").lower()
    for log in set(LOGS.glob("*.log")) - logs_before:
        assert canary not in log.read_text(errors="replace"), f"canary leaked into {log.name}"
    assert canary not in text, "secret canary leaked into the executed notebook"
    within_an_hour(solved)


def test_notebook_02_twice_at_once_with_solutions_and_a_quoted_note() -> None:
    note = 'Say "hi" to Bob, then ship.'
    with leaves_nothing(NB02):
        solved, odd = twice_at_once(NB02, dict(NOTE_NAME="plan-b.txt", NOTE_TEXT=note))
    outputs = outputs_text(odd)
    assert "plan-b.txt" in outputs and "Ship the tutorial on Friday." not in outputs
    assert f"- read_file: {note}" in printed(odd), "the quoted note is read back as written"
    streamed(solved)
    solutions = printed(solved)
    assert "Refused" in line_after(solutions, "tool results the model saw:")
    assert re.search(r"^burst: one request alone \d+ ms, five at once \d+ ms$", solutions, re.M)
    assert line_after(solutions, "the file was written with:") == (
        "{'bare': True, 'custom:': True, '[]': False}"
    )
    assert re.search(
        r"^median: \d+ ms to create and delete the session, \d+ ms", printed(odd), re.M
    )
    within_an_hour(solved)
