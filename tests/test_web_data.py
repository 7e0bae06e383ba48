"""The web service keeps its data: sign-in tokens in the database, the schema upgraded in place,
and conversations, files and tokens through a restart (Ctrl+C and ``kill -9``), on both engines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pg_fixture
import pytest
from copilot.tools import ToolInvocation
from support import free_port

from helpers.errors import StoreError, VfsError
from helpers.store.base import SessionStore
from helpers.store.postgres import PostgresStore
from helpers.store.schema import MIGRATIONS, upgrade, version_of
from helpers.store.sqlite import SqliteStore
from helpers.web.auth import KEY_ENV, TokenBook
from helpers.web.db import instance_id
from helpers.web.files import UserFiles, stored_file_tools

postgres_url = pg_fixture.postgres_url
ROOT = Path(__file__).resolve().parents[1]
PG = pytest.mark.postgres


async def _open(engine: str, where: Path | str, schema: str = "") -> SessionStore:
    """A web store on ``engine``: a SQLite file in the folder ``where``, or a PostgreSQL schema."""
    if engine == "sqlite":
        store: SessionStore = await SqliteStore(Path(where) / "sessions.db").connect()
    else:
        store = await PostgresStore(str(where), schema).connect()
    await upgrade(store)
    return store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def place(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, Path | str, str]]:
    """Where a database lives: (engine, folder or URL, schema); the schema dropped after."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    if request.param == "sqlite":
        yield "sqlite", tmp_path, ""
        return
    url, schema = request.getfixturevalue("postgres_url"), f"t_{secrets.token_hex(4)}"
    yield "postgresql", url, schema
    PostgresStore(url, schema).drop_schema()


async def test_a_token_issued_by_one_instance_verifies_on_another(place) -> None:  # type: ignore[no-untyped-def]
    one, two = await _open(*place), await _open(*place)
    try:
        book = await TokenBook().attach(one)
        a, b = await book.issue("A"), await book.issue("B")
        assert a != b and len(a) >= 40
        other = await TokenBook().attach(two)  # another instance on the same database: the same key
        assert await other.user_of(a) == "A" and await other.user_of(b) == "B"
        assert await other.user_of(None) is None and await other.user_of("") is None
        assert await other.user_of(a[:-1] + ("x" if a[-1] != "x" else "y")) is None
        digests = await other.digests()
        assert all(a not in d and b not in d for d in digests) and len(digests) == 2
        assert a not in repr(book) and repr(book) == "TokenBook(tokens=2)"
        rows, _ = await one.execute("SELECT * FROM web_tokens")
        assert not [r for r in rows if a in map(str, r) or b in map(str, r)], "digests only"
    finally:
        await one.close()
        await two.close()


async def test_a_key_from_the_environment_makes_other_digests(place, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = await _open(*place)
    try:
        stored_key = await (await TokenBook().attach(store)).issue("A")
        monkeypatch.setenv(KEY_ENV, "a key the operator keeps")
        book = await TokenBook().attach(store)
        assert await book.user_of(stored_key) is None, "issued under the database's key"
        token = await book.issue("A")
        assert await (await TokenBook().attach(store)).user_of(token) == "A", (
            "every instance with the same key"
        )
    finally:
        await store.close()


async def test_tokens_expire_and_are_revoked_by_user_or_by_id(place) -> None:  # type: ignore[no-untyped-def]
    store = await _open(*place)
    try:
        book = await TokenBook().attach(store)
        short = await book.issue("A", days=0.5 / 86400)
        a1, a2, b = [await book.issue(user) for user in ("A", "A", "B")]
        assert await book.user_of(short) == "A"
        time.sleep(0.6)
        assert await book.user_of(short) is None, "expired"
        listed = await book.list()
        assert [t.user for t in listed] == ["A", "A", "A", "B"]
        assert not any(tok in json.dumps([vars(t) for t in listed]) for tok in (a1, a2, b))
        assert await book.revoke(listed[1].id) == 1, "one token, by its id"
        assert await book.user_of(a1) is None and await book.user_of(a2) == "A"
        assert (
            await book.revoke("A") == 2 and await book.user_of(a2) is None
        )  # a2 and the expired one
        assert await book.user_of(b) == "B" and await book.revoke("nobody") == 0
        assert [t.revoked for t in await book.list()] == [True, True, True, False]
    finally:
        await store.close()


def test_the_command_line_issues_lists_and_revokes(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def cli(*args: str) -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "helpers.web",
                "tokens",
                *args,
                "--data",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", KEY_ENV)},
        )
        return done.stdout

    token = cli("issue", "carol", "--stdout").strip()
    out = tmp_path / "carol.txt"
    cli("issue", "carol", "--days", "2", "--out", str(out))
    assert out.stat().st_mode & 0o777 == 0o600 and out.read_text().strip() != token
    listed = cli("list")
    assert data.stat().st_mode & 0o777 == 0o700, "the data folder is private"
    assert listed.count("carol") == 2 and token not in listed and out.read_text() not in listed
    assert "Revoked 2 tokens of carol" in cli("revoke", "carol")


def test_an_instance_name_is_kept_and_runs_in_one_process_at_a_time(tmp_path: Path) -> None:
    name, fd = instance_id(tmp_path)
    with pytest.raises(StoreError, match="running already"):
        instance_id(tmp_path)  # a second process of this name would free the first's leases
    other, other_fd = instance_id(tmp_path, "other")
    os.close(other_fd)
    assert other == "other", "another name may run beside it"
    os.close(fd)
    again, fd = instance_id(tmp_path)
    assert again == name, "the same name after a restart"
    os.close(fd)
    with pytest.raises(StoreError, match="letters"):
        instance_id(tmp_path, "a#b")


async def test_users_files_keep_the_rules_and_a_tool_never_claims_a_write_not_stored(
    place,  # type: ignore[no-untyped-def]
) -> None:
    store = await _open(*place)
    try:
        files = UserFiles(store, "A", max_file_bytes=10, max_files=2)
        assert "notes.md" in await files.write("./notes.md", "milk\x00")  # NUL kept (PostgreSQL)
        for path, text in (("../x", "x"), ("big.md", "x" * 11), ("a\u202eb", "x")):
            with pytest.raises(VfsError):
                await files.write(path, text)
        await files.write("b.md", "b")
        with pytest.raises(VfsError, match="2 files"):
            await files.write("c.md", "c")
        await files.write("b.md", "bb")  # replacing one of the two is allowed
        assert await files.snapshot() == {"notes.md": "milk\x00", "b.md": "bb"}
        assert await UserFiles(store, "B").list() == [], "another user's files are not B's"
        tools = {t.name: t for t in stored_file_tools(lambda _: files)}
        call = ToolInvocation(session_id="s", arguments={"path": "d.md", "content": "d"})
        await store.close()  # the database goes away
        result = await tools["write_file"].handler(call)
        assert result.result_type == "failure" and "not done" in result.text_result_for_llm
        assert "Stored" not in result.text_result_for_llm
    finally:
        await store.close()


async def test_instances_that_start_at_once_upgrade_one_after_the_other(place) -> None:  # type: ignore[no-untyped-def]
    engine, where, schema = place
    if engine == "sqlite":
        stores = [await SqliteStore(Path(where) / "sessions.db").connect() for _ in range(3)]
    else:
        stores = [await PostgresStore(str(where), schema).connect() for _ in range(3)]
    try:
        applied = await asyncio.gather(*(upgrade(s) for s in stores))
        assert all(a in ([], sorted(MIGRATIONS)) for a in applied), applied
        rows, _ = await stores[0].execute("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == sorted(MIGRATIONS), "each version recorded once"
    finally:
        for store in stores:
            await store.close()


async def test_a_version_missed_below_the_newest_is_applied(place) -> None:  # type: ignore[no-untyped-def]
    engine, where, schema = place
    store = await _open(engine, where, schema)
    try:
        skipped = sorted(MIGRATIONS)[-2]  # as if its step landed after a newer one was applied
        await store.execute("DELETE FROM schema_version WHERE version = ?", (skipped,))
        assert await upgrade(store) == [skipped], "the missing step is applied, the others not"
        assert await upgrade(store) == []
    finally:
        await store.close()


# What a newer release's step may do so that the code before it, still serving during a rolling
# deploy, reads and writes the same tables: add (a table, a column with no NOT NULL), never drop or
# rename (that waits for a release after every instance runs the new code).
NEXT_RELEASE = (
    "ALTER TABLE sessions ADD COLUMN title TEXT",
    "ALTER TABLE user_files ADD COLUMN media_type TEXT DEFAULT 'text/markdown'",
    "CREATE TABLE IF NOT EXISTS conversation_tags (session_id TEXT NOT NULL, tag TEXT NOT NULL)",
    "INSERT INTO schema_version (version, name, applied_at) VALUES (99, 'a newer release', 0)",
)


async def test_this_code_serves_a_schema_a_newer_release_extended(place) -> None:  # type: ignore[no-untyped-def]
    store = await _open(*place)
    try:
        old_id = await store.new_id("A")
        for sql in NEXT_RELEASE:  # the new release's instance upgrades the shared schema
            await store.execute(sql)
        await store.execute("UPDATE sessions SET title = 'kept' WHERE session_id = ?", (old_id,))
        assert await upgrade(store) == [], "a version this code does not know is left alone"
        new_id = await store.new_id("A")  # this code's writes name their columns
        assert await store.sessions_of("A") == [old_id, new_id]
        await store.try_lease(new_id, "web-old#1", 5.0)
        files = UserFiles(store, "A")
        await files.write("notes.md", "milk")
        assert await files.snapshot() == {"notes.md": "milk"}
        book = await TokenBook().attach(store)
        assert await book.user_of(await book.issue("A")) == "A"
        rows, _ = await store.execute("SELECT title FROM sessions WHERE session_id = ?", (old_id,))
        assert rows == [("kept",)], "the newer release's column is untouched by this code"
        rows, _ = await store.execute("SELECT media_type FROM user_files WHERE owner = 'A'")
        assert rows == [("text/markdown",)], "its default fills what this code does not write"
    finally:
        await store.close()


# The tables as the code before schema versions (commit 7c26534) made them, with rows in them.
OLD_STORE = (
    """CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        ready INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE session_files (
        session_id TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, modified_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (session_id, path))""",
    """CREATE TABLE session_file_parts (
        session_id TEXT NOT NULL, path TEXT NOT NULL, seq INTEGER NOT NULL,
        content TEXT NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (session_id, path, seq))""",
    """CREATE TABLE session_leases (
        session_id TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
    "INSERT INTO sessions VALUES ('A-1', 'A', 1.0, 1), ('B-1', 'B', 2.0, 0)",
    "INSERT INTO session_files VALUES ('A-1', '/session-state', 'directory', 1.0, 1.0), "
    "('A-1', '/session-state/events.jsonl', 'file', 1.0, 2.0)",
    "INSERT INTO session_file_parts VALUES ('A-1', '/session-state/events.jsonl', 1, 'one\n', 4), "
    "('A-1', '/session-state/events.jsonl', 2, 'two\n', 4)",
    "INSERT INTO session_leases VALUES ('B-1', 'web-old#1', 99.0)",
)


async def test_a_store_made_before_schema_versions_is_upgraded_in_place(place) -> None:  # type: ignore[no-untyped-def]
    engine, where, schema = place
    if engine == "sqlite":
        import sqlite3

        with contextlib.closing(sqlite3.connect(Path(where) / "sessions.db")) as db:
            for sql in OLD_STORE:
                db.execute(sql)
            db.commit()
    else:
        import psycopg

        with psycopg.connect(str(where), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
            conn.execute(f'SET search_path TO "{schema}"')
            for sql in OLD_STORE:
                conn.execute(sql)
    store = await _open(engine, where, schema)
    try:
        assert await version_of(store) == max(MIGRATIONS) >= 2
        assert await store.sessions_of("A") == ["A-1"] and await store.owner("B-1") == "B"
        assert await store.ready("A-1") and not await store.ready("B-1")
        row = await store.read("A-1", "/session-state/events.jsonl")
        assert row is not None and row.content == "one\ntwo\n" and row.modified_at == 2.0
        assert await store.lease_of("B-1") == ("web-old#1", 99.0)
        assert len(await store.rows()) == 2
        book = await TokenBook().attach(store)  # the new tables are there and work
        assert await book.user_of(await book.issue("A")) == "A"
        assert await upgrade(store) == [], "opened again: nothing left to apply"
    finally:
        await store.close()


# --- the real service, restarted -----------------------------------------------------------


class Server:
    """``python -m helpers.web`` in a process group of its own, on ``data``; killed at the end."""

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.data, self.env, self.port = data, env, free_port()
        self.tokens_file = data / "tokens.json"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> httpx.Client:
        log = (self.data / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helpers.web", "--data", str(self.data), "--port",
             str(self.port), "--users", "A", "--tokens-file", str(self.tokens_file),
             "--schema", self.env.get("SCHEMA", "web"), "--drain-s", "5"],
            cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while not self.tokens_file.exists() or not self._ready(url):
            assert self.proc.poll() is None, (self.data / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.2)
        token = json.loads(self.tokens_file.read_text())["A"]
        return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})

    def _ready(self, url: str) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        return False

    def stop(self, sig: int) -> None:
        """Send ``sig`` to the service's own process; wait for it to end."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(60)

    def kill_all(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextlib.contextmanager
def server(data: Path, env: dict[str, str]) -> Iterator[Server]:
    made = Server(data, env)
    try:
        yield made
    finally:
        made.kill_all()
        time.sleep(0.5)  # the guard stops the runtime's group when its parent is gone


def _cut(http: httpx.Client, cid: str, text: str, key: str = "") -> None:
    """Send one message whose turn the test cuts (the connection breaks: that is expected)."""
    with contextlib.suppress(httpx.HTTPError):
        _say(http, cid, text, key)


def _say(http: httpx.Client, cid: str, text: str, key: str = "") -> str:
    """Send one message; the last SSE event's kind ("message" when the turn was stored)."""
    headers = {"Idempotency-Key": key} if key else {}
    response = http.post(f"/conversations/{cid}/messages", json={"text": text}, headers=headers)
    kinds = [line[6:].strip() for line in response.text.splitlines() if line.startswith("event:")]
    return kinds[-1] if kinds else f"HTTP {response.status_code}"


def _texts(http: httpx.Client, cid: str) -> list[str]:
    return [m["text"] for m in http.get(f"/conversations/{cid}/messages").json()["messages"]]


def _answered(http: httpx.Client, cid: str) -> list[str]:
    """The user messages that a reply follows."""
    said = http.get(f"/conversations/{cid}/messages").json()["messages"]
    pairs = zip(said, said[1:], strict=False)
    return [m["text"] for m, after in pairs if m["role"] == "user" and after["role"] == "assistant"]


def _ids(http: httpx.Client) -> list[str]:
    return [c["id"] for c in http.get("/conversations").json()["conversations"]]


def _files(http: httpx.Client) -> set[str]:
    return {f["path"] for f in http.get("/files").json()["files"]}


@pytest.mark.runtime
@pytest.mark.parametrize(
    "engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_restart_keeps_conversations_files_and_tokens_and_frees_its_own_leases(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", KEY_ENV)}
    env["PYTHONPATH"] = str(ROOT)
    if engine == "postgresql":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_url")
        env["SCHEMA"] = f"t_{secrets.token_hex(4)}"
    try:
        with server(tmp_path, env) as web:
            http = web.start()
            token = http.headers["Authorization"]
            cid = http.post("/conversations").json()["id"]
            assert _say(http, cid, "Remember: the codename is HERON.") == "message"
            assert http.put("/files/plan.md", json={"content": "keep me"}).status_code == 200
            asked = http.post("/ask", json={"text": "Create todo.md containing buy milk"})
            assert "todo.md" in asked.text and "store_down" not in asked.text, asked.text
            web.stop(signal.SIGINT)  # Ctrl+C

            http = web.start()
            assert http.headers["Authorization"] == token, "the valid token is reused"
            assert _ids(http) == [cid]
            assert "Remember: the codename is HERON." in _texts(http, cid)
            assert _files(http) == {"plan.md", "todo.md"}

            cut_text = "Wait 4 seconds, then say hi."
            cut = threading.Thread(target=_cut, args=(http, cid, cut_text, "key-1"))
            cut.start()
            time.sleep(2.0)  # the turn runs: its lease and its Idempotency-Key are held
            web.stop(signal.SIGKILL)  # kill -9 mid-turn
            cut.join(30)

            http = web.start()
            assert _ids(http) == [cid]
            started = time.monotonic()  # the client retries the cut send with its key
            assert _say(http, cid, cut_text, "key-1") == "message"
            took = time.monotonic() - started
            assert took < 15, f"the retry waited {took:.1f} s for the killed process's send"
            # The killed process may have stored the message before it died (without a reply);
            # the turn that answers it is stored once.
            assert _answered(http, cid).count(cut_text) == 1, "the retried send answered once"
            started = time.monotonic()
            assert _say(http, cid, "What is the codename?") == "message"
            took = time.monotonic() - started
            assert took < 10, f"the next turn waited {took:.1f} s (the lease's TTL is 30 s)"
            assert "Remember: the codename is HERON." in _texts(http, cid)
            assert _files(http) == {"plan.md", "todo.md"}
            web.stop(signal.SIGINT)
    finally:
        if engine == "postgresql":
            PostgresStore(env["DATABASE_URL"], env["SCHEMA"]).drop_schema()
