"""Who may call which tool, decided before the tool runs, and an audit row per tool call, with
the SDK's session hooks (``on_pre_tool_use``, ``on_post_tool_use``, ``on_post_tool_use_failure``).

A user's plan (``Settings.plans``, default ``"default"``) names the tools it may not call; the
runtime asks ``on_pre_tool_use`` before every call, and a ``deny`` there means the tool never
runs (the model is told why). Each call leaves one row in ``tool_audit``: who, which conversation,
which tool, its arguments with secrets redacted, and ``allowed``, ``denied`` or ``failed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from helpers.store.base import SessionStore

log = logging.getLogger("helpers.web")
DENIED_BY_PLAN = {"read-only": frozenset({"write_file"})}
SECRET_KEY = re.compile(r"token|secret|passw|api[_-]?key|authori[sz]ation|credential", re.I)
SECRET_VALUE = re.compile(
    r"(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{16,}"
    r"|Bearer\s+[A-Za-z0-9._~+/=-]{8,}|postgres(?:ql)?://[^\s:@/]+:[^\s@/]+@)"
)
MAX_ARGUMENT_CHARS = 500
REDACTED = "[redacted]"


def tool_name(name: str) -> str:
    """A tool's own name (``custom:write_file`` -> ``write_file``)."""
    return name.split(":", 1)[-1]


def redact(value: Any) -> Any:
    """``value`` with secrets replaced: under a secret-sounding key, or shaped like a token."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return SECRET_VALUE.sub(REDACTED, value)
    return value


def arguments_text(arguments: Any) -> str:
    """The arguments as the audit keeps them: redacted JSON, cut to ``MAX_ARGUMENT_CHARS``."""
    text = json.dumps(redact(arguments), ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= MAX_ARGUMENT_CHARS else text[:MAX_ARGUMENT_CHARS] + "…"


def decide(plan: str, tool: str) -> str | None:
    """Why ``plan`` may not call ``tool``, or ``None`` when it may."""
    if tool_name(tool) in DENIED_BY_PLAN.get(plan, frozenset()):
        return f"the {plan!r} plan does not allow {tool_name(tool)}"
    return None


class ToolPolicy:
    """The hooks of one service: the decision before each call, an audit row for each."""

    def __init__(
        self, store: Callable[[], SessionStore], plans: Callable[[], dict[str, str]]
    ) -> None:
        self._store, self._plans = store, plans  # both read at each call: settings may change
        self._open: dict[tuple[str, str, str], list[str]] = {}  # allowed calls awaiting their end
        self.pending: set[asyncio.Task[Any]] = set()

    def hooks(self, user_of: Callable[[str], str | None]) -> dict[str, Any]:
        """The ``hooks=`` of a session whose user ``user_of(session_id)`` names."""

        async def before(data: dict[str, Any], _: Any) -> dict[str, Any]:
            user = user_of(data.get("sessionId", "")) or ""
            plan = self._plans().get(user, "default")
            reason = decide(plan, data.get("toolName", "")) if user else "no user for this session"
            outcome = "denied" if reason else "allowed"
            audit_id = await self._audit(user, data, outcome, reason or "")
            if reason:
                return {"permissionDecision": "deny", "permissionDecisionReason": reason}
            self._open.setdefault(self._key(data), []).append(audit_id)
            return {"permissionDecision": "allow"}

        async def after(data: dict[str, Any], _: Any) -> None:
            self._end(data, None)

        async def failed(data: dict[str, Any], _: Any) -> None:
            self._end(data, str(data.get("error") or "the tool failed"))

        return {
            "on_pre_tool_use": before,
            "on_post_tool_use": after,
            "on_post_tool_use_failure": failed,
        }

    @staticmethod
    def _key(data: dict[str, Any]) -> tuple[str, str, str]:
        args = json.dumps(data.get("toolArgs"), sort_keys=True, default=str)
        return data.get("sessionId", ""), tool_name(data.get("toolName", "")), args

    def _end(self, data: dict[str, Any], error: str | None) -> None:
        waiting = self._open.get(self._key(data)) or []
        audit_id = waiting.pop(0) if waiting else ""
        if not waiting:
            self._open.pop(self._key(data), None)
        if error is not None and audit_id:
            sql = "UPDATE tool_audit SET outcome = 'failed', reason = ? WHERE id = ?"
            params = (redact(error)[:200], audit_id)
            self._later(lambda: self._store().execute(sql, params))

    async def _audit(self, user: str, data: dict[str, Any], outcome: str, reason: str) -> str:
        audit_id = f"{time.time():.6f}-{secrets.token_hex(4)}"
        row = (
            audit_id,
            user,
            data.get("sessionId", ""),
            tool_name(data.get("toolName", "")),
            arguments_text(data.get("toolArgs")),
            outcome,
            reason,
            time.time(),
        )
        sql = (
            "INSERT INTO tool_audit (id, owner, conversation, tool, arguments, outcome, reason, "
            "at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        try:  # a denial is written before the model hears of it; never blocks a call for long
            await asyncio.wait_for(self._store().execute(sql, row), 2.0)
        except Exception as exc:
            log.warning("audit row not written yet (%s): retrying", type(exc).__name__)
            self._later(lambda: self._store().execute(sql, row))
        return audit_id

    def _later(self, write: Callable[[], Any]) -> None:
        """Retry ``write`` from the background until the database takes it (about 30 s)."""

        async def retry() -> None:
            for _ in range(15):
                try:
                    await asyncio.wait_for(write(), 2.0)
                    return
                except Exception:
                    await asyncio.sleep(0.5)
            log.error("an audit row could not be written")

        task = asyncio.ensure_future(retry())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)


async def audit_of(
    store: SessionStore, user: str, conversation: str = "", limit: int = 200
) -> list[dict[str, Any]]:
    """``user``'s audit rows, newest first (of one ``conversation`` if given)."""
    rows, _ = await store.execute(
        "SELECT at, conversation, tool, arguments, outcome, reason FROM tool_audit "
        "WHERE owner = ? AND (? = '' OR conversation = ?) ORDER BY at DESC LIMIT ?",
        (user, conversation, conversation, limit),
    )
    keys = ("at", "conversation", "tool", "arguments", "outcome", "reason")
    return [dict(zip(keys, r, strict=True)) for r in rows]
