"""Runtime logs in tmp/logs/: the newest few kept, nothing else under tmp/ touched."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from helpers.runtime import server as server_module
from helpers.runtime.logs import prune_logs
from helpers.runtime.server import start_server


def logs_aged(folder: Path, count: int, age_s: float) -> list[Path]:
    """``count`` runtime logs in ``folder``, the first the newest, all older than ``age_s``."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for n in range(count):
        path = folder / f"runtime-2026{n:04d}-000000-{n:06x}.log"
        path.write_text(f"log {n}\n")
        stamp = time.time() - age_s - n * 60
        os.utime(path, (stamp, stamp))
        made.append(path)
    return made


def test_only_the_newest_old_logs_are_kept_and_nothing_else(tmp_path: Path) -> None:
    logs = logs_aged(tmp_path, 8, age_s=7200)
    others = [tmp_path / "notes.log", tmp_path / "runtime-data.db", tmp_path / "web-data" / "x"]
    others[2].parent.mkdir()
    for path in others:
        path.write_text("keep me")
    deleted = prune_logs(tmp_path, keep=3)
    assert sorted(deleted) == sorted(logs[3:])
    assert [p.exists() for p in logs] == [True] * 3 + [False] * 5
    assert all(p.exists() for p in others), "only runtime-*.log files are candidates"


def test_logs_written_to_recently_are_kept_whatever_their_rank(tmp_path: Path) -> None:
    recent = logs_aged(tmp_path / "recent", 4, age_s=5)  # their runtimes may still be writing
    old = logs_aged(tmp_path / "old", 3, age_s=7200)
    for path in recent + old:
        path.rename(tmp_path / path.name.replace("runtime-2026", f"runtime-{path.parent.name}"))
    prune_logs(tmp_path, keep=2, recent_s=3600)
    names = sorted(p.name for p in tmp_path.glob("runtime-*.log"))
    assert names == sorted(f"runtime-recent{p.name[12:]}" for p in recent), names


def test_starting_a_runtime_prunes_the_logs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "copilot"
    fake.write_text("#!/bin/sh\necho 'listening on port 4321'\nexec sleep 30\n")
    fake.chmod(0o755)
    folder = tmp_path / "logs"
    old = logs_aged(folder, 30, age_s=7200)
    monkeypatch.setenv("COPILOT_CLI_PATH", str(fake))
    monkeypatch.setattr(server_module, "LOGS", folder)
    server = start_server(None, home=tmp_path / "home", timeout=10)
    try:
        kept = sorted(folder.glob("runtime-*.log"))
        assert len(kept) == 20 and server.log_path in kept, "the newest 20, its own among them"
        assert all(not p.exists() for p in old[19:]), "the oldest went"
    finally:
        server.stop()
