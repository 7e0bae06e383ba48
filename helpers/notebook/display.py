"""Plain-text display helpers: they print, so every output also reads well headless.

This is what the notebooks import as ``show``. It also hands on, unchanged, what the notebooks
reach through ``show`` but belongs to another job: reading a reply (``sdk_replies``), redacting
secrets (``redaction``), what a run left on disk (``probes``), timing laps (``request_timing``) and
the SDK's log format (``sdk_logging``).
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Iterable
from pathlib import Path

from helpers.events import parse_events
from helpers.model.standin import RequestRecord, StandInModel
from helpers.notebook.probes import file_contains, session_leftovers
from helpers.notebook.redaction import redacted
from helpers.notebook.request_timing import Stopwatch
from helpers.notebook.sdk_logging import tidy_sdk_logging
from helpers.notebook.sdk_replies import text_of
from helpers.run import relative

__all__ = [  # what show.* offers, defined here or in the module named above
    "Stopwatch",
    "events",
    "file_contains",
    "log_mark",
    "model_requests",
    "redacted",
    "reply",
    "session_leftovers",
    "session_options",
    "short",
    "source",
    "table",
    "text_of",
    "tidy_sdk_logging",
    "tree",
]

_SKIP_DIRS = {"installed-plugins", "logs"}


def short(text: str | None, width: int = 100) -> str:
    """One line, shortened to ``width`` characters."""
    return (
        textwrap.shorten(" ".join((text or "").split()), width=width, placeholder=" …") or "(empty)"
    )


def session_options(options: dict[str, object]) -> None:
    """Print the keyword arguments passed on create/resume, secrets redacted."""
    for key, value in redacted(options).items():  # type: ignore[union-attr]
        print(f"  {key} = {value!r}")


def source(obj: object) -> None:
    """Print the source code of a function or class, with where it is defined."""
    print(f"# {relative(Path(inspect.getsourcefile(obj) or '?'))}")  # type: ignore[arg-type]
    print(inspect.getsource(obj).rstrip())


def reply(label: str, text: str | None) -> None:
    """Print who answered and what."""
    print(f"{label}: {text if text else '(no reply)'}")


def tree(root: Path, max_depth: int = 4, max_entries: int = 40) -> None:
    """Print a folder as an indented tree, relative to the repository."""
    root = Path(root)
    print(f"{relative(root)}/")
    if not root.exists():
        print("  (does not exist)")
        return
    shown = 0

    def walk(folder: Path, depth: int) -> None:
        nonlocal shown
        for entry in sorted(folder.iterdir(), key=lambda p: (p.is_file(), p.name)):
            if shown >= max_entries:
                return
            shown += 1
            size = f"  ({entry.stat().st_size} B)" if entry.is_file() else "/"
            print(f"{'  ' * depth}{entry.name}{size}")
            if entry.is_dir() and depth < max_depth and entry.name not in _SKIP_DIRS:
                walk(entry, depth + 1)

    walk(root, 1)
    if shown >= max_entries:
        print("  …")


def events(
    path: Path,
    types: Iterable[str] = ("session.start", "session.resume", "user.message", "assistant.message"),
) -> None:
    """Print the interesting lines of a session's ``events.jsonl``, one per event."""
    wanted = set(types)
    print(f"{relative(Path(path))}:")
    for event in parse_events(Path(path).read_text()):
        if event.get("type") not in wanted:
            continue
        data = event.get("data", {})
        detail = data.get("content") or data.get("sessionId") or data.get("resumeTime") or ""
        print(f"  {event['timestamp'][11:19]}  {event['type']:<18} {short(str(detail), 70)}")


def log_mark(model: StandInModel | None) -> int:
    """The number of the stand-in's latest request (0 if none, or not the local backend)."""
    if model is None or not model.requests:
        return 0
    return model.requests[-1].number


def model_requests(model: StandInModel | None, since: int) -> list[RequestRecord]:
    """Print what the stand-in model received after request number ``since``; return those."""
    if model is None:
        print("(only the local backend records what the model receives)")
        return []
    records = [record for record in model.requests if record.number > since]
    for record in records:
        tools = ", ".join(record.tool_names) or "none"
        print(
            f"request #{record.number}: {len(record.user_messages)} user message(s), tools: {tools}"
        )
        for index, text in enumerate(record.user_messages, 1):
            print(f"    user[{index}]: {short(text, 80)}")
        for text in record.tool_results:
            print(f"    tool result: {short(text, 76)}")
    return records


def table(rows: list[dict[str, object]]) -> None:
    """Print a list of dicts as an aligned text table."""
    if not rows:
        print("(no rows)")
        return
    headers = list(rows[0])
    cells = [[str(row.get(h, "")) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
