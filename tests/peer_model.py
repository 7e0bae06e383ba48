"""A second OpenAI-compatible model for the tests, written apart from helpers/model/standin.py.

The notebooks must hold on any model, not only on the stand-in they ship with. This peer answers
at once, in its own words, and uses tools its own way:

- it decides which tool to call from the tools' parameter schemas (a tool with a ``content``
  property writes, one with only a path reads, one without parameters lists), not from names;
- it asks for every tool it needs in **one** response (parallel tool calls), then answers from
  the results in the next request;
- its arguments are compact JSON with sorted keys;
- with ``"stream": true`` it sends each reply (text and tool calls) as **one** chunk, where the
  stand-in streams in pieces: so every notebook runs on both kinds of server;
- it answers "what is the X?" by scanning the earlier user messages of the request, newest first,
  for "X is ..." or "X: ...": it keeps nothing between requests;
- it ignores instructions about time ("Wait 3 seconds"): every answer is instant.

Run it on its own with ``python tests/peer_model.py [port]`` and point the ``byok`` backend at it:
``COPILOT_PROVIDER_BASE_URL=http://127.0.0.1:<port>/v1 COPILOT_MODEL=peer-1``.

It uses the standard library's HTTP server rather than FastAPI/uvicorn: it is a test fixture with
two routes that must start inside the pytest process in milliseconds, and the project pins no web
framework for the tests.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PEER_MODEL = "peer-1"
BODY_LIMIT = 4 * 1024 * 1024

# --- reading a request ---------------------------------------------------------------------------


def plain_text(content: Any) -> str:
    """The text of a message's ``content`` (a string, or a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return ""


_OPENING = re.compile(r"\s*<([A-Za-z][\w-]*)>")


def drop_wrappers(text: str) -> str:
    """Remove leading ``<tag>...</tag>`` blocks the runtime puts before the user's words."""
    while True:
        opened = _OPENING.match(text)
        if not opened:
            return text.strip()
        closing = text.find(f"</{opened.group(1)}>", opened.end())
        if closing < 0:
            return text.strip()
        text = text[closing + len(opened.group(1)) + 3 :]


@dataclass
class Turn:
    """One request, read: the current prompt, earlier prompts, and tool results since the prompt."""

    prompt: str
    earlier: list[str]
    results: list[tuple[str, str]]  # (tool name, result text) answered after the prompt
    tools: dict[str, dict[str, Any]]  # offered tool name -> its JSON schema


def read_turn(body: dict[str, Any]) -> Turn:
    """Split a chat-completions body into what the peer needs."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ValueError("no user message in 'messages'")
    last = users[-1]
    earlier = [drop_wrappers(plain_text(messages[i].get("content"))) for i in users[:-1]]
    names_by_id: dict[str, str] = {}
    results: list[tuple[str, str]] = []
    for message in messages[last + 1 :]:
        for call in message.get("tool_calls") or []:
            names_by_id[call.get("id", "")] = (call.get("function") or {}).get("name", "")
        if message.get("role") == "tool":
            name = names_by_id.get(message.get("tool_call_id", ""), "tool")
            results.append((name, plain_text(message.get("content"))))
    tools = {}
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name"):
            tools[function["name"]] = function.get("parameters") or {}
    prompt = drop_wrappers(plain_text(messages[last].get("content")))
    return Turn(prompt, earlier, results, tools)


# --- deciding ------------------------------------------------------------------------------------

_FILE = re.compile(r"(?<![\w/.-])((?:\.\./|[\w-]+/)*[\w-]+\.[A-Za-z0-9]{1,8})(?![\w/])")
_QUOTE = re.compile(r"\"(.+?)\"|\u201c(.+?)\u201d")
_WRITE = re.compile(r"\b(create|write|save|store|put)\b", re.I)
_READ = re.compile(r"\b(read|open|contents?|cat)\b", re.I)
_LIST = re.compile(r"\b(list|which files|what files|ls)\b", re.I)
_ASK = re.compile(
    r"\bwhat(?:'s| is| was| are)\s+(?:the|my|our)\s+([\w-]+(?:\s+[\w-]+)?)\s*\??", re.I
)


def _role_of(schema: dict[str, Any]) -> str:
    """What a tool does, judged from its parameters alone."""
    props = set((schema.get("properties") or {}).keys())
    if "content" in props:
        return "write"
    if "path" in props:
        return "read"
    if not props:
        return "list"
    return "other"


def plan_calls(turn: Turn) -> list[tuple[str, dict[str, Any]]]:
    """The tool calls the prompt asks for, all at once; empty if it asks for none we can make."""
    by_role: dict[str, str] = {}
    for name, schema in turn.tools.items():
        by_role.setdefault(_role_of(schema), name)
    text = turn.prompt
    files = _FILE.findall(_QUOTE.sub(" ", text))
    quoted = next((a or b for a, b in _QUOTE.findall(text)), None)
    calls: list[tuple[str, dict[str, Any]]] = []
    if _LIST.search(text) and "list" in by_role:
        calls.append((by_role["list"], {}))
    if _WRITE.search(text) and files and quoted is not None and "write" in by_role:
        calls.append((by_role["write"], {"path": files[0], "content": quoted}))
    elif _READ.search(text) and files and "read" in by_role:
        calls += [(by_role["read"], {"path": f}) for f in dict.fromkeys(files)]
    return calls


def recall(question: str, earlier: list[str]) -> str | None:
    """Find what an earlier message said the asked-about thing is, newest message first."""
    asked = _ASK.search(question)
    if not asked:
        return None
    key = asked.group(1).strip().lower()
    pattern = re.compile(
        rf"\b{re.escape(key)}\s*(?:is|was|=|:)\s*(.+?)\s*(?:[.!?;,](?:\s|$)|$)", re.I | re.S
    )
    for text in reversed(earlier):
        found = pattern.search(text)
        if found:
            return f"{key} is {found.group(1).strip(chr(34) + chr(0x201C) + chr(0x201D))}"
    return f"nothing earlier in this conversation says what the {key} is"


def summarise(results: list[tuple[str, str]]) -> str:
    """An answer built from tool results, quoting each one."""
    lines = []
    for name, text in results:
        shown = text.strip() or "(empty)"
        lines.append(f"- {name} returned: {shown}")
    return "I ran the tools you needed.\n" + "\n".join(lines)


def answer(turn: Turn) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """The peer's reply: (text, tool calls). Exactly one of the two is non-empty."""
    if turn.results:
        return summarise(turn.results), []
    calls = plan_calls(turn)
    if calls:
        return "", calls
    prompt = turn.prompt
    if _WRITE.search(prompt) and _FILE.search(prompt):
        return "I cannot touch files in this conversation: no file tool was offered to me.", []
    found = recall(prompt, turn.earlier)
    if found is not None:
        return f"From what you said before: the {found}.", []
    if re.match(r"\s*(please\s+)?remember\b", prompt, re.I):
        return "Understood, I will keep that in mind for this conversation.", []
    if re.match(r"\s*(hi|hello|hey)\b", prompt, re.I) or re.search(r"\bsay hello\b", prompt, re.I):
        return "Hi there.", []
    words = len(prompt.split())
    return f"I read your message ({words} words). Ask me about it any time.", []


# --- answering over HTTP -------------------------------------------------------------------------


@dataclass
class Reply:
    """A completion ready to send, as JSON or as SSE chunks."""

    text: str
    calls: list[tuple[str, dict[str, Any]]]
    prompt_chars: int
    ident: str = field(default_factory=lambda: "peer-" + secrets.token_hex(6))
    created: int = field(default_factory=lambda: int(time.time()))

    def call_entries(self) -> list[dict[str, Any]]:
        return [
            {
                "id": f"call-{n}-{secrets.token_hex(3)}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": json.dumps(args, separators=(",", ":"), sort_keys=True),
                },
            }
            for n, (name, args) in enumerate(self.calls, start=1)
        ]

    def usage(self) -> dict[str, int]:
        prompt = max(1, self.prompt_chars // 4)
        completion = max(1, len(self.text) // 4 + 8 * len(self.calls))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    @property
    def finish(self) -> str:
        return "tool_calls" if self.calls else "stop"

    def as_json(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.calls:
            message["tool_calls"] = self.call_entries()
        return {
            "id": self.ident,
            "object": "chat.completion",
            "created": self.created,
            "model": PEER_MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
            "usage": self.usage(),
        }

    def chunks(self, with_usage: bool) -> list[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": self.ident,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": PEER_MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        # The whole reply in ONE chunk (a valid server, and what a one-word answer is on any model):
        # the notebooks must not assume that a streamed reply comes in more than one piece.
        delta: dict[str, Any] = {"role": "assistant", "content": self.text}
        calls = self.call_entries()
        if calls:
            delta["tool_calls"] = [{"index": i, **entry} for i, entry in enumerate(calls)]
        out = [chunk(delta)]
        out.append(chunk({}, self.finish))
        if with_usage:
            out.append({**chunk({}), "choices": [], "usage": self.usage()})
        return out


def reply_to(body: dict[str, Any]) -> Reply:
    """Read a request body and decide the reply (raises ValueError on a malformed body)."""
    turn = read_turn(body)
    text, calls = answer(turn)
    return Reply(text, calls, prompt_chars=len(json.dumps(body.get("messages"))))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, status: int, text: str) -> None:
        self._json(status, {"error": {"message": text, "type": "invalid_request_error"}})

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": PEER_MODEL, "object": "model", "created": 0, "owned_by": "tests"}
            self._json(200, {"object": "list", "data": [model]})
        else:
            self._fail(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self.server.answered += 1  # type: ignore[attr-defined]
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._fail(404, f"no route {self.path}")
            return
        size = int(self.headers.get("Content-Length") or 0)
        if size <= 0 or size > BODY_LIMIT:
            self._fail(400 if size <= 0 else 413, "a JSON body of at most 4 MB is required")
            return
        try:
            body = json.loads(self.rfile.read(size))
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            reply = reply_to(body)
        except ValueError as exc:
            self._fail(400, str(exc))
            return
        if body.get("stream"):
            self._sse(reply, bool((body.get("stream_options") or {}).get("include_usage")))
        else:
            self._json(200, reply.as_json())

    def _sse(self, reply: Reply, with_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for item in reply.chunks(with_usage):
            self.wfile.write(f"data: {json.dumps(item)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class PeerModel:
    """The peer model on a loopback port, served from a daemon thread."""

    _ids = itertools.count(1)

    def __init__(self, port: int = 0) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.answered = 0  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"peer-model-{next(self._ids)}", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def answered(self) -> int:
        """How many POST requests reached the peer so far."""
        return self._httpd.answered  # type: ignore[attr-defined]

    def env(self) -> dict[str, str]:
        """The environment that makes the ``byok`` backend use this model."""
        return {
            "COPILOT_TUTORIAL_BACKEND": "byok",
            "COPILOT_PROVIDER_BASE_URL": self.base_url,
            "COPILOT_PROVIDER_TYPE": "openai",
            "COPILOT_MODEL": PEER_MODEL,
        }

    def start(self) -> PeerModel:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> PeerModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    with PeerModel(int(sys.argv[1]) if len(sys.argv) > 1 else 0) as peer:
        print(f"peer model on {peer.base_url} (model {PEER_MODEL}); Ctrl-C stops it", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
