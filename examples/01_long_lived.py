"""Long-lived sessions on one shared runtime: a session per user, in the user's own folder.

User A teaches a session a fact, a second client resumes it by id and recalls it, and User B's
session knows nothing of it (notebook 01). Run from the repository root:
`.venv/bin/python examples/01_long_lived.py`. The model comes from the environment as the README
says (the stand-in model when none is set), the runtime from node_modules or ``CLI_URL``.
"""

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable
from contextlib import ExitStack
from pathlib import Path
from subprocess import PIPE, STDOUT, Popen, TimeoutExpired
from typing import Any
from urllib.parse import urlsplit

from copilot import CopilotClient, RuntimeConnection

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0  # the longest any one wait may take


async def turn(opening: Awaitable[Any], prompt: str) -> tuple[str, str]:
    """Open a session (create or resume), send one message, disconnect: its id and the reply."""
    session = await asyncio.wait_for(opening, TIMEOUT_S)
    try:
        reply = await session.send_and_wait(prompt, timeout=TIMEOUT_S)
        return session.session_id, reply.data.content or "" if reply else ""
    finally:  # disconnect() keeps the conversation on disk, in the user's folder
        await asyncio.wait_for(session.disconnect(), TIMEOUT_S)


async def main(url: str, token: str | None, model: dict[str, Any], tmp: Path) -> None:
    """The pattern, top to bottom."""
    link = RuntimeConnection.for_uri(url, connection_token=token)  # the token, on every client
    c1, c2 = [CopilotClient(mode="empty", connection=link) for _ in range(2)]
    home = {user: tmp / "users" / user for user in ("A", "B")}  # a folder per user
    # available_tools on every create and resume in mode "empty"; model= and provider= too
    a, b = (dict(config_directory=str(home[u]), available_tools=[], **model) for u in ("A", "B"))
    try:
        await connect(c1)
        await connect(c2)
        sid, said = await turn(c1.create_session(**a), "Remember: the codename is AURORA-7.")
        print(f"C1, User A, session {sid}:", said)
        assert (home["A"] / "session-state" / sid / "events.jsonl").exists(), "in A's folder"
        _, recalled = await turn(c2.resume_session(sid, **a), "What is the codename?")
        print("C2, User A, the same session resumed by id:", recalled)
        assert "AURORA-7" in recalled, "a second client resumes A's session with its history"
        _, other = await turn(c2.create_session(**b), "What is the codename?")
        print("C2, User B, a session of B's own:", other)
        assert "AURORA-7" not in other, "User B's session knows nothing of A's"
        print("checked: another client resumed A's session by id; B's session is separate")
    finally:  # the SDK's delete_session takes no folder: a user's sessions go with the folder
        for client in (c1, c2):
            await asyncio.wait_for(client.stop(), TIMEOUT_S)
        for folder in home.values():
            shutil.rmtree(folder, ignore_errors=True)


# --- Plumbing: the model, the runtime, child processes (the same in every example) ------------
class Missing(Exception):
    """Something this script needs is not there; the message says what to do."""


def spawn(stack: ExitStack, cmd: list[str], env: dict[str, str], log: Path, ready: str) -> str:
    """Start ``cmd`` in its own process group, stopped on exit; wait for ``ready`` in its log."""
    pending: list[int] = []  # Ctrl+C waits until the child is registered to be stopped
    previous = signal.signal(signal.SIGINT, lambda sig, _: pending.append(sig))
    try:
        with log.open("wb") as out:
            proc = Popen(
                cmd, env=env, stdin=PIPE, stdout=out, stderr=STDOUT, start_new_session=True
            )
        stack.callback(stop, proc)
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if found := re.search(ready, log.read_text(errors="replace")):
            return found.group(1)
        time.sleep(0.05)
    raise Missing(f"{Path(cmd[0]).name} did not start; its log ends: {log.read_text()[-200:]!r}")


def stop(proc: Popen[bytes]) -> None:
    """Stop a child's whole process group: TERM, then KILL if it lingers past 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, TimeoutExpired):
            os.killpg(proc.pid, sig)
            proc.wait(timeout=5)
            return


def model_settings(stack: ExitStack, tmp: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``model=``/``provider=`` of every session, and the runtime's environment."""
    env, model = dict(os.environ), os.environ.get("COPILOT_MODEL", "")
    url = env.get("COPILOT_PROVIDER_BASE_URL", "").rstrip("/")
    backend = env.get("COPILOT_TUTORIAL_BACKEND") or ("byok" if url else "local")
    if backend == "github":  # the runtime reads GH_TOKEN (or COPILOT_GITHUB_TOKEN) itself
        return ({"model": model} if model else {}), env
    if backend == "local":  # the repository's stand-in model, run as a process of its own
        cmd = [sys.executable, "-m", "helpers.model.standin", "--port", "0"]
        env_model = {**env, "PYTHONPATH": str(ROOT)}
        url, model = spawn(stack, cmd, env_model, tmp / "model.log", r"on (http\S+)"), "stand-in"
    try:
        socket.create_connection((urlsplit(url).hostname, urlsplit(url).port or 443), 5).close()
    except (OSError, ValueError):
        raise Missing(
            f"No model answers at {url!r}: start it or fix COPILOT_PROVIDER_BASE_URL."
        ) from None
    if not model:
        raise Missing("Set COPILOT_MODEL to the name of the model (byok needs one).")
    key = {"api_key": env["COPILOT_PROVIDER_API_KEY"]} if "COPILOT_PROVIDER_API_KEY" in env else {}
    provider = {"type": env.get("COPILOT_PROVIDER_TYPE", "openai"), "base_url": url, **key}
    offline = {"COPILOT_OFFLINE": "true", "COPILOT_PROVIDER_BASE_URL": url, "COPILOT_MODEL": model}
    return {"model": model, "provider": provider}, {**env, **offline}


def start_runtime(stack: ExitStack, tmp: Path, env: dict[str, str]) -> tuple[str, str | None]:
    """``CLI_URL`` and its token if set, else a runtime of our own: a token, a throwaway home."""
    if os.environ.get("CLI_URL"):
        return os.environ["CLI_URL"], os.environ.get("COPILOT_CONNECTION_TOKEN")
    binary = next(ROOT.glob("node_modules/@github/copilot-*/copilot"), None)  # npm's native build
    if binary is None:
        raise Missing("No Copilot runtime in node_modules: run `npm ci` in the repository root.")
    token = secrets.token_urlsafe(24)
    env = {**env, "COPILOT_HOME": str(tmp / "home"), "COPILOT_CONNECTION_TOKEN": token}
    cmd = [str(binary), "--headless", "--port", "0", "--no-auto-update"]
    port = spawn(stack, cmd, env, tmp / "runtime.log", r"listening on port (\d+)")
    return f"127.0.0.1:{port}", token


async def connect(client: CopilotClient) -> None:
    """Start a client; a runtime that is not there, or refuses the token, is ``Missing``."""
    try:
        await asyncio.wait_for(client.start(), TIMEOUT_S)
    except Exception as exc:
        bad_token = "AUTHENTICATION_FAILED" in str(exc)
        why = "refused the token: set COPILOT_CONNECTION_TOKEN" if bad_token else "is not there"
        raise Missing(f"The runtime {why} (or unset CLI_URL to start one).") from None


if __name__ == "__main__":
    # SIGTERM as Ctrl+C: asyncio.run then cancels main() at an await, and its finally cleans up
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    logging.getLogger("copilot").setLevel(logging.CRITICAL)  # errors are raised and told here
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="copilot-example-")))
        try:
            model, env = model_settings(stack, tmp)
            asyncio.run(main(*start_runtime(stack, tmp, env), model, tmp))
        except Missing as exc:
            sys.exit(f"error: {exc}")
        except KeyboardInterrupt:
            sys.exit("interrupted: everything this script started was stopped")
