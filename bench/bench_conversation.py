"""Benchmark: a long conversation's turn and resume cost against its length, three ways.

Run: .venv/bin/python bench/bench_conversation.py [--turns 800] [--prompt-chars 2000]

One session per place, the same turns in each: the session's files in a local
``config_directory``, in the SQLite store and in the PostgreSQL store (through ``session_fs``;
PostgreSQL is the server in DATABASE_URL, else a throwaway one, else skipped). At each checkpoint
(10, 50, 100, 200, 400, 800 turns, and the last) it times the median of the last 10 turns and the
median of 3 resumes. The three conversations advance in lockstep (turn t everywhere, then t + 1),
so load from elsewhere on the machine hits them alike. Uses the local stand-in model, which
answers at once. Where a turn's time goes, per turn (medians of the same last 10 turns): the
stand-in's own time (reading the request, parsing it, answering), the runtime's CPU (its process,
from /proc), the kilobytes the runtime sent the model (the conversation it resends each turn), and
the store's own part (the store's turn minus the local directory's turn at the same length). Writes
the plot to tmp/bench-conversation.png; the last line is for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the throwaway server
from pg_server import database_for_bench  # noqa: E402
from tqdm import tqdm  # noqa: E402

from helpers.model.backends import choose_backend  # noqa: E402
from helpers.notebook.display import table  # noqa: E402
from helpers.run import TMP, remove_dir, run_dir  # noqa: E402
from helpers.runtime import transport  # noqa: E402
from helpers.runtime.cpu import cpu_seconds  # noqa: E402
from helpers.runtime.server import start_server  # noqa: E402
from helpers.store import open_store  # noqa: E402
from helpers.store.session_fs import SESSION_FS, store_fs  # noqa: E402

TIMEOUT = 120
LOCAL = "local directory"
PART = "store's part ms"
EVENTS = "/session-state/events.jsonl"  # where the runtime keeps the history, through session_fs


def checkpoints(turns: int) -> list[int]:
    return sorted({c for c in (10, 50, 100, 200, 400, 800) if c <= turns} | {turns})


class Conversation:
    """One session in one place, taken turn by turn; checkpoints time turns and resumes."""

    def __init__(
        self, label: str, client, options: dict, model, runtime_pid: int, store=None
    ) -> None:
        self.label, self.client, self.options, self.store = label, client, options, store
        self.model, self.runtime_pid = model, runtime_pid  # the stand-in; the runtime's process
        # turn, stand-in, runtime CPU (ms); KB sent to the model
        self.recent: list[tuple[float, float, float, float]] = []
        self.rows: list[dict] = []

    async def start(self) -> None:
        self.session = await self.client.create_session(**self.options)

    async def turn(self, prompt: str) -> None:
        model = self.model
        sent, busy, cpu = model.received_bytes, model.busy_seconds, cpu_seconds(self.runtime_pid)
        started = time.perf_counter()
        await self.session.send_and_wait(prompt, timeout=TIMEOUT)
        took = time.perf_counter() - started
        busy, cpu = model.busy_seconds - busy, cpu_seconds(self.runtime_pid) - cpu
        sent = model.received_bytes - sent
        self.recent = [*self.recent[-9:], (took * 1000, busy * 1000, cpu * 1000, sent / 1024)]

    async def checkpoint(self, turns: int) -> None:
        resumes, sid = [], self.session.session_id
        for _ in range(3):
            await self.session.disconnect()
            started = time.perf_counter()
            self.session = await self.client.resume_session(sid, **self.options)
            resumes.append((time.perf_counter() - started) * 1000)
        read_ms, events_kb = "", ""
        if self.store is not None:  # the store's own share of a resume: reading events.jsonl
            reads = []
            for _ in range(3):
                started = time.perf_counter()
                row = await self.store.read(sid, EVENTS)
                reads.append((time.perf_counter() - started) * 1000)
            read_ms = round(statistics.median(reads), 1)
            events_kb = round(len(row.content.encode()) / 1024) if row is not None else 0
        turn, model = (statistics.median(r[k] for r in self.recent) for k in range(2))
        cpu = statistics.mean(r[2] for r in self.recent)  # /proc counts in 10 ms ticks: a mean
        self.rows.append(
            {
                "where": self.label,
                "turns": turns,
                "turn ms": round(turn, 1),
                "stand-in ms": round(model, 1),
                "runtime CPU ms": round(cpu, 1),
                "to model KB": round(statistics.median(r[3] for r in self.recent)),
                "resume ms": round(statistics.median(resumes), 1),
                "store read ms": read_ms,
                "events KB": events_kb,
            }
        )


async def lockstep(places: list[Conversation], turns: int, chars: int) -> list[dict]:
    """The same turns in every place, one place after the other for each turn, so that a busy
    machine slows all of them alike and the ratios at a checkpoint compare like with like."""
    filler = ("lorem ipsum dolor sit amet " * (chars // 27 + 1))[:chars]
    marks = set(checkpoints(turns))
    for place in places:
        await place.start()
    for turn in tqdm(range(1, turns + 1), desc="turns", unit="turn"):
        prompt = f"Turn {turn}: remember this. {filler}"[:chars]
        for place in places:
            await place.turn(prompt)
        if turn in marks:
            for place in places:
                await place.checkpoint(turn)
    for place in places:
        await place.session.disconnect()
    return [row for place in places for row in place.rows]


async def bench(turns: int, chars: int, url: str) -> list[dict]:
    run = run_dir("bench-conversation")
    backend = choose_backend("local", env={})
    transport.install()  # the fixed transport: TCP_NODELAY + TCP_QUICKACK on every client
    plain = start_server(backend, home=run / "plain")
    with_fs = start_server(backend, home=run / "with-fs")
    stores: dict = {}
    try:
        options = dict(available_tools=[], **backend.session_kwargs())
        stores["SQLite"] = await open_store(run, "")
        if url:
            stores["PostgreSQL"] = await open_store(run, url, schema="bench_conversation")
        async with plain.connect() as local, with_fs.connect(session_fs=SESSION_FS) as fs:
            model = backend.standin
            in_dir = dict(config_directory=str(run / "dir"), **options)
            places = [Conversation(LOCAL, local, in_dir, model, plain.pid)]
            for label, store in stores.items():
                opts = dict(create_session_fs_handler=store_fs(store), **options)
                places.append(Conversation(label, fs, opts, model, with_fs.pid, store))
            rows = await lockstep(places, turns, chars)
    finally:
        for store in stores.values():
            if store.engine == "postgresql":
                store.drop_schema()  # type: ignore[attr-defined]
            await store.close()
        plain.stop()
        with_fs.stop()
        backend.close()
        remove_dir(run)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for where in dict.fromkeys(r["where"] for r in rows):
        mine = [r for r in rows if r["where"] == where]
        for ax, what in zip(axes, ("turn ms", "resume ms"), strict=True):
            ax.plot([r["turns"] for r in mine], [r[what] for r in mine], marker="o", label=where)
    for ax, title in zip(axes, ("turn (median of the last 10), ms", "resume, ms"), strict=True):
        ax.set_xlabel("turns in the conversation")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=800)
    parser.add_argument("--prompt-chars", type=int, default=2000)
    args = parser.parse_args()
    with database_for_bench() as url:
        rows = asyncio.run(bench(args.turns, args.prompt_chars, url))
    at = {(r["where"], r["turns"]): r for r in rows}
    first, last = checkpoints(args.turns)[0], args.turns
    for r in rows:
        base = at[(LOCAL, r["turns"])]
        r["turn vs local"] = f"{r['turn ms'] / base['turn ms']:.2f}x"
        r["resume vs local"] = f"{r['resume ms'] / base['resume ms']:.2f}x"
        r[PART] = round(r["turn ms"] - base["turn ms"], 1) if r is not base else ""
    table(rows)
    path = TMP / "bench-conversation.png"
    plot(rows, path)
    print(f"\nplot: tmp/{path.name}")
    stores = [w for w in ("SQLite", "PostgreSQL") if (w, last) in at]
    a, b = at[(LOCAL, first)], at[(LOCAL, last)]
    print(
        f"{LOCAL}: turn at {last} = {b['turn ms'] / a['turn ms']:.2f}x turn at {first} "
        f"({a['turn ms']:.0f} -> {b['turn ms']:.0f} ms; no store): of it the stand-in model "
        f"{a['stand-in ms']:.0f} -> {b['stand-in ms']:.0f} ms, runtime CPU "
        f"{a['runtime CPU ms']:.0f} -> {b['runtime CPU ms']:.0f} ms per turn; the runtime sent the "
        f"model {a['to model KB']} -> {b['to model KB']} KB per turn"
    )
    for where in stores:
        grew = at[(where, last)]["turn ms"] / at[(where, first)]["turn ms"]
        resume = at[(where, last)]["resume ms"] / at[(LOCAL, last)]["resume ms"]
        end = at[(where, last)]
        print(
            f"{where}: turn at {last} = {grew:.2f}x turn at {first}; resume {resume:.2f}x local "
            f"({end['resume ms'] - at[(LOCAL, last)]['resume ms']:+.0f} ms; of it the store's read "
            f"of events.jsonl, {end['events KB']} KB, {end['store read ms']:.0f} ms)"
        )
    parts = ", ".join(
        f"{w} {at[(w, first)][PART]:+.0f} ms at {first}, {at[(w, last)][PART]:+.0f} ms at {last}"
        for w in stores
    )
    print(f"the store's own part of a turn (store turn - local turn): {parts}")
    ratio = {w: at[(w, last)]["turn ms"] / at[(LOCAL, last)]["turn ms"] for w in stores}
    growth = max(at[(w, last)]["turn ms"] / at[(w, first)]["turn ms"] for w in stores)
    pg = f"{ratio['PostgreSQL']:.2f}x" if "PostgreSQL" in ratio else "skipped"
    print(
        f"long conversation at {last} turns: SQLite turn {ratio['SQLite']:.2f}x local, "
        f"PostgreSQL turn {pg} local, growth {growth:.2f}x"
    )


if __name__ == "__main__":
    main()
