"""Backends: which model answers. The SDK and the runtime are always the real ones."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from helpers.errors import BackendError
from helpers.model.standin import MODEL_ID, StandInModel

BACKENDS = ("local", "github", "byok")
TOKEN_VARS = ("COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN")
PROVIDER_VARS = (
    "COPILOT_PROVIDER_BASE_URL",
    "COPILOT_PROVIDER_API_KEY",
    "COPILOT_PROVIDER_TYPE",
    "COPILOT_MODEL",
)
PROVIDER_TYPES = ("openai", "azure", "anthropic")
REACH_TIMEOUT_S = 5.0


@dataclass
class Backend:
    """One way of answering: session arguments plus the runtime's environment."""

    name: str
    model: str | None
    provider: dict[str, Any] | None = field(default=None, repr=False)
    server_env: dict[str, str] = field(default_factory=dict, repr=False)
    server_remove_env: tuple[str, ...] = ()
    secret_values: list[str] = field(default_factory=list, repr=False)
    standin: StandInModel | None = field(default=None, repr=False)

    @property
    def records_requests(self) -> bool:
        """True when this backend records what the model receives (the local stand-in only).

        The checks of what the model was sent run only then; on ``github`` and ``byok`` the
        request never passes through code of ours, so there is nothing to look at.
        """
        return self.standin is not None

    def session_kwargs(self) -> dict[str, Any]:
        """The ``model=``/``provider=`` arguments every create and resume must carry."""
        kwargs: dict[str, Any] = {}
        if self.model:
            kwargs["model"] = self.model
        if self.provider:
            kwargs["provider"] = dict(self.provider)
        return kwargs

    def describe(self) -> str:
        """A one-line, secret-free description."""
        where = (self.provider or {}).get("base_url", "GitHub Copilot")
        return f"backend={self.name} model={self.model or '(runtime default)'} endpoint={where}"

    def close(self) -> None:
        """Stop the stand-in model, if this backend started one."""
        if self.standin is not None:
            self.standin.stop()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def choose_backend(name: str = "", env: dict[str, str] | None = None) -> Backend:
    """Build the backend named by ``name``, else ``COPILOT_TUTORIAL_BACKEND``, else ``local``.

    Args:
        name: ``"local"``, ``"github"``, ``"byok"`` or ``""``.
        env: Environment to read settings from (default: ``os.environ``).

    Returns:
        A ready backend. For ``local`` the stand-in model is already serving.

    Raises:
        BackendError: unknown name, missing token or URL, or an unreachable endpoint.
    """
    env = dict(os.environ if env is None else env)
    chosen = (name or env.get("COPILOT_TUTORIAL_BACKEND") or "local").strip().lower()
    if chosen == "local":
        return _local()
    if chosen == "github":
        return _github(env)
    if chosen == "byok":
        return _byok(env)
    raise BackendError(f"Unknown backend {chosen!r}: choose one of {', '.join(BACKENDS)}.")


def _local() -> Backend:
    standin = StandInModel().start()
    provider = {"type": "openai", "base_url": standin.base_url}
    return Backend(
        name="local",
        model=MODEL_ID,
        provider=provider,
        server_env={
            "COPILOT_OFFLINE": "true",
            "COPILOT_PROVIDER_BASE_URL": standin.base_url,
            "COPILOT_PROVIDER_TYPE": "openai",
            "COPILOT_MODEL": MODEL_ID,
        },
        server_remove_env=TOKEN_VARS + PROVIDER_VARS,
        standin=standin,
    )


def _github(env: dict[str, str]) -> Backend:
    for var in TOKEN_VARS:
        token = env.get(var)
        if token:
            return Backend(
                name="github",
                model=env.get("COPILOT_MODEL") or None,
                server_env={var: token},
                server_remove_env=("COPILOT_OFFLINE", *PROVIDER_VARS),
                secret_values=[token],
            )
    raise BackendError(
        "The github backend needs a token: set COPILOT_GITHUB_TOKEN, GH_TOKEN or GITHUB_TOKEN "
        "in the "
        "environment before starting Jupyter (never as a notebook parameter)."
    )


def _byok(env: dict[str, str]) -> Backend:
    base_url = (env.get("COPILOT_PROVIDER_BASE_URL") or "").rstrip("/")
    model = env.get("COPILOT_MODEL") or ""
    if not base_url or not model:
        raise BackendError(
            "The byok backend needs COPILOT_PROVIDER_BASE_URL "
            "(for example http://127.0.0.1:11434/v1) "
            "and COPILOT_MODEL (for example llama3.2) in the environment."
        )
    kind = (env.get("COPILOT_PROVIDER_TYPE") or "openai").lower()
    if kind not in PROVIDER_TYPES:
        raise BackendError(
            f"COPILOT_PROVIDER_TYPE is {kind!r}; the runtime accepts {', '.join(PROVIDER_TYPES)}."
        )
    api_key = env.get("COPILOT_PROVIDER_API_KEY") or ""
    check_reachable(base_url)
    provider: dict[str, Any] = {"type": kind, "base_url": base_url}
    if api_key:
        provider["api_key"] = api_key
    server_env = {
        "COPILOT_OFFLINE": "true",
        "COPILOT_PROVIDER_BASE_URL": base_url,
        "COPILOT_PROVIDER_TYPE": kind,
        "COPILOT_MODEL": model,
    }
    if api_key:
        server_env["COPILOT_PROVIDER_API_KEY"] = api_key
    return Backend(
        name="byok",
        model=model,
        provider=provider,
        server_env=server_env,
        server_remove_env=TOKEN_VARS,
        secret_values=[api_key] if api_key else [],
    )


def check_reachable(base_url: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail with a clear message if nothing answers HTTP at ``base_url``."""
    try:
        urllib.request.urlopen(f"{base_url}/models", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered (401/404 are fine: the endpoint is up)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BackendError(
            f"The model endpoint {base_url} is not reachable ({reason}): "
            "start it, or fix COPILOT_PROVIDER_BASE_URL."
        ) from None
