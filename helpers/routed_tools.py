"""The three file tools defined once for many users: each call finds its user by session id.

``file_tools(fs)`` binds a new set of tools to one user's filesystem per session. Sessions created
ahead of demand do not know their user yet, so these tools look the user up at call time through
``invocation.session_id``; a session bound to nobody gets a refusal, never some user's files.
"""

from __future__ import annotations

from collections.abc import Callable

from copilot.tools import Tool, ToolInvocation, ToolResult, define_tool

from .file_tools import ListFilesParams, ReadFileParams, WriteFileParams, failure
from .vfs import VfsError, VirtualFS

FsFor = Callable[[str], VirtualFS | None]


def _unbound(invocation: ToolInvocation) -> ToolResult:
    return ToolResult(
        text_result_for_llm=f"Refused: session {invocation.session_id} serves no user right now",
        result_type="failure",
    )


def routed_file_tools(fs_for: FsFor) -> list[Tool]:
    """The three file tools; ``fs_for(invocation.session_id)`` picks the filesystem per call."""

    def write_file(params: WriteFileParams, invocation: ToolInvocation) -> str | ToolResult:
        fs = fs_for(invocation.session_id)
        if fs is None:
            return _unbound(invocation)
        try:
            return fs.write(params.path, params.content)
        except VfsError as exc:
            return failure(exc)

    def read_file(params: ReadFileParams, invocation: ToolInvocation) -> str | ToolResult:
        fs = fs_for(invocation.session_id)
        if fs is None:
            return _unbound(invocation)
        try:
            return fs.read(params.path)
        except VfsError as exc:
            return failure(exc)

    def list_files(params: ListFilesParams, invocation: ToolInvocation) -> str | ToolResult:
        fs = fs_for(invocation.session_id)
        if fs is None:
            return _unbound(invocation)
        return "\n".join(fs.list()) or "(no files yet)"

    return [
        define_tool(
            "write_file",
            description="Create or replace a text file",
            handler=write_file,
            params_type=WriteFileParams,
            skip_permission=True,
        ),
        define_tool(
            "read_file",
            description="Read a text file",
            handler=read_file,
            params_type=ReadFileParams,
            overrides_built_in_tool=True,  # a runtime built-in has this name too
            skip_permission=True,
        ),
        define_tool(
            "list_files",
            description="List all files",
            handler=list_files,
            params_type=ListFilesParams,
            skip_permission=True,
        ),
    ]
