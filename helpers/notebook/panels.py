"""The notebook-03 panel: pick a user *and* a session id; another user's id is refused."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import ipywidgets as w

from helpers.notebook.widgets import Answer, ChatPanel

AskInFn = Callable[..., Awaitable[Answer]]  # ask(user, session_id, message[, on_delta])


class SessionPanel(ChatPanel):
    """A ``ChatPanel`` with a session picker; ``ask(user, session_id, message)`` serves a send.

    An ``ask`` that also takes ``on_delta`` streams, as in ``ChatPanel``.
    """

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
        if "on_delta" in inspect.signature(ask).parameters:

            def in_session(user: str, message: str, on_delta: Callable[[str], None]):
                return ask(user, self.session.value, message, on_delta=on_delta)
        else:

            def in_session(user: str, message: str):  # type: ignore[misc]
                return ask(user, self.session.value, message)

        super().__init__(users, in_session, placeholder)

    def _pickers(self) -> list[w.Widget]:
        return [self.session, self.user]

    async def send_to(self, user: str, session_id: str, message: str) -> Answer | None:
        """Send ``message`` as ``user`` into ``session_id`` from code; never raises."""
        self.session.value = session_id
        return await self.send(user, message)
