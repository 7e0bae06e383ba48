"""Measure what resuming a session and one turn cost, with a given way of keeping its files."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any


async def measure_session_costs(
    client: Any,
    session_id: str,
    options: dict[str, Any],
    rounds: int,
    timeout: float,
    calls: Counter[str] | None = None,
) -> dict[str, float]:
    """Create a session, then ``rounds`` times resume it and take one turn; return medians.

    Args:
        client: A started ``CopilotClient``.
        session_id: A new id for the measured session.
        options: Everything ``create_session``/``resume_session`` need (model, provider, where
            the files go).
        rounds: How many resume + turn rounds to time.
        timeout: Seconds one turn may take.
        calls: The provider's call counter, to report provider calls per turn.

    Returns:
        ``{"resume ms", "turn ms", "provider calls/turn"}`` (medians over the rounds).
    """
    first = await client.create_session(session_id=session_id, **options)
    await first.send_and_wait("Remember: the codename is WARM-UP-1.", timeout=timeout)
    await first.disconnect()
    resumes, turns, per_turn = [], [], []
    for index in range(rounds):
        started = time.perf_counter()
        session = await client.resume_session(session_id, **options)
        resumed = time.perf_counter()
        before = sum((calls or Counter()).values())
        await session.send_and_wait(f"Round {index + 1}: what is the codename?", timeout=timeout)
        turns.append((time.perf_counter() - resumed) * 1000)
        per_turn.append(sum((calls or Counter()).values()) - before)
        resumes.append((resumed - started) * 1000)
        await session.disconnect()
    calls_per_turn = statistics.median(per_turn)
    return {
        "resume ms": round(statistics.median(resumes), 1),
        "turn ms": round(statistics.median(turns), 1),
        "provider calls/turn": int(calls_per_turn) if calls_per_turn % 1 == 0 else calls_per_turn,
    }
