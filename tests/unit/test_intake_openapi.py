"""Intake's OpenAPI document: every answer of the report and receipt routes is declared."""

from __future__ import annotations

from typing import Any

import pytest

from services.infra.settings import IntakeSettings
from services.intake.app import create_app


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = create_app(IntakeSettings(environment="test")).openapi()
    return document


ROUTES = {  # 400: a control character in the URL, refused before any route (every route)
    ("post", "/v1/reports"): {"202", "400", "401", "403", "409", "413", "422"},
    ("post", "/v1/channels/harassment/reports"): {"202", "400", "401", "403", "409", "413", "422"},
    ("get", "/v1/receipts/{receipt}"): {"200", "400", "404", "422", "429"},
    ("post", "/v1/receipts/{receipt}/messages"): {
        "202",
        "400",
        "404",
        "409",
        "413",
        "422",
        "429",
        "503",
    },
}


@pytest.mark.parametrize(("method", "path"), list(ROUTES))
def test_every_answer_of_a_route_is_documented(
    spec: dict[str, Any], method: str, path: str
) -> None:
    operation = spec["paths"][path][method]
    assert operation["summary"] and operation["description"]
    responses = operation["responses"]
    assert set(responses) == ROUTES[(method, path)]
    for status, response in responses.items():
        assert response["description"], status
        if int(status) >= 400:  # errors are problem+json, never FastAPI's default shape
            assert list(response["content"]) == ["application/problem+json"], status
            schema = response["content"]["application/problem+json"]["schema"]
            assert {"title", "status"} <= set(schema["required"])
        else:
            assert "application/json" in response["content"], status
    if "429" in responses:
        assert "Retry-After" in responses["429"]["headers"]


def test_the_answer_to_a_report_documents_receipt_secret_and_replays(
    spec: dict[str, Any],
) -> None:
    answer = spec["components"]["schemas"]["SubmittedAnswer"]["properties"]
    assert "100 bits" in answer["receipt"]["description"]
    assert "shown in this answer only" in answer["secret"]["description"]
    post = spec["paths"]["/v1/reports"]["post"]
    assert "Idempotent-Replayed" in post["responses"]["202"]["headers"]
    assert "secret: null" in post["description"]
    [key] = [p for p in post["parameters"] if p["name"] == "Idempotency-Key"]
    [string, _null] = key["schema"]["anyOf"]
    assert key["in"] == "header" and not key["required"]
    assert (string["minLength"], string["maxLength"]) == (1, 255)


def test_the_receipt_routes_require_the_secret_header(spec: dict[str, Any]) -> None:
    for method, path in (
        ("get", "/v1/receipts/{receipt}"),
        ("post", "/v1/receipts/{receipt}/messages"),
    ):
        params = {p["name"]: p for p in spec["paths"][path][method]["parameters"]}
        assert params["X-Receipt-Secret"]["required"] is True
        assert params["receipt"]["in"] == "path"


def test_the_422_rules_the_code_enforces_are_stated(spec: dict[str, Any]) -> None:
    """Issue 23, item 8: categories come from the policy, the harassment channel's limits,
    the outcome a close needs, RFC 3339 times, and the sizes as maxLength."""
    report = spec["components"]["schemas"]["ReportRequest"]["properties"]
    assert "policy" in report["category"]["description"]
    assert "valid_categories" in report["category"]["description"]
    assert "harassment" in report["channel"]["description"]
    assert "RFC 3339" in str(report["occurred_at"])
    assert report["summary"]["maxLength"] == 500
    assert report["description"]["maxLength"] == 100_000
    status = spec["paths"]["/v1/incidents/{incident_id}/status"]["post"]["responses"]
    assert "outcome" in status["422"]["description"]
    assert {"/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
