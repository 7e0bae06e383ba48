"""StoreFs against a real directory: the same random sequences of the calls the runtime makes.

A hypothesis state machine drives ``helpers.store.session_fs.StoreFs`` (rows in SQLite or
PostgreSQL) and ``DirFs`` (the same ``SessionFsProvider`` contract over a real temporary
directory) with the same write, append, read, mkdir, readdir, stat, exists, rename and rm calls,
and fails on any difference: a value returned, whether a call failed (and whether as ENOENT, the
one error the SDK tells apart), and the whole tree after every step. The suite runs a short
setting; ``STORE_FS_EXAMPLES=500`` runs longer.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pg_fixture
import pytest
from copilot.session_fs_provider import SessionFsFileInfo, SessionFsProvider
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from helpers.store import open_store
from helpers.store.session_fs import StoreFs

postgres_url = pg_fixture.postgres_url
EXAMPLES = int(os.environ.get("STORE_FS_EXAMPLES", "25"))
NAMES = st.sampled_from(["a", "b", "c.txt", "events.jsonl"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


class DirFs(SessionFsProvider):
    """The SessionFsProvider contract over a real directory (the reference)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    async def read_file(self, path: str) -> str:
        with self._p(path).open(encoding="utf-8", newline="") as file:  # no newline translation
            return file.read()

    async def write_file(self, path: str, content: str, mode: int | None = None) -> None:
        target = self._p(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8", newline="") as file:
            file.write(content)

    async def append_file(self, path: str, content: str, mode: int | None = None) -> None:
        target = self._p(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8", newline="") as file:
            file.write(content)

    async def exists(self, path: str) -> bool:
        return self._p(path).exists()

    async def stat(self, path: str) -> SessionFsFileInfo:
        info = self._p(path).stat()
        when = datetime.fromtimestamp(info.st_mtime, UTC)
        is_dir = self._p(path).is_dir()
        return SessionFsFileInfo(not is_dir, is_dir, 0 if is_dir else info.st_size, when, when)

    async def mkdir(self, path: str, recursive: bool, mode: int | None = None) -> None:
        self._p(path).mkdir(parents=recursive, exist_ok=recursive)

    async def readdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self._p(path)))

    async def readdir_with_types(self, path: str):  # not compared: same entries as readdir
        raise NotImplementedError

    async def rm(self, path: str, recursive: bool, force: bool) -> None:
        target = self._p(path)
        if not target.exists() and force:
            return
        if target.is_dir() and not recursive:  # as Node's fs.rm, which the runtime uses locally
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    async def rename(self, src: str, dest: str) -> None:
        os.rename(self._p(src), self._p(dest))


def outcome(call) -> tuple[str, object]:
    """What a call did: its value, or the class of its failure (ENOENT or another error)."""
    try:
        value = asyncio.get_event_loop().run_until_complete(call)
    except OSError as exc:
        return ("ENOENT" if exc.errno == errno.ENOENT else "error", None)
    except Exception:  # noqa: BLE001 - any other failure is compared as one class
        return ("error", None)
    if isinstance(value, SessionFsFileInfo):
        value = (value.is_file, value.is_directory, value.size)
    return ("ok", value)


class Machine(RuleBasedStateMachine):
    """One store session against one temporary directory."""

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.tmp = Path(tempfile.mkdtemp(prefix="storefs-"))
        (self.tmp / "real").mkdir()
        self.store = self.loop.run_until_complete(
            open_store(self.tmp, self.url, schema="storefs_model" if self.url else "")
        )
        self.loop.run_until_complete(self.store.execute("DELETE FROM session_files"))
        self.loop.run_until_complete(self.store.execute("DELETE FROM session_file_parts"))
        self.ours, self.real = StoreFs(self.store, "s"), DirFs(self.tmp / "real")

    def same(self, name: str, *args: object) -> None:
        mine = outcome(getattr(self.ours, name)(*args))
        theirs = outcome(getattr(self.real, name)(*args))
        assert mine == theirs, f"{name}{args}: store {mine}, directory {theirs}"

    @rule(path=PATHS, content=TEXT)
    def write(self, path: str, content: str) -> None:
        self.same("write_file", path, content)

    @rule(path=PATHS, content=TEXT)
    def append(self, path: str, content: str) -> None:
        self.same("append_file", path, content)

    @rule(path=PATHS)
    def read(self, path: str) -> None:
        self.same("read_file", path)

    @rule(path=PATHS, recursive=st.booleans())
    def mkdir(self, path: str, recursive: bool) -> None:
        self.same("mkdir", path, recursive)

    @rule(path=st.one_of(st.just("/"), PATHS))
    def readdir(self, path: str) -> None:
        self.same("readdir", path)

    @rule(path=PATHS)
    def stat(self, path: str) -> None:
        self.same("stat", path)

    @rule(path=PATHS)
    def exists(self, path: str) -> None:
        self.same("exists", path)

    @rule(src=PATHS, dest=PATHS)
    def rename(self, src: str, dest: str) -> None:
        self.same("rename", src, dest)

    @rule(path=PATHS, recursive=st.booleans(), force=st.booleans())
    def rm(self, path: str, recursive: bool, force: bool) -> None:
        self.same("rm", path, recursive, force)

    @invariant()
    def same_tree(self) -> None:
        def tree(fs: SessionFsProvider, folder: str) -> dict[str, object]:
            out: dict[str, object] = {}
            kind, names = outcome(fs.readdir(folder))
            for name in names if kind == "ok" else []:  # type: ignore[union-attr]
                path = folder.rstrip("/") + "/" + name
                _, info = outcome(fs.stat(path))
                is_dir = bool(info and info[1])  # type: ignore[index]
                out[name] = tree(fs, path) if is_dir else outcome(fs.read_file(path))[1]
            return out

        assert tree(self.ours, "/") == tree(self.real, "/"), "the trees differ"

    def teardown(self) -> None:
        if self.store.engine == "postgresql":
            self.store.drop_schema()  # type: ignore[attr-defined]
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_store_fs_behaves_like_a_directory_on_sqlite() -> None:
    Machine.url = ""
    Machine.TestCase.settings = SETTINGS
    Machine.TestCase().runTest()


@pytest.mark.postgres
def test_store_fs_behaves_like_a_directory_on_postgresql(postgres_url: str) -> None:
    Machine.url = postgres_url
    Machine.TestCase.settings = SETTINGS
    Machine.TestCase().runTest()
