"""Benchmark: a soak of many short-lived requests through one runtime; latency and memory over it.

Run: .venv/bin/python bench/bench_soak.py [--requests 3000] [--at-once 4] [--warmup 200]

Notebook 02's request (create with the file tools, send, disconnect, delete) on the fixed
transport, ``--at-once`` at a time, ``--requests`` in all, through one runtime. Every
``--window`` requests it records the p50 and p95 of that window and the runtime's resident
memory. Drift compares the last 500 requests with the first 500 after the warm-up (fewer on a
short run: half of the measured requests each). Uses the local stand-in model, which answers
at once. Writes the plot to tmp/bench-soak.png; the last line is for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from tqdm import tqdm  # noqa: E402

from helpers.model.backends import choose_backend  # noqa: E402
from helpers.notebook.display import text_of  # noqa: E402
from helpers.run import TMP, remove_dir, run_dir  # noqa: E402
from helpers.runtime import transport  # noqa: E402
from helpers.runtime.cpu import rss_mb  # noqa: E402
from helpers.runtime.server import start_server  # noqa: E402
from helpers.tools.file_tools import ALLOWLIST, file_tools  # noqa: E402
from helpers.tools.vfs import VirtualFS  # noqa: E402

TIMEOUT = 60


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def soak(requests: int, at_once: int, window: int, prompt: str) -> tuple[list, list]:
    run = run_dir("bench-soak")
    backend = choose_backend("local", env={})
    transport.install()  # the fixed transport: TCP_NODELAY + TCP_QUICKACK on every client
    server = start_server(backend, home=run / "runtime")
    filesystems = {"A": VirtualFS("A"), "B": VirtualFS("B")}
    latencies: list[tuple[int, float]] = []
    memory: list[tuple[int, float]] = [(0, rss_mb(server.pid or 0))]
    try:
        async with server.connect() as client:

            async def one(i: int) -> None:
                started = time.perf_counter()
                session = await client.create_session(
                    tools=file_tools(filesystems["AB"[i % 2]]),
                    available_tools=ALLOWLIST,
                    **backend.session_kwargs(),
                )
                try:
                    text_of(await session.send_and_wait(prompt, timeout=TIMEOUT))
                finally:
                    await session.disconnect()
                    await client.delete_session(session.session_id)
                latencies.append((i, (time.perf_counter() - started) * 1000))

            gate = asyncio.Semaphore(at_once)

            async def gated(i: int, bar: tqdm) -> None:
                async with gate:
                    await one(i)
                bar.update()
                if len(latencies) % window == 0:
                    memory.append((len(latencies), rss_mb(server.pid or 0)))

            with tqdm(total=requests, desc="soak", unit="request") as bar:
                await asyncio.gather(*(gated(i, bar) for i in range(requests)))
            left = [m.session_id for m in await client.list_sessions()]
            assert not left, f"{len(left)} sessions left on the runtime"
    finally:
        server.stop()
        backend.close()
        remove_dir(run)
    return latencies, memory


def plot(latencies: list[tuple[int, float]], memory: list, window: int, path: Path) -> None:
    import matplotlib.pyplot as plt

    done = [ms for _, ms in latencies]  # in the order they finished
    ends = list(range(window, len(done) + 1, window))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(ends, [statistics.median(done[e - window : e]) for e in ends], label="p50")
    left.plot(ends, [p95(done[e - window : e]) for e in ends], label="p95")
    right.plot([n for n, _ in memory], [mb for _, mb in memory], marker=".")
    for ax, title in ((left, f"latency per {window} requests, ms"), (right, "runtime RSS, MB")):
        ax.set_xlabel("requests done")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--at-once", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=200, help="requests left out of the drift")
    parser.add_argument("--window", type=int, default=100, help="requests per plotted point")
    parser.add_argument("--prompt", default="List my files.")
    args = parser.parse_args()
    latencies, memory = asyncio.run(soak(args.requests, args.at_once, args.window, args.prompt))
    done = [ms for _, ms in latencies]
    measured = done[args.warmup :]
    span = min(500, len(measured) // 2)
    first, last = measured[:span], measured[-span:]
    p50_drift = statistics.median(last) / statistics.median(first) - 1
    after_warmup = next(mb for n, mb in memory if n >= args.warmup)
    mem_drift = memory[-1][1] / after_warmup - 1
    path = TMP / "bench-soak.png"
    plot(latencies, memory, args.window, path)
    print(
        f"first {span} after the warm-up: p50 {statistics.median(first):.0f} ms, "
        f"p95 {p95(first):.0f} ms"
    )
    print(f"last {span}: p50 {statistics.median(last):.0f} ms, p95 {p95(last):.0f} ms")
    print(
        f"runtime RSS: {memory[0][1]:.0f} MB at start, {after_warmup:.0f} MB after the warm-up, "
        f"{max(mb for _, mb in memory):.0f} MB at most, {memory[-1][1]:.0f} MB at the end"
    )
    print(f"plot: tmp/{path.name}")
    print(
        f"soak: {len(done)} requests, p50 drift {100 * p50_drift:+.1f}%, "
        f"memory drift {100 * mem_drift:+.1f}%"
    )


if __name__ == "__main__":
    main()
