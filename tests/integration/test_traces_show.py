"""`incidents traces show` on a real report, and the JSON logs written meanwhile.

Intake and audit run in this process; finished spans go to the local span files in
`tmp_path` as the services' own exporter writes them, and every log record goes
through the services' JSON formatter into a buffer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.audit.app import create_app as create_audit
from services.infra.logging import configure_logging, json_lines, unconfigure_logging
from services.infra.settings import AuditSettings, CommonSettings, IntakeSettings
from services.infra.telemetry import LocalSpanExporter
from services.intake.app import create_app as create_intake
from tests.helpers import eventually
from tooling.traces import Span, find_traces, render_text, tree_rows

pytestmark = pytest.mark.integration

MARK = f"m{uuid.uuid4().hex[:12]}"
SUMMARY = f"Assault by store manager {MARK}"
DESCRIPTION = f"On Friday evening the store manager {MARK} ..."
IDENTIFYING = {
    "user-agent": f"Mozilla/5.0 ({MARK}-agent)",
    "x-forwarded-for": "203.0.113.77, 10.0.0.1",
    "x-real-ip": "198.51.100.23",
}
BAD_TOKEN = f"not-a-token-{MARK}"


@pytest.fixture
def spans_dir(tmp_path: Path) -> Iterator[Path]:
    """Local span files of this test (installs an SDK provider if the process has none)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    folder = tmp_path / "traces"
    exporter = LocalSpanExporter(folder, "local")
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
    yield folder
    exporter.shutdown()  # the processor stays on the provider; it writes nothing more


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Every log record, at DEBUG, as the services render it."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    configure_logging("test", "DEBUG", stream=stream)
    yield stream
    unconfigure_logging()
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()


@contextlib.asynccontextmanager
async def serving(app: Any, base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base) as client:
            yield client


def assert_clean(text: str, *leaks: str) -> None:
    lines = list(json_lines(text))  # every line is one JSON object
    assert lines
    for line in lines:
        assert {"timestamp", "level", "logger", "event", "service"} <= line.keys(), line
    for leak in leaks:
        assert leak not in text, leak


async def test_traces_show_draws_the_report_from_intake_through_kafka_to_the_ledger(
    settings: CommonSettings, spans_dir: Path, logs: io.StringIO, tmp_path: Path
) -> None:
    common = settings.model_dump()
    intake_app = create_intake(IntakeSettings(**common))
    audit_app = create_audit(AuditSettings(**common, signing_key_file=tmp_path / "k.pem"))
    async with (
        serving(intake_app, "http://intake") as intake,
        serving(audit_app, "http://audit"),
    ):
        answer = await intake.post(  # a named reporter: the request's trace continues
            "/v1/reports",
            json={"category": "harassment", "summary": SUMMARY, "description": DESCRIPTION},
            headers={"authorization": "Bearer dev-liu-token"},
        )
        assert answer.status_code == 202
        incident = answer.json()["incident_id"]
        transport = httpx.ASGITransport(app=audit_app)

        async def drawn() -> tuple[list[str], list[Span], str] | None:
            trace_ids, spans = await find_traces(
                incident,
                spans_dir,
                audit="http://audit",
                token="dev-auditor-token",  # the development auditor token
                transport=transport,
            )
            names = [s.name for s in spans]
            if not any(n == f"process {settings.topic('incident.reports')}" for n in names):
                return None  # the ledger span ends just after the entry is readable
            return trace_ids, spans, render_text(incident, spans, trace_ids, width=200)

        trace_ids, spans, text = await eventually(drawn)
    [trace_id] = trace_ids
    rows = tree_rows([s for s in spans if s.trace_id == trace_id])
    # One tree: the request's span is the only root, everything else hangs below it.
    assert rows[0].span.name == "intake: take report" and rows[0].depth == 0
    assert all(r.depth > 0 for r in rows[1:])
    depth = {r.span.name: r.depth for r in rows}
    publish = next(n for n in depth if n.startswith("outbox publish"))
    process = f"process {settings.topic('incident.reports')}"
    assert depth[publish] >= 1 and depth[process] > depth[publish]
    # The drawing: one waterfall with the three spans, indented, with durations.
    assert f"trace {trace_id}" in text
    for name in ("intake: take report", publish, process):
        assert name in text
    assert f"└─ {publish}" in text and f"   └─ {process}" in text and "ms" in text
    # The logs of all this: JSON, and neither the token, the content nor the reporter.
    assert_clean(logs.getvalue(), "dev-liu-token", "p-liu", MARK)


async def test_logs_keep_nothing_of_an_anonymous_reporter_nor_of_a_refused_token(
    settings: CommonSettings, logs: io.StringIO
) -> None:
    app = create_intake(IntakeSettings(**settings.model_dump()))
    async with serving(app, "http://intake") as intake:
        answer = await intake.post(
            "/v1/reports",
            json={"category": "harassment", "summary": SUMMARY, "description": DESCRIPTION},
            headers={**IDENTIFYING, "idempotency-key": f"key-{MARK}"},
        )
        assert answer.status_code == 202
        receipt, secret = answer.json()["receipt"], answer.json()["secret"]
        followed = await intake.get(
            f"/v1/receipts/{receipt}", headers={**IDENTIFYING, "x-receipt-secret": secret}
        )
        assert followed.status_code == 200
        sent = await intake.post(
            f"/v1/receipts/{receipt}/messages",
            json={"text": f"More details {MARK}"},
            headers={**IDENTIFYING, "x-receipt-secret": secret},
        )
        assert sent.status_code == 202
        refused = await intake.get(
            "/v1/incidents", headers={"authorization": f"Bearer {BAD_TOKEN}"}
        )
        assert refused.status_code == 401
        refused = await intake.post(
            "/v1/reports",
            json={"category": "harassment", "summary": SUMMARY, "description": DESCRIPTION},
            headers={"authorization": f"Bearer {BAD_TOKEN}"},
        )
        assert refused.status_code == 401
    text = logs.getvalue()
    assert "/v1/receipts/[redacted]" in text  # httpx logged the requests, masked
    assert_clean(
        text,
        BAD_TOKEN,
        MARK,
        receipt,
        secret,
        "203.0.113.77",
        "198.51.100.23",
        "Mozilla",
    )
