"""Benchmark: resume and one turn with a session's files in a local directory, SQLite, PostgreSQL.

Run: .venv/bin/python bench/bench_store.py [--rounds 20] [--no-quickack]
Uses the local stand-in model, which answers at once, so the figures are SDK + runtime + store.
PostgreSQL: the server in DATABASE_URL, else a throwaway one (needs PostgreSQL's binaries).
Prints figures only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path

from copilot import CopilotClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the throwaway server
from pg_server import database_for_bench  # noqa: E402
from support import TIMEOUT  # noqa: E402

from helpers.model.backends import choose_backend
from helpers.notebook.session_costs import measure_session_costs
from helpers.run import remove_dir, run_dir
from helpers.runtime import transport
from helpers.runtime.server import start_server
from helpers.store import open_store
from helpers.store.session_fs import SESSION_FS, store_fs


async def bench(rounds: int, database_url: str) -> list[dict[str, object]]:
    run = run_dir("bench-store")
    backend = choose_backend("local", env={})
    plain = start_server(backend, home=run / "plain")
    with_fs = start_server(backend, home=run / "with-fs")
    results: dict[str, dict[str, float]] = {}
    try:
        options = dict(available_tools=[], **backend.session_kwargs())
        async with CopilotClient(mode="empty", connection=plain.connection()) as client:
            local = dict(config_directory=str(run / "local-dir"), **options)
            results["local directory"] = await measure_session_costs(
                client, "b-local", local, rounds, TIMEOUT
            )
        stores = {"SQLite": await open_store(run, "")}
        if database_url:
            stores["PostgreSQL"] = await open_store(run, database_url, schema="bench_store")
        connection = with_fs.connection()
        async with CopilotClient(mode="empty", connection=connection, session_fs=SESSION_FS) as c:
            for label, store in stores.items():
                calls: Counter[str] = Counter()
                opts = dict(create_session_fs_handler=store_fs(store, calls), **options)
                results[label] = await measure_session_costs(
                    c, f"b-{label}", opts, rounds, TIMEOUT, calls
                )
        for store in stores.values():
            if store.engine == "postgresql":
                store.drop_schema()  # type: ignore[attr-defined]
            await store.close()
    finally:
        plain.stop()
        with_fs.stop()
        backend.close()
        remove_dir(run)
    base = results["local directory"]
    return [
        {
            "where the files are": label,
            "resume ms": row["resume ms"],
            "resume ratio": f"{row['resume ms'] / base['resume ms']:.2f}x",
            "turn ms": row["turn ms"],
            "turn ratio": f"{row['turn ms'] / base['turn ms']:.2f}x",
            "provider calls/turn": row["provider calls/turn"],
        }
        for label, row in results.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="resume + turn rounds per store")
    parser.add_argument("--no-quickack", action="store_true", help="clients ACK as Linux likes")
    args = parser.parse_args()
    from helpers.notebook.display import table

    with database_for_bench() as url, transport.quickack(not args.no_quickack):
        rows = asyncio.run(bench(args.rounds, url))
    ack = "off" if args.no_quickack else "on"
    print(f"medians of {args.rounds} rounds; TCP_NODELAY on; quickack {ack}")
    table(rows)


if __name__ == "__main__":
    main()
