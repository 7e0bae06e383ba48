"""Several instances behind nginx on one PostgreSQL (helpers/fleet): faults caused for real under a
load of users. ``kill -9`` of an instance mid-stream: the streams it carried end (cut, or an error
event), the clients retry on their Idempotency-Key, no turn is lost or doubled, nginx sends it
nothing 5 s after its death, and it rejoins once restarted. A rolling deploy: no failed request.
Once in three network namespaces, as three hosts (root only)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from helpers.fleet import netns
from helpers.fleet.fleet import Fleet
from helpers.fleet.load import Load
from helpers.fleet.nginx import INSTALL_HINT, Nginx, config, find_nginx
from helpers.fleet.postgres import find_bin_dir
from helpers.run import run_dir

needs_nginx = pytest.mark.skipif(find_nginx() is None, reason=INSTALL_HINT)
FLEET_MARKS = [needs_nginx, pytest.mark.runtime, pytest.mark.postgres, pytest.mark.timeout(240)]
if find_bin_dir() is None and not os.environ.get("DATABASE_URL"):
    FLEET_MARKS.append(pytest.mark.skip(reason="PostgreSQL is not installed"))
USERS = [f"user{i}" for i in range(6)]


def fleet_test(test):
    """A test that starts a fleet: its cost markers, and skips with the reason when it cannot."""
    for mark in FLEET_MARKS:
        test = mark(test)
    return test


class _Port(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = str(self.server.server_port).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@needs_nginx
def test_nginx_takes_a_server_out_on_reload_and_puts_it_back(tmp_path: Path) -> None:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Port) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    ups = [f"127.0.0.1:{s.server_port}" for s in servers]
    proxy = Nginx(tmp_path / "nginx", ups).start()
    try:
        answered = {httpx.get(f"{proxy.url}/", timeout=5).text for _ in range(6)}
        assert answered == {str(s.server_port) for s in servers}, "both serve"
        assert proxy.set_down(ups[0], True) and not proxy.set_down(ups[0], True)
        time.sleep(0.5)  # the old worker hands over to the new ones
        answered = {httpx.get(f"{proxy.url}/", timeout=5).text for _ in range(6)}
        assert answered == {str(servers[1].server_port)}, "the one marked down gets nothing"
        assert f"server {ups[0]} max_fails=1 fail_timeout=5s down;" in proxy.conf.read_text()
        proxy.set_down(ups[0], False)
        time.sleep(0.5)
        answered = {httpx.get(f"{proxy.url}/", timeout=5).text for _ in range(6)}
        assert str(servers[0].server_port) in answered, "back in after the reload"
        assert all(a.status == 200 for a in proxy.accesses())
        assert [a.upstreams for a in proxy.accesses()][-1][0] in ups
        proxy.set_down(ups[0], True)
        proxy.set_down(ups[1], True)  # none left: nginx's own failure, in the service's form
        time.sleep(0.5)
        refused = httpx.post(f"{proxy.url}/conversations", timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == "unavailable"
    finally:
        proxy.stop()
        for server in servers:
            server.shutdown()
            server.server_close()
    assert proxy._guard is not None and proxy._guard.poll() is not None, "nginx stopped"


def test_the_proxy_retries_no_post_that_may_have_started_a_turn(tmp_path: Path) -> None:
    text = config(Nginx(tmp_path, ["127.0.0.1:1"], port=2))
    directives = [line.split("#")[0].strip() for line in text.splitlines()]
    assert "proxy_next_upstream error timeout;" in directives
    assert not any("non_idempotent" in d for d in directives)
    assert "proxy_buffering off;" in directives and "proxy_http_version 1.1;" in directives
    paths = [w.strip(";") for d in directives for w in d.split() if w.startswith("/") and w != "/"]
    assert paths and all(Path(p).is_relative_to(tmp_path) for p in paths), "no system path"


def _sent_to(fleet: Fleet, upstream: str, since: float, until: float) -> list[float]:
    """When nginx began requests that went (or tried to go) to ``upstream`` in the window."""
    assert fleet.nginx is not None
    return [
        a.start
        for a in fleet.nginx.accesses()
        if upstream in a.upstreams and since < a.start < until
    ]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet() -> AsyncIterator[Fleet]:
    """Two instances behind nginx on a throwaway PostgreSQL, for the fault tests of this module."""
    async with Fleet(run_dir("fleet"), size=2, users=USERS, lease_ttl_s=6.0) as started:
        yield started


@fleet_test
@pytest.mark.asyncio(loop_scope="module")
async def test_kill_9_mid_stream_loses_nothing_and_nginx_stops_sending_to_it(fleet: Fleet) -> None:
    load = Load(fleet.url, fleet.tokens(), request_s=10.0)
    runner = asyncio.ensure_future(load.run())
    await asyncio.sleep(2.0)
    dead = fleet.instances[1]
    assert _sent_to(fleet, dead.upstream, 0, time.time()), "it served before its death"
    died = fleet.kill(1)
    await asyncio.sleep(6.0)
    back = time.time()
    await fleet.restart(1)
    ready = time.time()
    await asyncio.sleep(1.5)
    load.finish()
    await asyncio.wait_for(runner, 60)
    counts = await load.check()
    late = [t - died for t in _sent_to(fleet, dead.upstream, died + 5.0, back)]
    rejoined = _sent_to(fleet, dead.upstream, ready, time.time())
    cut = [a for a in load.attempts if a.start < died < a.end and not a.ok]
    assert cut, "no stream was running on the instance when it was killed"
    ended = ("stream cut", "error event", "503 unavailable")  # the last: sent, never answered
    assert all(a.why.startswith(ended) for a in cut), [a.why for a in cut]
    assert counts["lost"] == 0 and counts["doubled"] == 0, counts
    assert load.sent == load.done, "every send ended served (retried on its key)"
    assert not late, f"nginx still sent to the dead instance {late} s after its death"
    out = [c for c in fleet.changes if c.instance == dead.name and c.action == "out"]
    assert out and out[0].at - died < 5.0, fleet.changes
    assert rejoined, "the restarted instance serves again"


@fleet_test
@pytest.mark.asyncio(loop_scope="module")
async def test_a_rolling_deploy_under_load_fails_no_request(fleet: Fleet) -> None:
    tokens = {user: token for user, token in fleet.tokens().items() if user in USERS[:3]}
    load = Load(fleet.url, tokens, request_s=20.0)
    runner = asyncio.ensure_future(load.run())
    await asyncio.sleep(1.0)
    began = time.time()
    changes = await fleet.deploy("v2")
    ended = time.time()
    await asyncio.sleep(1.0)
    load.finish()
    await asyncio.wait_for(runner, 60)
    counts = await load.check()
    served_after = {
        i.name: _sent_to(fleet, i.upstream, i.started_at, time.time()) for i in fleet.instances
    }
    during = [a for a in load.attempts if began <= a.end and a.start <= ended]
    assert len(during) > 10, "the load ran through the deploy"
    assert load.failed() == [], [a.why for a in load.failed()]
    assert [(c.instance, c.action) for c in changes] == [
        ("i1", "out"),
        ("i1", "in"),
        ("i2", "out"),
        ("i2", "in"),
    ]
    assert [i.version for i in fleet.instances] == ["v2", "v2"]
    recorded = fleet.versions()
    assert [recorded[i.name] for i in fleet.instances] == ["v2", "v2"], recorded
    assert counts["lost"] == 0 and counts["doubled"] == 0, counts
    assert all(served_after.values()), "each restarted instance serves again"


@fleet_test
@pytest.mark.asyncio(loop_scope="module")
async def test_postgresql_away_under_load_gives_503_then_recovers(fleet: Fleet) -> None:
    if fleet.pg is None:
        pytest.skip("DATABASE_URL is set: the test stops only a throwaway server")
    tokens = {user: token for user, token in fleet.tokens().items() if user in USERS[:4]}
    load = Load(fleet.url, tokens, request_s=20.0)
    runner = asyncio.ensure_future(load.run())
    await asyncio.sleep(1.5)
    await asyncio.to_thread(fleet.pg.halt)
    away = time.time()
    await asyncio.sleep(5.0)  # past the controller's two failed checks (each up to 2 s)
    kept_in = not fleet.nginx.down
    await asyncio.to_thread(fleet.pg.resume)
    back = time.time()
    await asyncio.sleep(3.0)
    load.finish()
    await asyncio.wait_for(runner, 60)
    counts = await load.check()
    refused = load.failed(away, back)
    assert refused, "sends failed while the database was away"
    assert {a.why for a in load.failed()} <= {"503 store_down", "error event: store_down"}
    assert kept_in, f"all failed /ready: they all stay in nginx, not {fleet.changes}"
    assert [a for a in load.attempts if a.ok and a.start > back], "served again after"
    assert counts["lost"] == 0 and counts["doubled"] == 0, counts
    assert load.sent == load.done


@fleet_test
@pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable()))
async def test_three_instances_in_three_network_namespaces() -> None:
    with netns.Namespaces(3) as spaces:
        names = [link.netns for link in spaces.links]
        fleet = Fleet(run_dir("fleet-netns"), users=USERS[:2], hosts=spaces.hosts())
        async with fleet:
            ours = os.readlink("/proc/self/ns/net")
            theirs = {os.readlink(f"/proc/{i.pid}/ns/net") for i in fleet.instances}
            assert ours not in theirs and len(theirs) == 3, "each instance in its own namespace"
            assert [i.host for i in fleet.instances] == [s.address for s in spaces.hosts()]
            token = fleet.tokens()[USERS[0]]  # issued by the first instance, valid on all
            auth = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(headers=auth, timeout=30) as http:
                made = await http.post(f"{fleet.instances[0].url}/conversations")
                conversation = made.json()["id"]
                for k in (1, 2):  # continued on the two other hosts
                    url = f"{fleet.instances[k].url}/conversations/{conversation}/messages"
                    sent = await http.post(url, json={"text": f"hello from {k}"})
                    assert sent.status_code == 200 and "event: message" in sent.text
                history = await http.get(f"{fleet.url}/conversations/{conversation}/messages")
            said = [m["text"] for m in history.json()["messages"] if m["role"] == "user"]
            assert said == ["hello from 1", "hello from 2"]
            load = await Load(fleet.url, fleet.tokens()).run(2.0)
            counts = await load.check()
            used = {u for a in fleet.nginx.accesses() for u in a.upstreams}
        assert load.turns() > 0 and load.failed() == [] and counts["lost"] == 0, counts
        assert {i.upstream for i in fleet.instances} <= used, "nginx reached each host"
        gone = [i.pid for i in fleet.instances if Path(f"/proc/{i.pid}").exists()]
        assert not gone and fleet.nginx._guard.poll() is not None, "nothing left running"
    listed = netns._ip("netns", "list")
    assert not any(name in listed for name in names), "the namespaces are removed"


@pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable()))
def test_namespaces_made_before_a_failure_are_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = netns._ip, []

    def failing_on_the_second_link(*args: str, netns: str = "") -> str:
        calls.append(args)
        if args[:2] == ("link", "add") and sum(c[:2] == ("link", "add") for c in calls) == 2:
            raise RuntimeError("ip link add: a failure caused by the test")
        return real(*args, netns=netns)

    monkeypatch.setattr(netns, "_ip", failing_on_the_second_link)
    spaces = netns.Namespaces(3)
    with pytest.raises(RuntimeError, match="caused by the test"):
        spaces.create()
    monkeypatch.undo()
    made = [c[2] for c in calls if c[:2] == ("netns", "add")]
    assert len(made) == 2 and spaces.links == []
    listed, links = netns._ip("netns", "list"), netns._ip("-o", "link")
    assert not any(name in listed for name in made), "both namespaces are removed"
    assert f"fh{os.getpid()}k0" not in links, "and the first one's link on this side"
