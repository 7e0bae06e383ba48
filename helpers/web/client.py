"""A caller of the web backend over HTTP (httpx), as one user with one token: what notebook 07
and the tests use to talk to the service the way a browser or another backend would."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import aconnect_sse


@dataclass
class Reply:
    """What one streamed request gave: the status, every event, and how it ended."""

    status: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)
    trace_id: str = ""  # the response's X-Trace-Id ('' when the service traces nothing)

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    @property
    def text(self) -> str:
        """The whole message of the final event ('' when the stream ended otherwise)."""
        return next((d["text"] for k, d in reversed(self.events) if k == "message"), "")

    @property
    def streamed(self) -> str:
        """The deltas joined, in the order they came."""
        return "".join(d["text"] for k, d in self.events if k == "delta")

    @property
    def error(self) -> str:
        """The error code of the final event, of a refusal or of a cut connection, else ''."""
        if self.body.get("error"):
            return self.body["error"]
        return next((d["error"] for k, d in reversed(self.events) if k == "error"), "")

    @property
    def done(self) -> bool:
        return self.status == 200 and bool(self.events) and self.events[-1][0] == "message"


class Caller:
    """One user's HTTP client of the service (``token=None``: a caller without a token)."""

    def __init__(self, url: str, token: str | None, timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"Caller({self.http.base_url})"  # never the token

    async def create(self) -> str:
        response = await self.http.post("/conversations")
        response.raise_for_status()
        return response.json()["id"]

    async def mine(self) -> list[str]:
        response = await self.http.get("/conversations")
        response.raise_for_status()
        return [c["id"] for c in response.json()["conversations"]]

    async def history(self, conversation: str) -> list[dict[str, str]]:
        response = await self.http.get(f"/conversations/{conversation}/messages")
        response.raise_for_status()
        return response.json()["messages"]

    async def put_file(self, path: str, content: str) -> httpx.Response:
        return await self.http.put(f"/files/{path}", json={"content": content})

    async def send(
        self,
        conversation: str,
        text: str,
        on_delta: Callable[[str], None] | None = None,
        key: str | None = None,
    ) -> Reply:
        """Send a message; read the streamed reply to its end (``on_delta`` gets each piece).

        With ``key`` (an ``Idempotency-Key``), sending again with the same key runs no new turn.
        """
        path = f"/conversations/{conversation}/messages"
        return await self.stream(path, text, on_delta, key)

    async def ask(self, text: str, on_delta: Callable[[str], None] | None = None) -> Reply:
        """A short-lived ask with this user's files, streamed."""
        return await self.stream("/ask", text, on_delta)

    async def stream(
        self,
        path: str,
        text: str,
        on_delta: Callable[[str], None] | None = None,
        key: str | None = None,
    ) -> Reply:
        headers = {"Idempotency-Key": key} if key is not None else {}
        async with aconnect_sse(
            self.http, "POST", path, json={"text": text}, headers=headers
        ) as source:
            reply = Reply(source.response.status_code)
            reply.trace_id = source.response.headers.get("x-trace-id", "")
            if reply.status != 200:
                await source.response.aread()
                reply.body = source.response.json()
                return reply
            try:
                async for event in source.aiter_sse():
                    data = json.loads(event.data)
                    reply.events.append((event.event, data))
                    if event.event == "delta" and on_delta is not None:
                        on_delta(data["text"])
            except httpx.TransportError as exc:  # the server went away mid-stream
                reply.body = {"error": "connection_closed", "message": type(exc).__name__}
        return reply

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Caller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
