"""Fuzzing intake's and audit's HTTP APIs from their own OpenAPI documents (schemathesis).

Each app runs in process, lifespan included, on a real database and broker (a database
and topic prefix of this module's own), in schemathesis' ASGI portal. Every operation
gets up to `MAX_EXAMPLES` generated requests that fit its document and as many that do
not, with no deadline and a fixed seed, so a run is repeatable. Protected operations
are called with a development token that may use them; reports and receipts
anonymously, the path that matters most. No answer may be a 5xx, and every answer must
conform to the document: a documented status code and content type, documented
headers, and a body that matches the schema of that status.

Bugs it found, now fixed and kept as tests below: a body that is not UTF-8 answered an
undocumented 400 (now 422 problem+json like any body that is not JSON); audit's 404s
(unknown incident, no signed head yet) were undocumented, and its 422s were declared as
FastAPI's default `application/json` body while it answers `application/problem+json`.

Triage and escalation serve only health, readiness and metrics (`services.infra.http`,
fuzzed here through intake and audit, which serve the same routes).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.audit.app import create_app as create_audit
from services.infra.settings import AuditSettings, CommonSettings, IntakeSettings
from services.intake.app import create_app as create_intake

pytestmark = [
    pytest.mark.integration,
    # schemathesis' own strategies draw from `random`; nothing to act on here
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

MAX_EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
PROBLEM = "application/problem+json"

HEALTH_OPERATIONS = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
INTAKE_OPERATIONS = [
    ("POST", "/v1/reports"),
    ("POST", "/v1/channels/harassment/reports"),
    ("POST", "/v1/events"),
    ("GET", "/v1/receipts/{receipt}"),
    ("POST", "/v1/receipts/{receipt}/messages"),
    ("GET", "/v1/incidents"),
    ("GET", "/v1/incidents/{incident_id}"),
    ("POST", "/v1/incidents/{incident_id}/acknowledge"),
    ("POST", "/v1/incidents/{incident_id}/status"),
    ("POST", "/v1/incidents/{incident_id}/comments"),
    ("POST", "/v1/incidents/{incident_id}/messages"),
    ("POST", "/v1/incidents/{incident_id}/recuse"),
    ("POST", "/v1/incidents/{incident_id}/reassign"),
    ("POST", "/v1/incidents/{incident_id}/people"),
    ("POST", "/v1/incidents/{incident_id}/attachments"),
    ("GET", "/v1/incidents/{incident_id}/attachments/{attachment_id}"),
    ("POST", "/v1/receipts/{receipt}/attachments"),
    ("GET", "/v1/receipts/{receipt}/attachments/{attachment_id}"),
    ("POST", "/v1/my/reports/{incident_id}/attachments"),
    ("GET", "/v1/my/reports/{incident_id}/attachments/{attachment_id}"),
    ("GET", "/v1/my/reports"),
    ("GET", "/v1/my/reports/{incident_id}"),
    ("POST", "/v1/my/reports/{incident_id}/messages"),
    ("POST", "/v1/incidents/{incident_id}/reporter-identity"),
    ("POST", "/v1/incidents/{incident_id}/legal-hold"),
    ("POST", "/v1/incidents/{incident_id}/legal-hold/release"),
    ("PUT", "/v1/directory/people/{person_id}"),
    ("GET", "/v1/directory/people/{person_id}"),
    ("GET", "/v1/directory/grants"),
    ("POST", "/v1/directory/grants/{grant_id}/approval"),
    ("GET", "/v1/people/search"),
    *HEALTH_OPERATIONS,
]
AUDIT_OPERATIONS = [
    ("GET", "/v1/incidents/{incident_id}/timeline"),
    ("GET", "/v1/incidents/{incident_id}/knowledge"),
    ("GET", "/v1/incidents/{incident_id}/state"),
    ("GET", "/v1/incidents/{incident_id}/deliveries"),
    ("GET", "/v1/ledger/entries"),
    ("GET", "/v1/ledger/proofs/inclusion"),
    ("GET", "/v1/ledger/proofs/consistency"),
    ("GET", "/v1/ledger/head"),
    ("GET", "/v1/ledger/heads"),
    ("GET", "/v1/ledger/public-key"),
    ("GET", "/v1/ledger/proofs/event/{event_id}"),
    *HEALTH_OPERATIONS,
]
JSON_BODY = [
    op
    for op in INTAKE_OPERATIONS
    if op[0] in ("POST", "PUT") and "acknowledge" not in op[1] and "approval" not in op[1]
]

# ----------------------------------------------------------------------- the apps


@pytest.fixture(scope="module")
def module_settings(kafka_bootstrap: str, make_database: Callable[[str], str]) -> CommonSettings:
    """One database and topic prefix for the module: both apps share them."""
    return CommonSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=make_database("fuzz"),
        kafka_topic_prefix=f"t{secrets.token_hex(4)}.",
        environment="test",
        outbox_poll_interval=0.1,
        broker_check_interval=0.3,
        kafka_session_timeout_ms=3000,
    )


def _schema(app: FastAPI) -> Iterator[Any]:
    """The app's OpenAPI schema; loading it starts the app's lifespan in the portal."""
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def intake_api(module_settings: CommonSettings) -> Iterator[Any]:
    yield from _schema(create_intake(IntakeSettings(**module_settings.model_dump())))


@pytest.fixture(scope="module")
def audit_api(
    module_settings: CommonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    key = Path(tmp_path_factory.mktemp("fuzz-audit")) / "key.pem"
    settings_ = AuditSettings(
        **module_settings.model_dump(), signing_key_file=key, checkpoint_interval=0.5
    )
    yield from _schema(create_audit(settings_))


def intake_token(path: str) -> str | None:
    if path == "/v1/events":
        return "dev-hris-token"  # a registered system
    if path.startswith("/v1/directory"):
        return "dev-admin-token"
    if path.startswith("/v1/incidents"):
        return "dev-chen-token"
    if path.startswith("/v1/my/"):
        return "dev-liu-token"  # a person who may have reported under her name
    return None


def audit_token(path: str) -> str | None:
    public = path.startswith("/v1/ledger/") and path != "/v1/ledger/entries"
    return None if public else "dev-auditor-token"


# ----------------------------------------------------------------------- fuzzing


def _content_type(response: Any) -> str:
    """The Content-Type of a schemathesis response (header values are lists there)."""
    for name, value in response.headers.items():
        if name.lower() == "content-type":
            return str(value[0] if isinstance(value, list) else value)
    return ""


def fuzz(
    schema: Any,
    method: str,
    path: str,
    token: str | None,
) -> None:
    """Send valid and invalid generated requests; every answer must be as documented."""
    operation = schema[path][method]
    # /readyz may answer its documented 503 here: in schemathesis' portal the runtime's
    # background tasks read as stopped (a 5xx is then no server error but the verdict)
    checks = CHECKS[1:] if path == "/readyz" else CHECKS

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @FUZZ
        @given(case=operation.as_strategy(mode))
        def one(case: Any) -> None:
            headers = {
                k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
            }
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            case.headers = headers
            response = case.call()
            case.validate_response(response, checks=checks)

        try:
            one()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise
            # no request can break this operation's document (nothing to vary): fine


def _ids(operations: list[tuple[str, str]]) -> list[str]:
    return [f"{method} {path}" for method, path in operations]


@pytest.mark.parametrize(("method", "path"), INTAKE_OPERATIONS, ids=_ids(INTAKE_OPERATIONS))
def test_intake_answers_generated_requests_as_its_openapi_document_says(
    intake_api: Any, method: str, path: str
) -> None:
    fuzz(intake_api, method, path, intake_token(path))


@pytest.mark.parametrize(("method", "path"), AUDIT_OPERATIONS, ids=_ids(AUDIT_OPERATIONS))
def test_audit_answers_generated_requests_as_its_openapi_document_says(
    audit_api: Any, method: str, path: str
) -> None:
    fuzz(audit_api, method, path, audit_token(path))


def test_every_operation_of_both_documents_is_fuzzed(intake_api: Any, audit_api: Any) -> None:
    for schema, listed in ((intake_api, INTAKE_OPERATIONS), (audit_api, AUDIT_OPERATIONS)):
        served = {
            (result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()
        }
        assert served == set(listed)


# ----------------------------------------------------------------------- the bugs it found


def documented(app: FastAPI, method: str, path: str, status: int, content_type: str) -> bool:
    """True if the app's document declares this status with this content type."""
    responses = app.openapi()["paths"][path][method.lower()]["responses"]
    entry = responses.get(str(status))
    return entry is not None and content_type in entry.get("content", {})


def _concrete(path: str) -> str:
    values = {
        "{receipt}": "7K3QZ-M0XRT-4HB9C-PWD2E",
        "{incident_id}": "00000000-0000-4000-8000-000000000000",
        "{person_id}": "p-fuzz",
    }
    for name, value in values.items():
        path = path.replace(name, value)
    return path


@pytest.mark.parametrize(("method", "path"), JSON_BODY, ids=_ids(JSON_BODY))
def test_a_body_that_is_not_utf8_gets_a_documented_answer(
    intake_api: Any, method: str, path: str
) -> None:
    token = intake_token(path)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    with asgi.get_client(intake_api.app) as client:
        answer = client.request(method, _concrete(path), data=b"\xff", headers=headers)
    assert 400 <= answer.status_code < 500 and answer.headers["content-type"] == PROBLEM
    assert documented(intake_api.app, method, path, answer.status_code, PROBLEM), (
        f"{method} {path} with body b'\\xff' answered {answer.status_code} {answer.text}"
    )


AUDIT_CASES = [
    pytest.param(
        "GET",
        "/v1/incidents/{incident_id}/timeline",
        "/v1/incidents/unknown/timeline",
        id="timeline of an unknown incident",
    ),
    pytest.param(
        "GET",
        "/v1/incidents/{incident_id}/knowledge",
        "/v1/incidents/unknown/knowledge",
        id="knowledge of an unknown incident",
    ),
    pytest.param(
        "GET",
        "/v1/incidents/{incident_id}/state",
        "/v1/incidents/unknown/state?as_of=not-a-time",
        id="state with a bad as_of",
    ),
    pytest.param(
        "GET",
        "/v1/ledger/entries",
        "/v1/ledger/entries?start=0&end=5000",
        id="entries, range too large",
    ),
    pytest.param(
        "GET",
        "/v1/ledger/proofs/inclusion",
        "/v1/ledger/proofs/inclusion?index=0&tree_size=1000000",
        id="inclusion proof beyond the ledger",
    ),
    pytest.param(
        "GET",
        "/v1/ledger/proofs/consistency",
        "/v1/ledger/proofs/consistency?first=-1&second=1",
        id="consistency proof with a negative size",
    ),
]


@pytest.mark.parametrize(("method", "path", "url"), AUDIT_CASES)
def test_audit_answers_bad_requests_as_documented(
    audit_api: Any, method: str, path: str, url: str
) -> None:
    token = audit_token(path)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with asgi.get_client(audit_api.app) as client:
        answer = client.request(method, url, headers=headers)
    content_type = answer.headers["content-type"]
    assert 400 <= answer.status_code < 500 and content_type == PROBLEM
    assert documented(audit_api.app, method, path, answer.status_code, content_type), (
        f"{method} {url} answered {answer.status_code} {content_type} {answer.text}"
    )


async def test_the_head_of_a_ledger_without_signed_head_is_answered_as_documented(
    settings: CommonSettings, tmp_path: Path
) -> None:
    """A ledger with no signed head yet (its own empty database and topics)."""
    app = create_audit(AuditSettings(**settings.model_dump(), signing_key_file=tmp_path / "k"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://audit") as client:
            answer = await client.get("/v1/ledger/head")
    content_type = answer.headers["content-type"]
    assert answer.status_code == 404 and content_type == PROBLEM
    assert documented(app, "GET", "/v1/ledger/head", 404, content_type), answer.text
