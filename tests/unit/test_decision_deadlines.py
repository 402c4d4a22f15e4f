"""The decision deadline on the in-memory unit of work (SPEC invariants 1 and 8): a
report triage never decides is raised, once, content-free, and stays counted until a
decision comes; a report decided in time never is."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from services.console.describe import describe
from services.domain.events import DecisionOverdue, Topic, Triaged
from services.domain.status import progress_of
from services.intake.memory import InMemoryIntakeStore, InMemoryIntakeUnitOfWork
from services.intake.usecases import (
    OverdueDecisions,
    RaiseOverdue,
    overdue_event_id,
    raise_overdue_decisions,
)
from tests.unit.test_intake_usecases import NOW, REPORT, Memory, command, take

WITHIN = timedelta(minutes=5)
CONTENT = (*REPORT.values(), "harassment", "anonymous", "reporter")


async def at(memory: Memory, seconds: float) -> OverdueDecisions:
    """A round of the watcher `seconds` after NOW."""
    raise_ = RaiseOverdue(NOW + timedelta(seconds=seconds), WITHIN, "urn:test:intake")
    return await raise_overdue_decisions(raise_, InMemoryIntakeUnitOfWork(memory.store))


async def decide(store: InMemoryIntakeStore, incident: str, seconds: float) -> int:
    """Triage's decision reaching intake's routing consumer."""
    async with InMemoryIntakeUnitOfWork(store) as unit:
        return await unit.decisions.decided([(incident, NOW + timedelta(seconds=seconds))])


async def test_a_report_nobody_decides_is_raised_once_with_its_id_and_times_only() -> None:
    memory = Memory()
    incident = (await take(memory, command())).body["incident_id"]
    assert memory.store.clocks[incident].submitted_at == NOW  # started with the report

    early = await at(memory, 299)
    assert early.raised == [] and early.overdue_now == 0
    assert early.next_due == NOW + WITHIN  # the watcher sleeps until then

    late = await at(memory, 300)
    (event,) = late.raised
    assert event.type == DecisionOverdue.TYPE and event.subject == incident
    assert event.id == overdue_event_id(incident)
    assert event.actor == "system:intake"
    assert set(event.data) == {"submitted_at", "due_at"}
    assert DecisionOverdue.read(event).due_at == NOW + WITHIN
    text = event.model_dump_json()
    assert not [c for c in CONTENT if c in text], "no report content in the event"
    assert late.overdue_now == 1 and late.next_due is None
    stream = [r for r in memory.store.events if r.stream_id == incident]
    assert [r.version for r in stream] == [1, 2]  # after the report, on its stream
    queued = [r for r in memory.store.outbox if r.event_id == event.id]
    assert [r.topic for r in queued] == [Topic.ACTIVITY.value]

    again = await at(memory, 3600)  # a restarted or second watcher: nothing more
    assert again.raised == [] and again.overdue_now == 1

    assert await decide(memory.store, incident, 4000) == 1  # it had been raised
    after = await at(memory, 4001)
    assert after.overdue_now == 0  # the gauge drops
    assert [r.event_id for r in memory.store.events].count(event.id) == 1  # the event stays


async def test_a_report_decided_in_time_is_never_raised() -> None:
    memory = Memory()
    incident = (await take(memory, command())).body["incident_id"]
    assert await decide(memory.store, incident, 2) == 0
    assert await decide(memory.store, incident, 3) == 0  # a later decision changes nothing
    result = await at(memory, 10_000)
    assert result.raised == [] and result.overdue_now == 0 and result.next_due is None
    assert memory.store.clocks[incident].decided_at == NOW + timedelta(seconds=2)


async def test_two_watchers_at_once_raise_each_report_once() -> None:
    memory = Memory()
    first = (await take(memory, command())).body["incident_id"]
    second = (await take(memory, command(report={"summary": "Other"}))).body["incident_id"]
    holder = InMemoryIntakeUnitOfWork(memory.store)
    async with holder:
        (taken,) = await holder.decisions.due(NOW, limit=1)  # one instance holds the oldest
        other = await at(memory, 301)  # the other skips it (SKIP LOCKED) and takes the rest
        assert [e.subject for e in other.raised] == [
            i for i in (first, second) if i != taken.incident_id
        ]
    rest = await at(memory, 302)  # the holder ended without raising: the next round does
    assert [e.subject for e in rest.raised] == [taken.incident_id]
    assert rest.overdue_now == 2


async def test_a_round_that_fails_leaves_the_report_to_the_next() -> None:
    memory = Memory()
    incident = (await take(memory, command())).body["incident_id"]
    unit = InMemoryIntakeUnitOfWork(memory.store)
    try:
        async with unit:
            await unit.decisions.mark_raised([incident], NOW)
            raise RuntimeError("the append failed")
    except RuntimeError:
        pass
    assert memory.store.clocks[incident].overdue_at is None
    assert [e.subject for e in (await at(memory, 300)).raised] == [incident]


async def test_the_status_says_overdue_until_triage_decides() -> None:
    memory = Memory()
    incident = (await take(memory, command())).body["incident_id"]
    (overdue,) = (await at(memory, 300)).raised
    report = next(r.stored().envelope for r in memory.store.events if r.stream_id == incident)
    progress = progress_of([report, overdue])
    assert progress.label == "submitted (overdue: no triage decision)"
    assert progress.to_json()["decision_overdue"] is True
    decided = report.model_copy(
        update={
            "type": Triaged.TYPE,
            "time": NOW + timedelta(seconds=400),
            "data": {
                "category": "harassment",
                "severity": "high",
                "policy_version": "1",
                "chain": [],
            },
        }
    )
    assert progress_of([report, overdue, decided]).label == "triaged"
    # a decision already made wins over an overdue event that raced it
    assert progress_of([report, decided, overdue]).to_json()["decision_overdue"] is False
    shown = describe(overdue.type, overdue.data)
    assert [label for label, _ in shown] == ["submitted", "due", ""]
    assert "category" not in json.dumps(shown)


async def test_the_decision_waits_for_a_watcher_that_holds_the_clock() -> None:
    """Triage's decision arriving while a watcher raises: it is applied after, and
    counts the report as raised (the gauge drops at the nudge)."""
    memory = Memory()
    incident = (await take(memory, command())).body["incident_id"]
    holder = InMemoryIntakeUnitOfWork(memory.store)
    async with holder:
        await holder.decisions.due(NOW, limit=1)
        deciding = asyncio.create_task(decide(memory.store, incident, 301))
        await asyncio.sleep(0)
        assert not deciding.done()
        await holder.decisions.mark_raised([incident], NOW + WITHIN)
    assert await deciding == 1
