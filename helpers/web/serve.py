"""Run the app on uvicorn inside the current event loop, on a free loopback port.

In a notebook the service's SDK client belongs to the kernel's event loop, so the HTTP server runs
on that same loop, as a task; it takes no signal handlers (the kernel keeps its own clean-up on
SIGTERM). ``stop()`` drains first, then closes the listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from copilot.tools import Tool

from helpers.web.app import create_app
from helpers.web.auth import TokenBook
from helpers.web.limits import timed_arrival
from helpers.web.service import Service, Settings

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the caller decides what a signal means (a drain first)


class WebServer:
    """The service behind HTTP at ``url`` (``http://127.0.0.1:<port>``)."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it (Linux): without it, each response after the first on a
        # kept-alive connection waits ~40 ms for the client's delayed ACK (Nagle's algorithm).
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            create_app(service),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=5,
            access_log=False,
            http=timed_arrival(service.settings.request_arrival_s),
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> WebServer:
        """Start serving; return once the socket accepts requests."""
        self._task = asyncio.ensure_future(self._server.serve(sockets=[self._socket]))
        async with asyncio.timeout(START_TIMEOUT_S):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # raises what stopped it
                await asyncio.sleep(0.02)
        return self

    async def stop(self, drain: bool = True, timeout: float | None = None) -> int:
        """Stop: with ``drain``, running turns end first (up to ``timeout``); else at once.

        Returns:
            How many turns were still running when the service stopped.
        """
        if drain:
            left = await self.service.drain(timeout)
        else:
            left = self.service.running()
            await self.service.close()
        self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
            except TimeoutError:
                self._server.force_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._task, STOP_TIMEOUT_S)
        self._socket.close()
        return left

    def stop_now(self) -> None:
        """Stop at once, without awaiting (for ``at_kernel_exit``): the runtime, the model, the
        files; the HTTP task ends on its own at the loop's next turn."""
        self._server.should_exit = True
        self.service.stop_now()
        if self._task is None or self._task.done():
            self._socket.close()
        else:  # uvicorn still closes its connections on that socket: close it once it is done
            self._task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: a failed shutdown is not reported as "never retrieved"
        self._socket.close()


async def start_web(
    folder: Path,
    settings: Settings | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    tokens: TokenBook | None = None,
    tools: list[Tool] | None = None,
) -> WebServer:
    """Start the service (runtime, store, pool) and serve it over HTTP.

    Args:
        folder: Where this instance keeps its files (runtime home, SQLite files).
        settings: Limits and behaviour; ``Settings()`` by default.
        host: The interface to listen on (loopback by default).
        port: The port; 0 picks a free one.
        tokens: The sign-in tokens to keep (after a restart); a new, empty book by default.
        tools: Tools the model may call in conversations (none by default).

    Returns:
        The running server; ``server.url``, ``server.service``, ``await server.stop()``.
    """
    service = await Service(folder, settings, tokens, tools).start()
    try:
        return await WebServer(service, host, port).start()
    except BaseException:
        await service.close()
        raise
