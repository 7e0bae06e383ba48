"""Notebook 02's file tools, defined once: the notebook shows this source, the tests import it.

Each tool is bound to one user's :class:`~helpers.tools.vfs.VirtualFS`, so a session serving User B
holds no tool that could touch User A's files. Refusals are *returned* to the model as
``ToolResult(result_type="failure")``: a raised exception reaches the model only as "Tool
execution failed" (its text still reaches the runtime, so never put secrets in it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from copilot import PermissionRequest, PermissionRequestResult
from copilot.generated.rpc import PermissionDecisionApproveOnce, PermissionDecisionReject
from copilot.tools import Tool, ToolInvocation, ToolResult, define_tool
from pydantic import BaseModel, Field

from helpers.errors import VfsError
from helpers.tools.vfs import VirtualFS

TOOL_NAMES = ("write_file", "read_file", "list_files")
ALLOWLIST = [f"custom:{name}" for name in TOOL_NAMES]
NO_FILES = "(no files yet)"
Handler = Callable[[Any, ToolInvocation], "str | ToolResult"]


class WriteFileParams(BaseModel):
    path: str = Field(description="Relative path of the file, such as notes.md")
    content: str = Field(description="The complete text to store in the file")


class ReadFileParams(BaseModel):
    path: str = Field(description="Relative path of the file to read")


class ListFilesParams(BaseModel):
    pass


def failure(exc: Exception) -> ToolResult:
    """Tell the model what went wrong, in words it can act on."""
    return ToolResult(text_result_for_llm=str(exc), result_type="failure")


def file_tools(fs: VirtualFS, skip_permission: bool = True) -> list[Tool]:
    """The three tools, bound to one user's filesystem.

    Args:
        fs: The filesystem of the user whose request the session serves.
        skip_permission: ``True`` runs the tools without asking; ``False`` leaves each call to the
            session's ``on_permission_request`` handler.
    """

    def write_file(params: WriteFileParams, invocation: ToolInvocation) -> str | ToolResult:
        try:
            return fs.write(params.path, params.content)
        except VfsError as exc:
            return failure(exc)

    def read_file(params: ReadFileParams, invocation: ToolInvocation) -> str | ToolResult:
        try:
            return fs.read(params.path)
        except VfsError as exc:
            return failure(exc)

    def list_files(params: ListFilesParams, invocation: ToolInvocation) -> str:
        return "\n".join(fs.list()) or NO_FILES

    return define_file_tools(write_file, read_file, list_files, skip_permission)


def define_file_tools(
    write_file: Handler, read_file: Handler, list_files: Handler, skip_permission: bool = True
) -> list[Tool]:
    """The three tools' names, descriptions and parameter models, around the given handlers."""
    common = {"skip_permission": skip_permission}
    return [
        define_tool(
            "write_file",
            description="Create or replace a text file",
            handler=write_file,
            params_type=WriteFileParams,
            **common,
        ),
        define_tool(
            "read_file",
            description="Read a text file",
            handler=read_file,
            params_type=ReadFileParams,
            overrides_built_in_tool=True,  # a runtime built-in has this name too
            **common,
        ),
        define_tool(
            "list_files",
            description="List all files",
            handler=list_files,
            params_type=ListFilesParams,
            **common,
        ),
    ]


def approve_only_file_tools(
    request: PermissionRequest, invocation: dict[str, Any]
) -> PermissionRequestResult:
    """An ``on_permission_request`` handler: approve our three tools, refuse anything else."""
    name = getattr(request, "tool_name", None)
    if getattr(request, "kind", None) == "custom-tool" and name in TOOL_NAMES:
        return PermissionDecisionApproveOnce()
    what = name or getattr(request, "kind", "this request")
    return PermissionDecisionReject(feedback=f"{what} is not allowed in this application")
