"""The service's metering (notebook 09): admission before a turn (budget, rate, load), a ledger
row per model call as the turn runs, reconciliation on resume, the tool policy's hooks.

``admitted(user)`` wraps the start of a turn in a route: it refuses before the runtime is asked,
and hands the budget's hold to the turn that ``_track`` registers next (same task, so a context
variable carries it), which gives it back when it ends. A turn's ledger writes are awaited (up to
``LEDGER_WAIT_S``) before its final event; one that did not land by then goes on being retried
from the background and the final event says ``"metered": false``: usage is never dropped
silently, and what a retry never writes, the next resume's reconciliation finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from copilot.session import CopilotSession

from helpers.errors import Refused, StoreDown
from helpers.web.budgets import Hold, admit, give_back, overloaded
from helpers.web.checks import Checks
from helpers.web.ledger import call_of, reconcile, record, usage_by_day
from helpers.web.policy import ToolPolicy, audit_of
from helpers.web.turns import Event, Turn

LEDGER_WAIT_S = 2.0  # how long a turn's final event waits for its ledger rows
RETRY_FOR_S = 60.0  # how long a ledger row that failed is retried from the background
RECONCILE_S = 3.0  # the longest reconciling a resumed conversation may add to its turn
log = logging.getLogger("helpers.web")
_HOLD: ContextVar[list[Hold | None] | None] = ContextVar("hold", default=None)
_background: set[asyncio.Task[Any]] = set()
Write = tuple["asyncio.Task[bool]", Callable[[], Awaitable[bool]]]  # a ledger write, and again


def _landed(task: asyncio.Task[bool]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


class Metering(Checks):
    """Admission, ledger, reconciliation and tool policy, over the service's database."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = ToolPolicy(lambda: self.store, lambda: self.settings.plans)
        self.unmetered = 0  # ledger rows that missed their turn's final event (retried after)
        self.reconciled = 0  # ledger rows added by reconciliation
        self._reconciled_at: dict[str, float] = {}  # conversation -> when (monotonic)

    @contextlib.asynccontextmanager
    async def admitted(self, user: str) -> AsyncIterator[None]:
        """Refuse ``user``'s turn now (``Refused``) unless load, rate and budget allow it."""
        s = self.settings
        if s.max_turns and self.running() >= s.max_turns:
            raise overloaded(self.running(), s.max_turns)
        if not s.metering or not (s.rate_turns or s.budget_tokens):
            yield
            return
        rate = (s.rate_turns, s.rate_window_s) if s.rate_turns else None
        budget = (s.budget_tokens, s.budget_period_s, s.budget_hold_tokens)
        try:
            hold = await admit(self.store, user, rate, budget if s.budget_tokens else None)
        except Refused:
            raise
        except Exception as exc:
            raise StoreDown(f"the database did not answer ({type(exc).__name__})") from exc
        box: list[Hold | None] = [hold]
        token = _HOLD.set(box)
        try:
            yield
        finally:
            _HOLD.reset(token)
            if box[0] is not None:  # no turn started: give the hold back now
                self._background(lambda: give_back(self.store, hold))

    def _track(self, turn: Turn, user: str = "") -> Turn:
        box = _HOLD.get()
        hold, box = (box[0], box) if box else (None, None)
        if box is not None:
            box[0] = None
        if self.settings.metering and user:
            writes: list[Write] = []
            turn.on_usage = lambda sid, event: writes.append(self._write(user, sid, event))
            turn.metering = lambda final: self._metered(writes, final)
        if hold is not None:
            turn.task.add_done_callback(
                lambda _: self._background(lambda: give_back(self.store, hold))
            )
        return super()._track(turn, user)

    def _write(self, user: str, session_id: str, event: Any) -> Write:
        call = call_of(event)

        def write() -> Awaitable[bool]:
            return record(self.store, user, session_id, call)

        return asyncio.ensure_future(write()), write

    async def _metered(self, writes: list[Write], final: Event) -> Event:
        """``final``, marked ``"metered": false`` when a ledger row is not written yet."""
        if not writes:
            return final
        await asyncio.wait([task for task, _ in writes], timeout=LEDGER_WAIT_S)
        missed = [again for task, again in writes if not _landed(task)]
        if not missed:
            return final
        self.unmetered += len(missed)
        log.warning("%d ledger rows not written in time: retrying them", len(missed))
        for again in missed:
            self._background(again)
        kind, data = final
        return kind, {**data, "metered": False}

    def _background(self, write: Callable[[], Awaitable[Any]]) -> None:
        async def retry() -> None:
            deadline = asyncio.get_running_loop().time() + RETRY_FOR_S
            while True:
                try:
                    await asyncio.wait_for(write(), 2.0)
                    return
                except Exception as exc:
                    if asyncio.get_running_loop().time() > deadline:
                        log.error("a usage write failed for good (%s)", type(exc).__name__)
                        return
                    await asyncio.sleep(0.25)

        task = asyncio.ensure_future(retry())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def after_resume(self, user: str, conversation: str, session: CopilotSession) -> None:
        """Reconcile the conversation's ledger with the runtime's totals, the first time this
        instance resumes it (after a crash elsewhere, or a restart), then at most every
        ``reconcile_every_s``: a ``getMetrics`` call and a sum on the path of the turn."""
        s = self.settings
        now = time.monotonic()
        if (
            not s.metering
            or now - self._reconciled_at.get(conversation, -1e18) < s.reconcile_every_s
        ):
            return
        self._reconciled_at[conversation] = now
        try:
            async with asyncio.timeout(RECONCILE_S):
                metrics = await session.rpc.usage.get_metrics()
                self.reconciled += await reconcile(self.store, user, conversation, metrics)
        except Exception as exc:  # the next resume tries again; the turn goes on
            log.warning("reconciling %s's usage failed: %r", conversation, exc)

    async def usage_of(self, user: str, conversation: str = "") -> list[dict[str, Any]]:
        """``user``'s usage per day (of one of their conversations: else ``NotYourSession``)."""
        if conversation:
            await self.check_owner(user, conversation)
        return await self._stored(usage_by_day(self.store, user, conversation))

    async def audit_of(self, user: str, conversation: str = "") -> list[dict[str, Any]]:
        """``user``'s tool calls, newest first (of one of their conversations)."""
        if conversation:
            await self.check_owner(user, conversation)
        return await self._stored(audit_of(self.store, user, conversation))

    def tool_hooks(self, user_of: Callable[[str], str | None]) -> dict[str, Any] | None:
        """The sessions' hooks: the plan's decision before each tool call, an audit row each."""
        return self.policy.hooks(user_of) if self.settings.metering else None
