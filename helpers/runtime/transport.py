"""TCP options on the SDK's connection to the runtime: TCP_NODELAY and TCP_QUICKACK, opt-in.

``RuntimeConnection.for_uri`` makes the SDK open a plain ``socket.create_connection`` and write
each JSON-RPC message as two sends (a header, then the body). With Nagle's algorithm on (the
default) the body waits until the header is acknowledged, and the runtime delays that ACK: about
40 ms per message in some exchanges. ``TCP_NODELAY`` on our socket sends the body at once.
The runtime writes to us in more than one send as well, with Nagle on its side, so part of each
message can wait for *our* ACK, which Linux delays by up to 40 ms; ``TCP_NODELAY`` does not help
there (it governs what we send). ``TCP_QUICKACK`` makes the kernel ACK at once, but Linux clears
it again, so it is re-armed after every read.

``install()`` wraps the SDK's ``CopilotClient._connect_via_tcp`` once per process; nothing calls it
behind the reader's back (notebooks 01-02 run the SDK as shipped; 03-07 and the web service call
it in one visible line): every client connected afterwards gets both options (TCP_QUICKACK on
Linux only). ``set_tuning(False)`` is the one switch that turns both off
for the process; ``tuning(False)`` does it for the clients started inside a block, and
``nodelay(False)`` / ``quickack(False)`` switch one option off there, to measure each stall.

What an SDK upgrade could break (tests/test_transport.py checks each on a real connection): the
name ``_connect_via_tcp`` or its call in ``_connect_to_server``; ``client._process._socket`` (the
socket); ``client._process.stdout`` being a ``socket.SocketIO`` that reads through ``_sock``.
The fix belongs upstream: one write per message and TCP_NODELAY in the SDK, no-delay on the
runtime's own sockets; then this module has nothing left to do.
"""

from __future__ import annotations

import contextlib
import functools
import io
import socket
from collections.abc import Iterator
from typing import Any

from copilot import CopilotClient

QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_state: dict[str, Any] = {
    "installed": False,
    "nodelay": True,
    "quickack": QUICKACK is not None,
    "buffered": True,
}
_ORIGINAL: dict[str, Any] = {}


class _QuickAckSocket:
    """A socket stand-in for the SDK's reader: after each read, ask for an immediate ACK."""

    def __init__(self, sock: socket.socket) -> None:
        self._real = sock
        self.rearmed = 0

    def recv_into(self, buffer: Any, *args: Any) -> int:
        count = self._real.recv_into(buffer, *args)
        with contextlib.suppress(OSError):
            self._real.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)  # type: ignore[arg-type]
            self.rearmed += 1
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _OneWrite:
    """The SDK's writer, sending each message (header + body, then ``flush``) in one send."""

    def __init__(self, raw: Any) -> None:
        self._raw, self._parts = raw, bytearray()

    def write(self, data: bytes) -> int:
        self._parts += data
        return len(data)

    def flush(self) -> None:
        if self._parts:
            data, self._parts = bytes(self._parts), bytearray()
            self._raw._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _BufferedReader(io.BufferedReader):
    """The SDK's reader, reading the socket in chunks instead of one byte per header character."""

    def close(self) -> None:  # the raw socket file is the SDK's to close (its stdin too)
        pass


def install() -> None:
    """Apply the options to every ``CopilotClient`` connected from now on (idempotent)."""
    if _state["installed"]:
        return
    _state["installed"] = True
    original = CopilotClient._connect_via_tcp
    _ORIGINAL["connect"] = original

    @functools.wraps(original)
    async def connect(self: CopilotClient) -> None:
        await original(self)
        sock = client_socket(self)
        if _state["nodelay"] and sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _reader(self)
        if _state["quickack"] and isinstance(getattr(reader, "_sock", None), socket.socket):
            reader._sock = _QuickAckSocket(reader._sock)  # type: ignore[union-attr]
        process = getattr(self, "_process", None)
        if _state["buffered"] and isinstance(reader, socket.SocketIO) and process is not None:
            process.stdout = _BufferedReader(reader)
            process.stdin = _OneWrite(process.stdin)

    connect.__tutorial_transport__ = True  # type: ignore[attr-defined]
    CopilotClient._connect_via_tcp = connect  # type: ignore[method-assign]


def installed() -> bool:
    """True when the SDK's TCP connect is our wrapper (what ``install()`` put there)."""
    return bool(getattr(CopilotClient._connect_via_tcp, "__tutorial_transport__", False))


def set_tuning(enabled: bool) -> None:
    """The one switch: both options on (the default) or off for clients connected from now on."""
    install()
    _state["nodelay"] = _state["buffered"] = enabled
    _state["quickack"] = enabled and QUICKACK is not None


def enable_quickack() -> None:
    """Clients connected from now on re-arm TCP_QUICKACK after every read (the default now)."""
    install()
    _state["quickack"] = QUICKACK is not None


def client_socket(client: CopilotClient) -> socket.socket | None:
    """The TCP socket of a started client (``None`` before ``start()`` or for stdio)."""
    return getattr(getattr(client, "_process", None), "_socket", None)


def _reader(client: CopilotClient) -> Any:
    """The raw socket file the SDK reads from (under our buffer, when there is one)."""
    reader = getattr(getattr(client, "_process", None), "stdout", None)
    return reader.raw if isinstance(reader, _BufferedReader) else reader


def is_buffered(client: CopilotClient) -> bool:
    """True when the client reads in chunks and sends each message in one write."""
    process = getattr(client, "_process", None)
    return isinstance(getattr(process, "stdout", None), _BufferedReader)


def has_nodelay(client: CopilotClient) -> bool:
    """True when the client's socket has TCP_NODELAY set."""
    sock = client_socket(client)
    return bool(sock and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def has_quickack(client: CopilotClient) -> bool:
    """True when the client's reader re-arms TCP_QUICKACK."""
    return isinstance(getattr(_reader(client), "_sock", None), _QuickAckSocket)


def rearms(client: CopilotClient) -> int:
    """How many times the client's reader has re-armed TCP_QUICKACK so far."""
    sock = getattr(_reader(client), "_sock", None)
    return sock.rearmed if isinstance(sock, _QuickAckSocket) else 0


@contextlib.contextmanager
def _options(**enabled: bool) -> Iterator[None]:
    install()
    before = dict(_state)
    for name, on in enabled.items():
        _state[name] = on and (name != "quickack" or QUICKACK is not None)
    try:
        yield
    finally:
        for name in enabled:
            _state[name] = before[name]


def tuning(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Clients started inside the block get both options only when ``enabled``."""
    return _options(nodelay=enabled, quickack=enabled, buffered=enabled)


def nodelay(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Clients started inside the block get TCP_NODELAY only when ``enabled``."""
    return _options(nodelay=enabled)


def quickack(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Clients started inside the block re-arm TCP_QUICKACK only when ``enabled``."""
    return _options(quickack=enabled)


def buffered(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Clients started inside the block read in chunks and write once per message if ``enabled``."""
    return _options(buffered=enabled)


def describe(client: Any) -> str:
    """One line for the notebooks: which options the client's connection has."""

    def word(on: bool) -> str:
        return "on" if on else "off"

    return (
        f"TCP_NODELAY {word(has_nodelay(client))}, "
        f"TCP_QUICKACK re-armed after each read {word(has_quickack(client))}"
    )
