"""One turn at a time per session, different sessions in parallel: a lock per session id.

Within one client (one runtime), a second ``resume_session`` of an id replaces the first
request's registration; holding the session's lock from before the resume until after the
disconnect keeps one request per session on that client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class SessionLocks:
    """An ``asyncio.Lock`` per session id, made on first use."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, session_id: str) -> asyncio.Lock:
        """The lock of ``session_id`` (the same object every time)."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    @contextlib.asynccontextmanager
    async def turn(self, session_id: str, timeout: float) -> AsyncIterator[None]:
        """Hold ``session_id``'s lock for one turn; wait at most ``timeout`` seconds for it."""
        lock = self.lock(session_id)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can time out after the lock was
        # acquired and lose it (held for ever); a cancelled Lock.acquire passes the lock on.
        async with asyncio.timeout(timeout):
            await lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def forget(self, session_id: str) -> None:
        """Drop the lock of a deleted session (only when nobody holds it)."""
        lock = self._locks.get(session_id)
        if lock is not None and not lock.locked():
            del self._locks[session_id]

    def __len__(self) -> int:
        return len(self._locks)
