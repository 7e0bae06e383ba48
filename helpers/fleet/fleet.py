"""Several instances of the web service behind nginx, sharing one PostgreSQL: start them, watch
their health, kill one, restart one, deploy them one at a time, stop them all.

Open-source nginx notices a dead instance only when a request to it fails. The fleet's health
controller does what Kubernetes' readiness probe (or an operator's controller) does: it polls each
instance's ``/ready`` every ``check_every_s`` and reloads nginx with a failing instance marked
``down``, and with a recovered one back. A rolling deploy takes each instance out of nginx first,
then SIGTERM (the service drains its turns), starts it again, waits for ``/ready``, puts it back.

Everything is stopped by ``stop()``, by ``weakref.finalize`` when the fleet is collected, and by the
guards when this process dies (each instance, nginx and PostgreSQL run under ``guard.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import httpx

from helpers.fleet.instance import Instance
from helpers.fleet.nginx import Nginx
from helpers.fleet.nginx import Settings as ProxySettings
from helpers.fleet.ports import free_port
from helpers.fleet.postgres import PgServer, start_postgres


@dataclass
class Host:
    """Where an instance runs: a network namespace and its address, and the address of this
    machine's side of the link (PostgreSQL is reached there). The default is loopback, no
    namespace."""

    address: str = "127.0.0.1"
    gateway: str = "127.0.0.1"
    netns: str = ""


@dataclass
class Change:
    """The controller took an instance out of nginx, or put it back (UNIX time)."""

    at: float
    instance: str
    action: str  # "out" or "in"
    why: str


class Fleet:
    """N instances of ``python -m helpers.web`` behind nginx on one database.

    Args:
        folder: A folder of its own (instances' data and logs, nginx's configuration and logs).
        size: How many instances (ignored when ``hosts`` is given: one per host).
        users: The users whose sign-in tokens the first instance issues (``tokens``); the
            instances share the database, so each token works on every instance.
        hosts: One ``Host`` per instance (network namespaces); default loopback.
        lease_ttl_s: How long a stalled turn keeps its conversation's lease.
        check_every_s: How often the controller asks each instance's ``/ready``.
        proxy: nginx's limits (``helpers.fleet.nginx.Settings``).
    """

    def __init__(
        self,
        folder: Path,
        size: int = 2,
        users: list[str] | None = None,
        hosts: list[Host] | None = None,
        lease_ttl_s: float = 10.0,
        check_every_s: float = 0.5,
        check_timeout_s: float = 2.0,
        proxy: ProxySettings | None = None,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.hosts = hosts or [Host() for _ in range(size)]
        self.users = list(users or ["alice", "bob"])
        self.lease_ttl_s, self.check_every_s = lease_ttl_s, check_every_s
        self.check_timeout_s = check_timeout_s
        self.proxy_settings = proxy or ProxySettings()
        self.schema = f"fleet_{os.getpid()}_{secrets.token_hex(3)}"
        self.instances: list[Instance] = []
        self.changes: list[Change] = []
        self.held: set[str] = set()  # instances the controller leaves alone (a deploy has them)
        self.pg: PgServer | None = None
        self.nginx: Nginx | None = None
        self._control: asyncio.Task[None] | None = None
        self._reload = asyncio.Lock()
        self._servers: list[PgServer] = []
        self._proxies: list[Nginx] = []
        self._finalizer = weakref.finalize(
            self, _stop_now, self.instances, self._servers, self._proxies
        )

    @property
    def url(self) -> str:
        """nginx's address: where the users' requests go."""
        assert self.nginx is not None, "start the fleet first"
        return self.nginx.url

    async def start(self) -> Fleet:
        """Start PostgreSQL (unless ``DATABASE_URL`` is set), the instances, nginx, the checks."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            url = os.environ.get("DATABASE_URL", "")
            if not url:
                gateways = tuple(dict.fromkeys(["127.0.0.1", *(h.gateway for h in self.hosts)]))
                clients = tuple(h.address for h in self.hosts if h.netns)
                self.pg = await asyncio.to_thread(start_postgres, None, 30.0, gateways, clients)
                self._servers.append(self.pg)
            for k, host in enumerate(self.hosts, 1):
                self.instances.append(self._instance(k, host, url))
            await asyncio.gather(*(self._launch(i) for i in self.instances))
            ups = [i.upstream for i in self.instances]
            self.nginx = Nginx(self.folder / "nginx", ups, settings=self.proxy_settings)
            await asyncio.to_thread(self.nginx.start)
            self._proxies.append(self.nginx)
            self._control = asyncio.ensure_future(self._controller())
        except BaseException:
            await self.stop()
            raise
        return self

    def tokens(self) -> dict[str, str]:
        """Each user's sign-in token (issued once by the first instance; valid on all)."""
        return self.instances[0].tokens()

    def kill(self, index: int) -> float:
        """``kill -9`` of instance ``index`` (its runtime dies with it); return when (UNIX time)."""
        return self.instances[index].kill()

    async def restart(self, index: int, version: str | None = None) -> None:
        """Start instance ``index`` again on its port and data; put it back in nginx when ready."""
        instance = self.instances[index]
        self.held.add(instance.name)
        try:
            if instance.running:  # out of nginx first, then drained (as in a deploy)
                await self._set_down(instance, True, "restart: drain")
                await asyncio.to_thread(instance.terminate)
            instance.version = version or instance.version
            await self._launch(instance)
            await self._set_down(instance, False, "restarted and ready")
        finally:
            self.held.discard(instance.name)

    async def deploy(self, version: str = "v2", settle_s: float = 1.0) -> list[Change]:
        """A rolling deploy: one instance at a time out of nginx, drained, restarted, put back.

        ``settle_s``: how long to wait after the reload before SIGTERM, so that nginx's new
        workers (which no longer send it anything) have taken over from the old ones.
        """
        first = len(self.changes)
        for instance in self.instances:
            self.held.add(instance.name)
            try:
                await self._set_down(instance, True, f"deploy {version}: drain")
                await asyncio.sleep(settle_s)
                await asyncio.to_thread(instance.terminate)
                instance.version = version
                await self._launch(instance)
                await self._set_down(instance, False, f"deploy {version}: ready")
            finally:
                self.held.discard(instance.name)
        return self.changes[first:]

    async def stop(self) -> None:
        """Stop the controller, the instances (each drains), nginx and PostgreSQL."""
        if self._control is not None:
            self._control.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._control
            self._control = None
        await asyncio.gather(
            *(asyncio.to_thread(i.terminate, 20.0) for i in self.instances),
            return_exceptions=True,
        )
        await asyncio.to_thread(self._finalizer)

    def stop_now(self) -> None:
        """Stop everything at once, without awaiting (for ``at_kernel_exit``); twice is harmless.

        The instances are killed, not drained: a kernel gets 2.5 s to exit before SIGTERM, and
        three drains one after another outlast that under load (leaving the run's folder behind).
        Their runtimes die with them; then nginx and PostgreSQL stop.
        """
        if self._control is not None:
            with contextlib.suppress(RuntimeError):  # at exit its event loop may be closed
                self._control.cancel()
        for instance in self.instances:
            if instance.running:
                with contextlib.suppress(OSError):
                    os.kill(instance.pid, signal.SIGKILL)
        self._finalizer()

    def versions(self) -> dict[str, str]:
        """Each instance's code version as it recorded it in the shared database (heartbeats)."""
        import psycopg

        url = os.environ.get("DATABASE_URL", "") or self.pg.url  # type: ignore[union-attr]
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as db:
            db.execute("SET statement_timeout = 5000")
            rows = db.execute(f'SELECT label, version FROM "{self.schema}".web_instances')
            return {label.removeprefix("web-"): version for label, version in rows.fetchall()}

    def drop_schema(self) -> None:
        """Drop this fleet's schema (its tables and rows) from ``DATABASE_URL``'s database; with
        a throwaway server there is nothing to drop (it goes whole)."""
        import psycopg

        url = os.environ.get("DATABASE_URL", "")
        if url and self.pg is None:
            with psycopg.connect(url, connect_timeout=5, autocommit=True) as db:
                db.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    async def __aenter__(self) -> Fleet:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _instance(self, k: int, host: Host, url: str) -> Instance:
        env = {n: v for n, v in os.environ.items() if n != "DATABASE_URL"}
        env["DATABASE_URL"] = url or self.pg.url_for(host.gateway)  # type: ignore[union-attr]
        users = ",".join(self.users) if k == 1 else ""
        args = ["--users", users, "--schema", self.schema, "--lease-ttl-s", f"{self.lease_ttl_s}"]
        args += ["--drain-s", "30"]
        port = free_port(host.address) if not host.netns else 8000
        folder = self.folder / f"i{k}"
        return Instance(f"i{k}", host.address, port, folder, args, env, netns=host.netns)

    async def _launch(self, instance: Instance) -> None:
        """Start an instance and wait for it to be ready; another port if its was taken."""
        for attempt in range(3):
            await asyncio.to_thread(instance.launch)
            try:
                await instance.wait_ready()
                return
            except Exception:
                taken = "Address already in use" in instance.log_tail(5)
                await asyncio.to_thread(instance.stop)
                if not taken or attempt == 2 or self.nginx is not None:
                    raise
                instance.port = free_port(instance.host)

    async def _set_down(self, instance: Instance, down: bool, why: str) -> None:
        assert self.nginx is not None
        async with self._reload:
            if await asyncio.to_thread(self.nginx.set_down, instance.upstream, down):
                action = "out" if down else "in"
                self.changes.append(Change(time.time(), instance.name, action, why))

    async def _controller(self) -> None:
        """Every ``check_every_s``: each instance's ``/ready``; out after two failures in a row
        (at once when its port refuses connections) if another one serves, back in after two
        successes."""
        fails = {i.name: 0 for i in self.instances}
        oks = dict(fails)
        async with httpx.AsyncClient(timeout=self.check_timeout_s) as http:
            while True:
                checks = [self._check(http, i) for i in self.instances if i.name not in self.held]
                for instance, (ok, refused) in zip(
                    [i for i in self.instances if i.name not in self.held],
                    await asyncio.gather(*checks),
                    strict=True,
                ):
                    fails[instance.name] = 0 if ok else fails[instance.name] + (2 if refused else 1)
                    oks[instance.name] = oks[instance.name] + 1 if ok else 0
                    if instance.name in self.held:
                        continue  # a deploy or a restart took it while we were asking
                    if fails[instance.name] >= 2 and self._another_serves(instance, oks):
                        await self._set_down(instance, True, "/ready failed")
                    elif oks[instance.name] >= 2:
                        await self._set_down(instance, False, "/ready answered")
                await asyncio.sleep(self.check_every_s)

    def _another_serves(self, instance: Instance, oks: dict[str, int]) -> bool:
        """Whether another instance in nginx passes its checks. When none does (the database is
        away: every instance fails ``/ready``), all stay in, so callers get the service's own
        503 and its reason rather than nginx's "no server"."""
        assert self.nginx is not None
        return any(
            i is not instance and i.upstream not in self.nginx.down and oks[i.name] > 0
            for i in self.instances
        )

    async def _check(self, http: httpx.AsyncClient, instance: Instance) -> tuple[bool, bool]:
        """(ready, refused): whether ``/ready`` answered 200, whether the port refused us."""
        try:
            return (await http.get(f"{instance.url}/ready")).status_code == 200, False
        except httpx.ConnectError:
            return False, True
        except httpx.HTTPError:
            return False, False


def _stop_now(instances: list[Instance], servers: list[PgServer], proxies: list[Nginx]) -> None:
    """Stop whatever is still running (nginx first, PostgreSQL last); safe to call twice."""
    for proxy in proxies:
        proxy.stop()
    for instance in instances:
        instance.stop()
    for server in servers:
        server.stop()
