"""Short-lived sessions prepared ahead: created before the request, used once, deleted after.

A request takes a ready session, binds it to its user (the tools, defined once, find the user
through ``invocation.session_id``), sends one turn, and gives the session back; the pool then
disconnects and deletes it in the background and creates a replacement. A request that finds no
session ready waits for one already being made rather than making another (under load, a second
create per request would cost the runtime the throughput the pool is meant to keep); with none
being made, it creates its own. No session serves two requests, and ``close()`` waits until
every session it made is deleted.

Every session alive in the runtime costs it CPU on every request it serves (measured in
bench/bench_requests.py: 32 idle sessions raise a request's runtime CPU by about a third), so the
pool bounds the sessions it has alive, ready, being made, serving or being deleted, at
``size + spare``. When requests take that room (at ``size`` at once and more), the pool prepares
fewer ahead and those requests create their own, as the naive request does: under saturation it
costs the runtime what the naive request costs, and when the load drops it fills up again,
``refill_at_once`` creates at a time, so that the refill does not compete in a burst with the
requests still being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from copilot.session import CopilotSession

from helpers.errors import PoolClosed

CreateFn = Callable[[], Awaitable[CopilotSession]]
DeleteFn = Callable[[CopilotSession], Awaitable[None]]


class SessionPool:
    """Keep ``size`` sessions ready; each serves exactly one request."""

    def __init__(
        self,
        create: CreateFn,
        delete: DeleteFn,
        size: int = 4,
        wait_timeout: float = 60.0,
        spare: int = 2,
        refill_at_once: int = 2,
    ) -> None:
        if size < 1 or spare < 0:
            raise ValueError("size must be at least 1 and spare at least 0")
        self.size, self.wait_timeout, self.spare = size, wait_timeout, spare
        self.refill_at_once = refill_at_once
        self._create, self._delete = create, delete
        self._ready: deque[CopilotSession] = deque()
        self._users: dict[str, str] = {}
        self._making = 0
        self._serving = 0  # requests between take() and give_back()
        self._deleting = 0
        self._waiting: deque[asyncio.Future[CopilotSession | None]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self.served: list[str] = []
        self.created: set[str] = set()
        self.deleted: set[str] = set()
        self.errors: list[str] = []
        self.closed = False

    def user_of(self, session_id: str) -> str | None:
        """The user whose request ``session_id`` is serving now, or ``None``."""
        return self._users.get(session_id)

    @property
    def ready(self) -> int:
        """Sessions created and waiting for a request."""
        return len(self._ready)

    @property
    def alive(self) -> int:
        """Sessions of this pool in the runtime: ready, being made, serving, being deleted."""
        return len(self._ready) + self._making + self._serving + self._deleting

    def ready_ids(self) -> set[str]:
        """The ids of the sessions waiting for a request."""
        return {session.session_id for session in self._ready}

    async def fill(self, at_once: int | None = None) -> None:
        """Create sessions until ``size`` are ready or ``size + spare`` are alive, at most
        ``at_once`` being made at a time (default: all at once); wait for them."""
        room = self.size + self.spare - self.alive
        missing = max(0, min(self.size - len(self._ready) - self._making, room))
        if at_once is not None:
            missing = min(missing, max(0, at_once - self._making))
        self._making += missing  # counted now, before any create starts, so refills never overshoot
        await asyncio.gather(*(self._make_one() for _ in range(missing)))

    async def _make_one(self) -> None:
        session: CopilotSession | None = None
        try:
            session = await self._create()
        except Exception as exc:  # a failed refill must not break the requests
            self.errors.append(f"create: {type(exc).__name__}: {exc}")
        finally:
            self._making -= 1
        if session is not None:
            self.created.add(session.session_id)
        if self._hand_over(session) or session is None:
            return
        if self.closed:
            self._background(self._retire(session))
        else:
            self._ready.append(session)
            self._refill()  # the next one, if there is room

    def _refill(self) -> None:
        """Refill in the background, ``refill_at_once`` creates at a time: a burst of creates
        after a burst of requests would compete with the requests still being served."""
        if not self.closed:
            self._background(self.fill(self.refill_at_once))

    def _hand_over(self, session: CopilotSession | None) -> bool:
        """Give a new session (or ``None``: "make your own") to the oldest waiting request."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(session)
                return True
        return False

    async def take(self, user: str) -> CopilotSession:
        """A session for one request of ``user``: a ready one, or a new one when none is ready."""
        if self.closed:
            raise PoolClosed("the pool is closed")
        self._serving += 1
        try:
            if self._ready:
                session = self._ready.popleft()
            else:
                made = await self._wait_for_one() if self._making > len(self._waiting) else None
                session = made or await self._create()
                self.created.add(session.session_id)
            if session.session_id in self.served:
                raise RuntimeError(f"session {session.session_id} would serve a second request")
        except BaseException:
            self._serving -= 1
            raise
        self.served.append(session.session_id)
        self._users[session.session_id] = user
        self._refill()
        return session

    async def _wait_for_one(self) -> CopilotSession | None:
        """The next session being made, or ``None`` if its create failed."""
        waiter: asyncio.Future[CopilotSession | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        return await asyncio.wait_for(waiter, timeout=self.wait_timeout)

    def give_back(self, session: CopilotSession) -> None:
        """End the request: unbind the user now, disconnect and delete in the background."""
        self._users.pop(session.session_id, None)
        self._serving -= 1
        self._retiring.add(self._background(self._retire(session)))

    @contextlib.asynccontextmanager
    async def request(self, user: str) -> AsyncIterator[CopilotSession]:
        """``async with pool.request("A") as session:`` one request in a prepared session."""
        session = await self.take(user)
        try:
            yield session
        finally:
            self.give_back(session)

    async def _retire(self, session: CopilotSession) -> None:
        self._deleting += 1
        try:
            await self._delete(session)
            self.deleted.add(session.session_id)
        except Exception as exc:
            self.errors.append(f"delete {session.session_id}: {type(exc).__name__}: {exc}")
        finally:
            self._deleting -= 1
        self._refill()  # the room this delete made

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # A fresh context: the refill or delete belongs to no request, so it joins none's trace
        # (a session made here may serve another user; its spans must not sit in this one's).
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        for tasks in (self._tasks, self._retiring):
            task.add_done_callback(tasks.discard)
        self._tasks.add(task)
        return task

    async def settle(self, timeout: float = 60.0) -> None:
        """Wait (at most ``timeout`` s) until the background deletes and refills are done."""
        await self._wait(self._tasks, timeout)

    async def deleted_all(self, timeout: float = 60.0) -> None:
        """Wait (at most ``timeout`` s) until every returned session is deleted."""
        await self._wait(self._retiring, timeout)

    @staticmethod
    async def _wait(tasks: set[asyncio.Task[None]], timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while tasks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"{len(tasks)} background tasks still running")
            await asyncio.wait(set(tasks), timeout=left)

    async def close(self, timeout: float = 60.0) -> None:
        """Serve no more requests; delete the ready sessions; wait for every delete."""
        self.closed = True
        await self.settle(timeout)
        while self._ready:
            self._background(self._retire(self._ready.popleft()))
        await self.settle(timeout)
