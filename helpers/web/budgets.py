"""Fair use over time, kept in the database so that it holds on every instance that shares it:
a budget of tokens per user per period, a rate of turns per user (a token bucket), and the turns
an instance admits at once.

Why the database and not the ``limits`` library: ``limits`` keeps its counters in memory (one
instance only), Redis, Memcached or MongoDB. The service already has one shared database with
transactions (SQLite, or PostgreSQL for many instances); one conditional ``UPDATE`` there is an
atomic check-and-take on both engines, with no second server to run, secure and keep alive. The
cost is one short transaction per turn (measured in ``bench/web.py --metering``).

The rules:

- **Budget** (``budget_tokens`` per ``budget_period_s``, fixed windows from the epoch): a turn
  starts only if the tokens used in the window, plus those held by turns running, plus this
  turn's hold (``budget_hold_tokens``) fit. The hold is taken by one conditional ``UPDATE``, so of
  two turns at the edge at most one passes, whichever instance runs them. A turn that crosses the
  budget while it runs finishes; all of its usage is recorded (the overage); the next is refused
  until the window resets. A hold of an instance killed mid-turn stays until its window ends.
- **Rate** (``rate_turns`` per ``rate_window_s``): GCRA, a token bucket kept as one number per
  user, the "theoretical arrival time", moved by one conditional ``UPDATE``. A refused turn (for
  its budget too) has spent its place: hammering does not help.
- **Admission** (``max_turns``): turns at once on this instance, all users together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from helpers.errors import Refused
from helpers.store.base import SessionStore, Statement
from helpers.store.schema import register_migration
from helpers.web.ledger import used_since

register_migration(
    7,
    "web service: budgets and rates per user",
    """CREATE TABLE IF NOT EXISTS usage_budget (
        owner TEXT NOT NULL,
        window_start DOUBLE PRECISION NOT NULL,
        held BIGINT NOT NULL,
        PRIMARY KEY (owner, window_start))""",
    """CREATE TABLE IF NOT EXISTS usage_rate (
        owner TEXT PRIMARY KEY,
        tat DOUBLE PRECISION NOT NULL)""",
)

TAKE_HOLD = (
    "UPDATE usage_budget SET held = held + ? WHERE owner = ? AND window_start = ? AND held + ? + "
    "(SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM usage_ledger "
    "WHERE owner = ? AND at >= ?) <= ?"
)
TAKE_TURN = (
    "UPDATE usage_rate SET tat = (CASE WHEN tat > ? THEN tat ELSE ? END) + ? "
    "WHERE owner = ? AND tat - ? <= ?"
)


@dataclass(frozen=True)
class Hold:
    """Tokens held for one running turn in one budget window."""

    user: str
    window_start: float
    tokens: int


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _hold_statements(user: str, start: float, limit: int, hold: int) -> list[Statement]:
    return [
        (
            "INSERT INTO usage_budget (owner, window_start, held) VALUES (?, ?, 0) "
            "ON CONFLICT (owner, window_start) DO NOTHING",
            (user, start),
        ),
        (TAKE_HOLD, (hold, user, start, hold, user, start, limit)),
    ]


def _turn_statements(user: str, now: float, turns: int, window_s: float) -> list[Statement]:
    interval, tolerance = window_s / turns, window_s - window_s / turns
    return [
        (
            "INSERT INTO usage_rate (owner, tat) VALUES (?, 0) ON CONFLICT (owner) DO NOTHING",
            (user,),
        ),
        (TAKE_TURN, (now, now, interval, user, now, tolerance)),
    ]


async def admit(
    store: SessionStore,
    user: str,
    rate: tuple[int, float] | None,
    budget: tuple[int, float, int] | None,
    now: float = 0.0,
) -> Hold | None:
    """Take one turn of ``rate`` (turns, window) and a hold of ``budget`` (tokens, period, hold)
    in one transaction; return the hold, or raise ``Refused`` (a refused budget spends the turn).
    """
    now = now or time.time()
    start = now - now % budget[1] if budget else 0.0
    statements = _turn_statements(user, now, *rate) if rate else []
    if budget:
        statements += _hold_statements(user, start, budget[0], budget[2])
    counts = await store.transaction(statements)
    held = Hold(user, start, budget[2]) if budget and counts[-1] == 1 else None
    if rate and counts[1] != 1:
        if held is not None:
            await give_back(store, held)
        raise await _rate_refusal(store, user, now, *rate)
    if budget and held is None:
        raise await _budget_refusal(store, user, now, start, budget[0], budget[1])
    return held


async def take_hold(
    store: SessionStore, user: str, limit: int, period_s: float, hold: int, now: float = 0.0
) -> Hold:
    """Hold ``hold`` tokens of ``user``'s budget for a turn, or raise ``Refused``."""
    held = await admit(store, user, None, (limit, period_s, hold), now)
    assert held is not None
    return held


async def _budget_refusal(
    store: SessionStore, user: str, now: float, start: float, limit: int, period_s: float
) -> Refused:
    used = await used_since(store, user, start)
    resets = start + period_s
    return Refused(
        "budget_exhausted",
        f"your budget of {limit} tokens per {period_s:g} s is used up ({used} used, or held by "
        f"turns running); it resets at {_when(resets)}",
        max(resets - now, 0.0),
        {"budget_tokens": limit, "period_s": period_s, "used": used, "resets_at": _when(resets)},
    )


async def give_back(store: SessionStore, hold: Hold) -> None:
    """Give a turn's hold back (its usage is in the ledger by now)."""
    await store.execute(
        "UPDATE usage_budget SET held = held - ? WHERE owner = ? AND window_start = ? "
        "AND held >= ?",
        (hold.tokens, hold.user, hold.window_start, hold.tokens),
    )


async def take_turn(
    store: SessionStore, user: str, turns: int, window_s: float, now: float = 0.0
) -> None:
    """Take one of ``user``'s ``turns`` per ``window_s`` (GCRA), or raise ``Refused``."""
    await admit(store, user, (turns, window_s), None, now)


async def _rate_refusal(
    store: SessionStore, user: str, now: float, turns: int, window_s: float
) -> Refused:
    tolerance = window_s - window_s / turns
    rows, _ = await store.execute("SELECT tat FROM usage_rate WHERE owner = ?", (user,))
    wait = max(float(rows[0][0]) - tolerance - now, 0.0) if rows else window_s / turns
    return Refused(
        "rate_limited",
        f"at most {turns} turns per {window_s:g} s: try again in {wait:.1f} s",
        wait,
        {"turns": turns, "window_s": window_s},
    )


def overloaded(running: int, limit: int) -> Refused:
    """The refusal of a turn when the instance runs ``limit`` turns already."""
    return Refused(
        "overloaded",
        f"this instance runs {running} turns, its limit: try again in a moment",
        1.0,
        {"max_turns": limit},
    )
