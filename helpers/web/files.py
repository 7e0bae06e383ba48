"""Users' files in the database (table ``user_files``), with ``VirtualFS``'s paths and limits.

Notebook 02 keeps a user's files in a dict of the Python process; a service that restarts must not
lose them, so here each call is a statement. The file tools' handlers are async (the SDK awaits
them): a write returns its confirmation only after the row is committed, and a database that does
not answer is told to the model as a failure, never as a write that happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from copilot.tools import Tool, ToolInvocation, ToolResult

from helpers.errors import StoreDown, VfsError
from helpers.store.base import SessionStore
from helpers.tools.file_tools import NO_FILES, define_file_tools, failure
from helpers.tools.vfs import MAX_FILE_BYTES, MAX_FILES, check_file, check_path


class UserFiles:
    """One user's files as rows; the same rules and messages as ``VirtualFS``."""

    def __init__(
        self,
        store: SessionStore,
        owner: str,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_files: int = MAX_FILES,
    ) -> None:
        self.store, self.owner = store, owner
        self.max_file_bytes, self.max_files = max_file_bytes, max_files

    def __repr__(self) -> str:
        return f"UserFiles(owner={self.owner!r})"

    async def _execute(self, sql: str, args: tuple[Any, ...]) -> tuple[list[tuple], int]:
        """One statement; a database that fails or does not answer is ``StoreDown``."""
        try:
            return await self.store.execute(sql, args)
        except StoreDown:
            raise
        except Exception as exc:
            raise StoreDown(f"the database did not answer ({type(exc).__name__})") from exc

    async def write(self, path: str, content: str) -> str:
        """Create or replace a file (committed before this returns); a one-line confirmation."""
        clean, size = check_file(path, content, self.max_file_bytes)
        # One statement: the row goes in only while the user has fewer files than the limit
        # (or the path is already one of them), so a refused write changes nothing.
        now = time.time()
        _, changed = await self._execute(
            "INSERT INTO user_files (owner, path, content, bytes, modified_at) "
            "SELECT ?, ?, ?, ?, ? WHERE (SELECT COUNT(*) FROM user_files WHERE owner = ?) < ? "
            "OR EXISTS (SELECT 1 FROM user_files WHERE owner = ? AND path = ?) "
            "ON CONFLICT (owner, path) DO UPDATE SET content = excluded.content, "
            "bytes = excluded.bytes, modified_at = excluded.modified_at",
            (
                self.owner,
                clean,
                self.store.encode(content),
                size,
                now,
                self.owner,
                self.max_files,
                self.owner,
                clean,
            ),
        )
        if changed != 1:
            raise VfsError(
                f"Refused: this user already has {self.max_files} files, the most allowed."
            )
        return f"Stored {clean} ({size} bytes)."

    async def read(self, path: str) -> str:
        """A file's text."""
        clean = check_path(path)
        rows, _ = await self._execute(
            "SELECT content FROM user_files WHERE owner = ? AND path = ?", (self.owner, clean)
        )
        if not rows:
            raise VfsError(f"No file named {clean}. Use list_files to see the files that exist.")
        return self.store.decode(rows[0][0])

    async def list(self) -> list[str]:
        """All paths, sorted."""
        rows, _ = await self._execute(
            "SELECT path FROM user_files WHERE owner = ? ORDER BY path", (self.owner,)
        )
        return sorted(r[0] for r in rows)

    async def snapshot(self) -> dict[str, str]:
        """path -> text, every file of the user."""
        rows, _ = await self._execute(
            "SELECT path, content FROM user_files WHERE owner = ?", (self.owner,)
        )
        return {path: self.store.decode(text) for path, text in sorted(rows)}


FilesFor = Callable[[str], UserFiles | None]


def stored_file_tools(files_for: FilesFor) -> list[Tool]:
    """The three file tools over stored files; ``files_for(session_id)`` picks the user's."""

    def handler(operation: Callable[[UserFiles, Any], Any]) -> Any:
        async def run(params: Any, invocation: ToolInvocation) -> str | ToolResult:
            files = files_for(invocation.session_id)
            if files is None:
                return ToolResult(
                    text_result_for_llm=f"Refused: session {invocation.session_id} serves no "
                    "user right now",
                    result_type="failure",
                )
            try:
                return await operation(files, params)
            except VfsError as exc:
                return failure(exc)
            except StoreDown as exc:  # say so, and claim nothing was stored
                return ToolResult(
                    text_result_for_llm="Failed: the database did not answer, so this call is "
                    "not done (a write may not be stored: read the file back later).",
                    result_type="failure",
                    error=str(exc),
                )

        return run

    async def listing(files: UserFiles, params: Any) -> str:
        return "\n".join(await files.list()) or NO_FILES

    return define_file_tools(
        handler(lambda files, params: files.write(params.path, params.content)),
        handler(lambda files, params: files.read(params.path)),
        handler(listing),
    )
