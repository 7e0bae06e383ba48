"""The service's short-lived asks (notebooks 02 and 03): a prepared-ahead session (or one made on
the user's own token) with the three file tools over that user's files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from copilot.session import CopilotSession
from copilot.tools import Tool

from helpers.store.base import finish
from helpers.store.session_fs import store_fs
from helpers.tools.file_tools import ALLOWLIST
from helpers.web.auth import TokenBook
from helpers.web.checks import DISCONNECT_S, Checks, Settings
from helpers.web.db import forget_session_rows
from helpers.web.files import UserFiles, stored_file_tools
from helpers.web.turns import Turn


class Asks(Checks):
    """Asks that last one turn, over the user's files: from the pool, or made per request."""

    def __init__(
        self,
        folder: Path,
        settings: Settings | None = None,
        tokens: TokenBook | None = None,
        tools: list[Tool] | None = None,
    ) -> None:
        super().__init__(folder, settings, tokens, tools)
        self._tools = stored_file_tools(self._fs_of_session)

    def files_of(self, user: str) -> UserFiles:
        """``user``'s own files, kept in the database (each call a statement)."""
        return UserFiles(self.store, user)

    def _fs_of_session(self, session_id: str) -> UserFiles | None:
        user = self._user_of_ask(session_id)
        return self.files_of(user) if user else None

    def _user_of_ask(self, session_id: str) -> str | None:
        return self.pool.user_of(session_id) or self._asking.get(session_id)

    async def _create_pooled(self) -> CopilotSession:
        return await self._create_ask_session(self.backend.session_kwargs())

    async def _create_ask_session(self, model_kwargs: dict[str, Any]) -> CopilotSession:
        """A short-lived session with the three file tools, on ``model_kwargs``'s model."""
        return await self.client.create_session(
            tools=self._tools,
            available_tools=ALLOWLIST,
            streaming=True,
            create_session_fs_handler=store_fs(self.store),
            hooks=self.tool_hooks(self._user_of_ask),
            **model_kwargs,
        )

    async def _retire(self, session: CopilotSession) -> None:
        with contextlib.suppress(Exception):
            await session.disconnect()
        with contextlib.suppress(Exception):
            await self.client.delete_session(session.session_id)
        await forget_session_rows(self.store, session.session_id)

    def ask(self, user: str, text: str) -> Turn:
        """One short-lived turn with the file tools over ``user``'s files (after ``begin``)."""

        @contextlib.asynccontextmanager
        async def opened(turn: Turn) -> AsyncIterator[CopilotSession]:
            sessions = self._own_session if self.per_user_credentials() else self.pool.request
            async with (
                self.gate.request(),
                self.tracing.step("session.take", sessions(user)) as session,
            ):
                with self.tracing.span("turn"):
                    yield session

        return self._track(
            Turn(
                text,
                opened,
                self.settings.turn_timeout_s,
                self.settings.abort_abandoned,
                finished=lambda: self._end(user),
            ),
            user,
        )

    @contextlib.asynccontextmanager
    async def _own_session(self, user: str) -> AsyncIterator[CopilotSession]:
        """A short-lived session made for this request, on ``user``'s own token.

        The pool's sessions are made before anyone asks, so they cannot carry a user's token:
        with per-user credentials an ask pays for its own create (and its delete, which a
        cancelled caller cannot cut).
        """
        session = await self._create_ask_session(self._model_kwargs(user))
        self._asking[session.session_id] = user
        try:
            yield session
        finally:
            try:  # a delete that hangs is left to the sweep, which spares only ids in use
                with contextlib.suppress(TimeoutError):
                    await finish(asyncio.wait_for(self._retire(session), 2 * DISCONNECT_S))
            finally:
                self._asking.pop(session.session_id, None)
