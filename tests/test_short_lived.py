"""Short-lived sessions with custom tools against the real runtime (and the runtime notes on tools)."""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest
from copilot import CopilotClient
from copilot.tools import Tool, ToolResult, define_tool
from pydantic import BaseModel

from helpers.vfs import VfsError, VirtualFS

pytestmark = pytest.mark.runtime
TIMEOUT = 60
NAMES = ["write_file", "read_file", "list_files"]


class PathArg(BaseModel):
    path: str


class WriteArgs(PathArg):
    content: str


class NoArgs(BaseModel):
    pass


def as_result(action: Callable[[], str]) -> str | ToolResult:
    try:
        return action()
    except VfsError as exc:
        return ToolResult(text_result_for_llm=str(exc), result_type="failure")


def tools_for(fs: VirtualFS, override_read: bool = True, skip_permission: bool = True) -> list[Tool]:
    options = dict(skip_permission=skip_permission)
    return [
        define_tool("write_file", description="Write a file", params_type=WriteArgs, **options,
                    handler=lambda p, _i: as_result(lambda: fs.write(p.path, p.content))),
        define_tool("read_file", description="Read a file", params_type=PathArg, overrides_built_in_tool=override_read,
                    **options, handler=lambda p, _i: as_result(lambda: fs.read(p.path))),
        define_tool("list_files", description="List files", params_type=NoArgs, **options,
                    handler=lambda _p, _i: "\n".join(fs.list()) or "(no files)"),
    ]


@pytest.fixture
async def client(server):
    async with CopilotClient(mode="empty", connection=server.connection()) as connected:
        yield connected


async def request(client, backend, fs: VirtualFS, prompt: str, allow=NAMES, **tool_options) -> tuple[str, str]:
    session = await client.create_session(tools=tools_for(fs, **tool_options), available_tools=allow,
                                          **backend.session_kwargs())
    try:
        reply = await session.send_and_wait(prompt, timeout=TIMEOUT)
    finally:
        await session.disconnect()
        await client.delete_session(session.session_id)
    return session.session_id, reply.data.content


async def test_note_written_then_read_by_a_new_session(client, local_backend, server):
    fs = VirtualFS("A")
    first, _ = await request(client, local_backend, fs, 'Create notes.md containing "ship on Friday"')
    assert fs.snapshot() == {"notes.md": "ship on Friday"}
    second, reply = await request(client, local_backend, fs, "List my files, then read notes.md")
    assert first != second and "ship on Friday" in reply
    assert all(len(r.user_messages) == 1 for r in list(local_backend.standin.requests)[-3:])
    for session_id in (first, second):
        assert not (server.home / "session-state" / session_id).exists()


@pytest.mark.parametrize("bad", ["../escape.md", "/etc/passwd.txt", "docs/../../x.md"])
async def test_bad_path_reaches_the_model_as_failure_text(client, local_backend, bad):
    fs = VirtualFS("A")
    fs.write("keep.md", "original")
    before = fs.snapshot()
    _, reply = await request(client, local_backend, fs, f'Create {bad} containing "evil"')
    assert fs.snapshot() == before
    seen = local_backend.standin.requests[-1].tool_results
    assert len(seen) == 1 and "Refused" in seen[0], seen
    assert "Refused" in reply


async def test_two_requests_of_one_user_at_once_both_land(client, local_backend):
    fs = VirtualFS("A")
    await asyncio.gather(
        request(client, local_backend, fs, 'Create one.md containing "first"'),
        request(client, local_backend, fs, 'Create two.md containing "second"'),
    )
    assert fs.snapshot() == {"one.md": "first", "two.md": "second"}


async def test_user_b_never_sees_user_a_files(client, local_backend):
    a, b = VirtualFS("A"), VirtualFS("B")
    await request(client, local_backend, a, 'Create secret.md containing "alpha-7"')
    _, listing = await request(client, local_backend, b, "List my files.")
    _, reading = await request(client, local_backend, b, "Read secret.md")
    assert b.snapshot() == {} and "secret.md" not in listing and "alpha-7" not in reading
    assert "No file named secret.md" in local_backend.standin.requests[-1].tool_results[-1]


async def test_empty_allowlist_hides_custom_tools(client, local_backend):
    """Runtime notes: available_tools=[] filters custom tools too."""
    fs = VirtualFS("A")
    await request(client, local_backend, fs, 'Create n.md containing "x"', allow=[])
    assert fs.snapshot() == {} and local_backend.standin.requests[-1].tool_names == []


@pytest.mark.parametrize("allow", [["custom:write_file"], ["write_file"]])
async def test_allowlist_names_with_or_without_prefix(client, local_backend, allow):
    fs = VirtualFS("A")
    await request(client, local_backend, fs, 'Create n.md containing "x"', allow=allow)
    assert local_backend.standin.requests[-1].tool_names == ["write_file"] and fs.snapshot() == {"n.md": "x"}


async def test_read_file_without_override_goes_to_the_built_in(client, local_backend):
    """Runtime notes: a custom read_file needs overrides_built_in_tool=True to be called."""
    fs = VirtualFS("A")
    fs.write("notes.md", "custom text")
    _, reply = await request(client, local_backend, fs, "Read notes.md", override_read=False)
    assert "custom text" not in reply
    assert "No file path provided" in local_backend.standin.requests[-1].tool_results[-1]


async def test_without_skip_permission_and_no_handler_the_call_is_denied(client, local_backend):
    fs = VirtualFS("A")
    await request(client, local_backend, fs, 'Create n.md containing "x"', skip_permission=False)
    assert fs.snapshot() == {}
    assert "Permission denied" in local_backend.standin.requests[-1].tool_results[-1]


async def test_a_raised_exception_reaches_the_model_without_its_text(client, local_backend):
    def explode(_p, _i):
        raise RuntimeError("internal detail 12345")

    tool = define_tool("write_file", description="Write", params_type=WriteArgs, handler=explode, skip_permission=True)
    session = await client.create_session(tools=[tool], available_tools=["write_file"], **local_backend.session_kwargs())
    try:
        await session.send_and_wait('Create n.md containing "x"', timeout=TIMEOUT)
    finally:
        await session.disconnect()
        await client.delete_session(session.session_id)
    seen = local_backend.standin.requests[-1].tool_results[-1]
    assert "Tool execution failed" in seen and "12345" not in seen
