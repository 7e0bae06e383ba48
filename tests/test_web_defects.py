"""The web service's HTTP defects (issue 21), each caused for real over a socket: a kept-alive
connection that stalls, a request that never finishes arriving, the order of 401 and 422, a
hang-up mid-stream that floods the log, what a drain refuses, what an unauthenticated caller may
learn, a send queued behind a delete, a lease held past a fault, and idempotency keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sqlite3
import statistics
import struct
import threading
import time
from collections.abc import Iterator

import httpx
import pg_fixture
import pytest
from httpx_sse import connect_sse
from web_fixture import ServiceThread

from helpers.store.session_fs import stored_events
from helpers.web.client import Caller, Reply
from helpers.web.outcomes import orphan_claims_of
from helpers.web.service import Settings

pytestmark = pytest.mark.runtime
postgres_url = pg_fixture.postgres_url  # a throwaway PostgreSQL server, or a skip
ARRIVAL_S = 2.0


@pytest.fixture(scope="module")
def web() -> Iterator[ServiceThread]:
    running = ServiceThread(
        Settings(turn_timeout_s=30, turns_per_user=4, pool_size=1, request_arrival_s=ARRIVAL_S)
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def token(web: ServiceThread) -> str:
    return web.call(web.service.tokens.issue("A"))


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def on_each_db(request: pytest.FixtureRequest) -> Iterator[tuple[ServiceThread, str]]:
    """The service on SQLite (the module's), then on a throwaway PostgreSQL; with a token."""
    if request.param == "sqlite":
        web = request.getfixturevalue("web")
        yield web, request.getfixturevalue("token")
        return
    before = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    try:
        web = ServiceThread(Settings(turn_timeout_s=30, turns_per_user=4, pool_size=1))
    finally:
        if before is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = before
    try:
        assert web.service.store.engine == "postgresql"
        yield web, web.call(web.service.tokens.issue("A"))
    finally:
        web.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sse(body: str) -> list[tuple[str, dict]]:
    """The events of a whole SSE body, in order."""
    events, kind = [], ""
    for line in body.splitlines():
        if line.startswith("event:"):
            kind = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            events.append((kind, json.loads(line.partition(":")[2].strip())))
    return events


def test_a_kept_alive_connection_answers_without_nagles_stall(web, token) -> None:
    """Each response after the first on one connection: no ~40 ms wait for a delayed ACK."""
    with httpx.Client(base_url=web.url, timeout=10, headers=auth(token)) as http:
        http.get("/whoami")
        took = []
        for _ in range(12):
            started = time.perf_counter()
            assert http.get("/whoami").status_code == 200
            took.append(time.perf_counter() - started)
    assert statistics.median(took) < 0.020, [round(t * 1000, 1) for t in took]


def _socket(web: ServiceThread) -> socket.socket:
    sock = socket.create_connection((web.web.host, web.web.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def post(web: ServiceThread, path: str, token: str | None, **kw) -> httpx.Response:
    headers = {**(auth(token) if token else {}), **kw.pop("headers", {})}
    with httpx.Client(base_url=web.url, timeout=60) as http:
        return http.post(path, headers=headers, **kw)


def send(web: ServiceThread, token: str, cid: str, text: str, key: str | None = None):
    """POST a message; (status, events or the error body)."""
    headers = {"Idempotency-Key": key} if key is not None else {}
    response = post(
        web, f"/conversations/{cid}/messages", token, json={"text": text}, headers=headers
    )
    if response.status_code != 200:
        return response.status_code, response.json()
    return 200, sse(response.text)


def new_conversation(web: ServiceThread, token: str) -> str:
    response = post(web, "/conversations", token)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_no_token_is_401_before_the_body_is_read(web, token) -> None:
    cid = new_conversation(web, token)
    path = f"/conversations/{cid}/messages"
    bad = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    for presented in (None, "not-a-token"):
        for kwargs in (bad, {"json": {"text": ""}}, {"content": b"x" * 70_000}):
            response = post(web, path, presented, **kwargs)
            assert response.status_code == 401, (presented, response.text)
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
    assert post(web, path, token, **bad).status_code == 422, "with a token: the body's fault"


SLOW = "Wait 2 seconds, then tell me a story about a lighthouse."


def in_background(work, *args) -> tuple[threading.Thread, list]:
    """Run ``work(*args)`` in a thread; its result lands in the returned list."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(work(*args)), daemon=True)
    thread.start()
    return thread, out


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_a_send_queued_behind_a_delete_is_not_found(web, token) -> None:
    cid = new_conversation(web, token)
    running, first = in_background(send, web, token, cid, SLOW)
    wait_until(lambda: web.service.running("A") >= 1)
    time.sleep(0.2)
    deleting, deleted = in_background(
        lambda: httpx.delete(f"{web.url}/conversations/{cid}", headers=auth(token), timeout=60)
    )
    time.sleep(0.3)  # the delete waits for the running turn's lock; this send queues behind it
    status, events = send(web, token, cid, "Say hello.")
    running.join(60)
    deleting.join(60)
    assert deleted[0].status_code == 204
    if status == 200:
        assert events[-1][0] == "error" and events[-1][1]["error"] == "not_found", events[-1:]
    else:
        assert status == 404 and events["error"] == "not_found", events


def test_creating_a_conversation_while_draining_is_503() -> None:
    web = ServiceThread(Settings(turn_timeout_s=30, pool_size=1))
    try:
        token = web.call(web.service.tokens.issue("A"))
        cid = new_conversation(web, token)
        running, _ = in_background(send, web, token, cid, SLOW)
        wait_until(lambda: web.service.running("A") >= 1)
        draining = asyncio.run_coroutine_threadsafe(web.service.drain(30), web.loop)
        wait_until(lambda: not web.service.gate.accepting)
        response = post(web, "/conversations", token)
        running.join(60)
        assert draining.result(60) == 0
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "draining" and response.headers["retry-after"]
    finally:
        web.stop()


def secrets_of(web: ServiceThread) -> list[str]:
    """What no body may name: the database, the runtime's address and log, notebook advice."""
    service = web.service
    runtime = service.server
    return [
        service.store.describe(),
        "sessions.db",
        runtime.url,
        f":{runtime.url.rsplit(':', 1)[-1]}",
        str(runtime.log_path.name),
        service.holder,
        "re-run",
        "cell",
    ]


def lease_of(web: ServiceThread, cid: str):
    return web.call(web.service.store.lease_of(cid))


def test_a_database_fault_gives_the_lease_back_and_names_nothing(web, token) -> None:
    cid = new_conversation(web, token)
    assert send(web, token, cid, "Say hello.")[0] == 200
    running, cut = in_background(send, web, token, cid, SLOW)
    wait_until(lambda: web.service.running("A") >= 1)
    time.sleep(0.5)
    web.call(web.service.store.close())
    try:
        running.join(60)
        bodies = [
            httpx.get(f"{web.url}/ready", timeout=30).text,
            post(web, "/conversations", token).text,
            post(web, f"/conversations/{cid}/messages", token, json={"text": "hi"}).text,
            json.dumps(cut[0][1]),
        ]
    finally:
        web.call(web.service.store.connect())
    assert cut[0][0] == 200 and cut[0][1][-1][1]["error"] == "store_down", cut[0][1][-1:]
    wait_until(lambda: lease_of(web, cid) is None, 5)  # given back as soon as the store answers
    started = time.monotonic()
    status, events = send(web, token, cid, "Say hello again.")
    assert status == 200 and events[-1][0] == "message", events[-1:]
    assert time.monotonic() - started < 8, "the next turn did not wait for the lease to expire"
    for body in bodies:
        assert not [s for s in secrets_of(web) if s in body], body


def send_watching_lease(web: ServiceThread, token: str, cid: str, text: str):
    """Send; on the final event, read the lease row at once (SQLite, from this thread)."""
    events, held = [], "unread"
    path = f"/conversations/{cid}/messages"
    with httpx.Client(base_url=web.url, timeout=60, headers=auth(token)) as http:
        with connect_sse(http, "POST", path, json={"text": text}) as source:
            for event in source.iter_sse():
                if event.event in ("message", "error"):
                    with sqlite3.connect(web.folder / "sessions.db", timeout=5) as db:
                        held = db.execute(
                            "SELECT holder FROM session_leases WHERE session_id = ?", (cid,)
                        ).fetchall()
                events.append((event.event, json.loads(event.data)))
    return source.response.status_code, events, held


def test_a_dead_runtime_gives_the_lease_back_before_the_error_and_names_nothing(web, token) -> None:
    cid = new_conversation(web, token)
    running, cut = in_background(send_watching_lease, web, token, cid, SLOW)
    wait_until(lambda: web.service.running("A") >= 1)
    time.sleep(0.5)
    forbidden = secrets_of(web)
    restarts = web.service.restarts
    os.killpg(web.service.server.pid, signal.SIGKILL)
    running.join(60)
    held_at_report = cut[0][2]
    bodies = [json.dumps(cut[0][1])]
    while web.service.restarts == restarts:
        bodies.append(httpx.get(f"{web.url}/ready", timeout=30).text)
        bodies.append(post(web, f"/conversations/{cid}/messages", token, json={"text": "x"}).text)
        time.sleep(0.1)
    assert cut[0][0] == 200 and cut[0][1][-1][1]["error"] == "runtime_down", cut[0][1][-1:]
    assert held_at_report == [], "the lease was still held when the error was reported"
    for body in bodies:
        assert not [s for s in forbidden if s in body], body
    wait_until(lambda: httpx.get(f"{web.url}/ready", timeout=30).status_code == 200, 30)


def stored_turns(web: ServiceThread, cid: str, text: str) -> int:
    """How many times the store holds ``text`` as a user message of ``cid``."""
    events = web.call(stored_events(web.service.store, cid))
    return sum(
        1
        for e in events
        if e.get("type") == "user.message" and (e.get("data") or {}).get("content") == text
    )


async def _send_as_caller(url: str, token: str, cid: str, text: str, key: str) -> Reply:
    async with Caller(url, token) as caller:
        return await caller.send(cid, text, key=key)


def test_a_retry_with_the_same_idempotency_key_runs_the_turn_once(on_each_db) -> None:
    web, token = on_each_db
    cid = new_conversation(web, token)
    text = "Wait 1 seconds, then remember: the codename is KESTREL-4."
    both = [in_background(send, web, token, cid, text, "key-1") for _ in range(2)]
    for thread, _ in both:
        thread.join(60)
    (s1, first), (s2, second) = both[0][1][0], both[1][1][0]
    assert s1 == s2 == 200 and first[-1][0] == "message", (first[-1:], second[-1:])
    assert first == second, "the concurrent send got the same events"
    assert stored_turns(web, cid, text) == 1, "two sends with one key ran one turn"
    status, again = send(web, token, cid, text, "key-1")
    assert status == 200 and again == first, "a retry after the end replays the same events"
    replayed = asyncio.run(_send_as_caller(web.url, token, cid, text, "key-1"))
    assert replayed.events == first, "the helpers' caller sends the key too"
    assert stored_turns(web, cid, text) == 1
    status, other = send(web, token, cid, text, "key-2")
    assert status == 200 and other[-1][0] == "message"
    assert stored_turns(web, cid, text) == 2, "another key is another turn"


def test_bad_or_reused_idempotency_keys_are_422(on_each_db) -> None:
    web, token = on_each_db
    cid = new_conversation(web, token)
    for key in ("k" * 256, "with space", "tab\there", b"caf\xe9", ""):
        status, body = send(web, token, cid, "Say hello.", key)
        assert status == 422 and body["error"] == "malformed", (key, body)
    assert send(web, token, cid, "Say hello.", "k" * 255)[0] == 200
    status, body = send(web, token, cid, "Say something else.", "k" * 255)
    assert status == 422 and body["error"] == "idempotency_key_reused", body
    assert stored_turns(web, cid, "Say something else.") == 0


class _Count(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, 0

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += self.text in record.getMessage()


def test_a_hang_up_mid_stream_writes_nothing_to_the_log(web, token) -> None:
    """A long reply streams word by word; the caller hangs up after the first delta."""
    cid = new_conversation(web, token)
    body = json.dumps({"text": "Remember: the codename is " + "w " * 3000}).encode()
    counter = _Count("socket.send() raised exception.")
    logging.getLogger().addHandler(counter)
    try:
        for how in ("reset", "shutdown", "close") * 2:
            sock = _socket(web)
            head = (
                f"POST /conversations/{cid}/messages HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
            got = b""
            while b"event: delta" not in got:
                got += sock.recv(4096)
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == "shutdown":
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            wait_until(lambda: web.service.running("A") == 0)
    finally:
        logging.getLogger().removeHandler(counter)
    assert counter.seen == 0, f"{counter.seen} log lines"


def _closed_within(sock: socket.socket, deadline: float) -> bytes | None:
    """What the server sent before closing, or ``None`` if it was still open at ``deadline``."""
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            piece = sock.recv(4096)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return got
        if not piece:
            return got
        got += piece


def test_a_request_that_never_finishes_arriving_is_cut(web, token) -> None:
    cid = new_conversation(web, token)
    path = f"/conversations/{cid}/messages"
    keep_alive = f"GET /whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    halves = {
        "nothing": b"",
        "half the headers": b"POST /conversations HTTP/1.1\r\nHost: x\r\n",
        "half the body": (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"text": '
        ).encode(),
        "a second request, half sent": (keep_alive + "GET /whoami HTTP/1.1\r\n").encode(),
    }
    socks = []
    for name, data in halves.items():
        for _ in range(10):
            sock = _socket(web)
            sock.sendall(data)
            socks.append((name, sock))
    deadline = time.monotonic() + ARRIVAL_S + 4
    try:
        seen = [(name, _closed_within(sock, deadline)) for name, sock in socks]
    finally:
        for _, sock in socks:
            sock.close()
    still_open = [name for name, got in seen if got is None]
    assert not still_open, f"{len(still_open)} of {len(seen)} still open: {set(still_open)}"
    for name, got in seen:
        assert b"HTTP/1.1 408 Request Timeout" in got, (name, got[-300:])
    with httpx.Client(base_url=web.url, timeout=10, headers=auth(token)) as http:
        assert http.get("/whoami").status_code == 200, "whole requests are served as before"


GHOST_TRIALS = int(os.environ.get("WEB_GHOST_TRIALS", "12"))


def test_a_turn_reported_failed_is_not_stored_or_says_it_was() -> None:
    """Turns that end near their timeout (the model's delay bisected to where a turn stops being
    stored, so most trials land in the window): whatever each is told, the store agrees."""
    web = ServiceThread(Settings(turn_timeout_s=1.0, pool_size=1, lease_ttl_s=6))
    try:
        token = web.call(web.service.tokens.issue("G"))
        cid = new_conversation(web, token)
        outcomes = []
        low, high = 0.6, 1.4  # bisect to where a turn stops being stored: where ghosts are
        for trial in range(GHOST_TRIALS):
            wait = (low + high) / 2
            text = f"Wait {wait:.2f} seconds, then remember: the codename is G-{trial}."
            status, events = send(web, token, cid, text)
            assert status == 200, events
            kind, data = events[-1]
            history = web.call(web.service.history("G", cid))
            at = [i for i, m in enumerate(history) if m["text"] == text]
            stored = (
                bool(at)
                and at[-1] + 1 < len(history)
                and history[at[-1] + 1]["role"] == ("assistant")
            )
            outcomes.append(
                (round(wait, 3), kind, data.get("error", ""), data.get("stored", "-"), stored)
            )
            low, high = (wait, high) if stored else (low, wait)
    finally:
        web.stop()
    ghosts = [o for o in outcomes if o[1] == "error" and o[4] and o[3] is not None]
    lost = [o for o in outcomes if o[1] == "message" and not o[4]]
    assert not ghosts and not lost, outcomes
    assert {o[1] for o in outcomes} == {"message", "error"}, (
        "the sweep crossed the timeout",
        outcomes,
    )
    assert all(o[3] is False for o in outcomes if o[1] == "error"), outcomes


def test_a_keyed_send_whose_caller_hung_up_runs_on_for_its_retry(web, token) -> None:
    cid = new_conversation(web, token)
    text = "Wait 1 seconds, then remember: the codename is OSPREY-9."
    body = json.dumps({"text": text}).encode()
    sock = _socket(web)
    head = (
        f"POST /conversations/{cid}/messages HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: hang-up-1\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    wait_until(lambda: web.service.running("A") >= 1)
    sock.close()  # the caller hangs up before the reply, and retries with the same key
    status, events = send(web, token, cid, text, "hang-up-1")
    assert status == 200 and events[-1][0] == "message", events[-1:]
    assert "OSPREY-9" in events[-1][1]["text"]
    assert stored_turns(web, cid, text) == 1


def test_a_send_stored_by_a_process_that_died_before_recording_it_is_not_run_again(
    web, token
) -> None:
    """A process killed after the turn was stored but before its key's outcome was: the restarted
    instance marks that run orphaned, and the client's retry finds the stored reply, not a new
    turn (the read-back must look from when the first run began, not from the retry)."""
    cid = new_conversation(web, token)
    text = "Remember: the codename is PLOVER-2."
    status, first = send(web, token, cid, text, "died-1")
    assert status == 200 and first[-1][0] == "message", first
    time.sleep(1.5)  # the retry comes later than the margin the read-back allows for clocks
    store = web.service.store
    # What the killed process left: the turn stored, its key still "running" under its holder.
    web.call(
        store.execute(
            "UPDATE web_idempotency SET state = 'running', result = NULL, holder = ? "
            "WHERE conversation = ? AND idem_key = ?",
            (f"{web.service.holder}#gone", cid, "died-1"),
        )
    )
    assert web.call(orphan_claims_of(store, web.service.holder)) == 1  # what start() does
    status, again = send(web, token, cid, text, "died-1")
    assert status == 200 and again[-1] == first[-1], (again[-1:], first[-1:])
    assert stored_turns(web, cid, text) == 1, "the retry ran the stored turn again"
