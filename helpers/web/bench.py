"""N users at once through the service, over HTTP and in-process: what the HTTP layer costs.

Both ways make the same turns through the same ``Service`` (ownership, lock, lease, store, streamed
deltas); over HTTP each also crosses uvicorn, FastAPI, the bearer check, SSE framing and httpx.
The HTTP callers run in a process of their own (``python -m helpers.web.bench``, given the users on
stdin), so the clients' own work does not share the server's event loop and its figures.
Each user has a conversation of their own, made before the clock starts, and sends ``turns``
messages one after the other; all users start at once. Every stream is checked for the other
users' codenames (a leak) and for its own final message (else an error).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from helpers.errors import TutorialError
from helpers.web.service import Service

MODES = ("in-process", "HTTP")


@dataclass
class Sample:
    first_s: float | None
    last_s: float
    text: str
    error: str = ""


@dataclass
class Point:
    """One mode at one number of users: every turn's timings, errors and leaks."""

    mode: str
    users: int
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    leaks: int = 0

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if s.error)

    def quantile(self, what: str, q: float) -> float:
        """Milliseconds at quantile ``q`` of ``first`` (first token) or ``last`` (whole reply)."""
        values = sorted(
            (s.first_s if what == "first" else s.last_s) or 0.0 for s in self.samples if not s.error
        )
        if not values:
            return float("nan")
        return 1000 * values[min(len(values) - 1, round(q * (len(values) - 1)))]

    @property
    def rps(self) -> float:
        return len(self.samples) / self.seconds if self.seconds else 0.0

    def row(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "users": self.users,
            "turns": len(self.samples),
            "first token median ms": round(self.quantile("first", 0.5), 1),
            "first token p95 ms": round(self.quantile("first", 0.95), 1),
            "last token median ms": round(self.quantile("last", 0.5), 1),
            "last token p95 ms": round(self.quantile("last", 0.95), 1),
            "turns/s": round(self.rps, 1),
            "errors": self.errors,
            "leaks": self.leaks,
        }


async def _in_process(service: Service, user: str, conversation: str, text: str) -> Sample:
    start = time.perf_counter()
    first, final, error = None, "", ""
    try:
        await service.check_owner(user, conversation)
        service.begin(user)
    except TutorialError as exc:
        return Sample(None, time.perf_counter() - start, "", type(exc).__name__)
    async for kind, data in service.send(user, conversation, text).events():
        if kind == "delta" and first is None:
            first = time.perf_counter() - start
        elif kind == "message":
            final = data["text"]
        elif kind == "error":
            error = data["error"]
    return Sample(first, time.perf_counter() - start, final, error or ("" if final else "none"))


async def _over_http(http: httpx.AsyncClient, token: str, conversation: str, text: str) -> Sample:
    start = time.perf_counter()
    first, final, error = None, "", ""
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/conversations/{conversation}/messages"
    async with aconnect_sse(http, "POST", path, json={"text": text}, headers=headers) as source:
        if source.response.status_code != 200:
            return Sample(None, time.perf_counter() - start, "", str(source.response.status_code))
        async for event in source.aiter_sse():
            if event.event == "delta" and first is None:
                first = time.perf_counter() - start
            elif event.event == "message":
                final = json.loads(event.data)["text"]
            elif event.event == "error":
                error = json.loads(event.data)["error"]
    return Sample(first, time.perf_counter() - start, final, error or ("" if final else "none"))


def _text(code: str, step: int) -> str:
    return f"Remember: the codename is {code} (turn {step + 1})."


async def _callers(url: str, users: dict[str, list[str]], turns: int) -> dict[str, Any]:
    """Every user's turns over HTTP at once: ``{"seconds": ..., "samples": {name: [...]}}``."""
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in users}
    size = len(users) + 4
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def user_turns(name: str, token: str, conversation: str, code: str) -> None:
            for step in range(turns):
                sample = await _over_http(http, token, conversation, _text(code, step))
                samples[name].append(asdict(sample))

        started = time.perf_counter()
        await asyncio.gather(*(user_turns(name, *spec) for name, spec in users.items()))
        return {"seconds": time.perf_counter() - started, "samples": samples}


async def _callers_process(url: str, users: dict[str, list[str]], turns: int) -> dict[str, Any]:
    """``_callers`` in a process of its own; the users (with their tokens) go over stdin."""
    root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "helpers.web.bench",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    ask = json.dumps({"url": url, "users": users, "turns": turns}).encode()
    try:
        out, err = await asyncio.wait_for(child.communicate(ask), 120 + 60 * turns)
    except BaseException:
        child.kill()
        await child.wait()
        raise
    if child.returncode != 0:
        raise RuntimeError(f"the load generator failed: {err.decode()[-2000:]}")
    return json.loads(out)


async def measure(service: Service, url: str, mode: str, users: int, turns: int = 2) -> Point:
    """``users`` users at once, ``turns`` turns each, in ``mode`` (``HTTP`` or ``in-process``)."""
    tag = secrets.token_hex(2)
    names = [f"b{tag}{n}" for n in range(users)]
    codes = {name: f"CODE-{tag}-{n:03d}" for n, name in enumerate(names)}  # none a prefix
    tokens = {name: await service.tokens.issue(name) for name in names}
    conversations = {name: await service.create_conversation(name) for name in names}
    point = Point(mode, users)

    def add(name: str, sample: Sample) -> None:
        point.samples.append(sample)
        others = [c for n, c in codes.items() if n != name]
        point.leaks += sum(1 for c in others if c in sample.text)

    if mode == "HTTP":
        spec = {name: [tokens[name], conversations[name], codes[name]] for name in names}
        ran = await _callers_process(url, spec, turns)
        point.seconds = ran["seconds"]
        for name, samples in ran["samples"].items():
            for sample in samples:
                add(name, Sample(**sample))
    else:

        async def user_turns(name: str) -> None:
            for step in range(turns):
                text = _text(codes[name], step)
                add(name, await _in_process(service, name, conversations[name], text))

        started = time.perf_counter()
        await asyncio.gather(*(user_turns(name) for name in names))
        point.seconds = time.perf_counter() - started
    for name in names:
        await service.delete(name, conversations[name])
        await service.tokens.revoke(name)
    return point


async def compare(
    service: Service, url: str, levels: tuple[int, ...] = (1, 16, 64), turns: int = 2
) -> list[Point]:
    """Both modes at each level, in-process first, side by side in one run."""
    points = []
    for users in levels:
        for mode in MODES:
            points.append(await measure(service, url, mode, users, turns))
    return points


METERED = {"metering": True, "budget_tokens": 10**12, "rate_turns": 10**6, "max_turns": 10**6}
UNMETERED = {"metering": False, "budget_tokens": 0, "rate_turns": 0, "max_turns": 0}


@dataclass
class Metered:
    """One HTTP run with metering on or off: its point, the server's CPU, the ledger's count."""

    on: bool
    point: Point
    cpu_s: float
    model_calls: int
    ledger_rows: int

    def row(self) -> dict[str, object]:
        turns = len(self.point.samples)
        return {
            "metering": "on" if self.on else "off",
            "users": self.point.users,
            "turns": turns,
            "whole reply median ms": round(self.point.quantile("last", 0.5), 1),
            "p95 ms": round(self.point.quantile("last", 0.95), 1),
            "server CPU ms/turn": round(1000 * self.cpu_s / max(turns, 1), 2),
            "model calls": self.model_calls,
            "ledger rows": self.ledger_rows,
            "errors": self.point.errors,
        }


async def metering(
    service: Service, url: str, levels: tuple[int, ...] = (1, 16), turns: int = 3, rounds: int = 2
) -> list[Metered]:
    """HTTP turns with the ledger, budget, rate and policy on against off, alternated per round."""
    import dataclasses

    base = service.settings
    runs = []
    try:
        for users in levels:
            for _ in range(rounds):
                for on in (False, True):
                    service.settings = dataclasses.replace(base, **(METERED if on else UNMETERED))
                    runs.append(await _metered_run(service, url, users, turns, on))
    finally:
        service.settings = base
    return runs


async def _metered_run(service: Service, url: str, users: int, turns: int, on: bool) -> Metered:
    rows_before = await _ledger_rows(service)
    calls_before = _model_calls(service)
    cpu_before = time.process_time()
    point = await measure(service, url, "HTTP", users, turns)
    cpu_s = time.process_time() - cpu_before
    await asyncio.sleep(0.2)  # background ledger retries, if any
    return Metered(
        on,
        point,
        cpu_s,
        _model_calls(service) - calls_before,
        await _ledger_rows(service) - rows_before,
    )


async def _ledger_rows(service: Service) -> int:
    rows, _ = await service.store.execute("SELECT COUNT(*) FROM usage_ledger")
    return int(rows[0][0])


def _model_calls(service: Service) -> int:
    standin = service.backend.standin
    return standin.requests[-1].number if standin is not None and standin.requests else 0


async def metering_work(service: Service, users: int, turns: int = 20) -> tuple[float, float]:
    """Milliseconds (median, p95) of metering's own database work per turn, ``users`` at once:
    the admission (rate and budget in one transaction), one ledger row, the hold given back."""
    from helpers.web.budgets import admit, give_back
    from helpers.web.ledger import Call, record

    tag = secrets.token_hex(3)
    took: list[float] = []

    async def one(user: str) -> None:
        for n in range(turns):
            started = time.perf_counter()
            hold = await admit(service.store, user, (10**6, 60.0), (10**12, 86400.0, 1000))
            call = Call(f"{tag}-{n}", "bench", 900, 20, 0, None, time.time())
            await record(service.store, user, f"bench-{user}", call)
            if hold is not None:
                await give_back(service.store, hold)
            took.append(1000 * (time.perf_counter() - started))

    await asyncio.gather(*(one(f"m{tag}{u}") for u in range(users)))
    await service.store.execute("DELETE FROM usage_ledger WHERE model = 'bench'")
    took.sort()
    return took[len(took) // 2], took[round(0.95 * (len(took) - 1))]


def metering_summary(runs: list[Metered]) -> list[str]:
    """Milliseconds and CPU added per turn by metering, per level (pooled over the rounds)."""
    lines = []
    for users in sorted({r.point.users for r in runs}):

        def pooled(on: bool, q: float, users: int = users) -> float:
            samples = [
                s for r in runs if r.on is on and r.point.users == users for s in r.point.samples
            ]
            return Point("HTTP", users, samples).quantile("last", q)

        def cpu(on: bool, users: int = users) -> float:
            mine = [r for r in runs if r.on is on and r.point.users == users]
            return (
                1000 * sum(r.cpu_s for r in mine) / max(sum(len(r.point.samples) for r in mine), 1)
            )

        median = pooled(True, 0.5) - pooled(False, 0.5)
        p95 = pooled(True, 0.95) - pooled(False, 0.95)
        ratio = pooled(True, 0.5) / pooled(False, 0.5)
        lines.append(
            f"at {users} users, metering on - off: median {median:+.1f} ms, p95 {p95:+.1f} ms, "
            f"ratio of medians {ratio:.2f}x, server CPU {cpu(True) - cpu(False):+.2f} ms/turn"
        )
    on = [r for r in runs if r.on]
    exact = all(r.ledger_rows == r.model_calls for r in on)
    lines.append(
        f"ledger exact (model calls = ledger rows) in every metered run: {exact} "
        f"({sum(r.model_calls for r in on)} calls, {sum(r.ledger_rows for r in on)} rows)"
    )
    return lines


def overhead(points: list[Point], users: int, what: str = "last") -> float:
    """HTTP's median over in-process's, at ``users``, for ``first`` or ``last`` token."""
    by_mode = {p.mode: p for p in points if p.users == users}
    return by_mode["HTTP"].quantile(what, 0.5) / by_mode["in-process"].quantile(what, 0.5)


def summary(points: list[Point]) -> list[str]:
    """The lines that compare the run with the issue's goals."""
    levels = sorted({p.users for p in points})
    lines = []
    for n in levels:
        by_mode = {p.mode: p for p in points if p.users == n}
        first_vs_turn = by_mode["HTTP"].quantile("first", 0.5) / by_mode["in-process"].quantile(
            "last", 0.5
        )
        lines.append(
            f"at {n} users, HTTP / in-process (medians): whole reply {overhead(points, n):.2f}x, "
            f"first token {overhead(points, n, 'first'):.2f}x, HTTP first token / in-process "
            f"turn {first_vs_turn:.2f}x"
        )
    errors = sum(p.errors for p in points)
    leaks = sum(p.leaks for p in points)
    lines.append(f"errors: {errors}; cross-user leaks: {leaks}")
    return lines


def plot(points: list[Point], path=None):  # -> matplotlib Figure
    """Median and p95 time to the first and the last token, per mode, against users."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, what, title in zip(
        axes, ("first", "last"), ("first token", "whole reply"), strict=True
    ):
        for mode, style in zip(MODES, ("-o", "--s"), strict=True):
            mine = sorted((p for p in points if p.mode == mode), key=lambda p: p.users)
            users = [p.users for p in mine]
            ax.plot(users, [p.quantile(what, 0.5) for p in mine], style, label=f"{mode} median")
            ax.plot(users, [p.quantile(what, 0.95) for p in mine], style, alpha=0.4, label="p95")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("users at once")
        ax.set_title(f"time to {title}")
    axes[0].set_ylabel("milliseconds")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


if __name__ == "__main__":  # the load generator: the users on stdin, the samples on stdout
    order = json.load(sys.stdin)
    print(json.dumps(asyncio.run(_callers(order["url"], order["users"], order["turns"]))))
