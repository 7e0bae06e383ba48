"""Benchmark: one runtime against two behind a least-busy router, at 16 and 64 requests at once.

Run: .venv/bin/python bench/bench_scaling.py [--requests 128] [--levels 16 64]

Notebook 02's short-lived request (create, send, disconnect, delete) on the fixed transport; with
two runtimes each request goes to the one with fewer requests in flight (``Router.pick`` of
notebook 05). For each point: latency, throughput, and where the CPU went: this process, each
runtime, and the whole machine (``/proc/stat``: on a shared machine other work shows up there).
Uses the local stand-in model (in this process), which answers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from tqdm import tqdm

from helpers.model.backends import choose_backend
from helpers.notebook.display import table, text_of
from helpers.notebook.request_timing import measure_requests
from helpers.run import remove_dir, run_dir
from helpers.runtime import transport
from helpers.runtime.cpu import cpu_seconds
from helpers.runtime.server import start_server
from helpers.store.router import Router
from helpers.tools.file_tools import ALLOWLIST, file_tools
from helpers.tools.vfs import VirtualFS

TIMEOUT = 60


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


async def point(runtimes: list, clients: dict, level: int, count: int, backend) -> dict:
    router = Router(clients, store=None, open=None)  # type: ignore[arg-type]  # only pick() is used
    fs = VirtualFS("A")

    async def one(i: int) -> None:
        name = router.pick(str(i))
        router.busy[name] += 1
        client = clients[name]
        try:
            session = await client.create_session(
                tools=file_tools(fs), available_tools=ALLOWLIST, **backend.session_kwargs()
            )
            try:
                text_of(await session.send_and_wait("List my files.", timeout=TIMEOUT))
            finally:
                await session.disconnect()
                await client.delete_session(session.session_id)
        finally:
            router.busy[name] -= 1
        router.served[name] += 1

    cpu0 = [cpu_seconds(s.pid) for s in runtimes]
    own0, (busy0, total0), wall0 = time.process_time(), machine_busy(), time.perf_counter()
    result = await measure_requests(f"{len(runtimes)} runtime(s)", one, level, count)
    wall = time.perf_counter() - wall0
    busy, total = machine_busy()
    runtime_cpu = [cpu_seconds(s.pid) - c for s, c in zip(runtimes, cpu0, strict=True)]
    return {
        **result.row(),
        "served": "/".join(str(router.served[n]) for n in sorted(clients)),
        "runtime CPU (cores)": "/".join(f"{c / wall:.2f}" for c in runtime_cpu),
        "this process (cores)": round((time.process_time() - own0) / wall, 2),
        "machine busy": f"{(busy - busy0) / max(total - total0, 1e-9):.0%}",
    }


async def main(requests: int, levels: list[int]) -> None:
    run = run_dir("bench-scaling")
    backend = choose_backend("local", env={})
    transport.install()  # the fixed transport: TCP_NODELAY + TCP_QUICKACK on every client
    servers = [start_server(backend, home=run / f"runtime-{n}") for n in (1, 2)]
    rows = []
    try:
        clients = {f"runtime-{n}": s.connect() for n, s in zip((1, 2), servers, strict=True)}
        for client in clients.values():
            await client.start()
        one = {"runtime-1": clients["runtime-1"]}
        await point(servers[:1], one, 2, 4, backend)  # warm up both
        await point(servers, clients, 2, 4, backend)
        with tqdm(total=2 * len(levels), desc="points", unit="point") as bar:
            for level in levels:
                count = max(requests, 2 * level)
                rows.append(await point(servers[:1], one, level, count, backend))
                bar.update()
                rows.append(await point(servers, clients, level, count, backend))
                bar.update()
        for client in clients.values():
            await client.stop()
    finally:
        for server in servers:
            server.stop()
        backend.close()
        remove_dir(run)
    print(f"{os.cpu_count()} CPU cores on this machine")
    table(rows)
    for level in levels:
        one_rps, two_rps = (r["requests/s"] for r in rows if r["at once"] == level)
        print(f"throughput at {level} at once: two runtimes / one = {two_rps / one_rps:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=128, help="requests per point")
    parser.add_argument("--levels", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    asyncio.run(main(args.requests, sorted(args.levels)))
