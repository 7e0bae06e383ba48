"""Serving many users: per-session lock, pool isolation, orphan sweep, abort, drain."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from support import TIMEOUT

from helpers.errors import Draining, PoolClosed
from helpers.events import EventLog
from helpers.serving.drain import Drain
from helpers.serving.locks import SessionLocks
from helpers.serving.pool import SessionPool
from helpers.serving.sweep import find_orphans, sweep
from helpers.tools.file_tools import ALLOWLIST
from helpers.tools.routed_tools import routed_file_tools
from helpers.tools.vfs import VirtualFS

pytestmark = pytest.mark.runtime


async def test_lock_runs_two_sends_to_one_session_one_after_the_other(
    server, client, session_kwargs
):
    locks = SessionLocks()
    session = await client.create_session(**session_kwargs)
    log = EventLog(session)
    spans: list[tuple[float, float]] = []

    async def locked(prompt: str) -> None:
        async with locks.turn(session.session_id, timeout=TIMEOUT):
            start = log.now()
            await session.send_and_wait(prompt, timeout=TIMEOUT)
            spans.append((start, log.now()))

    await asyncio.gather(
        locked("Wait 0.5 seconds, then remember: the fruit is fig."),
        locked("Wait 0.5 seconds, then remember: the tree is oak."),
    )
    (_, first_end), (second_start, _) = sorted(spans)
    assert second_start >= first_end, "the second turn began only after the first ended"
    starts = [at for at, kind in log.seen if kind == "assistant.turn_start"]
    ends = [at for at, kind in log.seen if kind == "assistant.turn_end"]
    assert len(starts) == len(ends) == 2 and starts[1] >= ends[0], "the runtime saw no overlap"
    other = await client.create_session(**session_kwargs)
    assert locks.lock(other.session_id) is not locks.lock(session.session_id)
    log.close()
    for s in (session, other):
        await s.disconnect()
        await client.delete_session(s.session_id)
        locks.forget(s.session_id)
    assert len(locks) == 0


async def test_pool_isolation_fifty_requests_of_two_users(server, client, local_backend):
    fs = {"A": VirtualFS("A"), "B": VirtualFS("B")}
    pool: SessionPool
    tools = routed_file_tools(lambda sid: fs.get(pool.user_of(sid) or ""))

    async def create():
        return await client.create_session(
            tools=tools, available_tools=ALLOWLIST, **local_backend.session_kwargs()
        )

    async def retire(session) -> None:
        await session.disconnect()
        await client.delete_session(session.session_id)

    pool = SessionPool(create, retire, size=6)
    await pool.fill()

    async def one(i: int) -> str:
        user = "AB"[i % 2]
        async with pool.request(user) as session:
            reply = await session.send_and_wait(
                f'Create req-{i}.md containing "{user}-{i}"', timeout=TIMEOUT
            )
            return session.session_id if reply else ""

    served = await asyncio.gather(*(one(i) for i in range(50)))
    await pool.close()
    for user, other in (("A", "B"), ("B", "A")):
        files = fs[user].snapshot()
        assert len(files) == 25 and all(t.startswith(f"{user}-") for t in files.values())
        assert not any(t.startswith(f"{other}-") for t in files.values())
    assert len(set(served)) == 50 and set(served) == set(pool.served), "one request per session"
    assert pool.deleted == pool.created and pool.errors == []
    listed = {m.session_id for m in await client.list_sessions()}
    assert not (pool.created & listed), "every pooled session is deleted"
    with pytest.raises(PoolClosed):
        await pool.take("A")


async def test_unbound_session_gets_a_refusal_not_someones_files(server, client, local_backend):
    """The same tools read A's file for A's session and refuse a session bound to nobody."""
    fs = {"A": VirtualFS("A")}
    fs["A"].write("secret.md", "of A")
    bound: dict[str, str] = {}  # session id -> user, as the application's router keeps it
    tools = routed_file_tools(lambda sid: fs[bound[sid]] if sid in bound else None)

    async def read_secret(user: str | None) -> str:
        session = await client.create_session(
            tools=tools, available_tools=ALLOWLIST, **local_backend.session_kwargs()
        )
        if user is not None:
            bound[session.session_id] = user
        reply = await session.send_and_wait("Read secret.md", timeout=TIMEOUT)
        await session.disconnect()
        await client.delete_session(session.session_id)
        return reply.data.content if reply else ""

    assert "of A" in await read_secret("A"), "a session bound to A reads A's file"
    refused = await read_secret(None)
    assert "of A" not in refused, "a session bound to nobody reads nothing"
    assert "serves no user right now" in refused, "it gets the router's refusal"


async def test_sweep_deletes_old_orphans_and_nothing_else(server, client, session_kwargs):
    prefix = f"req-test-{secrets.token_hex(3)}-"
    keep_id = f"user-a-{secrets.token_hex(8)}"
    for session_id in (prefix + "1", prefix + "2", keep_id):
        session = await client.create_session(session_id=session_id, **session_kwargs)
        await session.send_and_wait("Hello", timeout=TIMEOUT)
    not_ours = lambda sid: not sid.startswith(prefix)  # noqa: E731
    assert await find_orphans(client, older_than_s=30, keep=not_ours) == []
    await asyncio.sleep(1.2)
    swept = await sweep(client, older_than_s=1.0, keep=not_ours)
    assert sorted(swept) == [prefix + "1", prefix + "2"]
    listed = {m.session_id for m in await client.list_sessions()}
    assert keep_id in listed and not (set(swept) & listed)
    await client.delete_session(keep_id)


async def test_abort_stops_a_turn_that_timed_out(server, client, session_kwargs):
    session = await client.create_session(**session_kwargs)
    log = EventLog(session)
    with pytest.raises(TimeoutError):
        await session.send_and_wait("Wait 3 seconds, then say hello.", timeout=0.3)
    aborted = log.now()
    await session.abort()
    idle = await log.wait_for("session.idle", 1, timeout=TIMEOUT)
    assert idle - aborted < 2.0, "the turn ended soon after the abort, not after 3 s"
    assert log.count("abort") == 1 and log.first_after("assistant.message", 0) is None
    reply = await session.send_and_wait("Hello", timeout=TIMEOUT)
    assert reply is not None and reply.data.content, "the session still works"
    log.close()
    await session.disconnect()
    await client.delete_session(session.session_id)


async def test_drain_lets_the_running_request_finish_and_refuses_new_ones():
    gate = Drain()
    stopped: list[int] = []

    async def request() -> str:
        async with gate.request():
            await asyncio.sleep(0.3)
            return "done"

    running = asyncio.ensure_future(request())
    await asyncio.sleep(0.05)
    left = await gate.drain(timeout=5, stop=lambda: stopped.append(gate.running))
    assert left == 0 and running.result() == "done" and stopped == [0]
    with pytest.raises(Draining):
        await request()


async def test_drain_gives_up_after_its_timeout():
    gate = Drain()

    async def stuck() -> None:
        async with gate.request():
            await asyncio.sleep(5)

    task = asyncio.ensure_future(stuck())
    await asyncio.sleep(0.05)
    assert await gate.drain(timeout=0.2, stop=lambda: None) == 1
    task.cancel()
