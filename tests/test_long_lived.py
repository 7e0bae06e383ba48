"""Long-lived sessions on the real runtime: create, resume elsewhere, isolation, restarts."""

from __future__ import annotations

import pytest
from support import TIMEOUT, client_for

from helpers.model.backends import choose_backend
from helpers.model.standin import StandInModel
from helpers.notebook.display import file_contains
from helpers.run import TMP, remove_dir
from helpers.runtime.server import start_server

pytestmark = pytest.mark.runtime


@pytest.fixture
def user_dirs():
    dirs = {name: remove_dir(TMP / f"test-{name}") for name in ("a", "b")}
    yield dirs
    for folder in dirs.values():
        remove_dir(folder)


async def teach(server, folder, session_id, text, kwargs) -> str:
    async with server.connect() as client:
        session = await client.create_session(
            session_id=session_id, config_directory=str(folder), **kwargs
        )
        reply = await session.send_and_wait(text, timeout=TIMEOUT)
        await session.disconnect()
    return reply.data.content


async def ask(server, folder, session_id, text, kwargs) -> str:
    async with server.connect() as client:
        session = await client.resume_session(session_id, config_directory=str(folder), **kwargs)
        reply = await session.send_and_wait(text, timeout=TIMEOUT)
        await session.disconnect()
    return reply.data.content


async def test_second_client_resumes_and_model_received_history(
    server, local_backend, session_kwargs, user_dirs
):
    await teach(server, user_dirs["a"], "proj", "Remember: the codename is LYNX-3.", session_kwargs)
    events = user_dirs["a"] / "session-state" / "proj" / "events.jsonl"
    assert events.is_file() and "LYNX-3" in events.read_text()
    answer = await ask(server, user_dirs["a"], "proj", "What is the codename?", session_kwargs)
    assert "LYNX-3" in answer
    sent = local_backend.standin.requests[-1].user_messages
    assert sent == ["Remember: the codename is LYNX-3.", "What is the codename?"]


async def test_users_are_isolated(server, local_backend, session_kwargs, user_dirs):
    await teach(server, user_dirs["a"], "proj", "Remember: the codename is OWL-8.", session_kwargs)
    answer = await teach(server, user_dirs["b"], "solo", "What is the codename?", session_kwargs)
    assert "OWL-8" not in answer
    assert local_backend.standin.requests[-1].user_messages == ["What is the codename?"]
    assert file_contains(user_dirs["b"], "OWL-8") == []


async def test_resume_needs_the_same_config_directory(server, session_kwargs, user_dirs):
    await teach(server, user_dirs["a"], "proj", "Remember: the codename is ELK-1.", session_kwargs)
    async with server.connect() as client:
        with pytest.raises(Exception, match="Session not found"):
            await client.resume_session("proj", **session_kwargs)
        with pytest.raises(Exception, match="Session not found"):
            await client.resume_session(
                "proj", config_directory=str(user_dirs["b"]), **session_kwargs
            )


async def test_mode_empty_requires_available_tools(server, local_backend, user_dirs):
    async with server.connect() as client:
        with pytest.raises(ValueError):
            await client.create_session(
                config_directory=str(user_dirs["a"]), **local_backend.session_kwargs()
            )


async def test_state_survives_a_runtime_restart(local_backend, session_kwargs, user_dirs):
    server = start_server(local_backend)
    try:
        await teach(
            server, user_dirs["a"], "proj", "Remember: the codename is FOX-2.", session_kwargs
        )
        old_pid = server.pid
        server.restart()
        assert server.pid != old_pid
        assert "FOX-2" in await ask(
            server, user_dirs["a"], "proj", "What is the codename?", session_kwargs
        )
    finally:
        server.stop()


async def test_fresh_stand_in_between_turns_still_recalls(user_dirs):
    """The model keeps no memory: a brand-new model process answers from the session's history."""
    first = choose_backend("local", env={})
    server = start_server(first)
    try:
        kwargs = dict(available_tools=[], **first.session_kwargs())
        await teach(server, user_dirs["a"], "proj", "Remember: the codename is BEAR-4.", kwargs)
        first.close()
        with StandInModel() as second:
            kwargs["provider"] = {"type": "openai", "base_url": second.base_url}
            assert "BEAR-4" in await ask(
                server, user_dirs["a"], "proj", "What is the codename?", kwargs
            )
            assert len(second.requests) == 1 and len(second.requests[0].user_messages) == 2
    finally:
        server.stop()
        first.close()


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_connection_token_is_enforced(server, token):
    client = client_for(server.url, token)
    with pytest.raises(Exception, match="AUTHENTICATION_FAILED"):
        await client.start()
    await client.force_stop()


async def test_delete_session_in_the_runtime_home_removes_it(server, local_backend):
    kwargs = dict(available_tools=[], **local_backend.session_kwargs())
    async with server.connect() as client:
        session = await client.create_session(session_id="home-session", **kwargs)
        await session.send_and_wait("Remember: the codename is EMU-6.", timeout=TIMEOUT)
        await session.disconnect()
        state = server.home / "session-state" / "home-session"
        assert state.is_dir()
        await client.delete_session("home-session")
        assert not state.exists()
        with pytest.raises(Exception, match="Session not found"):
            await client.resume_session("home-session", **kwargs)


async def test_delete_session_does_not_reach_a_config_directory(server, session_kwargs, user_dirs):
    """Runtime notes: sessions in a per-user config_directory are outside the server's view."""
    await teach(server, user_dirs["a"], "proj", "Remember: the codename is RAM-7.", session_kwargs)
    async with server.connect() as client:
        assert await client.get_session_metadata("proj") is None
        with pytest.raises(Exception, match="Session file not found"):
            await client.delete_session("proj")
    assert (user_dirs["a"] / "session-state" / "proj" / "events.jsonl").is_file()


def test_the_shared_runtime_says_how_it_was_started_and_hides_its_token(capsys) -> None:
    """Notebook 01's section 1: the command, the address and the log, the token as ***."""
    from helpers.runtime.startup import shared_server

    with choose_backend("local", env={}) as backend:
        server = shared_server(backend, home=remove_dir(TMP / "test-shared-server"))
        try:
            said = capsys.readouterr().out
        finally:
            server.stop()
            remove_dir(TMP / "test-shared-server")
    assert "--headless --port 0 --no-auto-update" in said
    assert f"listening on {server.url}" in said and "COPILOT_CONNECTION_TOKEN=***" in said
    assert server.token and server.token not in said, "the token never reaches the output"
    assert "a turn fails at once when its runtime dies" in said, "the SDK change is named"
    assert len(said.strip().splitlines()) <= 5, said
