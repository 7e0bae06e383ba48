"""Benchmark: the fastest short-lived request against the naive one, side by side on one runtime.

Run: .venv/bin/python bench/bench_requests.py [--requests 40] [--levels 1 16] [--prompt TEXT]

naive, SDK default transport: notebook 02's request (create with file tools, send, disconnect,
delete) on a client with both TCP options off (``transport.tuning(False)``). naive, fixed
transport: the same with TCP_NODELAY and TCP_QUICKACK (``transport.install()``). fastest:
sessions prepared ahead on the fixed transport (``helpers/serving/pool.py``: tools defined once
and routed by session id, one request per session, disconnect + delete in the background; each
measurement ends when the last background delete is done, so that work counts against
throughput). floor: one warm turn in a kept session on the fixed transport. Then where the naive
request's time goes (create, turn, disconnect, delete), the CPU per request of this process and
of the runtime (one at a time, and at the highest level), and what idle sessions alive in the
runtime cost every request (the naive request with none and with 2 x level of them). Uses the
local stand-in model, which answers at once: the figures are SDK + runtime. Writes the plot to
tmp/bench-requests.png; the last three lines are for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import matplotlib

matplotlib.use("Agg")

from copilot import CopilotClient  # noqa: E402
from tqdm import tqdm  # noqa: E402

from helpers.model.backends import choose_backend  # noqa: E402
from helpers.notebook.display import table, text_of  # noqa: E402
from helpers.notebook.request_timing import Result, measure_requests, plot, ratio  # noqa: E402
from helpers.run import TMP, remove_dir  # noqa: E402
from helpers.runtime import transport  # noqa: E402
from helpers.runtime.cpu import CpuSpan  # noqa: E402
from helpers.runtime.server import start_server  # noqa: E402
from helpers.serving.pool import SessionPool  # noqa: E402
from helpers.tools.file_tools import ALLOWLIST, file_tools  # noqa: E402
from helpers.tools.routed_tools import routed_file_tools  # noqa: E402
from helpers.tools.vfs import VirtualFS  # noqa: E402

TIMEOUT = 60
NAIVE, FIXED = "naive, SDK default transport", "naive, fixed transport"
FASTEST, FLOOR = "fastest (prepared ahead, fixed)", "floor (warm turn, kept session)"


async def main(requests: int, levels: list[int], prompt: str) -> None:
    backend = choose_backend("local", env={})
    home = remove_dir(TMP / "bench-home")
    transport.install()  # the fixed transport: TCP_NODELAY + TCP_QUICKACK on every client
    server = start_server(backend, home=home)
    kwargs = backend.session_kwargs()
    filesystems = {"A": VirtualFS("A"), "B": VirtualFS("B")}
    print(f"runtime started in {server.startup_seconds:.2f} s; prompt: {prompt!r}")
    try:
        with transport.tuning(False):
            plain = CopilotClient(mode="empty", connection=server.connection())
            await plain.start()
        fast = CopilotClient(mode="empty", connection=server.connection())
        await fast.start()
        assert not transport.has_nodelay(plain) and not transport.has_quickack(plain)
        assert transport.has_nodelay(fast) and transport.has_quickack(fast)
        print(f"default client: {transport.describe(plain)}")
        print(f"fixed client:   {transport.describe(fast)}")

        async def naive(client: CopilotClient, i: int, phases: dict | None = None) -> None:
            fs = filesystems["AB"[i % 2]]
            t0 = time.perf_counter()
            session = await client.create_session(
                tools=file_tools(fs), available_tools=ALLOWLIST, **kwargs
            )
            t1 = time.perf_counter()
            try:
                text_of(await session.send_and_wait(prompt, timeout=TIMEOUT))
            finally:
                t2 = time.perf_counter()
                await session.disconnect()
                t3 = time.perf_counter()
                await client.delete_session(session.session_id)
            if phases is not None:
                for name, a, b in (
                    ("create", t0, t1),
                    ("turn", t1, t2),
                    ("disconnect", t2, t3),
                    ("delete", t3, time.perf_counter()),
                ):
                    phases.setdefault(name, []).append((b - a) * 1000)

        pool: SessionPool
        tools = routed_file_tools(lambda sid: filesystems.get(pool.user_of(sid) or ""))

        async def create():
            return await fast.create_session(tools=tools, available_tools=ALLOWLIST, **kwargs)

        async def retire(session) -> None:
            await session.disconnect()
            await fast.delete_session(session.session_id)

        pool = SessionPool(create, retire, size=levels[0])

        async def fastest(i: int) -> None:
            async with pool.request("AB"[i % 2]) as session:
                text_of(await session.send_and_wait(prompt, timeout=TIMEOUT))

        kept = await fast.create_session(tools=tools, available_tools=ALLOWLIST, **kwargs)

        async def floor(i: int) -> None:
            text_of(await kept.send_and_wait(prompt, timeout=TIMEOUT))

        for warm in range(2):  # every path once, untimed
            await naive(plain, warm)
            await naive(fast, warm)
            await floor(warm)
        await pool.fill()
        await fastest(0)
        await pool.deleted_all()

        results: list[Result] = []
        cpu_at: dict[str, dict[str, float]] = {}  # CPU per request at the highest level
        with tqdm(total=4 * len(levels), desc="requests", unit="point") as bar:
            for level in levels:
                count = max(requests, 2 * level)
                for label, fn, after in (
                    (NAIVE, lambda i: naive(plain, i), None),
                    (FIXED, lambda i: naive(fast, i), None),
                    (FASTEST, fastest, pool.deleted_all),
                    (FLOOR, floor, None),
                ):
                    if label == FLOOR and level > 1:
                        bar.update()
                        continue  # one kept session serves one turn at a time
                    if label == FASTEST:
                        pool.size = level
                        await pool.fill()
                    span = CpuSpan(server.pid).start()
                    results.append(await measure_requests(label, fn, level, count, after))
                    if level == levels[-1] and label in (FIXED, FASTEST):
                        cpu_at[label] = span.stop().per_request_ms(count)
                    bar.update()

        phases: dict[str, list[float]] = {}
        cpu_rows = []
        for label, fn, after in (
            (FIXED, lambda i: naive(fast, i, phases), None),
            (FASTEST, fastest, pool.deleted_all),
        ):
            pool.size = 1
            await pool.fill()
            span = CpuSpan(server.pid).start()
            for i in range(requests):
                await fn(i)
            if after:
                await after()
            per_request = span.stop().per_request_ms(requests)
            cpu_rows.append({"request (one at a time)": label, **per_request})
        await pool.close()
        assert pool.deleted == pool.created and not pool.errors, pool.errors

        # What an idle session costs (the pool closed, its sessions deleted): the naive request at
        # the highest level with none and with 2 x level idle sessions alive in the runtime (a
        # pool's ready sessions are idle ones), twice each, alternated.
        idle_rows, idle = [], []
        high = levels[-1]
        for extra in tqdm((0, 2 * high, 0, 2 * high), desc="idle sessions", unit="point"):
            while len(idle) < extra:
                idle.append(await create())
            while len(idle) > extra:
                await retire(idle.pop())
            span = CpuSpan(server.pid).start()
            point = await measure_requests(
                FIXED, lambda i: naive(fast, i), high, max(requests, 2 * high)
            )
            per = span.stop().per_request_ms(len(point.latencies_ms))
            idle_rows.append(
                {"idle sessions alive": extra, "requests/s": round(point.rps, 1), **per}
            )
        for session in idle:
            await retire(session)
        await kept.disconnect()
        await fast.delete_session(kept.session_id)
        await plain.stop()
        await fast.stop()
    finally:
        server.stop()
        backend.close()
        remove_dir(home)

    print()
    table([r.row() for r in results])
    print("\nwhere the naive request's time goes (fixed transport, medians):")
    table([{"phase": k, "median ms": round(statistics.median(v), 1)} for k, v in phases.items()])
    print("\nCPU per request (wall clock, this process, the runtime):")
    table(cpu_rows)
    print(f"\nCPU per request at {levels[-1]} at once (the throughput measurements above):")
    table([{"request": label, **row} for label, row in cpu_at.items()])
    print(f"\nthe naive request at {levels[-1]} at once, with idle sessions alive in the runtime:")
    table(idle_rows)
    path = TMP / "bench-requests.png"
    plot([r for r in results if r.label != FLOOR], path)
    print(f"\nplot: tmp/{path.name}")
    low, high = levels[0], levels[-1]
    floor_ms = next(r.median for r in results if r.label == FLOOR)
    print(f"floor: one warm turn in a kept session, fixed transport: {floor_ms:.0f} ms (median)")
    median, p95 = (ratio(results, FASTEST, NAIVE, low, what) for what in ("median", "p95"))
    print(f"median latency ratio (fastest / naive): {median:.2f}")
    print(f"p95 latency ratio (fastest / naive): {p95:.2f}")
    print(
        f"throughput ratio at {high} (fastest / naive, same transport): "
        f"{ratio(results, FASTEST, FIXED, high, 'rps'):.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt", default="List my files.")
    args = parser.parse_args()
    asyncio.run(main(args.requests, sorted(args.levels), args.prompt))
