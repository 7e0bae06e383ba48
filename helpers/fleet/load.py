"""A load of users on the service, as real clients behave: each user sends turns to a conversation
of their own, one after another, each send with an ``Idempotency-Key``; a send that fails (a 503,
a refused connection, a stream cut, an error event) is sent again with the same key until it
succeeds, so a send that did reach the store is not run twice. Every attempt is recorded, and the
stored conversations are read back and checked: no turn lost, none doubled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field

import httpx

REQUEST_S = 30.0  # one attempt's limit (SSE pings keep a stalled stream alive: bound the whole)
RETRY_S = 0.3


@dataclass
class Attempt:
    """One send as the client saw it (times in UNIX seconds)."""

    start: float
    end: float
    user: str
    ok: bool
    why: str = ""  # the failure: a status and code, an error event's code, a cut stream
    first_s: float | None = None  # time to the first event of the reply
    resent: bool = False  # sent again at once: the connection closed before any answer


@dataclass
class Load:
    """``tokens``' users sending turns to ``url`` until ``stop`` is set."""

    url: str
    tokens: dict[str, str] = field(repr=False)
    request_s: float = REQUEST_S
    pause_s: float = 0.0  # each user's pause after a turn served (0: the next at once)
    attempts: list[Attempt] = field(default_factory=list)
    sent: dict[str, list[str]] = field(default_factory=dict)  # user -> texts, in order
    done: dict[str, list[str]] = field(default_factory=dict)  # user -> texts reported done
    conversations: dict[str, str] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    resent: int = 0  # requests sent again at once on a new connection (see ``_send``)
    _stopped_at: float = field(default=float("inf"), repr=False)

    def finish(self) -> None:
        """Ask every user to stop after the send it is making."""
        self._stopped_at = min(self._stopped_at, time.time())
        self.stop.set()

    async def run(self, seconds: float | None = None) -> Load:
        """Run until ``stop`` is set (or for ``seconds``); each user finishes its current send."""
        limits = httpx.Limits(max_connections=len(self.tokens) + 4)
        async with httpx.AsyncClient(base_url=self.url, timeout=self.request_s, limits=limits) as h:
            users = asyncio.gather(*(self._user(h, user) for user in self.tokens))
            if seconds is not None:
                await asyncio.sleep(seconds)
                self.finish()
            await users
        return self

    def failed(self, since: float = 0.0, until: float = float("inf")) -> list[Attempt]:
        return [a for a in self.attempts if not a.ok and since <= a.start <= until]

    def turns(self) -> int:
        return sum(len(v) for v in self.done.values())

    def latencies(self) -> dict[str, float]:
        """Median and p95 of the first event's and the whole reply's time, successes only."""
        ok = [a for a in self.attempts if a.ok]
        whole = sorted(a.end - a.start for a in ok)
        first = sorted(a.first_s for a in ok if a.first_s is not None)
        return {
            "first_p50": _pct(first, 50),
            "first_p95": _pct(first, 95),
            "whole_p50": _pct(whole, 50),
            "whole_p95": _pct(whole, 95),
        }

    async def histories(self) -> dict[str, list[dict[str, str]]]:
        """Each user's stored conversation, read back through ``url``."""
        found = {}
        async with httpx.AsyncClient(base_url=self.url, timeout=self.request_s) as http:
            for user, conversation in self.conversations.items():
                got = await http.get(
                    f"/conversations/{conversation}/messages", headers=self._auth(user)
                )
                got.raise_for_status()
                found[user] = got.json()["messages"]
        return found

    async def check(self) -> dict[str, int]:
        """Lost and doubled turns, from what was sent against what is stored."""
        return check_histories(self.sent, self.done, await self.histories())

    def _auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def _user(self, http: httpx.AsyncClient, user: str) -> None:
        while user not in self.conversations and not self.stop.is_set():
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                made = await http.post("/conversations", headers=self._auth(user))
                if made.status_code == 201:
                    self.conversations[user] = made.json()["id"]
                    break
            await asyncio.sleep(RETRY_S)
        turn = 0
        while not self.stop.is_set():
            turn += 1
            text = f"{user} turn {turn}: reply with one short sentence."
            self.sent.setdefault(user, []).append(text)
            key = uuid.uuid4().hex
            while True:  # the same key until it is served
                attempt = await self._attempt(http, user, text, key)
                self.attempts.append(attempt)
                if attempt.ok:
                    self.done.setdefault(user, []).append(text)
                    with contextlib.suppress(TimeoutError):  # a user reading the reply
                        await asyncio.wait_for(self.stop.wait(), self.pause_s)
                    break
                if self.stop.is_set() and time.time() > self._stopped_at + 2 * self.request_s:
                    return  # given up: the send stays in ``sent``, not in ``done``
                await asyncio.sleep(RETRY_S)

    async def _attempt(self, http: httpx.AsyncClient, user: str, text: str, key: str) -> Attempt:
        began = time.time()
        attempt = Attempt(began, began, user, False)
        try:
            async with asyncio.timeout(self.request_s):
                while await self._send(http, user, text, key, attempt):
                    self.resent += 1  # as browsers do: a kept-alive connection closed unused
        except TimeoutError:
            attempt.why = f"no end in {self.request_s:.0f} s"
        attempt.end = time.time()
        return attempt

    async def _send(
        self, http: httpx.AsyncClient, user: str, text: str, key: str, attempt: Attempt
    ) -> bool:
        """One request; True when the connection closed before any answer (send it again)."""
        path = f"/conversations/{self.conversations[user]}/messages"
        headers = {**self._auth(user), "Idempotency-Key": key}
        try:
            async with http.stream("POST", path, json={"text": text}, headers=headers) as response:
                if response.status_code != 200:
                    body = await response.aread()
                    with contextlib.suppress(ValueError):
                        body = json.loads(body).get("error", "").encode()
                    attempt.why = f"{response.status_code} {body.decode(errors='replace')[:40]}"
                    return False
                last = ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        last = line.split(":", 1)[1].strip()
                        if attempt.first_s is None:
                            attempt.first_s = time.time() - attempt.start
                    elif line.startswith("data:") and last == "error":
                        attempt.why = "error event: " + json.loads(line[5:]).get("error", "")
                        return False
                attempt.ok = last == "message"
                attempt.why = "" if attempt.ok else "stream cut"
        except httpx.ConnectError:
            attempt.why = "connection refused"
        except httpx.RemoteProtocolError as exc:
            if "without sending a response" in str(exc) and not attempt.resent:
                attempt.resent = True  # a proxy's idle connection closed as we used it (reload)
                return True
            attempt.why = f"stream cut ({type(exc).__name__})"
        except httpx.HTTPError as exc:
            attempt.why = f"stream cut ({type(exc).__name__})"
        return False


def check_histories(
    sent: dict[str, list[str]],
    done: dict[str, list[str]],
    histories: dict[str, list[dict[str, str]]],
) -> dict[str, int]:
    """Lost: a send reported done with no answered turn stored. Doubled: one message answered
    more than once. Cut: a message stored without its reply (a killed instance's; the retry with
    its key answers it as a turn of its own, so it is not lost)."""
    lost = doubled = cut = 0
    for user in sent:
        messages = histories.get(user, [])
        nexts = [*messages[1:], {"role": "end", "text": ""}]
        answered = [
            m["text"]
            for m, n in zip(messages, nexts, strict=True)
            if m["role"] == "user" and n["role"] == "assistant"
        ]
        said = [m["text"] for m in messages if m["role"] == "user"]
        doubled += sum(answered.count(t) - 1 for t in set(answered))
        cut += len(said) - len(answered)
        lost += sum(1 for t in done.get(user, []) if t not in answered)
    return {"lost": lost, "doubled": doubled, "cut": cut}


def _pct(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]
