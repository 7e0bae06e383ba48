"""A turn's outcome as the store holds it, and kept under an idempotency key for retries.

A turn reported failed may still have been stored with its reply (the runtime wrote it just before
a timeout, a lost lease or a database error): ``stored_reply`` reads the store back, so that what
the caller is told is the truth. A send may carry an ``Idempotency-Key``; its first outcome is kept
in the database (``web_idempotency``), so a retry with the same key gets that outcome replayed, or
waits for a run still going, and never runs the turn twice, across a restart too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from helpers.store.base import SessionStore
from helpers.store.schema import register_migration
from helpers.store.session_fs import stored_events

MAX_KEY_CHARS = 255
POLL_S = 0.1
# Version 3 of the schema: the outcome of each send that carried an Idempotency-Key.
IDEMPOTENCY_DDL = (
    "CREATE TABLE IF NOT EXISTS web_idempotency ("
    "user_id TEXT NOT NULL, conversation TEXT NOT NULL, idem_key TEXT NOT NULL, "
    "digest TEXT NOT NULL, state TEXT NOT NULL, holder TEXT NOT NULL, result TEXT, "
    "created DOUBLE PRECISION NOT NULL, PRIMARY KEY (user_id, conversation, idem_key))"
)
register_migration(3, "web service: idempotency keys", IDEMPOTENCY_DDL)
_KEYED = "WHERE user_id = ? AND conversation = ? AND idem_key = ?"


class KeyReused(ValueError):
    """The key was used before with another message: a client bug, answered 422."""


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a usable Idempotency-Key (``None``: it is)."""
    if not key or len(key) > MAX_KEY_CHARS:
        return f"an Idempotency-Key has 1 to {MAX_KEY_CHARS} characters"
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in key):
        return "an Idempotency-Key is printable ASCII without spaces or control characters"
    return None


async def stored_reply(
    store: SessionStore, conversation: str, text: str, message_id: str = "", since: float = 0.0
) -> str | None:
    """The reply stored after this turn's message, or ``None`` if no reply to it is stored.

    The message is found by its event id when the runtime sent one, else as the last user message
    with this text stored at or after ``since`` (a UNIX time).
    """
    events = await stored_events(store, conversation)
    start = None
    for i, event in enumerate(events):
        if event.get("type") != "user.message":
            continue
        if message_id and str(event.get("id", "")) == message_id:
            start = i
            break
        if not message_id and (event.get("data") or {}).get("content") == text:
            if _seconds(event.get("timestamp")) >= since:
                start = i
    if start is None:
        return None
    reply = None
    for event in events[start + 1 :]:
        if event.get("type") == "user.message":
            break
        if event.get("type") == "assistant.message" and (event.get("data") or {}).get("content"):
            reply = event["data"]["content"]
    return reply


def _seconds(stamp: Any) -> float:
    try:
        return datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        return 0.0


@dataclass
class Claim:
    """What a key's row said when a send came with it."""

    state: str  # "new" (this send runs the turn), "done"/"failed" (replay), "running" (wait)
    holder: str = ""
    since: float = 0.0  # when this claim's run began (UNIX time)
    events: list[tuple[str, dict[str, Any]]] | None = None
    taken_over: bool = False  # an earlier run failed or never finished: read the store back first
    first_since: float = 0.0  # when the key's first run began (what a read-back looks after)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def claim(
    store: SessionStore,
    user: str,
    conversation: str,
    key: str,
    text: str,
    stale_s: float,
    label: str = "",
) -> Claim:
    """Take ``key`` for this send, or say what its earlier send did (``KeyReused``: other text).

    A run that ended failed, or that has run longer than ``stale_s`` (its process is gone), is
    taken over by this send. ``label`` (the instance's name) starts the holder, so that a
    restarted instance can find the runs its previous process left (``orphan_claims_of``).
    """
    ident = (user, conversation, key)
    holder, now = f"{label}#{secrets.token_hex(8)}", time.time()
    _, added = await store.execute(
        "INSERT INTO web_idempotency (user_id, conversation, idem_key, digest, state, holder, "
        "created) VALUES (?, ?, ?, ?, 'running', ?, ?) ON CONFLICT DO NOTHING",
        (*ident, _digest(text), holder, now),
    )
    if added == 1:
        return Claim("new", holder, now)
    rows, _ = await store.execute(
        f"SELECT digest, state, holder, result, created FROM web_idempotency {_KEYED}", ident
    )
    if not rows:  # the conversation was deleted meanwhile
        return await claim(store, user, conversation, key, text, stale_s, label)
    digest, state, old, result, created = rows[0]
    if digest != _digest(text):
        raise KeyReused("this Idempotency-Key was used before with another message")
    stale = state == "orphaned" or (state == "running" and created < now - stale_s)
    if state == "done":
        return Claim(state, old, created, [tuple(e) for e in json.loads(result)])
    if state == "failed" or stale:
        _, taken = await store.execute(
            f"UPDATE web_idempotency SET state = 'running', holder = ?, created = ? {_KEYED} "
            "AND holder = ?",
            (holder, now, *ident, old),
        )
        if taken == 1:
            # A failed run may still have been stored (its error said "unknown"), and a stale
            # one may have been stored before its process died: either way, read back first.
            return Claim("new", holder, now, taken_over=True, first_since=created)
    return Claim("running", old, created)


async def record(
    store: SessionStore,
    user: str,
    conversation: str,
    key: str,
    holder: str,
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    """Keep the outcome of ``holder``'s run: ``done`` if it ended with the message, else failed."""
    state = "done" if events and events[-1][0] == "message" else "failed"
    await store.execute(
        f"UPDATE web_idempotency SET state = ?, result = ? {_KEYED} AND holder = ?",
        (state, json.dumps(events, ensure_ascii=False), user, conversation, key, holder),
    )


async def release(store: SessionStore, user: str, conversation: str, key: str, holder: str) -> None:
    """Give a claimed key back unused (the send was refused before its turn began)."""
    await store.execute(
        f"DELETE FROM web_idempotency {_KEYED} AND holder = ? AND state = 'running'",
        (user, conversation, key, holder),
    )


async def outcome(
    store: SessionStore, user: str, conversation: str, key: str, timeout_s: float
) -> list[tuple[str, dict[str, Any]]] | None:
    """Wait (up to ``timeout_s``) for a running send of ``key`` to end; return its events.

    ``None``: the run was orphaned meanwhile (its instance died): the caller takes the key over.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows, _ = await store.execute(
            f"SELECT state, result FROM web_idempotency {_KEYED}", (user, conversation, key)
        )
        if rows and rows[0][0] == "orphaned":
            return None
        if rows and rows[0][0] != "running" and rows[0][1]:
            return [tuple(e) for e in json.loads(rows[0][1])]  # type: ignore[misc]
        if not rows:
            break
        await asyncio.sleep(POLL_S)
    message = "the first send with this Idempotency-Key did not end in time: retry with the key"
    return [("error", {"error": "timeout", "message": message})]


async def orphan_claims_of(store: SessionStore, label: str) -> int:
    """Mark the runs still ``running`` under ``label`` as orphaned; return how many.

    For this instance's own label at start (its previous process is gone), and for a dead
    instance's (``instances.reap``): a retry of one of those sends, or one waiting for it, need
    not wait ``stale_s``; it reads the store back and takes the key over.
    """
    prefix = label + "#"
    _, changed = await store.execute(
        "UPDATE web_idempotency SET state = 'orphaned' WHERE state = 'running' "
        "AND substr(holder, 1, ?) = ?",
        (len(prefix), prefix),
    )
    return changed


async def forget(store: SessionStore, conversation: str) -> None:
    """Forget the keys of a deleted conversation."""
    await store.execute("DELETE FROM web_idempotency WHERE conversation = ?", (conversation,))
