"""Clean-up at kernel exit, and Run All again in one kernel: the earlier run is cleaned up first."""

from __future__ import annotations

from helpers.run import RUNS, at_kernel_exit, latest_run, remove_dir, run_dir


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
