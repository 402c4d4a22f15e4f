"""Trace context helpers: the W3C `traceparent` that travels in CloudEvents and headers.

Library code only reads and writes context through the OpenTelemetry API; the SDK is
configured once per process by the service entry points (`configure_tracing`). Finished
spans go to local JSON-lines files (`LocalSpanExporter`, read by `incidents traces
show`) and, when configured, over OTLP; attributes that could identify a client are
stripped before either sees them (`scrubbed_attributes`).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from services.infra.settings import CommonSettings

_PROPAGATOR = TraceContextTextMapPropagator()


def current_traceparent() -> str | None:
    """The traceparent of the active span, or None when nothing is being traced."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None) -> context.Context:
    """An OpenTelemetry context continuing a remote parent (empty if none)."""
    if not traceparent:
        return context.Context()
    return _PROPAGATOR.extract({"traceparent": traceparent})


@contextlib.contextmanager
def span_after(
    name: str,
    traceparent: str | None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    **attributes: str | int,
) -> Iterator[trace.Span]:
    """A span continuing the trace a `traceparent` names (a new trace when it is None)."""
    with tracer.start_as_current_span(
        name, context=context_from_traceparent(traceparent), kind=kind, attributes=attributes
    ) as span:
        yield span


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id inside a traceparent, if any."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


IDENTIFYING_ATTRIBUTES: Final = frozenset(
    {
        "client.address",
        "client.port",
        "net.peer.ip",
        "net.peer.name",
        "net.peer.port",
        "net.sock.peer.addr",
        "net.sock.peer.port",
        "network.peer.address",
        "network.peer.port",
        "http.client_ip",
        "http.user_agent",
        "user_agent.original",
        "enduser.id",
    }
)
"""Span attributes that could identify a client; never exported."""

_IDENTIFYING_PREFIXES: Final = ("http.request.header.", "http.response.header.")
_BEARER = re.compile(r"(?i)\bbearer\s+\S+")


def scrubbed_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attributes without those that could identify a client.

    Drops `IDENTIFYING_ATTRIBUTES`, captured headers and every value that names a
    receipt URL (`/receipts/...`), and masks bearer tokens in the rest. The
    instrumentation is off on anonymous routes; this is the second line of defence.
    """
    kept: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        if key in IDENTIFYING_ATTRIBUTES or key.startswith(_IDENTIFYING_PREFIXES):
            continue
        if isinstance(value, str):
            if "/receipts/" in value.lower():
                continue
            value = _BEARER.sub("Bearer [redacted]", value)
        elif isinstance(value, tuple | list):
            if any(isinstance(v, str) and "/receipts/" in v.lower() for v in value):
                continue
            value = list(value)
        kept[key] = value
    return kept


def scrubbed(span: ReadableSpan) -> ReadableSpan:
    """A copy of a finished span with `scrubbed_attributes` (its events' too)."""
    from opentelemetry.sdk.trace import Event, ReadableSpan

    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=scrubbed_attributes(span.attributes),
        events=[Event(e.name, scrubbed_attributes(e.attributes), e.timestamp) for e in span.events],
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ScrubbingExporter:
    """Wraps a span exporter (OTLP) so that it only ever sees `scrubbed` spans."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([scrubbed(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def span_record(span: ReadableSpan, service: str = "unknown_service") -> dict[str, Any]:
    """One finished span as an OTLP-JSON-like object (ids in hex, times in unix ns)."""
    context = span.context
    resource = span.resource.attributes if span.resource is not None else {}
    return {
        "trace_id": format(context.trace_id, "032x") if context else None,
        "span_id": format(context.span_id, "016x") if context else None,
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": span.status.status_code.name,
        "attributes": scrubbed_attributes(span.attributes),
        "service.name": str(resource.get("service.name") or service),
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else None,
    }


def _background_statement(span: ReadableSpan) -> bool:
    """A database statement outside any trace (polls, metrics): a root with no children."""
    scope = span.instrumentation_scope.name if span.instrumentation_scope else ""
    return span.parent is None and scope.endswith(".asyncpg")


class LocalSpanExporter:
    """Appends finished spans to `<directory>/<service>.jsonl`, one JSON object a line.

    For `incidents traces show` on a laptop: no collector, no extra install. Database
    statements that belong to no trace (the relay's and the schedulers' polls) are not
    kept: each would be a trace of one span, many a second. When the file would grow
    past `max_bytes` it is rotated to `<service>.1.jsonl` (replacing the previous one),
    so at most twice the limit is kept per service. Files are private to the user
    (0600, in a 0700 folder).
    """

    def __init__(self, directory: Path, service: str, *, max_bytes: int = 64 * 1024 * 1024):
        self.directory = Path(directory).expanduser()
        self.service = service
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", service) or "service"
        self.path = self.directory / f"{stem}.jsonl"
        self.rotated = self.directory / f"{stem}.1.jsonl"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult

        if self._closed:
            return SpanExportResult.FAILURE
        data = b"".join(
            orjson.dumps(span_record(s, self.service), default=str) + b"\n"
            for s in spans
            if not _background_statement(s)
        )
        if not data:
            return SpanExportResult.SUCCESS
        try:
            with self._lock:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    if self.path.stat().st_size + len(data) > self.max_bytes:
                        os.replace(self.path, self.rotated)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, data)  # one write per batch: whole lines, appended
                finally:
                    os.close(fd)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._closed = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def local_span_processor(directory: Path, service: str, *, max_bytes: int) -> SpanProcessor:
    """A batch processor writing to a `LocalSpanExporter` (every 0.2 s by default).

    Small, frequent batches: the export thread holds the GIL while it encodes a batch,
    and a request waiting behind a batch of 512 spans showed as tail latency (intake's
    p99 at 70 % of its rate: 100-200 ms with 512-span batches, 31 ms without the file).
    """
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    delay = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else 200
    size = None if os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") else 64
    return BatchSpanProcessor(
        LocalSpanExporter(directory, service, max_bytes=max_bytes),  # type: ignore[arg-type]
        schedule_delay_millis=delay,
        max_export_batch_size=size,
    )


_configured = False


def configure_tracing(service_name: str, settings: CommonSettings | None = None) -> None:
    """Install the SDK tracer provider for this process (entry points only; once).

    Spans go to the local span files (`traces_local`, `traces_dir`) for `incidents
    traces show`, and over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and the
    exporter package is installed. Either way they are created, so trace ids exist and
    travel with every event. Both exporters only see scrubbed spans.
    """
    global _configured
    if _configured:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    if settings is None:
        from services.infra.settings import CommonSettings

        settings = CommonSettings()
    service = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if settings.traces_local:
        provider.add_span_processor(
            local_span_processor(settings.traces_dir, service, max_bytes=settings.traces_max_bytes)
        )
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(
                BatchSpanProcessor(ScrubbingExporter(OTLPSpanExporter()))  # type: ignore[arg-type]
            )
        except ImportError:  # the exporter is an optional extra
            pass
    trace.set_tracer_provider(provider)
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    AsyncPGInstrumentor().instrument()
    _configured = True


tracer = trace.get_tracer("incidents")
