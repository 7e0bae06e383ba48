"""Traces of the web service: where they go (``off``, ``file:PATH``, ``otlp:URL``), its own
spans (the HTTP request, then ownership, lock, lease, store, session, turn, settle) and the
runtime's, told through its environment to export into the same traces.

The SDK sends W3C ``traceparent`` with ``create_session``, ``resume_session`` and ``session.send``
whenever a span is current (``copilot/_telemetry.py``), so the runtime's ``invoke_agent``, ``chat``
and ``execute_tool`` spans land under the span that made the call. Spans leave through a
``BatchSpanProcessor``: a bounded queue and a worker thread, so an exporter that is slow or down
drops spans, never a request. No span carries a prompt, a reply, a token or SQL: only names, ids
and timings (``capture_content`` turns on the runtime's own content capture, nothing of ours).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SERVICE_NAME = "copilot-web"
RUNTIME_SERVICE_NAME = "copilot-runtime"
EXPORT_TIMEOUT_S = 2.0  # one export attempt to an OTLP endpoint; the queue absorbs the rest
QUEUE_SPANS = 4096  # spans waiting for export at most; past that new ones are dropped
# Everything in the runtime's environment that decides its telemetry (``copilot help monitoring``).
RUNTIME_OTEL_VARS = (
    "COPILOT_OTEL_ENABLED",
    "COPILOT_OTEL_EXPORTER_TYPE",
    "COPILOT_OTEL_FILE_EXPORTER_PATH",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
    "OTEL_BSP_SCHEDULE_DELAY",
)
NO_HEADERS: list[str] = []  # request and response headers never go into a span (bearer tokens)


@dataclass(frozen=True)
class Target:
    """Where spans go: ``kind`` ``off``, ``file`` (a JSON-lines path) or ``otlp`` (a base URL)."""

    kind: str = "off"
    where: str = ""

    @classmethod
    def parse(cls, text: str) -> Target:
        """``off`` (or empty), ``file:PATH`` or ``otlp:URL`` (``http://127.0.0.1:4318``)."""
        kind, _, where = (text or "off").partition(":")
        if kind == "off" and not where:
            return cls()
        if kind == "file" and where:
            return cls("file", str(Path(where).resolve()))
        if kind == "otlp" and where.startswith(("http://", "https://")):
            return cls("otlp", where.rstrip("/"))
        raise ValueError(f"traces {text!r}: use off, file:PATH or otlp:http://HOST:PORT")

    @property
    def runtime_file(self) -> Path:
        """The runtime's own JSON-lines file beside ours: ``web.jsonl`` -> ``web-runtime.jsonl``."""
        path = Path(self.where)
        return path.with_name(f"{path.stem}-runtime{path.suffix or '.jsonl'}")


class JsonLinesExporter(SpanExporter):
    """Each span as one JSON line, in the shape the runtime's file exporter writes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_row(s), separators=(",", ":")) + "\n" for s in spans)
        try:
            with self._lock, self.path.open("a", encoding="utf-8") as out:
                out.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_row(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as the runtime's file exporter writes it (ids in hex, times [s, ns])."""
    context, parent = span.get_span_context(), span.parent
    return {
        "type": "span",
        "traceId": format(context.trace_id, "032x"),
        "spanId": format(context.span_id, "016x"),
        "parentSpanId": format(parent.span_id, "016x") if parent else None,
        "name": span.name,
        "kind": span.kind.value,
        "startTime": list(divmod(span.start_time or 0, 1_000_000_000)),
        "endTime": list(divmod(span.end_time or 0, 1_000_000_000)),
        "attributes": dict(span.attributes or {}),
        "status": {"code": span.status.status_code.value},
        "resource": {"attributes": dict(span.resource.attributes)},
        "instrumentationScope": {"name": getattr(span.instrumentation_scope, "name", "")},
    }


class Tracing:
    """The service's tracer (a no-op when off), its exporter, and the runtime's telemetry env."""

    def __init__(self, target: Target, capture_content: bool = False, instance: str = "") -> None:
        self.target, self.capture_content = target, capture_content
        self.instance = instance or f"pid-{os.getpid()}"
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer = trace.NoOpTracer()
        if target.kind == "off":
            return
        resource = Resource.create(
            {"service.name": SERVICE_NAME, "service.instance.id": self.instance}
        )
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(
            BatchSpanProcessor(
                self._exporter(),
                max_queue_size=QUEUE_SPANS,
                schedule_delay_millis=500,
                export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
            )
        )
        self.tracer = self.provider.get_tracer("helpers.web")

    @property
    def on(self) -> bool:
        return self.provider is not None

    def _exporter(self) -> SpanExporter:
        if self.target.kind == "file":
            return JsonLinesExporter(self.target.where)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(
            endpoint=f"{self.target.where}/v1/traces", timeout=EXPORT_TIMEOUT_S, headers={}
        )

    def runtime_env(self) -> dict[str, str | None]:
        """The runtime's telemetry variables for this target (``None``: keep the name out)."""
        env: dict[str, str | None] = dict.fromkeys(RUNTIME_OTEL_VARS)
        if self.target.kind == "off":
            return env
        env.update(
            COPILOT_OTEL_ENABLED="true",
            OTEL_SERVICE_NAME=RUNTIME_SERVICE_NAME,
            OTEL_RESOURCE_ATTRIBUTES=f"service.instance.id={self.instance}",
            OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=str(self.capture_content).lower(),
        )
        if self.target.kind == "file":
            env.update(
                COPILOT_OTEL_EXPORTER_TYPE="file",
                COPILOT_OTEL_FILE_EXPORTER_PATH=str(self.target.runtime_file),
            )
        else:
            env["COPILOT_OTEL_EXPORTER_TYPE"] = "otlp-http"
            env["OTEL_BSP_SCHEDULE_DELAY"] = "500"
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.target.where
        return env

    def instrument(self, app: Any) -> None:
        """Trace every request of ``app`` (a server span per request, named by its route) and
        answer each with ``X-Trace-Id``; nothing at all when tracing is off."""
        if not self.on:
            return
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        app.add_middleware(TraceIdHeader)
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            excluded_urls="/metrics,/health",
            exclude_spans=["receive", "send"],  # not one span per SSE event
            http_capture_headers_server_request=NO_HEADERS,
            http_capture_headers_server_response=NO_HEADERS,
            http_capture_headers_sanitize_fields=[".*"],
        )

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
        """A span of the application's work under the current one (``app.<name>``)."""
        return self.tracer.start_as_current_span(f"app.{name}", attributes=attributes)

    @contextlib.asynccontextmanager
    async def step(
        self, name: str, held: contextlib.AbstractAsyncContextManager[Any]
    ) -> AsyncIterator[Any]:
        """Enter ``held`` (a lock, a lease) inside span ``name``: the span is the wait to get it."""
        async with contextlib.AsyncExitStack() as stack:
            with self.span(name):
                value = await stack.enter_async_context(held)
            yield value

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export what is queued now (tests and notebooks read the file after this)."""
        return self.provider.force_flush(int(timeout_s * 1000)) if self.provider else True

    def shutdown(self) -> None:
        """Flush and stop the exporter's thread (bounded by the export timeout)."""
        if self.provider is not None:
            self.provider.shutdown()


def trace_id() -> str:
    """The current trace's id (32 hex digits), or ``""`` when nothing is traced."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def note(**values: Any) -> None:
    """Set ``values`` on the current span (nothing when none is recording)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(values)


class TraceIdHeader:
    """Answer every traced request with ``X-Trace-Id``: a complaint then leads to its trace."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = trace_id() if scope["type"] == "http" else ""
        if not found:
            await self.app(scope, receive, send)
            return

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), _header(found)]}
            await send(message)

        await self.app(scope, receive, with_id)


def _header(value: str) -> tuple[bytes, bytes]:
    return (b"x-trace-id", value.encode())
