"""One streamed turn: the model's deltas as they arrive, then the whole message or an error.

The turn runs in a task of its own, apart from the HTTP response that reads it. When the reader
goes away (the browser tab closed, the network dropped) the response calls ``abandon()``; the task
then aborts the turn in the runtime (``session.abort()``) instead of letting it run on, and
releases what it held (the lock, the lease, the session) the same way as on a normal end.

The final event (the whole message, or an error) is sent only after the session is closed and the
lease given back, and after ``settle`` has looked at what the store holds: a caller told "failed"
may retry at once, and a turn the store kept anyway is reported as kept. One exception: when the
store fails under a running turn (``store_failed``, set by the opener's store), the caller is told
``store_down`` at once, with ``stored`` unknown, and the letting go goes on after, as long as the
database takes to answer (a stalled database would otherwise hold the reader for the whole stall).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from copilot.session import CopilotSession

from helpers.errors import (
    Draining,
    LeaseBusy,
    LeaseExpired,
    NoTokenForUser,
    NotStored,
    NotYourSession,
    RuntimeDown,
    RuntimeGone,
    StoreDown,
)

ABORT_WAIT_S = 10.0
STORE_ABORT_S = 2.0  # how long aborting a turn whose store failed may take (no wait for idle)
log = logging.getLogger("helpers.web")

# What a caller is told for each code whose details (database address, runtime URL, holder names,
# the runtime's own words) belong in the server's log only. Other codes' messages are our own.
PUBLIC_MESSAGES = {
    "store_down": "the database did not answer: try again in a moment",
    "runtime_down": "the Copilot runtime is not available: try again in a moment",
    "draining": "this instance is shutting down: try again in a moment",
    "busy": "another turn of this conversation is running: try again in a moment",
    "lease_lost": "this turn lost its hold on the conversation and was stopped",
    "model_error": "the turn failed in the runtime (details are in the server's log)",
    "internal": "an internal error (details are in the server's log)",
}

# What a turn's stream carries: ("delta", {"text": ...}) ..., then ("message", {...}) or
# ("error", {"error": code, "message": ...}).
Event = tuple[str, dict[str, Any]]
Opener = Callable[["Turn"], contextlib.AbstractAsyncContextManager[CopilotSession]]


def error_code(exc: BaseException) -> str:
    """A short, stable name for what went wrong, for the error event and the HTTP status."""
    if isinstance(exc, StoreDown) or type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg"):
        return "store_down"
    if isinstance(exc, RuntimeGone | RuntimeDown | ConnectionError):
        return "runtime_down"
    if isinstance(exc, NotStored):
        return "not_stored"
    if isinstance(exc, Draining):
        return "draining"
    if isinstance(exc, LeaseBusy):
        return "busy"
    if isinstance(exc, LeaseExpired):
        return "lease_lost"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, NoTokenForUser):
        return "no_github_token"
    if isinstance(exc, NotYourSession):
        return "not_found"
    return "internal"


def public_message(code: str, detail: str) -> str:
    """What the caller may read for ``code``; a withheld ``detail`` goes to the log instead."""
    public = PUBLIC_MESSAGES.get(code)
    if public is None:
        return detail
    log.warning("turn failed (%s): %s", code, detail)
    return public


@dataclass
class TurnResult:
    """How a turn ended, for the caller that started it and for tests."""

    text: str = ""
    error: str = ""
    aborted: bool = False
    abandoned: bool = False
    deltas: int = 0
    first_delta_s: float | None = None
    last_delta_s: float | None = None
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)
    message_id: str = ""  # the id of this turn's ``user.message`` event, once the runtime sent it


class Turn:
    """A turn of ``prompt`` in a session that ``opener`` opens (and closes) around it."""

    def __init__(
        self,
        prompt: str,
        opener: Opener,
        timeout_s: float,
        abort_abandoned: bool = True,
        after: Callable[[TurnResult], Awaitable[None]] | None = None,
        finished: Callable[[], None] | None = None,
        settle: Callable[[Turn, Event], Awaitable[Event]] | None = None,
    ) -> None:
        self.prompt, self.timeout_s = prompt, timeout_s
        self.abort_abandoned = abort_abandoned
        self.result = TurnResult()
        self._opener, self._after, self._finished = opener, after, finished
        self._settle = settle
        self._final: Event | None = None
        self.sent: list[Event] = []  # the deltas so far, in order (kept for a replay)
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._abandoned = asyncio.Event()
        self._stop_reason = ""
        self._stop_code = "stopped"
        self.store_failed = asyncio.Event()  # set when a store call made for this turn failed
        self._told = False  # the reader was told the end before the turn let go
        self._start = time.perf_counter()
        self.task = asyncio.ensure_future(self._run())

    @property
    def done(self) -> bool:
        return self.task.done()

    def abandon(self) -> None:
        """Nobody reads this turn any more: abort it (if ``abort_abandoned``) and let go."""
        self.result.abandoned = True
        self._abandoned.set()

    def stop(self, reason: str, code: str = "stopped") -> None:
        """Abort the turn now (the service stops, or a caller asked) and tell the reader
        ``reason``, with ``code``."""
        if not self._stop_reason:
            self._stop_reason, self._stop_code = reason, code
        self._abandoned.set()

    async def events(self) -> AsyncIterator[Event]:
        """The stream, in order; leaving it early (a closed connection) abandons the turn."""
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    return
                yield item
        finally:
            if not self.task.done():
                self.abandon()

    async def wait(self) -> TurnResult:
        """Run the turn to its end without reading the stream; return how it ended."""
        await asyncio.shield(self.task)
        return self.result

    def _put(self, kind: str, data: dict[str, Any]) -> None:
        self.sent.append((kind, data))
        self._queue.put_nowait((kind, data))

    def fail(self, code: str, message: str) -> None:
        """End the stream with an error event (the first one counts), sent once the turn let go."""
        if not self.result.error:
            self.result.error = code
            self._final = ("error", {"error": code, "message": public_message(code, message)})

    async def _run(self) -> None:
        try:
            try:
                async with self._opener(self) as session:
                    await self._converse(session)
                    if not self.result.error and self._after is not None:
                        await self._after(self.result)
            except Exception as exc:  # every failure reaches the caller as an error event
                self.fail(error_code(exc), str(exc) or type(exc).__name__)
            final = self._final or ("message", {"text": self.result.text})
            if self._settle is not None:  # the session closed, the lease given back: look now
                try:
                    final = await self._settle(self, final)
                except Exception as exc:
                    log.warning("settling a turn failed: %r", exc)
            if not self._told:
                self._queue.put_nowait(final)
        finally:
            self.result.seconds = time.perf_counter() - self._start
            self._queue.put_nowait(None)
            if self._finished is not None:
                self._finished()

    def _tell_store_down(self) -> None:
        """End the reader's stream now with ``store_down``; whether it was stored is unknown."""
        if self._told or self._final is None:
            return
        kind, data = self._final
        unknown = " (whether the turn was stored is unknown: retry it)"
        self._queue.put_nowait(
            (kind, {**data, "message": data["message"] + unknown, "stored": None})
        )
        self._queue.put_nowait(None)
        self._told = True

    async def _converse(self, session: CopilotSession) -> None:
        ended = asyncio.Event()
        texts: list[str] = []
        errors: list[str] = []

        def on_event(event: Any) -> None:
            kind = getattr(event.type, "value", str(event.type))
            self.result.events.append(kind)
            if kind == "assistant.message_delta":
                piece = getattr(event.data, "delta_content", "") or ""
                now = time.perf_counter() - self._start
                if self.result.first_delta_s is None:
                    self.result.first_delta_s = now
                self.result.last_delta_s = now
                self.result.deltas += 1
                if piece:
                    self._put("delta", {"text": piece})
            elif kind == "user.message" and not self.result.message_id:
                self.result.message_id = str(getattr(event, "id", "") or "")
            elif kind == "assistant.message":
                content = getattr(event.data, "content", "") or ""
                if content:
                    texts.append(content)
            elif kind == "session.error":
                errors.append(getattr(event.data, "message", "") or "session error")
                ended.set()
            elif kind == "session.idle":
                ended.set()

        unsubscribe = session.on(on_event)
        try:
            await session.send(self.prompt)
            waits = {
                asyncio.ensure_future(ended.wait()),
                asyncio.ensure_future(self._gone(session)),
                asyncio.ensure_future(self.store_failed.wait()),
            }
            try:
                await asyncio.wait(waits, timeout=self.timeout_s, return_when="FIRST_COMPLETED")
            finally:
                for waiting in waits:
                    waiting.cancel()
            if ended.is_set():
                if errors and "persist session events" in errors[-1]:
                    self.fail(
                        "store_down",
                        "the database did not take this turn's events, so the turn is not done "
                        f"(the runtime said: {errors[-1]})",
                    )
                    self._tell_store_down()
                elif errors:
                    self.fail("model_error", f"the turn failed in the runtime: {errors[-1]}")
                elif not texts:
                    self.fail("no_reply", "the turn ended without a reply from the model")
                else:
                    self.result.text = texts[-1]
                return
            if gone := getattr(session, "_runtime_gone", None):
                self.fail("runtime_down", gone)
                return
            if self.store_failed.is_set():  # the runtime is fine: stop the turn, do not wait it out
                self.fail("store_down", "the database did not answer while the turn ran")
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STORE_ABORT_S):
                        await session.abort()
                        self.result.aborted = True
                self._tell_store_down()
                return
            if self._abandoned.is_set() and not self.abort_abandoned and not self._stop_reason:
                # The rule switched off: nobody listens, yet the turn runs on to its end.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), self.timeout_s)
                self.fail("abandoned", "the caller went away; the turn ran on to its end")
                return
            try:
                await session.abort()
                self.result.aborted = True
            except Exception as exc:  # the session was replaced or closed under us
                self.result.events.append(f"abort failed: {type(exc).__name__}")
            if self.result.aborted:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), ABORT_WAIT_S)
            if self._stop_reason:
                self.fail(self._stop_code, f"{self._stop_reason}: the turn was aborted")
            elif self._abandoned.is_set():
                self.fail("abandoned", "the caller went away; the turn was aborted")
            else:
                done = "the turn was aborted" if self.result.aborted else "the abort failed"
                self.fail("timeout", f"no reply within {self.timeout_s:g} s; {done}")
        finally:
            unsubscribe()

    async def _gone(self, session: CopilotSession) -> None:
        """Return when the reader went away or the runtime's connection closed (watchdog)."""
        while not getattr(session, "_runtime_gone", None):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._abandoned.wait(), 0.2)
                return
