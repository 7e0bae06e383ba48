"""Runtime logs: the end of one, secrets replaced by ``***``; only the newest few kept."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

KEEP_LOGS = 20  # runtime logs kept in tmp/logs/ (the newest), besides any written to recently
RECENT_S = 3600.0  # a log written to within this long is kept whatever its rank


def redact(text: str, secret_values: list[str]) -> str:
    """Replace every secret value in ``text`` with ``***``."""
    for value in secret_values:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def log_tail(path: Path, lines: int = 20, secret_values: list[str] | None = None) -> str:
    """The last lines of a log file, with secrets redacted."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log written)"
    tail = "\n".join(text.splitlines()[-lines:]) or "(log is empty)"
    return redact(tail, secret_values or [])


def prune_logs(folder: Path, keep: int = KEEP_LOGS, recent_s: float = RECENT_S) -> list[Path]:
    """Delete ``folder``'s ``runtime-*.log`` files but the newest ``keep`` and the recently written.

    Only files named ``runtime-*.log`` directly in ``folder`` are candidates: nothing else under
    ``tmp/`` (a service's data, run folders, executed notebooks) is ever touched. Returns what
    was deleted.
    """
    logs: list[tuple[float, Path]] = []
    for path in Path(folder).glob("runtime-*.log"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                logs.append((path.stat().st_mtime, path))
    logs.sort(reverse=True)
    now, deleted = time.time(), []
    for mtime, path in logs[keep:]:
        if now - mtime < recent_s:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted.append(path)
    return deleted
