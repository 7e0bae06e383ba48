"""What every part of the web service shares: its settings, its state, and what every request
checks first (draining, the runtime, a user's turns, the database, the owner)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copilot import CopilotClient
from copilot.session import CopilotSession
from copilot.tools import Tool

from helpers.errors import Draining, NotYourSession, RuntimeDown, StoreDown, TooManyTurns
from helpers.model.backends import Backend
from helpers.ops.metrics import Metrics
from helpers.ops.tracing import Target, Tracing
from helpers.runtime.server import RuntimeServer
from helpers.serving.credentials import UserTokens
from helpers.serving.drain import Drain
from helpers.serving.locks import SessionLocks
from helpers.serving.pool import SessionPool
from helpers.store.base import SessionStore
from helpers.web.auth import TokenBook
from helpers.web.budgets import overloaded
from helpers.web.outcomes import KeyReused
from helpers.web.turns import Turn

DISCONNECT_S = 10.0  # how long closing a conversation's session may take
STORE_CHECK_S = 5.0  # a backstop: the store's own timeouts answer within about 3 s
log = logging.getLogger(__name__)


@dataclass
class Settings:
    """What the service allows and how it behaves; every wait has a limit."""

    backend: str = ""
    cli_url: str = ""
    turn_timeout_s: float = 120.0
    turns_per_user: int = 2
    pool_size: int = 2
    lease_ttl_s: float = 30.0  # renewed every third of it while a turn runs
    max_message_chars: int = 16_000
    max_body_bytes: int = 64 * 1024
    request_arrival_s: float = 10.0  # the longest a request's headers and body may take to arrive
    drain_timeout_s: float = 60.0
    orphan_age_s: float = 600.0
    supervise_every_s: float = 0.5
    heartbeat_s: float = 1.0  # how often this instance says it is alive (``web_instances``)
    dead_after_s: float = 5.0  # an instance not seen for this long is dead: its leases are freed
    stop_poll_s: float = 0.1  # how often running turns look for stop requests (PG: NOTIFY too)
    version_label: str = ""  # this instance's code version ("": the package's version)
    abort_abandoned: bool = True
    lock_turns: bool = True
    lease_turns: bool = True
    restart_runtime: bool = True
    schema: str = "web"  # PostgreSQL only: the schema of this service's tables
    data: str = ""  # the folder of the SQLite file and the instance id ("": the service's folder)
    instance: str = ""  # this instance's stable name ("": made once, kept in the data folder)
    token_days: float = 30.0  # how long a sign-in token is valid
    metering: bool = True  # the ledger, the tool policy and audit, budgets and rates (usage.py)
    budget_tokens: int = 0  # tokens per user per period (0: no budget)
    budget_period_s: float = 86400.0
    budget_hold_tokens: int = 1000  # held per running turn: a turn starts only if these fit
    rate_turns: int = 0  # turns per user per rate window (0: no rate)
    rate_window_s: float = 60.0
    max_turns: int = 0  # turns at once on this instance, all users (0: no limit)
    plans: dict[str, str] = field(default_factory=dict)  # user -> plan ("read-only", ...)
    reconcile_every_s: float = 300.0  # ledger against the runtime's: first resume, then this
    traces: str = "off"  # where spans go: off, file:PATH or otlp:URL (helpers.ops.tracing)
    capture_content: bool = False  # the runtime's spans carry prompts and replies (ours never)
    operator_token: str = field(  # /metrics is a route unknown to anyone without it
        default_factory=lambda: os.environ.get("WEB_OPERATOR_TOKEN", ""), repr=False
    )


class Checks:
    """The service's state (runtime, client, store, tokens, locks, pool, drain) and its checks."""

    def __init__(
        self,
        folder: Path,
        settings: Settings | None = None,
        tokens: TokenBook | None = None,
        tools: list[Tool] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.conversation_tools = list(tools or [])  # the tools a conversation's model may call
        self.settings = settings or Settings()
        self.tokens = tokens or TokenBook(self.settings.token_days)
        self.locks = SessionLocks()
        self.gate = Drain()
        self.github_tokens: UserTokens | None = None
        self.data = Path(self.settings.data) if self.settings.data else self.folder
        target = Target.parse(self.settings.traces)
        self.tracing = Tracing(target, self.settings.capture_content, self.settings.instance)
        self.metrics = Metrics()
        self.holder = f"web-{self.settings.instance}"  # made stable in ``start`` when unset
        self.freed = 0  # leases of this instance's previous process given back at start
        self._instance_lock = -1  # a file locked while this instance runs (one process per name)
        self.restarts = 0
        self._running: dict[str, int] = {}
        self._turns: set[Turn] = set()
        self._leased: dict[str, Turn] = {}  # lease holder -> its turn, while the turn runs here
        self._stopped: set[str] = set()  # holders whose stop request was taken (rows to delete)
        self._wake = asyncio.Event()  # a stop request may be waiting: look now
        self._asking: dict[str, str] = {}  # session id -> user, asks made outside the pool
        self.backend: Backend
        self.server: RuntimeServer
        self.store: SessionStore
        self.client: CopilotClient
        self.pool: SessionPool
        self._supervisor: asyncio.Task[None] | None = None

    def runtime_problem(self) -> str | None:
        """Why the runtime cannot serve now, or ``None`` when it can."""
        if self.server.owned and not self.server.running:
            return f"the Copilot runtime at {self.server.url} is down (its process exited)"
        gone = getattr(self.client, "_runtime_gone", None)
        return gone or None

    def begin(self, user: str) -> None:
        """Count one more turn of ``user``, or refuse (draining, runtime down, too many)."""
        if not self.gate.accepting:
            raise Draining("this instance is shutting down: try again in a moment")
        if problem := self.runtime_problem():
            raise RuntimeDown(f"{problem}; try again in a moment")
        if self.settings.max_turns and self.running() >= self.settings.max_turns:
            raise overloaded(self.running(), self.settings.max_turns)  # all users together
        if self._running.get(user, 0) >= self.settings.turns_per_user:
            raise TooManyTurns(
                f"User {user} already has {self.settings.turns_per_user} turns running: "
                "wait for one to end"
            )
        self._running[user] = self._running.get(user, 0) + 1

    def _end(self, user: str) -> None:
        self._running[user] -= 1
        if not self._running[user]:
            del self._running[user]

    def running(self, user: str | None = None) -> int:
        """Turns running now (of ``user``, or of everyone)."""
        return self._running.get(user, 0) if user else sum(self._running.values())

    async def check_store(self) -> None:
        """``StoreDown`` unless the database answers (a turn would not be stored)."""
        try:  # the store bounds its own calls (a few seconds); this is a backstop
            await asyncio.wait_for(self.store.execute("SELECT 1"), STORE_CHECK_S)
        except Exception as exc:
            log.warning("the database (%s) did not answer: %r", self.store.describe(), exc)
            raise StoreDown(
                f"the database did not answer ({type(exc).__name__}): try again in a moment"
            ) from None

    async def check_owner(self, user: str, conversation: str) -> None:
        """``NotYourSession`` unless ``user`` owns ``conversation`` (same for unknown ids)."""
        with self.tracing.span("ownership"):
            await self._stored(self.store.check_owner(user, conversation))

    def per_user_credentials(self) -> bool:
        """Whether each user's sessions run on their own GitHub token (notebook 03)."""
        return self.github_tokens is not None and self.backend.name == "github"

    def _model_kwargs(self, user: str) -> dict[str, Any]:
        kwargs = self.backend.session_kwargs()
        if self.github_tokens is not None and self.per_user_credentials():
            kwargs.update(self.github_tokens.session_kwargs(user))
        return kwargs

    async def _stored(self, work: Any) -> Any:
        """Await a store call; a database that does not answer is ``StoreDown`` (503)."""
        try:
            return await work
        except (NotYourSession, KeyReused):  # the store's answer, not its failure
            raise
        except Exception as exc:
            raise StoreDown(f"the database did not answer ({type(exc).__name__})") from exc

    async def after_resume(self, user: str, conversation: str, session: CopilotSession) -> None:
        """What to do with a resumed session before its turn (metering reconciles)."""

    def tool_hooks(self, user_of: Callable[[str], str | None]) -> dict[str, Any] | None:
        """The hooks of a session whose user ``user_of(session_id)`` names (none here)."""
        return None

    def _track(self, turn: Turn, user: str = "") -> Turn:
        self._turns.add(turn)
        turn.task.add_done_callback(lambda _: self._turns.discard(turn))
        turn.task.add_done_callback(lambda _: self.metrics.turn_ended(turn.result.error))
        return turn
