"""A minimal streaming HTTP endpoint: bearer token, ownership, the reply as Server-Sent Events.

A FastAPI app (uvicorn, in this process) serves one runtime to many users: a bearer token per
user, session ids made and owned by the application, one turn at a time per session, each reply
streamed as it is written, and a caller who hangs up gets the turn aborted in the runtime
(notebook 07). The script's own client (httpx) drives it. From the repository root:
`.venv/bin/python examples/05_streaming_http.py`; the model comes from the environment as the
README says (the stand-in model when none is set), the runtime from node_modules or ``CLI_URL``.
"""

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
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from subprocess import PIPE, STDOUT, Popen, TimeoutExpired
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from copilot import CopilotClient, RuntimeConnection
from copilot.tools import ToolInvocation, define_tool
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from httpx_sse import aconnect_sse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0  # the longest any one wait may take

TOKENS = {secrets.token_urlsafe(24): user for user in ("alice", "bob")}  # bearer token -> user


class Ask(BaseModel):
    prompt: str


class Service:
    """The application: who owns which session, a lock per session, turns in their own tasks."""

    def __init__(self, client: CopilotClient, model: dict[str, Any]) -> None:
        self.client, self.owners, self.locks = client, dict[str, str](), dict[str, asyncio.Lock]()
        self.started: set[str] = set()  # sessions that had a turn (the runtime knows them)
        self.aborted: list[str] = []
        self.tasks: set[asyncio.Future[None]] = set()  # the turns running, kept referenced
        self.tool_cancelled = asyncio.Event()
        self.streams: dict[str, asyncio.Queue] = {}  # session id -> its running turn's events
        slow = define_tool("list_files", description="List all files", skip_permission=True)
        self.opts = dict(
            tools=[slow(self.slow_list)], available_tools=["custom:list_files"], **model
        )

    async def slow_list(self, invocation: ToolInvocation) -> str:
        """A tool that takes long (a slow backend): a turn that uses it can be hung up on."""
        self.streams[invocation.session_id].put_nowait(("tool", "list_files is running"))
        try:
            await asyncio.sleep(TIMEOUT_S)
            return "(no files)"
        except asyncio.CancelledError:
            self.tool_cancelled.set()
            raise

    async def turn(self, sid: str, prompt: str, out: asyncio.Queue, hung_up: asyncio.Event) -> None:
        """One turn, in a task of its own: events go to ``out``; aborted if the caller hangs up."""
        lock = self.locks.setdefault(sid, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), TIMEOUT_S)
        except TimeoutError:
            out.put_nowait(("error", "busy"))
            return out.put_nowait(None)
        idle, self.streams[sid] = asyncio.Event(), out

        def on_event(event: Any) -> None:
            kind, data = event.type.value, event.data
            if kind == "assistant.message_delta" and data.delta_content:
                out.put_nowait(("delta", data.delta_content))
            elif kind == "assistant.message" and data.content:
                out.put_nowait(("message", data.content))
            elif kind in ("session.idle", "session.error"):
                idle.set()

        try:
            if sid in self.started:
                session = await asyncio.wait_for(
                    self.client.resume_session(sid, streaming=True, **self.opts), TIMEOUT_S
                )
            else:
                session = await asyncio.wait_for(
                    self.client.create_session(session_id=sid, streaming=True, **self.opts),
                    TIMEOUT_S,
                )
                self.started.add(sid)
            unsubscribe = session.on(on_event)
            try:
                await asyncio.wait_for(session.send(prompt), TIMEOUT_S)
                waits = [asyncio.ensure_future(e.wait()) for e in (idle, hung_up)]
                await asyncio.wait(waits, timeout=TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
                if not idle.is_set():  # hung up on, or too slow: stop the turn in the runtime
                    await asyncio.wait_for(session.abort(), TIMEOUT_S)
                    self.aborted.append(sid)
            finally:
                unsubscribe()
                await asyncio.wait_for(session.disconnect(), TIMEOUT_S)
        except Exception as exc:  # the caller gets an error event (its type only), never a hang
            out.put_nowait(("error", type(exc).__name__))
        finally:
            lock.release()
            out.put_nowait(None)


class QuietServer(uvicorn.Server):
    """uvicorn in this loop, leaving Ctrl+C and SIGTERM to the script (which stops everything)."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def build_app(service: Service) -> FastAPI:
    """The HTTP face of the service: two routes, each behind the bearer token."""
    app, bearer = FastAPI(), HTTPBearer(auto_error=False)

    def user(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        name = TOKENS.get(credentials.credentials) if credentials else None
        if name is None:
            raise HTTPException(
                401, "a valid bearer token is needed", {"WWW-Authenticate": "Bearer"}
            )
        return name

    @app.post("/sessions")
    async def new_session(who: Annotated[str, Depends(user)]) -> dict[str, str]:
        sid = f"{who}-{secrets.token_hex(16)}"  # unguessable, made and owned by the application
        service.owners[sid] = who
        return {"session_id": sid}

    @app.post("/sessions/{sid}/messages")
    async def message(
        sid: str, ask: Ask, who: Annotated[str, Depends(user)]
    ) -> EventSourceResponse:
        if service.owners.get(sid) != who:  # another user's id and an unknown one look the same
            raise HTTPException(404, "no such session")
        out: asyncio.Queue = asyncio.Queue()
        hung_up = asyncio.Event()
        service.tasks.add(
            task := asyncio.ensure_future(service.turn(sid, ask.prompt, out, hung_up))
        )
        task.add_done_callback(service.tasks.discard)

        async def events() -> AsyncIterator[dict[str, str]]:
            try:
                while (item := await asyncio.wait_for(out.get(), TIMEOUT_S)) is not None:
                    yield {"event": item[0], "data": item[1]}
            finally:
                hung_up.set()  # a no-op once the turn has ended; else the turn is aborted

        return EventSourceResponse(events())

    return app


async def stream(
    http: httpx.AsyncClient, token: str, sid: str, prompt: str, hang_up_on: str = ""
) -> list[tuple[str, str]]:
    """POST a message and read the Server-Sent Events (closing the stream at ``hang_up_on``)."""
    seen = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aconnect_sse(
        http, "POST", f"/sessions/{sid}/messages", json={"prompt": prompt}, headers=headers
    ) as source:
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            seen.append((sse.event, sse.data))
            if sse.event == hang_up_on:
                break  # leaving the block closes the connection: the caller hung up
    return seen


async def main(url: str, token: str | None, model: dict[str, Any], tmp: Path) -> None:
    """The pattern, top to bottom."""
    client = CopilotClient(
        mode="empty", connection=RuntimeConnection.for_uri(url, connection_token=token)
    )
    service = Service(client, model)
    server = QuietServer(
        uvicorn.Config(
            build_app(service), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
        )
    )
    serving = asyncio.ensure_future(server.serve())
    alice, bob = list(TOKENS)
    try:
        await connect(client)
        async with asyncio.timeout(TIMEOUT_S):
            while not server.started:
                await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT_S
        ) as http:
            assert (await http.post("/sessions")).status_code == 401, "no token, no session"
            made = await http.post("/sessions", headers={"Authorization": f"Bearer {alice}"})
            sid = made.json()["session_id"]
            print("alice's session:", sid)
            for who, target in [(bob, sid), (alice, "alice-" + "0" * 32)]:
                refused = await http.post(
                    f"/sessions/{target}/messages",
                    json={"prompt": "Hi"},
                    headers={"Authorization": f"Bearer {who}"},
                )
                print("refused:", refused.status_code, refused.json())
                assert refused.status_code == 404, (
                    "another user's id is refused like an unknown one"
                )
            told = await stream(http, alice, sid, "Remember: the codename is AURORA-7.")
            deltas = [data for event, data in told if event == "delta"]
            print(f"streamed in {len(deltas)} pieces:", told[-1])
            assert deltas and "".join(deltas) == told[-1][1], "the pieces make up the message"
            asked = await stream(http, alice, sid, "What is the codename?")
            print("asked again:", asked[-1])
            assert asked[-1][0] == "message" and "AURORA-7" in asked[-1][1], "the session remembers"
            cut = await stream(http, alice, sid, "List my files.", hang_up_on="tool")
            print("hung up after:", cut)
            await asyncio.wait_for(service.tool_cancelled.wait(), TIMEOUT_S)
            await asyncio.wait_for(asyncio.gather(*service.tasks), TIMEOUT_S)
            assert service.aborted == [sid], "the turn the caller hung up on was aborted"
            after = await stream(http, alice, sid, "What is the codename?")
            assert "AURORA-7" in after[-1][1], "the session serves the next request"
            print("checked: bearer tokens, ownership, streamed replies, a hang-up aborts the turn")
    finally:
        for sid in service.started:
            await asyncio.wait_for(client.delete_session(sid), TIMEOUT_S)
        server.should_exit = True
        await asyncio.wait_for(serving, TIMEOUT_S)
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
