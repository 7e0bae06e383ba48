"""The 'Try it yourself' panel streams: the reply grows as pieces arrive, in the live widget and in
the text form of a send from a cell, and the whole answer replaces it at the end."""

from __future__ import annotations

import asyncio

from helpers.notebook.panels import SessionPanel
from helpers.notebook.widgets import Answer, ChatPanel


async def test_a_streaming_ask_shows_the_reply_growing_then_the_whole_answer() -> None:
    seen_live: list[str] = []
    release = asyncio.Event()

    async def ask(user: str, message: str, on_delta) -> Answer:
        for piece in ("The ", "codename ", "is ", "ORION-5."):
            on_delta(piece)
            seen_live.append(panel.live.value)
            await asyncio.sleep(0)
        await release.wait()
        return Answer(user, message, "The codename is ORION-5.", f"{user}-s", "here")

    panel = ChatPanel(["A", "B"], ask)
    panel._bundle_seen = []

    class Handle:  # what IPython's display handle receives on each update
        def update(self, bundle: dict, raw: bool) -> None:
            panel._bundle_seen.append(bundle["text/plain"])

    panel._handle = Handle()
    sending = asyncio.ensure_future(panel.send("A", "What is the codename?"))
    await asyncio.sleep(0.05)
    assert "writing: The codename is" in panel.live.value, "the live widget shows the reply so far"
    release.set()
    answer = await asyncio.wait_for(sending, 5)
    assert answer is not None and answer.reply == "The codename is ORION-5."
    assert "writing: The </pre>" in seen_live[0] and "ORION-5." in seen_live[-1], seen_live
    partials = [t for t in panel._bundle_seen if "writing:" in t]
    assert len(partials) == 4 and partials[0].endswith("writing: The "), partials
    assert panel.live.value == "", "the live line goes once the whole answer is shown"
    final = panel._bundle_seen[-1]
    assert "writing:" not in final and "reply: The codename is ORION-5." in final
    shown = "".join(o["text"] for o in panel.output.outputs)
    assert shown.count("ORION-5.") == 1, "the whole answer is shown once"


async def test_an_ask_without_on_delta_is_called_as_before() -> None:
    async def ask(user: str, message: str) -> Answer:
        return Answer(user, message, "hello", f"{user}-s", "here")

    panel = ChatPanel(["A"], ask)
    answer = await panel.send("A", "hi")
    assert answer is not None and answer.reply == "hello" and panel.live.value == ""


async def test_a_session_panel_streams_from_the_picked_session_and_works_without_on_delta() -> None:
    async def streaming(user: str, session_id: str, message: str, on_delta) -> Answer:
        for piece in ("from ", session_id):
            on_delta(piece)
        return Answer(user, message, f"from {session_id}", session_id, "here")

    async def whole(user: str, session_id: str, message: str) -> Answer:
        return Answer(user, message, f"from {session_id}", session_id, "here")

    panel = SessionPanel(["A"], ["s-1", "s-2"], streaming)
    answer = await panel.send_to("A", "s-2", "hi")
    assert answer is not None and answer.reply == "from s-2" and panel.pieces == ["from ", "s-2"]
    plain = SessionPanel(["A"], ["s-1", "s-2"], whole)
    answer = await plain.send_to("A", "s-1", "hi")
    assert answer is not None and answer.reply == "from s-1" and plain.pieces == []
