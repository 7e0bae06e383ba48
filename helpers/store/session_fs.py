"""A ``SessionFsProvider`` that keeps a session's files as rows of a ``SessionStore``."""

from __future__ import annotations

import errno
import posixpath
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from copilot.rpc import SessionFSReaddirWithTypesEntry, SessionFSReaddirWithTypesEntryType
from copilot.session_fs_provider import SessionFsFileInfo, SessionFsProvider

from helpers.events import parse_events
from helpers.store.base import Row, SessionStore

__all__ = ["SESSION_FS", "StoreFs", "store_fs", "stored_events"]

# What every session_fs client of these notebooks passes as ``CopilotClient(session_fs=...)``.
SESSION_FS = {
    "initial_working_directory": "/",
    "session_state_path": "/session-state",
    "conventions": "posix",
}


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such file or directory", path)


def _clean(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))


def _when(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


class StoreFs(SessionFsProvider):
    """One session's files, read and written as rows: ``(session id, path) -> content``."""

    def __init__(
        self, store: SessionStore, session_id: str, calls: Counter[str] | None = None
    ) -> None:
        self.store, self.session_id = store, session_id
        self.calls: Counter[str] = calls if calls is not None else Counter()

    def _count(self, name: str, path: str) -> str:
        self.calls[name] += 1
        return _clean(path)

    async def _row(self, path: str) -> Row | None:
        return await self.store.read(self.session_id, path)

    async def _is_dir(self, path: str, row: Row | None, children: list[Row] | None = None) -> bool:
        """Whether ``path`` is a folder, given its ``row`` (and rows under it) already read."""
        if path == "/":
            return True
        if row is not None:
            return row.kind == "directory"
        if children is not None:
            return bool(children)
        return await self.store.has_under(self.session_id, path)

    async def read_file(self, path: str) -> str:
        path = self._count("read_file", path)
        row = await self._row(path)
        if row is None or row.kind != "file":
            raise _missing(path)
        return row.content

    async def write_file(self, path: str, content: str, mode: int | None = None) -> None:
        path = self._count("write_file", path)
        await self.store.write(self.session_id, path, content, "file")

    async def append_file(self, path: str, content: str, mode: int | None = None) -> None:
        path = self._count("append_file", path)
        await self.store.append(self.session_id, path, content)

    async def exists(self, path: str) -> bool:
        path = self._count("exists", path)
        row = await self._row(path)
        return row is not None or await self._is_dir(path, row)

    async def stat(self, path: str) -> SessionFsFileInfo:
        path = self._count("stat", path)
        row = await self._row(path)
        if row is not None:
            size = len(row.content.encode()) if row.kind == "file" else 0
            return SessionFsFileInfo(
                is_file=row.kind == "file",
                is_directory=row.kind == "directory",
                size=size,
                mtime=_when(row.modified_at),
                birthtime=_when(row.created_at),
            )
        if await self._is_dir(path, row):
            now = datetime.now(UTC)
            return SessionFsFileInfo(False, True, 0, now, now)
        raise _missing(path)

    async def mkdir(self, path: str, recursive: bool, mode: int | None = None) -> None:
        path = self._count("mkdir", path)
        row = None if path == "/" else await self._row(path)
        if not await self._is_dir(path, row):
            await self.store.write(self.session_id, path, "", "directory")

    async def _entries(self, path: str) -> dict[str, str]:
        children = await self.store.under(self.session_id, path)
        row = None if path == "/" else await self._row(path)
        if not await self._is_dir(path, row, children):
            raise _missing(path)
        prefix = path.rstrip("/") + "/"
        entries: dict[str, str] = {}
        for child in children:
            name, *rest = child.path[len(prefix) :].split("/")
            entries[name] = "directory" if rest or child.kind == "directory" else "file"
        return entries

    async def readdir(self, path: str) -> list[str]:
        path = self._count("readdir", path)
        return sorted(await self._entries(path))

    async def readdir_with_types(self, path: str) -> list[SessionFSReaddirWithTypesEntry]:
        path = self._count("readdir_with_types", path)
        return [
            SessionFSReaddirWithTypesEntry(name, SessionFSReaddirWithTypesEntryType(kind))
            for name, kind in sorted((await self._entries(path)).items())
        ]

    async def rm(self, path: str, recursive: bool, force: bool) -> None:
        path = self._count("rm", path)
        removed = await self.store.remove(self.session_id, path, recursive)
        if not removed and not force:
            raise _missing(path)

    async def rename(self, src: str, dest: str) -> None:
        src = self._count("rename", src)
        dest = _clean(dest)
        row = await self._row(src)
        if row is None and not await self._is_dir(src, row):
            raise _missing(src)
        await self.store.move(self.session_id, src, dest)


def store_fs(store: SessionStore, calls: Counter[str] | None = None) -> Callable[[Any], StoreFs]:
    """The ``create_session_fs_handler=`` factory: each session's files go to ``store``.

    Who owns the session is recorded once, in the store's ``sessions`` table, when the application
    makes the id (``store.new_id``); the file rows carry only the session id.
    """
    return lambda session: StoreFs(store, session.session_id, calls)


EVENTS = "/session-state/events.jsonl"


async def stored_events(store: SessionStore, session_id: str) -> list[dict[str, Any]]:
    """The session's ``events.jsonl`` as the store holds it, one dict per event."""
    row = await store.read(session_id, EVENTS)
    return parse_events(row.content) if row else []
