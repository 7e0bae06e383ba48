"""The web backend's pieces that need no runtime: tokens, per-user GitHub tokens, error codes."""

from __future__ import annotations

import pytest

from helpers.errors import (
    LeaseExpired,
    NoTokenForUser,
    NotStored,
    RuntimeGone,
    StoreDown,
)
from helpers.model.backends import Backend
from helpers.serving.credentials import UserTokens
from helpers.web.auth import TokenBook
from helpers.web.service import Service
from helpers.web.turns import error_code


def test_tokens_are_kept_only_as_keyed_digests() -> None:
    book = TokenBook()
    a, b = book.issue("A"), book.issue("B")
    assert a != b and len(a) >= 40
    assert book.user_of(a) == "A" and book.user_of(b) == "B"
    assert book.user_of(None) is None and book.user_of("") is None
    assert book.user_of(a[:-1] + ("x" if a[-1] != "x" else "y")) is None
    assert a not in repr(book) and all(a not in d and b not in d for d in book.digests())
    assert TokenBook().user_of(a) is None, "another process's key makes other digests"
    assert book.revoke("A") == 1 and book.user_of(a) is None and book.user_of(b) == "B"


def test_the_github_backend_runs_each_conversation_on_its_users_own_token(tmp_path) -> None:
    service = Service(tmp_path)
    service.backend = Backend(name="github", model=None)
    assert service._model_kwargs("A") == {}, "without per-user tokens: the runtime's own"
    service.github_tokens = UserTokens({"A": "token-of-a"})
    assert service._model_kwargs("A") == {"github_token": "token-of-a"}
    with pytest.raises(NoTokenForUser):
        service._model_kwargs("B")
    service.backend = Backend(name="local", model="stand-in")
    assert "github_token" not in service._model_kwargs("A"), "only the github backend uses them"


def test_every_failure_has_a_stable_code() -> None:
    assert error_code(StoreDown("x")) == "store_down"
    assert error_code(RuntimeGone("x")) == "runtime_down"
    assert error_code(NotStored("x")) == "not_stored"
    assert error_code(LeaseExpired("x")) == "lease_lost"
    assert error_code(TimeoutError()) == "timeout"
    assert error_code(NoTokenForUser("x")) == "no_github_token"
    assert error_code(ValueError("x")) == "internal"
