"""Traces and metrics of the web service: one request is one trace from the HTTP span down to the
runtime's model call, users' traces never mix, no token or prompt in any span, an OTLP endpoint
that is down or hangs costs a request nothing, /metrics answers the operator only."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from peer_model import PEER_MODEL, PeerModel
from web_fixture import ServiceThread

from helpers.ops.metrics import _is_operator
from helpers.ops.traces import (
    Span,
    descendants,
    load_spans,
    one_trace,
    roots,
    time_by_kind,
    waterfall,
)
from helpers.ops.tracing import RUNTIME_OTEL_VARS, Target, Tracing
from helpers.run import TMP, remove_dir
from helpers.web.service import Settings

OPERATOR = f"op-{secrets.token_hex(12)}"
SPANS_S = 20.0  # both exporters write within moments of a span's end; this is a backstop


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def traced() -> Iterator[ServiceThread]:
    """A traced service; the operator's environment asks the instrumentation for every header."""
    folder = remove_dir(TMP / f"test-traces-{secrets.token_hex(4)}")
    settings = Settings(traces=f"file:{folder / 'web.jsonl'}", operator_token=OPERATOR, pool_size=1)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
        running = ServiceThread(settings)
        try:
            yield running
        finally:
            running.stop()
            remove_dir(folder)


class Caller:
    """One user with a token and a conversation on ``web``; each turn returns its trace id."""

    def __init__(self, web: ServiceThread, name: str) -> None:
        self.web, self.name = web, name
        self.token = web.call(web.service.tokens.issue(name))
        with httpx.Client(base_url=web.url, timeout=60) as http:
            made = http.post("/conversations", headers=auth(self.token))
        assert made.status_code == 201, made.text
        self.conversation = made.json()["id"]
        self.prompts: list[str] = []
        self.traces: list[str] = []

    def turn(self, text: str, path: str = "") -> tuple[str, list[tuple[str, dict]]]:
        """A turn in the conversation, or a short-lived ask at ``path`` ``/ask``."""
        self.prompts.append(text)
        path = path or f"/conversations/{self.conversation}/messages"
        with (
            httpx.Client(base_url=self.web.url, timeout=60) as http,
            connect_sse(http, "POST", path, json={"text": text}, headers=auth(self.token)) as sse,
        ):
            assert sse.response.status_code == 200, sse.response.read()
            events = [(e.event, json.loads(e.data)) for e in sse.iter_sse()]
            trace = sse.response.headers.get("x-trace-id", "")
        self.traces.append(trace)
        return trace, events


def exported(web: ServiceThread, traces: list[str]) -> list[Span]:
    """Every span exported so far, once each of ``traces`` has its HTTP span (which ends just after
    the response's last byte) and the runtime's ``invoke_agent``."""
    target = web.service.tracing.target
    deadline = time.monotonic() + SPANS_S
    while True:
        assert web.service.tracing.flush(5)
        rows = load_spans(target.where, target.runtime_file)
        agents = {r.trace for r in rows if r.what == "invoke_agent"}
        requests = {r.trace for r in rows if r.what == "http"}
        if set(traces) <= agents & requests or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def check_one_trace(rows: list[Span], trace: str) -> list[Span]:
    """The root is the HTTP request's span; the runtime's turn and model call are under it."""
    spans = one_trace(rows, trace)
    assert spans, f"no span of trace {trace}"
    (root,) = roots(spans)
    assert root.what == "http" and root.service == "copilot-web", root
    under = descendants(spans, root.span)
    assert len(under) == len(spans) - 1, "every span of the trace is under the request's"
    kinds = {r.what for r in under}
    assert {"app.ownership", "app.lock", "app.lease", "app.session.open", "app.turn"} <= kinds
    assert {"invoke_agent", "chat", "store"} <= kinds, kinds
    (turn,) = [r for r in under if r.what == "app.turn"]
    agent = next(r for r in under if r.what == "invoke_agent")
    assert agent in descendants(spans, turn.span), "the runtime's turn sits under ours"
    return spans


@pytest.mark.runtime
def test_one_request_is_one_trace_from_http_to_the_model(traced: ServiceThread) -> None:
    alice = Caller(traced, f"alice{secrets.token_hex(2)}")
    trace, events = alice.turn("Remember: the codename is TRACE-ONE.")
    assert events[-1][0] == "message", events
    assert len(trace) == 32 and int(trace, 16), "the response names its trace"
    rows = exported(traced, [trace])
    spans = check_one_trace(rows, trace)
    ids = {r.attributes.get("gen_ai.conversation.id") for r in spans} - {None}
    assert ids == {alice.conversation}
    picture = Path(traced.service.tracing.target.where).with_name("waterfall.png")
    waterfall(spans, picture)
    assert picture.stat().st_size > 10_000
    table = {row["kind"]: row for row in time_by_kind(rows)}
    assert {"http", "app.turn", "invoke_agent", "chat", "store"} <= set(table)
    assert table["http"]["total ms"] >= table["app.turn"]["total ms"] > 0


@pytest.mark.runtime
def test_three_users_at_once_never_share_a_trace(traced: ServiceThread) -> None:
    users = [Caller(traced, f"u{n}{secrets.token_hex(2)}") for n in range(3)]
    failures: list[BaseException] = []

    asks: dict[str, list[str]] = {u.name: [] for u in users}

    def run(user: Caller) -> None:
        try:
            for step in range(2):
                user.turn(f"Remember: the codename is {user.name.upper()}-{step}.")
            asks[user.name].append(user.turn("List my files.", "/ask")[0])
            user.traces.pop()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    rows = exported(traced, [t for u in users for t in u.traces + asks[u.name]])
    owner = {u.conversation: u for u in users}
    seen: list[str] = []
    for trace in [t for u in users for t in asks[u.name]]:  # an ask's session, and no other:
        spans = one_trace(rows, trace)  # the pool's refill after it is nobody's request
        seen += {r.attributes.get("gen_ai.conversation.id") for r in spans} - {None}
        assert any(r.what == "execute_tool" for r in spans), "the ask's tool call is in its trace"
    assert len(seen) == len(set(seen)) == len(users), seen
    for user in users:
        assert len(set(user.traces)) == 2, "each request is a trace of its own"
        for trace in user.traces:
            spans = check_one_trace(rows, trace)
            ids = {r.attributes.get("gen_ai.conversation.id") for r in spans} - {None}
            assert ids == {user.conversation}, f"{user.name}'s trace holds {ids}"
    for r in rows:  # and the other way: each user's runtime spans are in that user's traces
        if r.attributes.get("gen_ai.conversation.id") in owner:
            assert r.trace in owner[r.attributes["gen_ai.conversation.id"]].traces, r


@pytest.mark.runtime
def test_no_token_or_prompt_in_any_span(traced: ServiceThread) -> None:
    bob = Caller(traced, f"bob{secrets.token_hex(2)}")
    secret_text = f"Remember: the codename is PRIVATE-{secrets.token_hex(6)}."
    trace, _ = bob.turn(secret_text)
    exported(traced, [trace])
    target = traced.service.tracing.target
    text = Path(target.where).read_text() + target.runtime_file.read_text()
    assert trace in text and bob.conversation in text  # the files hold this request's spans
    for secret in (bob.token, OPERATOR, traced.service.server.token, secret_text[27:]):
        assert secret and secret not in text, "a token or the prompt reached a span"


@pytest.mark.runtime
def test_an_error_event_names_its_trace(traced: ServiceThread) -> None:
    """Another holder keeps the conversation's lease: the turn ends with ``busy``, its trace id
    in the event and in the header (what a user's complaint would quote)."""
    carol = Caller(traced, f"carol{secrets.token_hex(2)}")
    store, settings = traced.service.store, traced.service.settings
    assert traced.call(store.try_lease(carol.conversation, "web-elsewhere#1", 60))
    waited, settings.turn_timeout_s = settings.turn_timeout_s, 0.5
    try:
        trace, events = carol.turn("Anyone there?")
    finally:
        settings.turn_timeout_s = waited
        traced.call(store.drop_lease(carol.conversation, "web-elsewhere#1"))
    kind, data = events[-1]
    assert kind == "error" and data["error"] == "busy", events
    assert data["trace_id"] == trace and len(trace) == 32


@pytest.mark.runtime
def test_metrics_need_the_operator_token_and_name_no_user(traced: ServiceThread) -> None:
    dave = Caller(traced, f"dave{secrets.token_hex(2)}")
    dave.turn("Remember: the codename is METRICS.")
    with httpx.Client(base_url=traced.url, timeout=30) as http:
        for headers in ({}, auth("wrong"), auth(dave.token)):  # as if there were no /metrics
            unknown = http.get("/no-such-route", headers=headers)
            refused = http.get("/metrics", headers=headers)
            assert refused.status_code == unknown.status_code in (401, 404), refused
            said = unknown.json()["message"].replace("/no-such-route", "/metrics")
            assert refused.json() == unknown.json() | {"message": said}
        page = http.get("/metrics", headers=auth(OPERATOR))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    text = page.text
    for family in (
        'copilot_web_turns_total{outcome="ok"}',
        'copilot_web_errors_total{code="not_found"}',
        'route="/conversations/{conversation_id}/messages"',
        "copilot_web_active_streams",
        "copilot_web_pool_ready",
        "copilot_web_leases_held",
        'copilot_web_db_call_seconds_count{call="select"}',
    ):
        assert family in text, family
    assert dave.name not in text and dave.conversation not in text and dave.token not in text


class Collector:
    """An OTLP/HTTP collector on loopback: answering (it keeps each request's body), stuck
    (it accepts connections and never answers), then closed (connections refused)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stuck = False
        self.received: list[tuple[str, bytes]] = []  # (content type, body)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.server.accept()[0]
            except OSError:
                return
            self.held.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        with contextlib.suppress(OSError, ValueError):
            while not self.stuck:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                fields = dict(
                    line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:]
                )
                size = int(fields.get("content-length", "0"))
                while len(data) < size:
                    data += conn.recv(65536)
                body, data = data[:size], data[size:]
                if self.stuck:
                    return  # never answered
                self.received.append((fields.get("content-type", ""), body))
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                conn.sendall(b"content-length: 2\r\n\r\n{}")

    def close(self) -> None:
        """Close it: the port is now closed (connections refused), a collector that is down."""
        self.server.close()
        for conn in self.held:
            conn.close()


def median_turn_s(web: ServiceThread, turns: int) -> float:
    user = Caller(web, f"lat{secrets.token_hex(2)}")
    took = []
    for n in range(turns):
        started = time.perf_counter()
        _, events = user.turn(f"Remember: the codename is LATENCY-{n}.")
        took.append(time.perf_counter() - started)
        assert events[-1][0] == "message", events
    return statistics.median(took)


@pytest.mark.runtime
@pytest.mark.timeout(240)
def test_otlp_spans_arrive_and_a_collector_down_or_stuck_costs_a_request_nothing() -> None:
    """Both exporters post the request's trace to the collector while it answers. Then each
    export to the stuck collector takes 2 s before it gives up; a request that waited for one
    would take that long. Against the same turns with tracing off."""
    collector = Collector()
    off = ServiceThread(Settings(pool_size=1))
    try:
        baseline = median_turn_s(off, 4)
    finally:
        off.stop()
    web = ServiceThread(Settings(traces=f"otlp:http://127.0.0.1:{collector.port}", pool_size=1))
    try:
        trace, _ = Caller(web, f"otlp{secrets.token_hex(2)}").turn("Say hello.")
        assert web.service.tracing.flush(5)
        deadline = time.monotonic() + SPANS_S
        while time.monotonic() < deadline and len(kinds_with(collector, trace)) < 2:
            time.sleep(0.1)
        assert kinds_with(collector, trace) == {"protobuf", "json"}, "ours, then the runtime's"
        collector.stuck = True
        stuck = median_turn_s(web, 4)
        assert collector.held, "the exporters did try the stuck collector"
        collector.close()
        down = median_turn_s(web, 4)
    finally:
        collector.close()
        web.stop()
    # Loose for a loaded machine; one export waited for would cost 1-2 s, and a turn has ~20 spans.
    bound = 2 * baseline + 1.0
    print(f"median turn: off {baseline:.3f} s, stuck collector {stuck:.3f} s, down {down:.3f} s")
    assert stuck < bound and down < bound, (baseline, stuck, down)


def kinds_with(collector: Collector, trace: str) -> set[str]:
    """How ``trace`` reached the collector: ``protobuf`` (the service), ``json`` (the runtime)."""
    found = set()
    for kind, body in list(collector.received):
        if kind.endswith("protobuf") and bytes.fromhex(trace) in body:
            found.add("protobuf")
        elif kind.endswith("json") and trace.encode() in body:
            found.add("json")
    return found


@pytest.mark.runtime
@pytest.mark.timeout(180)
def test_on_the_peer_model_too(monkeypatch: pytest.MonkeyPatch) -> None:
    canary = f"key-{secrets.token_hex(8)}"
    folder = remove_dir(TMP / f"test-traces-{secrets.token_hex(4)}")
    with PeerModel() as peer:
        monkeypatch.setenv("COPILOT_PROVIDER_BASE_URL", peer.base_url)
        monkeypatch.setenv("COPILOT_MODEL", PEER_MODEL)
        monkeypatch.setenv("COPILOT_PROVIDER_API_KEY", canary)
        settings = Settings(backend="byok", traces=f"file:{folder / 'web.jsonl'}", pool_size=1)
        web = ServiceThread(settings)
        try:
            erin = Caller(web, f"erin{secrets.token_hex(2)}")
            trace, events = erin.turn("Remember: the codename is PEER-TRACE.")
            assert events[-1][0] == "message", events
            check_one_trace(exported(web, [trace]), trace)
            target = web.service.tracing.target
            text = Path(target.where).read_text() + target.runtime_file.read_text()
            for secret in (canary, erin.token, "PEER-TRACE"):
                assert secret not in text
        finally:
            web.stop()
            remove_dir(folder)


def test_where_traces_go_is_one_setting() -> None:
    assert Target.parse("off") == Target() == Target.parse("")
    assert Target.parse("file:tmp/t.jsonl").runtime_file.name == "t-runtime.jsonl"
    assert Target.parse("otlp:http://127.0.0.1:4318/").where == "http://127.0.0.1:4318"
    for bad in ("file:", "otlp:127.0.0.1:4318", "jaeger:x", "on"):
        with pytest.raises(ValueError):
            Target.parse(bad)
    off = Tracing(Target()).runtime_env()
    assert off == dict.fromkeys(RUNTIME_OTEL_VARS), "off: no inherited OTEL_* reaches the runtime"
    env = Tracing(Target.parse("otlp:http://127.0.0.1:4318")).runtime_env()
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert env["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] == "false"
    assert env["COPILOT_OTEL_FILE_EXPORTER_PATH"] is None
    assert _is_operator(f"Bearer {OPERATOR}", OPERATOR)
    assert not _is_operator("Bearer ", "") and not _is_operator(f"Basic {OPERATOR}", OPERATOR)
