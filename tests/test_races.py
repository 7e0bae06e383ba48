"""Notebook 05's serving path under races, on SQLite and PostgreSQL, with two real runtimes.

Each case of ``race_harness`` (and of ``race_faults``: issue 21's stalled and killed runtimes)
reproduces items of issue 14 (the counts its closing note quotes
were taken with the old code by running the same cases through the old ``Router`` and turn), and
here runs its trials with offsets swept across the dangerous window: every count must be 0.
``RACE_TRIALS=200`` runs more trials per case.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pg_fixture
import pytest
import race_faults  # noqa: F401  (adds the fault cases: SIGSTOP, kill -9, busy pool, ...)
import test_session_store
from race_harness import CASES, KINDS, SLOW_S, NewSystem, clients_of, run_case

from helpers.errors import LeaseExpired, NotYourSession, WriteRefused
from helpers.events import forks, user_texts
from helpers.model.backends import Backend
from helpers.runtime.server import RuntimeServer, start_server
from helpers.store.base import SessionStore, finish
from helpers.store.lease import Lease, held
from helpers.store.router import Router
from helpers.store.session_fs import StoreFs, stored_events

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
    runtimes: dict[str, RuntimeServer],
    store: SessionStore,
    session_kwargs: dict,
    local_backend: Backend,
) -> AsyncIterator[NewSystem]:
    async with clients_of(runtimes) as clients:
        yield NewSystem(
            store, clients, session_kwargs, standin=local_backend.standin, servers=runtimes
        )


async def test_races_leave_no_leak_fork_lost_or_doubled_turn(
    system: NewSystem, store: SessionStore
) -> None:
    """Every case, one after another on one pair of runtimes (starting a pair per case cost more
    than most cases); every count of every case must be 0."""
    bad = {}
    for case in CASES:
        started = time.perf_counter()
        counts = await run_case(
            lambda ttl: NewSystem(
                system.store,
                system.clients,
                system.options,
                lease_ttl_s=ttl,
                standin=system.standin,
                servers=system.servers,
            ),
            case,
        )
        shown = ", ".join(f"{k} {counts[k]}" for k in KINDS)
        print(f"{store.engine} {case}: {shown} ({time.perf_counter() - started:.1f} s)")
        if any(counts[k] for k in KINDS):
            bad[case] = {k: counts[k] for k in KINDS if counts[k]}
    assert not bad, f"on {store.engine}: {bad}"


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
    """Item 7's other side: a lost lease stops the turn at once and is never a success; the
    turn's writes after the loss are refused (``case_stall`` has a new holder that writes)."""
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
    assert kinds[-1] != "assistant.message", kinds[-6:]  # its late writes were refused
    assert forks(events) == 0


# The store's side of the fixes, without a runtime (fast): fenced writes, the heartbeat's limits,
# statements that a cancellation cannot cut.


async def _holding(store: SessionStore, user: str) -> tuple[str, Lease, StoreFs]:
    session_id = await store.new_id(user)
    lease = await Lease(store, session_id, ttl_s=30.0).acquire()
    return session_id, lease, StoreFs(store, session_id, lease=lease)


async def test_writes_are_fenced_on_the_requests_lease(store: SessionStore) -> None:
    """Review 3: once another token holds the lease, every kind of write of the old holder is
    refused (and marks its lease lost); the new holder's writes go in; nothing of the old one's."""
    session_id, old, fs = await _holding(store, "f1")
    await fs.append_file("/session-state/events.jsonl", "mine\n")
    await fs.mkdir("/session-state/sub", recursive=True)
    await store.execute(
        "UPDATE session_leases SET expires_at = 0 WHERE session_id = ?", (session_id,)
    )
    thief = await Lease(store, session_id, ttl_s=30.0).acquire()
    late = [
        fs.append_file("/session-state/events.jsonl", "late\n"),
        fs.write_file("/session-state/other", "late"),
        fs.mkdir("/session-state/new", recursive=True),
        fs.rm("/session-state/sub", recursive=True, force=False),
        fs.rename("/session-state/sub", "/session-state/moved"),
    ]
    for write in late:
        with pytest.raises(WriteRefused):
            await write
    assert old.lost.is_set() and isinstance(WriteRefused("x"), LeaseExpired)
    await StoreFs(store, session_id, lease=thief).append_file("/session-state/events.jsonl", "t\n")
    paths = [r.path for r in await store.rows(session_id=session_id)]
    assert paths == ["/session-state", "/session-state/events.jsonl", "/session-state/sub"]
    assert (await store.read(session_id, "/session-state/events.jsonl")).content == "mine\nt\n"  # type: ignore[union-attr]
    with pytest.raises(LeaseExpired):
        await old.check()


async def test_an_expired_lease_refuses_writes_before_anyone_takes_it(store: SessionStore) -> None:
    session_id, _, fs = await _holding(store, "f2")
    await store.execute(
        "UPDATE session_leases SET expires_at = 0 WHERE session_id = ?", (session_id,)
    )
    with pytest.raises(WriteRefused):
        await fs.append_file("/session-state/events.jsonl", "late\n")
    assert await store.rows(session_id=session_id) == []


async def test_delete_user_refuses_a_running_turns_late_writes(store: SessionStore) -> None:
    """Review 5: after ``delete_user`` the turn's late events find no lease and no session row."""
    session_id, lease, fs = await _holding(store, "f3")
    await fs.append_file("/session-state/events.jsonl", "one\n")
    assert await store.delete_user("f3") == 1
    for write in (
        fs.append_file("/session-state/events.jsonl", "late\n"),
        fs.mkdir("/session-state/x", recursive=True),
        store.mark_ready(session_id, lease.holder),
    ):
        with pytest.raises(WriteRefused):
            await write
    assert await store.rows(session_id=session_id) == []
    assert await store.lease_of(session_id) is None and await store.owner(session_id) is None


class _SlowRenewals:
    def __init__(self, store: SessionStore, delay_s: float) -> None:
        self._store, self.delay_s = store, delay_s

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._store, name)

    async def extend_lease(self, *args):  # noqa: ANN002, ANN201
        await asyncio.sleep(self.delay_s)
        return await self._store.extend_lease(*args)


async def test_a_renewal_that_does_not_answer_counts_as_lost_before_expiry(
    store: SessionStore,
) -> None:
    """Review 3's heartbeat: a renewal that hangs is given up, and the lease counted lost a
    margin before it runs out by the local clock, not after."""
    session_id = await store.new_id("f4")
    slow = _SlowRenewals(store, 60.0)
    async with asyncio.timeout(5):
        with pytest.raises(LeaseExpired):
            async with held(slow, session_id, ttl_s=0.6) as lease:  # type: ignore[arg-type]
                await lease.lost.wait()
                expires = (await store.lease_of(session_id))[1]  # type: ignore[index]
                assert time.time() < expires, "lost before the lease ran out"


async def _cancel_at_every_await(work, n: int, step_s: float) -> None:  # noqa: ANN001
    """Cancel ``work()`` ``n`` times at swept moments: with an anyio scope (which cancels again at
    every await) and with one ``task.cancel()``."""
    import anyio

    for i in range(n):
        with anyio.move_on_after(step_s * i):
            await work()
        task = asyncio.ensure_future(work())
        await asyncio.sleep(step_s * i)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


async def test_cancelled_statements_leave_the_store_usable(store: SessionStore) -> None:
    """Review 2: on PostgreSQL a cancellation that reached psycopg mid-statement closed the
    store's one connection (every later request failed). Statements now run to their end."""
    pause = "SELECT pg_sleep(0.02)" if store.engine == "postgresql" else "SELECT 1"
    session_id, lease, fs = await _holding(store, "f5")

    async def work() -> None:
        await store.execute(pause)
        await fs.append_file("/session-state/events.jsonl", "x\n")

    await _cancel_at_every_await(work, RACE_UNIT_TRIALS, 0.007)
    assert await store.owner(session_id) == "f5", "the store still answers"
    content = (await store.read(session_id, "/session-state/events.jsonl")).content  # type: ignore[union-attr]
    assert set(content.split()) == {"x"}, "every append is whole"
    await lease.release()


async def test_finish_holds_back_a_cancellation_until_the_work_is_done() -> None:
    import anyio

    done: list[str] = []

    async def clean_up() -> None:
        for _ in range(5):
            await asyncio.sleep(0.01)
        done.append("clean")

    with anyio.move_on_after(0.005):
        await finish(clean_up())
    assert done == ["clean"]
    task = asyncio.ensure_future(finish(clean_up()))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == ["clean", "clean"]


RACE_UNIT_TRIALS = int(os.environ.get("RACE_TRIALS") or 10)


async def test_an_unknown_id_is_refused_before_any_runtime_is_asked(store: SessionStore) -> None:
    """Issue 21, item 5: ``send(None, unknown id)`` passed the owner check (no owner == no user)
    and ended in a misleading ``LeaseExpired`` after the runtime was asked."""
    asked: list[tuple] = []

    async def opener(*args: object) -> None:
        asked.append(args)

    router = Router({"runtime-1": object()}, store, opener)
    unknown = f"user-nobody-{secrets.token_hex(8)}"
    for user in (None, "u21"):
        with pytest.raises(NotYourSession):
            await router.send(user, unknown, "Hello.")  # type: ignore[arg-type]
    assert asked == [] and await store.lease_of(unknown) is None


def test_the_router_sends_nothing_to_a_runtime_that_is_down() -> None:
    """Issue 21: least-busy kept choosing a dead runtime (it fails fast, so it looks idle). A
    runtime whose connection closed, or that failed less than ``retry_s`` ago, is left out; a
    runtime holding an unclosed session object of the id is left out for that id."""

    class Gone:
        _runtime_gone = "its connection closed"

    router = Router({"runtime-1": Gone(), "runtime-2": object()}, None, None)  # type: ignore[arg-type]
    router.served["runtime-2"] = 9
    assert router.pick("s") == "runtime-2", "the dead one looks idle but is left out"
    router.clients["runtime-1"] = object()  # started again, with a new client
    router.down["runtime-1"] = time.monotonic() + 60
    assert router.pick("s") == "runtime-2", "still within retry_s of its failure"
    router.down["runtime-1"] = time.monotonic() - 1
    assert router.pick("s") == "runtime-1", "tried again after retry_s"
    router.stale["runtime-1", "s"] = object()
    assert router.pick("s") == "runtime-2" and router.pick("t") == "runtime-1"
    router.down["runtime-2"] = time.monotonic() + 60
    assert router.pick("s") == "runtime-1", "with all else down, the one left is tried"
