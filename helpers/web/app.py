"""The HTTP layer: FastAPI routes over ``Service``, bearer tokens, JSON errors, replies as SSE.

Every refusal happens here, before the service asks the runtime anything: no token or a wrong one
(401), another user's conversation or an unknown one (404, the same body), too many turns at once
(429 with ``Retry-After``), an oversized body (413), a malformed one (422), shutting down or the
runtime or the database down (503).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException

from helpers.errors import (
    Draining,
    LeaseBusy,
    NotYourSession,
    Refused,
    RuntimeDown,
    StoreDown,
    TooManyTurns,
    VfsError,
)
from helpers.ops.tracing import trace_id
from helpers.web.limits import BodyLimit, RequireToken
from helpers.web.outcomes import MAX_KEY_CHARS, KeyReused
from helpers.web.service import Service
from helpers.web.turns import PUBLIC_MESSAGES, Event, log

PAGE = Path(__file__).with_name("page.html")
MAX_MESSAGE_CHARS = 16_000
MAX_FILE_CHARS = 64 * 1024
RETRY_AFTER_S = 1


class _AnyPath(Convertor[str]):
    """Starlette's ``path`` convertor is ``.*``, which stops at a newline: ``PUT /files/a%0Ab``
    would miss the route and answer 404. This one takes every character, so the file system
    itself refuses a path with a control character, with its own message (422)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())


class ErrorBody(BaseModel):
    """Every error: a short code and a sentence saying what was wrong."""

    error: str
    message: str


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)

    @field_validator("text")
    @classmethod
    def visible(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("the message is empty")
        if any(ord(ch) < 32 and ch not in "\n\t" for ch in text):
            raise ValueError("the message contains control characters")
        return text


class FileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str = Field(max_length=MAX_FILE_CHARS)


class Conversation(BaseModel):
    id: str


class Conversations(BaseModel):
    conversations: list[Conversation]


class ChatMessage(BaseModel):
    role: str
    text: str


class History(BaseModel):
    id: str
    messages: list[ChatMessage]


class FileInfo(BaseModel):
    path: str
    bytes: int


class Files(BaseModel):
    files: list[FileInfo]


class Caller(BaseModel):
    user: str


class Status(BaseModel):
    status: str


class Aborted(BaseModel):
    running: bool = Field(description="whether a turn of the conversation was running")


class UsageDay(BaseModel):
    day: str
    calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost: float | None


class UsageDays(BaseModel):
    days: list[UsageDay]


class AuditRow(BaseModel):
    at: float
    conversation: str
    tool: str
    arguments: str
    outcome: str
    reason: str


class AuditRows(BaseModel):
    calls: list[AuditRow]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


SSE_DOC = {
    200: {
        "description": "Server-Sent Events: `delta` (text as it arrives), then `message` (the "
        "whole reply; `stored_after_error` names the error of a turn the store kept anyway) or "
        "`error` (what went wrong; `stored`: whether the store holds the turn, null if unknown). "
        "With an `Idempotency-Key` used before, the first send's events replayed",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": {"type": "string", "enum": ["delta", "message", "error"]},
                        "data": {
                            "type": "string",
                            "description": 'JSON: {"text": ...} for delta and message '
                            '(plus "stored_after_error"), {"error": code, "message": ..., '
                            '"stored": false or null} for error',
                        },
                    },
                }
            }
        },
    }
}
TURN_ERRORS = _errors(401, 404, 413, 422, 429, 503)
bearer = HTTPBearer(auto_error=False, description="A token the application issued to you")


async def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The user whose token came with the request (checked by ``RequireToken``, before the body)."""
    user = getattr(request.state, "user", None)
    if user is None:
        raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer …)")
    return user


User = Annotated[str, Depends(caller)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_CHARS,
        pattern=r"^[!-~]+$",
        description="Your id for this send (printable ASCII): a retry with it runs no new turn",
    ),
]


def create_app(service: Service) -> FastAPI:
    """The app serving ``service``; the page at ``/``, the OpenAPI schema at ``/openapi.json``."""
    app = FastAPI(
        title="Copilot SDK tutorial: a web backend",
        version="1.0",
        summary="Conversations and asks over one shared Copilot runtime, replies streamed as SSE",
    )
    app.add_middleware(BodyLimit, limit=service.settings.max_body_bytes)
    app.add_middleware(RequireToken, user_of=service.tokens.user_of)  # outermost: 401 first
    # Around those: a span per request and its X-Trace-Id, then the operator's /metrics.
    service.tracing.instrument(app)
    service.metrics.mount(app, lambda: service.settings.operator_token, service.tokens.user_of)
    app.state.service = service
    _handlers(app)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/health", response_model=Status)
    async def health() -> Status:
        """Liveness: the process answers HTTP."""
        return Status(status="ok")

    @app.get("/whoami", response_model=Caller, responses=_errors(401))
    async def whoami(user: User) -> Caller:
        """Who the token belongs to (what the page shows after sign-in)."""
        return Caller(user=user)

    @app.get("/ready", response_model=Status, responses=_errors(503))
    async def ready() -> Status:
        """Readiness: fails while draining, or while the runtime or the database is down."""
        reason = await service.ready()
        if reason is not None:
            log.warning("not ready: %s", reason)  # the details (addresses, paths) stay here
            raise _Unavailable("not_ready", f"not ready: {_cause(reason)}")
        return Status(status="ready")

    @app.post(
        "/conversations", status_code=201, response_model=Conversation, responses=_errors(401, 503)
    )
    async def create(user: User) -> Conversation:
        """Start a conversation: the server makes its id and records you as its owner."""
        return Conversation(id=await service.create_conversation(user))

    @app.get("/conversations", response_model=Conversations, responses=_errors(401))
    async def mine(user: User) -> Conversations:
        """Your conversations, oldest first (nobody else's)."""
        ids = await service.conversations(user)
        return Conversations(conversations=[Conversation(id=i) for i in ids])

    @app.post("/conversations/{conversation_id}/messages", responses={**SSE_DOC, **TURN_ERRORS})
    async def send(
        conversation_id: str, body: MessageIn, user: User, idempotency_key: IdempotencyKey = None
    ) -> EventSourceResponse:
        """Send a message; the reply streams back as it is written.

        With an ``Idempotency-Key``, a retry gets the first send's outcome replayed (or waits for
        it) and the turn runs once; a key whose first send failed (nothing stored) runs again.
        """
        await service.check_owner(user, conversation_id)
        await service.check_store()
        async with service.admitted(user):  # budget, rate, load: refused before the runtime
            events = await service.send_once(user, conversation_id, body.text, idempotency_key)
        return _stream(events, service)

    @app.get(
        "/conversations/{conversation_id}/messages",
        response_model=History,
        responses=_errors(401, 404, 422, 503),
    )
    async def history(conversation_id: str, user: User) -> History:
        """The conversation so far, read from the session's own events."""
        messages = await service.history(user, conversation_id)
        return History(id=conversation_id, messages=[ChatMessage(**m) for m in messages])

    @app.delete(
        "/conversations/{conversation_id}",
        status_code=204,
        responses=_errors(401, 404, 422, 503),
    )
    async def delete(conversation_id: str, user: User) -> Response:
        """Delete the conversation for good; a turn of it running anywhere is stopped first."""
        await service.delete(user, conversation_id)
        return Response(status_code=204)

    @app.post(
        "/conversations/{conversation_id}/abort",
        status_code=202,
        response_model=Aborted,
        responses=_errors(401, 404, 422, 503),
    )
    async def abort(conversation_id: str, user: User) -> Aborted:
        """Stop the conversation's running turn, on whichever instance runs it.

        Answers 202 at once: `running` says whether a turn was found running (then its stream
        ends with the error `aborted`, and its lease is given back, within a moment); `false`:
        none was (a send still waiting to start is not stopped).
        """
        return Aborted(running=await service.abort(user, conversation_id))

    @app.post("/ask", responses={**SSE_DOC, **_errors(401, 413, 422, 429, 503)})
    async def ask(body: MessageIn, user: User) -> EventSourceResponse:
        """A one-off question with your files (three file tools); no session is kept after."""
        async with service.admitted(user):
            service.begin(user)
            turn = service.ask(user, body.text)
        return _stream(turn.events(), service)

    @app.get("/files", response_model=Files, responses=_errors(401, 503))
    async def files(user: User) -> Files:
        """Your files, kept by the application."""
        stored = await service.files_of(user).snapshot()
        return Files(
            files=[FileInfo(path=p, bytes=len(t.encode())) for p, t in sorted(stored.items())]
        )

    @app.put(
        "/files/{path:anypath}", response_model=FileInfo, responses=_errors(401, 413, 422, 503)
    )
    async def put_file(path: str, body: FileIn, user: User) -> FileInfo:
        """Create or replace one of your files."""
        await service.files_of(user).write(path, body.content)
        return FileInfo(path=path, bytes=len(body.content.encode()))

    _usage_routes(app, service)
    return app


def _usage_routes(app: FastAPI, service: Service) -> None:
    @app.get("/usage", response_model=UsageDays, responses=_errors(401, 503))
    async def usage(user: User) -> UsageDays:
        """Your usage per day (UTC), from the ledger: one row per model call behind it."""
        return UsageDays(days=await service.usage_of(user))

    @app.get(
        "/conversations/{conversation_id}/usage",
        response_model=UsageDays,
        responses=_errors(401, 404, 503),
    )
    async def conversation_usage(conversation_id: str, user: User) -> UsageDays:
        """One of your conversations' usage per day (another's: 404, as an unknown one)."""
        return UsageDays(days=await service.usage_of(user, conversation_id))

    @app.get("/audit", response_model=AuditRows, responses=_errors(401, 503))
    async def audit(user: User) -> AuditRows:
        """Your tool calls, newest first: tool, arguments (secrets redacted), outcome."""
        return AuditRows(calls=await service.audit_of(user))

    @app.get(
        "/conversations/{conversation_id}/audit",
        response_model=AuditRows,
        responses=_errors(401, 404, 503),
    )
    async def conversation_audit(conversation_id: str, user: User) -> AuditRows:
        """One of your conversations' tool calls (another's: 404, as an unknown one)."""
        return AuditRows(calls=await service.audit_of(user, conversation_id))


def _stream(turn: AsyncIterator[Event], service: Service) -> EventSourceResponse:
    traced = trace_id()  # an error event names its trace, so a complaint leads to it

    async def events() -> AsyncIterator[ServerSentEvent]:
        async for kind, data in turn:
            if kind == "error":
                service.metrics.error(data.get("error", ""))
                data = {**data, "trace_id": traced} if traced else data
            yield ServerSentEvent(event=kind, data=json.dumps(data, ensure_ascii=False))
            # Queued deltas would go out in one burst that never yields to the loop, so a peer
            # that hung up is noticed only after all of them (each write to its closed socket
            # logging "socket.send() raised exception."): yield once per event.
            await asyncio.sleep(0)

    return EventSourceResponse(events(), ping=15, send_timeout=30)


def _cause(reason: str) -> str:
    """``ready()``'s reason in words that name no address, path or user."""
    for word, public in (("draining", "draining"), ("database", "store_down")):
        if word in reason:
            return PUBLIC_MESSAGES[public]
    return PUBLIC_MESSAGES["runtime_down"]


class _Unavailable(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _json(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        code = STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path!r}"
        if exc.status_code == 400 and "parsing the body" in message:
            return _json(422, "malformed", "the body is not valid JSON in UTF-8")
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path!r}"
        return _json(exc.status_code, code, message, **headers)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return _json(422, "malformed", "; ".join(parts) or "the request is malformed")

    @app.exception_handler(NotYourSession)
    async def not_found(request: Request, exc: NotYourSession) -> JSONResponse:
        conversation = request.path_params.get("conversation_id", "")
        return _json(404, "not_found", f"no conversation {conversation!r} among yours")

    @app.exception_handler(TooManyTurns)
    async def too_many(request: Request, exc: TooManyTurns) -> JSONResponse:
        return _json(429, "too_many_turns", str(exc), **{"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        status = 503 if exc.code == "overloaded" else 429
        body = {"error": exc.code, "message": str(exc), **exc.detail}
        wait = str(max(1, math.ceil(exc.retry_after_s)))
        return JSONResponse(body, status_code=status, headers={"Retry-After": wait})

    @app.exception_handler(VfsError)
    async def bad_file(request: Request, exc: VfsError) -> JSONResponse:
        return _json(422, "bad_file", str(exc))

    for kind, code in (
        (LeaseBusy, "busy"),
        (Draining, "draining"),
        (RuntimeDown, "runtime_down"),
        (StoreDown, "store_down"),
    ):

        def make(code: str):
            async def unavailable(request: Request, exc: Exception) -> JSONResponse:
                log.warning("%s: %s", code, exc)  # the details stay in the server's log
                message = PUBLIC_MESSAGES[code]
                return _json(503, code, message, **{"Retry-After": str(RETRY_AFTER_S)})

            return unavailable

        app.add_exception_handler(kind, make(code))

    @app.exception_handler(KeyReused)
    async def key_reused(request: Request, exc: KeyReused) -> JSONResponse:
        return _json(422, "idempotency_key_reused", str(exc))

    @app.exception_handler(_Unavailable)
    async def not_ready(request: Request, exc: _Unavailable) -> JSONResponse:
        return _json(503, exc.code, str(exc), **{"Retry-After": str(RETRY_AFTER_S)})
