"""A closed incident asks nobody and reminds nobody; a breach of the law stays recorded.

Intake closes an incident with `incident.status.changed.v1` (status `closed`, final:
there is no reopen). Before escalation read it, a close changed nothing: an acknowledged
incident still got the feedback clock's reminder and breach notices, and one escalation
had not seen acknowledged climbed and re-asked its top level every repeat interval for
good. These tests drive the clock; each ran on the old code and failed.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest

from services.domain import escalation as esc
from services.domain.events import (
    ChainLevel,
    Reassigned,
    ReporterMessage,
    StatusChanged,
    Triaged,
)
from tests.unit.test_escalation_usecases import DIGEST, LEVELS, T0, TYPES, World

TYPES.setdefault(StatusChanged, "incident.status.changed.v1")
TYPES.setdefault(ReporterMessage, "incident.reporter.message.v1")
ACK_DUE = T0 + timedelta(days=7)
FEEDBACK_DUE = T0 + timedelta(days=90)
END = T0 + timedelta(days=120)


def triaged(chain: list[ChainLevel] = LEVELS, revision: int = 1) -> Triaged:
    """Two levels of ten minutes, the top repeated hourly, and both legal clocks."""
    return Triaged(
        category="harassment",
        severity="high",
        policy_version="t",
        chain=chain,
        repeat_last_every=3600,
        revision=revision,
        deadlines={
            "level_1_acknowledge": T0 + timedelta(seconds=600),
            "reporter_acknowledgement": ACK_DUE,
            "feedback": FEEDBACK_DUE,
        },
        report_digest=DIGEST,
    )


def closing(world: World) -> Any:
    return world.event(StatusChanged(principal="p-chen", status="closed", outcome="done"))


async def run_until(world: World, end: datetime = END) -> None:
    """Fire every wake-up of the incident up to `end`, moving the clock to each."""
    for _ in range(5000):
        row = world.store.tables.states[world.incident]
        if row.wakeup is None or row.wakeup > end:
            return
        world.now = max(world.now, row.wakeup)
        await world.step()
    raise AssertionError("the incident never stopped waking up")


def counted(published: list[tuple[str, dict[str, Any]]]) -> Counter[tuple[str, str]]:
    """(type, channel or clock or reason) of each event, counted."""
    return Counter(
        (t, str(d.get("channel") or d.get("clock") or d.get("reason"))) for t, d in published
    )


@pytest.fixture
def world() -> World:
    return World()


# -- the facts, on the use cases (in-memory unit of work) -----------------------------


async def test_an_acknowledged_open_incident_is_never_asked_again_but_feedback_is_owed(
    world: World,
) -> None:
    """The control: acknowledged, not closed. No level is asked again; the feedback
    clock reminds and breaches, with notices (feedback is owed after acknowledging)."""
    await world.start(world.event(triaged()))
    world.now = T0 + timedelta(seconds=60)
    await world.clear(world.ack("p-chen"))
    before = len(world.published())
    await run_until(world)
    assert counted(world.published()[before:]) == Counter(
        {
            ("incident.reminder.due.v1", "feedback"): 1,
            ("incident.notified.v1", "reminder"): 1,
            ("incident.deadline.breached.v1", "feedback"): 1,
            ("incident.notified.v1", "breach"): 2,  # p-chen, and level 2's p-zhou
        }
    )


async def test_after_acknowledgement_and_close_nobody_is_reminded_and_the_breach_is_recorded(
    world: World,
) -> None:
    """Old code: the feedback reminder and its notice, the breach and two breach notices."""
    await world.start(world.event(triaged()))
    world.now = T0 + timedelta(seconds=60)
    await world.clear(world.ack("p-chen"))
    world.now = T0 + timedelta(seconds=120)
    await world.clear(closing(world))
    before = len(world.published())
    await run_until(world)
    after = world.published()[before:]
    assert counted(after) == Counter({("incident.deadline.breached.v1", "feedback"): 1})
    assert after[0][1]["due_at"].startswith(FEEDBACK_DUE.date().isoformat())
    state = world.store.tables.states[world.incident].state
    assert state.closed_at == T0 + timedelta(seconds=120)
    assert world.store.tables.states[world.incident].wakeup is None


async def test_a_close_escalation_never_saw_acknowledged_stops_the_chain_for_good(
    world: World,
) -> None:
    """Old code: level 2 asked at ten minutes, then re-asked every hour for 120 days
    (2,800-odd asks), with reminders and breach notices of both clocks."""
    await world.start(world.event(triaged()))
    world.now = T0 + timedelta(seconds=120)
    await world.clear(closing(world))
    await run_until(world)
    assert counted(world.published()) == Counter(
        {
            ("incident.deadline.breached.v1", "reporter_acknowledgement"): 1,
            ("incident.deadline.breached.v1", "feedback"): 1,
        }
    )
    assert world.store.tables.deliveries == {}


async def test_feedback_written_before_the_close_leaves_nothing_to_breach(world: World) -> None:
    """The message reached escalation after the close (another topic): it still counts."""
    await world.start(world.event(triaged()))
    world.now = T0 + timedelta(seconds=60)
    await world.clear(world.ack("p-chen"))
    await world.clear(closing(world))
    message = ReporterMessage(direction="to_reporter", author="p-chen", text="sealed")
    await world.clear(world.event(message))
    before = len(world.published())
    await run_until(world)
    assert world.published()[before:] == []
    row = world.store.tables.states[world.incident]
    assert row.wakeup is None and row.state.closed_at is not None


async def test_a_close_seen_twice_or_closed_twice_changes_the_state_once(world: World) -> None:
    await world.start(world.event(triaged()))
    close = closing(world)
    await world.clear(close)
    state = world.store.tables.states[world.incident].state
    assert state.closed_at == T0 and state.due_at is None
    version = state.version
    await world.clear(close)  # the same record again
    await world.clear(closing(world))  # another close event
    assert world.store.tables.states[world.incident].state.version == version
    assert world.published() == []


async def test_a_close_before_the_decision_is_held_and_the_decision_starts_closed(
    world: World,
) -> None:
    """Level 1 empty: a start would move on to level 2 at once. With the close held
    before the decision, nobody is asked, not even then."""
    empty_first = [
        ChainLevel(level=1, role="hr_case_handler", recipients=[], acknowledge_within=600),
        LEVELS[1],
    ]
    await world.clear(closing(world))
    assert len(world.store.tables.early) == 1
    await world.start(world.event(triaged(empty_first)))
    assert world.published() == []
    assert world.store.tables.early == []
    assert world.store.tables.states[world.incident].state.closed_at == T0
    await run_until(world)
    assert [t for t, _ in world.published()] == ["incident.deadline.breached.v1"] * 2


async def test_an_acknowledgement_and_a_close_before_the_decision_both_count(
    world: World,
) -> None:
    """Both held: the acknowledgement is applied (the reporter's clock is met, never
    breached) and nobody is asked."""
    await world.clear(world.ack("p-chen"))
    await world.clear(closing(world))
    await world.start(world.event(triaged()))
    await run_until(world)
    assert counted(world.published()) == Counter(
        {
            ("incident.escalation.cleared.v1", "None"): 1,
            ("incident.deadline.breached.v1", "feedback"): 1,
        }
    )
    assert world.store.tables.waiting == []


async def test_reassignments_and_revisions_after_the_close_ask_nobody(world: World) -> None:
    await world.start(world.event(triaged()))
    await world.clear(closing(world))
    await world.start(world.event(Reassigned(added=["p-ma"], removed=[])))
    state = world.store.tables.states[world.incident].state
    assert "p-ma" in state.level(1).recipients  # recorded: asked by nobody
    await world.start(world.event(triaged(revision=2)))
    state = world.store.tables.states[world.incident].state
    assert state.revision == 2 and state.closed_at is not None
    assert state.due_at is None and world.published() == []


# -- the domain transition -------------------------------------------------------------


def started(chain: list[ChainLevel] = LEVELS) -> esc.EscalationState:
    state, _ = esc.start(triaged(chain), "i-1", T0, DIGEST)
    return state


def test_close_drops_the_pending_deadline_and_skips_open_reminders() -> None:
    state, effects = esc.close(started(), T0 + timedelta(minutes=1))
    assert effects == () and state.due_at is None and state.version == 2
    assert all(c.reminded and not c.breached and c.satisfied_at is None for c in state.clocks)
    assert esc.next_wakeup(state) == ACK_DUE
    assert esc.due(state, T0 + timedelta(hours=1), state.due_at) == (state, ())


def test_a_stalled_chain_stops_alerting_once_closed() -> None:
    nobody = [ChainLevel(level=1, role="r", recipients=[], acknowledge_within=600)]
    stalled = started(nobody)
    assert stalled.stalled
    closed, _ = esc.close(stalled, T0)
    assert not closed.stalled and closed.due_at is None
    ticked, effects = esc.tick(closed, ACK_DUE)
    assert [type(e).__name__ for e in effects] == ["DeadlineBreached"]
    assert esc.tick(ticked, FEEDBACK_DUE - timedelta(days=1)) == (ticked, ())


def test_a_failed_delivery_after_the_close_moves_nothing() -> None:
    closed, _ = esc.close(started(), T0)
    assert esc.delivery_failed(closed, "p-chen", 1, T0) == (closed, ())


def test_a_clock_reminded_before_the_close_still_breaches_and_tells_nobody() -> None:
    state, effects = esc.tick(started(), ACK_DUE - timedelta(hours=1))
    assert [type(e).__name__ for e in effects].count("ReminderDue") == 1
    state, _ = esc.close(state, ACK_DUE - timedelta(minutes=30))
    _, effects = esc.tick(state, ACK_DUE)
    assert [type(e).__name__ for e in effects] == ["DeadlineBreached"]


def test_the_close_is_kept_in_the_stored_state_and_an_older_row_reads_as_open() -> None:
    closed, _ = esc.close(started(), T0)
    assert esc.EscalationState.from_json(closed.to_json()) == closed
    older = {k: v for k, v in started().to_json().items() if k != "closed_at"}
    assert esc.EscalationState.from_json(older).closed_at is None
