"""Ownership: the registry refuses another user's or an unknown id before the runtime is asked."""

from __future__ import annotations

import pytest
from copilot._jsonrpc import JsonRpcError
from support import TIMEOUT

from helpers.errors import NoTokenForUser
from helpers.serving.credentials import UserTokens
from helpers.serving.registry import (
    NotYourSession,
    SessionRegistry,
    owned_delete,
    owned_open,
    owned_resume,
)


@pytest.fixture
def registry(tmp_path):
    reg = SessionRegistry(tmp_path / "registry.sqlite")
    yield reg
    reg.close()


def test_ids_are_made_by_the_application_and_unguessable(registry):
    ids = {registry.new_id("A") for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("user-a-") and len(i) == 23 for i in ids)
    assert set(registry.sessions_of("A")) == ids and registry.sessions_of("B") == []
    with pytest.raises(ValueError, match="letters or digits"):
        registry.new_id("../etc")


def test_check_owner_says_the_same_for_unknown_and_foreign_ids(registry):
    a_id = registry.new_id("A")
    registry.check_owner("A", a_id)
    messages = []
    for user, session_id in (("B", a_id), ("B", "user-b-0000000000000000"), ("A", "")):
        with pytest.raises(NotYourSession) as refused:
            registry.check_owner(user, session_id)
        messages.append(str(refused.value).replace(repr(session_id), "<id>"))
    assert messages[0] == messages[1], "a refusal must not reveal that the id exists"
    assert registry.owner(a_id) == "A"


def test_registry_survives_a_reopen(tmp_path):
    first = SessionRegistry(tmp_path / "r.sqlite")
    a_id = first.new_id("A")
    first.close()
    again = SessionRegistry(tmp_path / "r.sqlite")
    assert again.owner(a_id) == "A"
    again.close()


@pytest.mark.runtime
async def test_refused_resume_and_delete_change_nothing(server, session_kwargs, registry):
    async with (
        server.connect() as client_a,
        server.connect() as client_b,
    ):
        a_id = registry.new_id("A")
        session = await client_a.create_session(session_id=a_id, **session_kwargs)
        await session.send_and_wait("Remember: the codename is TEST-9.", timeout=TIMEOUT)
        await session.disconnect()
        events = server.home / "session-state" / a_id / "events.jsonl"
        before_bytes = events.read_bytes()
        before = await client_a.get_session_metadata(a_id)
        for attempt in (
            owned_resume(registry, client_b, "B", a_id, **session_kwargs),
            owned_delete(registry, client_b, "B", a_id),
            owned_resume(registry, client_b, "B", "user-a-ffffffffffffffff", **session_kwargs),
            owned_delete(registry, client_b, "B", "user-a-ffffffffffffffff"),
        ):
            with pytest.raises(NotYourSession):
                await attempt
        after = await client_a.get_session_metadata(a_id)
        assert after is not None and after.modified_time == before.modified_time
        assert events.read_bytes() == before_bytes, "nothing was read into or written to it"
        assert registry.owner(a_id) == "A"

        resumed = await owned_resume(registry, client_a, "A", a_id, **session_kwargs)
        reply = await resumed.send_and_wait("What is the codename?", timeout=TIMEOUT)
        await resumed.disconnect()
        assert "TEST-9" in reply.data.content
        await owned_delete(registry, client_a, "A", a_id)
        assert registry.owner(a_id) is None
        assert await client_a.get_session_metadata(a_id) is None


def test_user_tokens_hand_each_user_their_own_token():
    tokens = UserTokens({"A": "secret-a", "B": "secret-b", "C": ""})
    assert tokens.session_kwargs("A") == {"github_token": "secret-a"}
    assert tokens.session_kwargs("B") == {"github_token": "secret-b"}
    assert "secret" not in repr(tokens)
    for user in ("C", "D"):
        with pytest.raises(NoTokenForUser) as missing:
            tokens.session_kwargs(user)
        assert "secret" not in str(missing.value)


@pytest.mark.runtime
async def test_the_sdk_sends_the_users_token_on_create(server, local_backend):
    """What reaches the runtime: the user's token in session.create (offline it is refused)."""
    tokens = UserTokens({"A": "token-of-a", "B": "token-of-b"})
    async with server.connect() as client:
        sent: list[tuple[str, dict]] = []
        request = client._client.request

        async def observe(method, params=None, *args, **kwargs):
            sent.append((method, dict(params or {})))
            return await request(method, params, *args, **kwargs)

        client._client.request = observe
        with pytest.raises(JsonRpcError, match="gitHubToken and provider"):
            await client.create_session(
                available_tools=[], **tokens.session_kwargs("B"), **local_backend.session_kwargs()
            )
    created = [params for method, params in sent if method == "session.create"]
    assert len(created) == 1 and created[0]["gitHubToken"] == "token-of-b"


@pytest.mark.runtime
async def test_owned_open_creates_an_owned_id_once_then_resumes_it(
    server, session_kwargs, registry
):
    async with server.connect() as client:
        b_id = registry.new_id("B")
        with pytest.raises(NotYourSession):
            await owned_open(registry, client, "A", b_id, **session_kwargs)
        assert b_id not in {m.session_id for m in await client.list_sessions()}, (
            "a refused open must not create the session"
        )
        first = await owned_open(registry, client, "B", b_id, **session_kwargs)
        await first.send_and_wait("Remember: the colour is TEAL-42.", timeout=TIMEOUT)
        await first.disconnect()
        again = await owned_open(registry, client, "B", b_id, **session_kwargs)
        reply = await again.send_and_wait("What is the colour?", timeout=TIMEOUT)
        await again.disconnect()
        assert again.session_id == b_id and "TEAL-42" in reply.data.content
        await owned_delete(registry, client, "B", b_id)
