"""Faults: a runtime that dies mid-turn, a listener that never answers, an unwritable tmp/."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from support import client_for

from helpers import run as paths
from helpers.errors import RuntimeGone, RuntimeUnreachable, TmpNotWritable
from helpers.model.backends import Backend
from helpers.runtime import watchdog
from helpers.runtime.server import attach_server, start_server

pytestmark = pytest.mark.runtime


async def kill_during_turn(local_backend: Backend, attached: bool) -> tuple[float, Exception]:
    """Start a runtime, begin a slow turn, SIGKILL the runtime; return (seconds to error, error)."""
    server = start_server(local_backend, home=paths.TMP / "test-faults-home")
    url, token = server.url, server.token
    if attached:  # the same runtime, but seen as one we did not start
        watchdog._LOGS.pop(url, None)
        url, token = attach_server(url, token).url, token
    client = client_for(url, token)
    try:
        await client.start()
        session = await client.create_session(available_tools=[], **local_backend.session_kwargs())
        turn = asyncio.ensure_future(
            session.send_and_wait("Wait 30 seconds, then say hello.", timeout=120)
        )
        await asyncio.sleep(1.0)
        assert not turn.done(), "the slow turn should still be running"
        os.killpg(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(RuntimeGone) as caught:
            await asyncio.wait_for(turn, timeout=30)
        return time.monotonic() - killed, caught.value
    finally:
        await client.force_stop()
        server.stop()
        paths.remove_dir(paths.TMP / "test-faults-home")


async def test_killed_runtime_fails_the_turn_fast_and_names_its_log(local_backend: Backend) -> None:
    seconds, error = await kill_during_turn(local_backend, attached=False)
    print(f"started runtime killed mid-turn: error after {seconds:.2f} s")
    assert seconds < 5, f"the turn should fail within seconds, not at its timeout ({seconds:.1f} s)"
    assert "stopped" in str(error) and "tmp/logs/runtime-" in str(error)


async def test_killed_attached_runtime_fails_the_turn_fast(local_backend: Backend) -> None:
    seconds, error = await kill_during_turn(local_backend, attached=True)
    print(f"attached runtime killed mid-turn: error after {seconds:.2f} s")
    assert seconds < 5, f"the turn should fail within seconds, not at its timeout ({seconds:.1f} s)"
    assert "stopped" in str(error) and "attached by URL" in str(error)


async def test_requests_after_the_runtime_died_say_so(local_backend: Backend) -> None:
    server = start_server(local_backend, home=paths.TMP / "test-faults-home")
    client = client_for(server.url, server.token)
    try:
        await client.start()
        os.killpg(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while getattr(client, "_runtime_gone", None) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with pytest.raises(RuntimeGone, match="stopped: its connection closed"):
            await client.create_session(available_tools=[], **local_backend.session_kwargs())
    finally:
        await client.force_stop()
        server.stop()
        paths.remove_dir(paths.TMP / "test-faults-home")


def silent_listener() -> tuple[socket.socket, threading.Event]:
    """A loopback listener that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return listener, stop


async def test_silent_listener_fails_start_within_its_timeout() -> None:
    listener, stop = silent_listener()
    url = f"127.0.0.1:{listener.getsockname()[1]}"
    watchdog.install(start_timeout=2.0)
    client = client_for(attach_server(url, "some-token").url, "some-token")
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeUnreachable, match=f"at {url} within 2 s"):
            await client.start()
        seconds = time.monotonic() - started
        print(f"silent listener: start() failed after {seconds:.2f} s")
        assert seconds < 10
    finally:
        watchdog.install(start_timeout=watchdog.START_TIMEOUT_S)
        stop.set()
        listener.close()


def test_unwritable_tmp_says_what_the_folder_is_for(monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "touch", read_only)
    with pytest.raises(TmpNotWritable, match="tmp/ folder: make it writable"):
        paths.run_dir("faults")
