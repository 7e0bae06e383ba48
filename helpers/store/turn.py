"""One turn of an open session, as the router runs it: send, wait for its end, stop and close it,
and what the store holds of it afterwards.

``session.send`` is never cut by a cancellation (``finish``): the SDK writes each message from a
thread pool, and a send cancelled while still queued there is never written, so only an answered
send tells whether the runtime has a turn to stop. ``stored_reply`` reads the turn back from the
store, so a request that failed can say whether its turn was stored anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from helpers.errors import RuntimeGone
from helpers.events import deltas_to, parse_events
from helpers.store.base import SessionStore, finish
from helpers.store.lease import Lease
from helpers.store.session_fs import EVENTS

SEND_S = 10.0  # how long the runtime may take to accept a message (it answers before the turn)
STOP_S = 10.0  # how long an aborted turn may take to go idle, and a disconnect to finish
# With the lease lost, the runtime's writes of the aborted turn are refused and its idle may never
# come: wait less (the store is safe either way; the disconnect unloads the session).
LOST_STOP_S = 1.0
SETTLE_S = 2.0  # how long a runtime may take to close a session it left open (it answers at once)


def _kind(event: Any) -> str:
    return getattr(getattr(event, "type", None), "value", "")


@dataclass
class Turn:
    """One message sent to ``session`` and the events that answer it (matched by message id).

    ``sent`` is ``True`` once the runtime accepted the message, ``False`` when the send failed
    (no turn runs), ``None`` while it is unknown (not sent yet, or the send did not answer).
    """

    session: Any
    message: str
    on_delta: Callable[[str], object] | None = None
    sent: bool | None = None
    message_id: str | None = None
    reply: Any = None
    error: BaseException | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # any idle of the session
    done: asyncio.Event = field(default_factory=asyncio.Event)  # this turn's idle or error
    _started: bool = False
    _unsubscribe: Callable[[], Any] = lambda: None
    _early: list[Any] = field(default_factory=list)

    def _on_event(self, event: Any) -> None:
        if _kind(event) == "session.idle":
            self.idle.set()
        if getattr(event, "agent_id", None):
            return
        self._deltas(event)
        if self.message_id is None:
            self._early.append(event)  # before the send answered: matched once it has
        else:
            self._match(event)

    def _match(self, event: Any) -> None:
        kind, data = _kind(event), event.data
        if kind == "user.message" and getattr(data, "message_id", None) == self.message_id:
            self._started = True
        elif kind == "assistant.message":
            origin = getattr(data, "originating_message_id", None)
            if origin == self.message_id or (not origin and self._started):
                self._started, self.reply = True, event
        elif kind == "session.idle" and self._started:
            if getattr(data, "aborted", False):
                self.error = RuntimeError("the turn was aborted before its reply")
            self.done.set()
        elif kind == "session.error":
            origin = getattr(data, "originating_message_id", None)
            if not origin or origin == self.message_id:
                self.error = RuntimeError(f"session error: {getattr(data, 'message', data)}")
                self.done.set()

    def _closed(self) -> None:
        """The SDK's (and the watchdog's) signal that the session or its connection closed."""
        gone = getattr(self.session, "_runtime_gone", None)
        self.error = RuntimeGone(gone) if gone else RuntimeError("the session closed mid-turn")
        self.done.set()

    async def _send(self) -> None:
        try:
            async with asyncio.timeout(SEND_S):
                self.message_id = await self.session.send(self.message)
        except TimeoutError:
            raise  # unknown: the message may have reached the runtime
        except BaseException:
            self.sent = False
            raise
        self.sent = True
        for event in self._early:
            self._match(event)
        self._early.clear()

    def end(self) -> None:
        """Stop listening to the session (after ``close``: an aborted turn's idle is awaited)."""
        getattr(self.session, "_response_waits", set()).discard(self._closed)
        with contextlib.suppress(Exception):
            self._unsubscribe()

    async def run(self, timeout_s: float) -> Any:
        """Send and wait for the turn's end; the last reply event (or ``None``).

        Raises ``TimeoutError`` after ``timeout_s``, ``RuntimeGone`` when the runtime's connection
        closed, ``RuntimeError`` for an aborted or failed turn. A cancellation waits for the send
        to answer (at most ``SEND_S``), so ``sent`` is known afterwards.
        """
        self._deltas = deltas_to(self.on_delta)
        if gone := getattr(self.session, "_runtime_gone", None):
            self.sent = False
            raise RuntimeGone(gone)
        self._unsubscribe = self.session.on(self._on_event)
        getattr(self.session, "_response_waits", set()).add(self._closed)
        try:
            async with asyncio.timeout(timeout_s):
                await finish(self._send())
                await self.done.wait()
        except TimeoutError:
            raise TimeoutError(f"the turn took over {timeout_s:.1f} s; it was stopped") from None
        if self.error is not None:
            raise self.error
        return self.reply


async def stored_reply(
    store: SessionStore, session_id: str, turn: Turn, before: int
) -> tuple[bool, str | None]:
    """Whether ``turn``'s message is stored, and the reply stored after it (or ``None``).

    The message is found by its id when the send answered, else by its text among the events
    appended after byte ``before`` of ``events.jsonl``; the reply is the first assistant message
    after it and before the next user message.
    """
    row = await store.read(session_id, EVENTS)
    if row is None:
        return False, None
    text = row.content
    if turn.message_id is None:
        text = text.encode()[before:].decode(errors="replace")
    stored, reply = False, None
    for event in parse_events(text):
        data = event.get("data") or {}
        if event.get("type") == "user.message":
            if stored:
                break
            if turn.message_id is not None:
                stored = data.get("messageId") == turn.message_id
            else:
                stored = data.get("content") == turn.message
        elif stored and event.get("type") == "assistant.message":
            reply = data.get("content") or ""
            break
    return stored, reply


async def close(
    store: SessionStore,
    session: Any,
    idle: asyncio.Event,
    stop: bool,
    lease: Lease,
    ready: bool,
    stop_s: float = STOP_S,
) -> bool:
    """Stop the turn if asked, then disconnect; True when the runtime confirmed it (or is gone).

    Unconfirmed, the lease is kept till it runs out but retired: nothing of this request can be
    written any more. A session created by this request is marked ready once its history is
    stored (the runtime writes ``events.jsonl`` with the first turn, not at ``create_session``):
    a create cut before that is created again by the next request.
    """
    if stop:
        await stop_turn(session, idle, LOST_STOP_S if lease.lost.is_set() else stop_s)
    confirmed = True
    try:
        async with asyncio.timeout(stop_s):
            await session.disconnect()
    except Exception:
        confirmed = bool(getattr(session, "_runtime_gone", None))  # a dead runtime writes nothing
    if not ready:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(stop_s):
                if await store.read(session.session_id, EVENTS, content=False):
                    await store.mark_ready(session.session_id, lease.holder)
    if not confirmed:
        lease.keep = True
        await lease.retire()
    return confirmed


async def settle(session: Any, wait_s: float = SETTLE_S) -> bool:
    """Close a session object a runtime left open: True once the runtime answered.

    An answer (even an error: the runtime no longer has it) comes after everything the runtime sent
    before it, so no late write of that session can reach the next session object of that id.
    """
    try:
        async with asyncio.timeout(wait_s):
            with contextlib.suppress(Exception):
                await session.abort()
            await session.disconnect()
    except TimeoutError:
        return False
    except Exception:
        return True
    return True


async def drop_opening(
    store: SessionStore, opening: asyncio.Future[Any], lease: Lease, ready: bool, stop_s: float
) -> None:
    """An open whose request failed or was cancelled: let it end (``stop_s``), then close it."""
    done, _ = await asyncio.wait({opening}, timeout=stop_s)
    if not done:
        opening.cancel()
        lease.keep = True  # the runtime may still be opening it
        await lease.retire()
        return
    if opening.cancelled() or opening.exception() is not None:
        return
    await close(store, opening.result(), asyncio.Event(), False, lease, ready, stop_s)


async def stop_turn(session: Any, idle: asyncio.Event, wait_s: float = STOP_S) -> None:
    """Abort the session's running turn and wait (at most ``wait_s``) until ``idle`` is set."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(wait_s):
            await session.abort()
            await idle.wait()
