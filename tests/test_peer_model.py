"""The peer model: its protocol, its own way with tools and memory, the real runtime on it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from copilot.tools import define_tool
from peer_model import PEER_MODEL, PeerModel, drop_wrappers
from pydantic import BaseModel

from helpers.model.backends import choose_backend
from helpers.run import TMP, remove_dir
from helpers.runtime.server import start_server

TOOLS = [  # odd names on purpose: the peer reads the schemas, not the names
    {
        "type": "function",
        "function": {"name": "put_doc", "parameters": {"properties": {"path": {}, "content": {}}}},
    },
    {
        "type": "function",
        "function": {"name": "get_doc", "parameters": {"properties": {"path": {}}}},
    },
    {"type": "function", "function": {"name": "all_docs", "parameters": {"properties": {}}}},
]


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerModel]:
    with PeerModel() as model:
        yield model


def post(peer: PeerModel, body: object, path: str = "/chat/completions") -> tuple[int, bytes]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(peer.base_url + path, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def complete(peer: PeerModel, messages: list[dict], **extra: object) -> dict:
    status, data = post(peer, {"model": PEER_MODEL, "messages": messages, **extra})
    assert status == 200, data
    return json.loads(data)["choices"][0]


def user(text: str) -> dict:
    return {"role": "user", "content": f"<current_datetime>2026-12-01</current_datetime>\n{text}"}


def test_recall_comes_only_from_the_earlier_turns_in_the_request(peer: PeerModel) -> None:
    taught = [user("Remember: the codename is LYNX-3."), {"role": "assistant", "content": "ok"}]
    asked = complete(peer, [*taught, user("What is the codename?")])["message"]["content"]
    assert "LYNX-3" in asked
    alone = complete(peer, [user("What is the codename?")])["message"]["content"]
    assert "LYNX-3" not in alone and "nothing earlier" in alone, "no memory between requests"
    newest = [user("The city is Oslo."), user("The city is Bergen."), user("What is the city?")]
    assert "Bergen" in complete(peer, newest)["message"]["content"]


def test_tools_are_chosen_by_schema_and_asked_for_all_at_once(peer: PeerModel) -> None:
    choice = complete(peer, [user("List my files, then read notes.md")], tools=TOOLS)
    assert choice["finish_reason"] == "tool_calls"
    calls = [
        (c["function"]["name"], c["function"]["arguments"]) for c in choice["message"]["tool_calls"]
    ]
    assert calls == [("all_docs", "{}"), ("get_doc", '{"path":"notes.md"}')]
    wrote = complete(peer, [user('Create plan.md containing "ship it"')], tools=TOOLS)
    args = wrote["message"]["tool_calls"][0]["function"]["arguments"]
    assert args == '{"content":"ship it","path":"plan.md"}', "compact JSON, sorted keys"


def test_after_the_tool_results_it_answers_from_them(peer: PeerModel) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_doc", "arguments": "{}"}}
    messages = [
        user("Read notes.md"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "Ship on Friday."},
    ]
    choice = complete(peer, messages, tools=TOOLS)
    assert choice["finish_reason"] == "stop"
    assert "get_doc returned: Ship on Friday." in choice["message"]["content"]


def test_without_file_tools_it_says_so_and_calls_nothing(peer: PeerModel) -> None:
    choice = complete(peer, [user('Create notes.md containing "x"')])
    assert "tool_calls" not in choice["message"]
    assert "no file tool" in choice["message"]["content"]


def test_waiting_instructions_are_ignored(peer: PeerModel) -> None:
    started = time.monotonic()
    choice = complete(peer, [user("Wait 5 seconds, then say hello.")])
    assert time.monotonic() - started < 1.0 and choice["message"]["content"] == "Hi there."


def test_streaming_sends_each_reply_as_one_chunk_and_usage(peer: PeerModel) -> None:
    body = {
        "messages": [user('Create plan.md containing "ship it"')],
        "tools": TOOLS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, data = post(peer, body)
    assert status == 200
    events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    pieces = [
        call["function"].get("arguments", "")
        for c in chunks
        for choice in c["choices"]
        for call in choice["delta"].get("tool_calls", [])
    ]
    assert len(pieces) == 1, "the tool call's arguments arrive in one chunk"
    assert json.loads("".join(pieces)) == {"content": "ship it", "path": "plan.md"}
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    text_body = {"messages": [user("hello")], "stream": True}
    texts = [
        ch["delta"]["content"]
        for line in post(peer, text_body)[1].decode().splitlines()
        if line.startswith("data: {")
        for ch in json.loads(line[6:])["choices"]
        if ch["delta"].get("content")
    ]
    assert texts == ["Hi there."], "the whole reply in one chunk"


def test_bad_requests_get_clear_errors(peer: PeerModel) -> None:
    assert post(peer, {"messages": []})[0] == 400
    status, data = post(peer, {"messages": [{"role": "system", "content": "x"}]})
    assert status == 400 and b"no user message" in data
    assert post(peer, {"messages": [user("hi")]}, path="/v1/embeddings")[0] == 404
    with urllib.request.urlopen(peer.base_url + "/models", timeout=5) as response:
        assert json.loads(response.read())["data"][0]["id"] == PEER_MODEL


def test_runtime_wrappers_are_dropped() -> None:
    assert drop_wrappers("<a>x</a>\n<b>y\nz</b>\nHello <i>there</i>") == "Hello <i>there</i>"
    assert drop_wrappers("<open>never closed") == "<open>never closed"


class _Path(BaseModel):
    path: str


@pytest.mark.runtime
@pytest.mark.parametrize("streaming", [False, True])
async def test_the_real_runtime_on_the_peer_remembers_and_calls_tools(
    peer: PeerModel, streaming: bool
) -> None:
    backend = choose_backend("byok", env=peer.env())
    home = remove_dir(TMP / f"test-peer-home-{int(streaming)}")
    server = start_server(backend, home=home)
    read: list[str] = []

    def get_doc(params: _Path, invocation: object) -> str:
        read.append(params.path)
        return "Ship on Friday."

    tool = define_tool(
        "get_doc",
        description="Read a document",
        handler=get_doc,
        params_type=_Path,
        skip_permission=True,
    )
    try:
        async with server.connect() as client:
            session = await client.create_session(
                tools=[tool],
                available_tools=["custom:get_doc"],
                streaming=streaming,
                **backend.session_kwargs(),
            )
            await session.send_and_wait("Remember: the codename is LYNX-3.", timeout=60)
            recalled = await session.send_and_wait("What is the codename?", timeout=60)
            assert "LYNX-3" in recalled.data.content
            answered = await session.send_and_wait("Read plan.md", timeout=60)
            assert read == ["plan.md"] and "Ship on Friday." in answered.data.content
            await session.disconnect()
            await client.delete_session(session.session_id)
    finally:
        server.stop()
        remove_dir(home)
