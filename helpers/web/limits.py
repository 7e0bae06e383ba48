"""What every request meets before the app reads its body: the bearer token (401), then the
body's size (413), as JSON."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PUBLIC = frozenset({"/", "/health", "/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect"})


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
            user = self.user_of(token.strip().decode("latin-1"))
            if inspect.isawaitable(user):  # a book kept in the database answers asynchronously
                user = await user
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
