"""Exported traces read back: the service's spans and the runtime's (JSON-lines files, one span a
line, as ``helpers.ops.tracing`` and the runtime's file exporter write them) as rows; one trace as
a tree; a waterfall of it (a PNG under ``tmp/``); and where time goes per kind of span."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HASH = re.compile(r"\b[0-9a-f]{32,}\b")  # the runtime names a tool's spans by a hash of it
SERVER = 1  # the OTel span kind of an HTTP request's span (the same number in Python and JS)


@dataclass
class Span:
    """One span: ids in hex, times in seconds since the epoch, its attributes and service."""

    trace: str
    span: str
    parent: str | None
    name: str
    kind: int
    start: float
    end: float
    attributes: dict[str, Any] = field(default_factory=dict)
    service: str = ""

    @property
    def ms(self) -> float:
        return 1000 * (self.end - self.start)

    @property
    def what(self) -> str:
        """The kind of work: ``http``, ``app.lock``, ``store``, ``invoke_agent``, ``chat``, ..."""
        operation = self.attributes.get("gen_ai.operation.name")
        if operation:
            return str(operation)
        if self.kind == SERVER:
            return "http"
        if self.name.startswith("session.timing."):
            return "runtime.timing"
        if self.name.startswith("session."):
            return "runtime.session"
        if self.name.startswith("store."):
            return "store"
        if self.name.startswith("external_tool "):  # the runtime names it by a hash of the tool
            return "external_tool"
        return self.name


def load_spans(*paths: str | Path) -> list[Span]:
    """Every span in the JSON-lines files ``paths`` (missing files and other lines skipped)."""
    rows = []
    for path in paths:
        if not Path(path).exists():
            continue
        with Path(path).open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    item = json.loads(line)
                except ValueError:  # a line cut by a process that was killed while writing
                    continue
                if isinstance(item, dict) and item.get("type") == "span":
                    rows.append(_row(item))
    return rows


def _row(item: dict[str, Any]) -> Span:
    def seconds(at: Any) -> float:
        return at[0] + at[1] / 1e9 if isinstance(at, list) else float(at or 0)

    resource = (item.get("resource") or {}).get("attributes") or {}
    return Span(
        trace=item["traceId"],
        span=item["spanId"],
        parent=item.get("parentSpanId") or None,
        name=item.get("name", ""),
        kind=int(item.get("kind") or 0),
        start=seconds(item.get("startTime")),
        end=seconds(item.get("endTime")),
        attributes=item.get("attributes") or {},
        service=str(resource.get("service.name", "")),
    )


async def exported(tracing: Any, trace_ids: Iterable[str], timeout_s: float = 20.0) -> list[Span]:
    """Every span ``tracing`` (a ``helpers.ops.tracing.Tracing``) and its runtime exported so far,
    once each of ``trace_ids`` has its HTTP span and the runtime's ``invoke_agent`` (or the
    timeout passed: then what there is)."""
    wanted, target = set(trace_ids), tracing.target
    deadline = time.monotonic() + timeout_s
    while True:
        await asyncio.to_thread(tracing.flush, 5.0)
        rows = load_spans(target.where, target.runtime_file)
        agents = {r.trace for r in rows if r.what == "invoke_agent"}
        requests = {r.trace for r in rows if r.what == "http"}
        if wanted <= agents & requests or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


def one_trace(rows: Iterable[Span], trace_id: str) -> list[Span]:
    """The spans of ``trace_id``, in start order."""
    return sorted((r for r in rows if r.trace == trace_id), key=lambda r: (r.start, r.name))


def roots(rows: Iterable[Span]) -> list[Span]:
    """Spans whose parent is not among ``rows`` (one per trace when all of it was exported)."""
    rows = list(rows)
    ids = {r.span for r in rows}
    return [r for r in rows if r.parent not in ids]


def descendants(rows: Iterable[Span], span_id: str) -> list[Span]:
    """Every span under ``span_id``, at any depth."""
    children: dict[str | None, list[Span]] = {}
    for r in rows:
        children.setdefault(r.parent, []).append(r)
    found, todo = [], [span_id]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.span)
    return found


def depths(rows: list[Span]) -> dict[str, int]:
    """Each span's depth in its tree (a root is 0)."""
    by_id = {r.span: r for r in rows}

    def depth(r: Span) -> int:
        seen = 0
        while r.parent in by_id and seen < 100:
            r, seen = by_id[r.parent], seen + 1  # type: ignore[index]
        return seen

    return {r.span: depth(r) for r in rows}


def waterfall(rows: list[Span], path: str | Path | None = None, timing: bool = False) -> Any:
    """Draw one trace as a waterfall (a bar per span, indented by depth) and save it to ``path``.

    Args:
        rows: One trace's spans (``one_trace``).
        path: Where to save the PNG (under ``tmp/``); ``None``: only return the figure.
        timing: Also draw the runtime's ``session.timing.*`` phases (about 34 a turn).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    shown = [r for r in rows if timing or r.what != "runtime.timing"]
    level = depths(shown)
    order = _tree_order(shown)
    t0 = min(r.start for r in shown)
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(order) + 1.2))
    colours = {"copilot-runtime": "tab:orange"}
    for y, r in enumerate(order):
        ax.barh(y, r.ms, left=1000 * (r.start - t0), color=colours.get(r.service, "tab:blue"))
        label = "  " * level[r.span] + _HASH.sub(lambda m: m.group()[:8] + "…", r.name)
        ax.text(1000 * (r.end - t0), y, f" {label} {r.ms:.1f} ms", va="center", fontsize=7)
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds since the request began (blue: the service, orange: the runtime)")
    ax.set_title(f"trace {rows[0].trace[:16]}…", fontsize=9)
    ax.margins(x=0.35)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def _tree_order(rows: list[Span]) -> list[Span]:
    children: dict[str | None, list[Span]] = {}
    for r in rows:
        children.setdefault(r.parent, []).append(r)
    ordered: list[Span] = []

    def walk(r: Span) -> None:
        ordered.append(r)
        for child in sorted(children.get(r.span, []), key=lambda c: c.start):
            walk(child)

    for root in sorted(roots(rows), key=lambda r: r.start):
        walk(root)
    return ordered


def time_by_kind(rows: Iterable[Span], timing: bool = False) -> list[dict[str, Any]]:
    """Where time goes over many requests: per kind of span, how many, median, p95 and total ms.

    The shares are of the HTTP requests' own total (spans nest, so they do not add up to 100%).
    """
    groups: dict[str, list[float]] = {}
    for r in rows:
        if timing or r.what != "runtime.timing":
            groups.setdefault(r.what, []).append(r.ms)
    whole = sum(groups.get("http", [])) or 1.0
    table = []
    for what, ms in sorted(groups.items(), key=lambda item: -sum(item[1])):
        ms.sort()
        table.append(
            {
                "kind": what,
                "spans": len(ms),
                "median ms": round(statistics.median(ms), 2),
                "p95 ms": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 2),
                "total ms": round(sum(ms), 1),
                "share of HTTP": f"{sum(ms) / whole:.0%}",
            }
        )
    return table
