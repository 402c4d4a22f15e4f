"""HTTP conventions every service keeps (issue 23, item 8): `Allow` on a 405,
`WWW-Authenticate` on a 401, JSON errors by line and column, RFC 3339 instants only,
and health, readiness and metrics listed in each OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from services.audit.app import create_app as create_audit
from services.domain.events import InvalidEvent, parse_envelope
from services.domain.inbound import InboundRefused, decode
from services.domain.parsing import json_error, parse_rfc3339
from services.domain.reports import ReportInput
from services.escalation.app import create_app as create_escalation
from services.infra.http import Instant, Problem, health_router, install_problem_handlers
from services.infra.settings import AuditSettings, EscalationSettings, TriageSettings
from services.triage.app import create_app as create_triage


class Body(BaseModel):
    name: str


async def _ready() -> dict[str, str]:
    return {"database": "ok"}


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(health_router(_ready))

    @app.post("/things")
    async def post(body: Body) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/secret")
    async def secret() -> None:
        raise Problem(401, "Unauthorized", "A bearer token is required.")

    @app.get("/when")
    async def when(as_of: Annotated[Instant | None, Query()] = None) -> dict[str, str]:
        return {"as_of": as_of.isoformat() if as_of else "now"}

    return TestClient(app)


def test_a_405_names_the_allowed_methods(client: TestClient) -> None:
    answer = client.delete("/things")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.headers["content-type"] == "application/problem+json"


def test_a_401_carries_a_bearer_challenge(client: TestClient) -> None:
    anonymous = client.get("/secret")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="incidents"'
    refused = client.get("/secret", headers={"Authorization": "Bearer nope"})
    assert refused.headers["www-authenticate"] == 'Bearer realm="incidents", error="invalid_token"'


def test_malformed_json_is_named_by_line_and_column(client: TestClient) -> None:
    body = '{\n  "name": "x",\n  "oops" 12\n}'
    answer = client.post("/things", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    [error] = answer.json()["errors"]
    assert error == {
        "field": "body",
        "message": "not valid JSON: Expecting ':' delimiter at line 3, column 10",
    }
    assert "12" not in answer.json()["detail"].split("column")[0]  # the body is not quoted


@pytest.mark.parametrize(
    "value", ["12345", "0", "2026-11-25", "2026-11-25T10:00:00", "2026-13-01T00:00:00Z", "now"]
)
def test_as_of_refuses_anything_but_rfc3339_with_an_offset(client: TestClient, value: str) -> None:
    answer = client.get("/when", params={"as_of": value})
    assert answer.status_code == 422, value
    assert "RFC 3339" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("value", "moment"),
    [
        ("2026-11-25T10:00:00Z", datetime(2026, 11, 25, 10, tzinfo=UTC)),
        (
            "2026-11-25t11:00:00.123456789+01:00",
            datetime(2026, 11, 25, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_rfc3339_with_an_offset_is_read(value: str, moment: datetime) -> None:
    assert parse_rfc3339(value) == moment


def test_json_error_positions() -> None:
    assert json_error("Expecting value", "", 0) == "Expecting value at line 1, column 1"
    assert json_error("Extra data", "{}\n\n {}", 5) == "Extra data at line 3, column 2"


def _paths(app: FastAPI) -> dict[str, Any]:
    paths: dict[str, Any] = app.openapi()["paths"]
    return paths


@pytest.mark.parametrize(
    "app",
    [
        lambda: create_triage(TriageSettings(environment="test")),
        lambda: create_escalation(EscalationSettings(environment="test")),
    ],
    ids=["triage", "escalation"],
)
def test_stream_services_document_their_routes(app: Any) -> None:
    paths = _paths(app())
    assert {"/healthz", "/readyz", "/metrics"} <= set(paths)
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert "text/plain" in str(paths["/metrics"]["get"]["responses"]["200"]["content"])


def test_a_dead_letter_reason_names_line_and_column_never_the_input() -> None:
    """`parse_envelope` (every consumer, intake's /v1/events): where, not what."""
    with pytest.raises(InvalidEvent) as refused:
        parse_envelope(b'{\n  "id": "secret-words",\n  oops}')
    assert str(refused.value) == (
        "not JSON: Expecting property name enclosed in double quotes at line 3, column 3"
    )
    with pytest.raises(InvalidEvent) as refused:
        parse_envelope(b'{"id": "secret-\xc3\x28"}')
    assert str(refused.value) == "not JSON: not UTF-8 at byte 16"


@pytest.mark.parametrize("value", [12345, "12345", "2026-10-30", "2026-10-30T21:15:00"])
def test_a_report_time_is_rfc3339_with_an_offset_too(value: object) -> None:
    """`occurred_at` in a report body (HTTP and inbound events) follows the same rule."""
    body = {"category": "harassment", "summary": "s", "description": "d", "occurred_at": value}
    with pytest.raises(ValidationError, match="RFC 3339"):
        ReportInput.model_validate(body)
    body["occurred_at"] = "2026-10-30T21:15:00+02:00"
    assert ReportInput.model_validate(body).occurred_at == datetime(
        2026, 10, 30, 19, 15, tzinfo=UTC
    )


def test_audits_as_of_refuses_a_bare_number(tmp_path: Path) -> None:
    """The real route: validation answers before any database is needed."""
    app = create_audit(AuditSettings(environment="test", signing_key_file=tmp_path / "k.pem"))
    client = TestClient(app)  # no `with`: the lifespan (database, broker) never starts
    for route in ("state", "knowledge", "deliveries"):
        answer = client.get(f"/v1/incidents/x/{route}", params={"as_of": "12345"})
        assert answer.status_code == 422, route
        assert answer.json()["errors"][0]["field"] == "query.as_of"
    assert client.put("/v1/ledger/head").headers["allow"] == "GET"
    anonymous = client.get("/v1/incidents/x/state")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="incidents"'


def test_an_inbound_event_that_is_not_json_is_named_by_line_and_column() -> None:
    """Kafka's incident.inbound and HTTP's /v1/events decode alike (`decode`)."""
    headers = [("content-type", b"application/cloudevents+json")]
    with pytest.raises(InboundRefused) as refused:
        decode(headers, b'{"specversion": "1.0",\n "id": secret}')
    assert refused.value.kind == "malformed"
    assert str(refused.value) == "the event is not JSON: Expecting value at line 2, column 8"


def test_a_documented_401_documents_its_challenge(tmp_path: Path) -> None:
    app = create_audit(AuditSettings(environment="test", signing_key_file=tmp_path / "k.pem"))
    state = _paths(app)["/v1/incidents/{incident_id}/state"]["get"]["responses"]
    assert "WWW-Authenticate" in state["401"]["headers"]
