"""Composing the stand-in model's answer to one request, from the request alone: a fact noted, a
fact recalled, a tool call to make, a report of the tool results, or a fixed hint.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from helpers.model.prompts import (
    BadRequest,
    FileTask,
    calls_since,
    conversation,
    keys_match,
    parse_fact,
    parse_file_tasks,
    parse_question,
)

# "Wait 3 seconds, then ...": answer the rest after a pause (to show timeouts and abort).
_WAIT = re.compile(
    r"^\s*wait\s+(?P<seconds>\d+(?:\.\d+)?)\s*s(?:ec(?:ond)?s?)?\s*[,.;:]?\s*(?:then\s+)?(?P<rest>.*)$",
    re.I | re.S,
)
MAX_WAIT_S = 60.0


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


@dataclass
class Reply:
    """What the model says: text, or tool calls to make."""

    kind: str
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    delay_s: float = 0.0


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
    user_texts, last_user = conversation(messages)
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
            if keys_match(subject, key):
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
    made, results = calls_since(messages, last_user)
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
