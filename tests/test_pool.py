"""SessionPool's bookkeeping under load, with sessions that are plain objects (no runtime needed).

The real-runtime checks (isolation of 50 requests, every session deleted) are in test_serving.py;
here: a request that finds the pool empty waits for a session already being made instead of
creating a second one, a failed create hands its waiter the job of making its own, and no session
serves two requests.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import pytest

from helpers.serving.pool import SessionPool


@dataclass
class Fake:
    session_id: str


class Runtime:
    """Counts creates and deletes; each create takes ``delay`` seconds; some can be made to fail."""

    def __init__(self, delay: float = 0.05, fail: set[int] | None = None) -> None:
        self.delay, self.fail, self.numbers = delay, fail or set(), itertools.count()
        self.creates = 0
        self.deleted: list[str] = []

    async def create(self) -> Fake:
        number = next(self.numbers)
        await asyncio.sleep(self.delay)
        if number in self.fail:
            raise ConnectionError(f"create {number} failed")
        self.creates += 1
        return Fake(f"s{number}")

    async def delete(self, session: Fake) -> None:
        await asyncio.sleep(self.delay / 2)
        self.deleted.append(session.session_id)


async def run_requests(pool: SessionPool, count: int, at_once: int) -> None:
    gate = asyncio.Semaphore(at_once)

    async def one(i: int) -> None:
        async with gate, pool.request("AB"[i % 2]):
            await asyncio.sleep(0.005)

    await asyncio.gather(*(one(i) for i in range(count)))


@pytest.mark.parametrize("size, at_once", [(1, 1), (2, 8), (4, 16), (16, 16)])
async def test_no_create_is_wasted_under_load(size: int, at_once: int) -> None:
    runtime = Runtime()
    pool = SessionPool(runtime.create, runtime.delete, size=size)  # type: ignore[arg-type]
    await pool.fill()
    await run_requests(pool, 64, at_once)
    await pool.close()
    assert len(pool.served) == len(set(pool.served)) == 64, "one request per session"
    assert sorted(runtime.deleted) == sorted(pool.created), "every session made is deleted"
    assert runtime.creates <= 64 + size, (
        f"{runtime.creates} creates for 64 requests and a pool of {size}: requests made their own "
        "sessions while refills were already on the way"
    )
    assert pool.errors == []


async def test_an_empty_pool_hands_out_the_refill_on_the_way() -> None:
    runtime = Runtime(delay=0.05)
    pool = SessionPool(runtime.create, runtime.delete, size=1)  # type: ignore[arg-type]
    await pool.fill()
    first = await pool.take("A")  # starts one refill
    second = await asyncio.wait_for(pool.take("B"), 2)
    assert runtime.creates == 2, "B got the refill already on the way, not a create of its own"
    assert second.session_id != first.session_id
    for session in (first, second):
        pool.give_back(session)
    await pool.close()
    assert sorted(runtime.deleted) == sorted(pool.created)


async def test_a_failed_refill_hands_its_waiter_the_job() -> None:
    runtime = Runtime(delay=0.05, fail={1})
    pool = SessionPool(runtime.create, runtime.delete, size=1)  # type: ignore[arg-type]
    await pool.fill()  # s0 ready
    first = await pool.take("A")  # starts the refill, which will fail
    second = await asyncio.wait_for(pool.take("B"), 2)  # waits for that refill, then makes its own
    assert first.session_id != second.session_id
    assert any("create 1 failed" in e for e in pool.errors)
    pool.give_back(first)
    pool.give_back(second)
    await pool.close()
    assert sorted(runtime.deleted) == sorted(pool.created)


async def test_a_request_never_waits_forever() -> None:
    runtime = Runtime(delay=5)
    pool = SessionPool(runtime.create, runtime.delete, size=1, wait_timeout=0.1)  # type: ignore[arg-type]
    filling = asyncio.ensure_future(pool.fill())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await pool.take("A")
    filling.cancel()


@pytest.mark.parametrize("size, spare, at_once", [(8, 2, 8), (4, 2, 16), (1, 2, 1)])
async def test_under_load_the_pool_prepares_no_more_than_its_spare(
    size: int, spare: int, at_once: int
) -> None:
    """Every session alive costs the runtime on every request: with the requests holding their
    sessions, the pool keeps at most ``size + spare`` alive (not counting those being deleted),
    and refills to ``size`` once the load is gone."""
    runtime = Runtime(delay=0.002)  # creates quicker than a request, so refills keep up
    alive: set[str] = set()  # created and not yet being deleted
    peak = 0

    async def create() -> Fake:
        nonlocal peak
        session = await runtime.create()
        alive.add(session.session_id)
        peak = max(peak, len(alive))
        return session

    async def delete(session: Fake) -> None:
        alive.discard(session.session_id)
        await runtime.delete(session)

    pool = SessionPool(create, delete, size=size, spare=spare)  # type: ignore[arg-type]
    await pool.fill()
    await run_requests(pool, 64, at_once)
    await pool.settle()
    assert peak <= max(size + spare, at_once), f"{peak} sessions alive at once"
    assert pool.ready == size, "the pool fills up again when the load is gone"
    await pool.close()
    assert sorted(runtime.deleted) == sorted(pool.created) and pool.errors == []


async def test_a_refill_after_a_burst_makes_refill_at_once_at_a_time() -> None:
    """When a burst of requests ends, the refill must not send the runtime a burst of creates
    that competes with the requests still being served."""
    runtime = Runtime(delay=0.01)
    in_flight = peak = 0

    async def create() -> Fake:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await runtime.create()
        finally:
            in_flight -= 1

    pool = SessionPool(create, runtime.delete, size=8, refill_at_once=2)  # type: ignore[arg-type]
    await pool.fill()  # all at once, before any request
    peak = 0
    burst = [await pool.take("AB"[i % 2]) for i in range(8)]
    for session in burst:
        pool.give_back(session)
    await pool.settle()
    assert peak <= 2, f"{peak} creates at once in the refill"
    assert pool.ready == 8, "and the pool is full again"
    await pool.close()
    assert sorted(runtime.deleted) == sorted(pool.created) and pool.errors == []
