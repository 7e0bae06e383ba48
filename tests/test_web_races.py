"""Races over HTTP, on SQLite and on PostgreSQL: two tabs of one user sending with offsets swept
across the turn, and callers hanging up at every point of a turn. Each trial asserts no lost or
doubled turn, a linear history, and nothing left held (lock, lease, running count).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pg_fixture
import pytest
from web_fixture import ServiceThread

from helpers.events import forks
from helpers.store.session_fs import stored_events
from helpers.web.client import Caller
from helpers.web.service import Settings

pytestmark = pytest.mark.runtime
postgres_url = pg_fixture.postgres_url  # a throwaway PostgreSQL server, or a skip
OFFSETS_S = (0.0, 0.005, 0.02, 0.05, 0.1, 0.2)
HANG_UPS_S = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def web(request: pytest.FixtureRequest) -> Iterator[ServiceThread]:
    before = os.environ.get("DATABASE_URL")
    if request.param == "postgresql":
        os.environ["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    else:
        os.environ.pop("DATABASE_URL", None)
    try:
        running = ServiceThread(Settings(turn_timeout_s=30, turns_per_user=4))
        assert running.service.store.engine == request.param
        try:
            yield running
        finally:
            running.stop()
    finally:
        if before is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = before


async def _two_tabs(web: ServiceThread, caller: Caller, offset: float, trial: int) -> None:
    conversation = await caller.create()

    async def tab(n: int, delay: float) -> object:
        await asyncio.sleep(delay)
        return await caller.send(conversation, f"Remember: fact {trial}-{n} is true.")

    first, second = await asyncio.gather(tab(1, 0.0), tab(2, offset))
    events = await stored_events(web.service.store, conversation)
    asked = [e["data"]["content"] for e in events if e["type"] == "user.message"]
    replies = [e for e in events if e["type"] == "assistant.message"]
    for reply in (first, second):
        assert reply.done and reply.streamed == reply.text, (offset, reply.kinds[-1:], reply.error)
    assert sorted(asked) == sorted(f"Remember: fact {trial}-{n} is true." for n in (1, 2))
    assert len(replies) == 2 and forks(events) == 0, f"offset {offset}: linear, each turn once"
    assert await web.service.store.lease_of(conversation) is None


async def _hang_up(web: ServiceThread, caller: Caller, after: float) -> None:
    conversation = await caller.create()
    await caller.send(conversation, "Say hello.")
    path = f"/conversations/{conversation}/messages"
    async with caller.http.stream("POST", path, json={"text": "Wait 1 seconds, then hi."}) as r:
        assert r.status_code == 200
        await asyncio.sleep(after)
    async with asyncio.timeout(15):
        while web.service.running():
            await asyncio.sleep(0.02)
    service = web.service
    assert not service.locks.lock(conversation).locked(), after
    assert await service.store.lease_of(conversation) is None, after
    again = await caller.send(conversation, "Say hello.")
    assert again.done, f"hung up after {after} s: the conversation still works ({again.error})"
    events = await stored_events(service.store, conversation)
    assert forks(events) == 0


def test_two_tabs_with_offsets_and_hang_ups_at_every_point(web: ServiceThread) -> None:
    async def trials() -> None:
        async with Caller(web.url, await web.service.tokens.issue("A")) as caller:
            for trial, offset in enumerate(OFFSETS_S):
                await _two_tabs(web, caller, offset, trial)
            for after in HANG_UPS_S:
                await _hang_up(web, caller, after)

    web.call(trials(), 240)
    assert web.service.running() == 0
