"""Notebook 04's serving path under races, on SQLite and PostgreSQL, with two real runtimes.

Each case of ``race_harness`` reproduces items of issue 14 (the counts its closing note quotes
were taken with the old code by running the same cases through the old ``Router`` and turn), and
here runs its trials with offsets swept across the dangerous window: every count must be 0.
``RACE_TRIALS=200`` runs more trials per case.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pg_fixture
import pytest
import test_session_store
from race_harness import CASES, KINDS, SLOW_S, NewSystem, clients_of, run_case

from helpers.errors import LeaseExpired, NotYourSession
from helpers.events import forks, user_texts
from helpers.model.backends import Backend
from helpers.runtime.server import RuntimeServer, start_server
from helpers.store.base import SessionStore
from helpers.store.session_fs import stored_events

pytestmark = pytest.mark.runtime
postgres_url = pg_fixture.postgres_url  # a throwaway PostgreSQL server, or a skip
store = test_session_store.store  # the store on each engine, in a schema or file of its own


@pytest.fixture
def runtimes(local_backend: Backend, tmp_path: Path) -> Iterator[dict[str, RuntimeServer]]:
    """Two runtimes with homes of their own; nothing shared on disk.

    Fresh ones per test: a runtime whose ``session_fs`` client stopped refused the next client
    ("Another client is already the session filesystem provider"), still after 10 s.
    """
    root = tmp_path / "runtimes"
    servers: dict[str, RuntimeServer] = {}
    try:
        for name in ("runtime-1", "runtime-2"):
            servers[name] = start_server(local_backend, home=root / name)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture
async def system(
    runtimes: dict[str, RuntimeServer], store: SessionStore, session_kwargs: dict
) -> AsyncIterator[NewSystem]:
    async with clients_of(runtimes) as clients:
        yield NewSystem(store, clients, session_kwargs)


@pytest.mark.parametrize("case", list(CASES))
async def test_races_leave_no_leak_fork_lost_or_doubled_turn(
    case: str, system: NewSystem, store: SessionStore
) -> None:
    counts = await run_case(
        lambda ttl: NewSystem(system.store, system.clients, system.options, lease_ttl_s=ttl), case
    )
    print(f"{store.engine} {case}: " + ", ".join(f"{k} {counts[k]}" for k in KINDS))
    assert all(counts[k] == 0 for k in KINDS), f"{case} on {store.engine}: {dict(counts)}"


async def test_another_users_id_is_refused_before_any_turn(system: NewSystem) -> None:
    """Items 1-3: the owner is recorded before the first turn; mallory is refused at once."""
    mine = await system.make_session("u2")
    await system.send("runtime-1", "u2", mine, "Remember: the pin is 4711.")
    for session_id in (mine, f"user-u2-{secrets.token_hex(8)}"):
        with pytest.raises(NotYourSession, match="refused, nothing was read"):
            await system.send("runtime-2", "mallory", session_id, "What is the pin?")
    said = user_texts(await stored_events(system.store, mine))
    assert said == ["Remember: the pin is 4711."], "mallory's message never reached the session"
    assert await system.store.owner(mine) == "u2"


async def test_a_request_that_loses_its_lease_aborts_its_turn(system: NewSystem) -> None:
    """Item 7's other side: a lost lease stops the turn at once and is never a success."""
    session_id = await system.make_session("u8")
    await system.send("runtime-1", "u8", session_id, "Hello.")
    router = system.routers["runtime-1"]
    router.lease_ttl_s = 0.6
    slow = f"Wait {SLOW_S * 2} seconds, then say hello."

    async def steal() -> None:
        """Once the slow turn is stored as started, hand its lease to someone else."""
        async with asyncio.timeout(30):
            while slow not in user_texts(await stored_events(system.store, session_id)):
                await asyncio.sleep(0.05)
        await system.store.execute(
            "UPDATE session_leases SET holder = 'thief' WHERE session_id = ?", (session_id,)
        )

    started = time.monotonic()
    outcome = await asyncio.gather(
        router.send("u8", session_id, slow), steal(), return_exceptions=True
    )
    took = time.monotonic() - started
    assert outcome[1] is None, f"the lease was stolen mid-turn: {outcome[1]!r}"
    assert isinstance(outcome[0], LeaseExpired), f"never a success: {outcome[0]!r}"
    assert took < SLOW_S * 2, f"the turn was stopped when the lease was lost ({took:.1f} s)"
    assert (await system.store.lease_of(session_id))[0] == "thief", "the thief's lease stays"  # type: ignore[index]
    events = await stored_events(system.store, session_id)
    kinds = [e["type"] for e in events]
    assert kinds[-1] != "assistant.message" and "abort" in kinds, kinds[-6:]
    assert forks(events) == 0
