"""TCP_NODELAY and TCP_QUICKACK on the SDK's client socket: opt-in, one switch, SDK-proof.

These run against the real runtime. If an SDK upgrade renames the method we wrap, stops calling
it, or changes where the socket and its reader live, a check here fails instead of every notebook
silently getting slower.
"""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys

import pytest
from copilot import CopilotClient
from support import REPO_ROOT

from helpers.runtime import transport

pytestmark = pytest.mark.runtime
LINUX_QUICKACK = pytest.mark.skipif(transport.QUICKACK is None, reason="TCP_QUICKACK is Linux-only")


def quickack_flag(client: CopilotClient) -> int:
    sock = transport.client_socket(client)
    assert sock is not None
    return sock.getsockopt(socket.IPPROTO_TCP, transport.QUICKACK)  # type: ignore[arg-type]


AS_SHIPPED = """
import asyncio, socket
from helpers.model.backends import choose_backend
from helpers.runtime import transport
from helpers.runtime.server import start_server

async def main():
    with choose_backend("local", env={}) as backend, start_server(backend) as server:
        async with server.connect() as client:
            sock = transport.client_socket(client)
            nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            print("installed", transport.installed(), "nodelay", bool(nodelay))

asyncio.run(asyncio.wait_for(main(), 60))
"""


def test_starting_a_runtime_leaves_the_sdk_as_shipped() -> None:
    """Notebooks 01-02 teach the SDK as a learner installs it: only install() patches it."""
    done = subprocess.run(
        [sys.executable, "-c", AS_SHIPPED],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["installed", "False", "nodelay", "False"], done.stdout


def test_the_sdk_still_connects_through_the_method_we_wrap(server) -> None:
    assert transport.installed(), "conftest.py's transport.install() should have wrapped it"
    calls_it = inspect.getsource(CopilotClient._connect_to_server)
    assert "self._connect_via_tcp()" in calls_it, "the SDK no longer connects via _connect_via_tcp"


async def test_both_options_are_on_by_default(server) -> None:
    async with CopilotClient(mode="empty", connection=server.connection()) as client:
        sock = transport.client_socket(client)
        assert isinstance(sock, socket.socket), "the SDK moved its socket (client._process._socket)"
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "TCP_NODELAY is off"
        assert transport.is_buffered(client), "the client should read in chunks, write once"
        raw = client._process.stdout.raw  # type: ignore[union-attr]
        assert isinstance(raw, socket.SocketIO), "the SDK's reader is no SocketIO any more"
        if transport.QUICKACK is not None:
            assert transport.has_quickack(client), "the reader does not re-arm TCP_QUICKACK"
            before = transport.rearms(client)
            for _ in range(5):
                assert await client.ping() is not None, "reads still work through the wrapper"
            assert transport.rearms(client) > before, "the SDK's reads bypass our wrapper"
            assert quickack_flag(client) == 1, "the kernel should be in quick-ACK mode after a read"
        assert transport.describe(client) == (
            "TCP_NODELAY on, TCP_QUICKACK re-armed after each read "
            + ("on" if transport.QUICKACK is not None else "off")
        )


async def test_one_switch_turns_both_off_and_only_inside_the_block(server) -> None:
    with transport.tuning(False):
        async with CopilotClient(mode="empty", connection=server.connection()) as client:
            assert not transport.has_nodelay(client), "tuning(False) should leave Nagle on"
            assert not transport.has_quickack(client), "tuning(False) should leave ACKs delayed"
            assert not transport.is_buffered(client), "tuning(False) leaves the SDK's reader"
            assert await client.ping() is not None
    async with CopilotClient(mode="empty", connection=server.connection()) as client:
        assert transport.has_nodelay(client), "the switch should apply only inside the block"
        assert transport.has_quickack(client) == (transport.QUICKACK is not None)


async def test_the_process_wide_switch(server) -> None:
    transport.set_tuning(False)
    try:
        async with CopilotClient(mode="empty", connection=server.connection()) as client:
            assert not transport.has_nodelay(client) and not transport.has_quickack(client)
    finally:
        transport.set_tuning(True)
    async with CopilotClient(mode="empty", connection=server.connection()) as client:
        assert transport.has_nodelay(client)


@LINUX_QUICKACK
async def test_each_option_switches_alone(server) -> None:
    with transport.quickack(False):
        async with CopilotClient(mode="empty", connection=server.connection()) as client:
            assert transport.has_nodelay(client) and not transport.has_quickack(client)
    with transport.nodelay(False):
        async with CopilotClient(mode="empty", connection=server.connection()) as client:
            assert not transport.has_nodelay(client) and transport.has_quickack(client)
    with transport.buffered(False):
        async with CopilotClient(mode="empty", connection=server.connection()) as client:
            assert not transport.is_buffered(client) and transport.has_quickack(client)
            assert await client.ping() is not None


def test_no_socket_before_start(server) -> None:
    client = CopilotClient(mode="empty", connection=server.connection())
    assert transport.client_socket(client) is None
    assert not transport.has_nodelay(client)
    assert transport.rearms(client) == 0
