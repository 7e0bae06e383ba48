"""A stalled database, caused for real: PostgreSQL frozen with SIGSTOP, another server frozen inside
a transaction that locked a lease row, a SQLite writer frozen holding the write lock.

What must hold: every call answers (an error within seconds, never a hang), calls that do not need
the stuck row or lock go on meanwhile, and everything works again once the stall ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pg_fixture
import pytest
from pg_server import start_postgres
from web_fixture import ServiceThread

from helpers.errors import StoreDown
from helpers.store.base import SessionStore
from helpers.store.postgres import PostgresStore, Timeouts
from helpers.store.schema import upgrade
from helpers.store.sqlite import SqliteStore
from helpers.web.service import Settings

postgres_url = pg_fixture.postgres_url
ROOT = Path(__file__).resolve().parents[1]
HOLD_S = 60  # the frozen holder never lets go by itself within a test


@contextlib.contextmanager
def holder(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A second process that takes a lock, prints "locked", then is frozen (SIGSTOP) holding it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""  # type: ignore[union-attr]
        assert line.strip() == "locked", f"the holder did not lock: {line!r}"
        os.kill(proc.pid, signal.SIGSTOP)
        yield proc
    finally:
        proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.wait(10)


async def timed(work) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    """How long ``work`` took, and its result or the exception it raised."""
    started = time.monotonic()
    try:
        result: object = await work
    except Exception as exc:
        result = exc
    return time.monotonic() - started, result


async def two_leases(store: SessionStore) -> tuple[str, str]:
    """Two sessions of one user, each leased by its own request."""
    stuck, other = await store.new_id("u"), await store.new_id("u")
    assert await store.try_lease(stuck, "server-a#1", 30)
    assert await store.try_lease(other, "server-b#1", 30)
    return stuck, other


@pytest.fixture
async def pg_store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    store = await PostgresStore(postgres_url, f"t_{secrets.token_hex(4)}").connect()
    await upgrade(store)
    try:
        yield store
    finally:
        await store.close()
        store.drop_schema()


PG_HOLDER = """
    import sys, time
    import psycopg
    from helpers.store.base import NOW_POSTGRES, fence
    from helpers.store.postgres import Timeouts

    url, schema, session_id = sys.argv[1:]
    limits = Timeouts()  # another server of ours: the same limits on its connections
    options = (f"-c search_path={schema} "
               f"-c idle_in_transaction_session_timeout={int(limits.idle_in_transaction_s * 1000)}")
    with psycopg.connect(url, options=options) as conn:  # a transaction, as the store's fence
        sql, args = fence(session_id, "server-a#1", NOW_POSTGRES)
        assert conn.execute(sql.replace("?", "%s"), args).rowcount == 1
        print("locked", flush=True)
        time.sleep(60)
"""


@pytest.mark.postgres
async def test_a_server_frozen_inside_a_write_does_not_stop_other_sessions(
    pg_store: PostgresStore,
) -> None:
    """Race (2) of issue 21: server A froze after its fence locked session X's lease row."""
    stuck, other = await two_leases(pg_store)
    with holder(PG_HOLDER, pg_store.url, pg_store.schema, stuck):
        started = time.monotonic()
        blocked = asyncio.ensure_future(timed(pg_store.try_lease(stuck, "server-b#2", 30)))
        for _ in range(5):  # the unrelated session renews its lease meanwhile, at once
            took, renewed = await timed(pg_store.extend_lease(other, "server-b#1", 30))
            assert renewed is True and took < 0.5, (took, renewed)
        took, result = await blocked
        assert isinstance(result, Exception) and took < Timeouts().call_s + 1, (took, result)
        # The server ends the frozen holder's transaction (idle_in_transaction_session_timeout):
        # the row is free again, and a write of the session's current holder goes through.
        deadline = started + Timeouts().idle_in_transaction_s + 5
        while not await _renews(pg_store, stuck, "server-a#1"):
            assert time.monotonic() < deadline, "the frozen holder's transaction never ended"
            await asyncio.sleep(0.2)


async def _renews(store: SessionStore, session_id: str, who: str) -> bool:
    took, renewed = await timed(store.extend_lease(session_id, who, 30))
    return renewed is True


SQLITE_HOLDER = """
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(60)
"""


async def test_a_sqlite_writer_frozen_holding_the_lock_stops_neither_reads_nor_the_loop(
    tmp_path: Path,
) -> None:
    store = await SqliteStore(tmp_path / "sessions.db").connect()
    await upgrade(store)
    try:
        stuck, other = await two_leases(store)
        gaps: list[float] = []
        ticking = asyncio.ensure_future(_tick(gaps))
        with holder(SQLITE_HOLDER, str(store.path)):
            write = asyncio.ensure_future(timed(store.extend_lease(other, "server-b#1", 30)))
            await asyncio.sleep(0.1)
            for _ in range(5):  # reads answer while the write waits for the lock
                took, owner = await timed(store.owner(other))
                assert owner == "u" and took < 0.5, (took, owner)
            took, result = await write
            assert isinstance(result, StoreDown) and took < store.busy_s + 1.5, (took, result)
        ticking.cancel()
        assert max(gaps) < 0.25, f"the event loop stalled {max(gaps):.2f} s"
        assert await store.extend_lease(other, "server-b#1", 30), "writes go on after the stall"
        assert (await store.lease_of(stuck))[0] == "server-a#1"  # type: ignore[index]
    finally:
        await store.close()


async def _tick(gaps: list[float]) -> None:
    last = time.monotonic()
    while True:
        await asyncio.sleep(0.02)
        now = time.monotonic()
        gaps.append(now - last - 0.02)
        last = now


ROUTES = (
    ("GET", "/ready", None),
    ("POST", "/conversations", None),
    ("GET", "/conversations", None),
    ("POST", "/conversations/{cid}/messages", {"text": "Say hello."}),
    ("GET", "/files", None),
    ("PUT", "/files/notes.md", {"content": "during the stall"}),
    ("POST", "/conversations/{cid}/abort", None),
    ("DELETE", "/conversations/{cid}", None),
)


@pytest.mark.postgres
@pytest.mark.runtime
def test_a_frozen_postgresql_is_503_on_every_route_and_the_service_recovers_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = start_postgres()
    monkeypatch.setenv("DATABASE_URL", server.url)
    web = None
    try:
        web = ServiceThread(Settings(schema=f"t_{secrets.token_hex(4)}"))
        token = web.call(web.service.tokens.issue("A"))
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=web.url, timeout=30, headers=headers) as http:
            cid = http.post("/conversations").json()["id"]
            assert _say(http, cid, "Remember: the codename is HERON.")[-1][0] == "message"
            assert http.put("/files/plan.md", json={"content": "keep"}).status_code == 200
            answers: dict[str, tuple[float, int, str]] = {}
            with server.frozen():
                threads = [
                    threading.Thread(target=_call, args=(web.url, headers, route, cid, answers))
                    for route in ROUTES
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
            for route, (took, status, body) in answers.items():
                print(f"{route}: {status} in {took:.2f} s")  # noqa: T201 (shown with -s)
                assert status == 503 and took < 6.0, (route, took, status, body)
                assert "store_down" in body or "not_ready" in body, (route, body)
                assert server.url.split("@")[1].split("/")[0] not in body, "no host or port shown"
            assert len(answers) == len(ROUTES), answers
            started = time.monotonic()
            while http.get("/ready").status_code != 200:
                assert time.monotonic() - started < 15, "no recovery within 15 s"
                time.sleep(0.2)
            print(f"ready again {time.monotonic() - started:.2f} s after SIGCONT")  # noqa: T201
            assert _say(http, cid, "What is the codename?")[-1][0] == "message"
            history = http.get(f"/conversations/{cid}/messages").json()["messages"]
            texts = [m["text"] for m in history]
            assert "Remember: the codename is HERON." in texts, "nothing lost"
            files = {f["path"] for f in http.get("/files").json()["files"]}
            assert "plan.md" in files, files
    finally:
        if web is not None:
            web.stop()
        server.stop()


def _call(url: str, headers: dict, route: tuple, cid: str, answers: dict) -> None:  # type: ignore[type-arg]
    method, path, body = route
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=20, headers=headers) as http:
        response = http.request(method, path.format(cid=cid), json=body)
        text = response.text  # a send answers 503 before its stream, or as its stream's error
        status = 503 if "store_down" in text else response.status_code
    answers[f"{method} {path}"] = (time.monotonic() - started, status, text)


def _say(http: httpx.Client, cid: str, text: str, key: str = "") -> list[tuple[str, str]]:
    headers = {"Idempotency-Key": key} if key else {}
    response = http.post(f"/conversations/{cid}/messages", json={"text": text}, headers=headers)
    events, kind = [], ""
    for line in response.text.splitlines():
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            events.append((kind, line.split(":", 1)[1].strip()))
    return events


FREEZE_S = 12.0  # longer than a bounded turn's end, so a turn that waits out the stall is seen


@pytest.mark.postgres
@pytest.mark.runtime
def test_a_send_in_flight_when_postgresql_freezes_ends_within_seconds_with_store_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A turn running when the database stalls ends with ``store_down`` while it still stalls."""
    server = start_postgres()
    monkeypatch.setenv("DATABASE_URL", server.url)
    web = None
    try:
        web = ServiceThread(Settings(schema=f"t_{secrets.token_hex(4)}", lease_ttl_s=15.0))
        token = web.call(web.service.tokens.issue("A"))
        headers = {"Authorization": f"Bearer {token}"}
        slow = "Wait 3 seconds, then tell me a story about a heron."
        with httpx.Client(base_url=web.url, timeout=30, headers=headers) as http:
            cid = http.post("/conversations").json()["id"]
            assert _say(http, cid, "Remember: the codename is HERON.")[-1][0] == "message"
            ended: dict[str, object] = {}

            def send() -> None:
                with httpx.Client(base_url=web.url, timeout=40, headers=headers) as client:
                    events = _say(client, cid, slow, "slow-1")
                ended["at"], ended["events"] = time.monotonic(), events

            sender = threading.Thread(target=send)
            sender.start()
            time.sleep(1.0)  # the turn is with the model (it waits 3 s) when the database stops
            with server.frozen():
                froze = time.monotonic()
                sender.join(FREEZE_S)
                time.sleep(max(0.0, froze + FREEZE_S - time.monotonic()))  # the whole stall
                thawed = time.monotonic()
            sender.join(40)
            assert "at" in ended, "the send never ended"
            took = float(ended["at"]) - froze  # type: ignore[arg-type]
            events = ended["events"]
            print(f"the send ended {took:.2f} s after the freeze: {events[-1]}")  # noqa: T201
            assert took < 6.0 and float(ended["at"]) < thawed, f"it waited {took:.2f} s"  # type: ignore[arg-type]
            kind, data = events[-1]  # type: ignore[index]
            assert kind == "error" and '"store_down"' in data, events
            assert '"stored": true' not in data, data
            started = time.monotonic()
            while http.get("/ready").status_code != 200:
                assert time.monotonic() - started < 15, "no recovery within 15 s"
                time.sleep(0.2)
            deadline = time.monotonic() + 40  # the lease is given back once the database answers
            while (last := _say(http, cid, "What is the codename?"))[-1][0] != "message":
                assert time.monotonic() < deadline, f"the conversation never served again: {last}"
                time.sleep(1.0)
            print(f"served again {time.monotonic() - thawed:.2f} s after SIGCONT")  # noqa: T201
            # The client retries the cut send on its key: its outcome was kept once the database
            # answered, so the retry reads the store back and is answered now, not after the
            # key's run would have gone stale (minutes).
            started = time.monotonic()
            retried = _say(http, cid, slow, "slow-1")
            assert retried[-1][0] == "message", retried
            assert time.monotonic() - started < 20, "the retry waited for a stale key"
            texts = [
                m["text"] for m in http.get(f"/conversations/{cid}/messages").json()["messages"]
            ]
            assert texts.count("Remember: the codename is HERON.") == 1, texts
            said = http.get(f"/conversations/{cid}/messages").json()["messages"]
            answered = [m["text"] for m, n in zip(said, said[1:], strict=False)
                        if m["role"] == "user" and n["role"] == "assistant"]  # fmt: skip
            assert answered.count(slow) == 1, f"the cut turn answered {answered.count(slow)}x"
            assert "What is the codename?" in texts, texts
    finally:
        if web is not None:
            web.stop()
        server.stop()
