"""The service behind the HTTP layer: one runtime, its store, and the rules of notebooks 03-06.

Everything a request needs goes through here, so the HTTP app (``app.py``) only translates, and
the benchmark can make the same requests in-process. Long-lived conversations keep their state in
the session store (notebook 04's ``session_fs``); short-lived asks take a session prepared ahead
(notebook 03's pool) with notebook 02's three file tools over the user's own files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from copilot import CopilotClient

from helpers.errors import StoreDown
from helpers.model.backends import choose_backend
from helpers.ops.store_calls import watch_store
from helpers.runtime import transport
from helpers.runtime.server import attach_server, start_server
from helpers.serving.pool import SessionPool
from helpers.store.session_fs import SESSION_FS
from helpers.web.asks import Asks
from helpers.web.checks import Settings
from helpers.web.conversations import Conversations, messages_of
from helpers.web.db import (
    forget_session_rows,
    free_leases_of,
    instance_id,
    open_web_store,
    stored_orphans,
)
from helpers.web.instances import Liveness
from helpers.web.outcomes import orphan_claims_of
from helpers.web.usage import Metering

STOP_TURNS_S = 10.0  # the longest a stop waits for aborted turns to let go


class Service(Metering, Conversations, Asks, Liveness):
    """One runtime and its client; the store (owners, files, leases); tokens, locks, pool, drain."""

    # --- start, stop, health -------------------------------------------------------------

    async def start(self) -> Service:
        """Start the model backend, the runtime, the store and a client; fill the pool."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.backend = choose_backend(self.settings.backend)
        transport.install()
        transport.enable_quickack()
        if self.settings.cli_url:
            self.server = attach_server(self.settings.cli_url)
        else:
            self.server = await asyncio.to_thread(
                start_server,
                self.backend,
                home=self.folder / "runtime",
                env=self.tracing.runtime_env(),  # its spans join ours (helpers.ops.tracing)
            )
        self.store = await open_web_store(self.data, schema=self.settings.schema)
        watch_store(self.store, self.tracing, self.metrics)
        self.metrics.watch(self)
        await self.tokens.attach(self.store)
        name, self._instance_lock = instance_id(self.data, self.settings.instance)
        self.holder = f"web-{name}"
        try:
            # We are this instance: the leases its previous process held are ours to give back
            # (that process is gone), so its conversations' next turns need not wait the TTL.
            self.freed = await free_leases_of(self.store, self.holder)
            await orphan_claims_of(self.store, self.holder)  # and the sends it was running
            await self.start_liveness()  # heartbeat; free what dead instances held
            await self._connect()
        except BaseException:
            self.cancel_liveness()
            self._unlock()
            raise
        self._supervisor = asyncio.ensure_future(self._supervise())
        return self

    async def _connect(self) -> None:
        self.client = CopilotClient(
            mode="empty", connection=self.server.connection(), session_fs=SESSION_FS
        )
        await self.client.start()
        self.pool = SessionPool(self._create_pooled, self._retire, size=self.settings.pool_size)
        await self.pool.fill()

    async def ready(self) -> str | None:
        """``None`` when ready for traffic, else the reason (draining, runtime, database)."""
        if not self.gate.accepting:
            return "draining: this instance takes no new requests"
        if problem := self.runtime_problem():
            return problem
        try:
            await asyncio.wait_for(self.client.ping("ready"), 2.0)
        except Exception as exc:
            return f"the Copilot runtime did not answer a ping ({type(exc).__name__})"
        try:
            await self.check_store()
        except StoreDown as exc:
            return str(exc)
        return None

    async def _supervise(self) -> None:
        """Bring a runtime that died back (when we started it), and sweep orphans now and then."""
        ticks = 0
        while True:
            await asyncio.sleep(self.settings.supervise_every_s)
            ticks += 1
            if not self.gate.accepting:
                continue
            if self.runtime_problem() and self.server.owned and self.settings.restart_runtime:
                with contextlib.suppress(Exception):
                    await self.recover()
            elif ticks * self.settings.supervise_every_s >= min(self.settings.orphan_age_s, 60):
                ticks = 0
                with contextlib.suppress(Exception):
                    await self.sweep()

    async def sweep(self) -> list[str]:
        """Forget the stored files of sessions that no user owns and no request uses, untouched
        for ``orphan_age_s`` (what a request that crashed between create and delete leaves).

        Notebook 03 sweeps by ``client.list_sessions()``; with ``session_fs`` the runtime lists
        none of its sessions, so the orphans are looked for where it wrote them, in the store.
        """
        swept = []
        for session_id in await stored_orphans(self.store, self.settings.orphan_age_s):
            if not self._in_use(session_id):
                await forget_session_rows(self.store, session_id)
                swept.append(session_id)
        return swept

    def _in_use(self, session_id: str) -> bool:
        return (
            session_id in self.pool.ready_ids()
            or self.pool.user_of(session_id) is not None
            or session_id in self._asking
        )

    async def recover(self) -> None:
        """Start the runtime again on the same home and connect a new client and pool."""
        with contextlib.suppress(Exception):
            await self.client.force_stop()
        await asyncio.to_thread(self.server.restart)
        await self._connect()
        self.restarts += 1

    async def drain(self, timeout: float | None = None) -> int:
        """Refuse new requests, let running turns end (up to ``timeout``), then stop the runtime.

        Returns:
            How many requests were still running when the wait ended (0: a clean drain).
        """
        return await self.gate.drain(timeout or self.settings.drain_timeout_s, self.close)

    async def close(self) -> None:
        """Stop everything this service started (safe to call twice).

        Turns still running are aborted first, so that each gives back its lock and lease while
        the runtime and the store are still there: a stop that does not wait cuts them, but
        leaves nothing held for the next process.
        """
        self.gate.accepting = False
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        for turn in list(self._turns):
            turn.stop("the service is stopping")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TURNS_S):
                while self._turns:
                    await asyncio.sleep(0.02)
        await self.stop_liveness()
        with contextlib.suppress(Exception):
            await self.pool.close(timeout=10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.stop(), 10)
        self.server.stop()
        with contextlib.suppress(Exception):
            await self.store.close()
        self._unlock()
        self.backend.close()
        with contextlib.suppress(Exception):  # the last spans; an exporter that hangs is cut
            await asyncio.wait_for(asyncio.to_thread(self.tracing.shutdown), 10)

    def _unlock(self) -> None:
        fd, self._instance_lock = self._instance_lock, -1
        if fd >= 0:
            os.close(fd)

    def stop_now(self) -> None:
        """Stop the runtime and the model, close the files, without awaiting (for exit hooks)."""
        self.gate.accepting = False
        if self._supervisor is not None:
            self._supervisor.cancel()
        self.cancel_liveness()
        sock = transport.client_socket(self.client) if hasattr(self, "client") else None
        if sock is not None:  # a runtime with a client still connected takes ~3 s to stop
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(AttributeError):
            self.server.stop()
        close_now = getattr(getattr(self, "store", None), "close_now", None)
        if close_now is not None:
            close_now()
        self._unlock()
        with contextlib.suppress(AttributeError):
            self.backend.close()


__all__ = ["Service", "Settings", "messages_of"]
