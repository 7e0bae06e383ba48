"""'Try it yourself' panels: ipywidgets in JupyterLab, plain text everywhere else."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import ipywidgets as w
from IPython.display import display


@dataclass
class Answer:
    """What one request through the panel produced."""

    user: str
    message: str
    reply: str
    session_id: str
    where: str

    def as_text(self) -> str:
        return (f"User {self.user} asked: {self.message}\n"
                f"  answered by session {self.session_id} ({self.where})\n"
                f"  reply: {self.reply}")


AskFn = Callable[[str, str], Awaitable[Answer]]


class ChatPanel:
    """Pick a user, type a message, send it through ``ask``; shows the reply and who answered."""

    def __init__(self, users: list[str], ask: AskFn, placeholder: str = "Type a message",
                 extra: Callable[[str], str] | None = None) -> None:
        self._ask = ask
        self._extra = extra
        self.user = w.Dropdown(options=users, description="User")
        self.message = w.Text(placeholder=placeholder, description="Message", layout=w.Layout(width="60%"))
        self.button = w.Button(description="Send", button_style="primary")
        self.output = w.Output()
        self.pending: asyncio.Task[Answer | None] | None = None
        self.button.on_click(self._on_click)

    def widget(self) -> w.Widget:
        return w.VBox([w.HBox([self.user, self.message, self.button]), self.output])

    def show(self) -> None:
        """Display the panel (in JupyterLab it is interactive; headless it is just recorded)."""
        display(self.widget())

    async def send(self, user: str, message: str, echo: bool = True) -> Answer | None:
        """Send one message as ``user``; show the result as text (printed too when ``echo``); never raises."""
        try:
            answer = await self._ask(user, message)
        except Exception as exc:  # shown to the learner, the panel stays usable
            text = f"User {user}: the request failed: {type(exc).__name__}: {exc}"
            self._show(text, echo)
            return None
        text = answer.as_text()
        if self._extra is not None:
            text += "\n" + self._extra(user)
        self._show(text, echo)
        return answer

    def _show(self, text: str, echo: bool) -> None:
        if echo:
            print(text)
        self.output.append_stdout(text + "\n")

    def _on_click(self, _button: w.Button) -> None:
        message = self.message.value.strip()
        if not message or (self.pending is not None and not self.pending.done()):
            return
        self.button.disabled = True
        task = asyncio.ensure_future(self.send(self.user.value, message, echo=False))
        task.add_done_callback(lambda _t: setattr(self.button, "disabled", False))
        self.pending = task
