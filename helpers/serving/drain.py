"""Shutting down without cutting a turn in half: stop taking requests, wait, then stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from helpers.errors import Draining


class Drain:
    """Count the requests in flight; ``drain()`` refuses new ones and waits for the running."""

    def __init__(self) -> None:
        self.accepting = True
        self.running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """Wrap one request; raises ``Draining`` once ``drain()`` has begun."""
        if not self.accepting:
            raise Draining("shutting down: this request was not started")
        self.running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.running -= 1
            if self.running == 0:
                self._idle.set()

    async def drain(self, timeout: float, stop: Callable[[], Awaitable[None] | None]) -> int:
        """Refuse new requests, wait up to ``timeout`` s for running ones, then call ``stop``.

        Returns:
            How many requests were still running when the wait ended (0 = a clean drain).
        """
        self.accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        left = self.running
        result = stop()
        if result is not None:
            await result
        return left
