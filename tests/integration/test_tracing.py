"""One trace per report: the HTTP request, the relay's publish and the ledger entry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.audit.app import create_app as create_audit
from services.infra.settings import AuditSettings, CommonSettings, IntakeSettings
from services.intake.app import create_app as create_intake
from tests.helpers import eventually, serving

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Collect spans in memory (installs an SDK provider if the process has none)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()


async def test_a_report_has_one_trace_from_the_request_through_kafka_to_the_ledger(
    settings: CommonSettings, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    common = settings.model_dump()
    intake_app = create_intake(IntakeSettings(**common))
    audit_app = create_audit(AuditSettings(**common, signing_key_file=tmp_path / "k.pem"))
    async with (
        serving(intake_app, "http://intake") as intake,
        serving(audit_app, "http://audit") as audit,
    ):
        answer = await intake.post(  # named reporter: anonymous reports start a trace of their own
            "/v1/reports",
            json={"category": "harassment", "summary": "s", "description": "d"},
            headers={"authorization": "Bearer dev-liu-token"},
        )
        incident = answer.json()["incident_id"]

        async def recorded() -> list[dict[str, object]]:
            got = await audit.get(
                f"/v1/incidents/{incident}/timeline",
                headers={"authorization": "Bearer dev-auditor-token"},
            )
            return got.json()["events"] if got.status_code == 200 else []

        [entry] = await eventually(recorded)
    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    request = next(s for s in finished if s.name == "intake: take report")
    trace_id = request.context.trace_id
    assert entry["trace_id"] == format(trace_id, "032x")
    in_trace = {s.context.span_id: s for s in finished if s.context.trace_id == trace_id}
    names = [s.name for s in in_trace.values()]
    assert any(n.startswith("outbox publish") for n in names)
    assert any(n == f"process {settings.topic('incident.reports')}" for n in names)
    for span in in_trace.values():  # one tree: every span's parent is in the trace
        if span is not request:
            assert span.parent is not None and span.parent.span_id in in_trace, span.name
