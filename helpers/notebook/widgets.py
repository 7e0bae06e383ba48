"""'Try it yourself' panels: ipywidgets in JupyterLab, a plain-text transcript everywhere else."""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import inspect
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import ipywidgets as w
from IPython.display import display

FALLBACK = "(The 'Try it yourself' panel: open this notebook in JupyterLab to use it.)"


@dataclass
class Answer:
    """What one request through the panel produced."""

    user: str
    message: str
    reply: str
    session_id: str
    where: str

    def as_text(self) -> str:
        reply = textwrap.indent(self.reply or "(empty reply)", "    ").lstrip()
        return (
            f"User {self.user} asked: {self.message}\n"
            f"  answered by session {self.session_id} ({self.where})\n"
            f"  reply: {reply}"
        )


AskFn = Callable[..., Awaitable[Answer]]  # ask(user, message), or ask(user, message, on_delta)


class ChatPanel:
    """Pick a user, type a message, send it through ``ask``; shows the reply and who answered.

    The SDK client belongs to the event loop of the cell that created the panel. JupyterLab (4.6,
    with ipykernel 7) delivers button clicks on a kernel subshell thread with a loop of its own,
    so a click hands its request to the panel's loop instead of running it where it arrives.

    An ``ask`` that takes an ``on_delta`` argument streams: it calls ``on_delta(text)`` with each
    piece of the reply as the model writes it, and the panel shows the reply growing (in the live
    widget, and in the text form of a send from a cell) until the whole answer replaces it.
    """

    def __init__(
        self,
        users: list[str],
        ask: AskFn,
        placeholder: str = "Type a message",
        extra: Callable[[str], str] | None = None,
    ) -> None:
        self._ask = ask
        self._streams = "on_delta" in inspect.signature(ask).parameters
        self._extra = extra
        self._loop = _running_loop()
        self.transcript: list[str] = []
        self.pieces: list[str] = []  # the newest send's reply, in the pieces it streamed in
        self.user = w.Dropdown(options=users, description="User")
        self.message = w.Text(
            placeholder=placeholder, description="Message", layout=w.Layout(width="60%")
        )
        self.button = w.Button(description="Send", button_style="primary")
        self.output = w.Output()
        self.live = w.HTML()  # the reply while it streams
        self.pending: asyncio.Future[Answer | None] | concurrent.futures.Future | None = None
        self.button.on_click(self._on_click)
        self.box = w.VBox(
            [w.HBox([*self._pickers(), self.message, self.button]), self.output, self.live]
        )
        self._handle = None

    def _pickers(self) -> list[w.Widget]:
        """The controls before the message box (a subclass may add its own)."""
        return [self.user]

    def widget(self) -> w.Widget:
        return self.box

    def show(self) -> None:
        """Display the panel: a live widget in JupyterLab, the transcript as text elsewhere."""
        self._handle = display(self._bundle(), raw=True, display_id=True)

    async def send(self, user: str, message: str) -> Answer | None:
        """Send one message as ``user`` from code and show the result; never raises."""
        return await self._send(user, message, from_cell=True)

    async def _send(self, user: str, message: str, from_cell: bool) -> Answer | None:
        pieces: list[str] = []
        self.pieces = pieces

        def on_delta(piece: str) -> None:
            pieces.append(piece)
            partial = f"User {user} asked: {message}\n  writing: {''.join(pieces)}"
            self.live.value = f"<pre>{html.escape(partial)}</pre>"
            if from_cell and self._handle is not None:
                self._handle.update(self._bundle(partial), raw=True)

        try:
            options = {"on_delta": on_delta} if self._streams else {}
            answer = await self._ask(user, message, **options)
        except Exception as exc:  # shown to the learner, the panel stays usable
            text = f"User {user}: the request failed: {type(exc).__name__}: {exc}"
            self._show(text, user, from_cell)
            return None
        finally:
            self.live.value = ""
        text = answer.as_text()
        if self._extra is not None:
            text += "\n" + self._extra(user)
        self._show(text, user, from_cell)
        return answer

    def _show(self, text: str, user: str, from_cell: bool) -> None:
        """Append one result (once, newest last) and point the picker at its user.

        A send from a cell also refreshes the text form of the panel, which is what a headless
        run records; a click only appends to the live widget.
        """
        self.transcript.append(text)
        self.output.append_stdout(text + "\n")
        if user in self.user.options:
            self.user.value = user
        if from_cell and self._handle is not None:
            self._handle.update(self._bundle(), raw=True)

    def _bundle(self, partial: str = "") -> dict[str, object]:
        lines = [*self.transcript, partial] if partial else self.transcript
        return {
            "text/plain": "\n".join(lines) or FALLBACK,
            "application/vnd.jupyter.widget-view+json": {
                "version_major": 2,
                "version_minor": 0,
                "model_id": self.box.model_id,
            },
        }

    def _on_click(self, _button: w.Button) -> None:
        message = self.message.value.strip()
        if not message or (self.pending is not None and not self.pending.done()):
            return
        self.button.disabled = True
        request = self._send(self.user.value, message, from_cell=False)
        if self._loop is not None and _running_loop() is not self._loop:
            future = asyncio.run_coroutine_threadsafe(request, self._loop)
        else:
            future = asyncio.ensure_future(request)
        future.add_done_callback(self._finished)
        self.pending = future

    def _finished(self, _future: object) -> None:
        self.button.disabled = False
        self.message.value = ""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
