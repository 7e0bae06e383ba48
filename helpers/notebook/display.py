"""Plain-text display helpers: they print, so every output also reads well headless."""

from __future__ import annotations

import inspect
import logging
import textwrap
import time
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from helpers.errors import NoReply
from helpers.events import parse_events
from helpers.model.standin import RequestRecord, StandInModel
from helpers.run import relative

_SKIP_DIRS = {"installed-plugins", "logs"}


class _OneLine(logging.Formatter):
    """Format SDK log records as one line, without the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return f"[sdk {record.levelname.lower()}] {record.getMessage()}"

    def formatException(self, ei: object) -> str:  # noqa: N802 - logging API
        return ""


def tidy_sdk_logging() -> None:
    """Show the SDK's own error logs as one line each instead of full tracebacks."""
    logger = logging.getLogger("copilot")
    if not any(isinstance(h.formatter, _OneLine) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(_OneLine())
        handler.setLevel(logging.ERROR)
        logger.addHandler(handler)
        logger.propagate = False


def short(text: str | None, width: int = 100) -> str:
    """One line, shortened to ``width`` characters."""
    return (
        textwrap.shorten(" ".join((text or "").split()), width=width, placeholder=" …") or "(empty)"
    )


def text_of(event: object) -> str:
    """The text of what ``send_and_wait`` returned; raise ``NoReply`` when it returned ``None``.

    ``send_and_wait`` returns ``None`` when the session went idle without an assistant message
    (for example a model that answered with nothing). Every cell reads replies through here.
    """
    if event is None:
        raise NoReply("the turn ended without a reply from the model (send_and_wait returned None)")
    return getattr(event.data, "content", None) or ""


_SECRET_KEYS = ("api_key", "apikey", "token", "bearer", "password", "secret", "authorization")


def redacted(value: object) -> object:
    """A copy of ``value`` (dicts and lists, nested) with secret-looking keys' values as ``***``."""
    if isinstance(value, dict):
        return {
            k: "***" if any(s in str(k).lower() for s in _SECRET_KEYS) and v else redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def session_options(options: dict[str, object]) -> None:
    """Print the keyword arguments passed on create/resume, secrets redacted."""
    for key, value in redacted(options).items():  # type: ignore[union-attr]
        print(f"  {key} = {value!r}")


def source(obj: object) -> None:
    """Print the source code of a function or class, with where it is defined."""
    print(f"# {relative(Path(inspect.getsourcefile(obj) or '?'))}")  # type: ignore[arg-type]
    print(inspect.getsource(obj).rstrip())


def session_leftovers(home: Path | None) -> list[str]:
    """Every file a runtime home's ``session-state`` holds, dot-folders included."""
    if home is None or not (Path(home) / "session-state").exists():
        return []
    state = Path(home) / "session-state"
    return sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file())


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
    return records


def file_contains(root: Path, *needles: str) -> list[str]:
    """Files under ``root`` whose text holds any of ``needles`` (case-insensitive, NFC, any script).

    Files are read as UTF-8 (undecodable bytes kept as U+FFFD), so ``Émeraude`` is found in a
    file that says ``ÉMERAUDE``, as ``AURORA`` is in one that says ``aurora``.
    """
    hits = []
    wanted = [unicodedata.normalize("NFC", needle).casefold() for needle in needles if needle]
    for path in Path(root).rglob("*"):
        if path.is_file():
            text = unicodedata.normalize("NFC", path.read_bytes().decode("utf-8", "replace"))
            if any(needle in text.casefold() for needle in wanted):
                hits.append(relative(path))
    return hits


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


class Stopwatch:
    """Named laps in milliseconds: ``with clock.lap("create"): ...``."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def lap(self, name: str) -> _Lap:
        return _Lap(self, name)


class _Lap:
    def __init__(self, clock: Stopwatch, name: str) -> None:
        self._clock, self._name = clock, name

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._clock.ms[self._name] = (time.perf_counter() - self._start) * 1000
