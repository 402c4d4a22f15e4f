"""The incident as a fold of its events, and the digest of the report a principal is shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.domain.envelope import Envelope
from services.domain.events import InvalidEvent, ReportSubmitted, make_event
from services.domain.incident import REPORT_FIELDS, IncidentState, apply, fold, report_digest

INCIDENT = "inc-0001"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
REPORT: dict[str, Any] = {
    "category": "sexual_misconduct",
    "summary": "Store manager assaulted an employee",
    "description": "After closing time on Friday...",
    "occurred_at": "2026-10-30T21:15:00Z",
    "location": "Store 12",
    "unit": "city-retail",
    "accused": ["p-wang"],
    "named": [],
}


def event(type_: str, minutes: int, subject: str = INCIDENT, **data: Any) -> Envelope:
    return make_event(
        type_,
        subject=subject,
        data=data,
        source="/services/test",
        time=T0 + timedelta(minutes=minutes),
    )


def submitted(minutes: int = 0, reporter: str | None = None) -> Envelope:
    return event(
        ReportSubmitted.TYPE,
        minutes,
        **REPORT,
        reporter=reporter,
        channel="web",
        report_digest=report_digest(REPORT),
    )


def triaged(minutes: int = 1) -> Envelope:
    return event(
        "incident.triaged.v1",
        minutes,
        category="sexual_misconduct",
        severity="critical",
        policy_version="2026-11-01",
        chain=[
            {
                "level": 1,
                "role": "hr_case_handler",
                "recipients": ["p-ma"],
                "acknowledge_within": 3600,
            }
        ],
        excluded=[{"principal": "p-chen", "rule": "accused_management_chain"}],
    )


def assigned(minutes: int = 2) -> Envelope:
    return event("incident.assigned.v1", minutes, level=1, principals=["p-ma"])


def acknowledged(minutes: int, principal: str = "p-ma") -> Envelope:
    return event("incident.acknowledged.v1", minutes, principal=principal, level=1)


def test_a_new_incident_has_no_history() -> None:
    state = fold(INCIDENT, [])
    assert state == IncidentState(incident_id=INCIDENT)
    assert state.status == "new" and state.version == 0


def test_a_submitted_report_opens_the_incident() -> None:
    state = fold(INCIDENT, [submitted()])
    assert state.status == "submitted"
    assert state.category == "sexual_misconduct"
    assert state.submitted_at == T0
    assert state.accused == ("p-wang",)
    assert state.report_digest == report_digest(REPORT)
    assert state.anonymous


def test_a_report_from_a_named_person_is_not_anonymous() -> None:
    assert not fold(INCIDENT, [submitted(reporter="p-liu")]).anonymous


def test_the_whole_life_of_an_incident_folds_in_order() -> None:
    history = [
        submitted(0),
        triaged(1),
        assigned(2),
        acknowledged(40),
        event("incident.status.changed.v1", 60, principal="p-ma", status="investigating"),
        event(
            "incident.status.changed.v1",
            600,
            principal="p-ma",
            status="closed",
            outcome="substantiated",
        ),
    ]
    states = [fold(INCIDENT, history[:n]) for n in range(1, len(history) + 1)]
    assert [s.status for s in states] == [
        "submitted",
        "triaged",
        "triaged",
        "acknowledged",
        "investigating",
        "closed",
    ]
    final = states[-1]
    assert final.version == len(history)
    assert final.history == tuple(e.type for e in history)
    assert final.severity == "critical" and final.policy_version == "2026-11-01"
    assert final.excluded == {"p-chen"}
    assert final.routed == {"p-ma"}
    assert final.acknowledged_at == T0 + timedelta(minutes=40)
    assert final.acknowledged_by == "p-ma"
    assert final.outcome == "substantiated"


def test_only_the_first_acknowledgement_counts() -> None:
    state = fold(INCIDENT, [submitted(), triaged(), acknowledged(30), acknowledged(90, "p-zhou")])
    assert state.acknowledged_at == T0 + timedelta(minutes=30)
    assert state.acknowledged_by == "p-ma"
    assert state.version == 4


def test_an_escalation_routes_to_its_recipients_and_raises_the_level() -> None:
    escalated = event(
        "incident.escalated.v1",
        61,
        level=2,
        recipients=["p-zhou"],
        reason="not_acknowledged",
        deadline=(T0 + timedelta(hours=3)).isoformat(),
    )
    assert fold(INCIDENT, [submitted(), triaged(), assigned()]).escalation_level == 1  # not 0
    state = fold(INCIDENT, [submitted(), triaged(), assigned(), escalated])
    assert state.escalation_level == 2
    assert state.routed == {"p-ma", "p-zhou"}


def test_a_reassignment_moves_a_conflicted_handler_to_the_excluded() -> None:
    reassigned = event(
        "incident.reassigned.v1",
        5,
        removed=[{"principal": "p-ma", "rule": "named_in_report"}],
        added=["p-zhou"],
    )
    state = fold(INCIDENT, [submitted(), triaged(), assigned(), reassigned])
    assert state.routed == {"p-zhou"}
    assert state.excluded == {"p-chen", "p-ma"}


def test_an_amendment_adds_accused_and_moves_the_digest() -> None:
    amended = event(
        "incident.report.amended.v1", 10, accused_added=["p-li"], report_digest="sha256:" + "0" * 64
    )
    state = fold(INCIDENT, [submitted(), amended])
    assert state.accused == ("p-wang", "p-li")
    assert state.report_digest == "sha256:" + "0" * 64


def test_an_event_that_changes_nothing_still_counts_in_the_history() -> None:
    viewed = event("incident.viewed.v1", 3, principal="p-ma", report_digest=report_digest(REPORT))
    before = fold(INCIDENT, [submitted()])
    after = apply(before, viewed)
    assert after.version == before.version + 1
    assert after.history[-1] == "incident.viewed.v1"
    assert after.status == before.status


def test_an_event_of_another_incident_is_refused() -> None:
    state = fold(INCIDENT, [submitted()])
    with pytest.raises(ValueError, match="inc-0002"):
        apply(state, acknowledged(5).model_copy(update={"subject": "inc-0002"}))


def test_an_event_of_an_unknown_type_is_refused() -> None:
    stranger = submitted().model_copy(update={"type": "incident.teleported.v1"})
    with pytest.raises(InvalidEvent, match="unknown event type"):
        fold(INCIDENT, [stranger])


def test_folding_does_not_change_earlier_states() -> None:
    first = fold(INCIDENT, [submitted()])
    apply(first, triaged())
    assert first.status == "submitted" and first.version == 1


def test_the_report_digest_is_a_sha256() -> None:
    digest = report_digest(REPORT)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    int(digest.removeprefix("sha256:"), 16)


def test_the_report_digest_is_stable() -> None:
    # Pinned: digests recorded in the ledger must stay comparable across releases.
    pinned = "sha256:cda6942bb5bcf4923de79ca63354f510221ed2128fa42e0bd519d058565c7b6e"
    assert report_digest(REPORT) == pinned
    assert report_digest(dict(reversed(list(REPORT.items())))) == pinned


def test_the_report_digest_ignores_what_is_not_report_content() -> None:
    assert report_digest(REPORT) == report_digest({**REPORT, "reporter": "p-liu", "channel": "api"})


@pytest.mark.parametrize("field", REPORT_FIELDS)
def test_the_report_digest_changes_with_any_report_field(field: str) -> None:
    changed = {**REPORT, field: ["someone else"] if isinstance(REPORT[field], list) else "x"}
    assert report_digest(changed) != report_digest(REPORT)


@given(st.text(min_size=1), st.text(min_size=1))
def test_different_summaries_give_different_digests(first: str, second: str) -> None:
    same = report_digest({**REPORT, "summary": first}) == report_digest(
        {**REPORT, "summary": second}
    )
    assert same == (first == second)
