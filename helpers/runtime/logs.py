"""Log text we show: the end of a log file, with every secret value replaced by ``***``."""

from __future__ import annotations

from pathlib import Path


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
