"""Latency and throughput of a request function at a given concurrency, a table and a plot; and
a stopwatch of named laps (the cost of each step of one request, notebook 02)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

RequestFn = Callable[[int], Awaitable[object]]


@dataclass
class Result:
    """``count`` requests of one kind, ``level`` at a time."""

    label: str
    level: int
    latencies_ms: list[float] = field(repr=False)
    seconds: float

    @property
    def median(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def row(self) -> dict[str, object]:
        """One line of the table."""
        return {
            "request": self.label,
            "at once": self.level,
            "n": len(self.latencies_ms),
            "median ms": round(self.median),
            "p95 ms": round(self.p95),
            "requests/s": round(self.rps, 1),
        }


async def measure_requests(
    label: str,
    request: RequestFn,
    level: int,
    count: int,
    after: Callable[[], Awaitable[None]] | None = None,
) -> Result:
    """Run ``request(i)`` for ``i < count``, ``level`` at a time; time each one and the whole.

    ``after`` (for example waiting for background deletes) is awaited inside the timed span, so
    work a request leaves behind counts against the throughput.
    """
    gate = asyncio.Semaphore(level)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            start = time.perf_counter()
            await request(i)
            latencies.append((time.perf_counter() - start) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    if after is not None:
        await after()
    return Result(label, level, latencies, time.perf_counter() - started)


def ratio(results: list[Result], top: str, bottom: str, level: int, what: str) -> float:
    """``what`` ("median", "p95" or "rps") of ``top`` over ``bottom`` at ``level``."""
    pick = {(r.label, r.level): r for r in results}
    return getattr(pick[(top, level)], what) / getattr(pick[(bottom, level)], what)


def plot(results: list[Result], path: Path | None = None):  # -> matplotlib Figure
    """Median latency and throughput per request kind against concurrency; save to ``path``."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label in dict.fromkeys(r.label for r in results):
        mine = [r for r in results if r.label == label]
        levels = [r.level for r in mine]
        left.plot(levels, [r.median for r in mine], marker="o", label=label)
        right.plot(levels, [r.rps for r in mine], marker="o", label=label)
    for ax, title in ((left, "median latency (ms)"), (right, "throughput (requests/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.level for r in results}))
        ax.get_xaxis().set_major_formatter(ScalarFormatter())
        ax.set_xlabel("requests at once")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


class Stopwatch:
    """Named laps in milliseconds: ``with clock.lap("create"): ...``."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def lap(self, name: str) -> _Lap:
        return _Lap(self, name)


class _Lap:
    def __init__(self, clock: Stopwatch, name: str) -> None:
        self._clock, self._name = clock, name

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._clock.ms[self._name] = (time.perf_counter() - self._start) * 1000
