"""The web backend over real HTTP: streaming, who is calling, refusals that never reach the runtime,
an abandoned stream aborted, two tabs at once, drain, a runtime that died, a database that is down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import connect_sse
from web_fixture import ServiceThread

from helpers.events import forks
from helpers.serving.credentials import UserTokens
from helpers.store.session_fs import store_fs, stored_events
from helpers.web.service import Settings

pytestmark = pytest.mark.runtime
CODENAME = "AURORA-7"


@pytest.fixture(scope="module")
def web() -> Iterator[ServiceThread]:
    running = ServiceThread(Settings(turn_timeout_s=30, turns_per_user=2, pool_size=2))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def tokens(web: ServiceThread) -> dict[str, str]:
    return {user: web.call(web.service.tokens.issue(user)) for user in ("A", "B", "C")}


@pytest.fixture
def http(web: ServiceThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=web.url, timeout=60) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stream(http: httpx.Client, token: str, path: str, text: str) -> list[tuple[str, dict]]:
    """POST a message and read the SSE reply to its end: [(event, data), ...]."""
    with connect_sse(http, "POST", path, json={"text": text}, headers=auth(token)) as source:
        assert source.response.status_code == 200, source.response.read()
        return [(e.event, json.loads(e.data)) for e in source.iter_sse()]


def say(http: httpx.Client, token: str, cid: str, text: str) -> list[tuple[str, dict]]:
    return stream(http, token, f"/conversations/{cid}/messages", text)


def new_conversation(http: httpx.Client, token: str) -> str:
    response = http.post("/conversations", headers=auth(token))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def owners(web: ServiceThread) -> list[tuple]:
    """Every ownership row of the store (session id, owner, created)."""
    rows, _ = web.call(web.service.store.execute("SELECT * FROM sessions ORDER BY session_id"))
    return rows


def final(events: list[tuple[str, dict]]) -> tuple[str, dict]:
    return events[-1]


def test_a_reply_streams_then_the_whole_message(web, tokens, http) -> None:
    cid = new_conversation(http, tokens["A"])
    taught = say(http, tokens["A"], cid, f"Remember: the codename is {CODENAME}.")
    asked = say(http, tokens["A"], cid, "What is the codename?")
    for events in (taught, asked):
        kinds = [kind for kind, _ in events]
        assert kinds[-1] == "message" and kinds.count("message") == 1, kinds
        deltas = "".join(data["text"] for kind, data in events if kind == "delta")
        assert kinds.count("delta") >= 2 and deltas == events[-1][1]["text"], "deltas add up"
    assert CODENAME.lower() in asked[-1][1]["text"].lower()
    standin = web.service.backend.standin
    assert standin is not None and standin.requests[-1].stream, "the runtime asked with stream"
    history = http.get(f"/conversations/{cid}/messages", headers=auth(tokens["A"])).json()
    roles = [m["role"] for m in history["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    stored = web.call(stored_events(web.service.store, cid))
    assert history["messages"][3]["text"] == asked[-1][1]["text"] and forks(stored) == 0
    listed = http.get("/conversations", headers=auth(tokens["A"])).json()["conversations"]
    assert cid in [c["id"] for c in listed]
    assert cid not in [
        c["id"]
        for c in http.get("/conversations", headers=auth(tokens["B"])).json()["conversations"]
    ]


def test_refusals_never_reach_the_runtime(web, tokens, http) -> None:
    cid = new_conversation(http, tokens["A"])
    say(http, tokens["A"], cid, f"Remember: the codename is {CODENAME}.")
    web.call(web.service.pool.settle())  # the pool's refills done: no session is being made
    before = (web.model_requests(), web.stored_sessions(), owners(web))
    path = f"/conversations/{cid}/messages"
    unknown = "user-a-0000000000000000"
    cases = {
        "no token": http.post(path, json={"text": "hi"}),
        "wrong token": http.post(path, json={"text": "hi"}, headers=auth("not-a-token")),
        "B sends to A's": http.post(path, json={"text": "codename?"}, headers=auth(tokens["B"])),
        "B reads A's": http.get(path, headers=auth(tokens["B"])),
        "B deletes A's": http.delete(f"/conversations/{cid}", headers=auth(tokens["B"])),
        "unknown id": http.post(
            f"/conversations/{unknown}/messages", json={"text": "hi"}, headers=auth(tokens["B"])
        ),
        "too large": http.post(path, content=b"x" * 70_000, headers=auth(tokens["A"])),
        "too long": http.post(path, json={"text": "x" * 16_001}, headers=auth(tokens["A"])),
        "not UTF-8": http.post(
            path,
            content=b'{"text": "\xff\xfe"}',
            headers={**auth(tokens["A"]), "Content-Type": "application/json"},
        ),
        "not JSON": http.post(
            path, content=b"text=hi", headers={**auth(tokens["A"]), "Content-Type": "text/plain"}
        ),
        "empty text": http.post(path, json={"text": "   "}, headers=auth(tokens["A"])),
        "extra field": http.post(path, json={"text": "hi", "x": 1}, headers=auth(tokens["A"])),
        "path characters": http.get(
            "/conversations/..%2F..%2Fetc%2Fpasswd/messages", headers=auth(tokens["A"])
        ),
        "unknown route": http.get("/nowhere", headers=auth(tokens["A"])),
        "wrong method": http.patch(f"/conversations/{cid}", headers=auth(tokens["A"])),
    }
    expected = {
        "no token": 401,
        "wrong token": 401,
        "B sends to A's": 404,
        "B reads A's": 404,
        "B deletes A's": 404,
        "unknown id": 404,
        "too large": 413,
        "too long": 422,
        "not UTF-8": 422,
        "not JSON": 422,
        "empty text": 422,
        "extra field": 422,
        "path characters": 404,
        "unknown route": 404,
        "wrong method": 405,
    }
    for name, response in cases.items():
        assert response.status_code == expected[name], (name, response.status_code, response.text)
        body = response.json()
        assert set(body) == {"error", "message"} and body["message"], (name, body)
        assert CODENAME not in response.text, name
    assert cases["no token"].headers["www-authenticate"] == "Bearer"
    other, missing = cases["B sends to A's"].json(), cases["unknown id"].json()
    assert other["error"] == missing["error"]
    assert other["message"].replace(cid, "<id>") == missing["message"].replace(unknown, "<id>")
    after = (web.model_requests(), web.stored_sessions(), owners(web))
    assert after == before, "no refused request reached the model, the runtime or the registry"
    history = http.get(path, headers=auth(tokens["A"])).json()["messages"]
    assert len(history) == 2, "A's conversation is unchanged"


def test_a_per_user_limit_answers_429_with_retry_after(web, tokens, http) -> None:
    ids = [new_conversation(http, tokens["C"]) for _ in range(3)]
    results: dict[int, list] = {}

    def slow(i: int) -> None:
        with httpx.Client(base_url=web.url, timeout=60) as own:
            results[i] = say(own, tokens["C"], ids[i], "Wait 2 seconds, then say hello.")

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while web.service.running("C") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = http.post(
        f"/conversations/{ids[2]}/messages",
        json={"text": "third at once"},
        headers=auth(tokens["C"]),
    )
    others = say(http, tokens["B"], new_conversation(http, tokens["B"]), "Say hello.")
    for thread in threads:
        thread.join(30)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1", refused.text
    assert refused.json()["error"] == "too_many_turns"
    assert final(others)[0] == "message", "another user is not limited by C's turns"
    standin = web.service.backend.standin
    assert not any("third at once" in m for r in standin.requests for m in r.user_messages)
    assert not web.call(web.service.store.started(ids[2])), "the runtime never saw it"
    assert all(final(results[i])[0] == "message" for i in range(2))


def _slow_then_close(web: ServiceThread, token: str, cid: str, wait_s: float) -> float:
    """Start a slow turn, read its response head, hang up after ``wait_s``; return when."""
    with httpx.Client(base_url=web.url, timeout=60) as own:
        with own.stream(
            "POST", f"/conversations/{cid}/messages", json={"text": SLOW}, headers=auth(token)
        ) as response:
            assert response.status_code == 200
            time.sleep(wait_s)
    return time.monotonic()


SLOW = "Wait 3 seconds, then tell me a story about a lighthouse."


def _events_after_last_user(web: ServiceThread, cid: str) -> list[str]:
    events = web.call(stored_events(web.service.store, cid))
    last = max(i for i, e in enumerate(events) if e["type"] == "user.message")
    return [e["type"] for e in events[last + 1 :]]


def _settled(web: ServiceThread, user: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while web.service.running(user) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_client_that_hangs_up_gets_its_turn_aborted(web, tokens, http) -> None:
    service = web.service
    cid = new_conversation(http, tokens["A"])
    say(http, tokens["A"], cid, "Say hello.")
    # Without the rule: nobody reads the stream, yet the turn runs on and the model writes it all.
    service.settings.abort_abandoned = False
    try:
        _slow_then_close(web, tokens["A"], cid, 0.5)
        _settled(web, "A")
    finally:
        service.settings.abort_abandoned = True
    assert "assistant.message" in _events_after_last_user(web, cid), "the turn went on"
    # With it: the turn is aborted, and nothing is left held.
    hung_up = _slow_then_close(web, tokens["A"], cid, 0.5)
    _settled(web, "A")
    assert time.monotonic() - hung_up < 2.5, "released before the slow model would have answered"
    after = _events_after_last_user(web, cid)
    assert "abort" in after and "assistant.message" not in after, after
    assert service.running("A") == 0 and not service.locks.lock(cid).locked()
    assert web.call(service.store.lease_of(cid)) is None, "the lease was given back"
    again = say(http, tokens["A"], cid, "Say hello.")
    assert final(again)[0] == "message", "the conversation still works"


def test_two_tabs_of_one_user_take_turns(web, tokens, http) -> None:
    cid = new_conversation(http, tokens["B"])
    replies: dict[str, list] = {}

    def tab(name: str, fact: str) -> None:
        with httpx.Client(base_url=web.url, timeout=60) as own:
            replies[name] = say(own, tokens["B"], cid, f"Wait 1 seconds, then remember: {fact}.")

    tabs = [
        threading.Thread(target=tab, args=("tab 1", "the color is teal")),
        threading.Thread(target=tab, args=("tab 2", "the city is Oslo")),
    ]
    for thread in tabs:
        thread.start()
    for thread in tabs:
        thread.join(60)
    for name, fact in (("tab 1", "teal"), ("tab 2", "oslo")):
        kind, data = final(replies[name])
        assert kind == "message" and fact in data["text"].lower(), (name, replies[name][-1])
    events = web.call(stored_events(web.service.store, cid))
    assert forks(events) == 0 and [e["type"] for e in events].count("user.message") == 2


def test_ask_with_my_files_leaves_no_session(web, tokens, http) -> None:
    put = http.put("/files/notes.md", json={"content": "milk, eggs"}, headers=auth(tokens["A"]))
    assert put.status_code == 200, put.text
    assert http.put(
        "/files/../x", json={"content": "x"}, headers=auth(tokens["A"])
    ).status_code in (
        404,
        422,
    )
    pool = web.service.pool
    served = len(pool.served)
    reply = stream(http, tokens["A"], "/ask", "Read notes.md")
    assert final(reply)[0] == "message" and "milk" in final(reply)[1]["text"]
    theirs = stream(http, tokens["B"], "/ask", "List my files.")
    assert "notes.md" not in final(theirs)[1]["text"], "B's ask sees none of A's files"
    listed = http.get("/files", headers=auth(tokens["B"])).json()["files"]
    assert listed == [] and web.call(web.service.files_of("B").snapshot()) == {}
    used = set(pool.served[served:])
    web.call(pool.deleted_all(30))
    assert len(used) == 2 and used <= pool.deleted, "each ask's session is deleted after"
    assert not used & web.stored_sessions()
    rows = web.call(web.service.store.rows())
    assert not [r for r in rows if r.session_id in used], "no stored rows of the asks remain"


def test_with_per_user_credentials_an_ask_runs_on_its_users_own_token(web, tokens, http) -> None:
    """The pool's sessions are made before anyone asks, so they cannot carry a user's token: on
    the github backend with per-user tokens an ask makes its own session with that user's token.
    The stand-in answers here through ``provider=``, and the runtime refuses a token beside a
    provider ("Cannot specify both gitHubToken and provider in session.create"), so the spy notes
    the token each create was given and passes the rest on to the real ``create_session``."""
    service, made = web.service, []
    create, backend = service.client.create_session, service.backend

    async def spy(**kwargs):  # the real create_session, with the token each call passed noted
        token = kwargs.pop("github_token", None)
        session = await create(**kwargs)
        made.append((session.session_id, token))
        return session

    assert http.put(
        "/files/pin.md", json={"content": "the pin is 4711"}, headers=auth(tokens["C"])
    ).is_success
    served = len(service.pool.served)
    service.client.create_session = spy
    service.backend = dataclasses.replace(backend, name="github")
    service.github_tokens = UserTokens({"C": "token-of-user-c"})
    try:
        reply = stream(http, tokens["C"], "/ask", "Read pin.md")
        before = web.model_requests()
        refused = stream(http, tokens["B"], "/ask", "Read pin.md")
        after = web.model_requests()
    finally:
        service.client.create_session, service.backend = create, backend
        service.github_tokens = None
    assert final(reply)[0] == "message" and "4711" in final(reply)[1]["text"], "C's own file"
    assert [token for _, token in made] == ["token-of-user-c"], "one session, on C's token"
    assert len(service.pool.served) == served, "no pooled session (made with no user's token)"
    assert final(refused)[0] == "error" and final(refused)[1]["error"] == "no_github_token", refused
    assert after == before and "4711" not in json.dumps(refused), "B's ask never reached the model"
    ask_id = made[0][0]
    assert ask_id not in web.stored_sessions() and ask_id not in service._asking
    assert not [r for r in web.call(service.store.rows()) if r.session_id == ask_id]
    assert "token-of-user-c" not in service.server.log_path.read_text(errors="replace")


def test_no_token_is_kept_or_written_in_the_clear(web, tokens) -> None:
    assert all(token not in web.call(web.service.tokens.digests()) for token in tokens.values())
    assert repr(web.service.tokens) == "TokenBook(tokens=3)"
    for path in [*web.folder.rglob("*"), web.service.server.log_path]:
        if path.is_file():
            data = path.read_bytes()
            assert not any(t.encode() in data for t in tokens.values()), path


def test_a_database_that_is_down_is_503_and_a_turn_not_stored_is_not_done(web, tokens, http):
    service = web.service
    cid = new_conversation(http, tokens["B"])
    say(http, tokens["B"], cid, "Say hello.")
    seen: list = []

    def slow() -> None:
        with httpx.Client(base_url=web.url, timeout=60) as own:
            seen.extend(say(own, tokens["B"], cid, "Wait 1 seconds, then say hello."))

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.4)
    web.call(service.store.close())
    try:
        thread.join(30)
        refused = http.post(
            f"/conversations/{cid}/messages", json={"text": "hi"}, headers=auth(tokens["B"])
        )
        history = http.get(f"/conversations/{cid}/messages", headers=auth(tokens["B"]))
        ready = http.get("/ready")
    finally:
        web.call(service.store.connect())
    kinds = [kind for kind, _ in seen]
    assert "message" not in kinds and final(seen)[1]["error"] == "store_down", seen[-1]
    for response in (refused, history, ready):
        assert response.status_code == 503 and "database" in response.json()["message"]
    assert http.get("/ready").status_code == 200
    assert final(say(http, tokens["B"], cid, "Say hello again."))[0] == "message"


def test_a_runtime_that_died_is_503_then_recovers(web, tokens, http) -> None:
    cid = new_conversation(http, tokens["A"])
    say(http, tokens["A"], cid, f"Remember: the codename is {CODENAME}.")
    server = web.service.server
    restarts = web.service.restarts
    os.killpg(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.running and time.monotonic() < deadline:
        time.sleep(0.02)
    responses = []
    while web.service.restarts == restarts and time.monotonic() < deadline + 20:
        responses.append(
            http.post(
                f"/conversations/{cid}/messages", json={"text": "hi"}, headers=auth(tokens["A"])
            )
        )
        time.sleep(0.05)
    down = [r for r in responses if r.status_code == 503]
    assert down and all(r.json()["error"] == "runtime_down" for r in down)
    assert server.url in down[0].json()["message"] or "runtime" in down[0].json()["message"]
    deadline = time.monotonic() + 30
    while http.get("/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert http.get("/ready").status_code == 200, "ready again once the runtime is back"
    recalled = say(http, tokens["A"], cid, "What is the codename?")
    assert CODENAME.lower() in final(recalled)[1]["text"].lower(), "the store kept the conversation"


def test_the_sweep_forgets_orphans_and_keeps_conversations_and_the_pool() -> None:
    """A session a crashed request made and never deleted is swept from the store once it is
    older than ``orphan_age_s``; the users' conversations and the pool's ready sessions stay."""
    web = ServiceThread(Settings(turn_timeout_s=30, orphan_age_s=1.0, supervise_every_s=0.2))
    try:
        token = web.call(web.service.tokens.issue("A"))
        with httpx.Client(base_url=web.url, timeout=60) as http:
            cid = new_conversation(http, token)
            assert final(say(http, token, cid, f"Remember: the codename is {CODENAME}."))[0] == (
                "message"
            )
            service = web.service
            orphan = web.call(
                service.client.create_session(
                    create_session_fs_handler=store_fs(service.store),
                    available_tools=[],
                    **service.backend.session_kwargs(),
                )
            )
            web.call(orphan.send_and_wait("hello", timeout=30))
            web.call(orphan.disconnect())  # the request crashed here: never deleted
            ready = service.pool.ready_ids()
            kept = {s: len(web.call(service.store.rows(session_id=s))) for s in {cid, *ready}}
            assert orphan.session_id in web.stored_sessions() and all(kept.values()), kept
            deadline = time.monotonic() + 30
            while orphan.session_id in web.stored_sessions():
                assert time.monotonic() < deadline, "the orphan was not swept in 30 s"
                time.sleep(0.2)
            time.sleep(1.5)  # more sweeps, with everything else idle for longer than 1 s
            assert ready == service.pool.ready_ids()
            after = {s: len(web.call(service.store.rows(session_id=s))) for s in kept}
            assert after == kept, "the conversation's and the ready sessions' files are kept"
            again = say(http, token, cid, "What is the codename?")
        assert final(again)[0] == "message" and CODENAME in final(again)[1]["text"]
    finally:
        web.stop()


def test_drain_lets_the_running_turn_finish_and_refuses_new_ones() -> None:
    web = ServiceThread(Settings(turn_timeout_s=30))
    try:
        token = web.call(web.service.tokens.issue("A"))
        with httpx.Client(base_url=web.url, timeout=60) as http:
            cid = new_conversation(http, token)
            seen: list = []
            thread = threading.Thread(
                target=lambda: seen.extend(
                    say(
                        httpx.Client(base_url=web.url, timeout=60),
                        token,
                        cid,
                        "Wait 1 seconds, then say hello.",
                    )
                )
            )
            thread.start()
            started = time.monotonic()
            while web.service.running("A") == 0:
                assert time.monotonic() - started < 30, "the turn never started"
                time.sleep(0.02)
            draining = web.call(_drain_and_probe(web, token, cid), 60)
            thread.join(30)
        assert final(seen)[0] == "message", "the running turn finished before the stop"
        assert draining == {"left": 0, "send": 503, "ready": 503}
        assert not web.service.server.running, "the runtime stopped after the drain"
    finally:
        web.stop()


async def _drain_and_probe(web: ServiceThread, token: str, cid: str) -> dict:
    import asyncio

    drained = asyncio.ensure_future(web.service.drain(30))
    await asyncio.sleep(0.1)
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
        send = await http.post(
            f"/conversations/{cid}/messages", json={"text": "hi"}, headers=auth(token)
        )
        ready = await http.get("/ready")
    return {"left": await drained, "send": send.status_code, "ready": ready.status_code}


def test_a_stop_without_drain_cuts_the_turn_but_leaves_no_lease_behind() -> None:
    import sqlite3

    web = ServiceThread(Settings(turn_timeout_s=30))
    try:
        token = web.call(web.service.tokens.issue("A"))
        with httpx.Client(base_url=web.url, timeout=60) as http:
            cid = new_conversation(http, token)
            seen: list = []
            thread = threading.Thread(target=lambda: seen.extend(say(http, token, cid, SLOW)))
            thread.start()
            started = time.monotonic()
            while web.service.running("A") == 0:
                assert time.monotonic() - started < 30, "the turn never started"
                time.sleep(0.02)
            time.sleep(0.3)
            left = web.call(web.web.stop(drain=False), 60)
            thread.join(30)
        assert left == 1 and final(seen) == ("error", final(seen)[1])
        assert final(seen)[1]["error"] == "stopped", seen[-1:]
        with sqlite3.connect(web.folder / "sessions.db") as db:
            leases = db.execute("SELECT session_id FROM session_leases").fetchall()
        assert leases == [], "the next process finds the conversation free"
    finally:
        web.stop()


def test_a_deleted_conversation_is_gone_for_good_and_bad_file_paths_are_refused(
    web, tokens, http
) -> None:
    cid = new_conversation(http, tokens["A"])
    say(http, tokens["A"], cid, f"Remember: the codename is {CODENAME}.")
    assert web.call(web.service.store.rows(session_id=cid)), "stored while it exists"
    assert http.delete(f"/conversations/{cid}", headers=auth(tokens["A"])).status_code == 204
    for response in (
        http.post(f"/conversations/{cid}/messages", json={"text": "hi"}, headers=auth(tokens["A"])),
        http.get(f"/conversations/{cid}/messages", headers=auth(tokens["A"])),
        http.delete(f"/conversations/{cid}", headers=auth(tokens["A"])),
    ):
        assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert web.call(web.service.store.rows(session_id=cid)) == [], "no stored row is left"
    assert cid not in web.call(web.service.store.sessions_of("A"))
    assert cid not in web.stored_sessions() and web.call(web.service.store.owner(cid)) is None
    before = web.call(web.service.files_of("A").snapshot())
    bad = ("%2E%2E/escape.md", "a/%2E%2E/%2E%2E/x", "%2Fetc%2Fpasswd", "bad%E2%80%AEname")
    for path in (*bad, "%0A_%03", "notes%0A.md", "a%0D%0Ab"):  # controls, newlines among them
        refused = http.put(f"/files/{path}", json={"content": "x"}, headers=auth(tokens["A"]))
        assert refused.status_code == 422 and refused.json()["error"] == "bad_file", refused.text
    assert web.call(web.service.files_of("A").snapshot()) == before, (
        "a refused write changes nothing"
    )
