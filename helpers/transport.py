"""TCP_NODELAY on the SDK's connection to the runtime.

``RuntimeConnection.for_uri`` makes the SDK open a plain ``socket.create_connection`` and write
each JSON-RPC message as two sends (a header, then the body). With Nagle's algorithm on (the
default) and the peer's delayed ACK, the body can wait for the header's ACK: about 40 ms per
message in some exchanges. ``install()`` wraps the SDK's TCP connect so that every client of this
process sets ``TCP_NODELAY`` on its socket right after connecting; ``nodelay(False)`` switches it
off for the clients started inside the block, to measure the difference on the same runtime.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Iterator
from typing import Any

from copilot import CopilotClient

_state = {"installed": False, "nodelay": True}


def install() -> None:
    """Set TCP_NODELAY on every ``CopilotClient`` this process connects from now on (idempotent)."""
    if _state["installed"]:
        return
    _state["installed"] = True
    original = CopilotClient._connect_via_tcp

    @functools.wraps(original)
    async def connect(self: CopilotClient) -> None:
        await original(self)
        if _state["nodelay"]:
            sock = client_socket(self)
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    CopilotClient._connect_via_tcp = connect  # type: ignore[method-assign]


def client_socket(client: CopilotClient) -> socket.socket | None:
    """The TCP socket of a started client (``None`` before ``start()`` or for stdio)."""
    return getattr(getattr(client, "_process", None), "_socket", None)


def has_nodelay(client: CopilotClient) -> bool:
    """True when the client's socket has TCP_NODELAY set."""
    sock = client_socket(client)
    return bool(sock and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@contextlib.contextmanager
def nodelay(enabled: bool) -> Iterator[None]:
    """Clients started inside the block get TCP_NODELAY only when ``enabled``."""
    install()
    before = _state["nodelay"]
    _state["nodelay"] = enabled
    try:
        yield
    finally:
        _state["nodelay"] = before


def describe(client: Any) -> str:
    """One line for the notebooks: whether the client's socket has TCP_NODELAY."""
    return f"TCP_NODELAY on the client's socket: {'on' if has_nodelay(client) else 'off'}"
