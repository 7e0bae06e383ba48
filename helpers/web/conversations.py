"""The service's long-lived conversations (notebook 04): their owners, turns, leases and history,
a failed turn read back from the store, and sends made once per Idempotency-Key."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

from copilot.session import CopilotSession

from helpers.errors import Draining, LeaseBusy, NotStored, StoreDown
from helpers.ops.tracing import note
from helpers.store.base import SessionStore, finish
from helpers.store.lease import Lease, held
from helpers.store.router import resume_or_create
from helpers.store.session_fs import store_fs, stored_events
from helpers.web.checks import DISCONNECT_S, Checks
from helpers.web.db import forget_session_rows
from helpers.web.instances import request_stop
from helpers.web.outcomes import Claim, claim, outcome, record, release, stored_reply
from helpers.web.outcomes import forget as forget_keys
from helpers.web.turns import PUBLIC_MESSAGES, Event, Turn, error_code, public_message

NO_TURN = ("not_found", "busy", "draining")  # failures that come before the turn reaches the model
READ_BACK_S = 5.0  # how long reading a failed turn back from the store may take
DELETING = "delete-"  # starts the token part of a delete's lease holder (not a turn: not stopped)
ABORTED = "the turn was stopped by an abort request"
DELETED = "the conversation was deleted"
_letting_go: set[asyncio.Task[None]] = set()


class Conversations(Checks):
    """Conversations that last: created, listed, sent to (once per key), read back, deleted."""

    async def create_conversation(self, user: str) -> str:
        """A new conversation of ``user``: the id is ours, the owner recorded; no turn yet."""
        if not self.gate.accepting:
            raise Draining("this instance is shutting down: try again in a moment")
        return await self._stored(self.store.new_id(user))

    async def conversations(self, user: str) -> list[str]:
        """The ids ``user`` owns, oldest first."""
        return await self._stored(self.store.sessions_of(user))

    async def history(self, user: str, conversation: str) -> list[dict[str, str]]:
        """The conversation's messages, read from the session's own events in the store."""
        await self.check_owner(user, conversation)
        return messages_of(await self._stored(stored_events(self.store, conversation)))

    async def delete(self, user: str, conversation: str) -> None:
        """Delete the conversation for good, once a turn of it running on any instance ended.

        The conversation's lease is taken first (a turn holding it is asked to stop, wherever
        it runs), and the rows are deleted under it, fenced: a stopped turn writes nothing after.
        """
        await self.check_owner(user, conversation)
        if not self.settings.lease_turns:  # one instance only: its in-memory lock is enough
            async with self.locks.turn(conversation, self.settings.turn_timeout_s):
                await self._forget(conversation, None)
        else:
            holder = await self._take_for_delete(conversation)
            try:
                await self._forget(conversation, holder)
            except BaseException:
                await finish(self._let_go(conversation, holder))
                raise
        self.locks.forget(conversation)

    async def _forget(self, conversation: str, holder: str | None) -> None:
        with contextlib.suppress(Exception):  # session_fs sessions are the store's to delete
            await self.client.delete_session(conversation)
        await self._stored(forget_session_rows(self.store, conversation, holder))
        await self._stored(forget_keys(self.store, conversation))

    async def _take_for_delete(self, conversation: str) -> str:
        """Take the conversation's lease for a delete, stopping each turn that holds it."""
        holder = f"{self.holder}#{DELETING}{secrets.token_hex(6)}"
        deadline = time.monotonic() + self.settings.lease_ttl_s + self.settings.dead_after_s
        asked: set[str] = set()
        ttl_s = self.settings.lease_ttl_s
        while not await self._stored(self.store.try_lease(conversation, holder, ttl_s)):
            current = await self._stored(self.store.lease_live(conversation))
            if current is not None and current[1] and current[0] not in asked:
                asked.add(current[0])
                await self._stored(self._ask_stop(current[0], conversation, DELETED))
            if time.monotonic() >= deadline:
                raise LeaseBusy(f"conversation {conversation!r} stayed busy: not deleted")
            await asyncio.sleep(0.05)
        return holder

    async def abort(self, user: str, conversation: str) -> bool:
        """Stop the conversation's running turn wherever it runs; True if one was running.

        The turn's stream ends with the error ``aborted``; its lease and lock are given back.
        A send still waiting to start (not yet holding the lease) is not stopped.
        """
        await self.check_owner(user, conversation)
        current = await self._stored(self.store.lease_live(conversation))
        if current is None or not current[1] or not _a_turn(current[0]):
            return False
        await self._stored(self._ask_stop(current[0], conversation, ABORTED))
        return True

    async def _ask_stop(self, holder: str, conversation: str, reason: str) -> None:
        """Stop ``holder``'s turn: here at once, else through a stop request to its instance."""
        if not _a_turn(holder):
            return
        turn = self._leased.get(holder)
        if turn is not None:
            turn.stop(reason, "aborted")
            return
        await request_stop(self.store, holder, conversation, reason)

    @contextlib.contextmanager
    def _listed(self, holder: str | None, turn: Turn) -> Iterator[None]:
        """Know ``holder``'s turn while it runs here (for stop requests)."""
        if holder is None:
            yield
            return
        self._leased[holder] = turn
        try:
            yield
        finally:
            self._leased.pop(holder, None)

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
            return self._after_running(user, conversation, text, key, stale_s)
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

    async def _after_running(
        self, user: str, conversation: str, text: str, key: str, stale_s: float
    ) -> AsyncIterator[Event]:
        """Replay the outcome of the key's running send, or run it if its instance died."""
        try:
            kept = await outcome(self.store, user, conversation, key, stale_s)
        except Exception:
            kept = [("error", {"error": "store_down", "message": PUBLIC_MESSAGES["store_down"]})]
        if kept is None:  # orphaned: the instance running it died (``instances.reap``)
            try:
                events = await self.send_once(user, conversation, text, key)
            except Exception as exc:
                code = error_code(exc)
                kept = [("error", {"error": code, "message": public_message(code, str(exc))})]
            else:
                async for event in events:
                    yield event
                return
        for event in kept:
            yield event

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
            lock = self.tracing.step("lock", self._turn_lock(conversation))
            async with self.gate.request(), lock:
                await self.check_owner(user, conversation)  # deleted while this send waited?
                holder = None
                try:
                    async with self._held_lease(conversation) as lease:
                        holder = lease.holder if lease is not None else None
                        with self._listed(holder, turn):
                            if holder is not None:  # deleted on another instance meanwhile?
                                await self.check_owner(user, conversation)
                            session = await self._open(user, conversation, lease, turn.store_failed)
                            try:
                                with self.tracing.span("turn"):
                                    yield session
                            finally:  # a cancelled caller cannot cut it (notebook 04's finish)
                                # The runtime flushes the turn's writes first: after a store
                                # failure (the reader already told) that lasts as long as the
                                # database stalls, and no next turn may open the session before
                                # it ends (the lease).
                                wait_s = DISCONNECT_S
                                if turn.store_failed.is_set():
                                    wait_s = max(DISCONNECT_S, self.settings.lease_ttl_s)
                                closing = self.tracing.span("session.close")
                                with closing, contextlib.suppress(Exception):
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
            with self.tracing.span("settle"):
                return await _settle(turn, final)

        async def _settle(turn: Turn, final: Event) -> Event:
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
            if key is not None and took is not None:  # a retry waits for this outcome
                events = [*turn.sent, final]
                await self._keep_trying(
                    lambda: record(self.store, user, conversation, key, took.holder, events),
                    self.settings.turn_timeout_s + self.settings.lease_ttl_s,
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
            ),
            user,
        )

    async def _let_go(self, conversation: str, holder: str) -> None:
        """After a fault, make sure the lease is given back: at once if the database answers,
        else from the background as soon as it does (until the lease would have run out)."""
        await self._keep_trying(
            lambda: self.store.drop_lease(conversation, holder), self.settings.lease_ttl_s
        )

    async def _keep_trying(self, write: Callable[[], Awaitable[Any]], for_s: float) -> None:
        """Do ``write`` now if the database answers within 2 s, else from the background as soon
        as it does, for up to ``for_s`` (a stalled database never holds up the caller)."""
        deadline = time.monotonic() + for_s
        with contextlib.suppress(Exception):
            await asyncio.wait_for(write(), 2.0)
            return

        async def retry() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(write(), 2.0)
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

    @contextlib.asynccontextmanager
    async def _held_lease(self, conversation: str) -> AsyncIterator[Lease | None]:
        """``_lease`` with its wait traced, counted in the leases this instance holds."""
        async with self.tracing.step("lease", self._lease(conversation)) as lease:
            if lease is None:
                yield lease
                return
            self.metrics.leases.inc()
            try:
                yield lease
            finally:
                self.metrics.leases.dec()

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
            hooks=self.tool_hooks(lambda _: user),
            **self._model_kwargs(user),
        )
        holder = lease.holder if lease is not None else None
        try:
            with self.tracing.span("session.open"):
                if not await resume_or_create(self.store, conversation, holder):
                    note(**{"app.session.resumed": False})
                    return await self.client.create_session(session_id=conversation, **options)
                note(**{"app.session.resumed": True})
                session = await self.client.resume_session(conversation, **options)
            await self.after_resume(user, conversation, session)
            return session
        except Exception as exc:
            if failed.is_set():  # the runtime failed because our store did: say so (503)
                raise StoreDown("the database did not answer while the session opened") from exc
            raise

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


def _a_turn(holder: str) -> bool:
    """Whether a lease holder is a running turn's (not a delete's, nor a retired lease)."""
    return "/" not in holder and f"#{DELETING}" not in holder


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
