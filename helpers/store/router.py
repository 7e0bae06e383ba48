"""Send each request to one of several runtimes, one request per session at a time.

A request, in order: check the owner (one refusal for unknown and foreign ids); on the chosen
runtime, wait for the session's lock (one request per session per runtime, so no second resume on
one client replaces the first); take the session's lease with a token of this request (one
request per session across runtimes), renewed by a heartbeat; open the session (created until
the store marks it ready, then resumed; every write it makes fenced on the lease), send, and stop
the turn (``abort``) if it times out, the lease is lost or the request is cancelled; disconnect;
release only our lease. The clean-up runs to its end even when the request is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from helpers.errors import NoReply
from helpers.events import deltas_to
from helpers.serving.locks import SessionLocks
from helpers.store.base import SessionStore, finish
from helpers.store.lease import Lease, current_lease, held
from helpers.store.session_fs import EVENTS

# Open a session on a runtime: (client, session id, user, fresh) -> the SDK's session object.
# ``fresh`` is True when the store holds nothing of the session yet: create it, else resume it.
Opener = Callable[[Any, str, str, bool], Awaitable[Any]]
STRATEGIES = ("least-busy", "hash")
STOP_S = 10.0  # how long an aborted turn may take to go idle, and a disconnect to finish
# With the lease lost, the runtime's writes of the aborted turn are refused and its idle may never
# come: wait less (the store is safe either way; the disconnect unloads the session).
LOST_STOP_S = 1.0


@dataclass
class Router:
    """Pick a runtime per request (least busy, or by a hash of the session id) and run the turn.

    ``lease_ttl_s`` is how long a crashed request can keep others off its session; the heartbeat
    renews every third of it, so it need not cover ``turn_timeout_s``. A request waits at most
    ``wait_s`` for the session's lock and lease together (default: one turn's timeout).
    """

    clients: dict[str, Any]
    store: SessionStore
    open: Opener
    strategy: str = "least-busy"
    turn_timeout_s: float = 120.0
    lease_ttl_s: float = 30.0
    wait_s: float | None = None
    busy: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    locks: dict[str, SessionLocks] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if not self.clients:
            raise ValueError("a router needs at least one runtime")
        if self.wait_s is None:
            self.wait_s = self.turn_timeout_s
        self.locks = {name: SessionLocks() for name in self.clients}

    def pick(self, session_id: str) -> str:
        """The name of the runtime for this request."""
        names = sorted(self.clients)
        if self.strategy == "hash":
            return names[zlib.crc32(session_id.encode()) % len(names)]
        return min(names, key=lambda name: (self.busy[name], self.served[name]))

    async def send(
        self,
        user: str,
        session_id: str,
        message: str,
        timeout_s: float | None = None,
        on_delta: Callable[[str], object] | None = None,
    ) -> tuple[str, str]:
        """Run one turn of ``user``'s session on a runtime; return (runtime, reply).

        ``on_delta`` gets each piece of the reply as the model writes it (sessions the opener
        opens with ``streaming=True``), within the same lock and lease as the turn.

        Raises ``NotYourSession`` (unknown or foreign id, nothing ran), ``LeaseBusy`` (waited
        ``wait_s``), ``TimeoutError`` (the turn took over ``timeout_s``, default
        ``turn_timeout_s``; it was aborted) or ``LeaseExpired`` (the lease was lost; the turn
        was aborted). Only a returned reply is a turn that ran alone on its session.
        """
        await self.store.check_owner(user, session_id)
        name = self.pick(session_id)
        self.busy[name] += 1
        try:
            deadline = time.monotonic() + float(self.wait_s or 0)
            async with (
                self.locks[name].turn(session_id, float(self.wait_s or 0)),
                held(
                    self.store,
                    session_id,
                    self.lease_ttl_s,
                    max(0.0, deadline - time.monotonic()),
                    label=name,
                ) as lease,
            ):
                await self.store.check_owner(user, session_id)  # deleted while we waited?
                event = await self._turn(
                    name, user, session_id, message, timeout_s, lease, on_delta
                )
        finally:
            self.busy[name] -= 1
        if event is None:
            raise NoReply("the turn ended without a reply from the model")
        self.served[name] += 1
        return name, getattr(event.data, "content", None) or ""

    async def _turn(
        self,
        name: str,
        user: str,
        session_id: str,
        message: str,
        timeout_s: float | None,
        lease: Lease,
        on_delta: Callable[[str], object] | None = None,
    ) -> Any:
        """Open the session (fenced on ``lease``), send, and close it whatever happens.

        The clean-up (abort a running turn, disconnect) runs in a task of its own that a
        cancellation cannot cut (``finish``); a session that could not be closed keeps the
        lease until it runs out (``lease.keep``), and its late writes are refused after that.
        """
        ready = await resume_or_create(self.store, session_id, lease.holder)
        token = current_lease.set(lease)  # the opener's store_fs fences on the request's lease
        try:
            opening = asyncio.ensure_future(
                self.open(self.clients[name], session_id, user, not ready)
            )
        finally:
            current_lease.reset(token)
        try:
            async with asyncio.timeout(self.turn_timeout_s):  # a resume that hangs, too
                session = await lease.guard(asyncio.shield(opening))
        except BaseException:
            await finish(_drop_opening(self.store, opening, lease, ready))
            raise
        idle = asyncio.Event()
        deltas = deltas_to(on_delta)

        def on_event(event: Any) -> None:
            if _is_idle(event):
                idle.set()
            deltas(event)

        unsubscribe = session.on(on_event)
        failed = False
        try:
            return await lease.guard(
                session.send_and_wait(message, timeout=timeout_s or self.turn_timeout_s)
            )
        except BaseException:
            failed = True
            raise
        finally:
            stop = failed and not idle.is_set()  # the turn may still run: stop it
            await finish(_close(self.store, session, idle, stop, unsubscribe, lease, ready))


async def _close(
    store: SessionStore,
    session: Any,
    idle: asyncio.Event,
    stop: bool,
    unsubscribe: Callable[[], Any],
    lease: Lease,
    ready: bool,
) -> None:
    """Stop the turn if asked, then disconnect; unconfirmed, keep the lease till it runs out.

    A session created by this request is marked ready once its history is stored (the runtime
    writes ``events.jsonl`` with the first turn, not at ``create_session``): a create cut before
    that is created again by the next request.
    """
    if stop:
        await stop_turn(session, idle, LOST_STOP_S if lease.lost.is_set() else STOP_S)
    with contextlib.suppress(Exception):
        unsubscribe()
    try:
        async with asyncio.timeout(STOP_S):
            await session.disconnect()
    except Exception:
        lease.keep = True
    if not ready:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_S):
                if await store.read(session.session_id, EVENTS, content=False):
                    await store.mark_ready(session.session_id, lease.holder)


async def resume_or_create(store: SessionStore, session_id: str, holder: str | None) -> bool:
    """True: resume the session; False: create it (after removing a create cut part-way).

    ``ready`` says a create returned whole; a stored first turn whose request ended before it
    could say so counts too. Rows without either are a create that a cancelled request cut: no
    resume can load them, so they go (fenced on ``holder``, as every write of the request is).
    """
    if await store.ready(session_id):
        return True
    if await store.read(session_id, EVENTS, content=False):
        await store.mark_ready(session_id, holder)
        return True
    if await store.started(session_id):
        await store.remove(session_id, "/", recursive=True, holder=holder)
    return False


async def _drop_opening(
    store: SessionStore, opening: asyncio.Future[Any], lease: Lease, ready: bool
) -> None:
    """An open whose request failed or was cancelled: let it end (``STOP_S``), then close it."""
    done, _ = await asyncio.wait({opening}, timeout=STOP_S)
    if not done:
        opening.cancel()
        lease.keep = True  # the runtime may still be opening it
        return
    if opening.cancelled() or opening.exception() is not None:
        return
    await _close(store, opening.result(), asyncio.Event(), False, lambda: None, lease, ready)


def _is_idle(event: Any) -> bool:
    return getattr(getattr(event, "type", None), "value", "") == "session.idle"


async def stop_turn(session: Any, idle: asyncio.Event, wait_s: float = STOP_S) -> None:
    """Abort the session's running turn and wait (at most ``wait_s``) until ``idle`` is set."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(wait_s):
            await session.abort()
            await idle.wait()
