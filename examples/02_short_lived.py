"""Short-lived requests: a session per request, three file tools over the user's own files.

Each request gets a fresh session whose tools reach only that user's files (a dict the application
keeps), and the session is deleted after the reply (notebook 02). From the repository root:
`.venv/bin/python examples/02_short_lived.py`; the model comes from the environment as the README
says (the stand-in model when none is set), the runtime from node_modules or ``CLI_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from subprocess import PIPE, STDOUT, Popen, TimeoutExpired
from typing import Any
from urllib.parse import urlsplit

from copilot import CopilotClient, RuntimeConnection
from copilot.tools import Tool, ToolResult, define_tool
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0  # the longest any one wait may take
ALLOWLIST = ["custom:write_file", "custom:read_file", "custom:list_files"]  # mode="empty" needs it


class WriteParams(BaseModel):
    path: str = Field(description="Relative path of the file, such as notes.md")
    content: str = Field(description="The complete text of the file")


class ReadParams(BaseModel):
    path: str = Field(description="Relative path of the file to read")


def check_path(path: str) -> str:
    """The path if it is a plain relative file name, else ValueError saying what to send."""
    if not 0 < len(path) <= 200 or not path.isprintable() or "\\" in path:
        raise ValueError(f"Refused: {path[:80]!r} is not a relative path such as notes.md.")
    if {"", ".", ".."} & set(path.split("/")):
        raise ValueError(f"Refused: {path[:80]!r} is not a relative path such as notes.md.")
    return path


def file_tools(files: dict[str, str], refused: list[str]) -> list[Tool]:
    """Three tools over one user's files: a session of B's holds nothing that reaches A's."""

    def failure(text: str) -> ToolResult:  # returned, not raised, so that the model reads why
        return ToolResult(text_result_for_llm=text, result_type="failure")

    @define_tool(description="Create or replace a text file", skip_permission=True)
    def write_file(params: WriteParams) -> str | ToolResult:
        try:
            if len(params.content) > 65536:
                raise ValueError("Refused: a file holds at most 65536 characters.")
            files[check_path(params.path)] = params.content
            return f"Saved {params.path}."
        except ValueError as exc:
            refused.append(params.path)
            return failure(str(exc))

    @define_tool(description="Read a text file", skip_permission=True, overrides_built_in_tool=True)
    def read_file(params: ReadParams) -> str | ToolResult:
        if params.path not in files:
            return failure(f"No file named {params.path[:80]!r}; list_files shows what exists.")
        return files[params.path]

    @define_tool(description="List all files", skip_permission=True)
    def list_files() -> str:
        return "\n".join(sorted(files)) or "(no files yet)"

    return [write_file, read_file, list_files]


async def handle_request(client: CopilotClient, tools: list[Tool], prompt: str, model: Any) -> Any:
    """One request in a session of its own, disconnected and deleted whatever happens."""
    session = await asyncio.wait_for(
        client.create_session(tools=tools, available_tools=ALLOWLIST, **model), TIMEOUT_S
    )
    try:
        reply = await session.send_and_wait(prompt, timeout=TIMEOUT_S)
        return session.session_id, reply.data.content or "" if reply else ""
    finally:
        await asyncio.wait_for(session.disconnect(), TIMEOUT_S)
        await asyncio.wait_for(client.delete_session(session.session_id), TIMEOUT_S)


async def main(url: str, token: str | None, model: dict[str, Any], tmp: Path) -> None:
    """The pattern, top to bottom."""
    link = RuntimeConnection.for_uri(url, connection_token=token)
    client = CopilotClient(mode="empty", connection=link)
    files: dict[str, dict[str, str]] = {"A": {}, "B": {}}  # the application's, per user
    refused: list[str] = []
    requests = [
        ("A", 'Create notes.md containing "buy milk"'),
        ("A", "List my files, then read notes.md"),
        ("B", "List my files."),
        ("A", 'Create ../outside.md containing "x"'),
    ]
    try:
        await connect(client)
        used = []
        for user, prompt in requests:
            sid, reply = await handle_request(
                client, file_tools(files[user], refused), prompt, model
            )
            used.append(sid)
            print(f"User {user}, session {sid} (deleted): {prompt!r} -> {reply!r}")
            if user == "B":
                assert "buy milk" not in reply.lower(), "B cannot see A's note"
            elif "then read" in prompt:
                assert "buy milk" in reply.lower(), "A's second request reads what the first wrote"
        print("files:", files, "refused paths:", refused)
        assert files == {"A": {"notes.md": "buy milk"}, "B": {}}, "each file in its user's dict"
        assert refused == ["../outside.md"], "the tool refused the path outside the user's files"
        listed = {s.session_id for s in await asyncio.wait_for(client.list_sessions(), TIMEOUT_S)}
        assert len(set(used)) == 4 and not listed & set(used), "a session per request, all deleted"
        print("checked: a session per request, all deleted; no file in the wrong place")
    finally:
        await asyncio.wait_for(client.stop(), TIMEOUT_S)


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
