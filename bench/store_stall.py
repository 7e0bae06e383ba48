"""PostgreSQL frozen (SIGSTOP) under load: the web service's answers while it stalls, and after.

Starts a throwaway PostgreSQL (always: this script freezes it, so never a server of yours) and the
web service in this process, runs USERS
users each sending turns and listing their conversations, freezes the database for STALL_S
seconds, wakes it, and prints: requests made, failed during the stall (each 503 ``store_down``),
the longest any answer took during the stall, time to the first 503, time from the wake-up to the
first turn stored again, and turns lost or doubled (each turn's text is unique, so the stored
history says which).

    .venv/bin/python bench/store_stall.py --stall-s 20 --users 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the throwaway server
from pg_server import start_postgres  # noqa: E402

from helpers.run import remove_dir, run_dir  # noqa: E402
from helpers.web.serve import start_web  # noqa: E402
from helpers.web.service import Settings  # noqa: E402


async def user(url: str, token: str, name: str, until: float, log: list[tuple]) -> list[str]:
    """Send turns until ``until``; log (start, end, kind, ok); return the texts reported done."""
    done: list[str] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as http:
        cid = (await http.post("/conversations")).json()["id"]
        turn = 0
        while time.monotonic() < until:
            turn += 1
            text = f"Remember: {name} turn {turn}."
            started = time.monotonic()
            try:
                reply = await http.post(f"/conversations/{cid}/messages", json={"text": text})
                ok = reply.status_code == 200 and "event: message" in reply.text
            except httpx.HTTPError:
                ok = False
            log.append((started, time.monotonic(), "send", ok))
            if ok:
                done.append(text)
            started = time.monotonic()
            try:
                listed = await http.get("/conversations")
                log.append((started, time.monotonic(), "list", listed.status_code == 200))
            except httpx.HTTPError:
                log.append((started, time.monotonic(), "list", False))
            await asyncio.sleep(0.1)
        history = (await http.get(f"/conversations/{cid}/messages")).json()["messages"]
    stored = [m["text"] for m in history if m["role"] == "user"]
    lost = [t for t in done if t not in stored]
    doubled = [t for t in set(stored) if stored.count(t) > 1]
    return [f"lost:{t}" for t in lost] + [f"doubled:{t}" for t in doubled]


async def main(args: argparse.Namespace) -> None:
    server = start_postgres()
    os.environ["DATABASE_URL"] = server.url
    folder = run_dir("store-stall")
    web = await start_web(folder, Settings(schema=f"stall_{secrets.token_hex(3)}"))
    try:
        tokens = [await web.service.tokens.issue(f"u{n}") for n in range(args.users)]
        log: list[tuple] = []
        start = time.monotonic()
        until = start + args.before_s + args.stall_s + args.after_s
        users = [
            asyncio.ensure_future(user(web.url, t, f"u{n}", until, log))
            for n, t in enumerate(tokens)
        ]
        await asyncio.sleep(args.before_s)
        frozen = server.frozen()
        frozen.__enter__()
        froze = time.monotonic()
        await asyncio.sleep(args.stall_s)
        frozen.__exit__(None, None, None)
        woke = time.monotonic()
        problems = sum(await asyncio.gather(*users), [])
        during = [e for e in log if e[0] >= froze and e[0] < woke]
        first_503 = min((e[1] - froze for e in during if not e[3]), default=float("nan"))
        back = min((e[1] - woke for e in log if e[2] == "send" and e[3] and e[0] >= woke),
                   default=float("nan"))  # fmt: skip
        print(f"requests {len(log)}; during the {args.stall_s:.0f} s stall: {len(during)}, "
              f"failed {sum(1 for e in during if not e[3])}")  # fmt: skip
        longest = max((e[1] - e[0] for e in during), default=0.0)
        print(f"longest answer during the stall: {longest:.2f} s")
        print(f"first 503 {first_503:.2f} s after the freeze; a turn stored again "
              f"{back:.2f} s after the wake-up")  # fmt: skip
        print(f"turns lost {sum(p.startswith('lost') for p in problems)}, "
              f"doubled {sum(p.startswith('doubled') for p in problems)}")  # fmt: skip
    finally:
        await web.stop(drain=False)
        remove_dir(folder)
        server.stop()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--stall-s", type=float, default=20.0)
    parser.add_argument("--before-s", type=float, default=3.0)
    parser.add_argument("--after-s", type=float, default=8.0)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
