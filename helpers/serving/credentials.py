"""Per-user GitHub credentials: each session runs on its user's own token (github backend).

With one token in the runtime's environment every user's requests are billed to and limited by
that one account. ``create_session(github_token=...)`` gives a session its own user's token
instead; pass it on every create and resume (whether the runtime stores it is undocumented).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from helpers.errors import NoTokenForUser


class UserTokens:
    """User -> GitHub token, kept out of ``repr`` and error messages."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = {user: token for user, token in tokens.items() if token}

    def __repr__(self) -> str:
        return f"UserTokens(users={sorted(self._tokens)})"

    def session_kwargs(self, user: str) -> dict[str, Any]:
        """The arguments that make a session act as ``user``: ``{"github_token": ...}``."""
        token = self._tokens.get(user)
        if token is None:
            raise NoTokenForUser(f"no GitHub token for User {user}: sign them in first")
        return {"github_token": token}
