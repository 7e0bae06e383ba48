"""A ``SessionFsProvider`` that keeps a session's files as rows of a ``SessionStore``."""

from __future__ import annotations

import errno
import os
import posixpath
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from copilot.rpc import SessionFSReaddirWithTypesEntry, SessionFSReaddirWithTypesEntryType
from copilot.session_fs_provider import SessionFsFileInfo, SessionFsProvider

from helpers.errors import WriteRefused
from helpers.events import parse_events
from helpers.store.base import SessionStore
from helpers.store.lease import Lease, current_lease

__all__ = ["SESSION_FS", "StoreFs", "store_fs", "stored_events"]

# What every session_fs client of these notebooks passes as ``CopilotClient(session_fs=...)``.
SESSION_FS = {
    "initial_working_directory": "/",
    "session_state_path": "/session-state",
    "conventions": "posix",
}


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such file or directory", path)


def _fail(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def _clean(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))


def _ancestors(path: str) -> list[str]:
    """The folders above ``path``, outermost first (``/a/b/c`` -> ``/a``, ``/a/b``)."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _when(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


class StoreFs(SessionFsProvider):
    """One session's files, read and written as rows: ``(session id, path) -> content``.

    It behaves as a directory on disk does (tests/test_store_fs_model.py compares the two on
    random call sequences): writes and appends create missing parent folders, a file in the way
    of a path is ``ENOTDIR``, a missing one ``ENOENT``; ``rm`` of a folder needs ``recursive``
    (as Node's ``fs.rm``); ``rename`` follows POSIX ``rename(2)``.

    With ``lease`` (the request's), every write, append, folder, removal and rename is fenced on
    it: the store makes it only while the lease's token holds the session's lease unexpired and
    the session has its ownership row, in the same transaction. A refused write raises
    ``WriteRefused`` (the runtime gets an error) and marks the lease lost, so the request
    reports ``LeaseExpired``, never success.
    """

    def __init__(
        self,
        store: SessionStore,
        session_id: str,
        calls: Counter[str] | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.store, self.session_id, self.lease = store, session_id, lease
        self.calls: Counter[str] = calls if calls is not None else Counter()

    @property
    def holder(self) -> str | None:
        return self.lease.holder if self.lease is not None else None

    async def _write(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self.session_id, *args, holder=self.holder, **kwargs)
        except WriteRefused:
            if self.lease is not None:
                self.lease.lost.set()
            raise

    def _count(self, name: str, path: str) -> str:
        self.calls[name] += 1
        return _clean(path)

    async def _kinds(self, *paths: str) -> dict[str, str]:
        kinds = await self.store.kinds(self.session_id, [p for p in paths if p != "/"])
        return {"/": "directory", **kinds}

    @staticmethod
    def _blocked(kinds: dict[str, str], path: str) -> OSError | None:
        """Why the folders above ``path`` cannot hold it (a file in the way, a missing folder)."""
        for folder in _ancestors(path):
            kind = kinds.get(folder)
            if kind == "file":
                return _fail(errno.ENOTDIR, path)
            if kind is None:
                return _missing(path)
        return None

    async def _absent(self, path: str) -> OSError:
        """The error for a path that has no row: ENOTDIR when a file is in the way, else ENOENT."""
        return self._blocked(await self._kinds(*_ancestors(path)), path) or _missing(path)

    async def _put(self, path: str, content: str, append: bool) -> None:
        above = _ancestors(path)
        kinds = await self._kinds(*above, path)
        if any(kinds.get(folder) == "file" for folder in above):
            raise _fail(errno.ENOTDIR, path)
        if kinds.get(path) == "directory":
            raise _fail(errno.EISDIR, path)
        missing = [folder for folder in above if folder not in kinds]
        if append:
            await self._write(self.store.append, path, content, missing)
        else:
            await self._write(self.store.write, path, content, "file", missing)

    async def read_file(self, path: str) -> str:
        path = self._count("read_file", path)
        row = await self.store.read(self.session_id, path)
        if row is None:
            raise await self._absent(path)
        if row.kind != "file":
            raise _fail(errno.EISDIR, path)
        return row.content

    async def write_file(self, path: str, content: str, mode: int | None = None) -> None:
        await self._put(self._count("write_file", path), content, append=False)

    async def append_file(self, path: str, content: str, mode: int | None = None) -> None:
        await self._put(self._count("append_file", path), content, append=True)

    async def exists(self, path: str) -> bool:
        path = self._count("exists", path)
        found = path == "/" or await self.store.read(self.session_id, path, content=False)
        return bool(found)

    async def stat(self, path: str) -> SessionFsFileInfo:
        path = self._count("stat", path)
        if path == "/":
            now = datetime.now(UTC)
            return SessionFsFileInfo(False, True, 0, now, now)
        row = await self.store.read(self.session_id, path, content=False)
        if row is None:
            raise await self._absent(path)
        is_file = row.kind == "file"
        size = await self.store.size(self.session_id, path) if is_file else 0
        return SessionFsFileInfo(
            is_file=is_file,
            is_directory=not is_file,
            size=size,
            mtime=_when(row.modified_at),
            birthtime=_when(row.created_at),
        )

    async def mkdir(self, path: str, recursive: bool, mode: int | None = None) -> None:
        path = self._count("mkdir", path)
        above = _ancestors(path)
        kinds = await self._kinds(*above, path)
        if any(kinds.get(folder) == "file" for folder in above):
            raise _fail(errno.ENOTDIR, path)
        kind = kinds.get(path)
        if kind == "file" or (kind == "directory" and not recursive):
            raise _fail(errno.EEXIST, path)
        if kind == "directory":
            return
        missing = [folder for folder in above if folder not in kinds]
        if missing and not recursive:
            raise _missing(path)
        await self._write(self.store.write, path, "", "directory", missing)

    async def _entries(self, path: str) -> dict[str, str]:
        if path != "/":
            row = await self.store.read(self.session_id, path, content=False)
            if row is None:
                raise await self._absent(path)
            if row.kind != "directory":
                raise _fail(errno.ENOTDIR, path)
        prefix = path.rstrip("/") + "/"
        entries: dict[str, str] = {}
        for child in await self.store.under(self.session_id, path, content=False):
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
        kinds = await self._kinds(*_ancestors(path), path)
        kind = kinds.get(path)
        if kind is None:
            if force:
                return
            raise self._blocked(kinds, path) or _missing(path)
        if path == "/" or (kind == "directory" and not recursive):
            raise _fail(errno.EISDIR, path)
        await self._write(self.store.remove, path, recursive=True)

    async def rename(self, src: str, dest: str) -> None:
        src = self._count("rename", src)
        dest = _clean(dest)
        kinds = await self._kinds(*_ancestors(src), src, *_ancestors(dest), dest)
        blocked = self._blocked(kinds, src) or self._blocked(kinds, dest)
        if blocked is not None:
            raise blocked
        moving, there = kinds.get(src), kinds.get(dest)
        if moving is None:
            raise _missing(src)
        if src == dest:
            return
        if moving == "directory" and dest.startswith(src.rstrip("/") + "/"):
            raise _fail(errno.EINVAL, dest)
        if there is not None:
            if src.startswith(dest.rstrip("/") + "/"):
                raise _fail(errno.ENOTEMPTY, dest)
            if there != moving:
                raise _fail(errno.EISDIR if there == "directory" else errno.ENOTDIR, dest)
            if there == "directory" and await self.store.has_under(self.session_id, dest):
                raise _fail(errno.ENOTEMPTY, dest)
        await self._write(self.store.move, src, dest)


def store_fs(
    store: SessionStore, calls: Counter[str] | None = None, lease: Lease | None = None
) -> Callable[[Any], StoreFs]:
    """The ``create_session_fs_handler=`` factory: each session's files go to ``store``.

    Who owns the session is recorded once, in the store's ``sessions`` table, when the application
    makes the id (``store.new_id``); the file rows carry only the session id. The writes are
    fenced on ``lease``, by default the lease of the router's request this is called in (its
    opener's), if it is a lease of that session.
    """
    lease = lease or current_lease.get()
    return lambda session: StoreFs(
        store,
        session.session_id,
        calls,
        lease if lease is not None and lease.session_id == session.session_id else None,
    )


EVENTS = "/session-state/events.jsonl"


async def stored_events(store: SessionStore, session_id: str) -> list[dict[str, Any]]:
    """The session's ``events.jsonl`` as the store holds it, one dict per event."""
    row = await store.read(session_id, EVENTS)
    return parse_events(row.content) if row else []
