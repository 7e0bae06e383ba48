"""What each user used: one ledger row per model call, written from the runtime's
``assistant.usage`` events, at most once per call (keyed by the call's id), and the tool audit.

The runtime meters nothing per user (its metrics carry no user or session), so metering per user
is the application's job. ``assistant.usage`` is emitted once per model call and never replayed on
a resume, so a call whose event reached no instance (one killed mid-turn) is found later by
``reconcile``: the runtime's own totals of the conversation (``session.usage.getMetrics``) against
the ledger's; the calls missing are added from the stored ``session.usage_record`` events, keyed by
the same call ids (so a late write of the same call cannot count twice), and any difference left
over is recorded as a ``difference`` row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from helpers.store.base import SessionStore
from helpers.store.schema import register_migration
from helpers.store.session_fs import stored_events

# Version 6: the usage ledger and the tool audit (version 7 is the budgets', in budgets.py).
register_migration(
    6,
    "web service: usage ledger, tool audit",
    """CREATE TABLE IF NOT EXISTS usage_ledger (
        call_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        conversation TEXT NOT NULL,
        model TEXT NOT NULL,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        cost DOUBLE PRECISION,
        source TEXT NOT NULL,
        day TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS usage_ledger_owner ON usage_ledger (owner, at)",
    "CREATE INDEX IF NOT EXISTS usage_ledger_conversation ON usage_ledger (conversation)",
    """CREATE TABLE IF NOT EXISTS tool_audit (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        conversation TEXT NOT NULL,
        tool TEXT NOT NULL,
        arguments TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS tool_audit_owner ON tool_audit (owner, at)",
)

INSERT = (
    "INSERT INTO usage_ledger (call_id, owner, conversation, model, input_tokens, output_tokens, "
    "cached_tokens, cost, source, day, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (call_id) DO NOTHING"
)


@dataclass(frozen=True)
class Call:
    """One model call as the ledger keeps it."""

    call_id: str
    model: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost: float | None
    at: float


def call_of(event: Any) -> Call:
    """The ledger's view of an ``assistant.usage`` event (its call id, else the event's id)."""
    data = event.data
    return Call(
        call_id=str(data.api_call_id or data.provider_call_id or event.id),
        model=str(data.model or ""),
        input_tokens=int(data.input_tokens or 0),
        output_tokens=int(data.output_tokens or 0),
        cached_tokens=int(data.cache_read_tokens or 0),
        cost=None if data.cost is None else float(data.cost),
        at=time.time(),
    )


def _call_of_record(record: dict[str, Any], at: float) -> Call | None:
    """The ledger's view of a stored ``session.usage_record`` event's usage."""
    usage = (record.get("data") or {}).get("usage") or {}
    call_id = usage.get("apiCallId") or (usage.get("accounting") or {}).get("usageId")
    if not call_id:
        return None
    return Call(
        str(call_id),
        str(usage.get("model") or ""),
        int(usage.get("inputTokens") or 0),
        int(usage.get("outputTokens") or 0),
        int(usage.get("cacheReadTokens") or 0),
        usage.get("cost"),
        at,
    )


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


async def record(
    store: SessionStore, user: str, conversation: str, call: Call, source: str = "call"
) -> bool:
    """Write one call's row unless its call id is in the ledger; return whether it was new."""
    _, changed = await store.execute(
        INSERT,
        (
            f"{conversation}:{call.call_id}",
            user,
            conversation,
            call.model,
            call.input_tokens,
            call.output_tokens,
            call.cached_tokens,
            call.cost,
            source,
            _day(call.at),
            call.at,
        ),
    )
    return changed == 1


async def totals_of(store: SessionStore, conversation: str) -> tuple[int, int, int]:
    """The ledger's (calls, input tokens, output tokens) of one conversation; a difference row
    counts its tokens, not as a call."""
    rows, _ = await store.execute(
        "SELECT COALESCE(SUM(CASE WHEN source = 'difference' THEN 0 ELSE 1 END), 0), "
        "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) "
        "FROM usage_ledger WHERE conversation = ?",
        (conversation,),
    )
    return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])


def runtime_totals(metrics: Any) -> tuple[int, int, int]:
    """(calls, input tokens, output tokens) of a ``session.usage.getMetrics`` result."""
    models = metrics.model_metrics.values()
    return (
        sum(m.requests.count for m in models),
        sum(m.usage.input_tokens for m in models),
        sum(m.usage.output_tokens for m in models),
    )


async def reconcile(store: SessionStore, user: str, conversation: str, metrics: Any) -> int:
    """Bring the conversation's ledger up to the runtime's totals; return the rows added.

    Call it while no turn of the conversation runs (the service does, under the turn's lease):
    a call still being written would otherwise count in the difference row too.
    """
    wanted = runtime_totals(metrics)
    if await totals_of(store, conversation) == wanted:
        return 0
    added = 0
    now = time.time()
    for event in await stored_events(store, conversation):
        if event.get("type") == "session.usage_record":
            call = _call_of_record(event, now)
            if call is not None and await record(store, user, conversation, call, "reconciled"):
                added += 1
    have = await totals_of(store, conversation)
    if have[1:] != wanted[1:] and (wanted[1] > have[1] or wanted[2] > have[2]):
        gap = Call(
            f"difference@{wanted[0]}",
            "(unattributed)",
            max(wanted[1] - have[1], 0),
            max(wanted[2] - have[2], 0),
            0,
            None,
            now,
        )
        added += await record(store, user, conversation, gap, "difference")
    return added


async def usage_by_day(
    store: SessionStore, user: str, conversation: str = ""
) -> list[dict[str, Any]]:
    """``user``'s totals per day (UTC), oldest first (of one ``conversation`` if given)."""
    rows, _ = await store.execute(
        "SELECT day, SUM(CASE WHEN source = 'difference' THEN 0 ELSE 1 END), "
        "SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(cost) "
        "FROM usage_ledger WHERE owner = ? AND (? = '' OR conversation = ?) "
        "GROUP BY day ORDER BY day",
        (user, conversation, conversation),
    )
    return [
        {
            "day": r[0],
            "calls": int(r[1]),
            "input_tokens": int(r[2]),
            "output_tokens": int(r[3]),
            "cached_tokens": int(r[4]),
            "cost": None if r[5] is None else float(r[5]),
        }
        for r in rows
    ]


async def used_since(store: SessionStore, user: str, since: float) -> int:
    """Tokens (input + output) ``user`` used since ``since``."""
    rows, _ = await store.execute(
        "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM usage_ledger "
        "WHERE owner = ? AND at >= ?",
        (user, since),
    )
    return int(rows[0][0])
