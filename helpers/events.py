"""A session's events: read from ``events.jsonl``, checked for forks, watched as they arrive, and
the reply's pieces passed on while the model writes it (``deltas_to``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from copilot.session import CopilotSession


def parse_events(text: str) -> list[dict[str, Any]]:
    """The events of an ``events.jsonl`` text, one dict per non-empty line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def user_texts(events: list[dict[str, Any]]) -> list[str]:
    """The user messages among ``events``, in order."""
    return [e["data"].get("content", "") for e in events if e.get("type") == "user.message"]


def user_messages(events_path: Path) -> list[str]:
    """The user messages recorded in a session's ``events.jsonl``, decoded from JSON."""
    return user_texts(parse_events(Path(events_path).read_text()))


def forks(events: list[dict[str, Any]]) -> int:
    """How many events do not follow the event before them (0 for a linear history)."""
    return sum(
        1
        for before, event in zip(events, events[1:], strict=False)
        if event.get("parentId") != before.get("id")
    )


def deltas_to(on_delta: Callable[[str], object] | None) -> Callable[[Any], None]:
    """A handler for ``session.on``: the text of each ``assistant.message_delta`` to ``on_delta``.

    The runtime sends these events only to a session opened with ``streaming=True``, one per piece
    of the reply as the model writes it. Only the session's own reply is passed on (a sub-agent's
    events carry an ``agent_id``), empty pieces are not, and ``None`` passes on nothing. A model
    that answers in one piece gives one delta (or none): the caller then has the reply at once,
    from ``send_and_wait`` as always.
    """

    def on_event(event: Any) -> None:
        if on_delta is None or getattr(event, "agent_id", None):
            return
        if getattr(event.type, "value", event.type) == "assistant.message_delta":
            piece = getattr(event.data, "delta_content", "") or ""
            if piece:
                on_delta(piece)

    return on_event


class EventLog:
    """Record a session's event types (deltas left out) with seconds since the log started."""

    def __init__(self, session: CopilotSession) -> None:
        self.start = time.perf_counter()
        self.seen: list[tuple[float, str]] = []
        self._changed = asyncio.Event()
        self._stop = session.on(self._record)

    def _record(self, event: object) -> None:
        kind = getattr(getattr(event, "type", None), "value", str(getattr(event, "type", "?")))
        if "delta" not in kind:
            self.seen.append((time.perf_counter() - self.start, kind))
            self._changed.set()

    def count(self, kind: str) -> int:
        """How many events of ``kind`` arrived so far."""
        return sum(1 for _, k in self.seen if k == kind)

    def first_after(self, kind: str, t: float) -> float | None:
        """When the first ``kind`` event after ``t`` seconds arrived, or ``None``."""
        return next((at for at, k in self.seen if k == kind and at > t), None)

    def now(self) -> float:
        """Seconds since the log started."""
        return time.perf_counter() - self.start

    async def wait_for(self, kind: str, count: int, timeout: float) -> float:
        """Wait until ``count`` events of ``kind`` have arrived; return when the last one did."""
        async with asyncio.timeout(timeout):
            while self.count(kind) < count:
                self._changed.clear()
                await self._changed.wait()
        return [at for at, k in self.seen if k == kind][count - 1]

    def close(self) -> None:
        """Stop recording."""
        self._stop()
