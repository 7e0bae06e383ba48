"""Probe: what the runtime's ``--session-idle-timeout`` does to long-lived sessions (a script).

    .venv/bin/python tests/probe_idle_timeout.py [idle s, default 20] [watch s, default 150]

Starts the runtime with the option, on the peer model (tests/peer_model.py), creates two sessions
in the runtime's home (one kept open by its client, one disconnected), then every 15 s prints
which sessions ``list_sessions()`` reports and which session folders exist; at the end it prints
the events the open session received, and whether each session still answers with its history.
Notebook 03 (Idle sessions) quotes what it printed.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from copilot import CopilotClient, RuntimeConnection
from peer_model import PeerModel

from helpers.model.backends import choose_backend
from helpers.run import TMP, remove_dir
from helpers.runtime.server import find_runtime


async def probe(idle_s: int, watch_s: int) -> None:
    with PeerModel() as peer:
        backend = choose_backend("byok", env=peer.env())
        home = remove_dir(TMP / "probe-idle-timeout")
        env = dict(os.environ, **backend.server_env, COPILOT_HOME=str(home))
        command = [str(find_runtime()), "--headless", "--port", "0", "--no-auto-update"]
        command += ["--session-idle-timeout", str(idle_s)]
        with open(TMP / "probe-idle-timeout.log", "w") as log:
            runtime = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=log, text=True
            )
        try:
            port = next(
                m.group(1) for line in runtime.stdout if (m := re.search(r"port (\d+)", line))
            )
            await watch(port, home, backend.session_kwargs(), watch_s)
        finally:
            runtime.terminate()
            runtime.wait(10)
            remove_dir(home)


async def watch(port: str, home: Path, kwargs: dict, watch_s: int) -> None:
    options = dict(available_tools=[], **kwargs)
    seen: list[tuple[float, str]] = []
    connection = RuntimeConnection.for_uri(f"127.0.0.1:{port}")
    async with CopilotClient(mode="empty", connection=connection) as client:
        kept = await client.create_session(session_id="kept-open", **options)
        start = time.monotonic()
        kept.on(lambda e: seen.append((round(time.monotonic() - start, 1), str(e.type.value))))
        await kept.send_and_wait("Remember: the codename is LYNX-3.", timeout=30)
        gone = await client.create_session(session_id="disconnected", **options)
        await gone.send_and_wait("Remember: the codename is OWL-9.", timeout=30)
        await gone.disconnect()
        taught = len(seen)
        for waited in range(15, watch_s + 1, 15):
            await asyncio.sleep(15)
            listed = sorted(m.session_id for m in await client.list_sessions())
            folders = sorted(p.name for p in (home / "session-state").glob("[!.]*"))
            print(f"{waited:4d} s: listed {listed}, folders {folders}", flush=True)
        print("events of the open session after its turn:", seen[taught:] or "none")
        reply = await kept.send_and_wait("What is the codename?", timeout=30)
        print("the open session answers:", reply.data.content if reply else None)
        for session_id in ("kept-open", "disconnected"):
            try:
                again = await client.resume_session(session_id, **options)
                reply = await again.send_and_wait("What is the codename?", timeout=30)
                print(f"resume {session_id}: {reply.data.content if reply else None}")
                await again.disconnect()
            except Exception as exc:  # what the runtime says is the result
                print(f"resume {session_id} failed: {exc}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(probe(*(args + [20, 150][len(args) :])))
