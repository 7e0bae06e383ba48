"""Short-lived sessions with custom tools on the real runtime (and the runtime notes on tools)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets

import pytest
from copilot.tools import define_tool
from support import TIMEOUT

from helpers.notebook.display import log_mark
from helpers.tools.file_tools import (
    ALLOWLIST,
    WriteFileParams,
    approve_only_file_tools,
    file_tools,
)
from helpers.tools.vfs import VirtualFS

pytestmark = pytest.mark.runtime


def without_read_override(fs: VirtualFS) -> list:
    """The taught tools, but read_file not marked as overriding the built-in of that name."""
    tools = file_tools(fs)
    return [
        dataclasses.replace(t, overrides_built_in_tool=False) if t.name == "read_file" else t
        for t in tools
    ]


async def request(
    client, backend, fs: VirtualFS, prompt: str, allow=ALLOWLIST, tools=None, **options
) -> tuple[str, str, list]:
    """One short-lived request; returns its session id, reply and the model requests it made."""
    mark = log_mark(backend.standin)
    session = await client.create_session(
        tools=file_tools(fs) if tools is None else tools,
        available_tools=allow,
        **options,
        **backend.session_kwargs(),
    )
    try:
        reply = await session.send_and_wait(prompt, timeout=TIMEOUT)
    finally:
        await session.disconnect()
        await client.delete_session(session.session_id)
    mine = [r for r in backend.standin.requests if r.number > mark]
    return session.session_id, reply.data.content, mine


async def test_note_written_then_read_by_a_new_session(client, local_backend, server):
    fs = VirtualFS("A")
    first, _, _ = await request(
        client, local_backend, fs, 'Create notes.md containing "ship on Friday"'
    )
    assert fs.snapshot() == {"notes.md": "ship on Friday"}
    second, reply, calls = await request(
        client, local_backend, fs, "List my files, then read notes.md"
    )
    assert first != second and "ship on Friday" in reply
    assert len(calls) == 3, "list, read, answer: one turn, three model calls"
    assert all(len(r.user_messages) == 1 for r in calls)
    for session_id in (first, second):
        assert not (server.home / "session-state" / session_id).exists()


@pytest.mark.parametrize("bad", ["../escape.md", "/etc/passwd.txt", "docs/../../x.md"])
async def test_bad_path_reaches_the_model_as_failure_text(client, local_backend, bad):
    fs = VirtualFS("A")
    fs.write("keep.md", "original")
    before = fs.snapshot()
    _, reply, calls = await request(client, local_backend, fs, f'Create {bad} containing "evil"')
    assert fs.snapshot() == before
    seen = calls[-1].tool_results
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
    _, listing, _ = await request(client, local_backend, b, "List my files.")
    _, reading, calls = await request(client, local_backend, b, "Read secret.md")
    assert b.snapshot() == {} and "secret.md" not in listing and "alpha-7" not in reading
    assert "No file named secret.md" in calls[-1].tool_results[-1]


async def test_empty_allowlist_hides_custom_tools(client, local_backend):
    """Runtime notes: available_tools=[] filters custom tools too."""
    fs = VirtualFS("A")
    _, _, calls = await request(client, local_backend, fs, 'Create n.md containing "x"', allow=[])
    assert fs.snapshot() == {} and calls[-1].tool_names == []


@pytest.mark.parametrize("allow", [["custom:write_file"], ["write_file"]])
async def test_allowlist_names_with_or_without_prefix(client, local_backend, allow):
    fs = VirtualFS("A")
    _, _, calls = await request(
        client, local_backend, fs, 'Create n.md containing "x"', allow=allow
    )
    assert calls[0].tool_names == ["write_file"] and fs.snapshot() == {"n.md": "x"}


async def test_read_file_without_override_goes_to_the_built_in(client, local_backend):
    """Runtime notes: a custom read_file needs overrides_built_in_tool=True to be called."""
    fs = VirtualFS("A")
    fs.write("notes.md", "custom text")
    _, reply, calls = await request(
        client, local_backend, fs, "Read notes.md", tools=without_read_override(fs)
    )
    assert "custom text" not in reply
    assert "No file path provided" in calls[-1].tool_results[-1]


async def test_without_skip_permission_and_no_handler_the_call_is_denied(client, local_backend):
    fs = VirtualFS("A")
    tools = file_tools(fs, skip_permission=False)
    _, _, calls = await request(
        client, local_backend, fs, 'Create n.md containing "x"', tools=tools
    )
    assert fs.snapshot() == {}
    assert "Permission denied" in calls[-1].tool_results[-1]


async def test_the_permission_handler_approves_our_tools_and_is_called(client, local_backend):
    fs = VirtualFS("A")
    asked: list[str] = []

    def handler(request, invocation):
        asked.append(getattr(request, "tool_name", "?"))
        return approve_only_file_tools(request, invocation)

    tools = file_tools(fs, skip_permission=False)
    prompt = 'Create n.md containing "x"'
    await request(client, local_backend, fs, prompt, tools=tools, on_permission_request=handler)
    assert asked == ["write_file"] and fs.snapshot() == {"n.md": "x"}


async def test_the_permission_handler_refuses_other_tools(client, local_backend):
    fs = VirtualFS("A")
    rogue = define_tool(
        "save_note",
        description="Save a note",
        params_type=WriteFileParams,
        handler=lambda p, _i: fs.write(p.path, p.content),
    )
    _, _, calls = await request(
        client,
        local_backend,
        fs,
        'Create n.md containing "x"',
        allow=["custom:save_note"],
        tools=[rogue],
        on_permission_request=approve_only_file_tools,
    )
    assert fs.snapshot() == {}, "a tool that is not ours must not run"
    assert (
        calls[0].tool_names == ["save_note"]
        and "not allowed in this application" in calls[-1].tool_results[-1]
    )


async def test_a_raised_exception_reaches_the_model_without_its_text(client, local_backend):
    def explode(_p, _i):
        raise RuntimeError("internal detail 12345")

    tool = define_tool(
        "write_file",
        description="Write",
        params_type=WriteFileParams,
        handler=explode,
        skip_permission=True,
    )
    _, _, calls = await request(
        client, local_backend, VirtualFS("A"), 'Create n.md containing "x"', tools=[tool]
    )
    seen = calls[-1].tool_results[-1]
    assert "Tool execution failed" in seen and "12345" not in seen


async def test_removing_the_lock_file_after_delete_is_safe(client, local_backend, server):
    """Notebook 02 removes ``.session-operation-locks/<id>.lock`` after each delete: the runtime
    leaves it behind, and an id whose lock file was removed can be created again, while other
    requests run at the same time."""
    locks = server.home / "session-state" / ".session-operation-locks"
    session_id = f"lock-probe-{secrets.token_hex(4)}"
    fs = VirtualFS("A")

    async def once(prompt: str) -> str:
        session = await client.create_session(
            session_id=session_id,
            tools=file_tools(fs),
            available_tools=ALLOWLIST,
            **local_backend.session_kwargs(),
        )
        try:
            reply = await session.send_and_wait(prompt, timeout=TIMEOUT)
        finally:
            await session.disconnect()
            await client.delete_session(session_id)
        return reply.data.content

    await once('Create one.md containing "first"')
    lock = locks / f"{session_id}.lock"
    assert lock.exists(), "the runtime leaves the lock file behind after delete"
    lock.unlink()
    others = [
        request(client, local_backend, VirtualFS("B"), f'Create b{n}.md containing "x"')
        for n in range(3)
    ]
    reply, *_ = await asyncio.gather(once("List my files, then read one.md"), *others)
    assert "first" in reply, "the same id works again after its lock file was removed"
    assert not (server.home / "session-state" / session_id).exists()
    lock.unlink(missing_ok=True)
    assert not lock.exists()
