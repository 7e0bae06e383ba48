"""The store's calls, summarised: one span per call the application makes (``store.check_owner``,
``store.try_lease``, ...), never one per SQL statement inside it, and each statement's latency in
the ``db_call_seconds`` histogram. No span carries SQL or its arguments (they hold users' text).

A call made where no span is current (the runtime's session files, arriving through the SDK's own
reader) makes no span of its own, so it never starts a stray trace; its latency is still counted.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from helpers.ops.metrics import Metrics
from helpers.ops.tracing import Tracing

_in_call: contextvars.ContextVar[bool] = contextvars.ContextVar("store_call", default=False)
_SKIP = frozenset({"close", "connect", "create_tables"})
_STATEMENTS = frozenset({"select", "insert", "update", "delete"})


def watch_store(store: Any, tracing: Tracing, metrics: Metrics) -> Any:
    """Wrap ``store``'s coroutine methods in place (the same object, so every holder sees it)."""
    for name in dir(type(store)):
        if name.startswith("_") or name in _SKIP:
            continue
        method = getattr(store, name)
        if not asyncio.iscoroutinefunction(method):
            continue
        if name in ("execute", "transaction"):
            method = _timed(method, name, metrics)
        setattr(store, name, _spanned(method, name, tracing))
    return store


def _spanned(method: Callable[..., Any], name: str, tracing: Tracing) -> Callable[..., Any]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        if _in_call.get() or not trace.get_current_span().get_span_context().is_valid:
            return await method(*args, **kwargs)
        token = _in_call.set(True)
        try:
            with tracing.tracer.start_as_current_span(f"store.{name}"):
                return await method(*args, **kwargs)
        finally:
            _in_call.reset(token)

    return call


def _timed(method: Callable[..., Any], name: str, metrics: Metrics) -> Callable[..., Any]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            metrics.db.labels(_kind(name, args)).observe(time.perf_counter() - started)

    return call


def _kind(name: str, args: tuple[Any, ...]) -> str:
    """A statement's first word (``select``, ``insert``, ... or ``other``), else ``name``."""
    if name != "execute" or not args or not isinstance(args[0], str):
        return name
    word = args[0].lstrip().split(None, 1)[0].lower() if args[0].strip() else ""
    return word if word in _STATEMENTS else "other"
