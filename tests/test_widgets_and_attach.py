"""The 'Try it yourself' panel's click path, and attaching to a running runtime by URL."""

from __future__ import annotations

import asyncio

import pytest
from copilot import CopilotClient

from helpers.runtime import attach_server
from helpers.widgets import Answer, ChatPanel


async def test_click_schedules_a_request_and_shows_the_answer() -> None:
    async def ask(user: str, message: str) -> Answer:
        await asyncio.sleep(0)
        return Answer(user, message, f"echo {message}", f"{user}-session", f"tmp/user-{user.lower()}")

    panel = ChatPanel(["A", "B"], ask)
    panel.user.value = "B"
    panel.message.value = "hello"
    panel.button.click()
    assert panel.button.disabled and panel.pending is not None
    answer = await asyncio.wait_for(panel.pending, timeout=5)
    await asyncio.sleep(0)
    assert answer is not None and answer.session_id == "B-session" and not panel.button.disabled
    assert "echo hello" in "".join(o["text"] for o in panel.output.outputs)


async def test_a_failing_request_is_shown_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    async def ask(user: str, message: str) -> Answer:
        raise TimeoutError("no reply in time")

    assert await ChatPanel(["A"], ask).send("A", "hi") is None
    assert "the request failed: TimeoutError: no reply in time" in capsys.readouterr().out


@pytest.mark.runtime
async def test_attach_by_url_with_the_token_from_the_environment(server, monkeypatch, session_kwargs) -> None:
    monkeypatch.setenv("COPILOT_CONNECTION_TOKEN", server.token)
    attached = attach_server(server.url)
    assert not attached.owned and attached.token == server.token
    async with CopilotClient(mode="empty", connection=attached.connection()) as client:
        session = await client.create_session(**session_kwargs)
        reply = await session.send_and_wait("Hello there.", timeout=60)
        await session.disconnect()
        await client.delete_session(session.session_id)
    assert reply is not None and reply.data.content
    attached.stop()  # not ours: a no-op
    assert server.running
