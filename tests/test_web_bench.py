"""The web benchmark's smoke run: both modes, a few users, every stream its own, no errors.

The figures are printed, never asserted (targets are met in ``bench/web.py`` runs, not in tests).
"""

from __future__ import annotations

import pytest
from web_fixture import ServiceThread

from helpers.web import bench
from helpers.web.service import Settings

pytestmark = pytest.mark.runtime


def test_the_benchmark_runs_both_modes_without_errors_or_leaks() -> None:
    web = ServiceThread(Settings(pool_size=1))
    try:
        points = web.call(bench.compare(web.service, web.url, (1, 4), turns=1), 180)
        left, _ = web.call(web.service.store.execute("SELECT session_id FROM sessions"))
    finally:
        web.stop()
    assert [(p.mode, p.users) for p in points] == [
        ("in-process", 1),
        ("HTTP", 1),
        ("in-process", 4),
        ("HTTP", 4),
    ]
    for point in points:
        print(point.row())
        assert len(point.samples) == point.users and point.errors == 0 and point.leaks == 0
        assert all(s.first_s is not None and 0 < s.first_s <= s.last_s for s in point.samples)
        assert point.rps > 0
    lines = bench.summary(points)
    print("\n".join(lines))
    assert lines[-1] == "errors: 0; cross-user leaks: 0"
    assert left == [], "the benchmark deletes its conversations"


def test_the_benchmark_script_runs_on_a_short_setting() -> None:
    import subprocess
    import sys

    from support import REPO_ROOT, our_runtime_processes

    before = set(our_runtime_processes())
    done = subprocess.run(
        [sys.executable, "bench/web.py", "--users", "1,2", "--turns", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "errors: 0; cross-user leaks: 0" and lines[-1] == "plot: tmp/bench-web.png"
    assert lines[0].startswith("mode | users | turns | first token median ms")
    assert set(our_runtime_processes()) <= before, "the benchmark left a runtime running"
