"""Send each request to one of several runtimes, one request per session at a time.

A request, in order: check the owner (one refusal for unknown and foreign ids); on the chosen
runtime, wait for the session's lock (one request per session per runtime, so no second resume on
one client replaces the first); take the session's lease with a token of this request (one
request per session across runtimes), renewed by a heartbeat; open the session, send, and stop
the turn (``abort``) if it times out or the lease is lost; disconnect; release only our lease.
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
from helpers.serving.locks import SessionLocks
from helpers.store.base import SessionStore
from helpers.store.lease import held

# Open a session on a runtime: (client, session id, user, fresh) -> the SDK's session object.
# ``fresh`` is True when the store holds nothing of the session yet: create it, else resume it.
Opener = Callable[[Any, str, str, bool], Awaitable[Any]]
STRATEGIES = ("least-busy", "hash")
STOP_S = 10.0  # how long an aborted turn may take to go idle, and a disconnect to finish


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
        self, user: str, session_id: str, message: str, timeout_s: float | None = None
    ) -> tuple[str, str]:
        """Run one turn of ``user``'s session on a runtime; return (runtime, reply).

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
                fresh = not await self.store.started(session_id)
                async with asyncio.timeout(self.turn_timeout_s):  # a resume that hangs, too
                    opening = self.open(self.clients[name], session_id, user, fresh)
                    session = await lease.guard(opening)
                idle = asyncio.Event()
                unsubscribe = session.on(lambda event: _is_idle(event) and idle.set())
                try:
                    event = await lease.guard(
                        session.send_and_wait(message, timeout=timeout_s or self.turn_timeout_s)
                    )
                except BaseException:
                    if not idle.is_set():  # the turn still runs on the runtime: stop it
                        await stop_turn(session, idle)
                    raise
                finally:
                    unsubscribe()
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(STOP_S):
                            await session.disconnect()
        finally:
            self.busy[name] -= 1
        if event is None:
            raise NoReply("the turn ended without a reply from the model")
        self.served[name] += 1
        return name, getattr(event.data, "content", None) or ""


def _is_idle(event: Any) -> bool:
    return getattr(getattr(event, "type", None), "value", "") == "session.idle"


async def stop_turn(session: Any, idle: asyncio.Event, wait_s: float = STOP_S) -> None:
    """Abort the session's running turn and wait (at most ``wait_s``) until ``idle`` is set."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(wait_s):
            await session.abort()
            await idle.wait()
