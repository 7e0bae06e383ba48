"""The processes of an instance: its Copilot runtime among its descendants (to freeze it)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def runtime_pids(pid: int) -> list[int]:
    """The Copilot runtime's processes: descendants of ``pid`` whose command names copilot."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError, ValueError):
            tasks = Path(f"/proc/{parent}/task").glob("*/children")  # threads start children too
            for child in map(int, " ".join(t.read_text() for t in tasks).split()):
                todo.append(child)
                command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                if b"copilot" in command and b"guard" not in command:
                    found.append(child)
    return found
