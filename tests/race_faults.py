"""Races that need a fault: a runtime stopped (SIGSTOP) or killed (-9), a busy thread pool, a lease
lost after the reply was stored, a user deleted while their session opens, an unknown id.

Importing this module adds its cases to ``race_harness.CASES`` (the suite and
``tests/race_harness.py`` run them with the others). Counts, as ``race_harness`` defines them:

- ``sigstop`` (issue 21, item 1): runtime 1 stopped mid-turn past the request's timeout, its stop
  timeouts and the lease's TTL; a new request resumes the session on runtime 1 around its wake-up.
- ``cancel-queued`` (item 3): a ``task.cancel()`` while ``session.send`` waits in the SDK's busy
  thread pool; the request must end within ``CANCEL_LIMIT_S`` (else ``timeouts``).
- ``ghost`` (item 4): the lease runs out just after the reply is stored; a request reporting a
  failure whose turn is stored with a reply is an ``error``, and the client's retry then doubles it.
- ``unknown-id`` (item 5) and ``delete-open`` (item 6): refusals must be ``NotYourSession``.
- ``kill``: runtime 1 killed (-9) under a router of both runtimes with turns running; every later
  turn goes to runtime 2 and none is lost or doubled; once runtime 1 is back it serves again.

On the router before issue 21's fixes (same cases, ``RACE_TRIALS=6``, per database, SQLite and
PostgreSQL alike): ``cancel-queued`` 6 timeouts (each cancelled request ended 10 s later);
``ghost`` 6 errors and 6 doubled; ``unknown-id`` 6 errors (``LeaseExpired`` after the runtime was
asked); ``delete-open`` 6 errors (``JsonRpcError``, ``LeaseExpired``); ``kill`` 18 errors (retries
and later turns sent to the dead runtime); ``sigstop`` (4 trials, stop timeouts shortened to 1 s as
here) 2 timeouts and 1 error on SQLite, 3 timeouts on PostgreSQL: the resumed request was unloaded
by the stalled one's late ``detach`` and never went idle, or failed in the runtime. After the
fixes: 0 everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections import Counter
from typing import Any

from copilot import CopilotClient
from race_harness import (
    CASES,
    RENEW_TTL_S,
    TURN_TIMEOUT_S,
    NewSystem,
    Outcome,
    _ready,
    _start,
    after_turns,
    attempt,
    tag,
)

from helpers.errors import NotYourSession
from helpers.events import forks
from helpers.store.router import Router
from helpers.store.session_fs import SESSION_FS, stored_events

STALL_S = 4.5  # how long runtime 1 is stopped: past the request's timeout, stop timeouts and TTL
STOP_S = 1.0  # the routers' stop timeouts in the stall case (the default 10 s, shortened)
BUSY_S = 0.4  # each blocking job that keeps the SDK's thread pool busy
CANCEL_LIMIT_S = 5.0  # a cancelled request must end within this (the old code waited 10 s)


def replied(events: list[dict[str, Any]], message: str) -> int:
    """How many times ``message`` is stored with an assistant reply after it."""
    count, after = 0, False
    for event in events:
        if event.get("type") == "user.message":
            after = event["data"].get("content", "") == message
        elif after and event.get("type") == "assistant.message":
            count, after = count + 1, False
    return count


async def _until_stored(system: NewSystem, session_id: str, text: str, kind: str) -> None:
    """Wait until an event of ``kind`` follows the user message ``text`` in the store."""
    async with asyncio.timeout(TURN_TIMEOUT_S):
        while True:
            events = await stored_events(system.store, session_id)
            seen = False
            for event in events:
                if event.get("type") == "user.message":
                    seen = event["data"].get("content", "") == text
                elif seen and event.get("type") == kind:
                    return
            if kind == "user.message" and seen:
                return
            await asyncio.sleep(0.02)


async def case_sigstop(system: NewSystem, offset: float) -> Counter[str]:
    """Item 1: runtime 1 is stopped for ``STALL_S`` just after a turn starts; that request times
    out and cannot close its session; ``offset`` s after runtime 1 is woken (negative: before)
    a new request resumes the session on runtime 1. It must succeed (the old code timed it out:
    the stalled request's late ``detach`` unloaded it), the stalled turn's writes must not reach
    its history (no fork), and later turns on both runtimes work."""
    r1, _ = system.names
    for router in system.routers.values():
        router.stop_s = STOP_S
    session_id = await _ready(system, "u14")
    slow = f"Wait 1 seconds, then say hello ({tag()})."
    first = asyncio.ensure_future(
        attempt(0, lambda: system.send(r1, "u14", session_id, slow, timeout_s=1.5), slow)
    )
    await _until_stored(system, session_id, slow, "user.message")
    group = system.servers[r1].pid
    os.killpg(group, signal.SIGSTOP)
    try:
        await asyncio.sleep(STALL_S + min(0.0, offset))
        resume = f"Note after the stall ({tag()})."
        second = asyncio.ensure_future(
            attempt(0, lambda: system.send(r1, "u14", session_id, resume), resume)
        )
        await asyncio.sleep(-min(0.0, offset))
    finally:
        os.killpg(group, signal.SIGCONT)
    await asyncio.sleep(max(0.0, offset))
    stalled, resumed = await first, await second
    await asyncio.sleep(1.0)  # what the woken runtime still sends lands before the next turns
    counts = await after_turns(
        system, "u14", session_id, [o for o in (stalled, resumed) if o.ok], [resumed], follow=2
    )
    if os.environ.get("RACE_DEBUG"):
        print(f"sigstop {offset:+.2f}: {stalled.error!r} / {resumed.error!r}: {dict(counts)}")
    return counts


async def case_cancel_queued(system: NewSystem, offset: float) -> Counter[str]:
    """Item 3: the SDK's thread pool is made busy as the session opens, and the request is
    cancelled ``offset`` s later, while its ``session.send`` still waits there. It must end soon
    (``timeouts`` if it takes ``CANCEL_LIMIT_S``), holding nothing, and the session goes on."""
    r1 = system.names[0]
    session_id = await _ready(system, "u15")
    loop = asyncio.get_running_loop()
    sleepers: list[asyncio.Future[Any]] = []
    opened = asyncio.Event()

    def busy() -> None:
        workers = getattr(loop._default_executor, "_max_workers", 8) or 8  # type: ignore[attr-defined]
        sleepers.extend(loop.run_in_executor(None, time.sleep, BUSY_S) for _ in range(2 * workers))
        opened.set()

    message = f"Wait 1 seconds, then say hello ({tag()})."
    system.after_open = busy
    try:
        task = asyncio.ensure_future(system.send(r1, "u15", session_id, message))
        await asyncio.wait_for(opened.wait(), TURN_TIMEOUT_S)
    finally:
        system.after_open = None
    await asyncio.sleep(offset)
    cancelled = time.monotonic()
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(task, TURN_TIMEOUT_S)
    took = time.monotonic() - cancelled
    await asyncio.gather(*sleepers)
    counts = await after_turns(system, "u15", session_id, [], [], follow=2)
    counts["timeouts"] += took > CANCEL_LIMIT_S
    if os.environ.get("RACE_DEBUG"):
        print(f"cancel-queued {offset:.2f}: ended {took:.1f} s after the cancel: {dict(counts)}")
    return counts


async def case_ghost(system: NewSystem, offset: float) -> Counter[str]:
    """Item 4: the request's lease runs out ``offset`` s after the append that stores its reply
    commits (the row's expiry set in the past, as a stalled renewal leaves it). A failure reported
    for a turn stored with its reply is an ``error``; the client then retries, and a reply stored
    twice is ``doubled``."""
    r1 = system.names[0]
    session_id = await _ready(system, "u16")
    message = f"Wait 1 seconds, then say hello ({tag()})."
    store = system.routers[r1].store

    async def expire(written: str, path: str, content: str) -> None:
        if written == session_id and '"assistant.message"' in content:
            await asyncio.sleep(offset)
            await system.store.execute(
                "UPDATE session_leases SET expires_at = 0 WHERE session_id = ?", (session_id,)
            )

    store.after_append = expire
    try:
        first = await attempt(0, lambda: system.send(r1, "u16", session_id, message), message)
    finally:
        store.after_append = None
    counts: Counter[str] = Counter()
    counts["errors"] += not first.ok and replied(
        await stored_events(system.store, session_id), message
    )
    retry = first
    if not first.ok:
        retry = await attempt(0, lambda: system.send(r1, "u16", session_id, message), message)
    events = await stored_events(system.store, session_id)
    counts["doubled"] += replied(events, message) > 1
    counts["lost"] += retry.ok and replied(events, message) == 0
    counts["errors"] += not retry.ok
    counts["forks"] += forks(events) > 0
    if os.environ.get("RACE_DEBUG"):
        print(f"ghost {offset:.3f}: first {first.error!r}: {dict(counts)}")
    return counts


async def case_unknown_id(system: NewSystem, offset: float) -> Counter[str]:
    """Item 5: an unknown id, with no user and with a user, is refused with ``NotYourSession``
    before the runtime is asked; nothing of it is stored."""
    counts: Counter[str] = Counter()
    unknown = f"user-nobody-{secrets.token_hex(8)}"
    for user in (None, "u17"):
        outcome = await attempt(
            offset, lambda u=user: system.send(system.names[0], u, unknown, "Hello."), "Hello."
        )
        counts["errors"] += not isinstance(outcome.error, NotYourSession)
    counts["leaks"] += bool(await system.store.rows(session_id=unknown))
    counts["leaks"] += await system.store.lease_of(unknown) is not None
    return counts


async def case_delete_open(system: NewSystem, offset: float) -> Counter[str]:
    """Item 6: the user is deleted ``offset`` s after their session starts opening (past the
    owner checks): the request gets ``NotYourSession`` (or its turn ended before the delete), no
    other error, and no row is left."""
    user = f"u18{tag()}"
    session_id = await _ready(system, user)
    message = f"Hello again ({tag()})."
    system.opening.clear()
    turn = asyncio.ensure_future(
        attempt(0, lambda: system.send(system.names[0], user, session_id, message), message)
    )
    await asyncio.wait_for(system.opening.wait(), TURN_TIMEOUT_S)
    await asyncio.sleep(offset)
    await system.store.delete_user(user)
    done = await turn
    await asyncio.sleep(0.3)  # what the runtime still had to write
    counts: Counter[str] = Counter()
    counts["errors"] += not done.ok and not isinstance(done.error, NotYourSession)
    counts["leaks"] += bool(await system.store.rows(session_id=session_id))
    counts["leaks"] += await system.store.lease_of(session_id) is not None
    if os.environ.get("RACE_DEBUG"):
        print(f"delete-open {offset:.2f}: {done.error!r}: {dict(counts)}")
    return counts


async def case_kill(system: NewSystem, offset: float) -> Counter[str]:
    """The router's health: runtime 1 is killed (-9) ``offset`` s into turns running on both
    runtimes. Each failed request is retried once; then every session takes one more turn. All of
    those must succeed on runtime 2, nothing lost or doubled; once runtime 1 is started again and
    its client replaced, the router sends to it again."""
    r1, r2 = system.names
    router = Router(
        dict(system.clients),
        system.store,
        system.open,
        turn_timeout_s=TURN_TIMEOUT_S,
        lease_ttl_s=system.lease_ttl_s,
    )
    router.retry_s = 1.0  # a runtime that failed is tried again after this
    users = [f"u19{tag()}" for _ in range(4)]
    ids = [await system.store.new_id(user) for user in users]
    await asyncio.gather(
        *(router.send(u, s, "Remember: TEAL-42.") for u, s in zip(users, ids, strict=True))
    )

    async def turns(text: str, which: list[int]) -> dict[int, Outcome]:
        messages = {n: f"{text} ({tag()})." for n in which}
        done = await asyncio.gather(
            *(
                attempt(0, lambda n=n: _reply(router, users[n], ids[n], messages[n]), m)
                for n, m in messages.items()
            )
        )
        return dict(zip(which, done, strict=True))

    running = asyncio.ensure_future(turns("Wait 1 seconds, then say hello", list(range(4))))
    await asyncio.sleep(offset)
    os.killpg(system.servers[r1].pid, signal.SIGKILL)
    first = await running
    served = router.served[r1]
    retried = await turns("Retry", [n for n, o in first.items() if not o.ok])
    after = await turns("One more turn", list(range(4)))
    counts: Counter[str] = Counter()
    counts["errors"] += router.served[r1] != served  # a dead runtime served nothing
    for n, session_id in enumerate(ids):
        events = await stored_events(system.store, session_id)
        counts["forks"] += forks(events) > 0
        for outcome in (first[n], retried.get(n), after[n]):
            if outcome is not None and outcome.ok:
                stored = replied(events, outcome.message)
                counts["lost"] += stored == 0
                counts["doubled"] += stored > 1
        counts["errors"] += not first[n].ok and replied(events, first[n].message) > 0
    counts["errors"] += sum(not o.ok for o in (*retried.values(), *after.values()))
    counts["errors"] += not await _back(system, router)
    if os.environ.get("RACE_DEBUG"):
        print(f"kill {offset:.2f}: {[o.error for o in first.values()]!r}: {dict(counts)}")
    return counts


async def _reply(router: Router, user: str, session_id: str, message: str) -> str:
    return (await router.send(user, session_id, message))[1]


async def _back(system: NewSystem, router: Router) -> bool:
    """Start runtime 1 again with a new client; True once the router serves a turn on it."""
    r1 = system.names[0]
    server = system.servers[r1]
    await asyncio.to_thread(server.restart)
    client = CopilotClient(mode="empty", connection=server.connection(), session_fs=SESSION_FS)
    await _start(client)
    old, system.clients[r1] = system.clients[r1], client  # the later cases use the new one
    with contextlib.suppress(Exception):
        await asyncio.wait_for(old.stop(), 10)
    router.clients[r1] = client
    for router_of_one in system.routers.values():
        if r1 in router_of_one.clients:
            router_of_one.clients[r1] = client
    await asyncio.sleep(router.retry_s)
    before = router.served[r1]
    users = [f"u20{tag()}" for _ in range(2)]
    ids = [await system.store.new_id(user) for user in users]
    await asyncio.gather(*(router.send(u, s, "Hello.") for u, s in zip(users, ids, strict=True)))
    return router.served[r1] > before


# name -> (case, default trials in the suite, offset window in seconds, lease TTL)
CASES.update(
    {
        "sigstop": (case_sigstop, 2, (-1.0, 0.3), RENEW_TTL_S),
        "cancel-queued": (case_cancel_queued, 2, (0.0, 0.3), 30.0),
        "ghost": (case_ghost, 2, (0.0, 0.05), 30.0),
        "unknown-id": (case_unknown_id, 1, (0.0, 0.0), 30.0),
        "delete-open": (case_delete_open, 3, (0.0, 0.06), 30.0),
        "kill": (case_kill, 1, (0.3, 0.9), RENEW_TTL_S),
    }
)
