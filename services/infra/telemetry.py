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
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
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
        data = b"".join(self.line(s) for s in spans)
        ok = self.write(data)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def line(self, span: ReadableSpan) -> bytes:
        """One span as its line of the file (empty for a span that is not kept)."""
        if _background_statement(span):
            return b""
        return orjson.dumps(span_record(span, self.service), default=str) + b"\n"

    def write(self, data: bytes) -> bool:
        """Append whole lines to the file (rotating it first if it would grow too big)."""
        if not data:
            return True
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
            return False
        return True

    def shutdown(self) -> None:
        self._closed = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class LocalSpanProcessor(SpanProcessor):
    """Writes finished spans to a `LocalSpanExporter`'s file: encoded as they end, written
    by a small thread every `interval` seconds.

    Not the SDK's `BatchSpanProcessor`: its thread encodes a whole batch while holding
    the GIL, and the event loop, woken meanwhile by a socket, waits for it (the switch
    interval is 5 ms). That wait was intake's tail latency: p99 at 350 reports/s paced,
    50-60 ms with the batch thread, 24-26 ms with no span file, 12-19 ms with no spans
    at all. Here the thread that ends a span pays for its line (a few µs of orjson),
    and the writer thread only joins bytes and calls ``write``, which lets the GIL go.
    At most `max_buffered` bytes wait: beyond that lines are dropped and counted
    (`dropped`), as a batch processor drops spans when its queue is full.
    """

    def __init__(
        self,
        exporter: LocalSpanExporter,
        *,
        interval: float = 0.2,
        max_buffered: int = 8 * 1024 * 1024,
    ) -> None:
        self.exporter = exporter
        self.interval = interval
        self.max_buffered = max_buffered
        self.dropped = 0
        self._lines: list[bytes] = []
        self._size = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._run, name="span-file-writer", daemon=True)
        self._writer.start()

    def on_end(self, span: ReadableSpan) -> None:
        line = self.exporter.line(span)
        if not line:
            return
        with self._lock:
            if self._size + len(line) > self.max_buffered:
                self.dropped += 1
                return
            self._lines.append(line)
            self._size += len(line)

    def _take(self) -> bytes:
        with self._lock:
            lines, self._lines, self._size = self._lines, [], 0
        return b"".join(lines)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.exporter.write(self._take())

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.write(self._take())

    def shutdown(self) -> None:
        self._stop.set()
        self._writer.join(timeout=5)
        self.exporter.write(self._take())
        self.exporter.shutdown()


def local_span_processor(directory: Path, service: str, *, max_bytes: int) -> SpanProcessor:
    """The processor that keeps a service's spans in `<directory>/<service>.jsonl`."""
    exporter = LocalSpanExporter(directory, service, max_bytes=max_bytes)
    return LocalSpanProcessor(exporter)


class NoRootStatements:
    """Sampler: a database statement that starts a trace (a poll of the relay or of a
    scheduler, a metrics query) is not recorded at all; every other span is.

    Such a statement would be a trace of one span, many a second: not worth the
    microseconds of recording it only for `LocalSpanExporter` to drop it. Used as the
    root sampler of `ParentBased`, so a statement inside a traced request still is.
    """

    _KEYS = ("db.system", "db.system.name")

    def should_sample(
        self,
        parent_context: context.Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> Any:
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

        if attributes and any(key in attributes for key in self._KEYS):
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "NoRootStatements"


def default_sampler() -> Any:
    """`ParentBased(NoRootStatements())`; None (the SDK reads it) when OTEL_TRACES_SAMPLER
    names another."""
    from opentelemetry.sdk.trace.sampling import ParentBased

    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None
    return ParentBased(NoRootStatements())  # type: ignore[arg-type]


def otlp_span_processor(exporter: SpanExporter) -> SpanProcessor:
    """The SDK's batch processor over a `ScrubbingExporter`, in small batches.

    Its thread encodes a whole batch while holding the GIL, and the event loop waits
    meanwhile (see `LocalSpanProcessor`): batches of 64 spans every 0.2 s (unless
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE / OTEL_BSP_SCHEDULE_DELAY say otherwise) keep each
    wait short; the SDK's 512 made intake's p99 two to three times what 64 did.
    """
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    delay = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else 200
    size = None if os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") else 64
    return BatchSpanProcessor(
        ScrubbingExporter(exporter),  # type: ignore[arg-type]
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
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), sampler=default_sampler()
    )
    if settings.traces_local:
        provider.add_span_processor(
            local_span_processor(settings.traces_dir, service, max_bytes=settings.traces_max_bytes)
        )
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            provider.add_span_processor(otlp_span_processor(OTLPSpanExporter()))
        except ImportError:  # the exporter is an optional extra
            pass
    trace.set_tracer_provider(provider)
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    _configured = True


tracer = trace.get_tracer("incidents")
