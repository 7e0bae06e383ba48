"""The web backend's pieces that need no runtime: per-user GitHub tokens, error codes (sign-in
tokens: tests/test_web_data.py)."""

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
from helpers.web.service import Service
from helpers.web.turns import error_code


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
