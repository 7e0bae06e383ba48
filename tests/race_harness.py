"""Races on notebook 05's serving path: two runtimes, one session store, requests at swept offsets.

Each case runs trials on the real runtime with the local stand-in model. A trial starts requests
with a timing offset taken across the case's dangerous window, then counts what went wrong:

- ``leaks``: a request got a reply from a session that is not its user's, or claimed one;
- ``forks``: the stored history of the session is not a chain (``helpers.events.forks``);
- ``lost``: a request reported success but its turn (message and reply) is not stored;
- ``doubled``: one request's message is stored more than once;
- ``timeouts``: a request that had time enough failed with ``TimeoutError``;
- ``errors``: any other failure of a request that should have succeeded (a ``LeaseExpired`` whose
  lease had not run out, a turn cut by another request), or success reported for a turn that was
  stopped.

The suite runs a few trials per case (``tests/test_races.py``); for a long run:
``RACE_TRIALS=200 .venv/bin/python tests/race_harness.py [--engine sqlite|postgresql|both]
[--case NAME ...]``.

What the cases caught on older code (no adapter for it is kept; the counts are a reviewer's,
taken by driving these cases through the code before each fix):

- before ownership rows and per-request leases: ``claim`` 3 leaks in 9 trials; ``one-runtime``
  3 timeouts in 8; ``timeout`` 5 timeouts; ``renew`` 8 forks in 8. (``claim``'s held-open window
  changes nothing on the current code: mallory is refused by the owner check first.)
- before fenced writes and a cancellation-proof clean-up (the reviewer's probes of the same
  scenarios): ``stall`` forked the history in 6 of 8 trials on each engine; ``cancel-anyio``
  forked it or gave the model stale context in 7 of 12 on SQLite and, on PostgreSQL, closed the
  store's one connection in 9 of 9 cancelled requests (every later request failed);
  ``cancel-task`` held (0 in 6 and 0 in 10); ``delete`` left rows of the deleted user in 6 of 8
  (SQLite) and 4 of 6 (PostgreSQL); ``create-cancel`` made 13 of 24 later requests fail (the
  session could never be resumed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from copilot import CopilotClient

from helpers.events import forks, user_texts
from helpers.store.session_fs import SESSION_FS, store_fs, stored_events

KINDS = ("leaks", "forks", "lost", "doubled", "timeouts", "errors")
TURN_TIMEOUT_S = 30.0  # long enough for any turn here on a busy 2-core machine
SLOW_S = 2.5  # the stand-in's pause for cases that need a long turn ("Wait 2.5 seconds, then")


def trials(default: int) -> int:
    """Trials per case: ``RACE_TRIALS`` from the environment, else ``default``."""
    return int(os.environ.get("RACE_TRIALS") or default)


def offsets(n: int, lo: float, hi: float) -> list[float]:
    """``n`` start offsets (seconds) spread evenly across ``[lo, hi]``."""
    return [lo + (hi - lo) * i / max(1, n - 1) for i in range(n)]


class System:
    """What a case drives: sessions made for a user, and one request on a named runtime."""

    store: Any
    names: tuple[str, str] = ("runtime-1", "runtime-2")

    async def make_session(self, user: str) -> str:
        """A session id for ``user``, before any turn (as the application does it)."""
        raise NotImplementedError

    async def send(
        self, runtime: str, user: str, session_id: str, message: str, timeout_s: float | None = None
    ) -> str:
        """One request on ``runtime``; the reply's text."""
        raise NotImplementedError

    def hold_after_check(self, user: str, gate: asyncio.Event | None) -> None:
        """Hold ``user``'s next requests between the owner check and the turn until ``gate``."""
        raise NotImplementedError


@dataclass
class NewSystem(System):
    """The fixed serving path: ``Router`` per runtime (one app process per runtime), one store."""

    store: Any
    clients: dict[str, CopilotClient]
    options: dict[str, Any]
    lease_ttl_s: float = 30.0
    standin: Any = None  # the local model's request log, to see what context a turn was given
    routers: dict[str, Any] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)  # runtime -> stall (``stalled``)
    opening: asyncio.Event = field(default_factory=asyncio.Event)  # set as an open starts
    servers: dict[str, Any] = field(default_factory=dict)  # the runtimes, for faults (signals)
    after_open: Callable[[], Any] | None = None  # called as an open returns (``race_faults``)

    def __post_init__(self) -> None:
        from helpers.store.router import Router

        for name, client in self.clients.items():
            self.routers[name] = Router(
                {name: client},
                _Stalling(self.store, lambda name=name: self.delays.get(name, 0.0)),
                lambda client, sid, user, fresh, name=name: self.open_on(
                    name, client, sid, user, fresh
                ),
                turn_timeout_s=TURN_TIMEOUT_S,
                lease_ttl_s=self.lease_ttl_s,
            )
        check = self.store.check_owner

        async def held_check(user: str, session_id: str) -> None:
            await check(user, session_id)
            if user in self.gates:
                await asyncio.wait_for(self.gates[user].wait(), TURN_TIMEOUT_S)

        self.store.check_owner = held_check

    async def open(self, client: CopilotClient, session_id: str, user: str, fresh: bool) -> Any:
        return await self.open_on("", client, session_id, user, fresh)

    async def open_on(
        self, name: str, client: CopilotClient, session_id: str, user: str, fresh: bool
    ) -> Any:
        self.opening.set()
        handler = store_fs(self.routers[name].store if name else self.store)
        if fresh:
            session = await client.create_session(
                session_id=session_id, create_session_fs_handler=handler, **self.options
            )
        else:
            session = await client.resume_session(
                session_id, create_session_fs_handler=handler, **self.options
            )
        if self.after_open is not None:
            self.after_open()
        return session

    async def make_session(self, user: str) -> str:
        return await self.store.new_id(user)

    async def send(
        self, runtime: str, user: str, session_id: str, message: str, timeout_s: float | None = None
    ) -> str:
        _, reply = await self.routers[runtime].send(user, session_id, message, timeout_s=timeout_s)
        return reply

    def hold_after_check(self, user: str, gate: asyncio.Event | None) -> None:
        if gate is None:
            self.gates.pop(user, None)
        else:
            self.gates[user] = gate

    @contextlib.contextmanager
    def stalled(self, runtime: str, delay_s: float) -> Any:
        """In the block, ``runtime``'s lease renewals and session writes each land ``delay_s``
        late (a slow database round trip, a paused process)."""
        self.delays[runtime] = delay_s
        try:
            yield
        finally:
            self.delays.pop(runtime, None)


class _Stalling:
    """The store, with lease renewals and writes delayed by ``delay()`` seconds (0: none)."""

    # Called with (session id, path, content) after each append (``race_faults``'s ghost case).
    after_append: Callable[[str, str, str], Awaitable[None]] | None = None

    def __init__(self, store: Any, delay: Callable[[], float]) -> None:
        self._store, self._delay = store, delay

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if name not in ("extend_lease", "write", "append", "remove", "move"):
            return found

        async def late(*args: Any, **kwargs: Any) -> Any:
            if self._delay():
                await asyncio.sleep(self._delay())
            done = await found(*args, **kwargs)
            if name == "append" and self.after_append is not None:
                await self.after_append(*args[:3])
            return done

        return late


@contextlib.asynccontextmanager
async def clients_of(runtimes: dict[str, Any]) -> AsyncIterator[dict[str, CopilotClient]]:
    """One started ``session_fs`` client per runtime, stopped after the block."""
    clients = {
        name: CopilotClient(mode="empty", connection=server.connection(), session_fs=SESSION_FS)
        for name, server in runtimes.items()
    }
    try:
        for client in clients.values():
            await _start(client)
        yield clients
    finally:
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.stop()


async def _start(client: CopilotClient, wait_s: float = 10.0) -> None:
    """Start ``client``; retry while the runtime still counts a stopped client as its provider."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            await client.start()
            return
        except Exception as exc:
            if "already the session filesystem provider" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            print(f"retry start: {exc}")
            await asyncio.sleep(0.2)


@dataclass
class Outcome:
    """What one request did."""

    message: str
    reply: str | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def attempt(delay: float, send: Callable[[], Awaitable[str]], message: str) -> Outcome:  # noqa: D103
    await asyncio.sleep(delay)
    outcome = Outcome(message)
    try:
        outcome.reply = await send()
    except Exception as exc:  # counted by the caller
        outcome.error = exc
    return outcome


async def history_counts(
    store: Any, session_id: str, succeeded: list[Outcome], must_succeed: list[Outcome]
) -> Counter[str]:
    """Forks, lost, doubled turns, timeouts and errors of one session after a trial."""
    events = await stored_events(store, session_id)
    said = user_texts(events)
    counts: Counter[str] = Counter()
    counts["forks"] += forks(events) > 0
    for outcome in succeeded:
        stored = said.count(outcome.message)
        counts["doubled"] += stored > 1
        replied = _replied(events, outcome.message)
        counts["lost"] += stored == 0 or not replied
    for outcome in must_succeed:
        if isinstance(outcome.error, TimeoutError):
            counts["timeouts"] += 1
        elif outcome.error is not None:
            counts["errors"] += 1
    return counts


def _replied(events: list[dict[str, Any]], message: str) -> bool:
    """True when an assistant message follows ``message``'s user message, before the next one."""
    after = False
    for event in events:
        if event.get("type") == "user.message":
            if after:
                return False
            after = event["data"].get("content", "") == message
        elif after and event.get("type") == "assistant.message":
            return True
    return False


def tag() -> str:
    return secrets.token_hex(3)


# The cases. Each returns the counts of one trial at ``offset`` seconds.


async def case_claim(system: System, offset: float, hold: bool = False) -> Counter[str]:
    """Items 1-3: u2's first message and mallory's, to u2's new session, ``offset`` apart.

    With ``hold``, mallory's request is held between its owner check and its turn until u2's turn
    is stored: the check-then-act window, made deterministic.
    """
    pin = f"{secrets.randbelow(9000) + 1000}"
    session_id = await system.make_session("u2")
    gate = asyncio.Event() if hold else None
    system.hold_after_check("mallory", gate)
    name = system.names[0]
    first = f"Remember: the pin is {pin}."

    async def u2() -> Outcome:
        done = await attempt(0, lambda: system.send(name, "u2", session_id, first), first)
        if gate is not None:
            gate.set()
        return done

    ask = f"What is the pin? ({tag()})"
    mine, theirs = await asyncio.gather(
        u2(), attempt(offset, lambda: system.send(system.names[1], "mallory", session_id, ask), ask)
    )
    system.hold_after_check("mallory", None)
    if os.environ.get("RACE_DEBUG"):
        print(f"claim at {offset:.2f} s: u2 {mine!r}, mallory {theirs!r}")
    counts = await history_counts(system.store, session_id, [o for o in (mine,) if o.ok], [mine])
    claimed = await system.store.owner(session_id) not in (None, "u2")
    counts["leaks"] += theirs.ok or pin in (theirs.reply or "") or claimed
    return counts


async def _ready(system: System, user: str) -> str:
    session_id = await system.make_session(user)
    await system.send(system.names[0], user, session_id, "Remember: the colour is TEAL-42.")
    return session_id


async def case_one_runtime(system: System, offset: float) -> Counter[str]:
    """Items 4-5: two requests of one session on runtime 1 ``offset`` apart, one on runtime 2."""
    session_id = await _ready(system, "u4")
    r1, r2 = system.names
    messages = [f"Note {n} ({tag()})." for n in (1, 2, 3)]
    outcomes = await asyncio.gather(
        attempt(0, lambda: system.send(r1, "u4", session_id, messages[0]), messages[0]),
        attempt(offset, lambda: system.send(r1, "u4", session_id, messages[1]), messages[1]),
        attempt(offset, lambda: system.send(r2, "u4", session_id, messages[2]), messages[2]),
    )
    return await history_counts(
        system.store, session_id, [o for o in outcomes if o.ok], list(outcomes)
    )


async def case_timeout(system: System, offset: float) -> Counter[str]:
    """Item 6: a request times out (1 s into a 2.5 s turn); another of the session arrives near
    that moment on the same runtime and must run, whole, after the first one's turn is stopped."""
    session_id = await _ready(system, "u6")
    r1 = system.names[0]
    slow = f"Wait {SLOW_S} seconds, then say hello ({tag()})."
    other = f"Note after the timeout ({tag()})."
    timed_out, then = await asyncio.gather(
        attempt(0, lambda: system.send(r1, "u6", session_id, slow, timeout_s=1.0), slow),
        attempt(offset, lambda: system.send(r1, "u6", session_id, other), other),
    )
    counts = await history_counts(system.store, session_id, [o for o in (then,) if o.ok], [then])
    if not isinstance(timed_out.error, TimeoutError):
        counts["errors"] += 1  # the slow request must fail with TimeoutError, never succeed
    kinds = [e.get("type") for e in await stored_events(system.store, session_id)]
    counts["errors"] += "abort" not in kinds  # and its turn must be stopped, not left running
    return counts


async def case_renew(system: System, offset: float) -> Counter[str]:
    """Item 7: a 2.5 s turn under a lease of 1.2 s; runtime 2 asks for it ``offset`` in."""
    session_id = await _ready(system, "u7")
    r1, r2 = system.names
    slow = f"Wait {SLOW_S} seconds, then say hello ({tag()})."
    other = f"Note from runtime 2 ({tag()})."
    outcomes = await asyncio.gather(
        attempt(0, lambda: system.send(r1, "u7", session_id, slow), slow),
        attempt(offset, lambda: system.send(r2, "u7", session_id, other), other),
    )
    return await history_counts(
        system.store, session_id, [o for o in outcomes if o.ok], list(outcomes)
    )


async def case_stall(system: System, offset: float) -> Counter[str]:
    """Review 3: runtime 1's renewals and writes land one TTL late during a 2.5 s turn (its lease
    runs out mid-turn); runtime 2 asks ``offset`` in, takes the lease and takes a turn. Runtime 1's
    late writes must be refused: runtime 2's turn is stored whole, the history stays a chain, and
    runtime 1 reports no success."""
    session_id = await _ready(system, "u11")
    r1, r2 = system.names
    slow = f"Wait {SLOW_S} seconds, then say hello ({tag()})."
    other = f"Note from runtime 2 ({tag()})."
    with system.stalled(r1, RENEW_TTL_S):  # type: ignore[attr-defined]
        stalled, thief = await asyncio.gather(
            attempt(0, lambda: system.send(r1, "u11", session_id, slow), slow),
            attempt(offset, lambda: system.send(r2, "u11", session_id, other), other),
        )
    done = [o for o in (stalled, thief) if o.ok]
    counts = await after_turns(system, "u11", session_id, done, [thief])
    # Its lease ran out mid-turn: a success only for a turn read back stored whole (``lost``).
    counts["errors"] += stalled.ok and not _replied(
        await stored_events(system.store, session_id), slow
    )
    if os.environ.get("RACE_DEBUG"):
        print(f"stall at {offset:.2f} s: r1 {stalled.error!r}, r2 {thief.error!r}: {dict(counts)}")
    return counts


async def case_cancel(system: System, offset: float, how: str = "anyio") -> Counter[str]:
    """Review 2: a request on runtime 1 is cancelled ``offset`` into a 1 s turn, as a server does
    when its client hangs up: ``anyio`` (a cancel scope, cancelling again at every await, as
    Starlette's) or ``task`` (one ``task.cancel()``). Later turns of the session on both runtimes,
    and another user's, must run on the stored history (no fork, no stale model context)."""
    session_id = await _ready(system, "u9")
    message = f"Wait 1 seconds, then say hello ({tag()})."
    if how == "anyio":
        with anyio.move_on_after(offset):
            with contextlib.suppress(Exception):
                await system.send(system.names[0], "u9", session_id, message)
    else:
        task = asyncio.ensure_future(system.send(system.names[0], "u9", session_id, message))
        await asyncio.sleep(offset)
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, TURN_TIMEOUT_S)
    return await after_turns(system, "u9", session_id, [], [], follow=3)


async def case_delete(system: System, offset: float) -> Counter[str]:
    """Review 5: the user is deleted ``offset`` into a 2.5 s turn of theirs. No row of the session
    (file, lease) may be left once the turn has ended (``leaks``); and a turn cut by the delete
    must not report success (``errors``)."""
    user = f"u12{tag()}"
    session_id = await _ready(system, user)
    slow = f"Wait {SLOW_S} seconds, then say hello ({tag()})."
    turn = asyncio.ensure_future(
        attempt(0, lambda: system.send(system.names[0], user, session_id, slow), slow)
    )
    await asyncio.sleep(offset)
    await system.store.delete_user(user)
    done = await turn
    await asyncio.sleep(0.5)  # what the runtime still had to write
    counts: Counter[str] = Counter()
    left = await system.store.rows(session_id=session_id)
    counts["leaks"] += bool(left) or await system.store.lease_of(session_id) is not None
    counts["errors"] += done.ok and offset < 1.0  # cut by the delete well before its end
    return counts


async def case_create_cancel(system: System, offset: float, how: str = "task") -> Counter[str]:
    """Review 4: a new session's first request is cancelled ``offset`` after its open (the
    ``create_session``) started, with one ``task.cancel()`` or an anyio cancel scope. The next
    requests (runtime 2, 1) must work: none may fail, the history must be a chain."""
    session_id = await system.make_session("u13")
    first = f"Hello ({tag()})."
    opening: asyncio.Event = system.opening  # type: ignore[attr-defined]
    opening.clear()

    async def send() -> None:
        with contextlib.suppress(Exception):
            await system.send(system.names[0], "u13", session_id, first)

    async def cancel_later(cancel: Callable[[], Any]) -> None:
        await asyncio.wait_for(opening.wait(), TURN_TIMEOUT_S)
        await asyncio.sleep(offset)
        cancel()

    if how == "anyio":
        with anyio.CancelScope() as scope:
            killer = asyncio.ensure_future(cancel_later(scope.cancel))
            await send()
    else:
        task = asyncio.ensure_future(send())
        killer = asyncio.ensure_future(cancel_later(task.cancel))
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, TURN_TIMEOUT_S)
    killer.cancel()
    with contextlib.suppress(BaseException):
        await killer
    await asyncio.sleep(0.5)  # what the runtime still writes of the cut create lands first
    return await after_turns(system, "u13", session_id, [], [], follow=2)


async def after_turns(
    system: System,
    user: str,
    session_id: str,
    succeeded: list[Outcome],
    must_succeed: list[Outcome],
    follow: int = 1,
) -> Counter[str]:
    """``follow`` more turns of the session (runtime 2, 1, 2, ...) and one of another user's new
    session on runtime 1, all of which must succeed; then the counts of ``history_counts``, and
    ``forks`` also for a turn whose model request lacked a stored message (stale context)."""
    outcomes: list[Outcome] = []
    stale = 0
    for n in range(follow):
        runtime = system.names[(n + 1) % 2]
        message = f"Follow-up {n} ({tag()})."
        outcome = await attempt(
            0, lambda r=runtime, m=message: system.send(r, user, session_id, m), message
        )
        outcomes.append(outcome)
        stale += outcome.ok and _stale(
            system, session_id, message, await stored_events(system.store, session_id)
        )
    other = await system.make_session(f"{user}other")
    hello = f"Hello from another user ({tag()})."
    bystander = await attempt(
        0, lambda: system.send(system.names[0], f"{user}other", other, hello), hello
    )
    counts = await history_counts(
        system.store,
        session_id,
        [*succeeded, *[o for o in outcomes if o.ok]],
        [*must_succeed, *outcomes],
    )
    counts["errors"] += not bystander.ok
    counts["forks"] += stale
    return counts


def _stale(system: System, session_id: str, message: str, events: list[dict[str, Any]]) -> bool:
    """True when the model's request for ``message`` lacked a user message the store holds."""
    standin = getattr(system, "standin", None)
    if standin is None or not standin.requests:
        return False
    request = standin.requests[-1]
    if message not in request.user_messages[-1:]:
        return False
    return any(said not in request.user_messages for said in user_texts(events))


RENEW_TTL_S = 1.2

# name -> (case, default trials in the suite, offset window in seconds, lease TTL)
CASES: dict[str, tuple[Callable[..., Awaitable[Counter[str]]], int, tuple[float, float], float]] = {
    "claim": (case_claim, 16, (0.0, 0.03), 30.0),
    "one-runtime": (case_one_runtime, 8, (0.0, 0.5), 30.0),
    "timeout": (case_timeout, 2, (0.6, 1.4), 30.0),
    "renew": (case_renew, 3, (0.2, 2.2), RENEW_TTL_S),
    "stall": (case_stall, 2, (1.3, 1.9), RENEW_TTL_S),
    "cancel-anyio": (case_cancel, 3, (0.05, 1.3), 30.0),
    "cancel-task": (functools.partial(case_cancel, how="task"), 2, (0.05, 1.3), 30.0),
    "delete": (case_delete, 2, (0.3, 2.0), 30.0),
    "create-cancel": (case_create_cancel, 4, (0.0, 0.06), 30.0),
    "create-cancel-anyio": (
        functools.partial(case_create_cancel, how="anyio"),
        2,
        (0.0, 0.06),
        30.0,
    ),
}


async def run_case(
    make_system: Callable[[float], System], name: str, n: int | None = None
) -> Counter[str]:
    """Run case ``name`` for ``n`` trials (default: the suite's, or ``RACE_TRIALS``); sum counts."""
    case, default, (lo, hi), ttl = CASES[name]
    n = n or trials(default)
    system = make_system(ttl)
    total: Counter[str] = Counter({kind: 0 for kind in KINDS})
    for offset in offsets(n, lo, hi):
        total.update(await case(system, offset))
    if name == "claim":  # and once with the window held open deterministically
        total.update(await case_claim(system, 0.0, hold=True))
    return total


async def _main(
    engines: list[str],
    n: int | None,
    make: Callable[..., System] | None = None,
    cases: list[str] | None = None,
) -> None:
    make = make or NewSystem
    from pg_server import find_bin_dir, start_postgres

    from helpers.model.backends import choose_backend
    from helpers.run import remove_dir, run_dir
    from helpers.runtime.server import start_server
    from helpers.store import open_store

    run = run_dir("races")
    backend = choose_backend("local", env={})
    servers = {name: start_server(backend, home=run / name) for name in System.names}
    pg = start_postgres() if "postgresql" in engines and find_bin_dir() else None
    options = dict(available_tools=[], **backend.session_kwargs())
    try:
        async with clients_of(servers) as clients:
            for engine in engines:
                url = "" if engine == "sqlite" else (pg.url if pg else None)
                if url is None:
                    print(f"{engine}: skipped (no PostgreSQL binaries)")
                    continue
                store = await open_store(run, url, schema=f"races_{tag()}" if url else "")
                for name in cases or CASES:
                    started = time.perf_counter()
                    counts = await run_case(
                        lambda ttl, s=store: make(
                            s,
                            clients,
                            options,
                            lease_ttl_s=ttl,
                            standin=backend.standin,
                            servers=servers,
                        ),
                        name,
                        n,
                    )
                    took = time.perf_counter() - started
                    shown = ", ".join(f"{k} {counts[k]}" for k in KINDS)
                    ran = n or trials(CASES[name][1])
                    held = " + 1 held" if name == "claim" else ""
                    print(
                        f"{engine:10} {name:12} trials {ran}{held}: {shown} ({took:.0f} s)",
                        flush=True,
                    )
                if engine == "postgresql":
                    store.drop_schema()
                await store.close()
    finally:
        for server in servers.values():
            server.stop()
        if pg:
            pg.stop()
        backend.close()
        remove_dir(run)


def main() -> None:
    import race_faults  # noqa: F401  (adds the fault cases to CASES)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--trials", type=int, default=None, help="per case (else RACE_TRIALS)")
    parser.add_argument("--case", choices=list(CASES), action="append", help="(repeatable)")
    args = parser.parse_args()
    engines = ["sqlite", "postgresql"] if args.engine == "both" else [args.engine]
    asyncio.run(_main(engines, args.trials, cases=args.case))


if __name__ == "__main__":
    import race_harness  # the module proper, whose CASES race_faults extends

    race_harness.main()
