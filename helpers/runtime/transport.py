"""TCP options on the SDK's connection to the runtime: TCP_NODELAY, and TCP_QUICKACK on request.

``RuntimeConnection.for_uri`` makes the SDK open a plain ``socket.create_connection`` and write
each JSON-RPC message as two sends (a header, then the body). With Nagle's algorithm on (the
default) and the peer's delayed ACK, the body can wait for the header's ACK: about 40 ms per
message in some exchanges. The runtime writes to us in more than one send as well, with Nagle on
its side, so part of each message can wait for *our* ACK, which Linux delays by up to 40 ms;
``TCP_NODELAY`` does not help there (it governs what we send). ``TCP_QUICKACK`` makes the kernel
ACK at once, but Linux clears it again, so it is re-armed after every read.

``install()`` wraps the SDK's TCP connect once per process: every client sets ``TCP_NODELAY``
right after connecting, and re-arms ``TCP_QUICKACK`` after every read once ``enable_quickack()``
was called (Linux only). ``nodelay(False)`` / ``quickack(False)`` switch an option off for the
clients started inside the block, to measure the difference on the same runtime.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Iterator
from typing import Any

from copilot import CopilotClient

QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_state = {"installed": False, "nodelay": True, "quickack": False}


class _QuickAckSocket:
    """A socket stand-in for the SDK's reader: after each read, ask for an immediate ACK."""

    def __init__(self, sock: socket.socket) -> None:
        self._real = sock

    def recv_into(self, buffer: Any, *args: Any) -> int:
        count = self._real.recv_into(buffer, *args)
        with contextlib.suppress(OSError):
            self._real.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)  # type: ignore[arg-type]
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def install() -> None:
    """Apply the options to every ``CopilotClient`` connected from now on (idempotent)."""
    if _state["installed"]:
        return
    _state["installed"] = True
    original = CopilotClient._connect_via_tcp

    @functools.wraps(original)
    async def connect(self: CopilotClient) -> None:
        await original(self)
        sock = client_socket(self)
        if _state["nodelay"] and sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _reader(self)
        if _state["quickack"] and isinstance(getattr(reader, "_sock", None), socket.socket):
            reader._sock = _QuickAckSocket(reader._sock)  # type: ignore[union-attr]

    CopilotClient._connect_via_tcp = connect  # type: ignore[method-assign]


def enable_quickack() -> None:
    """Clients connected from now on re-arm TCP_QUICKACK after every read (Linux only)."""
    install()
    _state["quickack"] = QUICKACK is not None


def client_socket(client: CopilotClient) -> socket.socket | None:
    """The TCP socket of a started client (``None`` before ``start()`` or for stdio)."""
    return getattr(getattr(client, "_process", None), "_socket", None)


def _reader(client: CopilotClient) -> Any:
    return getattr(getattr(client, "_process", None), "stdout", None)


def has_nodelay(client: CopilotClient) -> bool:
    """True when the client's socket has TCP_NODELAY set."""
    sock = client_socket(client)
    return bool(sock and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def has_quickack(client: CopilotClient) -> bool:
    """True when the client's reader re-arms TCP_QUICKACK."""
    return isinstance(getattr(_reader(client), "_sock", None), _QuickAckSocket)


@contextlib.contextmanager
def _option(name: str, enabled: bool) -> Iterator[None]:
    install()
    before = _state[name]
    _state[name] = enabled and (name != "quickack" or QUICKACK is not None)
    try:
        yield
    finally:
        _state[name] = before


def nodelay(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Clients started inside the block get TCP_NODELAY only when ``enabled``."""
    return _option("nodelay", enabled)


def quickack(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Clients started inside the block re-arm TCP_QUICKACK only when ``enabled``."""
    return _option("quickack", enabled)


def describe(client: Any) -> str:
    """One line for the notebooks: whether the client's socket has TCP_NODELAY."""
    return f"TCP_NODELAY on the client's socket: {'on' if has_nodelay(client) else 'off'}"
