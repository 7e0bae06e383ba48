"""One instance of the web service as its own process (``python -m helpers.web``), with its own
port, data folder and runtime home, run under the guard so it dies with this process; in a network
namespace when given one (``ip netns exec``)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from helpers.run import REPO_ROOT
from helpers.runtime.logs import log_tail
from helpers.runtime.server import GUARD, stop_guard

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0


class InstanceError(RuntimeError):
    """An instance did not start or stop; the message quotes the end of its log."""


@dataclass
class Instance:
    """``python -m helpers.web`` on ``host:port`` with ``folder`` (its data, tokens and log)."""

    name: str
    host: str
    port: int
    folder: Path
    args: list[str]  # the service's other flags (users, schema, lease TTL, drain)
    env: dict[str, str] = field(repr=False)
    netns: str = ""
    version: str = "v1"
    pid: int = 0
    started_at: float = 0.0
    died_at: float = 0.0
    _guard: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def upstream(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.upstream}"

    @property
    def log(self) -> Path:
        return self.folder / "service.log"

    @property
    def running(self) -> bool:
        return self._guard is not None and self._guard.poll() is None

    def command(self) -> list[str]:
        """The command line (no secret on it: ``DATABASE_URL`` goes in the environment)."""
        service = [sys.executable, "-m", "helpers.web", "--host", self.host, "--port"]
        service += [str(self.port), "--instance", self.name, "--data", str(self.folder / "data")]
        service += ["--tokens-file", str(self.folder / "tokens.json")]
        service += ["--version-label", self.version, *self.args]
        return ["ip", "netns", "exec", self.netns, *service] if self.netns else service

    def launch(self) -> None:
        """Start the process under its guard (``wait_ready`` waits for it to serve)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            log.write(f"--- start {self.name} {self.version} at {time.strftime('%H:%M:%S')}\n")
        self._guard = subprocess.Popen(
            [sys.executable, str(GUARD), str(self.log), "--", *self.command()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
            cwd=str(REPO_ROOT),
        )
        self.pid, self.died_at = _read_pid(self._guard), 0.0
        self.started_at = time.time()

    async def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until ``/ready`` answers 200 on the instance itself."""
        import asyncio

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                if not self.running:
                    raise InstanceError(f"{self.name} exited at start:\n{self.log_tail()}")
                try:
                    if (await http.get(f"{self.url}/ready")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise InstanceError(f"{self.name} not ready in {timeout:.0f} s")
                await asyncio.sleep(0.2)

    def tokens(self) -> dict[str, str]:
        """The sign-in tokens this instance issued for ``--users`` (a file readable by us only)."""
        return json.loads((self.folder / "tokens.json").read_text())

    def kill(self) -> float:
        """``kill -9`` of the service (its runtime dies with it, through its own guard)."""
        os.kill(self.pid, signal.SIGKILL)
        self.died_at = time.time()
        if self._guard is not None:
            self._guard.wait(STOP_TIMEOUT_S)
        return self.died_at

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the service alone (it drains its turns, then stops its runtime); wait."""
        if not self.running:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            assert self._guard is not None
            self._guard.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.stop()

    def stop(self) -> None:
        """Through the guard: its process group gets SIGTERM, then SIGKILL."""
        stop_guard(self._guard, None, grace=15.0)
        self._guard = None

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)


def _read_pid(guard: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    assert guard.stdout is not None
    ready, _, _ = select.select([guard.stdout], [], [], timeout)
    line = guard.stdout.readline().decode().strip() if ready else ""
    guard.stdout.close()
    if not line.isdigit():
        stop_guard(guard, None)
        raise InstanceError("the instance's process could not be started")
    return int(line)
