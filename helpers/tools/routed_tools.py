"""The three file tools defined once for many users: each call finds its user by session id.

``file_tools(fs)`` binds a new set of tools to one user's filesystem per session. Sessions created
ahead of demand do not know their user yet, so these tools look the user up at call time through
``invocation.session_id``; a session bound to nobody gets a refusal, never some user's files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from copilot.tools import Tool, ToolInvocation, ToolResult

from helpers.errors import VfsError
from helpers.tools.file_tools import NO_FILES, Handler, define_file_tools, failure
from helpers.tools.vfs import VirtualFS

FsFor = Callable[[str], VirtualFS | None]


def _unbound(invocation: ToolInvocation) -> ToolResult:
    return ToolResult(
        text_result_for_llm=f"Refused: session {invocation.session_id} serves no user right now",
        result_type="failure",
    )


def routed_file_tools(fs_for: FsFor) -> list[Tool]:
    """The three file tools; ``fs_for(invocation.session_id)`` picks the filesystem per call."""

    def routed(operation: Callable[[VirtualFS, Any], str]) -> Handler:
        def handler(params: Any, invocation: ToolInvocation) -> str | ToolResult:
            fs = fs_for(invocation.session_id)
            if fs is None:
                return _unbound(invocation)
            try:
                return operation(fs, params)
            except VfsError as exc:
                return failure(exc)

        return handler

    return define_file_tools(
        routed(lambda fs, params: fs.write(params.path, params.content)),
        routed(lambda fs, params: fs.read(params.path)),
        routed(lambda fs, params: "\n".join(fs.list()) or NO_FILES),
    )
