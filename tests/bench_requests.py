"""Benchmark: what each pattern costs per request on one shared runtime (prints figures only).

Run: .venv/bin/python tests/bench_requests.py [--requests 40] [--concurrency 1 4 8]
Uses the local stand-in model, which answers at once, so the figures are SDK + runtime cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from copilot import CopilotClient

from helpers.backends import choose_backend
from helpers.paths import TMP, remove_dir
from helpers.runtime import start_server

TIMEOUT = 60


def summary(label: str, samples_ms: list[float]) -> str:
    samples = sorted(samples_ms)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    median = statistics.median(samples)
    return f"{label:<34} n={len(samples):<4} median {median:7.1f} ms   p95 {p95:7.1f} ms"


async def ephemeral(client: CopilotClient, kwargs: dict, laps: dict[str, list[float]]) -> None:
    t0 = time.perf_counter()
    session = await client.create_session(available_tools=[], **kwargs)
    t1 = time.perf_counter()
    await session.send_and_wait("Remember: the codename is BENCH.", timeout=TIMEOUT)
    t2 = time.perf_counter()
    await session.disconnect()
    await client.delete_session(session.session_id)
    t3 = time.perf_counter()
    for name, value in (
        ("create", t1 - t0),
        ("turn", t2 - t1),
        ("disconnect+delete", t3 - t2),
        ("total", t3 - t0),
    ):
        laps[name].append(value * 1000)


async def main(requests: int, concurrency: list[int]) -> None:
    backend = choose_backend("local", env={})
    server = start_server(
        backend.server_env, home=TMP / "bench-home", remove_env=backend.server_remove_env
    )
    kwargs = backend.session_kwargs()
    print(f"runtime started in {server.startup_seconds:.2f} s")
    try:
        async with CopilotClient(mode="empty", connection=server.connection()) as client:
            laps: dict[str, list[float]] = {
                k: [] for k in ("create", "turn", "disconnect+delete", "total")
            }
            await ephemeral(client, kwargs, {k: [] for k in laps})  # warm-up
            for _ in range(requests):
                await ephemeral(client, kwargs, laps)
            print("\nShort-lived: one session per request, one at a time")
            for name, samples in laps.items():
                print("  " + summary(name, samples))

            folder = remove_dir(TMP / "bench-user")
            session = await client.create_session(
                session_id="bench-long", config_directory=str(folder), available_tools=[], **kwargs
            )
            await session.send_and_wait("Remember: the codename is BENCH.", timeout=TIMEOUT)
            turns, resumes = [], []
            for _ in range(requests):
                t0 = time.perf_counter()
                await session.send_and_wait("What is the codename?", timeout=TIMEOUT)
                turns.append((time.perf_counter() - t0) * 1000)
            await session.disconnect()
            for _ in range(min(requests, 20)):
                t0 = time.perf_counter()
                again = await client.resume_session(
                    "bench-long", config_directory=str(folder), available_tools=[], **kwargs
                )
                resumes.append((time.perf_counter() - t0) * 1000)
                await again.disconnect()
            print("\nLong-lived: one session kept on disk")
            print("  " + summary("warm turn (history grows)", turns))
            print("  " + summary("resume_session", resumes))
            remove_dir(folder)

            print("\nShort-lived throughput through one runtime")
            for level in concurrency:
                sink: dict[str, list[float]] = {k: [] for k in laps}
                total = max(requests, level * 4)
                started = time.perf_counter()
                gate = asyncio.Semaphore(level)

                async def one(gate: asyncio.Semaphore, sink: dict[str, list[float]]) -> None:
                    async with gate:
                        await ephemeral(client, kwargs, sink)

                await asyncio.gather(*(one(gate, sink) for _ in range(total)))
                elapsed = time.perf_counter() - started
                print(
                    f"  {level:>2} at once: {total / elapsed:5.1f} requests/s, "
                    f"median latency {statistics.median(sink['total']):6.0f} ms"
                )
    finally:
        server.stop()
        backend.close()
        remove_dir(TMP / "bench-home")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
