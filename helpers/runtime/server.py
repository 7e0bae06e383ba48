"""Run the Copilot runtime as one shared, headless TCP server: start it under its guard, attach to
one by URL, connect clients, stop it."""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from helpers.errors import RuntimeStartError
from helpers.run import LOGS, REPO_ROOT, TMP, relative, writable_dir
from helpers.runtime.binary import find_runtime
from helpers.runtime.logs import log_tail, prune_logs, redact

if TYPE_CHECKING:
    from copilot import CopilotClient

    from helpers.model.backends import Backend

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_PORT_LINE = re.compile(r"listening on port (\d+)")
GUARD = Path(__file__).with_name("guard.py")
_OUR_ENV_NAMES = {"COPILOT_HOME", "COPILOT_CONNECTION_TOKEN"}


@dataclass
class RuntimeServer:
    """A Copilot runtime serving clients over TCP, started by us or attached to by URL."""

    url: str
    command: list[str] = field(default_factory=list)
    token: str | None = field(default=None, repr=False)
    pid: int | None = None
    log_path: Path | None = None
    home: Path | None = None
    startup_seconds: float | None = None
    _guard: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _env: dict[str, str] = field(default_factory=dict, repr=False)
    _binary: Path | None = field(default=None, repr=False)
    _secrets: list[str] = field(default_factory=list, repr=False)
    _added_env: tuple[str, ...] = field(default=(), repr=False)
    _finalizer: weakref.finalize | None = field(default=None, repr=False)

    @property
    def owned(self) -> bool:
        """True when we started this server (and so may stop or restart it)."""
        return self._binary is not None

    @property
    def running(self) -> bool:
        """True while the server process we started is alive."""
        return self._guard is not None and self._guard.poll() is None

    def connection(self):  # -> copilot.UriRuntimeConnection
        """A ``RuntimeConnection.for_uri`` to this server, carrying its token."""
        from copilot import RuntimeConnection

        return RuntimeConnection.for_uri(self.url, connection_token=self.token)

    def connect(self, **options: object) -> CopilotClient:
        """A new client with its own TCP connection to this server, presenting its token.

        ``mode="empty"``: nothing of the runtime's coding-agent set-up (shell, files) is switched on
        unless a session names it, the baseline the SDK's multi-tenancy guide sets for a server
        shared by several users. ``options`` go to ``CopilotClient`` as they are.
        """
        from copilot import CopilotClient, RuntimeConnection

        connection = RuntimeConnection.for_uri(self.url, connection_token=self.token)
        return CopilotClient(mode="empty", connection=connection, **options)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stop the server (if we started it) and wait for it to exit."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._guard = None

    def restart(self, timeout: float = START_TIMEOUT_S) -> RuntimeServer:
        """Stop the server and start a new one with the same binary, home and environment."""
        if not self.owned:
            raise RuntimeError("this server was attached by URL; restart it where it runs")
        self.stop()
        fresh = _launch(self._binary, self._env, self.home, self.token, self._secrets, timeout)  # type: ignore[arg-type]
        self.url, self.pid, self.log_path = fresh.url, fresh.pid, fresh.log_path
        self.command = fresh.command
        self.startup_seconds, self._guard = fresh.startup_seconds, fresh._guard
        self._finalizer = weakref.finalize(self, stop_guard, self._guard, self.pid)
        return self

    def describe(self) -> str:
        """The command line and the environment we set for the server, secret values as ``***``."""
        if not self.owned:
            return f"attached to {self.url}: started elsewhere, its command line is not ours"
        secret_names = {"COPILOT_CONNECTION_TOKEN"}
        secret_values = set(self._all_secrets())
        shown = []
        for name in sorted(_OUR_ENV_NAMES | set(self._added_env)):
            if name not in self._env:
                continue
            value = self._env[name]
            hidden = name in secret_names or value in secret_values or "KEY" in name
            if name in ("COPILOT_HOME", "COPILOT_OTEL_FILE_EXPORTER_PATH"):
                value = relative(Path(value))
            shown.append(f"  {name}={'***' if hidden else value}")
        binary = relative(Path(self.command[0])) if self.command else "?"
        lines = [f"command: {' '.join([binary, *self.command[1:]])}", "environment we set:", *shown]
        return redact("\n".join(lines), self._all_secrets())

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server log, secrets redacted."""
        if self.log_path is None:
            return "(attached server: its log is wherever it was started)"
        return log_tail(self.log_path, lines, self._all_secrets())

    def _all_secrets(self) -> list[str]:
        return [s for s in [self.token, *self._secrets] if s]

    def __enter__(self) -> RuntimeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    backend: Backend | None = None,
    *,
    home: Path | None = None,
    timeout: float = START_TIMEOUT_S,
    env: dict[str, str | None] | None = None,
) -> RuntimeServer:
    """Start the runtime headless on a free loopback port, guarded so it dies with this process.

    Args:
        backend: The model backend: its ``server_env`` goes into the server's environment, its
            ``server_remove_env`` is kept out of it, its ``secret_values`` are redacted from any
            log text we show. ``None``: this process's environment as it is.
        home: ``COPILOT_HOME`` for the server's own state; default ``tmp/copilot-home``.
        timeout: Seconds to wait for the server to announce its port.
        env: More of the server's environment (its telemetry, ``helpers.ops.tracing``); a
            ``None`` value keeps that name out of it.

    Returns:
        The running server; use ``server.connect()``, or ``server.url``/``server.token``.

    Raises:
        RuntimeNotFound: no runtime binary.
        RuntimeStartError: the server exited or stayed silent; the message quotes its log.
    """
    extra_env = dict(backend.server_env) if backend is not None else {}
    remove_env = backend.server_remove_env if backend is not None else ()
    secret_values = list(backend.secret_values) if backend is not None else []
    binary = find_runtime()
    more = {k: v for k, v in (env or {}).items() if v is not None}
    dropped = {k for k, v in (env or {}).items() if v is None}
    server_env = {k: v for k, v in os.environ.items() if k not in remove_env and k not in dropped}
    server_env.update(extra_env)
    server_env.update(more)
    home = Path(home or TMP / "copilot-home").resolve()
    token = secrets.token_urlsafe(24)
    server = _launch(binary, server_env, home, token, secret_values, timeout)
    server._added_env = (*extra_env, *more)
    server._finalizer = weakref.finalize(server, stop_guard, server._guard, server.pid)
    return server


def attach_server(url: str, token: str | None = None) -> RuntimeServer:
    """Describe an already-running server at ``url`` (``host:port``); we will not stop it."""
    if not url:
        raise ValueError("attach_server needs a URL such as 127.0.0.1:4321")
    if token is None:
        token = os.environ.get("COPILOT_CONNECTION_TOKEN") or None
    from helpers.runtime import watchdog

    watchdog.install()
    return RuntimeServer(url=url, token=token)


def _launch(
    binary: Path,
    env: dict[str, str],
    home: Path,
    token: str | None,
    secret_values: list[str],
    timeout: float,
) -> RuntimeServer:
    """Spawn the guard and the server under it; wait for the announced port.

    The SDK's transport stays as shipped: ``transport.install()`` is the caller's visible choice.
    """
    from helpers.runtime import watchdog

    watchdog.install()
    writable_dir(home)
    writable_dir(LOGS)
    log_path = LOGS / f"runtime-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}.log"
    log_path.touch()
    prune_logs(LOGS)  # tmp/logs/ keeps the newest runtime logs only (helpers/runtime/logs.py)
    env = dict(env, COPILOT_HOME=str(home))
    if token:
        env["COPILOT_CONNECTION_TOKEN"] = token
    command = [str(binary), "--headless", "--port", "0", "--no-auto-update"]
    started = time.monotonic()
    guard = subprocess.Popen(
        [sys.executable, str(GUARD), str(log_path), "--", *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=str(REPO_ROOT),
    )
    all_secrets = [s for s in [token, *secret_values] if s]
    try:
        pid = _read_pid(guard, timeout)
        port = _wait_for_port(guard, log_path, started + timeout)
    except RuntimeStartError as exc:
        stop_guard(guard, None)
        raise RuntimeStartError(
            f"{exc}\nLog ({log_path}), last lines:\n{log_tail(log_path, 20, all_secrets)}"
        ) from None
    watchdog.note_runtime(f"127.0.0.1:{port}", log_path)
    return RuntimeServer(
        url=f"127.0.0.1:{port}",
        command=command,
        token=token,
        pid=pid,
        log_path=log_path,
        home=home,
        startup_seconds=time.monotonic() - started,
        _guard=guard,
        _env=env,
        _binary=binary,
        _secrets=secret_values,
    )


def _read_pid(guard: subprocess.Popen[bytes], timeout: float) -> int:
    assert guard.stdout is not None
    ready, _, _ = select.select([guard.stdout], [], [], timeout)
    line = guard.stdout.readline().decode().strip() if ready else ""
    guard.stdout.close()
    if not line.isdigit():
        raise RuntimeStartError("the runtime process could not be started")
    return int(line)


def _wait_for_port(guard: subprocess.Popen[bytes], log_path: Path, deadline: float) -> int:
    while True:
        match = _PORT_LINE.search(log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if guard.poll() is not None:
            raise RuntimeStartError(
                f"the Copilot runtime exited during start-up (exit code {guard.returncode})"
            )
        if time.monotonic() > deadline:
            raise RuntimeStartError("the Copilot runtime did not announce its port in time")
        time.sleep(0.05)


def stop_guard(
    guard: subprocess.Popen[bytes] | None, pid: int | None, grace: float = STOP_TIMEOUT_S
) -> None:
    """Close the guard's stdin so it stops its server; kill it if it takes longer than ``grace``.

    ``pid``, when given, is the server's process group, killed afterwards in case it outlived the
    guard. Used for every server started under ``guard.py`` (the runtime, PostgreSQL).
    """
    if guard is None:
        return
    try:
        if guard.stdin is not None:
            guard.stdin.close()
    except OSError:
        pass
    try:
        guard.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait(timeout=STOP_TIMEOUT_S)
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
