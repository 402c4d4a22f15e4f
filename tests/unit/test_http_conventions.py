"""HTTP conventions every service keeps (issue 23, item 8): `Allow` on a 405,
`WWW-Authenticate` on a 401, JSON errors by line and column, RFC 3339 instants only,
and health, readiness and metrics listed in each OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from services.audit.app import create_app as create_audit
from services.audit.checkpoint import NoteSigner
from services.domain.events import InvalidEvent, parse_envelope
from services.domain.inbound import InboundRefused, decode
from services.domain.parsing import json_error, parse_rfc3339
from services.domain.reports import ReportInput
from services.escalation.app import create_app as create_escalation
from services.infra.http import (
    PROBLEM,
    Instant,
    Problem,
    health_router,
    install_problem_handlers,
)
from services.infra.settings import (
    AuditSettings,
    EscalationSettings,
    IntakeSettings,
    TriageSettings,
)
from services.intake.app import create_app as create_intake
from services.triage.app import create_app as create_triage
from services.witness.app import create_app as create_witness
from services.witness.config import WitnessSettings


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
    # 400: a URL with a control character, refused before any route
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "400", "503"}
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


CONTROL_URLS = (
    "/healthz%00",
    "/healthz?x=%00",
    "/readyz?%1B=1",
    "/metrics?q=a%0Ab",
    "/no-such-route%7F",
    "/v1/incidents/a%00b/timeline",
    "/v1/incidents/a%09b?as_of=2026-11-25T10:00:00Z",
    "/ui/?category=%00",
    "/%00/checkpoint",
)


def _witness(tmp_path: Path) -> FastAPI:
    log = NoteSigner.generate("example.com/log")
    return create_witness(WitnessSettings(state_dir=tmp_path / "w", logs=(log.verifier_key,)))


@pytest.mark.parametrize(
    "app",
    [
        lambda _: create_intake(IntakeSettings(environment="test")),
        lambda tmp: create_audit(AuditSettings(environment="test", signing_key_file=tmp / "k.pem")),
        lambda _: create_triage(TriageSettings(environment="test")),
        lambda _: create_escalation(EscalationSettings(environment="test")),
        _witness,
    ],
    ids=["intake", "audit", "triage", "escalation", "witness"],
)
async def test_a_control_character_in_the_url_is_refused_before_any_route(
    app: Callable[[Path], FastAPI], tmp_path: Path
) -> None:
    """A NUL or other control character (U+0000-U+001F, U+007F), percent-encoded or not,
    in the path or the query string: 400 problem+json, one answer for every URL and every
    service, whether the route exists or not and before any authentication, so that no
    route can pass one to PostgreSQL (which cannot hold a NUL: a 500 before) and the
    answer tells nothing but that the URL was bad. No lifespan: nothing else runs."""
    transport = httpx.ASGITransport(app=app(tmp_path), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        answers = [await client.get(url) for url in CONTROL_URLS]
        answers.append(await client.post("/v1/reports?x=%00", json={}))
        answers.append(await client.get("/healthz", params={"x": "a\u0000b"}))
        answers.append(await client.get("/healthz", headers={"authorization": "Bearer nope"}))
        fine = await client.get("/healthz?x=%20%E7%8E%8B%2500")  # printable, and a literal %00
    refused, authorised_fine = answers[:-1], answers[-1]
    for answer in refused:
        assert answer.status_code == 400, (answer.request.url, answer.text)
        assert answer.headers["content-type"] == PROBLEM
    assert len({answer.content for answer in refused}) == 1  # byte for byte
    assert refused[0].json() == {
        "type": "about:blank",
        "title": "Bad request",
        "status": 400,
        "detail": "The URL holds a control character.",
    }
    assert authorised_fine.status_code == 200 and fine.status_code == 200
