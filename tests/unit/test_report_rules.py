"""Taking in a report: the input, who the reporter is, the harassment channel, the event."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.domain.envelope import canonical_json
from services.domain.events import ReportSubmitted, data_of, is_sealed
from services.domain.incident import REPORT_FIELDS, report_digest
from services.domain.policy import Policy
from services.domain.reports import (
    HARASSMENT_CHANNEL,
    ReporterRefused,
    ReportInput,
    ReportRequest,
    UnknownCategory,
    WrongChannel,
    check_category,
    for_harassment_channel,
    reporter_of,
    submit_report,
)
from services.infra.config import load_yaml_model
from services.infra.crypto import IncidentKey, Pseudonyms, new_data_key, new_salt

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


KEY = IncidentKey("inc-0001", new_data_key(), new_salt(), Pseudonyms(new_data_key()))
DIRECTORY = frozenset({"p-wang", "p-chen"})


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
        protect=KEY,
        known_people=DIRECTORY,
        event_id=INCIDENT_EVENT_ID,
    )


def test_a_report_becomes_the_submitted_event_that_opens_the_incident() -> None:
    event = submit(report(), reporter="p-liu")
    data = data_of(event)
    assert event.type == ReportSubmitted.TYPE
    assert event.subject == "inc-0001"
    assert event.id == event.correlationid == INCIDENT_EVENT_ID
    assert event.time == NOW
    assert isinstance(data, ReportSubmitted)
    assert is_sealed(data.summary) and KEY.open("summary", data.summary) == "Repeated remarks"
    assert KEY.open("description", data.description) == "Since March..."
    assert data.accused == ["p-wang"]
    assert data.channel == "web"


def test_the_reporter_travels_as_a_pseudonym_and_sealed_never_in_clear() -> None:
    event = submit(report(), reporter="p-liu")
    data = data_of(event)
    assert isinstance(data, ReportSubmitted)
    assert data.reporter == KEY.pseudonym("p-liu") != KEY.pseudonym("p-chen")
    assert data.reporter_identity is not None
    assert KEY.open("reporter_identity", data.reporter_identity) == "p-liu"
    assert "p-liu" not in event.to_bytes().decode()
    anonymous = data_of(submit(report()))
    assert isinstance(anonymous, ReportSubmitted)
    assert anonymous.reporter is None and anonymous.reporter_identity is None


def test_free_text_names_are_sealed_and_directory_ids_stay_clear() -> None:
    event = submit(report(accused=["p-wang", "the night driver"], named=["p-chen", "Anna"]))
    data = data_of(event)
    assert isinstance(data, ReportSubmitted)
    assert data.accused[0] == "p-wang" and data.named[0] == "p-chen"
    assert KEY.open("accused", data.accused[1]) == "the night driver"
    assert KEY.open("named", data.named[1]) == "Anna"
    assert "driver" not in event.to_bytes().decode() and "Anna" not in event.to_bytes().decode()


def test_the_submitted_digest_is_the_salted_digest_of_the_report_content() -> None:
    event = submit(report())
    content = report().model_dump(mode="json", exclude={"channel"})
    shown = {name: content.get(name) for name in REPORT_FIELDS}
    assert event.data["report_digest"] == KEY.digest(canonical_json(shown))
    # not the plain sha256, which anyone could recompute from a guess of the content
    assert event.data["report_digest"] != report_digest(content)


def test_the_channel_given_by_a_system_is_kept() -> None:
    assert submit(report(channel="hotline")).data["channel"] == "hotline"


def test_a_category_the_policy_does_not_know_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(UnknownCategory, match=r"valid: .*harassment"):
        check_category(report(category="gossip"), POLICY)


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


# -- the body of POST /v1/reports and who the reporter is -------------------------


def request(**changes: Any) -> ReportRequest:
    return ReportRequest.model_validate(
        {"category": "harassment", "summary": "s", "description": "d", **changes}
    )


def test_a_request_may_name_a_reporter_but_the_report_itself_does_not_carry_it() -> None:
    body = request(reporter="p-liu")
    assert body.reporter == "p-liu"
    assert "reporter" not in type(body.report()).model_fields
    assert body.report() == ReportInput.model_validate(
        {"category": "harassment", "summary": "s", "description": "d"}
    )
    event = submit(body, reporter="p-liu")  # the request is a report too
    assert event.data["reporter"] == KEY.pseudonym("p-liu")


@pytest.mark.parametrize("reporter", ["", "has space", "x" * 101, "-leading-dash"])
def test_a_malformed_reporter_id_is_refused(reporter: str) -> None:
    with pytest.raises(ValidationError, match="reporter"):
        request(reporter=reporter)


@pytest.mark.parametrize(
    ("caller", "system", "claimed", "explicit", "expected"),
    [
        (None, False, None, False, None),
        (None, False, None, True, None),  # reporter: null, anonymously: fine
        ("p-liu", False, None, False, "p-liu"),
        ("p-liu", False, "p-liu", True, "p-liu"),
        ("system:hris", True, "p-liu", True, "p-liu"),
        ("system:hris", True, None, False, None),
        ("system:hris", True, None, True, None),
    ],
)
def test_who_the_reporter_is(
    caller: str | None, system: bool, claimed: str | None, explicit: bool, expected: str | None
) -> None:
    assert (
        reporter_of(caller, caller_is_system=system, claimed=claimed, claimed_explicitly=explicit)
        == expected
    )


@pytest.mark.parametrize(
    ("caller", "claimed", "kind"),
    [
        (None, "p-liu", "anonymous_claim"),
        ("p-liu", "p-wang", "other_person"),
        ("p-liu", None, "explicit_null"),
    ],
)
def test_a_reporter_the_caller_may_not_name_is_refused(
    caller: str | None, claimed: str | None, kind: str
) -> None:
    with pytest.raises(ReporterRefused) as refused:
        reporter_of(caller, caller_is_system=False, claimed=claimed, claimed_explicitly=True)
    assert refused.value.kind == kind


@pytest.mark.parametrize("category", ["sexual_misconduct", "harassment"])
def test_the_harassment_channel_takes_its_two_categories(category: str) -> None:
    taken = for_harassment_channel(request(category=category))
    assert taken.channel == HARASSMENT_CHANNEL == "harassment"
    assert submit(taken).data["channel"] == "harassment"
    assert for_harassment_channel(request(category=category, channel="harassment")) == taken


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"category": "fraud"}, "not 'fraud'"), ({"channel": "hotline"}, "leave `channel` out")],
)
def test_the_harassment_channel_refuses_other_reports(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(WrongChannel, match=message):
        for_harassment_channel(request(**changes))
