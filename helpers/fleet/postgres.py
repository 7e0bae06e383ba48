"""A throwaway PostgreSQL server under ``tmp/``: initdb, start on a free port, restart, remove.

Why not pytest-postgresql, the maintained fixture for this: its ``postgresql_proc`` runs
``pg_ctl initdb`` and ``pg_ctl start`` as the current user, and CI runs as root, which PostgreSQL
refuses ("pg_ctl: cannot be run as root"). It has no option to run them as another user (asked in
its issues #341 and #455, both closed without one: run the tests as a non-root user instead). An
``exec`` wrapper that drops privileges would not be enough either (not tried): its data folder is
made under pytest's temporary folder, which pytest creates readable by its owner only, and
``postgresql_noproc`` only connects to a server started some other way, such as this one. Here,
as root, the cluster is made and served as ``nobody`` through ``setpriv``, in a folder that user
can enter; run by anyone else, as the current user. The server runs under the runtime's guard
(``helpers/runtime/guard.py``), so it dies with the test process, even a killed one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helpers.fleet.ports import free_port
from helpers.run import TMP, relative, writable_dir
from helpers.runtime.logs import log_tail, redact
from helpers.runtime.server import GUARD, STOP_TIMEOUT_S, stop_guard

START_TIMEOUT_S = 30.0
INSTALL_HINT = "PostgreSQL is not installed: apt-get install postgresql (Debian/Ubuntu)"
UNPRIVILEGED = "nobody"
DEBIAN_ROOT = Path("/usr/lib/postgresql")  # Debian's postgresql-NN packages: <NN>/bin


class PostgresNotFound(RuntimeError):
    """No ``initdb``/``postgres`` binaries on PATH or under /usr/lib/postgresql/*/bin."""


class PostgresStartError(RuntimeError):
    """The server did not start; the message quotes the end of its log."""


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: PATH first, then the newest Debian one."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).resolve().parent
    versions = sorted(
        DEBIAN_ROOT.glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for folder in reversed(versions):
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


@dataclass
class PgServer:
    """A running throwaway cluster; ``url`` holds its password (never print it)."""

    url: str = field(repr=False)
    port: int
    root: Path
    hosts: tuple[str, ...] = ("127.0.0.1",)
    _bin_dir: Path | None = field(default=None, repr=False)
    _user: dict[str, object] = field(default_factory=dict, repr=False)
    _guards: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _finalizer: weakref.finalize | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        """True while the server process is up (between ``halt`` and ``resume`` it is not)."""
        return bool(self._guards) and self._guards[-1].poll() is None

    def url_for(self, host: str) -> str:
        """``url`` with ``host`` (one of ``hosts``) in place of the loopback address."""
        return self.url.replace("@127.0.0.1:", f"@{host}:", 1)

    def stop(self) -> None:
        """Stop the server and remove its folder (safe to call twice)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None

    def halt(self, fast: bool = True) -> None:
        """Stop the server process and keep its data (a fault run's "PostgreSQL is away").

        ``fast``: PostgreSQL's fast shutdown (SIGINT: open connections are cut); else SIGKILL of
        the postmaster, a crash, which the next start recovers from its write-ahead log.
        """
        if not self.running:
            return
        main = self.pids()[0]
        os.kill(main, signal.SIGINT if fast else signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT_S + 5
        while self._guards[-1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        stop_guard(self._guards[-1], None)

    def resume(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server again on the same port and data (after ``halt``)."""
        if self.running or self._bin_dir is None:
            return
        with contextlib.suppress(OSError):  # a crash leaves it behind; a new start checks it anyway
            (self.root / "data" / "postmaster.pid").unlink()
        self._guards.append(_launch(self._bin_dir, self.root, self.port, self._user, self.hosts))
        _wait_ready(self.url, self._guards[-1], self.root, time.monotonic() + timeout)

    def restart(self, fast: bool = True, timeout: float = START_TIMEOUT_S) -> None:
        """``halt`` then ``resume``: connections are cut, the data stays."""
        self.halt(fast)
        self.resume(timeout)

    def pids(self) -> list[int]:
        """The postmaster and every process it started (its backends and workers)."""
        main = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
        pids = [main]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == main:
                        pids.append(int(entry.name))
        return pids

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The whole server stopped (SIGSTOP) for the block, woken (SIGCONT) after, on error too."""
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _as_user() -> dict[str, object]:
    """Run as an unprivileged user when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(UNPRIVILEGED)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _default_root(unprivileged: bool) -> Path:
    """A new folder for the cluster: in ``tmp/`` when the server can reach it, else the system's.

    The server's Unix socket lives in this folder (a socket path must stay under ~100 bytes), and
    when we are root the server runs as ``nobody``, which must be able to enter every parent folder
    (a clone under a private home, such as ``/root``, is not).
    """
    name = f"pg-{os.getpid()}-{secrets.token_hex(3)}"
    here = TMP / name
    reachable = not unprivileged or all(
        p.stat().st_mode & 0o001 for p in [TMP, *TMP.parents] if p.exists()
    )
    if reachable and len(str(here)) + len("/.s.PGSQL.65535") < 100:
        return here
    return Path(tempfile.mkdtemp(prefix=f"copilot-tutorial-{name}-"))


@contextlib.contextmanager
def database_for_bench() -> Iterator[str]:
    """A benchmark's PostgreSQL: ``DATABASE_URL``, else a throwaway server for the block, else
    ``""`` (PostgreSQL skipped). Prints which, never the URL (it holds the password)."""
    url, server = os.environ.get("DATABASE_URL", ""), None
    if not url and find_bin_dir() is not None:
        server = start_postgres()
        url = server.url
        print(f"PostgreSQL: a throwaway server in {relative(server.root)}")
    elif not url:
        print("PostgreSQL: skipped (no DATABASE_URL, no binaries: apt-get install postgresql)")
    try:
        yield url
    finally:
        if server is not None:
            server.stop()


def start_postgres(
    root: Path | None = None,
    timeout: float = START_TIMEOUT_S,
    hosts: tuple[str, ...] = ("127.0.0.1",),
    clients: tuple[str, ...] = (),
) -> PgServer:
    """Create a cluster in ``root`` (default a new folder in ``tmp/``) and start it.

    Args:
        root: A folder of its own for the cluster; removed again by ``stop()``.
        timeout: Seconds to wait for the server to accept connections.
        hosts: The addresses it listens on (loopback first, then, for example, this machine's
            side of a network namespace's link).
        clients: Addresses besides loopback let in (with the password), each on its own.

    Returns:
        The server; ``url`` is ``postgresql://postgres:<password>@127.0.0.1:<port>/tutorial``.

    Raises:
        PostgresNotFound: no binaries (the message says how to install them).
        PostgresStartError: initdb or the server failed; the message quotes the log.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresNotFound(INSTALL_HINT)
    user = _as_user()
    root = Path(root or _default_root(bool(user)))
    writable_dir(root)
    if user:
        os.chown(root, user["user"], user["group"])  # type: ignore[arg-type]
    password = secrets.token_urlsafe(18)
    server = PgServer(url="", port=0, root=root, hosts=tuple(hosts), _bin_dir=bin_dir, _user=user)
    server._finalizer = weakref.finalize(server, _stop, server._guards, root)
    try:
        _initdb(bin_dir, root, password, user, clients)
        server.port = free_port()
        server._guards.append(_launch(bin_dir, root, server.port, user, hosts))
        base = f"postgresql://postgres:{password}@127.0.0.1:{server.port}"
        _wait_ready(f"{base}/postgres", server._guards[-1], root, time.monotonic() + timeout)
        _create_database(f"{base}/postgres", "tutorial")
        server.url = f"{base}/tutorial"
    except BaseException:
        server.stop()
        raise
    return server


def _initdb(
    bin_dir: Path, root: Path, password: str, user: dict[str, object], clients: tuple[str, ...]
) -> None:
    pwfile = root / "pwfile"
    pwfile.write_text(password)
    if user:
        os.chown(pwfile, user["user"], user["group"])  # type: ignore[arg-type]
    pwfile.chmod(0o600)
    done = subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(root / "data"),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(root),
        **user,  # type: ignore[arg-type]
    )
    pwfile.unlink()
    if done.returncode != 0:
        tail = redact("\n".join((done.stdout + done.stderr).splitlines()[-15:]), [password])
        raise PostgresStartError(f"initdb failed (exit code {done.returncode}):\n{tail}")
    with (root / "data" / "pg_hba.conf").open("a") as hba:
        for client in clients:
            hba.write(f"host all all {client}/32 scram-sha-256\n")


def _launch(
    bin_dir: Path,
    root: Path,
    port: int,
    user: dict[str, object],
    hosts: tuple[str, ...] = ("127.0.0.1",),
) -> subprocess.Popen[bytes]:
    log = root / "server.log"
    log.touch()
    if user:
        os.chown(log, user["user"], user["group"])  # type: ignore[arg-type]
    command = [
        str(bin_dir / "postgres"),
        "-D",
        str(root / "data"),
        "-p",
        str(port),
        "-c",
        f"listen_addresses={','.join(hosts)}",
        "-c",
        f"unix_socket_directories={root}",
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
    ]
    if user:  # the guard stays ours; only the server drops to the unprivileged user
        ids = [f"--reuid={user['user']}", f"--regid={user['group']}", "--clear-groups"]
        command = [_setpriv(), *ids, "--", *command]
    return subprocess.Popen(
        [sys.executable, str(GUARD), str(log), "--", *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=str(root),
    )


def _setpriv() -> str:
    found = shutil.which("setpriv")
    if found is None:
        raise PostgresStartError("running as root needs `setpriv` (util-linux) to drop privileges")
    return found


def _wait_ready(url: str, guard: subprocess.Popen[bytes], root: Path, deadline: float) -> None:
    import psycopg

    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            pass
        if guard.poll() is not None or time.monotonic() > deadline:
            why = "exited" if guard.poll() is not None else "did not accept connections in time"
            tail = log_tail(root / "server.log", 15)
            raise PostgresStartError(f"the PostgreSQL server {why}:\n{tail}")
        time.sleep(0.1)


def _create_database(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {name}")


def _stop(guards: list[subprocess.Popen[bytes]], root: Path) -> None:
    """Stop the server through its guard (a clean shutdown can take a while), then remove root."""
    for guard in guards:
        stop_guard(guard, None, grace=STOP_TIMEOUT_S + 5)
    shutil.rmtree(root, ignore_errors=True)
