"""One holder per session at a time: a lease row with an expiry, in the session store."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from helpers.errors import LeaseBusy, LeaseExpired
from helpers.store.base import SessionStore

POLL_S = 0.02


@dataclass
class Lease:
    """The right of ``holder`` (a runtime) to keep ``session_id`` open, until ``ttl_s`` passes."""

    store: SessionStore
    session_id: str
    holder: str
    ttl_s: float = 30.0

    async def acquire(self, wait_s: float = 0.0) -> Lease:
        """Take the lease, waiting up to ``wait_s`` for the holder; else raise ``LeaseBusy``."""
        deadline = time.monotonic() + wait_s
        while not await self.store.try_lease(self.session_id, self.holder, self.ttl_s):
            if time.monotonic() >= deadline:
                current = await self.store.lease_of(self.session_id)
                who = current[0] if current else "another holder"
                raise LeaseBusy(
                    f"session {self.session_id!r} is held by {who}; {self.holder} waited "
                    f"{wait_s:.1f} s and gave up"
                )
            await asyncio.sleep(POLL_S)
        return self

    async def check(self) -> None:
        """Raise ``LeaseExpired`` unless we still hold an unexpired lease."""
        current = await self.store.lease_of(self.session_id)
        if current is None or current[0] != self.holder or current[1] < time.time():
            taken = current is not None and current[0] != self.holder
            now_held = f", now held by {current[0]}" if taken else ""  # type: ignore[index]
            raise LeaseExpired(
                f"the lease of {self.holder} on session {self.session_id!r} expired before the "
                f"turn ended (ttl {self.ttl_s} s){now_held}: do not trust this turn's history"
            )

    async def renew(self) -> None:
        """Push the expiry ``ttl_s`` ahead; raise ``LeaseExpired`` if someone took it meanwhile."""
        if not await self.store.extend_lease(self.session_id, self.holder, self.ttl_s):
            await self.check()  # raises LeaseExpired, naming who holds it now

    async def release(self) -> bool:
        """Give the lease back; True if we still held it."""
        return await self.store.drop_lease(self.session_id, self.holder)


@contextlib.asynccontextmanager
async def held(
    store: SessionStore, session_id: str, holder: str, ttl_s: float = 30.0, wait_s: float = 0.0
) -> AsyncIterator[Lease]:
    """Hold the session's lease for the block; check it did not expire; always release it."""
    lease = await Lease(store, session_id, holder, ttl_s).acquire(wait_s)
    try:
        yield lease
        await lease.check()
    finally:
        await lease.release()
