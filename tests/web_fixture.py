"""The web service on an event loop of its own thread, for tests that call it over HTTP."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Coroutine
from typing import Any

from helpers.run import TMP, remove_dir
from helpers.web.serve import WebServer, start_web
from helpers.web.service import Service, Settings


class ServiceThread:
    """``start_web`` on a loop in a background thread; ``call`` runs a coroutine there."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.folder = remove_dir(TMP / f"test-web-{secrets.token_hex(4)}")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="web", daemon=True)
        self.thread.start()
        self.web: WebServer = self.call(start_web(self.folder, settings or Settings()), 120)

    @property
    def service(self) -> Service:
        return self.web.service

    @property
    def url(self) -> str:
        return self.web.url

    def call(self, work: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def stored_sessions(self) -> set[str]:
        """The ids of every session the runtime has written files of, through ``session_fs``.

        This is the runtime's side of "nothing reached it": with ``session_fs`` the runtime keeps
        no session on its own disk, and ``client.list_sessions()`` lists none of them at all.
        """
        rows, _ = self.call(
            self.service.store.execute("SELECT DISTINCT session_id FROM session_files")
        )
        return {r[0] for r in rows}

    def model_requests(self) -> int:
        """How many requests the stand-in model has answered so far."""
        standin = self.service.backend.standin
        return 0 if standin is None else len(standin.requests) and standin.requests[-1].number

    def stop(self) -> None:
        try:
            self.call(self.web.stop(drain=False), 60)
            self.call(_cancel_the_rest(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            remove_dir(self.folder)


async def _cancel_the_rest() -> None:
    """Cancel what is left on the loop (SSE watchers), so nothing is destroyed while pending."""
    current = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not current]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
