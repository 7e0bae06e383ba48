"""What several test files share, written once: the wait limit, a free port, a client, the
runtimes started from this checkout. (pytest puts tests/ on sys.path: ``from support import …``.)
"""

from __future__ import annotations

import socket
from pathlib import Path

from copilot import CopilotClient, RuntimeConnection

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # seconds: the longest a test waits for one reply

# Debian's Chromium, driven by Playwright (no browser download), with the flags this closed
# network needs: no background connections, no sync, no QUIC; a fresh profile per launch.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port() -> int:
    """A loopback TCP port nothing listens on (free when asked; bind it soon)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def client_for(url: str, token: str | None) -> CopilotClient:
    """A client of the runtime at ``url`` presenting ``token`` (``server.connect()`` for ours)."""
    connection = RuntimeConnection.for_uri(url, connection_token=token)
    return CopilotClient(mode="empty", connection=connection)


def our_runtime_processes() -> list[str]:
    """Command lines of headless runtimes started from this checkout."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "--headless" in cmd and str(REPO_ROOT) in cmd:
            found.append(f"{entry.name}: {cmd.strip()}")
    return found
