"""Several instances of the service on one database: who is alive, and stop requests for turns.

Each instance writes a heartbeat row (``web_instances``: its label, when it was last seen and when
it started by the database's clock, its code version) about once a second. One not seen for
``dead_after_s`` is dead (``kill -9``, a lost machine): any live instance gives back the leases
its requests held and marks its running Idempotency-Key sends orphaned, so that its conversations
go on elsewhere within seconds, not after the lease's TTL. A dead instance that was only stalled
(SIGSTOP) and wakes up writes nothing: the store's fence refuses writes of a holder that no
longer holds the lease.

A turn is stopped wherever it runs through ``web_stops``: one row per lease holder (a request's
token) asked to stop. The instance running that request sees the row and aborts the turn: on
SQLite (one host) it polls the table while it runs turns; on PostgreSQL a ``NOTIFY`` wakes it at
once (``StopListener``), the poll staying as the backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.store.base import SessionStore
from helpers.store.schema import register_migration
from helpers.web.checks import Checks
from helpers.web.db import free_leases_of
from helpers.web.outcomes import orphan_claims_of

CALL_S = 2.0  # the longest one heartbeat, sweep or stop request may take
STOPS_KEPT_S = 120.0  # a stop request nobody took (its turn had ended) is forgotten after this
log = logging.getLogger(__name__)

# Version 4 of the schema: instances and stop requests (older code ignores both tables).
register_migration(
    4,
    "web service: instances and stop requests",
    """CREATE TABLE IF NOT EXISTS web_instances (
        label TEXT PRIMARY KEY,
        seen_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        version TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS web_stops (
        holder TEXT PRIMARY KEY,
        conversation TEXT NOT NULL,
        reason TEXT NOT NULL,
        requested_at DOUBLE PRECISION NOT NULL)""",
)


def code_version() -> str:
    """The package's version (``pyproject.toml``), or ``unknown``."""
    with contextlib.suppress(OSError, KeyError, tomllib.TOMLDecodeError):
        text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
        return str(tomllib.loads(text)["project"]["version"])
    return "unknown"


@dataclass
class Instance:
    """One instance's row, as another instance sees it."""

    label: str
    seen_s_ago: float
    started_at: float
    version: str
    alive: bool


async def announce(store: SessionStore, label: str, version: str) -> None:
    """Record that ``label`` starts now (its previous process, if any, is over)."""
    now = store.NOW
    await store.execute(
        "INSERT INTO web_instances (label, seen_at, started_at, version) "
        f"VALUES (?, {now}, {now}, ?) ON CONFLICT (label) DO UPDATE SET "
        "seen_at = excluded.seen_at, started_at = excluded.started_at, version = excluded.version",
        (label, version),
    )


async def heartbeat(store: SessionStore, label: str, version: str) -> None:
    """Say ``label`` is alive now (the row made again if a live instance removed it)."""
    now = store.NOW
    await store.execute(
        "INSERT INTO web_instances (label, seen_at, started_at, version) "
        f"VALUES (?, {now}, {now}, ?) ON CONFLICT (label) DO UPDATE SET seen_at = excluded.seen_at",
        (label, version),
    )


async def leave(store: SessionStore, label: str) -> None:
    """Remove ``label``'s row (a clean stop: it holds nothing any more)."""
    await store.execute("DELETE FROM web_instances WHERE label = ?", (label,))


async def instances(store: SessionStore, dead_after_s: float) -> list[Instance]:
    """Every instance with a row, alive or dead by the database's clock."""
    rows, _ = await store.execute(
        f"SELECT label, {store.NOW} - seen_at, started_at, version FROM web_instances "
        "ORDER BY label"
    )
    return [Instance(r[0], r[1], r[2], r[3], r[1] <= dead_after_s) for r in rows]


async def reap(store: SessionStore, label: str, dead_after_s: float) -> list[str]:
    """Free what dead instances (not ``label``) held: their leases and running keyed sends.

    Freeing twice (two live instances at once) changes nothing; an instance that was only stalled
    loses its leases (its late writes are refused) and makes its row again when it wakes. The
    row is deleted last, while still stale. Returns the labels reaped.
    """
    rows, _ = await store.execute(
        f"SELECT label FROM web_instances WHERE seen_at < {store.NOW} - ? AND label <> ?",
        (dead_after_s, label),
    )
    reaped = []
    for (dead,) in rows:
        freed = await free_leases_of(store, dead)
        orphaned = await orphan_claims_of(store, dead)
        _, gone = await store.execute(
            f"DELETE FROM web_instances WHERE label = ? AND seen_at < {store.NOW} - ?",
            (dead, dead_after_s),
        )
        if gone == 1:
            log.warning(
                "instance %s is dead: %d leases freed, %d keyed sends orphaned",
                dead,
                freed,
                orphaned,
            )
            reaped.append(dead)
    return reaped


# --- stop requests ---------------------------------------------------------------------------


def channel(store: SessionStore) -> str:
    """The NOTIFY channel of this store's stop requests (one per schema)."""
    return f"web_stops.{getattr(store, 'schema', '') or 'public'}"


async def request_stop(store: SessionStore, holder: str, conversation: str, reason: str) -> None:
    """Ask the instance running ``holder``'s request to stop its turn (a row; NOTIFY on PG)."""
    await store.execute(
        "INSERT INTO web_stops (holder, conversation, reason, requested_at) "
        f"VALUES (?, ?, ?, {store.NOW}) ON CONFLICT (holder) DO NOTHING",
        (holder, conversation, reason),
    )
    if store.engine == "postgresql":
        await store.execute("SELECT pg_notify(?, ?)", (channel(store), holder))


async def stops_for(store: SessionStore, holders: list[str]) -> dict[str, str]:
    """``holder -> reason`` for those of ``holders`` asked to stop."""
    if not holders:
        return {}
    rows, _ = await store.execute(
        f"SELECT holder, reason FROM web_stops WHERE holder IN ({', '.join('?' * len(holders))})",
        tuple(holders),
    )
    return dict(rows)


async def forget_stops(store: SessionStore, holders: list[str], older_than_s: float) -> None:
    """Delete the stop requests of ``holders`` (taken), and those older than ``older_than_s``."""
    marks = ", ".join("?" * len(holders)) or "NULL"
    await store.execute(
        f"DELETE FROM web_stops WHERE holder IN ({marks}) OR requested_at < {store.NOW} - ?",
        (*holders, older_than_s),
    )


class StopListener:
    """PostgreSQL only: ``LISTEN`` on a dedicated connection; each notification sets ``wake``.

    The connection is its own (autocommit), never the pool's, so it blocks no request; every wait
    on it has a timeout, and after a lost connection (a restarted server) it connects again.
    ``connected`` says whether notifications can arrive now (else the caller polls faster).
    """

    def __init__(self, store: Any, wake: asyncio.Event) -> None:
        self.store, self.wake = store, wake
        self.connected = False
        self.name = channel(store)[:63]  # its connection's application_name too

    async def run(self) -> None:
        """Listen until cancelled, connecting again a second after each failure."""
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("stop listener: %s; connecting again", type(exc).__name__)
            self.connected = False
            self.wake.set()  # whatever was missed meanwhile: poll now
            await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        import psycopg

        connect = psycopg.AsyncConnection.connect(
            self.store.url, autocommit=True, connect_timeout=5, application_name=self.name
        )
        conn = await asyncio.wait_for(connect, 10)
        try:
            await asyncio.wait_for(conn.execute(f'LISTEN "{self.name}"'), CALL_S)
            self.connected = True
            while True:
                async for _ in conn.notifies(timeout=1.0):
                    self.wake.set()
                # No notification for a second: check the connection is still there.
                await asyncio.wait_for(conn.execute("SELECT 1"), CALL_S)
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), CALL_S)


class Liveness(Checks):
    """The service's side: its heartbeat and reaping, and the stop requests of its turns."""

    _live_tasks: list[asyncio.Task[None]]

    async def start_liveness(self) -> None:
        """Record this instance as started, then heartbeat, reap and watch for stop requests."""
        self.version = self.settings.version_label or code_version()
        await announce(self.store, self.holder, self.version)
        self._listener = None
        work = [self._heartbeats(), self._watch_stops()]
        if self.store.engine == "postgresql":
            self._listener = StopListener(self.store, self._wake)
            work.append(self._listener.run())
        self._live_tasks = [asyncio.ensure_future(w) for w in work]

    async def stop_liveness(self) -> None:
        """Stop the heartbeat (and the rest); remove this instance's row (safe to call twice)."""
        tasks, self._live_tasks = getattr(self, "_live_tasks", []), []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, CALL_S)
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(leave(self.store, self.holder), CALL_S)

    def cancel_liveness(self) -> None:
        """Stop the heartbeat without awaiting (exit hooks)."""
        for task in getattr(self, "_live_tasks", []):
            task.cancel()

    async def _heartbeats(self) -> None:
        """About every ``heartbeat_s``: say we are alive, free what dead instances held."""
        ticks = 0
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            ticks += 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(heartbeat(self.store, self.holder, self.version), CALL_S)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    reap(self.store, self.holder, self.settings.dead_after_s), 3 * CALL_S
                )
            if ticks % 30 == 0:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(forget_stops(self.store, [], STOPS_KEPT_S), CALL_S)

    async def _watch_stops(self) -> None:
        """While turns run here, look for stop requests naming their holders (woken by NOTIFY
        on PostgreSQL, else every ``stop_poll_s``); stop each turn named."""
        while True:
            listening = self._listener is not None and self._listener.connected
            every = 1.0 if listening else self.settings.stop_poll_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), every)
            self._wake.clear()
            holders = list(self._leased)
            if not holders:
                continue
            try:
                asked = await asyncio.wait_for(stops_for(self.store, holders), CALL_S)
            except Exception:
                continue
            for holder, reason in asked.items():
                turn = self._leased.get(holder)
                if turn is not None:
                    turn.stop(reason, "aborted")
                    self._stopped.add(holder)
            if taken := [h for h in self._stopped if h not in self._leased]:
                self._stopped.difference_update(taken)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(forget_stops(self.store, taken, STOPS_KEPT_S), CALL_S)
