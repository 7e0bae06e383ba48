"""Session state in the application's database through ``session_fs``, resumed on a second runtime.

Every file of a session (``events.jsonl``, ``workspace.yaml``, ...) goes through a provider of the
application into its own SQLite database, so a session created on runtime 1 is resumed on runtime 2
and neither runtime's home holds it (notebook 04). From the repository root:
`.venv/bin/python examples/04_session_state_in_db.py`; the model comes from the environment as
the README says (the stand-in model when none is set), the runtimes from node_modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import posixpath
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE, STDOUT, Popen, TimeoutExpired
from typing import Any
from urllib.parse import urlsplit

import aiosqlite
from copilot import CopilotClient, RuntimeConnection
from copilot.rpc import SessionFSReaddirWithTypesEntry, SessionFSReaddirWithTypesEntryType
from copilot.session_fs_provider import SessionFsFileInfo, SessionFsProvider

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0  # the longest any one wait may take

SESSION_FS: Any = {
    "initial_working_directory": "/",
    "session_state_path": "/session-state",
    "conventions": "posix",
}

SCHEMA = [
    "CREATE TABLE owners (session_id TEXT PRIMARY KEY, owner TEXT NOT NULL)",
    "CREATE TABLE files (session_id TEXT, path TEXT, is_dir INTEGER, content TEXT, mtime REAL,"
    " PRIMARY KEY (session_id, path))",
]


def missing(path: str) -> FileNotFoundError:
    """The error a missing file gets (the SDK tells the runtime ENOENT)."""
    return FileNotFoundError(errno.ENOENT, "no such file or directory", path)


class DbFs(SessionFsProvider):
    """One session's files as rows ``(session_id, path) -> content`` of the application's db."""

    def __init__(self, db: aiosqlite.Connection, session_id: str) -> None:
        self.db, self.sid = db, session_id

    async def _row(self, path: str) -> Any:
        sql = "SELECT is_dir, content, mtime FROM files WHERE session_id = ? AND path = ?"
        return await (await self.db.execute(sql, (self.sid, clean(path)))).fetchone()

    async def _put(self, path: str, content: str, is_dir: bool, append: bool = False) -> None:
        path, now = clean(path), time.time()
        parent = posixpath.dirname(path)
        while parent != "/":  # the folders above it, as a directory on disk would need
            sql = "INSERT OR IGNORE INTO files VALUES (?, ?, 1, '', ?)"
            await self.db.execute(sql, (self.sid, parent, now))
            parent = posixpath.dirname(parent)
        update = "content || excluded.content" if append else "excluded.content"
        sql = "INSERT INTO files VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id, path) DO UPDATE"
        sql += f" SET content = {update}, mtime = excluded.mtime"
        await self.db.execute(sql, (self.sid, path, int(is_dir), content, now))
        await self.db.commit()

    async def _children(self, path: str) -> dict[str, bool]:
        prefix = clean(path).rstrip("/") + "/"
        sql = "SELECT path, is_dir FROM files WHERE session_id = ? AND substr(path, 1, ?) = ?"
        rows = await (await self.db.execute(sql, (self.sid, len(prefix), prefix))).fetchall()
        if not rows and prefix != "/" and not await self._row(path):
            raise missing(path)
        found = {}
        for child, is_dir in rows:
            name, *deeper = child[len(prefix) :].split("/")
            found[name] = bool(is_dir or deeper)
        return found

    async def read_file(self, path: str) -> str:
        if (row := await self._row(path)) is None:
            raise missing(path)
        return row[1]

    async def write_file(self, path: str, content: str, mode: int | None = None) -> None:
        await self._put(path, content, is_dir=False)

    async def append_file(self, path: str, content: str, mode: int | None = None) -> None:
        await self._put(path, content, is_dir=False, append=True)

    async def exists(self, path: str) -> bool:
        return clean(path) == "/" or await self._row(path) is not None

    async def stat(self, path: str) -> SessionFsFileInfo:
        row = (1, "", time.time()) if clean(path) == "/" else await self._row(path)
        if row is None:
            raise missing(path)
        when = datetime.fromtimestamp(row[2], UTC)
        return SessionFsFileInfo(not row[0], bool(row[0]), len(row[1].encode()), when, when)

    async def mkdir(self, path: str, recursive: bool, mode: int | None = None) -> None:
        if clean(path) != "/" and await self._row(path) is None:
            await self._put(path, "", is_dir=True)

    async def readdir(self, path: str) -> list[str]:
        return sorted(await self._children(path))

    async def readdir_with_types(self, path: str) -> list[SessionFSReaddirWithTypesEntry]:
        kinds = SessionFSReaddirWithTypesEntryType
        return [
            SessionFSReaddirWithTypesEntry(name, kinds.DIRECTORY if is_dir else kinds.FILE)
            for name, is_dir in sorted((await self._children(path)).items())
        ]

    async def rm(self, path: str, recursive: bool, force: bool) -> None:
        path = clean(path)
        sql = "DELETE FROM files WHERE session_id = ? AND (path = ? OR substr(path, 1, ?) = ?)"
        gone = await self.db.execute(sql, (self.sid, path, len(path) + 1, path + "/"))
        await self.db.commit()
        if gone.rowcount == 0 and not force:
            raise missing(path)

    async def rename(self, src: str, dest: str) -> None:
        src, dest = clean(src), clean(dest)
        if await self._row(src) is None:
            raise missing(src)
        await self.rm(dest, recursive=True, force=True)
        sql = "UPDATE files SET path = ? || substr(path, ?) WHERE session_id = ?"
        sql += " AND (path = ? OR substr(path, 1, ?) = ?)"
        await self.db.execute(sql, (dest, len(src) + 1, self.sid, src, len(src) + 1, src + "/"))
        await self.db.commit()


def clean(path: str) -> str:
    """``path`` as one absolute, normalised POSIX path."""
    return posixpath.normpath("/" + path.lstrip("/"))


async def ask(
    client: CopilotClient, db: aiosqlite.Connection, sid: str, prompt: str, **opts: Any
) -> str:
    """One turn in session ``sid`` on ``client``'s runtime, its files in ``db``; then let go."""
    handler = {"create_session_fs_handler": lambda session: DbFs(db, session.session_id)}
    if await (await db.execute("SELECT 1 FROM files WHERE session_id = ?", (sid,))).fetchone():
        session = await asyncio.wait_for(client.resume_session(sid, **handler, **opts), TIMEOUT_S)
    else:
        session = await asyncio.wait_for(
            client.create_session(session_id=sid, **handler, **opts), TIMEOUT_S
        )
    try:
        reply = await session.send_and_wait(prompt, timeout=TIMEOUT_S)
        return (reply.data.content or "") if reply else ""
    finally:
        await asyncio.wait_for(session.disconnect(), TIMEOUT_S)


async def main(runtimes: list[tuple[str, str]], model: dict[str, Any], tmp: Path) -> None:
    """The pattern, top to bottom."""
    clients = [
        CopilotClient(
            mode="empty",
            connection=RuntimeConnection.for_uri(url, connection_token=token),
            session_fs=SESSION_FS,
        )
        for url, token in runtimes
    ]
    async with aiosqlite.connect(tmp / "app.db", timeout=5) as db:  # closed however main ends
        for statement in SCHEMA:
            await db.execute(statement)
        opts = dict(available_tools=[], **model)
        sid = f"alice-{secrets.token_hex(16)}"  # made by the application, owner recorded first
        try:
            for client in clients:
                await connect(client)
            await db.execute("INSERT INTO owners VALUES (?, ?)", (sid, "alice"))
            await db.commit()
            said = await ask(clients[0], db, sid, "Remember: the codename is AURORA-7.", **opts)
            print(f"runtime 1, session {sid}: {said}")
            rows = await (
                await db.execute("SELECT path FROM files WHERE session_id = ?", (sid,))
            ).fetchall()
            state = sorted(r[0] for r in rows if r[0].startswith("/session-state/"))
            print("the session's files, as rows of the application's database:", state)
            assert ("/session-state/events.jsonl",) in rows, "the conversation is in the database"
            recalled = await ask(clients[1], db, sid, "What is the codename?", **opts)
            print(f"runtime 2, the same session resumed by id: {recalled}")
            assert "AURORA-7" in recalled, "runtime 2 continued the conversation from the database"
            on_disk = [
                p for home in ("runtime-1", "runtime-2") for p in (tmp / home).rglob(sid + "*")
            ]
            assert not on_disk, f"no runtime home holds the session: {on_disk}"
            print(
                "checked: created on runtime 1, resumed on runtime 2, stored only in the database"
            )
        finally:  # the SDK cannot delete such a session: it lives in our database, so we delete it
            await db.execute("DELETE FROM files WHERE session_id = ?", (sid,))
            await db.execute("DELETE FROM owners WHERE session_id = ?", (sid,))
            await db.commit()
            for client in clients:
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


def start_runtime(stack: ExitStack, tmp: Path, env: dict[str, str], name: str) -> tuple[str, str]:
    """A runtime of our own: a connection token, a throwaway home (``CLI_URL`` is not used here:
    a runtime takes one ``session_fs`` client, so this script starts both of its runtimes)."""
    binary = next(ROOT.glob("node_modules/@github/copilot-*/copilot"), None)  # npm's native build
    if binary is None:
        raise Missing("No Copilot runtime in node_modules: run `npm ci` in the repository root.")
    token = secrets.token_urlsafe(24)
    env = {**env, "COPILOT_HOME": str(tmp / name), "COPILOT_CONNECTION_TOKEN": token}
    cmd = [str(binary), "--headless", "--port", "0", "--no-auto-update"]
    port = spawn(stack, cmd, env, tmp / f"{name}.log", r"listening on port (\d+)")
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
            runtimes = [start_runtime(stack, tmp, env, f"runtime-{n}") for n in (1, 2)]
            asyncio.run(main(runtimes, model, tmp))
        except Missing as exc:
            sys.exit(f"error: {exc}")
        except KeyboardInterrupt:
            sys.exit("interrupted: everything this script started was stopped")
