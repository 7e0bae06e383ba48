"""nginx in front of the instances: its configuration written under a run folder, the server run
under the guard (it dies with this process), a reload to take an instance out or put it back, and
its access log read back (which instance each request went to, and when).

Nothing is written to the system's paths: ``-p`` (prefix), ``-c`` (configuration) and ``-e`` (the
error log before the configuration is read) point into the run folder, and so do the pid file,
the temporary folders and the logs.

What open-source nginx knows of a dead instance it learns passively: a connection refused or a
timeout counts as a failure (``max_fails`` within ``fail_timeout`` take the instance out for
``fail_timeout``, then one request tries it again). It has no active health checks (NGINX Plus
has), so the fleet's controller polls each instance's ``/ready`` and reloads nginx with the dead
one marked ``down`` (what Kubernetes' readiness probe does for a Service).

Which requests nginx may pass to another instance: ``proxy_next_upstream error timeout`` retries a
request whose connection failed before it was sent (a refused connect), and GET/PUT/DELETE on an
error or timeout. Never ``non_idempotent``: a POST that reached an instance may have started a
turn, and running it again on another instance would run it twice. Only a send that carries an
``Idempotency-Key`` is safe to retry, and the client does that itself (the service replays the
first outcome of the key); a send refused with 503 ``draining`` never ran, so it is safe too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from helpers.fleet.ports import free_port
from helpers.runtime.logs import log_tail
from helpers.runtime.server import GUARD, stop_guard

START_TIMEOUT_S = 10.0
INSTALL_HINT = "nginx is not installed: apt-get install nginx-light (Debian/Ubuntu)"
LOG_FORMAT = "$msec $request_time $status $request_method $uri [$upstream_addr]"


class NginxError(RuntimeError):
    """nginx is missing, refused its configuration, or did not start; the message says which."""


def find_nginx() -> str | None:
    """Debian's ``/usr/sbin/nginx`` (not on a non-root PATH), else the one on PATH."""
    for candidate in ("/usr/sbin/nginx", shutil.which("nginx")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@dataclass
class Access:
    """One request as nginx logged it: when it began and ended (UNIX time), where it went."""

    start: float
    end: float
    status: int
    method: str
    uri: str
    upstreams: list[str]  # every instance tried, in order ("a:1, b:2" when passed on)


@dataclass
class Settings:
    """The proxy's limits; every wait has one."""

    max_fails: int = 1
    fail_timeout_s: float = 5.0
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 75.0  # longer than the service's SSE ping (15 s)
    send_timeout_s: float = 30.0
    next_upstream_tries: int = 3
    next_upstream_timeout_s: float = 10.0
    keepalive: int = 32  # idle connections kept open to the instances, per worker
    workers: int = 1


@dataclass
class Nginx:
    """nginx on ``host:port`` proxying to ``upstreams`` (``host:port`` each)."""

    folder: Path
    upstreams: list[str]
    host: str = "127.0.0.1"
    port: int = 0
    settings: Settings = field(default_factory=Settings)
    down: set[str] = field(default_factory=set)
    _guard: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _finalizer: weakref.finalize | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def conf(self) -> Path:
        return self.folder / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.folder / "access.log"

    @property
    def error_log(self) -> Path:
        return self.folder / "error.log"

    def start(self) -> Nginx:
        """Write the configuration, test it, start nginx; return once it accepts connections."""
        binary = find_nginx()
        if binary is None:
            raise NginxError(INSTALL_HINT)
        (self.folder / "temp").mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self._write()
        self._nginx("-t")
        self._guard = subprocess.Popen(
            [sys.executable, str(GUARD), str(self.folder / "nginx.out"), "--", *self._base()],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._finalizer = weakref.finalize(self, stop_guard, self._guard, None)
        self._wait_listening(time.monotonic() + START_TIMEOUT_S)
        return self

    def set_down(self, upstream: str, down: bool) -> bool:
        """Take ``upstream`` out of the proxy (``down``) or put it back; reload if that changed."""
        if (upstream in self.down) == down:
            return False
        (self.down.add if down else self.down.discard)(upstream)
        self.reload()
        return True

    def reload(self) -> None:
        """Write the configuration again and ``nginx -s reload`` (new workers take it; old ones
        finish the requests they carry, streams included, then exit). Returns once the new
        workers run and the old ones take no new request: ``-s reload`` only signals the master,
        and until it has started new workers the old ones go on sending to the old list."""
        before = self.workers()
        self._write()
        self._nginx("-s", "reload")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            now = self.workers()
            old_quitting = all("shutting down" in now.get(pid, "shutting down") for pid in before)
            if set(now) - set(before) and old_quitting:
                return
            time.sleep(0.02)
        raise NginxError(f"nginx's new workers did not take over in {START_TIMEOUT_S:.0f} s")

    def workers(self) -> dict[int, str]:
        """nginx's worker processes now: pid -> title (an old one's ends "is shutting down")."""
        try:
            master = int((self.folder / "nginx.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return {}
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    found[int(entry.name)] = title.strip()
            except (OSError, ValueError, IndexError):
                continue
        return found

    def accesses(self) -> list[Access]:
        """Every request in the access log so far."""
        found = []
        if not self.access_log.exists():
            return found
        for line in self.access_log.read_text(errors="replace").splitlines():
            head, _, tail = line.partition(" [")
            parts = head.split()
            if len(parts) < 5:
                continue
            end, took = float(parts[0]), float(parts[1])
            ups = [u.strip() for u in tail.rstrip("]").split(",")]
            ups = [u for u in ups if u and u != "-"]
            found.append(Access(end - took, end, int(parts[2]), parts[3], parts[4], ups))
        return found

    def stop(self) -> None:
        """Stop nginx (safe to call twice)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.error_log, lines)

    def _base(self) -> list[str]:
        prefix, binary = str(self.folder) + "/", find_nginx() or "nginx"
        return [binary, "-p", prefix, "-c", str(self.conf), "-e", str(self.error_log)]

    def _nginx(self, *args: str) -> None:
        done = subprocess.run(
            [*self._base(), *args], capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
        if done.returncode != 0:
            raise NginxError(f"nginx {' '.join(args)} failed:\n{done.stderr.strip()[-2000:]}")

    def _write(self) -> None:
        self.conf.write_text(config(self))

    def _wait_listening(self, deadline: float) -> None:
        import socket

        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                pass
            if self._guard is not None and self._guard.poll() is not None:
                raise NginxError(f"nginx exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise NginxError(f"nginx did not listen in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)


def config(proxy: Nginx) -> str:
    """The whole configuration: one upstream of the instances, one server proxying to it."""
    s, folder = proxy.settings, proxy.folder
    servers = "\n".join(
        f"        server {u} max_fails={s.max_fails} fail_timeout={s.fail_timeout_s:g}s"
        f"{' down' if u in proxy.down else ''};"
        for u in proxy.upstreams
    )
    temps = "\n".join(
        f"    {kind}_temp_path {folder}/temp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# Written by helpers/fleet/nginx.py for one run; not a system configuration.
daemon off;
master_process on;
worker_processes {s.workers};
worker_shutdown_timeout 90s;  # a reload's old workers end their streams, then exit
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    log_format fleet '{LOG_FORMAT}';
    access_log {folder}/access.log fleet;
{temps}
    upstream instances {{
{servers}
        keepalive {s.keepalive};
    }}
    server {{
        listen {proxy.host}:{proxy.port};
        client_max_body_size 1m;
        # nginx's own failures (no instance could take the request) in the service's JSON form.
        error_page 502 504 =503 @unavailable;
        location @unavailable {{
            default_type application/json;
            add_header Retry-After 1 always;
            return 503 '{{"error": "unavailable", "message": "no instance answered: retry"}}';
        }}
        location / {{
            proxy_pass http://instances;
            proxy_http_version 1.1;          # keep-alive to the instances
            proxy_set_header Connection "";  # (HTTP/1.0's "close" would end each one)
            proxy_set_header Host $http_host;
            proxy_buffering off;             # each SSE event goes out as the instance writes it
            proxy_connect_timeout {s.connect_timeout_s:g}s;
            proxy_read_timeout {s.read_timeout_s:g}s;
            proxy_send_timeout {s.send_timeout_s:g}s;
            # Not non_idempotent: a POST that reached an instance may have started a turn. Only
            # a send with an Idempotency-Key is safe to retry, and the client does it.
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries {s.next_upstream_tries};
            proxy_next_upstream_timeout {s.next_upstream_timeout_s:g}s;
        }}
    }}
}}
"""
