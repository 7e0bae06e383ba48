"""Metering the web service: the ledger exact against the model's own count and the runtime's
totals, at most once under a retry, reconciliation of calls no instance recorded, budgets refused
before the runtime is asked (and their race at the edge, on SQLite and PostgreSQL), a rate that
holds across two instances, the tool policy and its audit, and deleting a user.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pg_fixture
import pytest
from peer_model import PeerModel
from web_fixture import ServiceThread

from helpers.errors import Refused
from helpers.run import TMP, remove_dir
from helpers.store.session_fs import stored_events
from helpers.web.budgets import give_back, take_hold, take_turn
from helpers.web.client import Caller
from helpers.web.db import open_web_store
from helpers.web.ledger import Call, record, runtime_totals, totals_of
from helpers.web.service import Settings

pytestmark = pytest.mark.runtime
postgres_url = pg_fixture.postgres_url
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def web() -> Iterator[ServiceThread]:
    settings = Settings(turn_timeout_s=30, turns_per_user=4, plans={"R": "read-only"})
    running = ServiceThread(settings)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def tokens(web: ServiceThread) -> dict[str, str]:
    return {user: web.call(web.service.tokens.issue(user)) for user in ("A", "B", "R", "W")}


def run(web: ServiceThread, work: object, timeout: float = 60) -> object:
    return web.call(work, timeout)  # type: ignore[arg-type]


def ledger_rows(web: ServiceThread, where: str = "1 = 1", args: tuple = ()) -> list[tuple]:
    columns = "owner, conversation, source, input_tokens, output_tokens"
    sql = f"SELECT {columns} FROM usage_ledger WHERE {where}"
    rows, _ = run(web, web.service.store.execute(sql, args))  # type: ignore[misc]
    return rows


async def runtime_metrics(web: ServiceThread, conversation: str) -> tuple[int, int, int]:
    """The runtime's own totals of a conversation (``session.usage.getMetrics`` on a resume)."""
    service = web.service
    session = await service.client.resume_session(
        conversation,
        create_session_fs_handler=__import__(
            "helpers.store.session_fs", fromlist=["store_fs"]
        ).store_fs(service.store),
        available_tools=[],
        **service.backend.session_kwargs(),
    )
    try:
        return runtime_totals(await session.rpc.usage.get_metrics())
    finally:
        await session.disconnect()


def test_the_ledger_has_one_row_per_model_call(web, tokens) -> None:
    async def turns() -> list[str]:
        async with Caller(web.url, tokens["A"]) as a, Caller(web.url, tokens["B"]) as b:
            ids = [await a.create(), await b.create()]
            before = web.model_requests()
            for n in range(3):
                replies = await asyncio.gather(
                    a.send(ids[0], f"Remember: fact {n} is {n * 7}."),
                    b.send(ids[1], f"Remember: item {n} is blue-{n}."),
                )
                assert all(r.done for r in replies), [r.error for r in replies]
            return [*ids, str(web.model_requests() - before)]

    *ids, calls = run(web, turns())  # type: ignore[misc]
    rows = ledger_rows(web, "conversation IN (?, ?)", tuple(ids))
    assert len(rows) == int(calls) == 6, f"model calls {calls}, ledger rows {len(rows)}"
    assert {r[0] for r in rows} == {"A", "B"} and {r[2] for r in rows} == {"call"}
    for conversation in ids:
        mine = run(web, totals_of(web.service.store, conversation))
        theirs = run(web, runtime_metrics(web, conversation))
        assert mine == theirs, f"ledger {mine} != runtime {theirs} for {conversation}"


def test_a_retry_with_the_same_key_is_metered_once(web, tokens) -> None:
    async def twice() -> tuple[str, int]:
        async with Caller(web.url, tokens["A"]) as a:
            cid = await a.create()
            before = web.model_requests()
            first = await a.send(cid, "Remember: the key is K-1.", key="k-1")
            again = await a.send(cid, "Remember: the key is K-1.", key="k-1")
            assert first.done and again.text == first.text
            return cid, web.model_requests() - before

    cid, calls = run(web, twice())  # type: ignore[misc]
    assert calls == 1 and len(ledger_rows(web, "conversation = ?", (cid,))) == 1


def test_calls_no_instance_recorded_are_reconciled(web, tokens) -> None:
    """As if the instance that ran two turns was killed before its ledger writes landed, and
    another one (which reconciles on its first resume of the conversation) took the next."""

    async def lost() -> str:
        async with Caller(web.url, tokens["A"]) as a:
            cid = await a.create()
            for text in ("Remember: the lost fact is L.", "What is the lost fact?"):
                assert (await a.send(cid, text)).done
            await web.service.store.execute(
                "DELETE FROM usage_ledger WHERE conversation = ?", (cid,)
            )
            assert (await a.send(cid, "Remember: the third fact is T.")).done
            return cid

    saved = web.service.settings
    web.service.settings = dataclasses.replace(saved, reconcile_every_s=0.0)
    try:
        cid = run(web, lost())
    finally:
        web.service.settings = saved
    rows = ledger_rows(web, "conversation = ?", (cid,))
    assert sorted(r[2] for r in rows) == ["call", "reconciled", "reconciled"], rows
    mine = run(web, totals_of(web.service.store, cid))
    assert mine == run(web, runtime_metrics(web, cid)), "the ledger matches the runtime again"


def test_a_ledger_write_that_fails_is_reported_and_retried(web, tokens) -> None:
    service = web.service
    real = service.store.execute

    async def failing(sql: str, args: tuple = ()) -> object:
        if sql.startswith("INSERT INTO usage_ledger") and time.monotonic() < until:
            raise OSError("the database is away")
        return await real(sql, args)

    async def turn() -> tuple[str, object]:
        async with Caller(web.url, tokens["B"]) as b:
            cid = await b.create()
            return cid, await b.send(cid, "Remember: unmetered is U.")

    until = time.monotonic() + 4.0
    service.store.execute = failing  # type: ignore[method-assign]
    try:
        cid, reply = run(web, turn())  # type: ignore[misc]
    finally:
        service.store.execute = real  # type: ignore[method-assign]
    final = reply.events[-1]  # type: ignore[attr-defined]
    assert final[0] == "message" and final[1].get("metered") is False, final
    deadline = time.monotonic() + 15
    while not ledger_rows(web, "conversation = ?", (cid,)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(ledger_rows(web, "conversation = ?", (cid,))) == 1, "the retry wrote it"


def test_usage_and_audit_are_the_callers_own(web, tokens) -> None:
    with httpx.Client(base_url=web.url, timeout=30) as http:
        cid = http.post("/conversations", headers=auth(tokens["A"])).json()["id"]
        unknown = "user-a-0000000000000000"
        answers = {}
        for what in ("usage", "audit"):
            theirs = http.get(f"/conversations/{cid}/{what}", headers=auth(tokens["B"]))
            nobody = http.get(f"/conversations/{unknown}/{what}", headers=auth(tokens["B"]))
            mine = http.get(f"/conversations/{cid}/{what}", headers=auth(tokens["A"]))
            answers[what] = (theirs.status_code, nobody.status_code, mine.status_code)
            assert theirs.status_code == nobody.status_code == 404, answers
            assert theirs.json()["error"] == nobody.json()["error"] == "not_found"
            assert mine.status_code == 200
        days = http.get("/usage", headers=auth(tokens["A"])).json()["days"]
        assert days and days[-1]["calls"] == len(ledger_rows(web, "owner = 'A'")), days
        assert http.get("/usage").status_code == 401


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_read_only_plan_cannot_write_and_every_call_is_audited(web, tokens) -> None:
    ask = 'Create a file notes.md with the text "the secret is ghp_' + "x" * 30 + '"'

    async def asks() -> None:
        async with Caller(web.url, tokens["R"]) as r, Caller(web.url, tokens["W"]) as w:
            for caller in (r, w):
                reply = await caller.ask(ask)
                assert reply.done, reply.error

    run(web, asks())
    with httpx.Client(base_url=web.url, timeout=30) as http:
        denied = http.get("/audit", headers=auth(tokens["R"])).json()["calls"]
        allowed = http.get("/audit", headers=auth(tokens["W"])).json()["calls"]
        files_r = http.get("/files", headers=auth(tokens["R"])).json()["files"]
        files_w = http.get("/files", headers=auth(tokens["W"])).json()["files"]
    assert [(c["tool"], c["outcome"]) for c in denied] == [("write_file", "denied")], denied
    assert ("write_file", "allowed") in [(c["tool"], c["outcome"]) for c in allowed], allowed
    assert files_r == [] and [f["path"] for f in files_w] == ["notes.md"]
    for call in denied + allowed:
        assert "ghp_" not in call["arguments"] and "[redacted]" in call["arguments"], call


def test_a_crossing_turn_finishes_the_next_is_refused_before_the_runtime(web, tokens) -> None:
    service = web.service
    saved = service.settings
    service.settings = dataclasses.replace(
        saved, budget_tokens=600, budget_period_s=4.0, budget_hold_tokens=500
    )
    try:
        with httpx.Client(base_url=web.url, timeout=30) as http:
            time.sleep(4.0 - time.time() % 4.0 + 0.05)  # the start of a window
            cid = http.post("/conversations", headers=auth(tokens["B"])).json()["id"]
            path, body = f"/conversations/{cid}/messages", {"text": "Remember: the budget is b."}
            first = http.post(path, json=body, headers=auth(tokens["B"]))
            assert first.status_code == 200 and "event: message" in first.text, first.text
            used = sum(r[3] + r[4] for r in ledger_rows(web, "conversation = ?", (cid,)))
            assert used > 600, f"the turn that crossed the budget finished, all {used} recorded"
            before = web.model_requests()
            refused = http.post(path, json=body, headers=auth(tokens["B"]))
            assert refused.status_code == 429, refused.text
            assert web.model_requests() == before, "the runtime was not asked"
            assert refused.json()["error"] == "budget_exhausted" and refused.json()["resets_at"]
            wait = int(refused.headers["Retry-After"])
            assert 1 <= wait <= 4
            time.sleep(wait + 0.1)
            after = http.post(path, json=body, headers=auth(tokens["B"]))
            assert after.status_code == 200 and "event: message" in after.text
    finally:
        service.settings = saved


def test_turns_beyond_the_instances_limit_are_refused_with_retry_after(web, tokens) -> None:
    service = web.service
    saved = service.settings
    service.settings = dataclasses.replace(saved, max_turns=1)
    try:
        with httpx.Client(base_url=web.url, timeout=30) as http:
            cid = http.post("/conversations", headers=auth(tokens["A"])).json()["id"]
            path, body = f"/conversations/{cid}/messages", {"text": "Remember: load is L."}
            web.loop.call_soon_threadsafe(service.begin, "someone")  # a turn running elsewhere
            time.sleep(0.1)
            before = web.model_requests()
            refused = http.post(path, json=body, headers=auth(tokens["A"]))
            assert refused.status_code == 503 and refused.json()["error"] == "overloaded"
            assert int(refused.headers["Retry-After"]) >= 1 and web.model_requests() == before
            web.loop.call_soon_threadsafe(service._end, "someone")
            time.sleep(0.1)
            served = http.post(path, json=body, headers=auth(tokens["A"]))
            assert served.status_code == 200 and "event: message" in served.text
    finally:
        service.settings = saved


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    before = os.environ.get("DATABASE_URL")
    if request.param == "postgresql":
        os.environ["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    else:
        os.environ.pop("DATABASE_URL", None)
    folder = remove_dir(TMP / f"test-budget-{request.param}")
    folder.mkdir(parents=True)
    try:
        yield str(folder)
    finally:
        remove_dir(folder)
        if before is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = before


OFFSETS_S = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01)


def test_two_turns_at_the_budgets_edge_at_most_one_passes(database: str) -> None:
    """Two instances (two connections) hold for one user at once, offsets swept; each trial
    leaves room for exactly one hold."""

    async def race() -> dict[str, int]:
        one = await open_web_store(Path(database), schema="budget_race")
        two = await open_web_store(Path(database), schema="budget_race")
        counts = {"both": 0, "one": 0, "none": 0}
        try:
            for trial in range(60):
                user, offset = f"u{trial}", OFFSETS_S[trial % len(OFFSETS_S)]

                async def hold(store: object, delay: float, user: str = user) -> bool:
                    await asyncio.sleep(delay)
                    try:
                        await take_hold(store, user, 150, 3600, 100)  # type: ignore[arg-type]
                    except Refused:
                        return False
                    return True

                passed = sum(await asyncio.gather(hold(one, 0), hold(two, offset)))
                counts[("none", "one", "both")[passed]] += 1
            return counts
        finally:
            await one.close()
            await two.close()

    counts = asyncio.run(race())
    assert counts["both"] == 0 and counts["one"] == 60, counts


def test_a_hold_given_back_makes_room_again(database: str) -> None:
    async def cycle() -> None:
        store = await open_web_store(Path(database), schema="budget_cycle")
        try:
            held = await take_hold(store, "u", 150, 3600, 100)
            with pytest.raises(Refused):
                await take_hold(store, "u", 150, 3600, 100)
            await give_back(store, held)
            await give_back(store, await take_hold(store, "u", 150, 3600, 100))
        finally:
            await store.close()

    asyncio.run(cycle())


RATE_SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from helpers.errors import Refused
from helpers.web.budgets import take_turn
from helpers.web.db import open_web_store

async def main():
    store = await open_web_store(Path(sys.argv[1]), schema="rate_two")
    start = float(sys.argv[2])
    await asyncio.sleep(max(start - time.time(), 0))
    passed = 0
    for _ in range(10):
        try:
            await take_turn(store, "shared", 5, 30.0)
            passed += 1
        except Refused:
            pass
    await store.close()
    print(passed)

asyncio.run(main())
"""


def test_the_rate_holds_across_two_instances(database: str) -> None:
    """Two processes take turns for one user at once: 5 per 30 s in all, not 5 each."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = str(time.time() + 1.5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RATE_SCRIPT, database, start],
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        passed = [int(p.communicate(timeout=30)[0].decode().strip() or "-1") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
    assert sum(passed) == 5, f"turns passed per instance: {passed}"

    async def refused_wait() -> float:
        store = await open_web_store(Path(database), schema="rate_two")
        try:
            with pytest.raises(Refused) as info:
                await take_turn(store, "shared", 5, 30.0)
            return info.value.retry_after_s
        finally:
            await store.close()

    assert 0 < asyncio.run(refused_wait()) <= 6.0


def test_deleting_a_user_keeps_billing_rows_without_content(web, tokens) -> None:
    from helpers.web.users import delete_user

    ask = 'Create a file gone.md with the text "delete me"'

    async def use() -> str:
        token = await web.service.tokens.issue("D")
        async with Caller(web.url, token) as d:
            cid = await d.create()
            assert (await d.send(cid, "Remember: D was here.")).done
            assert (await d.ask(ask)).done
            return cid

    cid = run(web, use())
    calls = len(ledger_rows(web, "owner = 'D'"))
    assert calls >= 3
    counts = run(web, delete_user(web.service.store, "D"))
    assert counts["conversations"] == 1, counts
    assert run(web, stored_events(web.service.store, cid)) == []
    assert len(ledger_rows(web, "owner = 'D'")) == calls, "billing rows kept"
    rows, _ = run(
        web,
        web.service.store.execute("SELECT arguments, outcome FROM tool_audit WHERE owner = 'D'"),
    )  # type: ignore[misc]
    assert rows and all(r[0] == "" for r in rows), rows
    for table in ("web_tokens", "user_files"):
        left, _ = run(
            web, web.service.store.execute(f"SELECT COUNT(*) FROM {table} WHERE owner = 'D'")
        )  # type: ignore[misc]
        assert left[0][0] == 0, table


def test_the_ledger_and_policy_hold_on_the_peer_model() -> None:
    with PeerModel() as peer:
        saved = {k: os.environ.get(k) for k in peer.env()}
        os.environ.update(peer.env())
        try:
            web = ServiceThread(
                Settings(turn_timeout_s=30, plans={"P": "read-only"}, backend="byok")
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            token = run(web, web.service.tokens.issue("P"))

            async def use() -> str:
                async with Caller(web.url, token) as p:
                    cid = await p.create()
                    assert (await p.send(cid, "Remember: the peer fact is P.")).done
                    await p.ask('Create a file peer.md with the text "hello"')
                    return cid

            before = peer.answered
            cid = run(web, use())
            calls = peer.answered - before
            assert len(ledger_rows(web, "owner = 'P'")) == calls, f"peer calls {calls}"
            rows, _ = run(
                web,
                web.service.store.execute("SELECT tool, outcome FROM tool_audit WHERE owner = 'P'"),
            )  # type: ignore[misc]
            assert rows == [("write_file", "denied")], rows
            assert run(web, totals_of(web.service.store, cid)) == run(
                web, runtime_metrics(web, cid)
            )
        finally:
            web.stop()


def test_the_operator_command_deletes_a_user(tmp_path: Path, monkeypatch) -> None:
    """``python -m helpers.web users delete NAME`` on a database the service left (SQLite)."""
    monkeypatch.delenv("DATABASE_URL", raising=False)

    async def seed() -> None:
        store = await open_web_store(tmp_path)
        try:
            await store.new_id("E")
            await store.execute(
                "INSERT INTO tool_audit VALUES ('1', 'E', 'c', 'write_file', '{\"x\": 1}', "
                "'denied', 'plan', 0)"
            )
            await record(store, "E", "c", Call("call-1", "m", 10, 2, 0, None, time.time()))
        finally:
            await store.close()

    asyncio.run(seed())
    done = subprocess.run(
        [sys.executable, "-m", "helpers.web", "users", "delete", "E", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0 and "conversations 1" in done.stdout, done.stdout + done.stderr

    async def left() -> tuple[list, list, list]:
        store = await open_web_store(tmp_path)
        try:
            owners, _ = await store.execute("SELECT * FROM sessions WHERE owner = 'E'")
            audit, _ = await store.execute("SELECT arguments FROM tool_audit WHERE owner = 'E'")
            ledger, _ = await store.execute("SELECT call_id FROM usage_ledger WHERE owner = 'E'")
            return owners, audit, ledger
        finally:
            await store.close()

    assert asyncio.run(left()) == ([], [("",)], [("c:call-1",)])
