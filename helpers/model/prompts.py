"""Reading a chat-completions request as the stand-in model does: the user texts without the
runtime's wrappers, facts to remember, questions about them, file tasks, and the tool calls made
since the latest user message. Pure functions of the request; nothing here answers or serves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_WRAPPER = re.compile(r"<(?P<tag>[a-zA-Z_][\w-]*)>.*?</(?P=tag)>", re.DOTALL)
_FILE_NAME = re.compile(
    r"(?:(?<=\s)|(?<=^)|(?<=[`(\[]))((?:[A-Za-z]:)?[\w./\\~-]*[\w-]\.[A-Za-z0-9]{1,8})(?![\w/\\])",
    re.M,
)
_QUOTED = re.compile(r"\"([^\"]*)\"|“([^”]*)”|'([^']+)'(?!\w)")


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400."""


def unwrap_user_text(text: str) -> str:
    """Strip the runtime's ``<tag>…</tag>`` wrappers (date/time, reminders) from a user message."""
    return _WRAPPER.sub("", text).strip()


def content_text(content: Any) -> str:
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


def keys_match(asked: str, known: str) -> bool:
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


def conversation(messages: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Return the unwrapped user texts and the index of the last user message."""
    user_texts: list[str] = []
    last_user = -1
    for index, message in enumerate(messages):
        if message.get("role") == "user":
            user_texts.append(unwrap_user_text(content_text(message.get("content"))))
            last_user = index
    return user_texts, last_user


def calls_since(messages: list[dict[str, Any]], start: int) -> tuple[int, list[tuple[str, str]]]:
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
            results.append((names.get(call_id, "tool"), content_text(message.get("content"))))
    return made, results
