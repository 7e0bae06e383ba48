"""Several instances behind nginx on one PostgreSQL, measured: throughput and latency, a kill -9
and a rolling deploy under load.

    .venv/bin/python bench/fleet.py                                  # the full run (~4 min)
    .venv/bin/python bench/fleet.py --seconds 3 --users 16 --sizes 3 --faults none

One fleet of the largest size runs throughout (``helpers/fleet``: each instance its own process
and runtime, a throwaway PostgreSQL unless ``DATABASE_URL`` is set, nginx in front). For "n behind
nginx" the others are marked ``down`` in nginx, so they take no request (they stay up, idle);
"1 direct" sends to the first instance's own port, without nginx. Each user sends turns to a
conversation of their own, one after another, each with an ``Idempotency-Key``, retried on it
until served (``helpers/fleet/load.py``). Per setting: turns per second, the time to the first
event of a reply and to its end (median, p95), and the failed attempts.

Faults, at the first ``--users`` level: ``kill`` (kill -9 of the last instance mid-load, restarted
after 6 s: the time from its death to the last request nginx sent it, turns lost and doubled) and
``deploy`` (a rolling deploy under load: failed requests, lost, doubled) and ``pg`` (the throwaway
PostgreSQL stopped for 3 s under load, then started again: what failed, the time to the first turn
served after, lost, doubled).

On this machine's 2 cores, more instances cannot add CPU: every instance, its runtime, the model,
nginx, PostgreSQL and the users share them. What the table shows is the cost of nginx and of
spreading over instances, not scaling; the last lines say so, with the ratio of 3 instances behind
nginx to 1 direct at the first users level (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.fleet.fleet import Fleet  # noqa: E402
from helpers.fleet.load import Load  # noqa: E402
from helpers.run import remove_dir, run_dir  # noqa: E402

DEAD_S = 6.0  # how long the killed instance stays dead before its restart
WARM_UP_S = 60.0  # the longest wait for every user's first turn (a new session) before measuring


async def measure(fleet: Fleet, size: int, users: int, seconds: float, direct: bool) -> dict:
    """One setting: ``size`` instances behind nginx (or the first one directly) for ``seconds``."""
    assert fleet.nginx is not None
    for k, instance in enumerate(fleet.instances):
        fleet.held.add(instance.name)  # the controller leaves the bench's choice alone
        await asyncio.to_thread(fleet.nginx.set_down, instance.upstream, k >= size)
    await asyncio.sleep(0.5)  # the reload's old workers hand over
    tokens = dict(list(fleet.tokens().items())[:users])
    url = fleet.instances[0].url if direct else fleet.url
    load = Load(url, tokens, request_s=60.0)
    runner = asyncio.ensure_future(load.run())
    deadline = time.monotonic() + WARM_UP_S  # not measured: conversations made, first turns
    while len(load.done) < len(tokens) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    began = time.time()
    await asyncio.sleep(seconds)
    ended = time.time()
    load.finish()
    await asyncio.wait_for(runner, 120)
    window = [a for a in load.attempts if began <= a.end <= ended]  # ended in the window
    measured = Load(url, tokens, attempts=window)
    return {
        "setup": f"{size} {'direct' if direct else 'behind nginx'}",
        "users": users,
        "turns_s": sum(a.ok for a in window) / seconds,
        "errors": sum(not a.ok for a in window),
        "codes": sorted({a.why for a in window if not a.ok}),
        **measured.latencies(),
    }


async def kill_run(fleet: Fleet, users: int, seconds: float) -> dict:
    """kill -9 of the last instance under load; its restart after ``DEAD_S``."""
    await _all_in(fleet)
    load = Load(fleet.url, dict(list(fleet.tokens().items())[:users]), request_s=10.0)
    runner = asyncio.ensure_future(load.run())
    await asyncio.sleep(max(seconds / 3, 2.0))
    dead = fleet.instances[-1]
    died = fleet.kill(len(fleet.instances) - 1)
    await asyncio.sleep(DEAD_S)
    back = time.time()
    await fleet.restart(len(fleet.instances) - 1)
    await asyncio.sleep(max(seconds / 3, 2.0))
    load.finish()
    await asyncio.wait_for(runner, 120)
    assert fleet.nginx is not None
    sent = [a.start for a in fleet.nginx.accesses() if dead.upstream in a.upstreams]
    last = max((t for t in sent if died <= t < back), default=died)
    return {
        "last_request_s": last - died,
        "failed": len(load.failed()),
        "turns": load.turns(),
        **await load.check(),
    }


async def deploy_run(fleet: Fleet, users: int) -> dict:
    """A rolling deploy of every instance under load."""
    await _all_in(fleet)
    load = Load(fleet.url, dict(list(fleet.tokens().items())[:users]), request_s=60.0)
    runner = asyncio.ensure_future(load.run())
    await asyncio.sleep(2.0)
    began = time.time()
    await fleet.deploy("v2")
    took = time.time() - began
    await asyncio.sleep(1.0)
    load.finish()
    await asyncio.wait_for(runner, 120)
    return {
        "took_s": took,
        "codes": sorted({a.why for a in load.failed()}),
        "failed": len(load.failed()),
        "turns": load.turns(),
        **await load.check(),
    }


async def pg_run(fleet: Fleet, users: int, away_s: float = 3.0) -> dict:
    """PostgreSQL stopped (fast shutdown) under load for ``away_s``, then started again."""
    await _all_in(fleet)
    assert fleet.pg is not None
    load = Load(fleet.url, dict(list(fleet.tokens().items())[:users]), request_s=30.0)
    runner = asyncio.ensure_future(load.run())
    await asyncio.sleep(2.0)
    await asyncio.to_thread(fleet.pg.halt)
    await asyncio.sleep(away_s)
    await asyncio.to_thread(fleet.pg.resume)
    back = time.time()
    await asyncio.sleep(3.0)
    load.finish()
    await asyncio.wait_for(runner, 120)
    served = [a.end - back for a in load.attempts if a.ok and a.start >= back]
    codes = sorted({a.why for a in load.failed()})
    return {
        "failed": len(load.failed()),
        "codes": codes,
        "recovery_s": min(served, default=float("nan")),
        **await load.check(),
    }


async def _all_in(fleet: Fleet) -> None:
    assert fleet.nginx is not None
    for instance in fleet.instances:
        await asyncio.to_thread(fleet.nginx.set_down, instance.upstream, False)
        fleet.held.discard(instance.name)
    await asyncio.sleep(0.5)


def show(rows: list[dict]) -> None:
    print(
        f"{'setup':16} {'users':>5} {'turns/s':>8} {'first p50':>9} {'first p95':>9} "
        f"{'whole p50':>9} {'whole p95':>9} {'errors':>6}"
    )
    for r in rows:
        print(
            f"{r['setup']:16} {r['users']:>5} {r['turns_s']:>8.1f} {r['first_p50']:>9.3f} "
            f"{r['first_p95']:>9.3f} {r['whole_p50']:>9.3f} {r['whole_p95']:>9.3f} "
            f"{r['errors']:>6}  {', '.join(r['codes'])}"
        )


async def main(args: argparse.Namespace) -> int:
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    levels = [int(u) for u in args.users.split(",")]
    faults = [f for f in args.faults.split(",") if f and f != "none"]
    folder = run_dir("bench-fleet")
    users = [f"user{i}" for i in range(max(levels))]
    rows: list[dict] = []
    fault_lines: list[str] = []
    try:
        async with Fleet(folder, size=max(sizes), users=users, lease_ttl_s=6.0) as fleet:
            for level in levels:
                rows.append(await measure(fleet, 1, level, args.seconds, direct=True))
                for size in sizes:
                    rows.append(await measure(fleet, size, level, args.seconds, direct=False))
            print(f"seconds per setting: {args.seconds:g}; time: seconds (time to first event, "
                  "to the reply's end)")  # fmt: skip
            show(rows)
            if "kill" in faults:
                k = await kill_run(fleet, levels[0], args.seconds)
                fault_lines.append(
                    f"kill -9 at {levels[0]} users: last request to the dead instance "
                    f"{k['last_request_s']:.2f} s after its death, {k['failed']} attempts failed "
                    f"(retried), {k['turns']} turns, lost {k['lost']}, doubled {k['doubled']}"
                )
            if "deploy" in faults:
                d = await deploy_run(fleet, levels[0])
                fault_lines.append(
                    f"rolling deploy of {len(fleet.instances)} at {levels[0]} users in "
                    f"{d['took_s']:.1f} s: {d['failed']} failed requests {d['codes']}, "
                    f"{d['turns']} turns, "
                    f"lost {d['lost']}, doubled {d['doubled']}"
                )
            if "pg" in faults and fleet.pg is not None:
                g = await pg_run(fleet, levels[0])
                fault_lines.append(
                    f"PostgreSQL away 3 s at {levels[0]} users: {g['failed']} attempts failed "
                    f"({', '.join(g['codes'])}; retried), first turn served {g['recovery_s']:.1f} "
                    f"s after it was back, lost {g['lost']}, doubled {g['doubled']}"
                )
    finally:
        remove_dir(folder)
    for line in fault_lines:
        print(line)
    print(
        f"this machine has {os.cpu_count()} cores: more instances add no CPU here; the figures "
        "show what nginx and spreading cost"
    )
    direct = next(r for r in rows if r["setup"] == "1 direct" and r["users"] == levels[0])
    most = max(sizes)
    behind = next(
        r for r in rows if r["setup"] == f"{most} behind nginx" and r["users"] == levels[0]
    )
    ratio = behind["turns_s"] / direct["turns_s"] if direct["turns_s"] else 0.0
    print(f"ratio {most} behind nginx / 1 direct at {levels[0]} users: {ratio:.2f} (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per setting")
    parser.add_argument("--users", default="16,64", help="user levels; faults at the first")
    parser.add_argument("--sizes", default="1,2,3", help="instances behind nginx")
    parser.add_argument("--faults", default="kill,deploy,pg", help="kill, deploy, pg, or none")
    sys.exit(asyncio.run(main(parser.parse_args())))
