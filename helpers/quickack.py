"""Prompt ACKs on the SDK's connection, so the runtime's requests to us are not held back.

With ``session_fs`` the runtime sends requests *to the client* (``sessionFs.readFile`` …). It
writes each message in more than one send and keeps Nagle's algorithm on its side, so the rest of
a message can wait for our ACK of the first part, and Linux delays that ACK by up to about 40 ms.
``TCP_NODELAY`` on our socket (``helpers.transport``) does not help here: it governs what we send.
``TCP_QUICKACK`` makes the kernel ACK at once, but Linux clears it again, so it is set after every
read. Linux only; elsewhere ``install()`` does nothing.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Iterator
from typing import Any

from copilot import CopilotClient

_state = {"installed": False, "enabled": True}
QUICKACK = getattr(socket, "TCP_QUICKACK", None)


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
    """Re-arm TCP_QUICKACK after every read on each client connected from now on (idempotent)."""
    if _state["installed"] or QUICKACK is None:
        return
    _state["installed"] = True
    original = CopilotClient._connect_via_tcp

    @functools.wraps(original)
    async def connect(self: CopilotClient) -> None:
        await original(self)
        reader = getattr(getattr(self, "_process", None), "stdout", None)
        if _state["enabled"] and isinstance(getattr(reader, "_sock", None), socket.socket):
            reader._sock = _QuickAckSocket(reader._sock)  # type: ignore[union-attr]

    CopilotClient._connect_via_tcp = connect  # type: ignore[method-assign]


def has_quickack(client: CopilotClient) -> bool:
    """True when the client's reader re-arms TCP_QUICKACK."""
    reader = getattr(getattr(client, "_process", None), "stdout", None)
    return isinstance(getattr(reader, "_sock", None), _QuickAckSocket)


@contextlib.contextmanager
def quickack(enabled: bool) -> Iterator[None]:
    """Clients started inside the block re-arm TCP_QUICKACK only when ``enabled``."""
    install()
    before = _state["enabled"]
    _state["enabled"] = enabled
    try:
        yield
    finally:
        _state["enabled"] = before
