"""Benchmark the web backend: N users at once over HTTP against the same turns in-process.

    flock tmp/bench.lock .venv/bin/python bench/web.py                 # 1, 16, 64 users
    .venv/bin/python bench/web.py --users 1,4 --turns 1                # a quick look
    flock tmp/bench.lock .venv/bin/python bench/web.py --metering      # ledger+checks on vs off
    .venv/bin/python bench/web.py --traces file:tmp/bench-traces/web.jsonl --users 1,16

With ``--traces`` (off, file:PATH or otlp:URL) two services run side by side, one with tracing off
and one with it on, and the same HTTP turns go to each in turn, alternating over ``--rounds``: it
prints what tracing adds per turn (milliseconds, median and p95; the service's and the runtime's
CPU) at each number of users.

Prints one table (time to first token and to the whole reply, median and p95, turns per second,
errors, cross-user leaks) and the overhead of the HTTP layer against the issue's goals; writes a
plot to tmp/bench-web.png. The model is the local stand-in unless COPILOT_TUTORIAL_BACKEND says
otherwise, so on `local` the figures are the SDK, the runtime, the store and the web layer alone.
The HTTP callers run in a process of their own (``helpers.web.bench``), not on the server's loop.
"""

from __future__ import annotations

import argparse
import asyncio

from helpers.run import TMP, remove_dir, run_dir
from helpers.runtime.cpu import CpuSpan
from helpers.web import bench
from helpers.web.serve import start_web
from helpers.web.service import Settings


async def run(levels: tuple[int, ...], turns: int) -> list[bench.Point]:
    folder = run_dir("bench-web")
    settings = Settings(pool_size=1, turns_per_user=2, turn_timeout_s=120)
    web = await start_web(folder, settings)
    try:
        await bench.measure(web.service, web.url, "HTTP", 2, 1)  # warm both paths up
        await bench.measure(web.service, web.url, "in-process", 2, 1)
        return await bench.compare(web.service, web.url, levels, turns)
    finally:
        await web.stop(drain=False)
        remove_dir(folder)


async def run_metering(levels: tuple[int, ...], turns: int) -> list[bench.Metered]:
    folder = run_dir("bench-web")
    settings = Settings(pool_size=1, turns_per_user=2, turn_timeout_s=120)
    web = await start_web(folder, settings)
    try:
        await bench.measure(web.service, web.url, "HTTP", 2, 1)  # warm up
        for users in levels:
            median, p95 = await bench.metering_work(web.service, users)
            print(
                f"metering's own database work per turn at {users} users at once: "
                f"{median:.2f} ms median, {p95:.2f} ms p95 ({web.service.store.engine})"
            )
        return await bench.metering(web.service, web.url, levels, turns)
    finally:
        await web.stop(drain=False)
        remove_dir(folder)


def table(rows: list[dict[str, object]]) -> None:
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))


async def tracing_cost(
    levels: tuple[int, ...], turns: int, rounds: int, traces: str
) -> list[dict[str, object]]:
    """The same HTTP turns against a service with tracing off and one with ``traces``."""
    webs = {}
    folders = [run_dir("bench-web"), run_dir("bench-web")]
    try:
        for (name, target), folder in zip((("off", "off"), ("on", traces)), folders, strict=True):
            settings = Settings(pool_size=1, turns_per_user=2, turn_timeout_s=120, traces=target)
            webs[name] = await start_web(folder, settings)
            await bench.measure(webs[name].service, webs[name].url, "HTTP", 2, 1)  # warm up
        runs: dict[tuple[str, int], list[tuple[bench.Point, CpuSpan]]] = {}
        for n in range(rounds):
            for users in levels:
                for name in ("off", "on") if n % 2 == 0 else ("on", "off"):
                    service, url = webs[name].service, webs[name].url
                    cpu = CpuSpan(service.server.pid).start()
                    point = await bench.measure(service, url, "HTTP", users, turns)
                    runs.setdefault((name, users), []).append((point, cpu.stop()))
        return [_cost_row(users, runs[("off", users)], runs[("on", users)]) for users in levels]
    finally:
        for web in webs.values():
            await web.stop(drain=False)
        for folder in folders:
            remove_dir(folder)


def _cost_row(users: int, off: list, on: list) -> dict[str, object]:
    def merged(runs: list) -> tuple[bench.Point, float, float]:
        point = bench.Point("HTTP", users)
        for p, _ in runs:
            point.samples += p.samples
        turns = len(point.samples) or 1
        service_ms = 1000 * sum(c.client for _, c in runs) / turns
        return point, service_ms, 1000 * sum(c.runtime for _, c in runs) / turns

    (a, a_cpu, a_rt), (b, b_cpu, b_rt) = merged(off), merged(on)
    median = (a.quantile("last", 0.5), b.quantile("last", 0.5))
    p95 = (a.quantile("last", 0.95), b.quantile("last", 0.95))
    return {
        "users": users,
        "turns each": len(a.samples),
        "median ms off / on": f"{median[0]:.0f} / {median[1]:.0f}",
        "added median ms": round(median[1] - median[0], 1),
        "p95 ms off / on": f"{p95[0]:.0f} / {p95[1]:.0f}",
        "added p95 ms": round(p95[1] - p95[0], 1),
        "on / off (median)": f"{median[1] / median[0]:.3f}x",
        "service CPU ms/turn off / on": f"{a_cpu:.1f} / {b_cpu:.1f}",
        "runtime CPU ms/turn off / on": f"{a_rt:.1f} / {b_rt:.1f}",
        "errors": a.errors + b.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="", help="comma-separated levels (1,16,64; 1,16)")
    parser.add_argument("--turns", type=int, default=3, help="turns per user per level")
    parser.add_argument(
        "--metering", action="store_true", help="HTTP turns with ledger and checks on vs off"
    )
    parser.add_argument("--traces", default="", help="off, file:PATH or otlp:URL: tracing's cost")
    parser.add_argument("--rounds", type=int, default=4, help="with --traces: off/on alternations")
    args = parser.parse_args()
    cost = args.metering or args.traces
    levels = tuple(int(n) for n in (args.users or ("1,16" if cost else "1,16,64")).split(","))
    if args.metering:
        runs = asyncio.run(run_metering(levels, args.turns))
        table([r.row() for r in runs])
        for line in bench.metering_summary(runs):
            print(line)
        return
    if args.traces:
        rows = asyncio.run(tracing_cost(levels, args.turns, args.rounds, args.traces))
        table(rows)
        return
    points = asyncio.run(run(levels, args.turns))
    rows = [p.row() for p in points]
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))
    for line in bench.summary(points):
        print(line)
    bench.plot(points, TMP / "bench-web.png")
    print("plot: tmp/bench-web.png")


if __name__ == "__main__":
    main()
