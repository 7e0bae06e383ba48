"""Several instances of the service on one database (SQLite file, or PostgreSQL): a conversation
and a token made on one work on the other; an abort or a delete sent to one stops a turn running
on the other (raced across the turn's start); a lease is judged by the database's clock; an
instance killed (``kill -9``) or frozen (SIGSTOP) mid-turn leaves nothing held for long, and the
frozen one, woken, writes nothing.

Instances A and B are two services in this process, each with its own runtime and event loop;
the instance that is killed or frozen is ``python -m helpers.web`` in a process group of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pg_fixture
import pytest
from support import free_port
from web_fixture import ServiceThread

from helpers.events import forks
from helpers.run import TMP, remove_dir
from helpers.store import base as store_base
from helpers.store import lease as store_lease
from helpers.store import open_store
from helpers.store.base import SessionStore
from helpers.store.lease import Lease
from helpers.store.postgres import PostgresStore
from helpers.store.schema import upgrade
from helpers.store.session_fs import stored_events
from helpers.web.client import Caller, Reply
from helpers.web.instances import StopListener, request_stop
from helpers.web.service import Settings

pytestmark = pytest.mark.runtime
postgres_url = pg_fixture.postgres_url  # a throwaway PostgreSQL server, or a skip
ROOT = Path(__file__).resolve().parents[1]
ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
DEAD_AFTER_S = Settings().dead_after_s
OFFSETS_S = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
TRIALS = 2
SLOW = "Wait 20 seconds, then say hi."
time_now = time.time  # the real clock, kept before a test moves the store's


@dataclass
class Pair:
    """Instances A and B on one database, and what a third instance needs to join them."""

    a: ServiceThread
    b: ServiceThread
    engine: str
    data: Path
    env: dict[str, str] = field(repr=False)  # holds DATABASE_URL: kept out of failure reports
    schema: str = ""


@contextlib.contextmanager
def database_url(url: str) -> Iterator[None]:
    """``DATABASE_URL`` set to ``url`` ("" unset) while the block runs."""
    before = os.environ.pop("DATABASE_URL", None)
    if url:
        os.environ["DATABASE_URL"] = url
    try:
        yield
    finally:
        os.environ.pop("DATABASE_URL", None)
        if before is not None:
            os.environ["DATABASE_URL"] = before


@pytest.fixture(scope="module", params=ENGINES)
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    data = remove_dir(TMP / f"test-instances-{secrets.token_hex(4)}")
    schema = f"t_{secrets.token_hex(4)}"
    started: list[ServiceThread] = []

    def start(name: str) -> None:
        settings = Settings(
            turn_timeout_s=30,
            turns_per_user=16,
            pool_size=1,
            data=str(data),
            instance=name,
            schema=schema,
        )
        started.append(ServiceThread(settings))

    try:
        with database_url(url), ThreadPoolExecutor(2) as starting:  # at once, as a fleet starts
            list(starting.map(start, ("a", "b")))
        started.sort(key=lambda web: web.service.holder)
        assert [w.service.holder for w in started] == ["web-a", "web-b"]
        assert started[1].service.store.engine == request.param
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["PYTHONPATH"] = str(ROOT)
        if url:
            env["DATABASE_URL"] = url
        yield Pair(started[0], started[1], request.param, data, env, schema)
    finally:
        for web in started:
            web.stop()
        if url:
            PostgresStore(url, schema).drop_schema()
        remove_dir(data)


async def on(web: ServiceThread, work: Coroutine[Any, Any, Any]) -> Any:
    """Run ``work`` on ``web``'s loop, awaited from this one."""
    future = asyncio.run_coroutine_threadsafe(work, web.loop)
    return await asyncio.wait_for(asyncio.wrap_future(future), 30)


async def until(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> float:
    """Poll ``check`` until it is true; return how long it took (fail after ``within_s``)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within_s, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def leased_by(web: ServiceThread, cid: str, label: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        current = await on(web, web.service.store.lease_live(cid))
        return current is not None and current[0].startswith(f"{label}#")

    return check


async def rows_of(web: ServiceThread, cid: str) -> int:
    """Every row the store keeps for ``cid`` (files, parts, lease, owner)."""
    total = 0
    for table in ("session_files", "session_file_parts", "session_leases", "sessions"):
        rows, _ = await on(
            web,
            web.service.store.execute(f"SELECT COUNT(*) FROM {table} WHERE session_id = ?", (cid,)),
        )
        total += rows[0][0]
    return total


def answered(events: list[dict[str, Any]]) -> list[str]:
    """The user messages that an assistant message follows, in order."""
    said = [e for e in events if e.get("type") in ("user.message", "assistant.message")]
    return [
        e["data"]["content"]
        for e, after in zip(said, said[1:], strict=False)
        if e["type"] == "user.message" and after["type"] == "assistant.message"
    ]


def callers(pair: Pair, user: str) -> tuple[Caller, Caller]:
    token = pair.a.call(pair.a.service.tokens.issue(user))  # issued on A only
    return Caller(pair.a.url, token, timeout=60), Caller(pair.b.url, token, timeout=60)


# --- one database, two instances -------------------------------------------------------------


async def test_a_conversation_and_a_token_made_on_one_instance_work_on_the_other(
    pair: Pair,
) -> None:
    on_a, on_b = callers(pair, "ushare")
    async with on_a, on_b:
        cid = await on_a.create()
        first = await on_a.send(cid, "Remember: the codename is HERON.")
        assert first.done, first.events[-1:]
        assert await on_b.mine() == [cid], "B knows the conversation and the token"
        second = await on_b.send(cid, "What is the codename?")
        assert second.done, second.events[-1:]
        events = await on(pair.b, stored_events(pair.b.service.store, cid))
        assert answered(events) == ["Remember: the codename is HERON.", "What is the codename?"]
        assert forks(events) == 0
        assert [m["text"] for m in await on_a.history(cid)][::2] == answered(events)


async def test_an_abort_sent_to_b_stops_the_turn_streaming_on_a(pair: Pair) -> None:
    on_a, on_b = callers(pair, "uabort")
    async with on_a, on_b:
        cid = await on_a.create()
        turn = asyncio.ensure_future(on_a.send(cid, SLOW))
        await until(leased_by(pair.a, cid, "web-a"), 15, "A's turn holds the lease")
        asked = time.monotonic()
        response = await on_b.http.post(f"/conversations/{cid}/abort")
        assert response.status_code == 202 and response.json() == {"running": True}
        reply = await asyncio.wait_for(turn, 15)
        took = time.monotonic() - asked
        print(f"{pair.engine}: abort sent to B ended A's stream in {took:.2f} s")
        assert reply.error == "aborted" and took < 5, (took, reply.events[-1:])
        if pair.engine == "postgresql":  # A heard of it by NOTIFY (else it polls, each second)
            assert pair.a.service._listener is not None and pair.a.service._listener.connected
        await until(lambda: _no_lease(pair.b, cid), 5, "A gave the lease back")
        assert not pair.a.service.locks.lock(cid).locked()
        after = await on_b.http.post(f"/conversations/{cid}/abort")
        assert after.status_code == 202 and after.json() == {"running": False}
        again = await on_b.send(cid, "Say hello.")
        assert again.done, again.events[-1:]
        local = asyncio.ensure_future(on_b.send(cid, SLOW))  # and on the instance it was sent to
        await until(leased_by(pair.b, cid, "web-b"), 15, "B's turn holds the lease")
        assert (await on_b.http.post(f"/conversations/{cid}/abort")).json() == {"running": True}
        assert (await asyncio.wait_for(local, 15)).error == "aborted"
        other = Caller(pair.b.url, pair.b.call(pair.b.service.tokens.issue("uother")))
        async with other:
            refused = await other.http.post(f"/conversations/{cid}/abort")
            assert refused.status_code == 404, "someone else's conversation: as unknown"


async def _no_lease(web: ServiceThread, cid: str) -> bool:
    return await on(web, web.service.store.lease_of(cid)) is None


async def test_a_delete_sent_to_b_stops_a_turn_on_a_and_nothing_is_written_after(
    pair: Pair,
) -> None:
    on_a, on_b = callers(pair, "udelete")
    async with on_a, on_b:
        cid = await on_a.create()
        assert (await on_a.send(cid, "Say hello.")).done
        turn = asyncio.ensure_future(on_a.send(cid, SLOW))
        await until(leased_by(pair.a, cid, "web-a"), 15, "A's turn holds the lease")
        asked = time.monotonic()
        response = await on_b.http.delete(f"/conversations/{cid}")
        took = time.monotonic() - asked
        assert response.status_code == 204, response.text
        reply = await asyncio.wait_for(turn, 10)
        print(f"{pair.engine}: delete sent to B while A streamed: {took:.2f} s")
        assert reply.error == "aborted" and took < 5, (took, reply.events[-1:])
        await asyncio.sleep(1.0)  # a late write of A's would land now
        assert await rows_of(pair.b, cid) == 0, "nothing of the conversation is left or written"
        for caller in (on_a, on_b):
            assert (await caller.http.get(f"/conversations/{cid}/messages")).status_code == 404
            assert (await caller.send(cid, "Say hello.")).status == 404


# --- races: abort and delete at offsets across the turn's start ------------------------------


async def _abort_trial(pair: Pair, on_a: Caller, on_b: Caller, offset: float, n: int) -> None:
    cid = await on_a.create()
    text = f"Remember: fact {n} is true."
    first = asyncio.ensure_future(on_a.send(cid, text))
    await asyncio.sleep(offset)
    response = await on_b.http.post(f"/conversations/{cid}/abort")
    assert response.status_code == 202, response.text
    reply = await asyncio.wait_for(first, 30)
    assert reply.done or reply.error == "aborted", (offset, reply.events[-1:], reply.body)
    if reply.error == "aborted":
        assert response.json()["running"], "only a turn found running is aborted"
    second = await on_b.send(cid, f"Say hello {n}.")
    assert second.done, (offset, second.events[-1:], second.body)
    events = await on(pair.b, stored_events(pair.b.service.store, cid))
    done = answered(events)
    assert forks(events) == 0, f"offset {offset}: one turn at a time"
    assert done.count(f"Say hello {n}.") == 1 and done[-1] == f"Say hello {n}."
    if reply.done:
        assert done.count(text) == 1, f"offset {offset}: a turn reported done is stored, once"
    assert await _no_lease(pair.b, cid)


async def _delete_trial(pair: Pair, on_a: Caller, on_b: Caller, offset: float, n: int) -> None:
    cid = await on_a.create()
    first = asyncio.ensure_future(on_a.send(cid, f"Remember: fact {n} is true."))
    await asyncio.sleep(offset)
    response = await on_b.http.delete(f"/conversations/{cid}")
    assert response.status_code == 204, response.text
    reply = await asyncio.wait_for(first, 30)
    assert reply.done or reply.error in ("aborted", "not_found"), (offset, reply.events[-1:])
    await asyncio.sleep(0.3)
    assert await rows_of(pair.b, cid) == 0, f"offset {offset}: nothing stored after the delete"
    assert (await on_a.http.get(f"/conversations/{cid}/messages")).status_code == 404


@pytest.mark.parametrize("kind", ["abort", "delete"])
async def test_abort_and_delete_raced_across_the_turns_start(pair: Pair, kind: str) -> None:
    on_a, on_b = callers(pair, f"urace{kind}")
    trial = _abort_trial if kind == "abort" else _delete_trial
    started = time.monotonic()
    async with on_a, on_b:
        await asyncio.gather(
            *(
                trial(pair, on_a, on_b, offset, n * len(OFFSETS_S) + i)
                for n in range(TRIALS)
                for i, offset in enumerate(OFFSETS_S)
            )
        )
    print(f"{pair.engine}: {kind} raced, {TRIALS * len(OFFSETS_S)} trials in "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    for web in (pair.a, pair.b):
        await until(lambda w=web: _idle(w), 10, "every turn ended")


async def _idle(web: ServiceThread) -> bool:
    return web.service.running() == 0 and not web.service._leased


# --- the database's clock --------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_server_whose_clock_runs_ahead_does_not_take_a_held_lease(
    engine: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = request.getfixturevalue("postgres_url") if engine == "postgresql" else ""
    schema = f"t_{secrets.token_hex(4)}"
    store: SessionStore = await open_store(tmp_path, database_url=url, schema=schema)
    try:
        sid = await store.new_id("u")
        held = await Lease(store, sid, ttl_s=30, holder="server-a#1").acquire()
        ahead = types.SimpleNamespace(time=lambda: time_now() + 60, monotonic=time.monotonic)
        for module in (store_base, store_lease):  # server B's clock: 60 s ahead of the database
            monkeypatch.setattr(module, "time", ahead)
        assert not await store.try_lease(sid, "server-b#1", 30), "B takes a lease A holds"
        assert not await store.extend_lease(sid, "server-b#1", 30)
        await held.check()  # A still holds it, whatever B's clock says
        assert await store.extend_lease(sid, "server-a#1", 30)
        await store.write(sid, "/a.txt", "A's", "file", holder="server-a#1")
        with pytest.raises(Exception, match="refused"):
            await store.write(sid, "/b.txt", "B's", "file", holder="server-b#1")
        await store.execute("UPDATE session_leases SET expires_at = expires_at - 31")
        assert await store.try_lease(sid, "server-b#1", 30), "an expired lease is taken"
    finally:
        await store.close()
        if url:
            PostgresStore(url, schema).drop_schema()


# --- an instance killed or frozen mid-turn ---------------------------------------------------


class Process:
    """``python -m helpers.web`` as instance ``p`` on the pair's database, in its own group."""

    def __init__(self, pair: Pair) -> None:
        self.pair, self.port = pair, free_port()
        self.tokens_file = pair.data / "tokens-p.json"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start it; return user ``p``'s token (issued by it) once it is ready."""
        log = (self.pair.data / "p.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helpers.web", "--data", str(self.pair.data), "--port",
             str(self.port), "--users", "p", "--tokens-file", str(self.tokens_file),
             "--schema", self.pair.schema, "--instance", "p", "--drain-s", "5"],
            cwd=ROOT, env=self.pair.env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 90
        while not self.tokens_file.exists() or not self._ready():
            assert self.proc.poll() is None, (self.pair.data / "p.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.2)
        return json.loads(self.tokens_file.read_text())["p"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/ready", timeout=2).status_code == 200
        return False

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def kill_all(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def process(pair: Pair) -> Iterator[Process]:
    made = Process(pair)
    try:
        yield made
    finally:
        made.kill_all()


async def _timed(work: Awaitable[Reply]) -> tuple[float, Reply]:
    started = time.monotonic()
    reply = await work
    return time.monotonic() - started, reply


async def test_an_instance_frozen_or_killed_mid_turn(pair: Pair, process: Process) -> None:
    """Frozen (SIGSTOP): B goes on within seconds and the frozen one, woken, writes nothing.
    Killed (``kill -9``): B goes on within seconds, and a keyed retry runs the turn once.

    On PostgreSQL only (the engine of instances on several machines), for the suite's time.
    """
    if pair.engine != "postgresql":
        pytest.skip("run on PostgreSQL only (the suite's time budget)")
    token = await asyncio.to_thread(process.start)
    on_p, on_b = Caller(process.url, token, timeout=60), Caller(pair.b.url, token, timeout=30)
    async with on_p, on_b:
        cid = await on_p.create()
        assert (await on_p.send(cid, "Say hello.")).done
        cut = asyncio.ensure_future(on_p.send(cid, "Wait 3 seconds, then say hi."))
        await until(leased_by(pair.b, cid, "web-p"), 15, "P's turn holds the lease")
        process.signal(signal.SIGSTOP)
        took, reply = await _timed(on_b.send(cid, "Say hello again."))
        print(f"{pair.engine}: P frozen mid-turn; B's send took {took:.1f} s")
        assert reply.done and took < DEAD_AFTER_S + 5, (took, reply.events[-1:], reply.body)
        before = await on(pair.b, stored_events(pair.b.service.store, cid))
        process.signal(signal.SIGCONT)
        woken = await asyncio.wait_for(cut, 30)
        assert not woken.done, "the woken turn is not reported done"
        await asyncio.sleep(1.0)
        after = await on(pair.b, stored_events(pair.b.service.store, cid))
        assert after == before, "the woken instance wrote nothing"
        assert answered(after)[-1] == "Say hello again." and forks(after) == 0

        cid = await on_p.create()
        text = "Wait 2 seconds, then say K."
        cut = asyncio.ensure_future(on_p.send(cid, text, key="k-1"))
        await until(leased_by(pair.b, cid, "web-p"), 15, "P's keyed turn holds the lease")
        process.signal(signal.SIGKILL)
        took, reply = await _timed(on_b.send(cid, text, key="k-1"))
        print(f"{pair.engine}: P killed mid-turn; the keyed retry on B took {took:.1f} s")
        assert reply.done and took < DEAD_AFTER_S + 2 + 5, (took, reply.events[-1:], reply.body)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(cut, 10)
        again = await on_b.send(cid, text, key="k-1")
        assert again.done and again.text == reply.text, "replayed, not run again"
        events = await on(pair.b, stored_events(pair.b.service.store, cid))
        assert answered(events).count(text) == 1 and forks(events) == 0, (
            "run once: 0 lost, 0 doubled"
        )


@pytest.mark.postgres
async def test_the_stop_listener_connects_again_after_losing_its_connection(
    postgres_url: str,
) -> None:
    """A PostgreSQL restart (here: the listener's backend ended) is followed by a new LISTEN."""
    store = await PostgresStore(postgres_url, f"t_{secrets.token_hex(4)}").connect()
    wake = asyncio.Event()
    listener = StopListener(store, wake)
    task = asyncio.ensure_future(listener.run())
    try:
        await upgrade(store)
        for round in range(2):
            await until(_connected(listener), 10, f"listening (round {round})")
            wake.clear()
            await request_stop(store, f"web-x#{round}", "c", "stop")
            await asyncio.wait_for(wake.wait(), 5)
            await store.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
                (listener.name,),
            )
            await until(_connected(listener, False), 10, "the lost connection noticed")
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await store.close()
        store.drop_schema()


def _connected(listener: StopListener, wanted: bool = True) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return listener.connected == wanted

    return check
