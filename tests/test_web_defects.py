"""The web service's HTTP defects (issue 21), each caused for real over a socket: a kept-alive
connection that stalls, a request that never finishes arriving, the order of 401 and 422, a
hang-up mid-stream that floods the log, what a drain refuses, what an unauthenticated caller may
learn, a send queued behind a delete, a lease held past a fault, and idempotency keys.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from web_fixture import ServiceThread

from helpers.web.service import Settings

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def web() -> Iterator[ServiceThread]:
    running = ServiceThread(Settings(turn_timeout_s=30, turns_per_user=4, pool_size=1))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def token(web: ServiceThread) -> str:
    return web.service.tokens.issue("A")


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
        token = web.service.tokens.issue("A")
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
