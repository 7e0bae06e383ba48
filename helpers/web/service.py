"""The service behind the HTTP layer: one runtime, its store, and the rules of notebooks 03-06.

Everything a request needs goes through here, so the HTTP app (``app.py``) only translates, and
the benchmark can make the same requests in-process. Long-lived conversations keep their state in
the session store (notebook 04's ``session_fs``); short-lived asks take a session prepared ahead
(notebook 03's pool) with notebook 02's three file tools over the user's own files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from copilot import CopilotClient
from copilot.session import CopilotSession
from copilot.tools import Tool

from helpers.errors import (
    Draining,
    NotStored,
    NotYourSession,
    RuntimeDown,
    StoreDown,
    TooManyTurns,
)
from helpers.model.backends import Backend, choose_backend
from helpers.runtime import transport
from helpers.runtime.server import RuntimeServer, attach_server, start_server
from helpers.serving.credentials import UserTokens
from helpers.serving.drain import Drain
from helpers.serving.locks import SessionLocks
from helpers.serving.pool import SessionPool
from helpers.store.base import SessionStore, finish
from helpers.store.lease import Lease, held
from helpers.store.router import resume_or_create
from helpers.store.session_fs import SESSION_FS, store_fs, stored_events
from helpers.tools.file_tools import ALLOWLIST
from helpers.web.auth import TokenBook
from helpers.web.db import (
    forget_session_rows,
    free_leases_of,
    instance_id,
    open_web_store,
    stored_orphans,
)
from helpers.web.files import UserFiles, stored_file_tools
from helpers.web.outcomes import (
    Claim,
    KeyReused,
    claim,
    orphan_claims_of,
    outcome,
    record,
    release,
    stored_reply,
)
from helpers.web.outcomes import forget as forget_keys
from helpers.web.turns import PUBLIC_MESSAGES, Event, Turn, error_code

NO_TURN = ("not_found", "busy", "draining")  # failures that come before the turn reaches the model
READ_BACK_S = 5.0  # how long reading a failed turn back from the store may take
_letting_go: set[asyncio.Task[None]] = set()

DISCONNECT_S = 10.0  # how long closing a conversation's session may take

STOP_TURNS_S = 10.0  # the longest a stop waits for aborted turns to let go
STORE_CHECK_S = 5.0  # a backstop: the store's own timeouts answer within about 3 s
log = logging.getLogger(__name__)


@dataclass
class Settings:
    """What the service allows and how it behaves; every wait has a limit."""

    backend: str = ""
    cli_url: str = ""
    turn_timeout_s: float = 120.0
    turns_per_user: int = 2
    pool_size: int = 2
    lease_ttl_s: float = 30.0  # renewed every third of it while a turn runs
    max_message_chars: int = 16_000
    max_body_bytes: int = 64 * 1024
    request_arrival_s: float = 10.0  # the longest a request's headers and body may take to arrive
    drain_timeout_s: float = 60.0
    orphan_age_s: float = 600.0
    supervise_every_s: float = 0.5
    abort_abandoned: bool = True
    lock_turns: bool = True
    lease_turns: bool = True
    restart_runtime: bool = True
    schema: str = "web"  # PostgreSQL only: the schema of this service's tables
    data: str = ""  # the folder of the SQLite file and the instance id ("": the service's folder)
    instance: str = ""  # this instance's stable name ("": made once, kept in the data folder)
    token_days: float = 30.0  # how long a sign-in token is valid


class Service:
    """One runtime and its client; the store (owners, files, leases); tokens, locks, pool, drain."""

    def __init__(
        self,
        folder: Path,
        settings: Settings | None = None,
        tokens: TokenBook | None = None,
        tools: list[Tool] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.conversation_tools = list(tools or [])  # the tools a conversation's model may call
        self.settings = settings or Settings()
        self.tokens = tokens or TokenBook(self.settings.token_days)
        self.locks = SessionLocks()
        self.gate = Drain()
        self.github_tokens: UserTokens | None = None
        self.data = Path(self.settings.data) if self.settings.data else self.folder
        self.holder = f"web-{self.settings.instance}"  # made stable in ``start`` when unset
        self.freed = 0  # leases of this instance's previous process given back at start
        self._instance_lock = -1  # a file locked while this instance runs (one process per name)
        self.restarts = 0
        self._running: dict[str, int] = {}
        self._turns: set[Turn] = set()
        self._asking: dict[str, str] = {}  # session id -> user, asks made outside the pool
        self._tools = stored_file_tools(self._fs_of_session)
        self.backend: Backend
        self.server: RuntimeServer
        self.store: SessionStore
        self.client: CopilotClient
        self.pool: SessionPool
        self._supervisor: asyncio.Task[None] | None = None

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
                start_server, self.backend, home=self.folder / "runtime"
            )
        self.store = await open_web_store(self.data, schema=self.settings.schema)
        await self.tokens.attach(self.store)
        name, self._instance_lock = instance_id(self.data, self.settings.instance)
        self.holder = f"web-{name}"
        try:
            # We are this instance: the leases its previous process held are ours to give back
            # (that process is gone), so its conversations' next turns need not wait the TTL.
            self.freed = await free_leases_of(self.store, self.holder)
            await orphan_claims_of(self.store, self.holder)  # and the sends it was running
            await self._connect()
        except BaseException:
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

    def runtime_problem(self) -> str | None:
        """Why the runtime cannot serve now, or ``None`` when it can."""
        if self.server.owned and not self.server.running:
            return f"the Copilot runtime at {self.server.url} is down (its process exited)"
        gone = getattr(self.client, "_runtime_gone", None)
        return gone or None

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
        with contextlib.suppress(Exception):
            await self.pool.close(timeout=10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.stop(), 10)
        self.server.stop()
        with contextlib.suppress(Exception):
            await self.store.close()
        self._unlock()
        self.backend.close()

    def _unlock(self) -> None:
        fd, self._instance_lock = self._instance_lock, -1
        if fd >= 0:
            os.close(fd)

    def stop_now(self) -> None:
        """Stop the runtime and the model, close the files, without awaiting (for exit hooks)."""
        self.gate.accepting = False
        if self._supervisor is not None:
            self._supervisor.cancel()
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

    # --- what every request checks first ---------------------------------------------------

    def begin(self, user: str) -> None:
        """Count one more turn of ``user``, or refuse (draining, runtime down, too many)."""
        if not self.gate.accepting:
            raise Draining("this instance is shutting down: try again in a moment")
        if problem := self.runtime_problem():
            raise RuntimeDown(f"{problem}; try again in a moment")
        if self._running.get(user, 0) >= self.settings.turns_per_user:
            raise TooManyTurns(
                f"User {user} already has {self.settings.turns_per_user} turns running: "
                "wait for one to end"
            )
        self._running[user] = self._running.get(user, 0) + 1

    def _end(self, user: str) -> None:
        self._running[user] -= 1
        if not self._running[user]:
            del self._running[user]

    def running(self, user: str | None = None) -> int:
        """Turns running now (of ``user``, or of everyone)."""
        return self._running.get(user, 0) if user else sum(self._running.values())

    async def check_store(self) -> None:
        """``StoreDown`` unless the database answers (a turn would not be stored)."""
        try:  # the store bounds its own calls (a few seconds); this is a backstop
            await asyncio.wait_for(self.store.execute("SELECT 1"), STORE_CHECK_S)
        except Exception as exc:
            log.warning("the database (%s) did not answer: %r", self.store.describe(), exc)
            raise StoreDown(
                f"the database did not answer ({type(exc).__name__}): try again in a moment"
            ) from None

    async def check_owner(self, user: str, conversation: str) -> None:
        """``NotYourSession`` unless ``user`` owns ``conversation`` (same for unknown ids)."""
        await self._stored(self.store.check_owner(user, conversation))

    def per_user_credentials(self) -> bool:
        """Whether each user's sessions run on their own GitHub token (notebook 03)."""
        return self.github_tokens is not None and self.backend.name == "github"

    def _model_kwargs(self, user: str) -> dict[str, Any]:
        kwargs = self.backend.session_kwargs()
        if self.github_tokens is not None and self.per_user_credentials():
            kwargs.update(self.github_tokens.session_kwargs(user))
        return kwargs

    # --- long-lived conversations -----------------------------------------------------------

    async def create_conversation(self, user: str) -> str:
        """A new conversation of ``user``: the id is ours, the owner recorded; no turn yet."""
        if not self.gate.accepting:
            raise Draining("this instance is shutting down: try again in a moment")
        return await self._stored(self.store.new_id(user))

    async def conversations(self, user: str) -> list[str]:
        """The ids ``user`` owns, oldest first."""
        return await self._stored(self.store.sessions_of(user))

    async def _stored(self, work: Any) -> Any:
        """Await a store call; a database that does not answer is ``StoreDown`` (503)."""
        try:
            return await work
        except (NotYourSession, KeyReused):  # the store's answer, not its failure
            raise
        except Exception as exc:
            raise StoreDown(f"the database did not answer ({type(exc).__name__})") from exc

    async def history(self, user: str, conversation: str) -> list[dict[str, str]]:
        """The conversation's messages, read from the session's own events in the store."""
        await self.check_owner(user, conversation)
        return messages_of(await self._stored(stored_events(self.store, conversation)))

    async def delete(self, user: str, conversation: str) -> None:
        """Delete the conversation for good (after a running turn of it ends)."""
        await self.check_owner(user, conversation)
        async with self.locks.turn(conversation, self.settings.turn_timeout_s):
            with contextlib.suppress(Exception):  # session_fs sessions are the store's to delete
                await self.client.delete_session(conversation)
            await self._stored(forget_session_rows(self.store, conversation))
            await self._stored(forget_keys(self.store, conversation))
        self.locks.forget(conversation)

    async def send_once(
        self, user: str, conversation: str, text: str, key: str | None = None
    ) -> AsyncIterator[Event]:
        """A turn's events (after ``check_owner``); with ``key``, the first outcome of that key.

        A send with a key already used by this user in this conversation runs no turn: it
        replays the stored outcome, or waits for the send still running and replays its.
        """
        if key is None:
            self.begin(user)
            return self.send(user, conversation, text).events()
        stale_s = self.settings.turn_timeout_s + self.settings.lease_ttl_s + DISCONNECT_S + 10
        took = await self._stored(
            claim(self.store, user, conversation, key, text, stale_s, self.holder)
        )
        if took.events is not None:
            return _replay(took.events)
        if took.state == "running":
            return _replay(outcome(self.store, user, conversation, key, stale_s))
        if took.taken_over:  # its process ended mid-turn: was the turn stored before it did?
            since = took.first_since - 1.0  # the earlier run's message, not only this one's
            reply = await self._stored(stored_reply(self.store, conversation, text, "", since))
            if reply is not None:
                events: list[Event] = [("message", {"text": reply})]
                await self._stored(record(self.store, user, conversation, key, took.holder, events))
                return _replay(events)
        try:
            self.begin(user)
        except BaseException:
            with contextlib.suppress(Exception):
                await release(self.store, user, conversation, key, took.holder)
            raise
        return self.send(user, conversation, text, key, took).events()

    def send(
        self,
        user: str,
        conversation: str,
        text: str,
        key: str | None = None,
        took: Claim | None = None,
    ) -> Turn:
        """Start one turn in ``user``'s conversation (after ``begin`` and ``check_owner``)."""
        since = time.time() - 1.0

        @contextlib.asynccontextmanager
        async def opened(turn: Turn) -> AsyncIterator[CopilotSession]:
            async with self.gate.request(), self._turn_lock(conversation):
                await self.check_owner(user, conversation)  # deleted while this send waited?
                holder = None
                try:
                    async with self._lease(conversation) as lease:
                        holder = lease.holder if lease is not None else None
                        session = await self._open(user, conversation, lease, turn.store_failed)
                        try:
                            yield session
                        finally:  # a cancelled caller cannot cut it (notebook 04's finish)
                            # The runtime flushes the turn's writes first: after a store failure
                            # (the reader already told) that lasts as long as the database stalls,
                            # and no next turn may open the session before it ends (the lease).
                            wait_s = DISCONNECT_S
                            if turn.store_failed.is_set():
                                wait_s = max(DISCONNECT_S, self.settings.lease_ttl_s)
                            with contextlib.suppress(Exception):
                                await finish(asyncio.wait_for(session.disconnect(), wait_s))
                except BaseException:
                    if holder is not None:
                        await finish(self._let_go(conversation, holder))
                    raise
                if holder is not None and turn.result.error:
                    await finish(self._let_go(conversation, holder))

        async def stored(result: Any) -> None:
            await self._check_stored(conversation, text)

        async def settle(turn: Turn, final: Event) -> Event:
            kind, data = final
            if kind == "error" and data["error"] not in NO_TURN:
                try:  # the lease is given back, so no late write can land after this read
                    reply = await asyncio.wait_for(
                        stored_reply(self.store, conversation, text, turn.result.message_id, since),
                        READ_BACK_S,
                    )
                except Exception:
                    data["message"] += " (whether the turn was stored is unknown: retry it)"
                    data["stored"] = None
                else:
                    if reply is None:
                        data["stored"] = False
                    else:
                        final = ("message", {"text": reply, "stored_after_error": data["error"]})
                        turn.result.text, turn.result.error = reply, ""
            if key is not None and took is not None:
                with contextlib.suppress(Exception):  # else it is taken over once stale
                    await asyncio.wait_for(
                        record(
                            self.store, user, conversation, key, took.holder, [*turn.sent, final]
                        ),
                        READ_BACK_S,
                    )
            return final

        return self._track(
            Turn(
                text,
                opened,
                self.settings.turn_timeout_s,
                self.settings.abort_abandoned and key is None,  # a keyed send runs on for its retry
                after=stored,
                finished=lambda: self._end(user),
                settle=settle,
            )
        )

    async def _let_go(self, conversation: str, holder: str) -> None:
        """After a fault, make sure the lease is given back: at once if the database answers,
        else from the background as soon as it does (until the lease would have run out)."""
        deadline = time.monotonic() + self.settings.lease_ttl_s
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.drop_lease(conversation, holder), 2.0)
            return

        async def retry() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.store.drop_lease(conversation, holder), 2.0)
                    return

        task = asyncio.ensure_future(retry())
        _letting_go.add(task)
        task.add_done_callback(_letting_go.discard)

    def _lease(self, conversation: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """Notebook 04's lease, one per request (renewed while it runs), unless switched off."""
        if not self.settings.lease_turns:
            return contextlib.nullcontext()
        return held(
            self.store,
            conversation,
            ttl_s=self.settings.lease_ttl_s,
            wait_s=self.settings.turn_timeout_s,
            label=self.holder,
        )

    def _turn_lock(self, conversation: str) -> contextlib.AbstractAsyncContextManager[None]:
        if not self.settings.lock_turns:
            return contextlib.nullcontext()
        return self.locks.turn(conversation, self.settings.turn_timeout_s)

    async def _open(
        self, user: str, conversation: str, lease: Lease | None, failed: asyncio.Event
    ) -> CopilotSession:
        """Create or resume the conversation; its writes fenced on the request's ``lease``; a
        failed store call of the session's files sets ``failed``."""
        options = dict(
            create_session_fs_handler=store_fs(watched(self.store, failed), lease=lease),
            streaming=True,
            tools=self.conversation_tools,
            available_tools=[f"custom:{tool.name}" for tool in self.conversation_tools],
            **self._model_kwargs(user),
        )
        holder = lease.holder if lease is not None else None
        if not await resume_or_create(self.store, conversation, holder):
            return await self.client.create_session(session_id=conversation, **options)
        return await self.client.resume_session(conversation, **options)

    async def _check_stored(self, conversation: str, text: str) -> None:
        """Raise ``StoreDown`` unless the store holds this turn's message and its reply."""
        try:
            events = await stored_events(self.store, conversation)
        except Exception as exc:
            raise StoreDown(
                f"the database did not answer ({type(exc).__name__}): this turn could not be "
                "read back, so it is not reported done"
            ) from exc
        users = [i for i, e in enumerate(events) if e.get("type") == "user.message"]
        last = users[-1] if users else None
        replied = last is not None and any(
            e.get("type") == "assistant.message" for e in events[last + 1 :]
        )
        if last is None or events[last]["data"].get("content") != text or not replied:
            raise NotStored(
                "this turn's message and reply are not the last in the conversation's stored "
                "events (another turn ran at the same time?): not reported done"
            )

    # --- short-lived asks over the user's files -----------------------------------------

    def files_of(self, user: str) -> UserFiles:
        """``user``'s own files, kept in the database (each call a statement)."""
        return UserFiles(self.store, user)

    def _fs_of_session(self, session_id: str) -> UserFiles | None:
        user = self.pool.user_of(session_id) or self._asking.get(session_id)
        return self.files_of(user) if user else None

    async def _create_pooled(self) -> CopilotSession:
        return await self._create_ask_session(self.backend.session_kwargs())

    async def _create_ask_session(self, model_kwargs: dict[str, Any]) -> CopilotSession:
        """A short-lived session with the three file tools, on ``model_kwargs``'s model."""
        return await self.client.create_session(
            tools=self._tools,
            available_tools=ALLOWLIST,
            streaming=True,
            create_session_fs_handler=store_fs(self.store),
            **model_kwargs,
        )

    async def _retire(self, session: CopilotSession) -> None:
        with contextlib.suppress(Exception):
            await session.disconnect()
        with contextlib.suppress(Exception):
            await self.client.delete_session(session.session_id)
        await forget_session_rows(self.store, session.session_id)

    def ask(self, user: str, text: str) -> Turn:
        """One short-lived turn with the file tools over ``user``'s files (after ``begin``)."""

        @contextlib.asynccontextmanager
        async def opened(turn: Turn) -> AsyncIterator[CopilotSession]:
            sessions = self._own_session if self.per_user_credentials() else self.pool.request
            async with self.gate.request(), sessions(user) as session:
                yield session

        return self._track(
            Turn(
                text,
                opened,
                self.settings.turn_timeout_s,
                self.settings.abort_abandoned,
                finished=lambda: self._end(user),
            )
        )

    @contextlib.asynccontextmanager
    async def _own_session(self, user: str) -> AsyncIterator[CopilotSession]:
        """A short-lived session made for this request, on ``user``'s own token.

        The pool's sessions are made before anyone asks, so they cannot carry a user's token:
        with per-user credentials an ask pays for its own create (and its delete, which a
        cancelled caller cannot cut).
        """
        session = await self._create_ask_session(self._model_kwargs(user))
        self._asking[session.session_id] = user
        try:
            yield session
        finally:
            try:  # a delete that hangs is left to the sweep, which spares only ids in use
                with contextlib.suppress(TimeoutError):
                    await finish(asyncio.wait_for(self._retire(session), 2 * DISCONNECT_S))
            finally:
                self._asking.pop(session.session_id, None)

    def _track(self, turn: Turn) -> Turn:
        self._turns.add(turn)
        turn.task.add_done_callback(lambda _: self._turns.discard(turn))
        return turn


def watched(store: SessionStore, failed: asyncio.Event) -> SessionStore:
    """``store`` as seen by one turn's session files: a call that fails (not a refused write:
    the lease's own rule) sets ``failed``, so the turn ends while the database stalls."""

    class Watched:
        def __getattr__(self, name: str) -> Any:
            attr = getattr(store, name)
            if not asyncio.iscoroutinefunction(attr):
                return attr

            async def call(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await attr(*args, **kwargs)
                except Exception as exc:
                    if error_code(exc) == "store_down":
                        failed.set()
                    raise

            return call

    return cast(SessionStore, Watched())


async def _replay(events: Any) -> AsyncIterator[Event]:
    """The events of an earlier send (a list, or an awaitable that waits for them)."""
    try:
        kept = events if isinstance(events, list) else await events
    except Exception:
        kept = [("error", {"error": "store_down", "message": PUBLIC_MESSAGES["store_down"]})]
    for kind, data in kept:
        yield kind, data


def messages_of(events: list[dict[str, Any]]) -> list[dict[str, str]]:
    """User and assistant messages (with text) among a session's events, in order."""
    roles = {"user.message": "user", "assistant.message": "assistant"}
    return [
        {"role": roles[e["type"]], "text": e["data"]["content"]}
        for e in events
        if e.get("type") in roles and (e.get("data") or {}).get("content")
    ]


__all__ = ["Service", "Settings", "messages_of"]
