"""Taking in a report: the input a reporter sends and the submitted event it becomes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.domain.events import SUBMITTED, ReportSubmitted, data_of
from services.domain.incident import report_digest
from services.domain.policy import Policy
from services.domain.reports import ReportInput, UnknownCategory, submit_report
from services.infra.config import load_yaml_model

POLICY = load_yaml_model(
    Path(__file__).resolve().parents[2] / "services" / "data" / "policy.yaml", Policy
)
NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
INCIDENT_EVENT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def report(**changes: Any) -> ReportInput:
    body: dict[str, Any] = {
        "category": "harassment",
        "summary": "  Repeated remarks  ",
        "description": "Since March...",
        "accused": [" p-wang "],
        **changes,
    }
    return ReportInput.model_validate(body)


def submit(body: ReportInput, reporter: str | None = None) -> Any:
    return submit_report(
        body,
        POLICY,
        incident_id="inc-0001",
        reporter=reporter,
        channel="web",
        actor=reporter or "anonymous",
        source="/services/intake",
        now=NOW,
        event_id=INCIDENT_EVENT_ID,
    )


def test_a_report_becomes_the_submitted_event_that_opens_the_incident() -> None:
    event = submit(report(), reporter="p-liu")
    data = data_of(event)
    assert event.type == SUBMITTED
    assert event.subject == "inc-0001"
    assert event.id == event.correlationid == INCIDENT_EVENT_ID
    assert event.time == NOW
    assert isinstance(data, ReportSubmitted)
    assert data.summary == "Repeated remarks"
    assert data.accused == ["p-wang"]
    assert data.reporter == "p-liu"
    assert data.channel == "web"


def test_the_submitted_digest_is_the_digest_of_the_report_content() -> None:
    event = submit(report())
    content = report().model_dump(mode="json", exclude={"channel"})
    assert event.data["report_digest"] == report_digest(content)


def test_the_channel_given_by_a_system_is_kept() -> None:
    assert submit(report(channel="hotline")).data["channel"] == "hotline"


def test_a_category_the_policy_does_not_know_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(UnknownCategory, match=r"valid: .*harassment"):
        submit(report(category="gossip"))


def test_a_report_time_without_a_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        report(occurred_at="2026-10-30T21:15:00")


@pytest.mark.parametrize("names", [[""], ["   "], ["x" * 201]])
def test_empty_or_overlong_names_are_refused(names: list[str]) -> None:
    with pytest.raises(ValidationError, match="1 to 200 characters"):
        report(named=names)


def test_unknown_report_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="reporter"):
        report(reporter="p-li")
