"""Benchmark the web backend: N users at once over HTTP against the same turns in-process.

    flock tmp/bench.lock .venv/bin/python bench/web.py                 # 1, 16, 64 users
    .venv/bin/python bench/web.py --users 1,4 --turns 1                # a quick look
    flock tmp/bench.lock .venv/bin/python bench/web.py --metering      # ledger+checks on vs off

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="", help="comma-separated levels (1,16,64; 1,16)")
    parser.add_argument("--turns", type=int, default=3, help="turns per user per level")
    parser.add_argument(
        "--metering", action="store_true", help="HTTP turns with ledger and checks on vs off"
    )
    args = parser.parse_args()
    levels = tuple(
        int(n) for n in (args.users or ("1,16" if args.metering else "1,16,64")).split(",")
    )
    if args.metering:
        runs = asyncio.run(run_metering(levels, args.turns))
        table([r.row() for r in runs])
        for line in bench.metering_summary(runs):
            print(line)
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
