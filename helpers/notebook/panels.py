"""The notebook-03 panel: pick a user *and* a session id; another user's id is refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import ipywidgets as w

from helpers.notebook.widgets import Answer, ChatPanel

AskInFn = Callable[[str, str, str], Awaitable[Answer]]


class SessionPanel(ChatPanel):
    """A ``ChatPanel`` with a session picker; ``ask(user, session_id, message)`` serves a send."""

    def __init__(
        self,
        users: list[str],
        session_ids: list[str],
        ask: AskInFn,
        placeholder: str = "Type a message",
    ) -> None:
        self.session = w.Dropdown(
            options=session_ids, description="Session", layout=w.Layout(width="auto")
        )
        super().__init__(
            users, lambda user, message: ask(user, self.session.value, message), placeholder
        )

    def _pickers(self) -> list[w.Widget]:
        return [self.session, self.user]

    async def send_to(self, user: str, session_id: str, message: str) -> Answer | None:
        """Send ``message`` as ``user`` into ``session_id`` from code; never raises."""
        self.session.value = session_id
        return await self.send(user, message)
