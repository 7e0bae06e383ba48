"""Faults under load, as an operator meets them: what users of the web service saw, per fault.

    .venv/bin/python bench/web_faults.py                      # every fault, 8 users
    .venv/bin/python bench/web_faults.py --faults pg-freeze --users 4
    .venv/bin/python bench/web_faults.py --faults kill --engine sqlite --users 2 --seconds 6

The service runs as an operator runs it (``python -m helpers.web``, its own process, its data in a
folder of its own); the users are this process, over HTTP. Each user sends turns to a conversation
of their own, one after another, each send with an ``Idempotency-Key``; a send that fails (a 503, a
refused connection, a stream cut) is retried with the same key until it succeeds. Faults:

- ``restart``: SIGTERM (drain), then the same command again on the same data;
- ``kill``: ``kill -9`` of the service mid-stream (its runtime dies with it), then started again;
- ``pg-freeze``: PostgreSQL stopped with SIGSTOP for ``--freeze-s`` seconds, then SIGCONT;
- ``runtime-freeze``: the Copilot runtime stopped with SIGSTOP past the lease's TTL, then SIGCONT.

Per fault it prints the requests that failed, the time from the fault to the first refusal, the
time from the fault's end to the first turn served again, the longest any one request took, and,
from every conversation's stored history read back at the end: turns lost (reported done and not
stored with a reply), turns doubled (one message answered twice), cut (a message a killed process
stored without its reply; the retry answers it as a turn of its own) and forks (answered turns
out of the order sent). The service's log of each run is kept as
``tmp/web-faults-<fault>-<engine>.log``.
Goals: 0 lost, 0 doubled, 0 forks; a refusal within 5 s; recovery within 15 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the throwaway server
from pg_server import database_for_bench  # noqa: E402
from support import free_port  # noqa: E402

from helpers.run import TMP, remove_dir, run_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
START_S = 60.0
REQUEST_S = 60.0
LEASE_TTL_S = 6.0
READY_LINE = "Ctrl+C drains"  # what the service prints once it serves and the tokens are written
FAULTS = ("restart", "kill", "pg-freeze", "runtime-freeze")


def _die_with_parent() -> None:
    """In the child: be killed when this script dies, even by ``kill -9`` (Linux's PDEATHSIG);
    the service's runtime then dies with it (its guard)."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Instance:
    """``python -m helpers.web`` on a port and a data folder of its own, as an operator runs it."""

    def __init__(self, data: Path, users: list[str], database_url: str, schema: str) -> None:
        self.data, self.users, self.port, self.schema = data, users, free_port(), schema
        self.env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data.parent / f"{data.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> dict[str, str]:
        """Start it; return each user's token once it is ready."""
        command = [
            sys.executable, "-m", "helpers.web", "--port", str(self.port), "--data", str(self.data),
            "--users", ",".join(self.users), "--lease-ttl-s", str(LEASE_TTL_S), "--instance", "a",
            "--tokens-file", str(self.data.parent / "tokens.json"), "--schema", self.schema,
        ]  # fmt: skip
        started = self.log.read_text(errors="replace").count(READY_LINE) if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited at start: see {self.log}")
            if self.log.read_text(errors="replace").count(READY_LINE) > started:
                return self.tokens()  # written before the line
            time.sleep(0.2)
        raise TimeoutError(f"the service was not ready in {START_S:.0f} s: see {self.log}")

    def tokens(self) -> dict[str, str]:
        return json.loads((self.data.parent / "tokens.json").read_text())

    def runtime_pids(self) -> list[int]:
        """The Copilot runtime's processes: descendants of the service named copilot."""
        found, todo = [], [self.process.pid] if self.process else []
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                tasks = Path(f"/proc/{pid}/task").glob("*/children")  # threads start children too
                children = " ".join(t.read_text() for t in tasks)
                for child in map(int, children.split()):
                    todo.append(child)
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                    if b"copilot" in cmd and b"guard" not in cmd:
                        found.append(child)
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@dataclass
class Attempt:
    at: float
    user: str
    text: str
    ok: bool
    why: str = ""
    took: float = 0.0


@dataclass
class Load:
    """Users sending turns until ``stop``; every attempt recorded with its time."""

    url: str
    tokens: dict[str, str]
    attempts: list[Attempt] = field(default_factory=list)
    sent: dict[str, list[str]] = field(default_factory=dict)  # user -> texts, in order
    done: dict[str, list[str]] = field(default_factory=dict)  # user -> texts reported done
    conversations: dict[str, str] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    t0: float = field(default_factory=time.monotonic)

    async def run(self) -> None:
        await asyncio.gather(*(self._user(user) for user in self.tokens))

    async def _user(self, user: str) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=REQUEST_S) as http:
            while user not in self.conversations:
                with contextlib.suppress(httpx.HTTPError, KeyError):
                    made = await http.post("/conversations")
                    if made.status_code == 201:
                        self.conversations[user] = made.json()["id"]
                        break
                await asyncio.sleep(0.5)
            turn = 0
            while not self.stop.is_set():
                turn += 1
                text = f"{user} turn {turn}: reply with one short sentence."
                self.sent.setdefault(user, []).append(text)
                key = uuid.uuid4().hex
                while True:  # the same key until it is served (or the run ends)
                    began = time.monotonic()
                    try:  # SSE pings keep a stalled stream alive: bound the whole send
                        ok, why = await asyncio.wait_for(
                            self._send(http, self.conversations[user], text, key), REQUEST_S
                        )
                    except TimeoutError:
                        ok, why = False, f"no end in {REQUEST_S:.0f} s"
                    now = time.monotonic()
                    self.attempts.append(Attempt(now - self.t0, user, text, ok, why, now - began))
                    if ok:
                        self.done.setdefault(user, []).append(text)
                        break
                    if self.stop.is_set() and why != "connection_refused":
                        break
                    await asyncio.sleep(0.5)

    async def _send(
        self, http: httpx.AsyncClient, conversation: str, text: str, key: str
    ) -> tuple[bool, str]:
        path = f"/conversations/{conversation}/messages"
        try:
            async with http.stream(
                "POST", path, json={"text": text}, headers={"Idempotency-Key": key}
            ) as response:
                if response.status_code != 200:
                    body = json.loads(await response.aread() or b"{}")
                    return False, f"{response.status_code} {body.get('error', '')}"
                last = ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        last = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and last == "error":
                        return False, json.loads(line[5:]).get("error", "error")
                return (last == "message"), ("" if last == "message" else "no final message")
        except httpx.ConnectError:
            return False, "connection_refused"
        except httpx.HTTPError as exc:
            return False, type(exc).__name__


def check_histories(load: Load, histories: dict[str, list[dict[str, str]]]) -> dict[str, int]:
    """Lost, doubled, cut and forked turns, from what each user sent against what was stored.

    A turn is a user message with the reply right after it. Lost: reported done, no such turn.
    Doubled: one message answered twice. Cut: a message stored without a reply (a process killed
    mid-turn; its retry is answered as a turn of its own). Fork: answered turns out of the order
    sent, or a reply with no message before it.
    """
    lost = doubled = cut = forks = 0
    for user, texts in load.sent.items():
        messages = histories.get(user, [])
        nexts = [*messages[1:], {"role": "end", "text": ""}]
        answered = [m["text"] for m, n in zip(messages, nexts, strict=True)
                    if m["role"] == "user" and n["role"] == "assistant"]  # fmt: skip
        said = [m["text"] for m in messages if m["role"] == "user"]
        doubled += sum(answered.count(t) - 1 for t in set(answered))
        cut += len(said) - len(answered)
        lost += sum(1 for t in load.done.get(user, []) if t not in answered)
        order = [t for t in texts if t in answered]
        orphan_replies = sum(
            1 for p, m in zip([{"role": ""}, *messages], messages, strict=False)
            if m["role"] == "assistant" and p["role"] != "user"
        )  # fmt: skip
        if list(dict.fromkeys(answered)) != order or orphan_replies:
            forks += 1
    return {"lost": lost, "doubled": doubled, "cut": cut, "forks": forks}


def pg_pids(database_url: str) -> list[int]:
    """The throwaway PostgreSQL's processes (the postmaster on this port and its children)."""
    port = re.search(r":(\d+)/", database_url)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if cmd and cmd[0].endswith(b"postgres") and port and port.group(1).encode() in cmd:
                found.append(int(proc.name))
    kids = []
    for pid in found:
        with contextlib.suppress(OSError):
            kids += map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    return found + kids


async def run_fault(fault: str, users: int, seconds: float, freeze_s: float, url: str) -> dict:
    """One fault on a fresh service and data folder; what users saw, and what was stored."""
    folder = run_dir(f"faults-{fault}")
    schema = f"faults_{fault.replace('-', '_')}_{os.getpid()}"
    instance = Instance(folder / "data", [f"user{i}" for i in range(users)], url, schema)
    try:
        for _ in range(3):  # another process may take the free port before the service binds it
            try:
                tokens = instance.start()
                break
            except RuntimeError:
                if "Address already in use" not in instance.log.read_text(errors="replace"):
                    raise
                instance.port = free_port()
        load = Load(instance.url, tokens)
        runner = asyncio.ensure_future(load.run())
        await asyncio.sleep(seconds / 3)
        fault_at = time.monotonic() - load.t0
        if fault in ("restart", "kill"):
            sig = signal.SIGTERM if fault == "restart" else signal.SIGKILL
            await asyncio.to_thread(instance.stop, sig)
            await asyncio.to_thread(instance.start)
        else:
            pids = pg_pids(url) if fault == "pg-freeze" else instance.runtime_pids()
            if not pids:
                raise RuntimeError(f"{fault}: found no process to stop")
            hold = freeze_s if fault == "pg-freeze" else LEASE_TTL_S * 2
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(hold)
            finally:
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)
        end_at = time.monotonic() - load.t0
        await asyncio.sleep(seconds * 2 / 3)
        load.stop.set()
        await asyncio.wait_for(runner, REQUEST_S * 2)
        histories = {}
        async with httpx.AsyncClient(base_url=instance.url, timeout=REQUEST_S) as http:
            for user, conversation in load.conversations.items():
                auth = {"Authorization": f"Bearer {load.tokens[user]}"}
                got = await http.get(f"/conversations/{conversation}/messages", headers=auth)
                histories[user] = got.json()["messages"]
        failed = [a for a in load.attempts if not a.ok]
        refused = [a.at - fault_at for a in failed if a.at >= fault_at]
        served = [a.at - end_at for a in load.attempts if a.ok and a.at >= end_at]
        return {
            "fault": fault,
            "engine": "PostgreSQL" if url else "SQLite",
            "turns": sum(len(v) for v in load.done.values()),
            "failed": len(failed),
            "first_refusal_s": min(refused) if refused else None,
            "recovery_s": min(served) if served else None,
            "codes": sorted({a.why for a in failed}),
            "longest_s": max((a.took for a in load.attempts), default=0.0),
            **check_histories(load, histories),
        }
    finally:
        instance.stop(signal.SIGKILL)
        with contextlib.suppress(OSError):  # the service's own log, for what the table cannot say
            shutil.copy(instance.log, TMP / f"web-faults-{fault}-{'pg' if url else 'sqlite'}.log")
        remove_dir(folder)
        if url:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def show(rows: list[dict]) -> None:
    print(
        f"{'fault':15} {'engine':10} {'turns':>5} {'failed':>6} {'refusal s':>9} "
        f"{'recovery s':>10} {'longest s':>9} {'lost':>4} {'doubled':>7} {'cut':>3} {'forks':>5}"
        "  failures"
    )
    for r in rows:
        first = "-" if r["first_refusal_s"] is None else f"{r['first_refusal_s']:.1f}"
        back = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        print(
            f"{r['fault']:15} {r['engine']:10} {r['turns']:>5} {r['failed']:>6} {first:>9} "
            f"{back:>10} {r['longest_s']:>9.1f} {r['lost']:>4} {r['doubled']:>7} {r['cut']:>3} "
            f"{r['forks']:>5}  "
            f"{', '.join(r['codes'])}"
        )
    met = all(r["lost"] == r["doubled"] == r["forks"] == 0 for r in rows)
    print(f"goal 0 lost, 0 doubled, 0 forks: {'met' if met else 'NOT met'}")


async def main(args: argparse.Namespace) -> bool:
    rows = []
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(database_for_bench()) if args.engine != "sqlite" else ""
        for fault in args.faults.split(","):
            engines = {"sqlite": [""], "postgresql": [url], "both": ["", url]}[args.engine]
            for engine in engines:
                if engine == "" and (fault == "pg-freeze" or args.engine == "postgresql"):
                    continue  # PostgreSQL's fault; or PostgreSQL skipped (no binaries)
                rows.append(await run_fault(fault, args.users, args.seconds, args.freeze_s, engine))
                show(rows[-1:])
    print()
    show(rows)
    return all(r["lost"] == r["doubled"] == r["forks"] == 0 for r in rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--engine", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="load time around each fault")
    parser.add_argument("--freeze-s", type=float, default=20.0)
    sys.exit(0 if asyncio.run(main(parser.parse_args())) else 1)
