"""The web service's HTTP defects (issue 21), each caused for real over a socket: a kept-alive
connection that stalls, a request that never finishes arriving, the order of 401 and 422, a
hang-up mid-stream that floods the log, what a drain refuses, what an unauthenticated caller may
learn, a send queued behind a delete, a lease held past a fault, and idempotency keys.
"""

from __future__ import annotations

import json
import socket
import statistics
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
