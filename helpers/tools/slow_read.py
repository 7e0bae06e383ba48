"""A ``read_file`` that takes a set time, over a small fixed archive: a turn that lasts at least
that long on any model ("Read q1.md"), for a service run as its own process
(``python -m helpers.web --slow-read-s 2``; notebook 08 kills, aborts and retries such turns)."""

from __future__ import annotations

import asyncio

from copilot.tools import Tool, ToolInvocation, ToolResult, define_tool

from helpers.errors import VfsError
from helpers.tools.file_tools import ReadFileParams, failure
from helpers.tools.vfs import VirtualFS

SLOW_PROMPT = "Read q1.md"  # a prompt whose turn calls the tool, on the stand-in and other models


def archive() -> VirtualFS:
    """The archive the tool reads: q1.md to q4.md, one line each."""
    fs = VirtualFS("archive")
    for quarter in ("q1", "q2", "q3", "q4"):
        fs.write(f"{quarter}.md", f"{quarter.upper()}: all targets met.")
    return fs


def slow_read_tool(seconds: float) -> Tool:
    """``read_file`` over :func:`archive` whose handler waits ``seconds`` before it answers."""
    fs = archive()

    async def slow_read(params: ReadFileParams, invocation: ToolInvocation) -> str | ToolResult:
        await asyncio.sleep(seconds)
        try:
            return fs.read(params.path)
        except VfsError as exc:
            return failure(exc)

    return define_tool(
        "read_file",
        description="Read a text file",
        handler=slow_read,
        params_type=ReadFileParams,
        overrides_built_in_tool=True,
        skip_permission=True,
    )
