"""Benchmark: a short-lived request four ways on one shared runtime (prints figures only).

Run: .venv/bin/python tests/bench_requests.py [--requests 40] [--levels 1 4 16] [--prompt TEXT]

naive: notebook 02's request (create with file tools, send, disconnect, delete) on the SDK's
default transport; naive + TCP_NODELAY: the same on a client with TCP_NODELAY; the same with
TCP_QUICKACK re-armed after each read as well (transport.enable_quickack); prepared-ahead
(TCP_NODELAY): sessions created ahead into a pool as large as the concurrency, tools defined once
and routed by session id, one request per session, disconnect+delete in the background (each
measurement ends when the last background delete is done, so that work counts against throughput).
Uses the local stand-in model, which answers at once: the figures are SDK + runtime cost. Also a
long-lived turn on both transports. Writes the plot to tmp/bench-requests.png. The last two lines
are for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import matplotlib

matplotlib.use("Agg")

from copilot import CopilotClient  # noqa: E402

from helpers import transport  # noqa: E402
from helpers.model.backends import choose_backend  # noqa: E402
from helpers.notebook.display import table, text_of  # noqa: E402
from helpers.notebook.timing import Result, measure, plot, ratio  # noqa: E402
from helpers.run import TMP, remove_dir  # noqa: E402
from helpers.runtime.server import start_server  # noqa: E402
from helpers.serving.pool import SessionPool  # noqa: E402
from helpers.tools.file_tools import ALLOWLIST, file_tools  # noqa: E402
from helpers.tools.routed_tools import routed_file_tools  # noqa: E402
from helpers.tools.vfs import VirtualFS  # noqa: E402

TIMEOUT = 60
NAIVE, NODELAY, PREPARED = "naive (default transport)", "naive + TCP_NODELAY", "prepared-ahead"
QUICKACK = "naive + TCP_NODELAY + TCP_QUICKACK"


async def long_lived_turn_ms(client: CopilotClient, kwargs: dict, turns: int) -> float:
    """Median warm turn in one kept session."""
    session = await client.create_session(available_tools=[], **kwargs)
    await session.send_and_wait("Hello", timeout=TIMEOUT)
    times = []
    for _ in range(turns):
        start = time.perf_counter()
        await session.send_and_wait("Hello", timeout=TIMEOUT)
        times.append((time.perf_counter() - start) * 1000)
    await session.disconnect()
    await client.delete_session(session.session_id)
    return statistics.median(times)


async def main(requests: int, levels: list[int], prompt: str) -> None:
    backend = choose_backend("local", env={})
    home = remove_dir(TMP / "bench-home")
    server = start_server(backend.server_env, home=home, remove_env=backend.server_remove_env)
    kwargs = backend.session_kwargs()
    filesystems = {"A": VirtualFS("A"), "B": VirtualFS("B")}
    print(f"runtime started in {server.startup_seconds:.2f} s; prompt: {prompt!r}")
    try:
        with transport.nodelay(False), transport.quickack(False):
            plain = CopilotClient(mode="empty", connection=server.connection())
            await plain.start()
        with transport.quickack(False):
            fast = CopilotClient(mode="empty", connection=server.connection())
            await fast.start()
        transport.enable_quickack()
        quick = CopilotClient(mode="empty", connection=server.connection())  # both options on
        await quick.start()
        assert not transport.has_nodelay(plain) and transport.has_nodelay(fast)
        assert transport.has_quickack(quick) and not transport.has_quickack(fast)

        async def naive(client: CopilotClient, i: int) -> None:
            fs = filesystems["AB"[i % 2]]
            session = await client.create_session(
                tools=file_tools(fs), available_tools=ALLOWLIST, **kwargs
            )
            try:
                text_of(await session.send_and_wait(prompt, timeout=TIMEOUT))
            finally:
                await session.disconnect()
                await client.delete_session(session.session_id)

        pool: SessionPool
        tools = routed_file_tools(lambda sid: filesystems.get(pool.user_of(sid) or ""))

        async def create():
            return await fast.create_session(tools=tools, available_tools=ALLOWLIST, **kwargs)

        async def retire(session) -> None:
            await session.disconnect()
            await fast.delete_session(session.session_id)

        pool = SessionPool(create, retire, size=levels[0])

        async def prepared(i: int) -> None:
            async with pool.request("AB"[i % 2]) as session:
                text_of(await session.send_and_wait(prompt, timeout=TIMEOUT))

        for warm in range(2):  # both clients and the pool path once, untimed
            await naive(plain, warm)
            await naive(fast, warm)
            await naive(quick, warm)
        await pool.fill()
        await prepared(0)
        await pool.deleted_all()

        results: list[Result] = []
        for level in levels:
            count = max(requests, 2 * level)
            results.append(await measure(NAIVE, lambda i: naive(plain, i), level, count))
            results.append(await measure(NODELAY, lambda i: naive(fast, i), level, count))
            results.append(await measure(QUICKACK, lambda i: naive(quick, i), level, count))
            pool.size = level
            await pool.fill()
            results.append(await measure(PREPARED, prepared, level, count, pool.deleted_all))
        await pool.close()
        assert pool.deleted == pool.created and not pool.errors, pool.errors

        turns = max(10, requests // 2)
        slow_turn = await long_lived_turn_ms(plain, kwargs, turns)
        quick_turn = await long_lived_turn_ms(fast, kwargs, turns)
        await plain.stop()
        await fast.stop()
        await quick.stop()
    finally:
        server.stop()
        backend.close()
        remove_dir(home)

    print()
    table([r.row() for r in results])
    path = TMP / "bench-requests.png"
    plot(results, path)
    print(f"\nplot: tmp/{path.name}")
    print(
        f"long-lived turn: {slow_turn:.0f} ms default transport, {quick_turn:.0f} ms TCP_NODELAY "
        f"({quick_turn / slow_turn:.2f}x)"
    )
    low, high = levels[0], levels[-1]
    print(
        f"p95 latency ratio at {low} (prepared-ahead / naive): "
        f"{ratio(results, PREPARED, NAIVE, low, 'p95'):.2f}"
    )
    print(
        f"median latency ratio (prepared-ahead / naive): "
        f"{ratio(results, PREPARED, NAIVE, low, 'median'):.2f}"
    )
    print(
        f"throughput ratio at {high} (prepared-ahead / naive): "
        f"{ratio(results, PREPARED, NAIVE, high, 'rps'):.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--prompt", default="List my files.")
    args = parser.parse_args()
    asyncio.run(main(args.requests, sorted(args.levels), args.prompt))
