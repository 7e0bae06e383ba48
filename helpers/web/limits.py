"""What every request meets before the app reads its body: a limit on the time it may take to
arrive (408), the bearer token (401), then the body's size (413), as JSON."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

import h11
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("helpers.web")

PUBLIC = frozenset(
    {"/", "/health", "/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
) | {"/metrics"}  # the operator's token, checked by the route itself (helpers.ops.metrics)


class RequireToken:
    """401 for a request without a valid bearer token, before its body is read or validated.

    ``user_of`` maps a presented token to its user (``None``: unknown); the user found goes into
    ``scope["state"]["user"]`` for the route. Only ``PUBLIC`` paths are open to everyone.
    """

    def __init__(self, app: ASGIApp, user_of: Callable[[str | None], Any]) -> None:
        self.app, self.user_of = app, user_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        scheme, _, token = (
            dict(scope.get("headers") or []).get(b"authorization", b"").partition(b" ")
        )
        user = None
        if scheme.lower() == b"bearer" and token.strip():
            try:
                user = self.user_of(token.strip().decode("latin-1"))
                if inspect.isawaitable(user):  # a book kept in the database answers asynchronously
                    user = await user
            except Exception as exc:  # the database behind the book did not answer
                log.warning("token check failed: %s: %s", type(exc).__name__, exc)
                message = "the service's database did not answer: try again in a moment"
                await _reply(send, 503, "store_down", message, (b"retry-after", b"2"))
                return
        if user is None:
            message = "a valid bearer token is required (Authorization: Bearer …)"
            await _reply(send, 401, "unauthorized", message, (b"www-authenticate", b"Bearer"))
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse bodies larger than ``limit`` bytes: by ``Content-Length``, or while they stream."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reply(send, 400, "bad_request", "Content-Length is not a number")
                return
            if size > self.limit:
                await _reply(send, 413, "too_large", self._message(size))
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self._message(seen))
            return message

        await self.app(scope, limited, send)

    def _message(self, size: int) -> str:
        return f"the body is {size} bytes or more; the limit is {self.limit} bytes"


async def _reply(
    send: Send, status: int, code: str, message: str, *extra: tuple[bytes, bytes]
) -> None:
    body = json.dumps({"error": code, "message": message}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the body, if any, is left unread
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_COMPLETE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR, h11.SWITCHED_PROTOCOL)


class TimedArrival(H11Protocol):
    """uvicorn's h11 protocol with a limit on how long a request may take to arrive.

    uvicorn bounds only the idle time between requests (``timeout_keep_alive``); a client that
    sends half a request, or nothing, keeps its connection for ever. Here the clock starts when
    the connection opens or a request's first byte arrives, and stops once its headers and body
    are in; when ``arrival_s`` passes first, the caller gets 408 and the connection is closed.
    """

    arrival_s = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arrival: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._arrival is None and self.conn.their_state is h11.IDLE:
            self._arm()  # a new request begins on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state in _COMPLETE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        pending = self.conn.trailing_data[0]  # the next request, begun before this response
        if pending and not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._arrival = self.loop.call_later(self.arrival_s, self._too_slow)

    def _disarm(self) -> None:
        if self._arrival is not None:
            self._arrival.cancel()
            self._arrival = None

    def _too_slow(self) -> None:
        self._arrival = None
        if self.transport.is_closing() or self.conn.their_state in _COMPLETE:
            return
        waiting = self.cycle if self.conn.their_state is h11.SEND_BODY else None  # for the body
        if waiting is not None and not waiting.response_started:
            waiting.disconnected = True  # the app waiting for the body is told it is gone
            waiting.message_event.set()
        message = f"the request did not arrive within {self.arrival_s:g} s"
        body = json.dumps({"error": "request_timeout", "message": message}).encode()
        head = (
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        if waiting is None or not waiting.response_started:
            self.transport.write(head.encode() + body)
        self.transport.close()


def timed_arrival(seconds: float) -> type[TimedArrival]:
    """The protocol class for uvicorn's ``http=``, with ``seconds`` for a request to arrive."""
    return type("TimedArrival", (TimedArrival,), {"arrival_s": seconds})
