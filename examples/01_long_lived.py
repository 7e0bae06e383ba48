"""Long-lived sessions on one shared runtime: a session per user, in the user's own folder.

User A teaches a session a fact, a second client resumes it by id and recalls it, and User B's
session knows nothing of it (notebook 01). From the repository root:
`.venv/bin/python examples/01_long_lived.py`; the model comes from the environment as the README
says (the stand-in model when none is set), the runtime from node_modules or ``CLI_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from copilot import CopilotClient, RuntimeConnection

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0  # the longest any one wait may take


class Missing(Exception):
    """Something this script needs is not there; the message says what to do."""


def spawn(stack: ExitStack, cmd: list[str], env: dict[str, str], log: Path, ready: str) -> str:
    """Start ``cmd`` in its own process group, stopped on exit; wait for ``ready`` in its log."""
    with log.open("wb") as out:
        opts: dict[str, Any] = dict(stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, **opts)
    stack.callback(stop, proc)
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if found := re.search(ready, log.read_text(errors="replace")):
            return found.group(1)
        time.sleep(0.05)
    raise Missing(f"{Path(cmd[0]).name} did not start; its log ends: {log.read_text()[-200:]!r}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child's whole process group: TERM, then KILL if it lingers past 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, sig)
            proc.wait(timeout=5)
            return


def model_settings(stack: ExitStack, tmp: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``model=``/``provider=`` of every session, and the runtime's environment."""
    env, model = dict(os.environ), os.environ.get("COPILOT_MODEL")
    url = env.get("COPILOT_PROVIDER_BASE_URL", "").rstrip("/")
    backend = env.get("COPILOT_TUTORIAL_BACKEND") or ("byok" if url else "local")
    if backend == "github":  # the runtime reads GH_TOKEN (or COPILOT_GITHUB_TOKEN) itself
        return ({"model": model} if model else {}), env
    if backend == "byok":
        try:
            socket.create_connection((urlsplit(url).hostname, urlsplit(url).port or 443), 5).close()
        except (OSError, ValueError):
            raise Missing(
                f"No model answers at {url!r}: start it, or fix COPILOT_PROVIDER_BASE_URL."
            ) from None
        if not model:
            raise Missing("Set COPILOT_MODEL to the model's name (the byok backend needs one).")
    else:  # the repository's stand-in model, run as a process of its own
        cmd = [sys.executable, "-m", "helpers.model.standin", "--port", "0"]
        env_model = {**env, "PYTHONPATH": str(ROOT)}
        url, model = spawn(stack, cmd, env_model, tmp / "model.log", r"on (http\S+)"), "stand-in"
    provider = {"type": env.get("COPILOT_PROVIDER_TYPE", "openai"), "base_url": url}
    if env.get("COPILOT_PROVIDER_API_KEY"):
        provider["api_key"] = env["COPILOT_PROVIDER_API_KEY"]
    offline = {"COPILOT_OFFLINE": "true", "COPILOT_PROVIDER_BASE_URL": url, "COPILOT_MODEL": model}
    return {"model": model, "provider": provider}, {**env, **offline}


def start_runtime(stack: ExitStack, tmp: Path, env: dict[str, str]) -> tuple[str, str | None]:
    """``CLI_URL`` and its token if set, else a runtime of our own: a token, a throwaway home."""
    if os.environ.get("CLI_URL"):
        return os.environ["CLI_URL"], os.environ.get("COPILOT_CONNECTION_TOKEN")
    found = [
        *ROOT.glob("node_modules/@github/copilot-*/copilot"),
        ROOT / "node_modules/.bin/copilot",
    ]
    if not found[0].exists():
        raise Missing("No Copilot runtime in node_modules: run `npm ci` in the repository root.")
    token = secrets.token_urlsafe(24)
    env = {**env, "COPILOT_HOME": str(tmp / "home"), "COPILOT_CONNECTION_TOKEN": token}
    cmd = [str(found[0]), "--headless", "--port", "0", "--no-auto-update"]
    port = spawn(stack, cmd, env, tmp / "runtime.log", r"listening on port (\d+)")
    return f"127.0.0.1:{port}", token


async def ask(session: Any, prompt: str) -> str:
    """Send one message and return the reply's text."""
    reply = await session.send_and_wait(prompt, timeout=TIMEOUT_S)
    assert reply is not None, "the turn ended without a reply"
    return reply.data.content or ""


async def main(url: str, token: str | None, model: dict[str, Any], tmp: Path) -> None:
    """The pattern, top to bottom."""
    connection = RuntimeConnection.for_uri(url, connection_token=token)
    c1, c2 = (
        CopilotClient(mode="empty", connection=connection),
        CopilotClient(mode="empty", connection=connection),
    )
    folder = {user: tmp / "users" / user for user in ("A", "B")}  # one folder per user
    opts = dict(available_tools=[], **model)  # no tools at all in these sessions
    try:
        await asyncio.wait_for(c1.start(), TIMEOUT_S)
        await asyncio.wait_for(c2.start(), TIMEOUT_S)
        a = await c1.create_session(config_directory=str(folder["A"]), **opts)
        said = await ask(a, "Remember: the codename is AURORA-7.")
        print(f"C1, User A, session {a.session_id}: {said}")
        await a.disconnect()  # the conversation stays on disk, in A's folder
        assert (folder["A"] / "session-state" / a.session_id / "events.jsonl").exists()
        a2 = await c2.resume_session(a.session_id, config_directory=str(folder["A"]), **opts)
        recalled = await ask(a2, "What is the codename?")
        print(f"C2, User A, the same session resumed by id: {recalled}")
        assert "AURORA-7" in recalled, "a second client resumes A's session with its history"
        await a2.disconnect()
        b = await c2.create_session(config_directory=str(folder["B"]), **opts)
        other = await ask(b, "What is the codename?")
        print(f"C2, User B, a session of B's own: {other}")
        assert "AURORA-7" not in other, "User B's session knows nothing of A's"
        await b.disconnect()
        print("checked: another client resumed A's session by id; B's session is separate")
    finally:  # the SDK's delete_session takes no folder: a user's sessions go with the folder
        for client in (c1, c2):
            await asyncio.wait_for(client.stop(), TIMEOUT_S)
        for path in folder.values():
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="copilot-example-")))
        try:
            model, env = model_settings(stack, tmp)
            asyncio.run(main(*start_runtime(stack, tmp, env), model, tmp))
        except Missing as exc:
            sys.exit(f"error: {exc}")
        except KeyboardInterrupt:
            sys.exit("interrupted: everything this script started was stopped")
