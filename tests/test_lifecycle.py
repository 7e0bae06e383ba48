"""Clean-up at kernel exit, and Run All again in one kernel: the earlier run is cleaned up first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from helpers.run import RUNS, at_kernel_exit, finish_run, latest_run, remove_dir, run_dir


def test_a_new_run_of_the_same_name_cleans_up_the_earlier_one_first() -> None:
    calls: list[str] = []
    first = run_dir("zz-lifecycle")
    (first / "state.txt").write_text("first run")
    at_kernel_exit(lambda: calls.append(f"clean {first.name}, folder there: {first.exists()}"))
    other = run_dir("zz-other")  # another notebook's run in the same kernel is left alone
    second = run_dir("zz-lifecycle")
    try:
        assert calls == [f"clean {first.name}, folder there: True"], (
            "the earlier run's clean-up should run once, before its folder is removed"
        )
        assert not first.exists() and second.exists() and other.exists()
        assert latest_run() == second
        run_dir("zz-lifecycle")
        assert len(calls) == 1, "a run that registered no clean-up has none to run"
    finally:
        for folder in RUNS.glob("zz-*"):
            remove_dir(folder)


def test_the_run_cleans_up_newest_first_then_removes_its_folder_unless_kept() -> None:
    calls: list[str] = []
    try:
        kept = run_dir("zz-kept", keep=True)
        at_kernel_exit(lambda: calls.append("kept"))
        run = run_dir("zz-steps")
        at_kernel_exit(lambda: calls.append(f"first, folder there: {run.exists()}"))
        at_kernel_exit(lambda: 1 / 0, lambda: calls.append("after a failing step"))
        finish_run(run)
        assert calls == ["after a failing step", "first, folder there: True"], calls
        assert not run.exists(), "the folder goes after its steps, even when one of them failed"
        finish_run(run)
        assert len(calls) == 2, "a second clean-up does nothing"
        finish_run(kept)
        assert calls[-1] == "kept" and kept.exists(), "keep=True keeps the folder"
    finally:
        for folder in RUNS.glob("zz-*"):
            remove_dir(folder)


FAILS_PART_WAY = """
import sys
from helpers.run import at_kernel_exit, run_dir
run = run_dir("zz-fails", keep=sys.argv[1] == "keep")
print(run, flush=True)
at_kernel_exit(lambda: print("stopped the runtime", flush=True))
{ending}
"""


@pytest.mark.parametrize(
    "ending",
    [
        "raise RuntimeError('a cell failed')",
        "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
    ],
)
@pytest.mark.parametrize("keep", [False, True])
def test_a_run_that_fails_part_way_cleans_up_as_a_passing_one_does(ending: str, keep: bool) -> None:
    """Issue: the clean-up was registered only when the clean-up section was reached."""
    done = subprocess.run(
        [sys.executable, "-c", FAILS_PART_WAY.format(ending=ending), "keep" if keep else "no"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    try:
        assert done.returncode != 0, "the run failed"
        folder, said = done.stdout.splitlines()
        assert said == "stopped the runtime", done.stdout + done.stderr
        assert Path(folder).exists() == keep, "KEEP_STATE alone keeps the folder"
    finally:
        for folder in RUNS.glob("zz-*"):
            remove_dir(folder)
