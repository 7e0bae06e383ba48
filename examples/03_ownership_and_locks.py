"""Ownership and a per-session lock: the application makes the ids and decides who may use them.

The application records each session's owner in its database (SQLite) when it makes the id,
refuses another user's id (or an unknown one) before the runtime is asked, and lets one turn at a
time into a session (notebook 03). From the repository root:
`.venv/bin/python examples/03_ownership_and_locks.py`; the model comes from the environment as the
README says (the stand-in model when none is set), the runtime from node_modules or ``CLI_URL``.
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

import aiosqlite
from copilot import CopilotClient, RuntimeConnection

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0  # the longest any one wait may take


class NotYourSession(Exception):
    """The same refusal for another user's id and for an id that does not exist."""


class Sessions:
    """Sessions the application owns: an owner row per id (SQLite) and a lock per session."""

    def __init__(self, db: aiosqlite.Connection, client: CopilotClient, model: dict[str, Any]):
        self.db, self.client, self.opts = db, client, dict(available_tools=[], **model)
        self.locks: dict[str, asyncio.Lock] = {}
        self.runtime_calls = 0  # to show that a refusal never reaches the runtime
        self.turns: list[tuple[float, float]] = []  # (start, end) of every turn, to check the lock

    async def create(self, user: str) -> str:
        """Make an unguessable id and record its owner; the runtime sees it at the first turn."""
        sid = f"{user}-{secrets.token_hex(16)}"
        await self.db.execute("INSERT INTO owners (session_id, owner) VALUES (?, ?)", (sid, user))
        await self.db.commit()
        return sid

    async def check(self, user: str, sid: str) -> int:
        """Refuse unless ``user`` owns ``sid``; return how many turns it has had."""
        query = "SELECT owner, turns FROM owners WHERE session_id = ?"
        row = await (await self.db.execute(query, (sid,))).fetchone()
        if row is None or row[0] != user:
            raise NotYourSession(f"User {user} has no session {sid[:12]}...")
        return row[1]

    async def ask(self, user: str, sid: str, prompt: str) -> str:
        """One turn, after the ownership check, holding the session's lock until it is closed."""
        await self.check(user, sid)
        lock = self.locks.setdefault(sid, asyncio.Lock())
        await asyncio.wait_for(lock.acquire(), TIMEOUT_S)
        try:
            self.runtime_calls += 1
            start = time.monotonic()
            first = await self.check(user, sid) == 0  # under the lock: one create, then resumes
            opening = (
                self.client.create_session(session_id=sid, **self.opts)
                if first
                else self.client.resume_session(sid, **self.opts)
            )
            session = await asyncio.wait_for(opening, TIMEOUT_S)
            try:
                reply = await session.send_and_wait(prompt, timeout=TIMEOUT_S)
            finally:
                await asyncio.wait_for(session.disconnect(), TIMEOUT_S)
            count = "UPDATE owners SET turns = turns + 1 WHERE session_id = ?"
            await self.db.execute(count, (sid,))
            await self.db.commit()
            self.turns.append((start, time.monotonic()))
            return (reply.data.content or "") if reply else ""
        finally:
            lock.release()

    async def delete(self, user: str, sid: str) -> None:
        """Delete the session in the runtime, then its owner row."""
        if await self.check(user, sid):  # the runtime has it once it has had a turn
            self.runtime_calls += 1
            await asyncio.wait_for(self.client.delete_session(sid), TIMEOUT_S)
        await self.db.execute("DELETE FROM owners WHERE session_id = ?", (sid,))
        await self.db.commit()


async def main(url: str, token: str | None, model: dict[str, Any], tmp: Path) -> None:
    """The pattern, top to bottom."""
    connection = RuntimeConnection.for_uri(url, connection_token=token)
    client = CopilotClient(mode="empty", connection=connection)
    async with aiosqlite.connect(tmp / "app.db", timeout=5) as db:  # closed however main ends
        await db.execute(
            "CREATE TABLE owners (session_id TEXT PRIMARY KEY, owner TEXT, turns INTEGER DEFAULT 0)"
        )
        sessions, sid = Sessions(db, client, model), ""
        try:
            await connect(client)
            sid = await sessions.create("alice")
            print("alice's session:", sid)
            before = sessions.runtime_calls
            for user, target in [("bob", sid), ("alice", "alice-" + "0" * 32)]:
                asking = sessions.ask(user, target, "What is the codename?")
                for attempt in (asking, sessions.delete(user, target)):
                    try:
                        await attempt
                        raise AssertionError(f"{user} was let into {target}")
                    except NotYourSession as exc:
                        print("refused:", exc)
            assert sessions.runtime_calls == before, "the refusals never reached the runtime"
            facts = ["Remember: the colour is TEAL-42.", "Remember: the fruit is PEAR-9."]
            replies = await asyncio.gather(*(sessions.ask("alice", sid, fact) for fact in facts))
            print("two turns at once:", replies)
            (s1, e1), (s2, e2) = sessions.turns
            assert e1 <= s2 or e2 <= s1, "the lock let one turn at a time into the session"
            for question, value in [
                ("What is the colour?", "TEAL-42"),
                ("What is the fruit?", "PEAR-9"),
            ]:
                answer = await sessions.ask("alice", sid, question)
                print(question, "->", answer)
                assert value in answer, "both turns are in the session's history"
            print("checked: ownership refused before the runtime; one turn at a time per session")
        finally:
            if sid:
                with contextlib.suppress(NotYourSession):
                    await sessions.delete("alice", sid)
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
