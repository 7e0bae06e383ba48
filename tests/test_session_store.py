"""The session store on both engines: files, ownership, leases, errors; the provider over it."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pg_fixture
import psycopg
import pytest
from pg_server import start_postgres

from helpers.errors import LeaseBusy, LeaseExpired, NotYourSession, StoreError
from helpers.events import forks, user_texts
from helpers.store import open_store
from helpers.store.base import SessionStore
from helpers.store.lease import Lease, held, request_token
from helpers.store.postgres import safe_url
from helpers.store.router import Router
from helpers.store.session_fs import StoreFs

postgres_url = pg_fixture.postgres_url  # a throwaway PostgreSQL server, or a skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    if request.param == "sqlite":
        opened = await open_store(tmp_path, "")
    else:
        url = request.getfixturevalue("postgres_url")
        opened = await open_store(tmp_path, url, schema=f"t_{secrets.token_hex(4)}")
    yield opened
    if opened.engine == "postgresql":
        opened.drop_schema()  # type: ignore[attr-defined]
    await opened.close()


async def test_files_round_trip(store: SessionStore) -> None:
    await store.write("s1", "/state/events.jsonl", '{"a": 1}\n', "file")
    await store.append("s1", "/state/events.jsonl", '{"b": "it\'s 100%_"}\n')
    await store.append("s1", "/state/new.txt", "created by append")
    row = await store.read("s1", "/state/events.jsonl")
    assert row is not None and row.content == '{"a": 1}\n{"b": "it\'s 100%_"}\n'
    assert row.kind == "file" and row.modified_at >= row.created_at
    assert [r.path for r in await store.under("s1", "/state")] == [
        "/state/events.jsonl",
        "/state/new.txt",
    ]
    await store.move("s1", "/state", "/moved")
    assert await store.read("s1", "/state/new.txt") is None
    assert (await store.read("s1", "/moved/new.txt")).content == "created by append"  # type: ignore[union-attr]
    assert await store.remove("s1", "/moved", recursive=True) == 2
    assert await store.rows(session_id="s1") == []


async def test_ids_are_made_by_the_store_and_unguessable(store: SessionStore) -> None:
    ids = [await store.new_id("A") for _ in range(20)]
    assert len(set(ids)) == 20 and all(i.startswith("user-a-") and len(i) == 23 for i in ids)
    assert await store.sessions_of("A") == ids and await store.sessions_of("B") == []
    assert {await store.owner(i) for i in ids} == {"A"}
    with pytest.raises(ValueError, match="letters or digits"):
        await store.new_id("../etc")


async def test_unknown_and_foreign_ids_get_one_refusal_and_change_nothing(
    store: SessionStore,
) -> None:
    """Items 2 and 3 of issue 14: no first-sender-owns, no existence oracle."""
    a_id = await store.new_id("A")
    await store.write(a_id, "/f", "A's secret", "file")
    await store.check_owner("A", a_id)
    before = await store.rows()
    messages = []
    for user, session_id in (("B", a_id), ("B", "user-b-0000000000000000"), ("B", "new-session")):
        with pytest.raises(NotYourSession) as refused:
            await store.check_owner(user, session_id)
        messages.append(str(refused.value).replace(repr(session_id), "<id>"))
    assert len(set(messages)) == 1, f"a refusal must not tell which ids exist: {messages}"
    assert await store.rows() == before and await store.owner("new-session") is None
    assert await store.sessions_of("B") == [], "sending to an unknown id claims nothing"


async def test_deleting_a_user_deletes_sessions_files_and_leases_at_once(
    store: SessionStore,
) -> None:
    a1, a2, b1 = await store.new_id("A"), await store.new_id("A"), await store.new_id("B")
    for session_id, text in ((a1, "A's secret"), (a2, "A's other"), (b1, "B's note")):
        await store.write(session_id, "/f", text, "file")
    assert await store.try_lease(a1, "request#1", 30)
    assert await store.delete_user("A") == 2
    assert await store.rows(user="A") == [] and await store.lease_of(a1) is None
    assert await store.sessions_of("A") == [] and await store.owner(a1) is None
    assert [r.content for r in await store.rows()] == ["B's note"]
    assert await store.owner(b1) == "B"


async def test_a_transaction_is_all_or_nothing(store: SessionStore) -> None:
    b1 = await store.new_id("B")
    with pytest.raises(Exception, match="no_such_table|does not exist"):
        await store.transaction(
            [("DELETE FROM sessions WHERE owner = ?", ("B",)), ("DELETE FROM no_such_table", ())]
        )
    assert await store.owner(b1) == "B", "the first statement was rolled back"


async def test_a_lease_is_held_by_one_request_not_by_a_runtime(store: SessionStore) -> None:
    """Item 4 of issue 14: a second request of the same runtime is a second holder."""
    first = await Lease(store, "s", 30, request_token("runtime-1")).acquire()
    same_runtime = Lease(store, "s", 30, request_token("runtime-1"))
    with pytest.raises(LeaseBusy, match=f"held by {first.holder}; runtime-1#"):
        await same_runtime.acquire(wait_s=0.1)
    assert not await same_runtime.release(), "a release never frees another request's lease"
    await first.check()

    async def release_soon() -> None:
        await asyncio.sleep(0.2)
        assert await first.release()

    await asyncio.gather(release_soon(), same_runtime.acquire(wait_s=10))
    assert (await store.lease_of("s"))[0] == same_runtime.holder  # type: ignore[index]
    await same_runtime.check()
    assert not await first.release(), "a holder that let go cannot release another's lease"
    with pytest.raises(LeaseExpired, match=f"now held by {same_runtime.holder}"):
        await first.check()


async def test_expired_lease_passes_on_and_is_detected(store: SessionStore) -> None:
    stale = await Lease(store, "s", ttl_s=0.05).acquire()
    await asyncio.sleep(0.1)
    taker = await Lease(store, "s", ttl_s=30).acquire()
    with pytest.raises(LeaseExpired, match=f"now held by {taker.holder}"):
        await stale.check()
    with pytest.raises(LeaseExpired):
        await stale.renew()
    assert stale.lost.is_set()
    assert not await stale.release() and (await store.lease_of("s"))[0] == taker.holder  # type: ignore[index]


async def test_the_heartbeat_keeps_the_lease_past_its_ttl(store: SessionStore) -> None:
    """Item 7 of issue 14: held() renews the lease while its block runs."""
    async with held(store, "t", ttl_s=0.3) as lease:
        for _ in range(5):
            await asyncio.sleep(0.2)
            with pytest.raises(LeaseBusy):
                await Lease(store, "t", ttl_s=30).acquire(wait_s=0)
        await lease.check()
    assert await store.lease_of("t") is None, "released at the end"


async def test_a_lost_lease_is_reported_and_stops_guarded_work(store: SessionStore) -> None:
    started = time.monotonic()
    with pytest.raises(LeaseExpired, match="now held by thief"):
        async with held(store, "t", ttl_s=0.3) as lease:
            await store.execute("UPDATE session_leases SET holder = 'thief' WHERE session_id = 't'")
            await lease.guard(asyncio.sleep(30))
    assert time.monotonic() - started < 5, "guard stops the work once the heartbeat fails"
    assert (await store.lease_of("t"))[0] == "thief", "the thief's lease was not released"  # type: ignore[index]


async def test_missing_tables_are_created(store: SessionStore, tmp_path: Path) -> None:
    await store.write("s", "/f", "x", "file")
    await store.execute("DROP TABLE session_files")
    await store.create_tables()
    assert await store.rows() == []
    await store.write("s", "/f", "again", "file")
    assert (await store.read("s", "/f")).content == "again"  # type: ignore[union-attr]


async def test_provider_over_the_store(store: SessionStore) -> None:
    fs = StoreFs(store, "s")
    await fs.mkdir("/session-state/checkpoints", recursive=True)
    await fs.write_file("/session-state/workspace.yaml", "id: s\n")
    await fs.append_file("/session-state/events.jsonl", "one\n")
    await fs.append_file("session-state/events.jsonl", "two\n")
    assert await fs.read_file("/session-state/events.jsonl") == "one\ntwo\n"
    assert await fs.exists("/session-state") and not await fs.exists("/nope")
    info = await fs.stat("/session-state/events.jsonl")
    assert info.is_file and info.size == 8
    assert (await fs.stat("/session-state")).is_directory
    assert await fs.readdir("/session-state") == ["checkpoints", "events.jsonl", "workspace.yaml"]
    typed = {e.name: e.type.value for e in await fs.readdir_with_types("/session-state")}
    assert typed == {"checkpoints": "directory", "events.jsonl": "file", "workspace.yaml": "file"}
    await fs.rename("/session-state/workspace.yaml", "/session-state/ws.yaml")
    assert await fs.read_file("/session-state/ws.yaml") == "id: s\n"
    for missing in (fs.read_file("/x"), fs.stat("/x"), fs.readdir("/x"), fs.rm("/x", False, False)):
        with pytest.raises(FileNotFoundError):
            await missing
    await fs.rm("/x", False, force=True)
    assert await store.started("s")
    await fs.rm("/session-state", recursive=True, force=False)
    assert await store.rows() == [] and fs.calls["append_file"] == 2
    assert not await store.started("s")


def test_history_helpers() -> None:
    linear = [{"id": "1"}, {"id": "2", "parentId": "1"}, {"id": "3", "parentId": "2"}]
    forked = [*linear, {"id": "4", "parentId": "2"}]
    assert forks(linear) == 0 and forks(forked) == 1
    said = [{"type": "user.message", "data": {"content": "hi"}}, {"type": "x", "data": {}}]
    assert user_texts(said) == ["hi"]


def test_router_picks_a_runtime(store: SessionStore) -> None:
    async def never(*args: object) -> None:
        raise AssertionError("pick() opens nothing")

    router = Router({"r1": "r1", "r2": "r2"}, store, never)
    router.busy["r1"] += 1
    assert router.pick("any") == "r2", "least busy first"
    hashed = Router({"r1": "r1", "r2": "r2"}, store, never, strategy="hash")
    assert len({hashed.pick("same") for _ in range(5)}) == 1
    with pytest.raises(ValueError, match="not one of"):
        Router({"r1": "r1"}, store, never, strategy="random")


@pytest.mark.postgres
async def test_bad_urls_and_passwords_get_clear_errors(tmp_path: Path, postgres_url: str) -> None:
    password = postgres_url.split(":")[2].split("@")[0]
    wrong = postgres_url.replace(f":{password}@", ":Wrong-Pass-123@")
    with pytest.raises(StoreError, match="password authentication failed") as failed:
        await open_store(tmp_path, wrong)
    assert "Wrong-Pass-123" not in str(failed.value) and password not in str(failed.value)
    port = postgres_url.rsplit(":", 1)[1].split("/")[0]
    unreachable = postgres_url.replace(f":{port}/", ":1/")
    with pytest.raises(StoreError, match="no PostgreSQL server answers") as failed:
        await open_store(tmp_path, unreachable)
    assert password not in str(failed.value)
    with pytest.raises(StoreError, match="does not exist"):
        await open_store(tmp_path, postgres_url.rsplit("/", 1)[0] + "/no_such_db")
    for bad in ("mysql://u:p@h/db", "postgresql://u:p@host:notaport/db", "not a url"):
        with pytest.raises(StoreError, match="must look like postgresql://") as failed:
            await open_store(tmp_path, bad)
        assert ":p@" not in str(failed.value)
    with pytest.raises(StoreError, match="schema"):
        await open_store(tmp_path, postgres_url, schema="Robert'); DROP")
    assert password not in safe_url(postgres_url)


@pytest.mark.postgres
async def test_a_missing_table_on_postgresql_is_created_on_first_use(
    tmp_path: Path, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA fresh_one")
    store = await open_store(tmp_path, postgres_url, schema="fresh_one")
    try:
        await store.write("s", "/f", "x", "file")
        assert len(await store.rows()) == 1
    finally:
        store.drop_schema()  # type: ignore[attr-defined]
        await store.close()


@pytest.mark.postgres
def test_the_throwaway_server_goes_away(postgres_url: str) -> None:
    server = start_postgres()
    root, url = server.root, server.url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    server.stop()
    server.stop()
    assert not root.exists(), "its folder is removed"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            psycopg.connect(url, connect_timeout=1).close()
        except psycopg.OperationalError:
            return
        time.sleep(0.1)
    raise AssertionError("the server still accepts connections after stop()")


def test_postgres_binaries_are_found_or_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from helpers.fleet import postgres as pg_server

    monkeypatch.setattr(pg_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(pg_server, "DEBIAN_ROOT", tmp_path)
    assert pg_server.find_bin_dir() is None, "nothing on PATH, nothing installed"
    for version, binaries in [("9", ("initdb", "postgres")), ("16", ("initdb", "postgres"))]:
        (tmp_path / version / "bin").mkdir(parents=True)
        for name in binaries:
            (tmp_path / version / "bin" / name).touch()
    (tmp_path / "17" / "bin").mkdir(parents=True)
    (tmp_path / "17" / "bin" / "initdb").touch()  # a half-installed newer one has no server
    assert pg_server.find_bin_dir() == tmp_path / "16" / "bin", "the newest complete Debian one"
    monkeypatch.setattr(pg_server, "find_bin_dir", lambda: None)
    with pytest.raises(pg_server.PostgresNotFound, match="apt-get install postgresql"):
        pg_server.start_postgres()


def test_the_cluster_folder_is_one_the_server_can_enter(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root the server runs as nobody: a clone under a private folder puts it in system temp."""
    from helpers.fleet import postgres as pg_server

    private = Path(tempfile.mkdtemp(prefix="pv"))  # short, like a clone in /root
    chosen: list[Path] = []
    try:
        (private / "clone" / "tmp").mkdir(parents=True)
        private.chmod(0o700)
        monkeypatch.setattr(pg_server, "TMP", private / "clone" / "tmp")
        assert pg_server._default_root(unprivileged=False).parent == pg_server.TMP
        chosen.append(pg_server._default_root(unprivileged=True))
        assert not chosen[-1].is_relative_to(private), "nobody could not enter a folder under it"
        monkeypatch.setattr(pg_server, "TMP", Path("/tmp") / ("x" * 120))
        chosen.append(pg_server._default_root(unprivileged=False))
        assert len(str(chosen[-1])) + len("/.s.PGSQL.65535") < 108, "the socket path must fit"
    finally:
        for folder in [*chosen, private]:
            shutil.rmtree(folder, ignore_errors=True)
