"""examples/: each script runs on its own, on the stand-in and on the peer model, checks its own
claims, imports no ``helpers``, fails in one sentence when something is missing, and leaves no
process behind, even when interrupted with SIGINT part-way.
"""

from __future__ import annotations

import ast
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peer_model import PEER_MODEL, PeerModel
from support import REPO_ROOT, free_port

EXAMPLES = REPO_ROOT / "examples"
SCRIPTS = [
    "01_long_lived.py",
    "02_short_lived.py",
    "03_ownership_and_locks.py",
    "04_session_state_in_db.py",
    "05_streaming_http.py",
]
# What each script must print on any model, besides its closing "checked:" line.
SHOWN = {
    "01": ["C2, User A, the same session resumed by id:", "AURORA-7"],
    "02": ["refused paths: ['../outside.md']", "(deleted)"],
    "03": ["refused: User bob has no session", "two turns at once:"],
    "04": ["/session-state/events.jsonl", "runtime 2, the same session resumed by id:"],
    "05": ["refused: 404", "streamed in", "hung up after: [('tool'"],
}
ALLOWED = {"copilot", "pydantic", "aiosqlite", "fastapi", "uvicorn", "sse_starlette", "httpx"}
ALLOWED |= {"httpx_sse"}
RUN_TIMEOUT_S = 180
MODEL_VARS = ("COPILOT_TUTORIAL_BACKEND", "COPILOT_PROVIDER_BASE_URL", "COPILOT_PROVIDER_TYPE")
MODEL_VARS += ("COPILOT_PROVIDER_API_KEY", "COPILOT_MODEL", "CLI_URL", "COPILOT_CONNECTION_TOKEN")


def imported_modules(source: str) -> set[str]:
    """The top-level names of every module a script imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." if node.level else (node.module or "").split(".")[0])
    return found


def forbidden_imports(source: str) -> set[str]:
    """Imports that are neither the standard library nor the packages the examples may use."""
    return {m for m in imported_modules(source) if m not in sys.stdlib_module_names | ALLOWED}


def test_the_import_check_catches_helpers() -> None:
    assert forbidden_imports("import helpers.model.standin") == {"helpers"}
    assert forbidden_imports("def f():\n    from helpers.store import base") == {"helpers"}
    assert forbidden_imports("from . import common") == {"."}
    assert forbidden_imports("import asyncio\nfrom copilot import CopilotClient") == set()


def test_every_example_imports_only_the_sdk_the_stdlib_and_pinned_packages() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == SCRIPTS
    requirements = (REPO_ROOT / "requirements.txt").read_text().lower()
    for name in SCRIPTS:
        source = (EXAMPLES / name).read_text()
        assert not forbidden_imports(source), f"{name} imports {forbidden_imports(source)}"
        for package in imported_modules(source) & ALLOWED - {"copilot"}:
            assert package.replace("_", "-") in requirements, f"{package} is not pinned"


@dataclass
class Run:
    """One finished run of a script."""

    code: int
    out: str
    err: str


def environment(marker: str, **extra: str) -> dict[str, str]:
    """This process's environment without model settings, plus a marker every child inherits."""
    env = {k: v for k, v in os.environ.items() if k not in MODEL_VARS and k != "PYTHONPATH"}
    return {**env, "EXAMPLE_RUN_MARKER": marker, **extra}


def marked_processes(marker: str) -> dict[int, str]:
    """Processes whose environment carries ``marker`` (a script's children inherit it)."""
    needle = f"EXAMPLE_RUN_MARKER={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
    return {pid: cmd.decode(errors="replace") for pid, cmd in found.items()}


def start(
    name: str, env: dict[str, str], out: Path, script: Path | None = None
) -> subprocess.Popen:
    """Start a script as the README says: `.venv/bin/python examples/<name>` from the root."""
    script = script or EXAMPLES / name
    with out.open("wb") as stdout:
        return subprocess.Popen(
            [sys.executable, str(script)],
            cwd=script.parent.parent,
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )


def finish(proc: subprocess.Popen, out: Path, marker: str) -> Run:
    """Wait for a script; then nothing it started may be left, in its group or elsewhere."""
    try:
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    deadline = time.monotonic() + 10  # a child killed at the script's exit may take a moment
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:  # so that nothing outlives this test either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"left behind: {list(left.values())}"
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    return Run(proc.returncode, out.read_text(), err.decode())


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerModel]:
    with PeerModel() as model:
        yield model


@pytest.mark.runtime
@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_on_the_stand_in_and_on_the_peer(
    name: str, peer: PeerModel, tmp_path: Path
) -> None:
    """Both at once (each run waits on the runtime more than it computes): the suite's time."""
    canary = f"canary-{secrets.token_hex(8)}"
    byok = dict(
        COPILOT_TUTORIAL_BACKEND="byok",
        COPILOT_PROVIDER_BASE_URL=peer.base_url,
        COPILOT_MODEL=PEER_MODEL,
        COPILOT_PROVIDER_API_KEY=canary,  # the peer ignores it; it must never be printed
    )
    markers = {"stand-in": secrets.token_hex(8), "peer": secrets.token_hex(8)}
    envs = {
        "stand-in": environment(markers["stand-in"]),
        "peer": environment(markers["peer"], **byok),
    }
    answered = peer.answered
    procs = {model: start(name, envs[model], tmp_path / f"{model}.out") for model in envs}
    runs = {
        model: finish(procs[model], tmp_path / f"{model}.out", markers[model]) for model in procs
    }
    assert peer.answered > answered, "the byok run's requests went to the peer"
    for model, run in runs.items():
        shown = f"{name} on the {model} model:\n{run.out}\n{run.err}"
        assert run.code == 0, shown
        assert "\nchecked: " in "\n" + run.out, shown
        for text in SHOWN[name[:2]]:
            assert text in run.out, f"{shown}\nmissing: {text}"
        assert canary not in run.out + run.err, "a secret reached the output"


def interrupt(name: str, after: str, tmp_path: Path, sig: int) -> Run:
    """Run ``name`` on the stand-in and send it ``sig`` once ``after`` is printed."""
    marker, out = secrets.token_hex(8), tmp_path / "out"
    after, _, offset = after.partition("+")  # "+S": S seconds after that moment
    proc = start(name, environment(marker), out)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while after not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
        if after == "(a child started)" and len(marked_processes(marker)) > 2:
            break
        time.sleep(0.005)
    time.sleep(float(offset or 0))
    assert proc.poll() is None, f"{name} ended before {after!r}: {out.read_text()}"
    os.kill(proc.pid, sig)
    return finish(proc, out, marker)


# Where a signal lands: "(a child started)" as the runtime's process appears (swept over the
# next milliseconds: a child must be stopped even when the signal lands as it is being started),
# else once that line is printed ("checked:": in the clean-up). The suite takes four;
# EXAMPLES_SWEEP=1 takes every moment of every script with both signals (60 runs, about 3 minutes):
# `EXAMPLES_SWEEP=1 .venv/bin/python -m pytest tests/test_examples.py -k part_way`.
MOMENTS = {
    "01_long_lived.py": ["(a child started)", "C1, User A", "C2, User A"],
    "02_short_lived.py": ["(a child started)", "User A, session", "User B, session"],
    "03_ownership_and_locks.py": ["(a child started)", "alice's session:", "two turns at once:"],
    "04_session_state_in_db.py": ["(a child started)", "runtime 1, session", "checked:"],
    "05_streaming_http.py": ["(a child started)", "alice's session:", "asked again:"],
}
STARTING = ["(a child started)" + offset for offset in ("", "+0.001", "+0.003", "+0.01")]
SHORT = [
    ("01_long_lived.py", "(a child started)", signal.SIGINT),
    ("03_ownership_and_locks.py", "(a child started)+0.002", signal.SIGTERM),
    ("02_short_lived.py", "User A, session", signal.SIGTERM),  # between two requests
    ("05_streaming_http.py", "asked again:", signal.SIGINT),  # web server, a slow tool under way
]
SWEEP = [
    (name, after, sig)
    for name, moments in MOMENTS.items()
    for after in [*STARTING, *moments[1:]]
    for sig in (signal.SIGINT, signal.SIGTERM)
]


@pytest.mark.runtime
@pytest.mark.parametrize(
    ("name", "after", "sig"), SWEEP if os.environ.get("EXAMPLES_SWEEP") else SHORT
)
def test_sigint_or_sigterm_part_way_leaves_nothing(
    name: str, after: str, sig: int, tmp_path: Path
) -> None:
    run = interrupt(name, after, tmp_path, sig)
    stopped = run.code != 0 and "interrupted" in run.err
    # A signal in the clean-up after the last check may end with the clean-up and exit 0.
    assert stopped or (after == "checked:" and run.code == 0), f"{run.out}\n{run.err}"


def one_line_error(run: Run) -> str:
    lines = run.err.strip().splitlines()
    assert run.code != 0 and len(lines) == 1 and lines[0].startswith("error: "), run.err
    return lines[0]


@pytest.mark.runtime
def test_something_missing_is_one_sentence(peer: PeerModel, tmp_path: Path) -> None:
    """A model endpoint down, no runtime installed (a copy of the script in a checkout without
    node_modules), nothing at CLI_URL: each run exits 1 with one line naming what to do."""
    (tmp_path / "examples").mkdir()
    copy = Path(shutil.copy(EXAMPLES / "01_long_lived.py", tmp_path / "examples"))
    down = f"http://127.0.0.1:{free_port()}/v1"
    peer_env = dict(COPILOT_PROVIDER_BASE_URL=peer.base_url, COPILOT_MODEL=PEER_MODEL)
    cases = {
        "model down": (
            "02_short_lived.py",
            None,
            dict(COPILOT_PROVIDER_BASE_URL=down, COPILOT_MODEL="m"),
        ),
        "no runtime": ("", copy, peer_env),
        "no CLI_URL runtime": (
            "03_ownership_and_locks.py",
            None,
            dict(peer_env, CLI_URL=f"127.0.0.1:{free_port()}"),
        ),
    }
    markers = {case: secrets.token_hex(8) for case in cases}
    procs = {
        case: start(name, environment(markers[case], **env), tmp_path / f"{i}.out", script=script)
        for i, (case, (name, script, env)) in enumerate(cases.items())
    }
    lines = {
        case: one_line_error(finish(proc, tmp_path / f"{i}.out", markers[case]))
        for i, (case, proc) in enumerate(procs.items())
    }
    assert down in lines["model down"] and "COPILOT_PROVIDER_BASE_URL" in lines["model down"]
    assert "npm ci" in lines["no runtime"]
    assert "CLI_URL" in lines["no CLI_URL runtime"]
