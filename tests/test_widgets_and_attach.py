"""The 'Try it yourself' panel's click path, and attaching to a running runtime by URL."""

from __future__ import annotations

import asyncio

import pytest

from helpers.notebook.widgets import Answer, ChatPanel
from helpers.runtime.server import attach_server


async def echo(user: str, message: str) -> Answer:
    await asyncio.sleep(0.01)
    return Answer(user, message, f"echo {message}\n  indented", f"{user}-session", "tmp/x")


async def test_click_schedules_a_request_and_shows_the_answer_once() -> None:
    panel = ChatPanel(["A", "B"], echo)
    panel.user.value = "B"
    panel.message.value = "hello"
    panel.button.click()
    assert panel.button.disabled and panel.pending is not None
    answer = await asyncio.wait_for(asyncio.wrap_future(panel.pending), timeout=5)
    await asyncio.sleep(0)
    assert answer is not None and answer.session_id == "B-session" and not panel.button.disabled
    shown = "".join(o["text"] for o in panel.output.outputs)
    assert shown.count("echo hello") == 1, "each result is shown once"
    assert "echo hello\n      indented" in shown, "continuation lines keep their indentation"


async def test_a_click_on_another_threads_loop_runs_on_the_panels_loop() -> None:
    """JupyterLab delivers clicks on a kernel subshell thread with its own event loop."""
    owner = asyncio.get_running_loop()
    seen_loops: list[asyncio.AbstractEventLoop] = []

    async def ask(user: str, message: str) -> Answer:
        seen_loops.append(asyncio.get_running_loop())
        return await echo(user, message)

    panel = ChatPanel(["A", "B"], ask)

    def click_from_subshell(message: str, user: str) -> None:
        async def click() -> None:
            panel.user.value = user
            panel.message.value = message
            panel.button.click()

        asyncio.run(click())  # a different thread, a different loop

    for number, user in enumerate(["A", "B", "A"]):
        await asyncio.to_thread(click_from_subshell, f"message {number}", user)
        await asyncio.wait_for(asyncio.wrap_future(panel.pending), timeout=5)
        await asyncio.sleep(0.01)
    assert seen_loops == [owner, owner, owner], "every click's request ran on the panel's loop"
    assert [line.split(" asked: ")[1].splitlines()[0] for line in panel.transcript] == [
        "message 0",
        "message 1",
        "message 2",
    ], "results in order, newest last"
    assert panel.user.value == "A", "the picker shows the user of the last request"


async def test_a_failing_request_is_shown_not_raised() -> None:
    async def ask(user: str, message: str) -> Answer:
        raise TimeoutError("no reply in time")

    panel = ChatPanel(["A"], ask)
    assert await panel.send("A", "hi") is None
    assert panel.transcript == ["User A: the request failed: TimeoutError: no reply in time"]


@pytest.mark.runtime
async def test_attach_by_url_with_the_token_from_the_environment(
    server, monkeypatch, session_kwargs
) -> None:
    monkeypatch.setenv("COPILOT_CONNECTION_TOKEN", server.token)
    attached = attach_server(server.url)
    assert not attached.owned and attached.token == server.token
    async with attached.connect() as client:
        session = await client.create_session(**session_kwargs)
        reply = await session.send_and_wait("Hello there.", timeout=60)
        await session.disconnect()
        await client.delete_session(session.session_id)
    assert reply is not None and reply.data.content
    attached.stop()  # not ours: a no-op
    assert server.running
