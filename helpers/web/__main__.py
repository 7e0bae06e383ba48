"""``python -m helpers.web``: the web backend on its own; ``... tokens``: its sign-in tokens;
``... users delete NAME``: a user's content and access gone, their usage kept (``users.py``).

The service keeps conversations, owners, users' files and tokens in its database: the SQLite file
``sessions.db`` in the data folder (``--data``, default ``tmp/web-data``), or PostgreSQL when
``DATABASE_URL`` is set. A restart (Ctrl+C or ``kill -9``) finds them there; delete the folder
(and, with PostgreSQL, the schema) to start afresh. The tokens of ``--users`` are written to a
file readable by you alone (never printed), reused while they are valid; SIGINT or SIGTERM drains
the running turns before the runtime stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

from helpers.run import TMP, relative, remove_dir, run_dir
from helpers.tools.slow_read import slow_read_tool
from helpers.web.auth import DAYS, TokenBook
from helpers.web.db import open_web_store

DATA = TMP / "web-data"
TOKENS = TMP / "web-tokens.json"
MAX_TURNS = 16  # where one runtime stopped scaling on the test machine (README, notebook 09)


async def serve(args: argparse.Namespace) -> None:
    from helpers.web.serve import start_web  # here: ``tokens`` needs neither runtime nor HTTP
    from helpers.web.service import Settings

    folder = run_dir("web")  # the runtime's home only: the data is in the database
    settings = Settings(
        backend=args.backend,
        cli_url=args.cli_url,
        data=str(args.data),
        instance=args.instance,
        schema=args.schema,
        lease_ttl_s=args.lease_ttl_s,
        version_label=args.version_label,
        max_turns=args.max_turns,
        budget_tokens=args.budget_tokens,
        budget_period_s=args.budget_period_s,
        rate_turns=args.rate_turns,
        plans={user: "read-only" for user in args.read_only.split(",") if user},
        traces=args.traces,
        capture_content=args.capture_content,
    )
    tools = [slow_read_tool(args.slow_read_s)] if args.slow_read_s > 0 else None
    web = await start_web(folder, settings, args.host, args.port, tools=tools)
    users = [user for user in args.users.split(",") if user]
    tokens = await reuse_or_issue(web.service.tokens, users, args.tokens_file)
    private_file(args.tokens_file, json.dumps(tokens, indent=1) + "\n")
    print(f"Serving {web.service.backend.describe()} at {web.url}/ (API docs: {web.url}/docs)")
    print(f"Data in {web.service.store.describe()} (instance {web.service.holder}).")
    if web.service.tracing.on:
        print(f"Spans go to {args.traces}.")
    where = relative(args.tokens_file)
    print(f"Sign-in tokens for {', '.join(tokens)} are in {where} (yours only).")
    print("Ctrl+C drains the running turns, then stops.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    left = await web.stop(drain=True, timeout=args.drain_s)
    remove_dir(folder)
    print(f"Stopped ({left} turns cut by the drain's timeout).")


async def reuse_or_issue(book: TokenBook, users: list[str], path: Path) -> dict[str, str]:
    """The token of each user from the last start while still valid, else a new one."""
    kept: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        kept = json.loads(path.read_text())
    tokens = {}
    for user in users:
        token = kept.get(user) if isinstance(kept, dict) else None
        valid = isinstance(token, str) and await book.user_of(token) == user
        tokens[user] = token if valid else await book.issue(user)
    return tokens


def private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable and writable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(text)


async def tokens(args: argparse.Namespace) -> int:
    store = await open_web_store(Path(args.data), schema=args.schema)
    try:
        book = await TokenBook(DAYS).attach(store)
        if args.action == "issue":
            token = await book.issue(args.user, days=args.days)
            if args.stdout:
                print(token)
            else:
                out = Path(args.out or TMP / f"web-token-{args.user}.txt")
                private_file(out, token + "\n")
                print(f"Token for {args.user} written to {relative(out)} (yours only).")
        elif args.action == "list":
            print(f"{'user':<16} {'id':<12} {'created (UTC)':<17} {'expires (UTC)':<17} state")
            for t in await book.list():
                state = "revoked" if t.revoked else "expired" if t.expires_at < time.time() else ""
                print(
                    f"{t.user:<16} {t.id:<12} {_when(t.created_at)} {_when(t.expires_at)} {state}"
                )
        else:
            count = await book.revoke(args.who)
            print(f"Revoked {count} token{'s' * (count != 1)} of {args.who}.")
            return 0 if count else 1
        return 0
    finally:
        await store.close()


async def users(args: argparse.Namespace) -> int:
    from helpers.web.users import delete_user

    store = await open_web_store(Path(args.data), schema=args.schema)
    try:
        counts = await delete_user(store, args.user)
    finally:
        await store.close()
    print(f"Deleted {args.user}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)).ljust(17)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.web", description=__doc__)
    parser.add_argument(
        "--data", type=Path, default=DATA, help="folder of the SQLite file (tmp/web-data)"
    )
    parser.add_argument("--schema", default="web", help="PostgreSQL: the tables' schema")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", default="", help="local, github or byok (default: local)")
    parser.add_argument("--cli-url", default="", help="host:port of a runtime to use (a sidecar)")
    parser.add_argument("--users", default="alice,bob", help="comma-separated user names")
    parser.add_argument("--drain-s", type=float, default=60.0, help="longest wait for turns")
    parser.add_argument("--instance", default="", help="this instance's stable name")
    parser.add_argument(
        "--lease-ttl-s", type=float, default=30.0, help="how long a stalled turn keeps its lease"
    )
    parser.add_argument(
        "--slow-read-s",
        type=float,
        default=float(os.environ.get("WEB_SLOW_READ_S") or 0),
        help="give conversations a read_file that takes this long, a demo of long turns "
        "(default $WEB_SLOW_READ_S, else none)",
    )
    parser.add_argument(
        "--version-label", default="", help="this instance's code version (default: the package's)"
    )
    parser.add_argument("--tokens-file", type=Path, default=TOKENS, help="where --users' go")
    parser.add_argument(
        "--max-turns", type=int, default=MAX_TURNS, help="turns at once, all users (0: no limit)"
    )
    parser.add_argument("--budget-tokens", type=int, default=0, help="per user per period")
    parser.add_argument("--budget-period-s", type=float, default=86400.0, help="a day")
    parser.add_argument("--rate-turns", type=int, default=0, help="turns per user per minute")
    parser.add_argument("--read-only", default="", help="users on the read-only plan (a,b)")
    parser.add_argument(
        "--traces",
        default="off",
        help="where spans go: off, file:PATH (the runtime's beside it) or otlp:http://HOST:PORT",
    )
    parser.add_argument(
        "--capture-content", action="store_true", help="the runtime's spans carry prompts, replies"
    )
    sub = parser.add_subparsers(dest="command")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", type=Path, default=argparse.SUPPRESS, help="as above")
    common.add_argument("--schema", default=argparse.SUPPRESS, help="as above")
    book = sub.add_parser("tokens", parents=[common], help="issue, list or revoke sign-in tokens")
    actions = book.add_subparsers(dest="action", required=True)
    issue = actions.add_parser("issue", parents=[common], help="a new token for USER")
    issue.add_argument("user")
    issue.add_argument("--days", type=float, default=None, help="valid this long (default 30)")
    issue.add_argument("--out", default="", help="file to write it to (mode 0600)")
    issue.add_argument("--stdout", action="store_true", help="print it instead")
    actions.add_parser("list", parents=[common], help="every token: user, id, times (no token)")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a user's tokens or one")
    revoke.add_argument("who", help="a user name, or a token id from 'tokens list'")
    people = sub.add_parser("users", parents=[common], help="delete a user (usage kept)")
    people_actions = people.add_subparsers(dest="action", required=True)
    delete = people_actions.add_parser(
        "delete", parents=[common], help="their conversations, files, tokens; ledger kept"
    )
    delete.add_argument("user")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "tokens":
        return asyncio.run(tokens(args))
    if args.command == "users":
        return asyncio.run(users(args))
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
