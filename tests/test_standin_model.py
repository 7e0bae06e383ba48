"""Unit tests for the stand-in (prompts read, replies composed, HTTP served): both wire forms,
tools, memory from the request only, bad input."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from helpers.model.prompts import parse_file_tasks, unwrap_user_text
from helpers.model.replies import compose_reply
from helpers.model.standin import MODEL_ID, StandInModel

WRITE = {
    "type": "function",
    "function": {
        "name": "write_file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        },
    },
}
READ = {
    "type": "function",
    "function": {
        "name": "read_file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
}
LIST = {
    "type": "function",
    "function": {"name": "list_files", "parameters": {"type": "object", "properties": {}}},
}


def wrapped(text: str) -> str:
    """The user text as the runtime sends it."""
    return f"<current_datetime>2026-01-01T00:00:00Z</current_datetime>\n\n{text}"


def chat(*turns: str, tools: list | None = None, extra: list | None = None) -> dict:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for index, text in enumerate(turns):
        role = "user" if index % 2 == 0 else "assistant"
        messages.append({"role": role, "content": wrapped(text) if role == "user" else text})
    messages += extra or []
    body = {"model": MODEL_ID, "messages": messages}
    if tools is not None:
        body["tools"] = tools
    return body


@pytest.fixture
def model() -> Iterator[StandInModel]:
    with StandInModel(log_limit=5) as running:
        yield running


def post(model: StandInModel, body: object, raw: bytes | None = None) -> tuple[int, bytes]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{model.base_url}/chat/completions",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sse_events(payload: bytes) -> list:
    events = []
    for block in payload.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_models_endpoint_lists_the_stand_in(model: StandInModel) -> None:
    with urllib.request.urlopen(f"{model.base_url}/models", timeout=10) as response:
        listing = json.load(response)
    assert [m["id"] for m in listing["data"]] == [MODEL_ID]


def test_remembers_only_what_the_request_carries(model: StandInModel) -> None:
    status, body = post(
        model, chat("Remember: the codename is ORION-5.", "Noted.", "What is the codename?")
    )
    assert status == 200
    answer = json.loads(body)["choices"][0]["message"]["content"]
    assert "ORION-5" in answer
    status, body = post(model, chat("What is the codename?"))
    assert "ORION-5" not in json.loads(body)["choices"][0]["message"]["content"]


def test_answers_depend_only_on_the_request(model: StandInModel) -> None:
    request = chat("My favourite colour is blue.", "Noted.", "What is my favorite color?")
    first, second = post(model, request)[1], post(model, request)[1]
    text = [json.loads(b)["choices"][0]["message"]["content"] for b in (first, second)]
    assert text[0] == text[1] and "blue" in text[0]


def test_unknown_fact_is_said_plainly() -> None:
    reply = compose_reply(
        chat("Remember: the codename is X1.", "ok", "What is my favourite colour?")
    )
    assert reply.kind == "unknown" and "X1" not in reply.text


def test_unwraps_runtime_tags() -> None:
    assert unwrap_user_text(wrapped("hi <reminder>be nice</reminder> there")) == "hi  there"


def test_streaming_text_has_usage_and_done(model: StandInModel) -> None:
    body = chat("Remember: the codename is VEGA.", "ok", "What is the codename?")
    body.update(stream=True, stream_options={"include_usage": True})
    status, payload = post(model, body)
    events = sse_events(payload)
    assert status == 200 and events[-1] == "[DONE]"
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]
    )
    assert "VEGA" in text
    assert events[-2]["choices"] == [] and events[-2]["usage"]["total_tokens"] > 0
    assert any(e["choices"] and e["choices"][0]["finish_reason"] == "stop" for e in events[:-1])


def test_tool_call_non_streaming_uses_declared_schema(model: StandInModel) -> None:
    status, body = post(
        model, chat('Create notes.md containing "hello world"', tools=[WRITE, READ, LIST])
    )
    choice = json.loads(body)["choices"][0]
    assert status == 200 and choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "write_file"
    assert json.loads(call["function"]["arguments"]) == {
        "path": "notes.md",
        "content": "hello world",
    }


def test_tool_call_streaming_reassembles(model: StandInModel) -> None:
    body = chat('Create notes.md containing "a fairly long line of text to split"', tools=[WRITE])
    body["stream"] = True
    events = sse_events(post(model, body)[1])
    name, arguments = "", ""
    for event in events[:-1]:
        for call in event["choices"][0]["delta"].get("tool_calls", []) if event["choices"] else []:
            name += call.get("function", {}).get("name", "")
            arguments += call.get("function", {}).get("arguments", "")
    assert name == "write_file"
    assert json.loads(arguments)["content"] == "a fairly long line of text to split"
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_several_steps_then_a_report() -> None:
    request = chat(
        'Create a.txt containing "alpha", then list files and read a.txt', tools=[WRITE, READ, LIST]
    )
    steps = []
    for result in ("Wrote a.txt", "a.txt", "alpha"):
        reply = compose_reply(request)
        assert reply.kind == "tool-call"
        call = reply.tool_calls[0]
        steps.append(call["function"]["name"])
        request["messages"] += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": result},
        ]
    final = compose_reply(request)
    assert steps == ["write_file", "list_files", "read_file"]
    assert final.kind == "tool-report" and "alpha" in final.text


def test_file_task_without_tools_says_so() -> None:
    reply = compose_reply(chat("List my files."))
    assert reply.kind == "no-tool" and not reply.tool_calls


def test_file_task_parsing_keeps_quoted_text_whole() -> None:
    tasks = parse_file_tasks(
        'Create notes.md containing "Ship it. Then read the docs." and then list files'
    )
    assert [(t.kind, t.path, t.content) for t in tasks] == [
        ("write", "notes.md", "Ship it. Then read the docs."),
        ("list", "", ""),
    ]


def test_bad_paths_are_passed_through_for_the_tool_to_refuse() -> None:
    assert [t.path for t in parse_file_tasks("read ../../secret.txt")] == ["../../secret.txt"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'{"messages": []}',
        b'{"messages": "hi"}',
        b'{"messages": [{"content": "no role"}]}',
        b'{"messages": [{"role": "user", "content": 5}]}',
    ],
)
def test_bad_requests_get_400_and_the_server_stays_up(model: StandInModel, raw: bytes) -> None:
    status, body = post(model, None, raw=raw)
    assert status == 400 and "message" in json.loads(body)["error"]
    assert post(model, chat("hello"))[0] == 200


def test_unknown_route_is_404(model: StandInModel) -> None:
    request = urllib.request.Request(f"{model.base_url}/embeddings", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 404


def test_request_log_is_bounded_and_inspectable(model: StandInModel) -> None:
    for index in range(8):
        post(model, chat(f"Remember: item {index} is here."))
    records = list(model.requests)
    assert len(records) == 5 and records[-1].number == 8
    assert (
        records[-1].user_messages == ["Remember: item 7 is here."] and records[-1].tool_names == []
    )


def test_restart_on_the_same_port_keeps_the_url() -> None:
    first = StandInModel().start()
    url = first.base_url
    first.stop()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with StandInModel(port=port) as second:
        assert second.base_url == url


def test_wait_directive_delays_the_rest_of_the_answer() -> None:
    reply = compose_reply(
        {
            "messages": [
                {"role": "user", "content": "Remember: the codename is X-1."},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "Wait 2 seconds, then tell me the codename."},
            ]
        }
    )
    assert reply.delay_s == 2.0 and "X-1" in reply.text
    assert compose_reply({"messages": [{"role": "user", "content": "Wait 999 s"}]}).delay_s == 60
    assert compose_reply({"messages": [{"role": "user", "content": "Hello"}]}).delay_s == 0


def test_a_failed_tool_is_not_reported_as_done() -> None:
    def after(result: str) -> str:
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "read_file", "arguments": '{"path": "x.md"}'},
        }
        return compose_reply(
            {
                "messages": [
                    {"role": "user", "content": "Read x.md"},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_1", "content": result},
                ],
                "tools": [{"type": "function", "function": {"name": "read_file"}}],
            }
        ).text

    assert after("hello").startswith("Done.")
    refused = after("No file named x.md. Use list_files to see the files that exist.")
    assert not refused.startswith("Done") and refused.startswith("That did not work")
    assert "No file named x.md" in refused
