"""The replay folds ledger events from their JSON (`apply_data`) without validating them
again: it must give what the validating fold (`apply`) gives, and an event that does not
read that way must take the validating path (skipped, or the incident cannot replay)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.audit.checkpoint import NoteSigner
from services.audit.cli import incidents_as_of
from services.audit.verify import MemorySource
from services.domain.envelope import Envelope
from services.domain.events import InvalidEvent, make_event
from services.domain.incident import IncidentState, apply, apply_data, fold
from tests.unit.test_incident import INCIDENT, acknowledged, assigned, event, submitted, triaged
from tests.unit.test_verify import _leaf

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def life() -> list[Envelope]:
    """Every kind of event the fold reads, and some it only counts."""
    return [
        submitted(0, reporter="p-liu"),
        event("incident.report.amended.v1", 1, accused_added=["p-li"], report_digest="sha256:1"),
        triaged(2),
        assigned(3),
        event(
            "incident.reassigned.v1",
            4,
            removed=[{"principal": "p-ma", "rule": "named_in_report"}],
            added=["p-zhou"],
        ),
        event(
            "incident.escalated.v1",
            5,
            level=2,
            recipients=["p-sun"],
            reason="not_acknowledged",
            deadline="2026-11-01T10:05:00Z",
        ),
        event("incident.viewed.v1", 6, principal="p-zhou", report_digest="sha256:1"),
        acknowledged(7, "p-zhou"),
        acknowledged(8, "p-sun"),
        event("incident.status.changed.v1", 9, principal="p-zhou", status="closed", outcome="ok"),
    ]


async def test_the_replay_of_a_ledger_gives_the_services_fold_of_its_events() -> None:
    """Times read by `datetime.fromisoformat`, events grouped by subject, in ledger order:
    the same state as `fold` over the validated envelopes."""
    events = life()
    other = submitted(3).model_copy(update={"subject": "inc-other"})
    ledger = (
        [e.to_dict() for e in events[:5]] + [other.to_dict()] + [e.to_dict() for e in events[5:]]
    )
    states = await incidents_as_of(leaf_log(ledger), T0 + timedelta(minutes=1))
    expected = fold(INCIDENT, events)
    assert states[INCIDENT] == expected
    assert expected.status == "closed" and expected.version == len(events)
    assert expected.acknowledged_by == "p-zhou" and expected.escalation_level == 2
    assert expected.routed == {"p-zhou", "p-sun"} and expected.excluded == {"p-chen", "p-ma"}
    assert expected.accused == ("p-wang", "p-li") and not expected.anonymous
    assert states["inc-other"] == fold("inc-other", [other])


def test_absent_optional_fields_read_as_the_models_defaults() -> None:
    state = apply(IncidentState(incident_id=INCIDENT), submitted())
    bare = apply_data(state, "incident.reassigned.v1", T0, {})  # removed, added: []
    assert (bare.routed, bare.excluded, bare.version) == (state.routed, state.excluded, 2)
    closed = apply_data(state, "incident.status.changed.v1", T0, {"status": "closed"})
    assert closed.status == "closed" and closed.outcome is None


def test_an_unknown_event_type_is_refused_by_the_json_fold_too() -> None:
    with pytest.raises(InvalidEvent):
        apply_data(IncidentState(incident_id=INCIDENT), "incident.nonsense.v1", T0, {})


def leaf_log(events: list[dict[str, Any]]) -> MemorySource:
    leaves = [
        _leaf(i, T0 + timedelta(seconds=i), e, str(e.get("subject"))) for i, e in enumerate(events)
    ]
    return MemorySource.build(NoteSigner.generate("test.example/log"), leaves, [len(leaves)])


def ack(subject: str, **changes: Any) -> dict[str, Any]:
    raw = make_event(
        "incident.acknowledged.v1",
        subject=subject,
        data={"principal": "p-chen", "level": 1},
        source="/tests",
        time=T0,
    ).to_dict()
    return {**raw, **changes}


async def test_events_the_json_fold_cannot_read_take_the_validating_path() -> None:
    states = await incidents_as_of(
        leaf_log(
            [
                ack("inc-good"),
                ack("inc-good"),
                ack("inc-no-data-field", data={"level": 1}),  # principal missing
                ack("inc-unknown", type="incident.nonsense.v1"),
                ack("inc-naive-time", time="2026-11-25T09:00:00"),  # no valid CloudEvent
                ack("inc-good"),
            ]
        ),
        T0 + timedelta(minutes=1),
    )
    assert states["inc-good"].version == 3
    assert states["inc-no-data-field"].startswith("cannot replay: invalid data")
    assert states["inc-unknown"].startswith("cannot replay: unknown event type")
    assert "inc-naive-time" not in states


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_replay_puts_the_garbage_collector_back_as_it_found_it(enabled: bool) -> None:
    """The cyclic collector is paused for the fold only: on again after it, or still
    off for a caller that had switched it off, also when the fold fails."""
    import gc

    (gc.enable if enabled else gc.disable)()
    try:
        await incidents_as_of(leaf_log([e.to_dict() for e in life()]), T0 + timedelta(minutes=1))
        assert gc.isenabled() is enabled

        class Broken(MemorySource):
            async def entries(self, start: int = 0, end: int | None = None) -> Any:
                assert not gc.isenabled()  # paused while the leaves are folded
                raise RuntimeError("the source failed")
                yield []

        broken = Broken({}, [], [])
        with pytest.raises(RuntimeError):
            await incidents_as_of(broken, T0)
        assert gc.isenabled() is enabled
    finally:
        gc.enable()
