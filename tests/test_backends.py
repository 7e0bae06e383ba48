"""Backends: clear errors for bad settings, secrets kept out of descriptions."""

from __future__ import annotations

import pytest
from support import free_port

from helpers.errors import BackendError
from helpers.model.backends import TOKEN_VARS, choose_backend
from helpers.model.standin import StandInModel


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(BackendError, match="Unknown backend 'gpt'.*local, github, byok"):
        choose_backend("gpt", env={})


def test_environment_variable_chooses_when_parameter_is_empty() -> None:
    with pytest.raises(BackendError, match="github backend needs a token"):
        choose_backend("", env={"COPILOT_TUTORIAL_BACKEND": "github"})


def test_default_is_local_offline_without_tokens() -> None:
    with choose_backend("", env={"GITHUB_TOKEN": "canary-xyz"}) as backend:
        assert backend.name == "local"
        assert backend.server_env["COPILOT_OFFLINE"] == "true"
        assert set(TOKEN_VARS) <= set(backend.server_remove_env)
        assert "canary-xyz" not in repr(backend) + str(backend.server_env)
        assert backend.session_kwargs()["provider"]["base_url"] == backend.standin.base_url
        assert backend.records_requests, "the stand-in records what the model receives"


def test_github_token_goes_to_the_server_only() -> None:
    backend = choose_backend("github", env={"GH_TOKEN": "ghp_secret_value"})
    assert backend.server_env == {"GH_TOKEN": "ghp_secret_value"}
    assert "ghp_secret_value" not in repr(backend) + backend.describe() + str(
        backend.session_kwargs()
    )
    assert backend.secret_values == ["ghp_secret_value"]
    assert not backend.records_requests, "no code of ours sees a real model's requests"


def test_byok_needs_url_and_model() -> None:
    with pytest.raises(BackendError, match="COPILOT_PROVIDER_BASE_URL"):
        choose_backend("byok", env={"COPILOT_MODEL": "llama3.2"})
    with pytest.raises(BackendError, match="COPILOT_MODEL"):
        choose_backend("byok", env={"COPILOT_PROVIDER_BASE_URL": "http://127.0.0.1:1/v1"})


def test_byok_rejects_unknown_provider_type() -> None:
    with pytest.raises(BackendError, match="COPILOT_PROVIDER_TYPE"):
        choose_backend(
            "byok",
            env={
                "COPILOT_PROVIDER_BASE_URL": "http://127.0.0.1:1/v1",
                "COPILOT_MODEL": "m",
                "COPILOT_PROVIDER_TYPE": "bogus",
            },
        )


def test_byok_endpoint_down_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match="not reachable"):
        choose_backend("byok", env={"COPILOT_PROVIDER_BASE_URL": url, "COPILOT_MODEL": "m"})


def test_byok_against_a_live_endpoint_keeps_the_key_secret() -> None:
    with StandInModel() as model:
        backend = choose_backend(
            "byok",
            env={
                "COPILOT_PROVIDER_BASE_URL": model.base_url,
                "COPILOT_MODEL": "m",
                "COPILOT_PROVIDER_API_KEY": "sk-very-secret",
            },
        )
        assert backend.session_kwargs() == {
            "model": "m",
            "provider": {"type": "openai", "base_url": model.base_url, "api_key": "sk-very-secret"},
        }
        assert "sk-very-secret" not in repr(backend) + backend.describe()
