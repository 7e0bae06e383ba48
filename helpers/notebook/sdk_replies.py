"""Reading what ``send_and_wait`` returned: its text, or ``NoReply`` when there was none."""

from __future__ import annotations

from helpers.errors import NoReply


def text_of(event: object) -> str:
    """The text of what ``send_and_wait`` returned; raise ``NoReply`` when it returned ``None``.

    ``send_and_wait`` returns ``None`` when the session went idle without an assistant message
    (for example a model that answered with nothing). Every cell reads replies through here.
    """
    if event is None:
        raise NoReply("the turn ended without a reply from the model (send_and_wait returned None)")
    return getattr(event.data, "content", None) or ""
