"""TCP_NODELAY on the SDK's client socket: on by default for clients of our runtimes, switchable."""

from __future__ import annotations

import pytest
from copilot import CopilotClient

from helpers.runtime import transport

pytestmark = pytest.mark.runtime


async def test_clients_get_nodelay_and_it_can_be_switched_off(server) -> None:
    async with CopilotClient(mode="empty", connection=server.connection()) as client:
        assert transport.has_nodelay(client), "clients of our runtime should set TCP_NODELAY"
        assert transport.describe(client).endswith(": on")
    with transport.nodelay(False):
        async with CopilotClient(mode="empty", connection=server.connection()) as client:
            assert not transport.has_nodelay(client), "nodelay(False) should leave Nagle on"
    async with CopilotClient(mode="empty", connection=server.connection()) as client:
        assert transport.has_nodelay(client), "the switch should apply only inside the block"


def test_no_socket_before_start(server) -> None:
    client = CopilotClient(mode="empty", connection=server.connection())
    assert transport.client_socket(client) is None
    assert not transport.has_nodelay(client)


async def test_quickack_is_off_unless_asked_for(server) -> None:
    async with CopilotClient(mode="empty", connection=server.connection()) as client:
        assert not transport.has_quickack(client), "TCP_QUICKACK is opt-in"
    with transport.quickack(True):
        async with CopilotClient(mode="empty", connection=server.connection()) as client:
            assert transport.has_quickack(client) == (transport.QUICKACK is not None)
            assert transport.has_nodelay(client), "the options are independent"
            assert await client.ping() is not None, "reads still work through the wrapper"
