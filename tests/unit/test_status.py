"""One status for everybody (services/domain/status.py) over event sequences: the
workflow, escalation to level N and to the independent level, stalls, revisions, the
deadlines of each level and the reporter's legal clocks."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from services.domain.envelope import Envelope
from services.domain.status import (
    Progress,
    advance,
    from_store,
    in_time_order,
    progress_of,
    to_store,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = 3600


def fold(*steps: tuple[str, int, dict[str, Any]]) -> Progress:
    """Events as (short type, minutes after T0, data)."""
    progress = Progress()
    for kind, minutes, data in steps:
        progress = advance(progress, f"incident.{kind}.v1", T0 + timedelta(minutes=minutes), data)
    return progress


def triaged(
    revision: int = 1, levels: int = 2, deadlines: dict[str, datetime] | None = None
) -> dict[str, Any]:
    return {
        "revision": revision,
        "chain": [
            {"level": k, "role": f"r{k}", "recipients": [f"p-{k}"], "acknowledge_within": HOUR * k}
            for k in range(1, levels + 1)
        ],
        "deadlines": deadlines or {},
    }


SUBMIT: tuple[str, int, dict[str, Any]] = ("report.submitted", 0, {})
CLOCKS = {"reporter_acknowledgement": T0 + timedelta(days=7), "feedback": T0 + timedelta(days=90)}


def test_the_workflow_in_words() -> None:
    assert fold(SUBMIT).label == "submitted"
    decided = fold(SUBMIT, ("triaged", 1, triaged(deadlines=CLOCKS)))
    assert (decided.status, decided.level, decided.label) == (
        "triaged",
        1,
        "triaged, level 1 asked",
    )
    assert decided.acknowledgement_due_at == T0 + timedelta(minutes=1, hours=1)
    acked = advance(decided, "incident.acknowledged.v1", T0 + timedelta(minutes=5), {})
    assert acked.label == "acknowledged at level 1" and acked.acknowledgement_due_at is None
    closed = fold(
        SUBMIT,
        ("triaged", 1, triaged()),
        ("acknowledged", 5, {}),
        ("status.changed", 9, {"status": "investigating"}),
        ("status.changed", 20, {"status": "closed", "outcome": "Warning issued."}),
    )
    assert closed.status == "closed" and closed.outcome == "Warning issued."
    assert closed.label == "closed with outcome" and closed.closed_at == T0 + timedelta(minutes=20)


def test_escalation_to_level_n_and_the_independent_level_with_their_deadlines() -> None:
    up = fold(
        SUBMIT,
        ("triaged", 1, triaged(levels=2)),
        ("escalated", 61, {"level": 2, "recipients": ["p-2"]}),
    )
    assert (up.status, up.label) == ("escalated", "escalated to level 2")
    assert up.due_at(1) == T0 + timedelta(minutes=61)  # level 1's hour from the decision
    assert up.due_at(2) == T0 + timedelta(minutes=61, hours=2)  # asked at 61, two hours
    past = advance(
        up, "incident.escalated.v1", T0 + timedelta(hours=4), {"level": 3, "recipients": ["p-i"]}
    )
    assert past.independent and past.label == "escalated to the independent level"
    assert past.due_at(3) == T0 + timedelta(hours=6)  # the last level's acknowledge_within
    empty = fold(
        SUBMIT, ("triaged", 1, triaged()), ("escalated", 2, {"level": 2, "recipients": []})
    )
    assert empty.level == 2 and empty.due_at(2) is None  # passed, nobody asked


def test_a_stall_shows_until_someone_acts() -> None:
    stalled = fold(
        SUBMIT,
        ("triaged", 1, triaged(levels=1)),
        ("escalated", 2, {"level": 1, "recipients": []}),
        ("escalation.stalled", 2, {"level": 2}),
    )
    assert stalled.stalled and stalled.independent
    assert stalled.label == "escalated to the independent level (stalled: nobody left to ask)"
    assert stalled.acknowledgement_due_at is None
    moved = advance(stalled, "incident.reassigned.v1", T0 + timedelta(minutes=9), {"added": ["x"]})
    assert not moved.stalled and moved.label == "escalated to the independent level"


def test_a_new_revision_restarts_the_chain_and_the_legal_clocks_run_on() -> None:
    later = T0 + timedelta(days=1)
    revised = fold(
        SUBMIT,
        ("triaged", 1, triaged(deadlines=CLOCKS)),
        ("acknowledged", 5, {}),
        ("triaged", 60 * 24, triaged(2, 3, {"reporter_acknowledgement": later})),
    )
    assert (revised.status, revised.level, revised.last_level) == ("triaged", 1, 3)
    assert revised.acknowledged_at is None and revised.first_acknowledged_at is not None
    assert revised.due_at(1) == later + timedelta(hours=1)  # from the new decision
    assert revised.reporter_acknowledgement_due == CLOCKS["reporter_acknowledgement"]
    stale = advance(revised, "incident.triaged.v1", later, triaged(revision=1))
    assert stale is revised  # an older decision arriving late changes nothing


def test_the_reporters_clocks_met_and_breached() -> None:
    progress = fold(
        SUBMIT,
        ("triaged", 1, triaged(deadlines=CLOCKS)),
        ("acknowledged", 5, {}),
        ("deadline.breached", 90 * 24 * 60, {"clock": "feedback"}),
    )
    clocks = {c["clock"]: c for c in progress.reporter_clocks()}
    assert clocks["reporter_acknowledgement"]["met_at"] == "2026-03-02T09:05:00.000000Z"
    assert clocks["feedback"]["met_at"] is None and clocks["feedback"]["breached"] is True
    answered = advance(progress, "incident.reporter.message.v1", T0, {"direction": "to_reporter"})
    assert {c["clock"]: c["breached"] for c in answered.reporter_clocks()}["feedback"] is False


def test_streams_merge_by_time() -> None:
    def event(kind: str, minutes: int) -> Envelope:
        return Envelope.model_validate(
            {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": "/t",
                "type": f"incident.{kind}.v1",
                "subject": "i-1",
                "time": T0 + timedelta(minutes=minutes),
                "data": {"level": 2, "recipients": ["p-2"]} if kind == "escalated" else {},
            }
        )

    merged = in_time_order(
        [event("report.submitted", 0), event("acknowledged", 90)], [event("escalated", 61)]
    )
    assert [e.type for e in merged][1] == "incident.escalated.v1"
    assert progress_of(merged).label == "acknowledged at level 2"


def test_the_stored_form_reads_back_exactly() -> None:
    progress = fold(
        SUBMIT,
        ("triaged", 1, triaged(deadlines=CLOCKS)),
        ("escalated", 61, {"level": 2, "recipients": ["p-2"]}),
        ("deadline.breached", 99, {"clock": "feedback"}),
    )
    assert from_store(json.loads(json.dumps(to_store(progress)))) == progress
    assert from_store(None) == Progress()
