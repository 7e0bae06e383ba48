"""Send each request to one of several runtimes, holding the session's lease while it runs."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from helpers.store.base import SessionStore
from helpers.store.lease import held

# A turn: (the runtime's client, session id, user, message) -> the reply's text.
Turn = Callable[[Any, str, str, str], Awaitable[str]]
STRATEGIES = ("least-busy", "hash")


@dataclass
class Router:
    """Pick a runtime per request (least busy, or by a hash of the session id) and run the turn."""

    clients: dict[str, Any]
    store: SessionStore
    turn: Turn
    strategy: str = "least-busy"
    lease_ttl_s: float = 60.0
    lease_wait_s: float = 30.0
    busy: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if not self.clients:
            raise ValueError("a router needs at least one runtime")

    def pick(self, session_id: str) -> str:
        """The name of the runtime for this request."""
        names = sorted(self.clients)
        if self.strategy == "hash":
            return names[zlib.crc32(session_id.encode()) % len(names)]
        return min(names, key=lambda name: (self.busy[name], self.served[name]))

    async def send(self, user: str, session_id: str, message: str) -> tuple[str, str]:
        """Run one turn on a runtime, under the session's lease; return (runtime, reply)."""
        await self.store.check_owner(user, session_id)
        name = self.pick(session_id)
        self.busy[name] += 1
        try:
            async with held(self.store, session_id, name, self.lease_ttl_s, self.lease_wait_s):
                reply = await self.turn(self.clients[name], session_id, user, message)
        finally:
            self.busy[name] -= 1
        self.served[name] += 1
        return name, reply
