"""JSON logs (shape, trace context, redaction) and the local span files they sit beside."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.infra.logging import (
    IncidentBinding,
    bind_incident,
    configure_logging,
    json_lines,
    redact,
    redact_text,
    unconfigure_logging,
)
from services.infra.telemetry import (
    LocalSpanExporter,
    LocalSpanProcessor,
    default_sampler,
    otlp_span_processor,
    scrubbed,
    scrubbed_attributes,
)
from tooling.traces import Span, load_spans, render_text, trace_ids_naming, tree_rows

TOKEN = "dev-chen-token-3f9a"  # a made-up bearer token
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwLWNoZW4ifQ.c2lnbmF0dXJl"
RECEIPT = "7K3QZ-M0XRT-4HB9C-PWD2E"
SECRET = "ABCDE-FGHJK-MNPQR-STVWX-YZ012-34567"  # a made-up receipt secret
CONTENT = "On Friday evening the store manager"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """This process's JSON logging, into a buffer; restored afterwards."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    configure_logging("svc", "DEBUG", stream=stream)
    yield stream
    unconfigure_logging()
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def tracer() -> Any:
    """A tracer of a provider of its own (the process-wide one is left alone)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    return provider.get_tracer("test")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return list(json_lines(stream.getvalue()))


def test_every_line_is_json_with_the_standard_fields(logs: io.StringIO) -> None:
    logging.getLogger("services.somewhere").info("hello %s", "world")
    [line] = lines(logs)
    assert line["event"] == "hello world"
    assert line["level"] == "info"
    assert line["logger"] == "services.somewhere"
    assert line["service"] == "svc"
    assert line["timestamp"].endswith("Z")
    assert "trace_id" not in line and "span_id" not in line  # no span active
    assert "incident_id" not in line


def test_a_line_inside_a_span_carries_its_trace_and_span_ids(
    logs: io.StringIO, tracer: Any
) -> None:
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner") as span:
        logging.getLogger("services.x").warning("inside")
        structlog.get_logger("services.y").info("structured", count=3)
    stdlib, native = lines(logs)
    context = span.get_span_context()
    for line in (stdlib, native):
        assert line["trace_id"] == format(context.trace_id, "032x")
        assert line["span_id"] == format(context.span_id, "016x")
        assert line["service"] == "svc"
    assert native["event"] == "structured" and native["count"] == 3
    assert native["logger"] == "services.y" and native["level"] == "info"


def test_a_bound_incident_is_in_every_line_and_on_the_span(logs: io.StringIO, tracer: Any) -> None:
    log = logging.getLogger("services.z")
    with tracer.start_as_current_span("work") as span, bind_incident("inc-42"):
        log.info("working")
    log.info("after")
    working, after = lines(logs)
    assert working["incident_id"] == "inc-42"
    assert "incident_id" not in after
    assert span.attributes["incident.id"] == "inc-42"


def test_a_message_naming_an_incident_gives_the_line_and_the_span_its_id(
    logs: io.StringIO, tracer: Any
) -> None:
    incident = "0b7c2e0e-58d6-4d0c-9c43-5e1f3a6f1d2b"
    with tracer.start_as_current_span("process incident.triage") as span:
        logging.getLogger("incidents.notify").info("notify p-chen of incident %s", incident)
    logging.getLogger("services.other").info("an incident, but no id")
    named, unnamed = lines(logs)
    assert named["incident_id"] == incident
    assert span.attributes["incident.id"] == incident
    assert "incident_id" not in unnamed


def test_secret_and_content_keys_are_dropped_and_secret_values_masked(
    logs: io.StringIO,
) -> None:
    log = logging.getLogger("services.leaky")
    log.info(
        "request with Authorization: Bearer %s to /v1/receipts/%s (secret %s, jwt %s)",
        TOKEN,
        RECEIPT,
        SECRET,
        JWT,
        extra={
            "authorization": f"Bearer {TOKEN}",
            "X-Receipt-Secret": SECRET,
            "summary": CONTENT,
            "description": CONTENT,
            "text": CONTENT,
            "accused": ["p-wang"],
            "named": ["p-zhao"],
            "reporter": "p-liu",
            "headers": {"Authorization": f"Bearer {TOKEN}", "accept": "json"},
            "kept": "a plain value",
        },
    )
    structlog.get_logger("services.leaky").info(
        "structured", summary=CONTENT, receipt=RECEIPT, note=f"bearer {TOKEN}"
    )
    text = logs.getvalue()
    for leak in (TOKEN, RECEIPT, SECRET, JWT, CONTENT, "p-wang", "p-zhao", "p-liu"):
        assert leak not in text, leak
    first, second = lines(logs)
    assert first["kept"] == "a plain value"
    assert first["headers"] == {"accept": "json"}
    assert "Bearer [redacted]" in first["event"] and "/v1/receipts/[redacted]" in first["event"]
    for key in ("authorization", "X-Receipt-Secret", "summary", "description", "text"):
        assert key not in first
    assert "summary" not in second and "receipt" not in second
    assert second["note"] == "Bearer [redacted]"


def test_tracebacks_are_text_without_local_variables_and_masked(logs: io.StringIO) -> None:
    def fail(authorization: str) -> None:
        content = CONTENT  # a local that a structured traceback would show
        raise ValueError(f"refused {authorization} for {len(content)}")

    try:
        fail(f"Bearer {TOKEN}")
    except ValueError:
        logging.getLogger("services.err").exception("unexpected error")
    [line] = lines(logs)
    assert "Traceback" in line["exception"] and "ValueError" in line["exception"]
    assert TOKEN not in logs.getvalue() and CONTENT not in logs.getvalue()


def test_redact_processor_on_its_own() -> None:
    event = {
        "event": f"Bearer {TOKEN}",
        "Authorization": "x",
        "reporter_id": "p-liu",
        "nested": [{"secret": SECRET, "n": 1}, f"see /v1/receipts/{RECEIPT}/messages"],
        "raw": b"bytes of a record",
        "_record": object(),
    }
    out = redact(None, "info", event)
    assert out["event"] == "Bearer [redacted]"
    assert "Authorization" not in out and "reporter_id" not in out
    assert out["nested"] == [{"n": 1}, "see /v1/receipts/[redacted]/messages"]
    assert out["raw"] == "[redacted]"
    assert "_record" in out
    assert redact_text(f"{RECEIPT} and {SECRET}") == "[redacted] and [redacted]"
    assert redact_text("incident 0b7c2e0e-58d6-4d0c-9c43-5e1f3a6f1d2b") == (
        "incident 0b7c2e0e-58d6-4d0c-9c43-5e1f3a6f1d2b"
    )


async def test_a_request_naming_an_incident_binds_it_and_a_receipt_never(
    logs: io.StringIO,
) -> None:
    log = logging.getLogger("services.api")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        log.info("handling")

    wrapped = IncidentBinding(app)
    await wrapped({"type": "http", "path": "/v1/incidents/inc-7/acknowledge"}, None, None)
    await wrapped({"type": "http", "path": f"/v1/receipts/{RECEIPT}"}, None, None)
    await wrapped({"type": "lifespan"}, None, None)
    incident, receipt, lifespan = [x for x in lines(logs) if x["logger"] == "services.api"]
    assert incident["incident_id"] == "inc-7"
    assert "incident_id" not in receipt and "incident_id" not in lifespan
    assert RECEIPT not in logs.getvalue()


# -- local span files ---------------------------------------------------------------


def finished_spans(tracer_provider: TracerProvider) -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


def test_the_exporter_writes_one_json_object_a_span_without_client_details(
    tmp_path: Path,
) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "intake"}))
    memory = finished_spans(provider)
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span(
            "GET /v1/incidents/{id}",
            attributes={
                "client.address": "203.0.113.7",
                "net.peer.ip": "203.0.113.7",
                "net.sock.peer.addr": "203.0.113.7",
                "http.user_agent": "Mozilla/5.0 marker",
                "user_agent.original": "Mozilla/5.0 marker",
                "http.client_ip": "203.0.113.7",
                "http.request.header.x_forwarded_for": ("203.0.113.7",),
                "http.url": f"http://intake/v1/receipts/{RECEIPT}",
                "http.method": "GET",
                "note": f"Bearer {TOKEN}",
            },
        ),
        tracer.start_as_current_span("child"),
    ):
        pass
    exporter = LocalSpanExporter(tmp_path / "traces", "intake")
    assert exporter.export(memory.get_finished_spans()).name == "SUCCESS"
    text = (tmp_path / "traces" / "intake.jsonl").read_text()
    for leak in ("203.0.113.7", "Mozilla", RECEIPT, TOKEN):
        assert leak not in text
    child, parent = (json.loads(line) for line in text.splitlines())
    assert set(parent) >= {
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "kind",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "attributes",
        "service.name",
    }
    assert parent["attributes"] == {"http.method": "GET", "note": "Bearer [redacted]"}
    assert parent["service.name"] == "intake" and parent["kind"] == "INTERNAL"
    assert parent["parent_span_id"] is None and child["parent_span_id"] == parent["span_id"]
    assert child["trace_id"] == parent["trace_id"] and len(parent["trace_id"]) == 32
    assert parent["start_time_unix_nano"] <= child["start_time_unix_nano"]
    assert child["end_time_unix_nano"] <= parent["end_time_unix_nano"]
    assert (tmp_path / "traces" / "intake.jsonl").stat().st_mode & 0o777 == 0o600


def test_scrubbing_keeps_the_span_and_drops_what_identifies_a_client() -> None:
    provider = TracerProvider()
    memory = finished_spans(provider)
    with provider.get_tracer("t").start_as_current_span(
        "s", attributes={"client.address": "1.2.3.4", "route": "reports"}
    ):
        pass
    [span] = memory.get_finished_spans()
    clean = scrubbed(span)
    assert clean.attributes == {"route": "reports"}
    assert clean.context == span.context and clean.name == "s"
    assert scrubbed_attributes({"url.full": "https://x/v1/receipts/ABC"}) == {}


def test_database_statements_outside_any_trace_are_not_kept(tmp_path: Path) -> None:
    provider = TracerProvider()
    memory = finished_spans(provider)
    database = provider.get_tracer("opentelemetry.instrumentation.asyncpg")
    with database.start_as_current_span("SELECT", attributes={"db.system": "postgresql"}):
        pass  # a poll: its own trace of one span
    insert = database.start_as_current_span("INSERT", attributes={"db.system": "postgresql"})
    with provider.get_tracer("incidents").start_as_current_span("request"), insert:
        pass
    exporter = LocalSpanExporter(tmp_path, "intake")
    exporter.export(memory.get_finished_spans())
    spans = load_spans(tmp_path)
    assert sorted(s.name for s in spans) == ["INSERT", "request"]
    insert = next(s for s in spans if s.name == "INSERT")
    assert insert.scope == "opentelemetry.instrumentation.asyncpg" and insert.is_detail


def test_the_span_processor_writes_ended_spans_without_being_asked(tmp_path: Path) -> None:
    """Lines are encoded as spans end and written by the processor's thread on its own
    schedule; a flush and a shutdown write what is left, and nothing is lost."""
    provider = TracerProvider()
    processor = LocalSpanProcessor(LocalSpanExporter(tmp_path, "intake"), interval=0.05)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("incidents")
    database = provider.get_tracer("opentelemetry.instrumentation.asyncpg")
    with tracer.start_as_current_span("request", attributes={"client.address": "203.0.113.9"}):
        pass
    with database.start_as_current_span("SELECT"):
        pass  # a statement outside any trace: not kept
    deadline = time.monotonic() + 5
    while not (tmp_path / "intake.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s.name for s in load_spans(tmp_path)] == ["request"]
    assert "203.0.113.9" not in (tmp_path / "intake.jsonl").read_text()
    for i in range(50):
        with tracer.start_as_current_span(f"late {i}"):
            pass
    provider.shutdown()  # the thread stops; what it had not written yet is written now
    assert len(load_spans(tmp_path)) == 51
    assert not processor._writer.is_alive()


def test_the_span_processor_drops_lines_beyond_its_buffer_and_counts_them(
    tmp_path: Path,
) -> None:
    processor = LocalSpanProcessor(
        LocalSpanExporter(tmp_path, "intake"), interval=60, max_buffered=2000
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    for i in range(40):
        with provider.get_tracer("t").start_as_current_span(f"span {i}", attributes={"i": i}):
            pass
    assert processor.dropped > 0
    assert processor.force_flush()
    kept = load_spans(tmp_path)
    assert 0 < len(kept) == 40 - processor.dropped
    assert [s.name for s in kept] == [f"span {i}" for i in range(len(kept))]  # the oldest stay
    provider.shutdown()


def test_the_otlp_processor_exports_scrubbed_spans_in_small_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", raising=False)
    collector = InMemorySpanExporter()
    processor = otlp_span_processor(collector)  # type: ignore[arg-type]
    assert processor._batch_processor._max_export_batch_size == 64  # type: ignore[attr-defined]
    provider = TracerProvider()
    provider.add_span_processor(processor)
    with provider.get_tracer("t").start_as_current_span(
        "request", attributes={"client.address": "203.0.113.5", "route": "reports"}
    ):
        pass
    assert processor.force_flush()
    [span] = collector.get_finished_spans()
    assert span.attributes == {"route": "reports"}
    provider.shutdown()


def test_a_statement_that_would_start_a_trace_is_not_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    provider = TracerProvider(sampler=default_sampler())
    memory = finished_spans(provider)
    database = provider.get_tracer("opentelemetry.instrumentation.asyncpg")
    statement = {"db.system": "postgresql"}
    with database.start_as_current_span("SELECT", attributes=statement) as poll:
        assert not poll.is_recording()
    with database.start_as_current_span("SELECT", attributes={"db.system.name": "postgresql"}):
        pass
    with (
        provider.get_tracer("incidents").start_as_current_span("request") as request,
        database.start_as_current_span("INSERT", attributes=statement),
    ):
        pass
    assert request.get_span_context().trace_flags.sampled
    assert sorted(s.name for s in memory.get_finished_spans()) == ["INSERT", "request"]
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert default_sampler() is None  # the SDK's own choice from the environment


def test_span_files_rotate_at_their_size_limit(tmp_path: Path) -> None:
    provider = TracerProvider()
    memory = finished_spans(provider)
    tracer = provider.get_tracer("t")
    for i in range(40):
        with tracer.start_as_current_span(f"span {i}", attributes={"pad": "x" * 200}):
            pass
    exporter = LocalSpanExporter(tmp_path, "audit", max_bytes=4096)
    for span in memory.get_finished_spans():
        exporter.export([span])
    assert (tmp_path / "audit.jsonl").stat().st_size <= 4096
    assert (tmp_path / "audit.1.jsonl").stat().st_size <= 4096
    names = {s.name for s in load_spans(tmp_path)}
    assert "span 39" in names and "span 0" not in names


def span(span_id: str, parent: str | None, name: str, start: int, end: int, **attrs: Any) -> Span:
    return Span("t" * 32, span_id, parent, name, "INTERNAL", start, end, "svc", attrs)


def test_the_waterfall_draws_a_tree_on_one_time_axis() -> None:
    spans = [
        span("c", "b", "process incident.reports", 5_000_000, 9_000_000),
        span("a", None, "intake: take report", 0, 4_000_000, **{"incident.id": "inc-1"}),
        span("b", "a", "outbox publish incident.reports", 3_000_000, 4_000_000),
        span("d", "gone", "orphan", 9_000_000, 10_000_000),
    ]
    rows = tree_rows(spans)
    assert [(r.depth, r.span.name) for r in rows] == [
        (0, "intake: take report"),
        (1, "outbox publish incident.reports"),
        (2, "process incident.reports"),
        (0, "orphan"),
    ]
    assert trace_ids_naming(spans, "inc-1") == ["t" * 32]
    text = render_text("inc-1", spans, ["t" * 32, "f" * 32])
    assert "intake: take report" in text and "└─ process incident.reports" in text
    assert "4.0" in text and "10.0 ms" in text
    assert f"no local spans: {'f' * 32}" in text


def test_details_are_hidden_and_their_children_move_up() -> None:
    spans = [
        span("a", None, "GET /v1/incidents/{incident_id}", 0, 10),
        span("b", "a", "BEGIN;", 1, 2, **{"db.system": "postgresql"}),
        span("c", "b", "odd child of a statement", 2, 3),
        span("d", "a", "GET /v1/incidents/{incident_id} http send", 8, 9),  # kind INTERNAL
    ]
    shown = [(r.depth, r.span.name) for r in tree_rows(spans, detail=False)]
    assert shown == [(0, "GET /v1/incidents/{incident_id}"), (1, "odd child of a statement")]
    assert len(tree_rows(spans)) == 4
    text = render_text("i", spans, ["t" * 32])
    assert "2 database and ASGI spans hidden" in text and "BEGIN" not in text
