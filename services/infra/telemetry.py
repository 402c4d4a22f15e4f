"""Trace context helpers: the W3C `traceparent` that travels in CloudEvents and headers.

Library code only reads and writes context through the OpenTelemetry API; the SDK is
configured once per process by the service entry points (`configure_tracing`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

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


def configure_tracing(service_name: str) -> None:
    """Install the SDK tracer provider for this process (entry points only).

    Spans are exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and the
    exporter package is installed; otherwise they are still created, so trace ids
    exist and travel with every event.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}
        )
    )
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        except ImportError:  # the exporter is an optional extra
            pass
    trace.set_tracer_provider(provider)
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    AsyncPGInstrumentor().instrument()


tracer = trace.get_tracer("incidents")
