"""Fail fast, with a clear message, when the runtime dies mid-turn or never answers.

The SDK alone leaves two waits open-ended. ``send_and_wait`` waits for the session to go idle,
and a runtime that died never says so: the reader thread sees the TCP connection close, fails the
pending JSON-RPC requests, but not the turn, which then sits out its whole timeout and blames the
wrong thing ("Timeout after 120s"). And ``CopilotClient.start()`` against a listener that accepts
and stays silent waits forever for the protocol handshake.

``install()`` adds, once per process, three small wrappers around the SDK's own methods: when a
client's connection closes, every turn waiting on that client fails at once with ``RuntimeGone``
(naming the runtime and its log); ``start()`` gets a timeout and fails with ``RuntimeUnreachable``;
a create or resume on a client whose runtime is gone says so instead of "Client not connected".
Nothing else of the SDK changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path
from typing import Any

from copilot import CopilotClient
from copilot.session import CopilotSession

from helpers.errors import RuntimeGone, RuntimeUnreachable
from helpers.run import relative

START_TIMEOUT_S = 20.0
_LOGS: dict[str, str] = {}
_state = {"installed": False, "start_timeout": START_TIMEOUT_S}


def note_runtime(url: str, log_path: Path | None) -> None:
    """Remember where the log of the runtime at ``url`` is, for the error messages."""
    if log_path is not None:
        _LOGS[url] = relative(log_path)


def install(start_timeout: float | None = None) -> None:
    """Switch the fast failures on for every ``CopilotClient`` of this process (idempotent).

    Args:
        start_timeout: Seconds ``start()`` may take; ``None`` keeps the current setting.
    """
    if start_timeout is not None:
        _state["start_timeout"] = start_timeout
    if _state["installed"]:
        return
    _state["installed"] = True
    _wrap_start()
    _wrap_connection_close()
    _wrap_turns()


def _url(client: Any) -> str:
    return f"{getattr(client, '_actual_host', '?')}:{getattr(client, '_runtime_port', '?')}"


def _gone_message(url: str) -> str:
    log = _LOGS.get(url)
    where = f"; its log is {log}" if log else " (attached by URL: look at the log where it runs)"
    return (
        f"The Copilot runtime at {url} stopped: its connection closed{where}. "
        "Start it again (re-run the cell that starts the shared runtime) and use a new client."
    )


def _wrap_start() -> None:
    original = CopilotClient.start

    @functools.wraps(original)
    async def start(self: CopilotClient) -> None:
        timeout = _state["start_timeout"]
        try:
            await asyncio.wait_for(original(self), timeout=timeout)
            self._runtime_gone = None  # type: ignore[attr-defined]
        except TimeoutError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.force_stop(), timeout=5)
            raise RuntimeUnreachable(
                f"No Copilot runtime answered at {_url(self)} within {timeout:.0f} s: something "
                "accepted the TCP connection but did not complete the runtime's JSON-RPC "
                "handshake. Check that CLI_URL points at a `copilot --headless` server (host:port "
                "as it printed) and that COPILOT_CONNECTION_TOKEN is its token."
            ) from None

    CopilotClient.start = start  # type: ignore[method-assign]


def _wrap_connection_close() -> None:
    original = CopilotClient._handle_connection_close

    @functools.wraps(original)
    def handle_close(self: CopilotClient) -> None:
        with self._sessions_lock:
            sessions = list(self._sessions.values())
        reason = _gone_message(_url(self))
        self._runtime_gone = reason  # type: ignore[attr-defined]
        original(self)
        loop = self._client._loop if self._client is not None else None
        for session in sessions:
            session._runtime_gone = reason  # type: ignore[attr-defined]
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_fail_waits, session)

    CopilotClient._handle_connection_close = handle_close  # type: ignore[method-assign]


def _fail_waits(session: CopilotSession) -> None:
    """Wake every ``send_and_wait`` of ``session`` (the SDK's own disconnect path)."""
    for fail in tuple(session._response_waits):
        fail()


def _wrap_turns() -> None:
    send_and_wait = CopilotSession.send_and_wait

    @functools.wraps(send_and_wait)
    async def guarded_send_and_wait(self: CopilotSession, *args: Any, **kwargs: Any) -> Any:
        if reason := getattr(self, "_runtime_gone", None):
            raise RuntimeGone(reason)
        try:
            return await send_and_wait(self, *args, **kwargs)
        except Exception as exc:
            if reason := getattr(self, "_runtime_gone", None):
                raise RuntimeGone(reason) from exc
            raise

    CopilotSession.send_and_wait = guarded_send_and_wait  # type: ignore[method-assign]

    for name in ("create_session", "resume_session", "delete_session"):
        original = getattr(CopilotClient, name)

        def make(original: Any) -> Any:
            @functools.wraps(original)
            async def guarded(self: CopilotClient, *args: Any, **kwargs: Any) -> Any:
                if reason := getattr(self, "_runtime_gone", None):
                    raise RuntimeGone(reason)
                return await original(self, *args, **kwargs)

            return guarded

        setattr(CopilotClient, name, make(original))
