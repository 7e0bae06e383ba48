"""One request per session at a time: a lease row with an expiry, held by one request's token.

The holder is a fresh random token per request, never a runtime's name: two requests of one
session on one runtime are two holders, and only one of them gets the lease. While the request
runs, a heartbeat renews the lease every third of its TTL; a request whose lease could not be
renewed is told at once (``Lease.lost``) and must stop its turn. A release frees the lease only if
this token still holds it.

Each renewal has a timeout, and the holder counts its lease as lost a margin (``margin_s``)
before it runs out by its own clock, whether or not a renewal answered. That alone cannot make one
holder of a holder that stalls (a paused process writes late), so the store fences every write
made for the request (``StoreFs(lease=...)``): it happens only while this token holds the lease,
in the same transaction, and is refused otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from helpers.errors import LeaseBusy, LeaseExpired
from helpers.store.base import SessionStore, finish

POLL_S = 0.02
T = TypeVar("T")
# The lease of the request whose session is being opened (set by ``Router.send`` around its
# opener): ``store_fs`` called in the opener fences the session's writes on it.
current_lease: contextvars.ContextVar[Lease | None] = contextvars.ContextVar(
    "current_lease", default=None
)


def request_token(label: str = "request") -> str:
    """A holder name for one request: ``label`` (for people reading the table) + random hex."""
    return f"{label}#{secrets.token_hex(6)}"


@dataclass
class Lease:
    """One request's right to have ``session_id`` open on a runtime, renewed while it runs."""

    store: SessionStore
    session_id: str
    ttl_s: float = 30.0
    holder: str = field(default_factory=request_token)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    margin_s: float | None = None  # counted lost this long before expiry (default: ttl / 5)
    keep: bool = False  # set when the session could not be closed: let the lease run out
    confirmed: bool = False  # set when the request's turn was read back stored whole
    safe_until: float = 0.0  # time.monotonic() until which we count the lease as ours

    @property
    def margin(self) -> float:
        return self.ttl_s / 5 if self.margin_s is None else self.margin_s

    async def acquire(self, wait_s: float = 0.0) -> Lease:
        """Take the lease, waiting up to ``wait_s`` for the holder; else raise ``LeaseBusy``."""
        deadline = time.monotonic() + wait_s
        while True:
            asked = time.monotonic()
            try:
                taken = await self.store.try_lease(self.session_id, self.holder, self.ttl_s)
            except asyncio.CancelledError:  # taken just before? give it back (ours only)
                with contextlib.suppress(Exception):
                    await finish(asyncio.wait_for(self.release(), max(self.ttl_s, 1.0)))
                raise
            if taken:
                self.safe_until = asked + self.ttl_s - self.margin
                break
            if time.monotonic() >= deadline:
                current = await self.store.lease_of(self.session_id)
                who = current[0] if current else "another request"
                raise LeaseBusy(
                    f"session {self.session_id!r} is held by {who}; {self.holder} waited "
                    f"{wait_s:.1f} s and gave up"
                )
            await asyncio.sleep(POLL_S)
        return self

    async def check(self) -> None:
        """Raise ``LeaseExpired`` unless this token still holds an unexpired lease."""
        current = await self.store.lease_live(self.session_id)
        if self.lost.is_set() or current is None or current[0] != self.holder:
            self._expired(current)
        if not current[1] or time.monotonic() >= self.safe_until:  # type: ignore[index]
            self._expired(current)

    def _expired(self, current: tuple[str, object] | None) -> None:
        self.lost.set()
        taken = current is not None and current[0] != self.holder
        now_held = f", now held by {current[0]}" if taken else ""  # type: ignore[index]
        raise LeaseExpired(
            f"the lease of {self.holder} on session {self.session_id!r} ran out before the "
            f"request ended (ttl {self.ttl_s} s){now_held}: its turn was stopped, do not trust it"
        )

    async def renew(self) -> None:
        """Push the expiry ``ttl_s`` ahead; raise ``LeaseExpired`` if it ran out or was taken.

        The renewal must answer before the lease's safe time is up (else ``TimeoutError``).
        """
        asked = time.monotonic()
        renewed = False
        if asked < self.safe_until:  # else: counted lost by our clock, whatever the row says
            try:
                async with asyncio.timeout(self.safe_until - asked):
                    renewed = await self.store.extend_lease(
                        self.session_id, self.holder, self.ttl_s
                    )
            except TimeoutError:
                self.lost.set()
                raise LeaseExpired(
                    f"the renewal of {self.holder}'s lease on session {self.session_id!r} did "
                    f"not answer before its safe time ran out (ttl {self.ttl_s} s)"
                ) from None
        if not renewed:
            self._expired(await self.store.lease_of(self.session_id))
        self.safe_until = asked + self.ttl_s - self.margin

    async def heartbeat(self) -> None:
        """Renew every ``ttl_s / 3`` until cancelled; when a renewal fails, does not answer in
        time, or the safe time (expiry less ``margin``) passes first, set ``lost`` and stop."""
        while not self.lost.is_set():
            await asyncio.sleep(max(0.0, min(self.ttl_s / 3, self.safe_until - time.monotonic())))
            if time.monotonic() >= self.safe_until:
                break
            try:
                await self.renew()
            except Exception:  # lost, too slow, or the database failed us: we cannot prove it
                break
        self.lost.set()

    async def guard(self, work: Awaitable[T]) -> T:
        """Await ``work``, but cancel it and raise ``LeaseExpired`` as soon as the lease is lost."""
        task = asyncio.ensure_future(work)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.cancelled() or not task.done():
            await self.check()  # raises LeaseExpired
        return task.result()

    async def retire(self) -> None:
        """Keep the lease until it runs out, but refuse this token's writes from now on.

        For a session the runtime did not confirm closed: its late writes must not land, and no
        other request may open the session before the TTL is out (its holder may still be alive).
        """
        self.lost.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(self.ttl_s, 1.0)):
                await self.store.execute(
                    "UPDATE session_leases SET holder = ? WHERE session_id = ? AND holder = ?",
                    (f"{self.holder}/retired", self.session_id, self.holder),
                )

    async def release(self) -> bool:
        """Give the lease back if this token still holds it; True if it did."""
        return await self.store.drop_lease(self.session_id, self.holder)


@contextlib.asynccontextmanager
async def held(
    store: SessionStore,
    session_id: str,
    ttl_s: float = 30.0,
    wait_s: float = 0.0,
    label: str = "request",
) -> AsyncIterator[Lease]:
    """Hold a new lease on ``session_id`` for the block, renewed by a heartbeat.

    On leaving, raise ``LeaseExpired`` if the lease was lost meanwhile (the block's work must not
    be reported as done), and release it: only this request's token, never another's.
    """
    lease = await Lease(store, session_id, ttl_s, request_token(label)).acquire(wait_s)
    beating = asyncio.ensure_future(lease.heartbeat())
    try:
        yield lease
        if not lease.confirmed:
            await lease.check()
    finally:
        # In a task of its own: a cancellation (an anyio scope cancels at every await) cannot
        # cut the release; a lease whose session could not be closed (``keep``) runs out instead.
        await finish(_end(lease, beating))


async def _end(lease: Lease, beating: asyncio.Future[None]) -> None:
    beating.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await beating
    if not lease.keep:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(lease.ttl_s, 1.0)):
                await lease.release()
