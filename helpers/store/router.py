"""Send each request to one of several runtimes, one request per session at a time.

A request, in order: check the owner (one refusal for unknown and foreign ids); pick a runtime that
is up (one whose last request failed on a dead or silent runtime is left out for ``retry_s``, then
tried again); on it, wait for the session's lock (one request per session per runtime, so no second
resume on one client replaces the first); take the session's lease with a token of this request
(one request per session across runtimes), renewed by a heartbeat; open the session (created until
the store marks it ready, then resumed; every write it makes fenced on the lease), send, and stop
the turn (``abort``) if it times out, the lease is lost or the request is cancelled; disconnect;
release only our lease. The clean-up runs to its end even when the request is cancelled.

A session whose clean-up the runtime did not confirm (a stalled machine) stays registered in that
runtime's client, and the SDK hands the stalled turn's late writes to whichever session object holds
the id on that client: the router closes that object first (``settle``) before it opens the session
there again, and refuses until the runtime answers. A failed request reads its turn back from the
store: a turn stored whole is reported as done, never as failed.
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

from helpers.errors import NoReply, NotYourSession, RuntimeDown, RuntimeGone
from helpers.serving.locks import SessionLocks
from helpers.serving.registry import refusal
from helpers.store.base import SessionStore, finish
from helpers.store.lease import Lease, current_lease, held
from helpers.store.session_fs import EVENTS
from helpers.store.turn import STOP_S, Turn, close, drop_opening, settle, stored_reply

# Open a session on a runtime: (client, session id, user, fresh) -> the SDK's session object.
# ``fresh`` is True when the store holds nothing of the session yet: create it, else resume it.
Opener = Callable[[Any, str, str, bool], Awaitable[Any]]
STRATEGIES = ("least-busy", "hash")


@dataclass
class Router:
    """Pick a runtime per request (least busy, or by a hash of the session id) and run the turn.

    ``lease_ttl_s`` is how long a crashed request can keep others off its session; the heartbeat
    renews every third of it, so it need not cover ``turn_timeout_s``. A request waits at most
    ``wait_s`` for the session's lock and lease together (default: one turn's timeout). A runtime
    that is down (its connection closed, or it did not answer) gets no requests for ``retry_s``.
    """

    clients: dict[str, Any]
    store: SessionStore
    open: Opener
    strategy: str = "least-busy"
    turn_timeout_s: float = 120.0
    lease_ttl_s: float = 30.0
    wait_s: float | None = None
    stop_s: float = STOP_S
    retry_s: float = 5.0
    busy: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    locks: dict[str, SessionLocks] = field(default_factory=dict)
    down: dict[str, float] = field(default_factory=dict)  # runtime -> when to try it again
    stale: dict[tuple[str, str], Any] = field(default_factory=dict)  # (runtime, id) -> session

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if not self.clients:
            raise ValueError("a router needs at least one runtime")
        if self.wait_s is None:
            self.wait_s = self.turn_timeout_s
        self.locks = {name: SessionLocks() for name in self.clients}

    def up(self, name: str) -> bool:
        """False while ``name``'s connection is closed or its last failure is under ``retry_s``."""
        if getattr(self.clients[name], "_runtime_gone", None):
            return False
        return self.down.get(name, 0.0) <= time.monotonic()

    def pick(self, session_id: str) -> str:
        """The name of the runtime for this request (one that is up, when any is)."""
        names = sorted(self.clients)
        live = [n for n in names if self.up(n)] or names
        usable = [n for n in live if (n, session_id) not in self.stale] or live
        if self.strategy == "hash":
            home = names[zlib.crc32(session_id.encode()) % len(names)]
            return home if home in usable else usable[zlib.crc32(session_id.encode()) % len(usable)]
        return min(usable, key=lambda name: (self.busy[name], self.served[name]))

    async def _check(self, user: str | None, session_id: str) -> None:
        """``NotYourSession`` unless ``user`` owns the id (an unknown id is refused too)."""
        await self.store.check_owner(user, session_id)  # type: ignore[arg-type]
        if user is None:
            raise refusal(str(user), session_id)

    async def _deleted(self, user: str, session_id: str) -> bool:
        """True when ``user`` no longer owns the session (False when the store cannot say)."""
        try:
            async with asyncio.timeout(self.stop_s):
                return await self.store.owner(session_id) != user
        except Exception:
            return False

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

        Raises ``NotYourSession`` (unknown or foreign id, or deleted meanwhile), ``LeaseBusy``
        (waited ``wait_s``), ``TimeoutError`` (the turn took over ``timeout_s``, default
        ``turn_timeout_s``; it was aborted), ``LeaseExpired`` (the lease was lost; the turn was
        aborted) or ``RuntimeDown``/``RuntimeGone`` (the runtime does not answer). A turn that
        was stored whole is returned, whatever went wrong after; a failure's message says when its
        message was stored without a reply.
        """
        await self._check(user, session_id)
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
                await self._check(user, session_id)  # deleted while we waited?
                reply = await self._turn(
                    name, user, session_id, message, timeout_s, lease, on_delta
                )
        except NotYourSession:
            raise
        except Exception as exc:
            if isinstance(exc, RuntimeGone | RuntimeDown) or not self.up(name):
                self.down[name] = time.monotonic() + self.retry_s
            if await self._deleted(user, session_id):  # deleted mid-request: what the runtime
                raise refusal(user, session_id) from exc  # said of it is no news to the caller
            raise
        finally:
            self.busy[name] -= 1
        self.down.pop(name, None)
        if reply is None:
            raise NoReply("the turn ended without a reply from the model")
        self.served[name] += 1
        return name, reply

    async def _turn(
        self,
        name: str,
        user: str,
        session_id: str,
        message: str,
        timeout_s: float | None,
        lease: Lease,
        on_delta: Callable[[str], object] | None = None,
    ) -> str | None:
        """Open the session (fenced on ``lease``), send, close it whatever happens; the reply.

        The clean-up (abort a running turn, disconnect) runs in a task of its own that a
        cancellation cannot cut (``finish``); a session the runtime did not confirm closed keeps
        the lease until it runs out with this request's writes refused (``Lease.retire``), and is
        closed again (``settle``) before the session is opened on that runtime again.
        """
        if (name, session_id) in self.stale:
            if not await settle(self.stale[name, session_id]):
                raise RuntimeDown(
                    f"runtime {name} has not closed an earlier request's turn of session "
                    f"{session_id!r} and does not answer: the session is not opened there"
                )
            del self.stale[name, session_id]
        ready = await resume_or_create(self.store, session_id, lease.holder)
        before = await self.store.size(session_id, EVENTS) if ready else 0
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
            await finish(drop_opening(self.store, opening, lease, ready, self.stop_s))
            raise
        turn = Turn(session, message, on_delta)
        failed: BaseException | None = None
        try:
            event = await lease.guard(turn.run(timeout_s or self.turn_timeout_s))
        except BaseException as exc:
            failed = exc
        stop = failed is not None and turn.sent is not False and not turn.idle.is_set()
        try:
            closed = await finish(
                close(self.store, session, turn.idle, stop, lease, ready, self.stop_s)
            )
        finally:
            turn.end()
        if not closed:
            self.stale[name, session_id] = session
        if failed is None and await _still_held(lease):
            return getattr(event.data, "content", None) or "" if event is not None else None
        if failed is not None and (turn.sent is False or not isinstance(failed, Exception)):
            raise failed  # no turn ran, or the caller is gone (cancelled): nobody to tell
        return await self._read_back(session_id, turn, before, lease, failed)

    async def _read_back(
        self, session_id: str, turn: Turn, before: int, lease: Lease, failed: BaseException | None
    ) -> str | None:
        """A turn that failed or lost its lease: its reply if the store holds it, else raise."""
        try:
            async with asyncio.timeout(self.stop_s):
                stored, reply = await finish(stored_reply(self.store, session_id, turn, before))
        except Exception:
            if failed is None:
                return None  # ``held`` reports the lost lease
            failed.add_note("whether its turn was stored could not be read back")
            raise failed from None
        if reply is not None:
            lease.confirmed = True  # stored whole: done, whatever came after
            return reply
        if failed is None:
            return None  # the lease was lost and the reply is not stored: ``held`` raises
        if stored:
            note = "its message was stored without a reply (a retry repeats the message)"
            if isinstance(failed, TimeoutError | RuntimeError):
                with contextlib.suppress(Exception):
                    failed = type(failed)(f"{failed}; {note}")
            failed.add_note(note)
        raise failed


async def _still_held(lease: Lease) -> bool:
    """True when ``lease`` was never lost and its token holds it now (``held`` need not ask)."""
    if lease.lost.is_set():
        return False
    try:
        await lease.check()
    except Exception:
        return False
    lease.confirmed = True
    return True


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
