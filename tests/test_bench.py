"""The benchmarks in bench/ run end to end on short settings and end with their lines for scripts.

Their figures are not asserted (performance targets are met in the benchmarks' own full runs on a
quiet machine, never in timed tests); what is checked is that each command works, cleans up, and
prints its last line in the form scripts read.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from support import REPO_ROOT, our_runtime_processes

from helpers.fleet.nginx import INSTALL_HINT as NGINX_HINT
from helpers.fleet.nginx import find_nginx

pytestmark = pytest.mark.runtime
BENCH = REPO_ROOT / "bench"


def run(script: str, *args: str, timeout: float = 300) -> list[str]:
    before = set(our_runtime_processes())
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert set(our_runtime_processes()) <= before, f"{script} left a runtime running"
    return done.stdout.strip().splitlines()


def test_the_soak_smoke() -> None:
    lines = run("bench_soak.py", "--requests", "60", "--warmup", "12", "--window", "12")
    assert re.fullmatch(
        r"soak: 60 requests, p50 drift [+-]\d+\.\d%, memory drift [+-]\d+\.\d%", lines[-1]
    )
    assert (REPO_ROOT / "tmp" / "bench-soak.png").exists()


def test_the_requests_smoke() -> None:
    lines = run("bench_requests.py", "--requests", "3", "--levels", "1", "2")
    assert re.fullmatch(r"median latency ratio \(fastest / naive\): \d+\.\d\d", lines[-3])
    assert re.fullmatch(r"p95 latency ratio \(fastest / naive\): \d+\.\d\d", lines[-2])
    assert re.fullmatch(
        r"throughput ratio at 2 \(fastest / naive, same transport\): \d+\.\d\d", lines[-1]
    )


def test_the_long_conversation_smoke() -> None:
    lines = run("bench_conversation.py", "--turns", "12", "--prompt-chars", "200")
    assert re.fullmatch(
        r"long conversation at 12 turns: SQLite turn \d+\.\d\dx local, "
        r"PostgreSQL turn (\d+\.\d\dx|skipped) local, growth \d+\.\d\dx",
        lines[-1],
    )


def test_the_fault_run_smoke() -> None:
    """The service killed (-9) under load and started again: every turn reported done is stored
    once, in order (the script exits 1 otherwise)."""
    lines = run(
        "web_faults.py", "--faults", "kill", "--engine", "sqlite", "--users", "2", "--seconds", "6"
    )
    assert lines[-1] == "goal 0 lost, 0 doubled, 0 forks: met", lines[-6:]
    assert re.match(r"kill +SQLite +[1-9]\d* ", lines[-2]), lines[-6:]


@pytest.mark.postgres
@pytest.mark.skipif(find_nginx() is None, reason=NGINX_HINT)
def test_the_fleet_smoke() -> None:
    """Three instances behind nginx against one directly, briefly; no fault (tests/test_fleet.py
    causes them). The table has its rows; the ratio and the machine's cores are said."""
    lines = run("fleet.py", "--seconds", "2", "--users", "8", "--sizes", "3", "--faults", "none")
    found = [re.match(r"(\d (?:direct|behind nginx)) +8 +(\d+\.\d) ", line) for line in lines]
    rows = {m.group(1): float(m.group(2)) for m in found if m}
    assert set(rows) == {"1 direct", "3 behind nginx"}, lines
    assert re.fullmatch(r"this machine has \d+ cores: .*", lines[-2])
    assert re.fullmatch(
        r"ratio 3 behind nginx / 1 direct at 8 users: \d+\.\d\d \(goal >= 0\.9\)", lines[-1]
    )
