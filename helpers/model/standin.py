"""A small, deterministic, stateless OpenAI-compatible model server for the notebooks.

It answers ``POST /v1/chat/completions`` (plain JSON or SSE streaming) and ``GET /v1/models``.
Every answer is computed from the request alone (:mod:`helpers.model.prompts` reads it,
:mod:`helpers.model.replies` composes the answer; this module serves HTTP): the server keeps no
conversation memory, so anything it "remembers" was sent to it by the Copilot runtime as part of
the session history.
"""

from __future__ import annotations

import collections
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from helpers.model.prompts import BadRequest, content_text, conversation
from helpers.model.replies import Reply, compose_reply

MODEL_ID = "stand-in"
LOG_LIMIT = 200
MAX_BODY = 8 * 1024 * 1024
POLL_S = 0.05  # how often the serving loop checks for stop(); the default 0.5 s delays each stop
ARGUMENT_PIECE = 24  # characters of a tool call's arguments per streamed chunk
ROUTES = {"GET": ("/v1/models", "/models"), "POST": ("/v1/chat/completions", "/chat/completions")}
MODELS = {
    "object": "list",
    "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "copilot-tutorial"}],
}


@dataclass
class RequestRecord:
    """One request as the stand-in saw it, for display in the notebooks."""

    number: int
    stream: bool
    user_messages: list[str]
    tool_names: list[str]
    tool_results: list[str]
    reply_kind: str
    reply_text: str


class StandInModel:
    """The stand-in model server, run on a background thread of the current process.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_limit: int = LOG_LIMIT) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._count = 0
        self.busy_seconds = 0.0  # wall time spent answering chat requests, body read to reply sent
        self.received_bytes = 0  # the chat requests' bodies, in bytes
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=log_limit)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ending in ``/v1``."""
        if self._server is None:
            raise RuntimeError("the stand-in model is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> StandInModel:
        """Start serving on a free port (or the one given) and return self."""
        if self._server is not None:
            return self
        self._server = _Server((self._host, self._port), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_S},
            name="stand-in-model",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> StandInModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, request: dict[str, Any], reply: Reply) -> None:
        """Keep what one request carried and what it got, numbered, in :attr:`requests`."""
        messages = request.get("messages", [])
        user_texts, _ = conversation(messages)
        with self._lock:
            self._count += 1
            self.requests.append(
                RequestRecord(
                    number=self._count,
                    stream=bool(request.get("stream")),
                    user_messages=user_texts,
                    tool_names=[
                        t.get("function", {}).get("name", "?") for t in request.get("tools") or []
                    ],
                    tool_results=[
                        content_text(m.get("content")) for m in messages if m.get("role") == "tool"
                    ],
                    reply_kind=reply.kind,
                    reply_text=reply.text,
                )
            )


class _Server(ThreadingHTTPServer):
    """The HTTP server of one :class:`StandInModel`; a client that hung up (the runtime aborting
    a turn) needs no traceback on stderr."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, model: StandInModel) -> None:
        self.model = model
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """One HTTP exchange: route it, read the JSON body, answer plain or streamed."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two sends; without this the body waits for the runtime's
    # delayed ACK of the headers (about 40 ms per model call), which no real model server has.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.rstrip("/") in ROUTES["GET"]:
            self._send_json(200, MODELS)
        else:
            self._error(404, f"no route for GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.rstrip("/") not in ROUTES["POST"]:
            self._error(404, f"no route for POST {self.path}")
            return
        started = time.perf_counter()
        try:
            self._answer()
        finally:
            model = self.server.model
            with model._lock:
                model.busy_seconds += time.perf_counter() - started

    def _answer(self) -> None:
        try:
            request = self._read_json()
            reply = compose_reply(request)
        except BadRequest as exc:
            self._error(400, str(exc))
            return
        self.server.model.record(request, reply)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if request.get("stream"):
            self._send_stream(chunks(request, reply))
        else:
            self._send_json(200, completion(request, reply))

    def _read_json(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest("bad Content-Length") from None
        if length <= 0 or length > MAX_BODY:
            raise BadRequest("request body missing or too large")
        body = self.rfile.read(length)
        with self.server.model._lock:
            self.server.model.received_bytes += len(body)
        try:
            request = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(request, dict):
            raise BadRequest("the body must be a JSON object")
        return request

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        error = {"message": message, "type": "invalid_request_error", "code": status}
        self._send_json(status, {"error": error})

    def _send_stream(self, events: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for event in events:
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def completion(request: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """The whole answer as one ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model") or MODEL_ID,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply)}],
        "usage": _usage(request, reply.text),
    }


def chunks(request: dict[str, Any], reply: Reply) -> Iterator[dict[str, Any]]:
    """The answer as ``chat.completion.chunk`` events: the role, the text word by word (or the
    tool calls in pieces), the finish reason, and the usage when the request asks for it."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.get("model") or MODEL_ID,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    yield chunk({"role": "assistant", "content": ""})
    if reply.tool_calls:
        yield from (chunk({"tool_calls": [piece]}) for piece in _tool_call_pieces(reply))
    else:
        yield from (chunk({"content": word}) for word in re.findall(r"\S+\s*|\s+", reply.text))
    yield chunk({}, _finish(reply))
    if (request.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": _usage(request, reply.text)}


def _tool_call_pieces(reply: Reply) -> Iterator[dict[str, Any]]:
    """Each tool call as a head (id, name) and then its arguments in short pieces."""
    for index, call in enumerate(reply.tool_calls):
        name, args = call["function"]["name"], call["function"]["arguments"]
        yield {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        for start in range(0, len(args), ARGUMENT_PIECE):
            piece = args[start : start + ARGUMENT_PIECE]
            yield {"index": index, "function": {"arguments": piece}}


def _finish(reply: Reply) -> str:
    return "tool_calls" if reply.tool_calls else "stop"


def _usage(request: dict[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(content_text(m.get("content")).split()) for m in request.get("messages", []))
    answer = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}


if __name__ == "__main__":
    # `python -m helpers.model.standin [--port N]`: serve, print the base URL, stop at stdin's end
    # (the parent closed it or exited) or Ctrl+C, so a parent's child never outlives it.
    import argparse

    parser = argparse.ArgumentParser(description="Serve the stand-in model on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    with StandInModel(port=parser.parse_args().port) as served:
        print(f"stand-in model on {served.base_url}", flush=True)
        try:
            sys.stdin.buffer.read()
        except KeyboardInterrupt:
            pass
