"""A small, deterministic, stateless OpenAI-compatible model server for the notebooks.

It answers ``POST /v1/chat/completions`` (plain JSON or SSE streaming) and
``GET /v1/models``. Every answer is computed from the request alone: the server
keeps no conversation memory, so anything it "remembers" was sent to it by the
Copilot runtime as part of the session history.
"""

from __future__ import annotations

import collections
import json
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_ID = "stand-in"
LOG_LIMIT = 200
MAX_BODY = 8 * 1024 * 1024

_WRAPPER = re.compile(r"<(?P<tag>[a-zA-Z_][\w-]*)>.*?</(?P=tag)>", re.DOTALL)
_FILE_NAME = re.compile(
    r"(?:(?<=\s)|(?<=^)|(?<=[`(\[]))((?:[A-Za-z]:)?[\w./\\~-]*[\w-]\.[A-Za-z0-9]{1,8})(?![\w/\\])",
    re.M,
)
_QUOTED = re.compile(r"\"([^\"]*)\"|“([^”]*)”|'([^']+)'(?!\w)")


def unwrap_user_text(text: str) -> str:
    """Strip the runtime's ``<tag>…</tag>`` wrappers (date/time, reminders) from a user message."""
    return _WRAPPER.sub("", text).strip()


def _content_text(content: Any) -> str:
    """Flatten an OpenAI message content (string or list of parts) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    raise BadRequest("message content must be a string or a list of parts")


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400."""


# ---------------------------------------------------------------------------
# Understanding the conversation
# ---------------------------------------------------------------------------

# "Wait 3 seconds, then ...": answer the rest after a pause (to show timeouts and abort).
_WAIT = re.compile(
    r"^\s*wait\s+(?P<seconds>\d+(?:\.\d+)?)\s*s(?:ec(?:ond)?s?)?\s*[,.;:]?\s*(?:then\s+)?(?P<rest>.*)$",
    re.I | re.S,
)
MAX_WAIT_S = 60.0

_FACT_PATTERNS = [
    # "remember: the codename is X", "remember that my favourite colour is blue"
    re.compile(r"^\s*(?:please\s+)?remember(?:\s+that)?\s*[:,-]?\s*(?P<fact>.+)$", re.I | re.S),
    # "my favourite colour is blue", "our project codename is X"
    re.compile(r"^\s*(?P<fact>(?:my|our)\s+[\w\s-]{1,40}?\s+(?:is|are)\s+.+)$", re.I | re.S),
]
_FACT_SPLIT = re.compile(
    r"^(?:(?:the|my|our|your)\s+)?(?P<key>[\w\s-]{1,60}?)\s+(?:is|are|=)\s+(?P<value>.+?)[\s.!]*$",
    re.I | re.S,
)
_QUESTION = re.compile(
    r"^\s*(?:(?:so|and|ok|okay)[,\s]+)?(?:what(?:'s| is| are| was)|which|tell me|"
    r"do you (?:know|remember)|"
    r"can you (?:tell|remind)|remind me)\b(?P<rest>.*)$",
    re.I | re.S,
)
_STOP_WORDS = {
    "the",
    "my",
    "our",
    "your",
    "a",
    "an",
    "of",
    "is",
    "are",
    "was",
    "what",
    "which",
    "me",
    "do",
    "you",
    "know",
    "remember",
    "tell",
    "remind",
    "can",
    "that",
    "this",
    "please",
    "about",
    "again",
    "there",
    "any",
    "so",
    "and",
    "ok",
    "okay",
    "it",
    "to",
    "we",
    "us",
    "i",
    "for",
    "from",
    "in",
    "on",
    "earlier",
    "before",
}


def _normalise_key(key: str) -> str:
    words = [w for w in re.findall(r"[a-z0-9]+", key.lower()) if w not in _STOP_WORDS]
    return " ".join(words)


def _stem(word: str) -> str:
    """A crude stem so that 'favorite'/'favourite' and plurals still match."""
    word = word.replace("our", "or")
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


def parse_fact(text: str) -> tuple[str, str] | None:
    """Return ``(key, value)`` if the text asks the model to remember a fact."""
    for pattern in _FACT_PATTERNS:
        match = pattern.match(text)
        if not match:
            continue
        fact = match.group("fact").strip()
        split = _FACT_SPLIT.match(fact)
        if split:
            key = _normalise_key(split.group("key"))
            value = split.group("value").strip().strip("\"'“”")
            if key and value:
                return key, value
        return _normalise_key(fact) or "note", fact.rstrip(". ")
    return None


def parse_question(text: str) -> str | None:
    """Return the normalised subject of a question about a fact, or None."""
    match = _QUESTION.match(text)
    if not match and not text.rstrip().endswith("?"):
        return None
    rest = match.group("rest") if match else text
    return _normalise_key(rest.rstrip("?. ")) or None


def _keys_match(asked: str, known: str) -> bool:
    asked_words = {_stem(w) for w in asked.split()}
    known_words = {_stem(w) for w in known.split()}
    return bool(asked_words & known_words)


@dataclass
class FileTask:
    """One file operation the user asked for, in order."""

    kind: str  # "write" | "list" | "read"
    path: str = ""
    content: str = ""


_WRITE_WORDS = re.compile(r"\b(create|write|save|make|add|put|store)\b", re.I)
_LIST_WORDS = re.compile(r"\b(list|show|which|what)\b[^.?!]*\bfiles?\b|\bls\b", re.I)
_READ_WORDS = re.compile(r"\b(read|open|show|cat|print|display|view|contents? of)\b", re.I)


def parse_file_tasks(text: str) -> list[FileTask]:
    """Split a request into write/list/read steps, in the order they were asked."""
    tasks: list[FileTask] = []
    # Quoted text is content, not instructions: hide it while splitting into clauses.
    quotes: list[str] = []

    def _stash(match: re.Match[str]) -> str:
        quotes.append(next(g for g in match.groups() if g is not None))
        return f"\x00{len(quotes) - 1}\x00"

    masked = _QUOTED.sub(_stash, text)
    clauses = re.split(
        r"(?:[.;!?]\s+|\n+|,?\s+(?:and\s+)?then\s+|,\s+and\s+|\s+and\s+(?=(?:list|read|show|open)\b))",
        masked,
    )
    for clause in clauses:
        if not clause.strip():
            continue
        names = _FILE_NAME.findall(re.sub(r"\x00\d+\x00", "", clause))
        stashed = [quotes[int(i)] for i in re.findall(r"\x00(\d+)\x00", clause)]
        if _WRITE_WORDS.search(clause) and names:
            content = stashed[0] if stashed else _unquoted_content(clause)
            tasks.append(FileTask("write", names[0], content))
        elif _LIST_WORDS.search(clause) and not names:
            tasks.append(FileTask("list"))
        elif _READ_WORDS.search(clause) and names:
            tasks.extend(FileTask("read", name) for name in names)
        elif _LIST_WORDS.search(clause):
            tasks.append(FileTask("list"))
    return tasks


def _unquoted_content(clause: str) -> str:
    match = re.search(
        r"\b(?:containing|with(?: the)? (?:text|content|contents|line))\s*:?\s*(.+)$",
        clause,
        re.I | re.S,
    )
    return match.group(1).strip() if match else ""


# ---------------------------------------------------------------------------
# Tools declared by the request
# ---------------------------------------------------------------------------


def _tool_for(kind: str, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Pick the declared function tool that fits a task kind, by its name."""
    words = {
        "write": ("write", "create", "save", "put"),
        "list": ("list", "ls"),
        "read": ("read", "cat", "open", "view"),
    }[kind]
    for tool in tools:
        name = tool.get("function", {}).get("name", "")
        if any(word in name.lower() for word in words):
            return tool
    return None


def _arguments_for(task: FileTask, tool: dict[str, Any]) -> dict[str, Any]:
    """Fill the tool's declared JSON-schema properties from the task."""
    props = tool.get("function", {}).get("parameters", {}).get("properties", {}) or {}
    args: dict[str, Any] = {}
    for prop in props:
        low = prop.lower()
        if any(w in low for w in ("path", "name", "file")):
            args[prop] = task.path
        elif any(w in low for w in ("content", "text", "body", "data")):
            args[prop] = task.content
    return args


# ---------------------------------------------------------------------------
# Composing the answer
# ---------------------------------------------------------------------------


@dataclass
class Reply:
    """What the model says: text, or tool calls to make."""

    kind: str
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    delay_s: float = 0.0


def _conversation(messages: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Return the unwrapped user texts and the index of the last user message."""
    user_texts: list[str] = []
    last_user = -1
    for index, message in enumerate(messages):
        if message.get("role") == "user":
            user_texts.append(unwrap_user_text(_content_text(message.get("content"))))
            last_user = index
    return user_texts, last_user


def _calls_since(messages: list[dict[str, Any]], start: int) -> tuple[int, list[tuple[str, str]]]:
    """Count tool calls made after ``start`` and collect (tool name, result text) pairs."""
    made = 0
    names: dict[str, str] = {}
    results: list[tuple[str, str]] = []
    for message in messages[start + 1 :]:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                made += 1
                names[call.get("id", "")] = call.get("function", {}).get("name", "tool")
        elif message.get("role") == "tool":
            call_id = message.get("tool_call_id", "")
            results.append((names.get(call_id, "tool"), _content_text(message.get("content"))))
    return made, results


def compose_reply(request: dict[str, Any]) -> Reply:
    """Decide the answer for one chat-completions request, from the request alone."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequest("every message needs a 'role'")
    tools = [
        t
        for t in request.get("tools") or []
        if isinstance(t, dict) and t.get("type", "function") == "function"
    ]
    user_texts, last_user = _conversation(messages)
    if not user_texts:
        return Reply("text", "Hello! Ask me something, or ask me to remember a fact.")
    wait = _WAIT.match(user_texts[-1])
    if wait:
        user_texts[-1] = wait["rest"] or "Hello"
        reply = _reply_to(user_texts, tools, messages, last_user)
        reply.delay_s = min(float(wait["seconds"]), MAX_WAIT_S)
        return reply
    return _reply_to(user_texts, tools, messages, last_user)


def _reply_to(
    user_texts: list[str],
    tools: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    last_user: int,
) -> Reply:
    """The answer to the latest user text, given the conversation and the tools offered."""
    latest = user_texts[-1]

    tasks = parse_file_tasks(latest)
    if tasks:
        return _file_reply(tasks, tools, messages, last_user)

    fact = parse_fact(latest)
    if fact:
        key, value = fact
        return Reply(
            "remember", f"Noted: the {key} is {value}. I will keep it in this conversation."
        )

    subject = parse_question(latest)
    if subject:
        known: list[tuple[str, str]] = [f for f in map(parse_fact, user_texts[:-1]) if f]
        for key, value in reversed(known):
            if _keys_match(subject, key):
                return Reply("recall", f"The {key} is {value}.")
        return Reply(
            "unknown", f"I don't have any information about the {subject} in this conversation."
        )

    return Reply(
        "default",
        "I'm the tutorial's stand-in model. I can remember facts you tell me "
        '("remember: the codename is X"), answer questions about them, and work with files '
        "when the session gives me file tools.",
    )


# How a tool result reads when the call did not do what was asked: our own refusals, the runtime's
# words for a raised exception, a denied permission, a built-in that got no arguments.
_FAILED = re.compile(
    r"^(?:Refused\b|No file named\b|Failed to execute\b|Permission denied\b|"
    r"The user rejected\b|Error\b|Tool execution failed\b)",
    re.I,
)


def _file_reply(
    tasks: list[FileTask],
    tools: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    last_user: int,
) -> Reply:
    made, results = _calls_since(messages, last_user)
    if made < len(tasks):
        task = tasks[made]
        tool = _tool_for(task.kind, tools)
        if tool is None:
            offered = ", ".join(t["function"].get("name", "?") for t in tools) or "none"
            return Reply(
                "no-tool",
                f"I can't {task.kind} files here: this session gives me no tool for that "
                f"(tools offered: {offered}).",
            )
        call = {
            "id": f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {
                "name": tool["function"]["name"],
                "arguments": json.dumps(_arguments_for(task, tool)),
            },
        }
        return Reply("tool-call", tool_calls=[call])
    lines = [f"- {name}: {text.strip()}" for name, text in results]
    failed = [name for name, text in results if _FAILED.match(text.strip())]
    if not failed:
        return Reply("tool-report", "Done. Here is what the tools returned:\n" + "\n".join(lines))
    summary = (
        "That did not work"
        if len(failed) == len(results)
        else f"Part of that did not work ({', '.join(failed)} failed)"
    )
    return Reply("tool-report", f"{summary}. Here is what the tools returned:\n" + "\n".join(lines))


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------


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


def _usage(request: dict[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(_content_text(m.get("content")).split()) for m in request.get("messages", []))
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _QuietServer(ThreadingHTTPServer):
    """A client that hung up (the runtime aborting a turn) needs no traceback on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class StandInModel:
    """The stand-in model server, run on a background thread of the current process.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_limit: int = LOG_LIMIT) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._count = 0
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=log_limit)
        self._server: ThreadingHTTPServer | None = None
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
        handler = _make_handler(self)
        self._server = _QuietServer((self._host, self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stand-in-model", daemon=True
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

    def clear_log(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    def _record(self, request: dict[str, Any], reply: Reply) -> None:
        user_texts, _ = _conversation(request.get("messages", []))
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
                        _content_text(m.get("content"))
                        for m in request.get("messages", [])
                        if m.get("role") == "tool"
                    ],
                    reply_kind=reply.kind,
                    reply_text=reply.text,
                )
            )


def _make_handler(model: StandInModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two sends; without this the body waits for the runtime's
        # delayed ACK of the headers (about 40 ms per model call), which no real model server has.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return

        def _send_json(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send_json(
                status,
                {"error": {"message": message, "type": "invalid_request_error", "code": status}},
            )

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send_json(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": MODEL_ID,
                                "object": "model",
                                "created": 0,
                                "owned_by": "copilot-tutorial",
                            }
                        ],
                    },
                )
            else:
                self._error(404, f"no route for GET {self.path}")

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route for POST {self.path}")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._error(400, "bad Content-Length")
                return
            if length <= 0 or length > MAX_BODY:
                self._error(400, "request body missing or too large")
                return
            try:
                request = json.loads(self.rfile.read(length))
                if not isinstance(request, dict):
                    raise BadRequest("the body must be a JSON object")
                reply = compose_reply(request)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._error(400, "the body is not valid JSON")
                return
            except BadRequest as exc:
                self._error(400, str(exc))
                return
            model._record(request, reply)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            if request.get("stream"):
                self._stream(request, reply)
            else:
                self._complete(request, reply)

        def _complete(self, request: dict[str, Any], reply: Reply) -> None:
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if reply.tool_calls:
                message["tool_calls"] = reply.tool_calls
            self._send_json(
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model") or MODEL_ID,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                        }
                    ],
                    "usage": _usage(request, reply.text),
                },
            )

        def _stream(self, request: dict[str, Any], reply: Reply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            base = {
                "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": request.get("model") or MODEL_ID,
            }

            def event(choices: list[dict[str, Any]], **extra: Any) -> None:
                self.wfile.write(
                    b"data: " + json.dumps({**base, "choices": choices, **extra}).encode() + b"\n\n"
                )

            event(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
            if reply.tool_calls:
                for index, call in enumerate(reply.tool_calls):
                    head = {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                    event([{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}])
                    args = call["function"]["arguments"]
                    for start in range(0, len(args), 24):
                        piece = {
                            "index": index,
                            "function": {"arguments": args[start : start + 24]},
                        }
                        event(
                            [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]
                        )
            else:
                for word in re.findall(r"\S+\s*|\s+", reply.text):
                    event([{"index": 0, "delta": {"content": word}, "finish_reason": None}])
            event(
                [
                    {
                        "index": 0,
                        "delta": {},
                        "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                    }
                ]
            )
            if (request.get("stream_options") or {}).get("include_usage"):
                event([], usage=_usage(request, reply.text))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler
