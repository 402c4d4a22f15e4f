"""Who knew what, and when: the seed case read back from the ledger, instant by instant.

The story (ledger times, 2 November 2026):

    09:00:00  an anonymous report of sexual misconduct by a store manager (digest d1)
    09:00:01  triage: critical, chain hr_case_handler -> hr_head
    09:00:02  p-chen (HR case handler) is notified (d1)
    09:30:00  p-chen opens the report (d1) ... and does nothing
    10:00:02  the hour is up: escalated to p-zhou (HR head)
    10:00:03  p-zhou is notified (d1)
    10:20:00  p-zhou acknowledges
    10:25:00  p-wang (the accused) tries to open it and is refused
    11:00:00  the reporter amends the report (digest d2)
    11:05:00  p-zhou reads the amended version (d2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.domain.envelope import Envelope
from services.domain.events import ReportSubmitted, make_event
from services.domain.incident import IncidentState, fold, report_digest
from services.domain.knowledge import (
    REPORTER,
    Knowledge,
    LedgerEvent,
    PrincipalKnowledge,
    Via,
    deliveries_as_of,
    knowledge_as_of,
    state_as_of,
)

INCIDENT = "inc-seed"
DAY = datetime(2026, 11, 2, tzinfo=UTC)
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
D1 = report_digest(REPORT)
D2 = report_digest({**REPORT, "description": REPORT["description"] + " It happened twice."})


def at(hh: int, mm: int, ss: float = 0.0) -> datetime:
    """An instant of the story's day (UTC)."""
    return DAY + timedelta(hours=hh, minutes=mm, seconds=ss)


def ev(
    type_: str,
    when: datetime,
    *,
    actor: str | None = None,
    subject: str = INCIDENT,
    **data: Any,
) -> Envelope:
    return make_event(
        type_, subject=subject, data=data, source="/services/test", time=when, actor=actor
    )


def submitted(
    when: datetime, *, reporter: str | None = None, actor: str = "reporter:anonymous"
) -> Envelope:
    return ev(
        ReportSubmitted.TYPE, when, actor=actor, **REPORT, reporter=reporter, report_digest=D1
    )


def triaged(when: datetime) -> Envelope:
    return ev(
        "incident.triaged.v1",
        when,
        actor="system:triage",
        category="sexual_misconduct",
        severity="critical",
        policy_version="2026-11-01",
        chain=[
            {
                "level": 1,
                "role": "hr_case_handler",
                "recipients": ["p-chen"],
                "acknowledge_within": 3600,
            },
            {"level": 2, "role": "hr_head", "recipients": ["p-zhou"], "acknowledge_within": 7200},
        ],
        excluded=[{"principal": "p-wang", "rule": "accused"}],
    )


def notified(when: datetime, principal: str, digest: str = D1, level: int = 1) -> Envelope:
    return ev(
        "incident.notified.v1",
        when,
        actor="system:escalation",
        principal=principal,
        channel="email",
        level=level,
        report_digest=digest,
    )


def viewed(when: datetime, principal: str, digest: str = D1) -> Envelope:
    return ev(
        "incident.viewed.v1", when, actor=principal, principal=principal, report_digest=digest
    )


def escalated(when: datetime, recipients: list[str], level: int = 2) -> Envelope:
    return ev(
        "incident.escalated.v1",
        when,
        actor="system:escalation",
        level=level,
        recipients=recipients,
        reason="not_acknowledged" if recipients else "nobody_eligible",
        deadline=when + timedelta(hours=2),
    )


def acknowledged(when: datetime, principal: str, level: int = 2) -> Envelope:
    return ev("incident.acknowledged.v1", when, actor=principal, principal=principal, level=level)


def denied(when: datetime, principal: str) -> Envelope:
    return ev(
        "incident.access.denied.v1",
        when,
        actor=principal,
        principal=principal,
        action="view",
        reason="excluded",
    )


def amended(when: datetime, digest: str = D2) -> Envelope:
    return ev(
        "incident.report.amended.v1",
        when,
        actor="reporter:anonymous",
        addendum="It happened twice.",
        report_digest=digest,
    )


def ledger(*timed: tuple[datetime, Envelope]) -> list[LedgerEvent]:
    """Ledger entries recorded at the given instants, indexed in order."""
    return [
        LedgerEvent(index=i, recorded_at=when, envelope=envelope)
        for i, (when, envelope) in enumerate(timed)
    ]


def seed_story() -> list[LedgerEvent]:
    moments = [
        (at(9, 0), submitted(at(9, 0))),
        (at(9, 0, 1), triaged(at(9, 0, 1))),
        (at(9, 0, 2), notified(at(9, 0, 2), "p-chen")),
        (at(9, 30), viewed(at(9, 30), "p-chen")),
        (at(10, 0, 2), escalated(at(10, 0, 2), ["p-zhou"])),
        (at(10, 0, 3), notified(at(10, 0, 3), "p-zhou", level=2)),
        (at(10, 20), acknowledged(at(10, 20), "p-zhou")),
        (at(10, 25), denied(at(10, 25), "p-wang")),
        (at(11, 0), amended(at(11, 0))),
        (at(11, 5), viewed(at(11, 5), "p-zhou", D2)),
    ]
    return ledger(*moments)


STORY = seed_story()


def pk(
    principal: str,
    first: datetime,
    via: Sequence[Via],
    digests: Sequence[str],
    ack: datetime | None = None,
) -> PrincipalKnowledge:
    return PrincipalKnowledge(
        principal=principal,
        first_known_at=first,
        via=tuple(via),
        report_digests=tuple(digests),
        acknowledged_at=ack,
    )


# Who knew, instant by instant: exactly these principals, in this order.
REPORTER_D1 = pk(REPORTER, at(9, 0), ["reported"], [D1])
CHEN_NOTIFIED = pk("p-chen", at(9, 0, 2), ["notified"], [D1])
CHEN_VIEWED = pk("p-chen", at(9, 0, 2), ["notified", "viewed"], [D1])
ZHOU_ESCALATED = pk("p-zhou", at(10, 0, 2), ["escalated"], [D1])
ZHOU_NOTIFIED = pk("p-zhou", at(10, 0, 2), ["escalated", "notified"], [D1])
ZHOU_ACK = pk("p-zhou", at(10, 0, 2), ["escalated", "notified", "acknowledged"], [D1], at(10, 20))
REPORTER_D2 = pk(REPORTER, at(9, 0), ["reported"], [D1, D2])
ZHOU_READ_D2 = pk(
    "p-zhou",
    at(10, 0, 2),
    ["escalated", "notified", "acknowledged", "viewed"],
    [D1, D2],
    at(10, 20),
)

TIMELINE: list[tuple[datetime, list[PrincipalKnowledge]]] = [
    (at(8, 59, 59.999), []),
    (at(9, 0), [REPORTER_D1]),  # as_of is inclusive: recorded at 09:00:00 counts at 09:00:00
    (at(9, 0, 1.5), [REPORTER_D1]),  # triage knows the category, not the report: nobody new
    (at(9, 0, 2), [REPORTER_D1, CHEN_NOTIFIED]),
    (at(9, 15), [REPORTER_D1, CHEN_NOTIFIED]),
    (at(9, 30, 0.5), [REPORTER_D1, CHEN_VIEWED]),
    (at(10, 0, 1.999), [REPORTER_D1, CHEN_VIEWED]),
    (at(10, 0, 2.5), [REPORTER_D1, CHEN_VIEWED, ZHOU_ESCALATED]),
    (at(10, 0, 3.5), [REPORTER_D1, CHEN_VIEWED, ZHOU_NOTIFIED]),
    (at(10, 19, 59), [REPORTER_D1, CHEN_VIEWED, ZHOU_NOTIFIED]),
    (at(10, 20), [REPORTER_D1, CHEN_VIEWED, ZHOU_ACK]),
    (at(10, 30), [REPORTER_D1, CHEN_VIEWED, ZHOU_ACK]),  # p-wang was refused: not there
    (at(11, 0, 30), [REPORTER_D2, CHEN_VIEWED, ZHOU_ACK]),  # amended: nobody else saw d2 yet
    (at(11, 10), [REPORTER_D2, CHEN_VIEWED, ZHOU_READ_D2]),
    (at(23, 59), [REPORTER_D2, CHEN_VIEWED, ZHOU_READ_D2]),
]


@pytest.mark.parametrize(
    ("as_of", "expected"), TIMELINE, ids=[t.strftime("%H:%M:%S.%f") for t, _ in TIMELINE]
)
def test_who_knew_at_each_instant_of_the_seed_case(
    as_of: datetime, expected: list[PrincipalKnowledge]
) -> None:
    knowledge = knowledge_as_of(INCIDENT, STORY, as_of)
    assert knowledge == Knowledge(
        incident_id=INCIDENT, as_of=as_of, principals=tuple(expected), time_basis="ledger"
    )


def test_the_accused_who_was_refused_never_appears() -> None:
    for as_of, _ in TIMELINE:
        assert "p-wang" not in knowledge_as_of(INCIDENT, STORY, as_of).names()


def test_the_triage_and_escalation_systems_are_not_knowers() -> None:
    names = knowledge_as_of(INCIDENT, STORY, at(23, 0)).names()
    assert names == (REPORTER, "p-chen", "p-zhou")


def test_as_of_in_another_timezone_is_the_same_instant() -> None:
    paris = timezone(timedelta(hours=1))
    local = at(10, 0, 2.5).astimezone(paris)
    assert knowledge_as_of(INCIDENT, STORY, local).principals == (
        REPORTER_D1,
        CHEN_VIEWED,
        ZHOU_ESCALATED,
    )


def test_a_backdated_event_counts_from_when_the_ledger_recorded_it() -> None:
    # A client writes time=08:00 into its event, but the ledger only got it at 12:00.
    backdated = notified(at(8, 0), "p-ma", level=1)
    entries = [*STORY, LedgerEvent(index=len(STORY), recorded_at=at(12, 0), envelope=backdated)]

    assert knowledge_as_of(INCIDENT, entries, at(9, 0)).get("p-ma") is None
    assert knowledge_as_of(INCIDENT, entries, at(11, 59, 59)).get("p-ma") is None
    late = knowledge_as_of(INCIDENT, entries, at(12, 0))
    assert late.get("p-ma") == pk("p-ma", at(12, 0), ["notified"], [D1])
    assert late.names()[-1] == "p-ma"  # sorted by ledger time, not by the claimed time


def test_a_postdated_event_counts_from_when_the_ledger_recorded_it_too() -> None:
    ahead = viewed(at(18, 0), "p-ma")
    entries = [*STORY, LedgerEvent(index=len(STORY), recorded_at=at(11, 30), envelope=ahead)]
    assert knowledge_as_of(INCIDENT, entries, at(11, 30)).get("p-ma") == pk(
        "p-ma", at(11, 30), ["viewed"], [D1]
    )


def test_the_reporter_is_revealed_only_to_who_may_see_it() -> None:
    entries = ledger(
        (at(9, 0), submitted(at(9, 0), reporter="p-liu", actor="p-liu")),
        (at(9, 0, 2), notified(at(9, 0, 2), "p-chen")),
        (at(11, 0), amended(at(11, 0))),
    )
    hidden = knowledge_as_of(INCIDENT, entries, at(12, 0))
    assert hidden.names() == (REPORTER, "p-chen")
    assert "p-liu" not in str(hidden.to_json())

    revealed = knowledge_as_of(INCIDENT, entries, at(12, 0), reveal_reporter=True)
    assert revealed.names() == ("p-liu", "p-chen")
    assert revealed.get("p-liu") == pk("p-liu", at(9, 0), ["reported"], [D1, D2])
    assert revealed.get(REPORTER) is None


def test_an_anonymous_reporter_stays_reporter_even_when_revealing() -> None:
    revealed = knowledge_as_of(INCIDENT, STORY, at(12, 0), reveal_reporter=True)
    assert revealed.names()[0] == REPORTER


def test_a_submitting_system_knows_from_submission() -> None:
    entries = ledger(
        (at(9, 0), submitted(at(9, 0), actor="system:hris")),
        (at(9, 0, 2), notified(at(9, 0, 2), "p-chen")),
    )
    knowledge = knowledge_as_of(INCIDENT, entries, at(9, 0, 1))
    assert knowledge.principals == (
        pk(REPORTER, at(9, 0), ["reported"], [D1]),
        pk("system:hris", at(9, 0), ["submitted"], [D1]),
    )


def test_a_system_submitting_for_a_named_person_shows_both_when_revealing() -> None:
    entries = ledger((at(9, 0), submitted(at(9, 0), reporter="p-liu", actor="system:hotline")))
    knowledge = knowledge_as_of(INCIDENT, entries, at(9, 0), reveal_reporter=True)
    assert knowledge.names() == ("p-liu", "system:hotline")
    assert knowledge_as_of(INCIDENT, entries, at(9, 0)).names() == (REPORTER, "system:hotline")


def test_an_escalation_shows_the_latest_report_version() -> None:
    entries = [
        *STORY,
        LedgerEvent(10, at(12, 0, 2), escalated(at(12, 0, 2), ["p-sun", "p-zhou"], level=3)),
        LedgerEvent(11, at(12, 30), acknowledged(at(12, 30), "p-sun", level=3)),
        LedgerEvent(12, at(12, 45), acknowledged(at(12, 45), "p-zhou")),
    ]
    knowledge = knowledge_as_of(INCIDENT, entries, at(13, 0))
    assert knowledge.get("p-sun") == pk(
        "p-sun", at(12, 0, 2), ["escalated", "acknowledged"], [D2], at(12, 30)
    )
    # p-zhou's second acknowledgement keeps the first time; via and digests stay distinct.
    assert knowledge.get("p-zhou") == ZHOU_READ_D2
    assert knowledge.names() == (REPORTER, "p-chen", "p-zhou", "p-sun")


def test_an_escalation_to_nobody_makes_nobody_know() -> None:
    entries = [*STORY, LedgerEvent(10, at(12, 0), escalated(at(12, 0), [], level=3))]
    assert knowledge_as_of(INCIDENT, entries, at(13, 0)).principals == (
        REPORTER_D2,
        CHEN_VIEWED,
        ZHOU_READ_D2,
    )


def test_an_acknowledgement_before_any_report_carries_no_digest() -> None:
    entries = ledger((at(9, 0), acknowledged(at(9, 0), "p-chen", level=1)))
    assert knowledge_as_of(INCIDENT, entries, at(9, 0)).principals == (
        pk("p-chen", at(9, 0), ["acknowledged"], [], at(9, 0)),
    )


def test_same_instant_is_ordered_by_principal() -> None:
    entries = ledger(
        (at(10, 0), escalated(at(10, 0), ["p-zhou", "p-an"])),
        (at(10, 0), notified(at(10, 0), "p-chen")),
    )
    assert knowledge_as_of(INCIDENT, entries, at(10, 0)).names() == ("p-an", "p-chen", "p-zhou")


def test_entries_are_read_in_index_order() -> None:
    shuffled = list(reversed(STORY))
    assert knowledge_as_of(INCIDENT, shuffled, at(12, 0)) == knowledge_as_of(
        INCIDENT, STORY, at(12, 0)
    )


def test_the_json_form_follows_the_spec() -> None:
    body = knowledge_as_of(INCIDENT, STORY, at(10, 20, 0.5)).to_json()
    assert body == {
        "incident_id": INCIDENT,
        "as_of": "2026-11-02T10:20:00.500000Z",
        "time_basis": "ledger",
        "principals": [
            {
                "principal": "reporter",
                "first_known_at": "2026-11-02T09:00:00.000000Z",
                "via": ["reported"],
                "report_digests": [D1],
                "acknowledged_at": None,
                "knew_at": "2026-11-02T09:00:00.000000Z",
                "delivery": None,
            },
            {
                "principal": "p-chen",
                "first_known_at": "2026-11-02T09:00:02.000000Z",
                "via": ["notified", "viewed"],
                "report_digests": [D1],
                "acknowledged_at": None,
                "knew_at": "2026-11-02T09:30:00.000000Z",  # her view: no delivery recorded
                "delivery": {
                    "queued_at": "2026-11-02T09:00:02.000000Z",
                    "delivered_at": None,
                    "failed_at": None,
                    "opened_at": "2026-11-02T09:30:00.000000Z",
                    "adapter": None,
                },
            },
            {
                "principal": "p-zhou",
                "first_known_at": "2026-11-02T10:00:02.000000Z",
                "via": ["escalated", "notified", "acknowledged"],
                "report_digests": [D1],
                "acknowledged_at": "2026-11-02T10:20:00.000000Z",
                "knew_at": "2026-11-02T10:20:00.000000Z",
                "delivery": {
                    "queued_at": "2026-11-02T10:00:03.000000Z",
                    "delivered_at": None,
                    "failed_at": None,
                    "opened_at": None,
                    "adapter": None,
                },
            },
        ],
    }


def test_json_times_are_utc_with_z_whatever_the_input_zone() -> None:
    tokyo = timezone(timedelta(hours=9))
    body = knowledge_as_of(INCIDENT, STORY, at(9, 0).astimezone(tokyo)).to_json()
    assert body["as_of"] == "2026-11-02T09:00:00.000000Z"


def test_a_naive_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        knowledge_as_of(INCIDENT, STORY, datetime(2026, 11, 2, 10, 0))
    with pytest.raises(ValueError, match="timezone"):
        state_as_of(INCIDENT, STORY, datetime(2026, 11, 2, 10, 0))


def test_a_naive_ledger_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        LedgerEvent(0, datetime(2026, 11, 2, 9, 0), submitted(at(9, 0)))


def test_an_event_of_another_incident_is_refused_even_if_later() -> None:
    other = ev(
        "incident.viewed.v1", at(12, 0), subject="inc-other", principal="p-ma", report_digest=D1
    )
    entries = [*STORY, LedgerEvent(10, at(12, 0), other)]
    with pytest.raises(ValueError, match="inc-other"):
        knowledge_as_of(INCIDENT, entries, at(9, 0))
    with pytest.raises(ValueError, match="inc-other"):
        state_as_of(INCIDENT, entries, at(9, 0))


def test_no_ledger_no_knowledge() -> None:
    knowledge = knowledge_as_of(INCIDENT, [], at(12, 0))
    assert knowledge.principals == ()
    assert knowledge.to_json()["principals"] == []


# -- the incident as it stood then: the services' own fold over the recorded prefix


def test_state_as_of_replays_the_same_fold() -> None:
    assert state_as_of(INCIDENT, STORY, at(8, 0)) == IncidentState(incident_id=INCIDENT)
    for as_of, _ in TIMELINE:
        prefix = [e.envelope for e in STORY if e.recorded_at <= as_of]
        assert state_as_of(INCIDENT, STORY, as_of) == fold(INCIDENT, prefix)


def test_state_as_of_the_seed_case() -> None:
    assert state_as_of(INCIDENT, STORY, at(9, 0, 0.5)).status == "submitted"
    waiting = state_as_of(INCIDENT, STORY, at(10, 0, 1))
    assert waiting.status == "triaged" and waiting.acknowledged_at is None
    assert waiting.excluded == {"p-wang"}
    acknowledged_state = state_as_of(INCIDENT, STORY, at(10, 20, 0.5))
    assert acknowledged_state.status == "acknowledged"
    assert acknowledged_state.acknowledged_by == "p-zhou"
    assert acknowledged_state.escalation_level == 2
    assert acknowledged_state.routed == {"p-zhou"}
    final = state_as_of(INCIDENT, STORY, at(12, 0))
    assert final.report_digest == D2 and final.version == len(STORY)


def test_state_as_of_ignores_a_backdated_event() -> None:
    late_ack = acknowledged(at(9, 10), "p-chen", level=1)
    entries = [*STORY[:4], LedgerEvent(4, at(10, 0), late_ack)]
    assert state_as_of(INCIDENT, entries, at(9, 45)).acknowledged_at is None
    assert state_as_of(INCIDENT, entries, at(10, 0)).acknowledged_by == "p-chen"


# -- properties: knowledge only grows, and a first_known_at never moves


@dataclass(frozen=True)
class Step:
    gap: float  # seconds after the previous entry
    kind: str
    principals: tuple[str, ...]

    @property
    def who(self) -> str:
        """The one principal of a notified/viewed/acknowledged/denied step."""
        return self.principals[0] if self.principals else "p-ma"

    def knowers(self) -> set[str]:
        """Whom this step makes know (the reporter and systems aside)."""
        if self.kind == "escalated":
            return set(self.principals)
        if self.kind in {"notified", "viewed", "acknowledged"}:
            return {self.who}
        return set()


PEOPLE = st.sampled_from(["p-chen", "p-zhou", "p-ma", "p-wang", "p-sun"])
STEP = st.builds(
    Step,
    gap=st.floats(min_value=0, max_value=3600, allow_nan=False),
    kind=st.sampled_from(
        ["submitted", "amended", "notified", "viewed", "escalated", "acknowledged", "denied"]
    ),
    principals=st.lists(PEOPLE, max_size=3).map(tuple),
)


def envelope_of(step: Step, when: datetime, system_submitter: bool) -> Envelope:
    match step.kind:
        case "submitted":
            return submitted(
                when, actor="system:hris" if system_submitter else "reporter:anonymous"
            )
        case "amended":
            return amended(when, report_digest({**REPORT, "summary": str(when)}))
        case "notified":
            return notified(when, step.who)
        case "viewed":
            return viewed(when, step.who, D2)
        case "escalated":
            return escalated(when, list(step.principals))
        case "acknowledged":
            return acknowledged(when, step.who)
        case _:
            return denied(when, step.who)


def story_of(steps: list[Step], system_submitter: bool) -> list[LedgerEvent]:
    when = at(9, 0)
    timed: list[tuple[datetime, Envelope]] = []
    for step in steps:
        when += timedelta(seconds=step.gap)
        timed.append((when, envelope_of(step, when, system_submitter)))
    return ledger(*timed)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(STEP, max_size=12),
    system_submitter=st.booleans(),
    offsets=st.tuples(
        st.floats(min_value=-60, max_value=50_000, allow_nan=False),
        st.floats(min_value=-60, max_value=50_000, allow_nan=False),
    ),
)
def test_knowledge_only_grows_and_first_known_never_moves(
    steps: list[Step], system_submitter: bool, offsets: tuple[float, float]
) -> None:
    entries = story_of(steps, system_submitter)
    t1, t2 = sorted(at(9, 0) + timedelta(seconds=s) for s in offsets)
    earlier = knowledge_as_of(INCIDENT, entries, t1)
    later = knowledge_as_of(INCIDENT, entries, t2)

    assert set(earlier.names()) <= set(later.names())
    for before in earlier.principals:
        after = later.get(before.principal)
        assert after is not None
        assert after.first_known_at == before.first_known_at
        assert before.first_known_at <= t1
        assert after.via[: len(before.via)] == before.via
        assert after.report_digests[: len(before.report_digests)] == before.report_digests
        if before.acknowledged_at is not None:
            assert after.acknowledged_at == before.acknowledged_at
    # exactly the people some knowing step named (refusals alone teach nothing)
    people = {n for n in later.names() if n != REPORTER and not n.startswith("system:")}
    told = {
        p for s, e in zip(steps, entries, strict=True) if e.recorded_at <= t2 for p in s.knowers()
    }
    assert people == told


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(STEP, max_size=12),
    offset=st.floats(min_value=-60, max_value=50_000, allow_nan=False),
)
def test_principals_are_sorted_and_distinct(steps: list[Step], offset: float) -> None:
    knowledge = knowledge_as_of(
        INCIDENT, story_of(steps, False), at(9, 0) + timedelta(seconds=offset)
    )
    keys = [(p.first_known_at, p.principal) for p in knowledge.principals]
    assert keys == sorted(keys)
    assert len(set(knowledge.names())) == len(keys)
    for p in knowledge.principals:
        assert len(set(p.via)) == len(p.via)
        assert len(set(p.report_digests)) == len(p.report_digests)


# Delivery: queued, delivered, failed, opened (issue 22)


def outcome(
    when: datetime, notice: Envelope, failed: bool = False, adapter: str = "webhook"
) -> Envelope:
    data: dict[str, Any] = {
        "notice_id": notice.id,
        "principal": notice.data["principal"],
        "level": notice.data["level"],
        "channel": notice.data["channel"],
        "adapter": adapter,
        "attempts": 1,
    }
    if failed:
        data.update(reason="refused", detail="HTTP 400")
    kind = "incident.notice.failed.v1" if failed else "incident.notice.delivered.v1"
    return ev(kind, when, actor="system:escalation", **data)


def test_a_failed_notice_is_notified_but_not_delivered_and_proves_no_knowledge() -> None:
    to_chen = notified(at(9, 0, 2), "p-chen")
    to_zhou = notified(at(10, 0, 3), "p-zhou", level=2)
    entries = ledger(
        (at(9, 0), submitted(at(9, 0))),
        (at(9, 0, 1), triaged(at(9, 0, 1))),
        (at(9, 0, 3), outcome(at(9, 0, 3), to_chen, failed=True)),  # before its notice
        (at(9, 0, 4), to_chen),
        (at(10, 0, 2), escalated(at(10, 0, 2), ["p-zhou"])),
        (at(10, 0, 3), to_zhou),
        (at(10, 0, 4), outcome(at(10, 0, 4), to_zhou)),
        (at(10, 5), viewed(at(10, 5), "p-zhou")),
    )
    known = knowledge_as_of(INCIDENT, entries, at(12, 0))

    chen, zhou = known.get("p-chen"), known.get("p-zhou")
    assert chen is not None and zhou is not None
    assert chen.via == ("notified",) and chen.knew_at is None
    assert chen.to_json()["delivery"] == {
        "queued_at": "2026-11-02T09:00:04.000000Z",
        "delivered_at": None,
        "failed_at": "2026-11-02T09:00:03.000000Z",
        "opened_at": None,
        "adapter": None,
    }
    assert zhou.knew_at == at(10, 0, 4)  # the webhook's 2xx, before her view
    assert zhou.delivery is not None and zhou.delivery.adapter == "webhook"
    assert zhou.delivery.opened_at == at(10, 5)
    assert [m for _, m in zhou.marks][-2:] == ["delivered", "opened"]

    rows = [n.to_json() for n in deliveries_as_of(INCIDENT, entries, at(12, 0))]
    assert [(r["principal"], r["status"], r["reason"], r["detail"]) for r in rows] == [
        ("p-chen", "failed", "refused", "HTTP 400"),
        ("p-zhou", "delivered", None, None),
    ]
    assert rows[0]["notice_id"] == to_chen.id
    # as of before the outcome was recorded, the notice is only queued
    early = deliveries_as_of(INCIDENT, entries, at(10, 0, 3))
    assert [n.status for n in early] == ["failed", "queued"]


def test_the_log_adapter_confirms_a_line_not_a_person() -> None:
    notice = notified(at(9, 0, 2), "p-chen")
    entries = ledger(
        (at(9, 0), submitted(at(9, 0))),
        (at(9, 0, 2), notice),
        (at(9, 0, 3), outcome(at(9, 0, 3), notice, adapter="log")),
    )
    chen = knowledge_as_of(INCIDENT, entries, at(10, 0)).get("p-chen")
    assert chen is not None and chen.delivery is not None
    assert chen.delivery.delivered_at == at(9, 0, 3) and chen.delivery.adapter == "log"
    assert chen.knew_at is None


def test_opened_is_the_first_view_after_the_notice_not_one_before() -> None:
    notice = notified(at(9, 10), "p-chen")
    entries = ledger(
        (at(9, 0), submitted(at(9, 0))),
        (at(9, 5), viewed(at(9, 5), "p-chen")),
        (at(9, 10), notice),
        (at(9, 20), viewed(at(9, 20), "p-chen")),
    )
    chen = knowledge_as_of(INCIDENT, entries, at(10, 0)).get("p-chen")
    assert chen is not None and chen.delivery is not None
    assert chen.delivery.opened_at == at(9, 20)
    assert chen.knew_at == at(9, 5)
