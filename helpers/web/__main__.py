"""``python -m helpers.web``: the web backend on its own, with tokens for the users named.

The tokens are written to a file readable by you alone (never printed); SIGINT or SIGTERM drains
the running turns before the runtime stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal

from helpers.run import TMP, relative, remove_dir, run_dir
from helpers.web.serve import start_web
from helpers.web.service import Settings


async def main(args: argparse.Namespace) -> None:
    folder = run_dir("web")
    web = await start_web(folder, Settings(backend=args.backend), args.host, args.port)
    tokens = {user: web.service.tokens.issue(user) for user in args.users.split(",") if user}
    path = TMP / "web-tokens.json"
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(json.dumps(tokens, indent=1) + "\n")
    print(f"Serving {web.service.backend.describe()} at {web.url}/ (API docs: {web.url}/docs)")
    print(f"Sign-in tokens for {', '.join(tokens)} are in {relative(path)} (yours only).")
    print("Ctrl+C drains the running turns, then stops.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    left = await web.stop(drain=True, timeout=args.drain_s)
    path.unlink(missing_ok=True)
    remove_dir(folder)
    print(f"Stopped ({left} turns cut by the drain's timeout).")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.web", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", default="", help="local, github or byok (default: local)")
    parser.add_argument("--users", default="alice,bob", help="comma-separated user names")
    parser.add_argument("--drain-s", type=float, default=60.0, help="longest wait for turns")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
