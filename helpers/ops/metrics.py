"""The operator's figures at ``/metrics``, in Prometheus' text format (``prometheus-client``).

Turns by outcome, errors by code, request latency per route template, active streams, the pool,
leases held by this instance, database call latency. No label ever carries a user name, a user's
id or a conversation id: every label value comes from a short list fixed in the code (route
templates, error codes, outcomes), because each distinct value is a time series of its own (a
label per user grows without bound) and because whoever reads the metrics would read who used the
service and when. Per-user figures belong in the application's own records.

``/metrics`` answers only with the operator's token (``WEB_OPERATOR_TOKEN``, compared in constant
time). Without a token set, or to anyone else, it answers as an unknown route does (401 without a
user's token, 404 with one): nobody can tell it exists, and the service needs no second listener
(it runs inside a notebook's kernel as often as on its own).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "copilot_web"
_CODE = re.compile(r"[a-z_]{1,40}")  # our own error codes; anything else is counted as "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
UNAUTHORIZED = "a valid bearer token is required (Authorization: Bearer …)"  # as any route says
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """One service's metrics, in a registry of its own (several services may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.turns = Counter(f"{PREFIX}_turns", "Turns ended, by outcome", ["outcome"], registry=r)
        self.errors = Counter(
            f"{PREFIX}_errors", "Errors answered (HTTP bodies and SSE events)", ["code"], registry=r
        )
        self.latency = Histogram(
            f"{PREFIX}_request_seconds",
            "HTTP requests, start to last byte (a stream: the whole turn)",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.streams = Gauge(f"{PREFIX}_active_streams", "SSE responses open now", registry=r)
        self.leases = Gauge(
            f"{PREFIX}_leases_held", "Conversation leases this instance holds now", registry=r
        )
        self.db = Histogram(
            f"{PREFIX}_db_call_seconds",
            "Database calls (one statement or one transaction)",
            ["call"],
            buckets=DB_BUCKETS,
            registry=r,
        )
        self.pool_size = Gauge(f"{PREFIX}_pool_size", "Sessions the pool keeps ready", registry=r)
        self.pool_ready = Gauge(f"{PREFIX}_pool_ready", "Sessions ready now", registry=r)
        self.running = Gauge(f"{PREFIX}_turns_running", "Turns running now", registry=r)
        self.restarts = Gauge(f"{PREFIX}_runtime_restarts", "Runtime restarts so far", registry=r)

    def watch(self, service: Any) -> None:
        """Read the pool, the running turns and the restarts from ``service`` at each scrape."""
        self.pool_size.set_function(lambda: _or_zero(lambda: service.pool.size))
        self.pool_ready.set_function(lambda: _or_zero(lambda: len(service.pool.ready_ids())))
        self.running.set_function(lambda: _or_zero(service.running))
        self.restarts.set_function(lambda: service.restarts)

    def error(self, code: str) -> None:
        """Count one error answered with ``code``."""
        self.errors.labels(code if _CODE.fullmatch(code) else "other").inc()

    def turn_ended(self, error: str) -> None:
        """Count one turn, ``ok`` or its error code."""
        outcome = error or "ok"
        self.turns.labels(outcome if _CODE.fullmatch(outcome) else "other").inc()

    def text(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def mount(
        self, app: Any, operator_token: Callable[[], str], user_of: Callable[[str], Any]
    ) -> None:
        """Serve ``/metrics`` on ``app`` to the operator's bearer token; count every request.

        Anyone else gets what an unknown route gives: 401 without a user's token, 404 with one.
        """

        @app.get("/metrics", include_in_schema=False)
        async def metrics(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            if _is_operator(header, operator_token()):
                return Response(self.text(), media_type=CONTENT_TYPE_LATEST)
            scheme, _, token = header.partition(" ")
            user = None
            with contextlib.suppress(Exception):  # a database that does not answer: a stranger
                user = await user_of(token.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                body = {"error": "unauthorized", "message": UNAUTHORIZED}
                return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})
            return JSONResponse({"error": "not_found", "message": "no route '/metrics'"}, 404)

        app.add_middleware(CountRequests, metrics=self, routes=lambda: app.routes)


def _is_operator(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _or_zero(read: Callable[[], Any]) -> float:
    try:
        return float(read())
    except Exception:  # not started yet, or stopping
        return 0.0


class CountRequests:
    """Time each request under its route template (``/conversations/{conversation_id}/messages``,
    never the path with its ids), count the error codes of JSON error bodies, and the open SSE
    streams."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], list[Any]]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    def _template(self, scope: Scope) -> str:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "unmatched")
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, route = time.perf_counter(), self._template(scope)
        state: dict[str, Any] = {"status": 500, "stream": False, "error": None}

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                kind = dict(message.get("headers", [])).get(b"content-type", b"")
                if kind.startswith(b"text/event-stream"):
                    state["stream"] = True
                    self.metrics.streams.inc()
                elif message["status"] >= 400 and kind.startswith(b"application/json"):
                    state["error"] = b""
            elif message["type"] == "http.response.body" and state["error"] is not None:
                state["error"] += message.get("body", b"")[:4096]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            if state["stream"]:
                self.metrics.streams.dec()
            if state["error"] is not None:
                self.metrics.error(_code_of(state["error"]))
            elapsed = time.perf_counter() - started
            labels = (scope.get("method", ""), route, str(state["status"]))
            self.metrics.latency.labels(*labels).observe(elapsed)


def _code_of(body: bytes) -> str:
    try:
        code = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        return "other"
    return code if isinstance(code, str) else "other"
