"""Escalation's use cases on the in-memory unit of work, with a clock the test moves."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.domain.envelope import Envelope
from services.domain.events import (
    Acknowledged,
    ChainLevel,
    Exclusion,
    Notified,
    Reassigned,
    Triaged,
    make_event,
)
from services.escalation import usecases
from services.escalation.memory import InMemoryEscalationStore, InMemoryEscalationUnitOfWork
from services.escalation.notify import Outcome

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
LEVELS = [
    ChainLevel(level=1, role="hr_case_handler", recipients=["p-chen"], acknowledge_within=600),
    ChainLevel(level=2, role="hr_head", recipients=["p-zhou"], acknowledge_within=600),
]
TYPES = {
    Triaged: "incident.triaged.v1",
    Reassigned: "incident.reassigned.v1",
    Acknowledged: "incident.acknowledged.v1",
    Notified: "incident.notified.v1",
}


class World:
    """A store, a clock, and the use cases run on fresh units of work over them."""

    def __init__(self) -> None:
        self.store = InMemoryEscalationStore()
        self.now = T0
        self.observed: list[Any] = []
        self.env = usecases.Env(
            source="/services/escalation",
            clock=lambda: self.now,
            observe=lambda _, effects: self.observed.extend(effects),
        )
        self.incident = str(uuid.uuid4())
        self.offset = 0

    def uow(self) -> InMemoryEscalationUnitOfWork:
        return InMemoryEscalationUnitOfWork(self.store)

    def event(self, data: Any) -> Envelope:
        return make_event(
            TYPES[type(data)], subject=self.incident, data=data, source="/t", time=self.now
        )

    def input(self, envelope: Envelope, topic: str = "incident.activity") -> usecases.Input:
        self.offset += 1
        return usecases.Input(envelope, topic, 0, self.offset)

    def decision(self, excluded: tuple[str, ...] = ()) -> Envelope:
        return self.event(
            Triaged(
                category="harassment",
                severity="high",
                policy_version="t",
                chain=LEVELS,
                excluded=[Exclusion(principal=p, rule="accused") for p in excluded],
                deadlines={"level_1_acknowledge": T0 + timedelta(seconds=600)},
                report_digest=DIGEST,
            )
        )

    def ack(self, principal: str) -> Envelope:
        return self.event(Acknowledged(principal=principal, level=1))

    async def start(self, *envelopes: Envelope) -> None:
        inputs = [self.input(e, "incident.triage") for e in envelopes]
        await usecases.start(usecases.Start(inputs), self.uow(), self.env)

    async def clear(self, envelope: Envelope) -> None:
        await usecases.clear(usecases.Clear([self.input(envelope)]), self.uow(), self.env)

    async def step(self) -> int:
        return await usecases.step(usecases.Step(), self.uow(), self.env)

    def published(self) -> list[tuple[str, dict[str, Any]]]:
        """(type, data) of every event stored, in order."""
        return [(r.stored().envelope.type, r.stored().envelope.data) for r in self.store.events]

    def types(self) -> list[str]:
        return [t for t, _ in self.published()]


@pytest.fixture
def world() -> World:
    return World()


async def test_a_deadline_that_passes_asks_level_2_once(world: World) -> None:
    await world.start(world.decision())
    world.now = T0 + timedelta(seconds=599)
    assert await world.step() == 0
    world.now = T0 + timedelta(seconds=601)
    assert await world.step() == 1
    assert await world.step() == 0  # its next deadline is ten minutes away
    escalated = [d for t, d in world.published() if t == "incident.escalated.v1"]
    assert [(d["level"], d["recipients"], d["reason"]) for d in escalated] == [
        (2, ["p-zhou"], "not_acknowledged")
    ]
    notified = [d for t, d in world.published() if t == "incident.notified.v1"]
    assert [(d["principal"], d["level"]) for d in notified] == [("p-zhou", 2)]
    assert world.store.outbox[-1].topic.endswith("incident.activity")


async def test_an_acknowledgement_clears_the_chain_and_no_deadline_fires(world: World) -> None:
    await world.start(world.decision())
    await world.clear(world.ack("p-chen"))
    world.now = T0 + timedelta(hours=2)
    assert await world.step() == 0
    assert world.types() == ["incident.escalation.cleared.v1"]
    row = world.store.tables.states[world.incident]
    assert row.state.acknowledged is not None and row.wakeup is None


async def test_an_acknowledgement_by_an_excluded_person_is_ignored_and_recorded(
    world: World,
) -> None:
    await world.start(world.decision(excluded=("p-chen",)))
    await world.clear(world.ack("p-chen"))
    assert world.types()[-1] == "incident.acknowledgement.ignored.v1"
    ignored = [d for t, d in world.published() if t == "incident.acknowledgement.ignored.v1"]
    assert [(d["principal"], d["reason"]) for d in ignored] == [("p-chen", "excluded")]
    assert "incident.escalation.cleared.v1" not in world.types()
    assert world.store.tables.states[world.incident].state.acknowledged is None
    assert world.store.tables.waiting == []  # excluded for good: nothing kept for later


async def test_inputs_seen_again_are_skipped(world: World) -> None:
    decision, ack = world.decision(), world.ack("p-chen")
    await world.start(decision)
    again = usecases.Input(decision, "incident.triage", 0, 1)
    await usecases.start(usecases.Start([again, again]), world.uow(), world.env)
    await world.clear(ack)
    await world.clear(ack)
    assert world.types() == ["incident.escalation.cleared.v1"]
    assert world.store.tables.states[world.incident].state.version == 2


async def test_an_input_before_the_decision_is_held_and_replayed(world: World) -> None:
    await world.clear(world.ack("p-chen"))
    assert world.types() == [] and len(world.store.tables.early) == 1
    await world.start(world.decision())
    assert world.types() == ["incident.escalation.cleared.v1"]
    assert world.store.tables.early == []


async def test_a_batch_of_inputs_steps_each_incident_once_in_order(world: World) -> None:
    first = world.incident
    await world.start(world.decision())
    world.incident = second = str(uuid.uuid4())
    await world.start(world.decision())
    world.incident = early = str(uuid.uuid4())
    held = world.input(world.ack("p-chen"))  # its decision has not come
    world.incident = first
    ack_first = world.input(world.ack("p-chen"))
    world.incident = second
    ack_second = world.input(world.ack("p-chen"))
    batch = [ack_second, ack_first, held, ack_first]  # the last one seen again
    await usecases.clear(usecases.Clear(batch), world.uow(), world.env)
    stored = [r.stored().envelope for r in world.store.events]
    assert [(e.subject, e.type) for e in stored] == [
        (second, "incident.escalation.cleared.v1"),
        (first, "incident.escalation.cleared.v1"),
    ]
    assert [i for i, _ in world.store.tables.early] == [early]
    await usecases.clear(usecases.Clear(batch), world.uow(), world.env)  # all seen
    assert len(world.store.events) == 2


async def test_a_batch_that_fails_leaves_nothing_and_each_input_goes_alone(world: World) -> None:
    first = world.incident
    await world.start(world.decision())
    world.incident = second = str(uuid.uuid4())
    await world.start(world.decision())
    acks = [world.input(world.ack("p-chen"))]
    world.incident = first
    acks.append(world.input(world.ack("p-chen")))

    def fail_on_first(incident: str, _effects: object) -> None:
        if incident == first:
            raise RuntimeError("boom")

    failing = usecases.Env(source=world.env.source, clock=world.env.clock, observe=fail_on_first)
    with pytest.raises(RuntimeError):
        await usecases.clear(usecases.Clear(acks), world.uow(), failing)
    assert world.store.events == []  # the second incident's step went back too
    await usecases.clear(usecases.Clear(acks[:1]), world.uow(), failing)
    assert [r.stored().envelope.subject for r in world.store.events] == [second]


async def test_a_failed_delivery_is_recorded_once_and_asks_the_next_level(world: World) -> None:
    await world.start(world.decision())
    notice = world.event(
        Notified(principal="p-chen", channel="escalation", level=1, report_digest=DIGEST)
    )
    queue = usecases.QueueNotices([(world.input(notice), None)])
    await usecases.queue_notices(queue, world.uow(), world.env)
    await usecases.queue_notices(queue, world.uow(), world.env)  # seen again: skipped
    assert list(world.store.tables.deliveries) == [notice.id]
    failed = usecases.Delivery(notice, False, Outcome("webhook", False, 4, "refused", "HTTP 400"))
    for _ in range(2):
        await usecases.record_delivery(usecases.RecordDelivery([failed]), world.uow(), world.env)
    outcomes = [d for t, d in world.published() if t == "incident.notice.failed.v1"]
    assert [(d["reason"], d["detail"], d["attempts"]) for d in outcomes] == [
        ("refused", "HTTP 400", 4)
    ]
    escalated = [d for t, d in world.published() if t == "incident.escalated.v1"]
    assert [(d["level"], d["reason"]) for d in escalated] == [(2, "delivery_failed")]
    assert world.store.tables.deliveries[notice.id].state == "failed"


async def test_a_notice_before_its_decision_is_held_until_the_decision_releases_it(
    world: World,
) -> None:
    """The worker found no state for the notice's incident: it is held (nobody can tell
    yet whether its recipient is excluded); the decision's start releases it, once. A
    notice whose incident started meanwhile is not held: its worker goes on."""
    notice = world.event(
        Notified(principal="p-chen", channel="triage", level=1, report_digest=DIGEST)
    )
    queue = usecases.QueueNotices([(world.input(notice), None)])
    await usecases.queue_notices(queue, world.uow(), world.env)
    hold = usecases.HoldNotice(notice, 60.0)
    assert await usecases.hold_notice(hold, world.uow(), world.env) is True
    assert world.store.tables.deliveries[notice.id].held
    released = await usecases.start(
        usecases.Start([world.input(world.decision(), "incident.triage")]), world.uow(), world.env
    )
    assert released == 1
    assert not world.store.tables.deliveries[notice.id].held
    assert await usecases.hold_notice(hold, world.uow(), world.env) is False
    assert not world.store.tables.deliveries[notice.id].held
    again = await usecases.start(
        usecases.Start([world.input(world.decision(), "incident.triage")]), world.uow(), world.env
    )
    assert again == 0  # a revision releases nothing: its incident had a state already


async def test_notices_waiting_past_the_limit_for_a_decision_alarm_their_incident_once(
    world: World,
) -> None:
    """Review D7 on the in-memory unit: within the limit nothing; past it the incident
    once, with its oldest notice's time, however many notices it has or rounds run; a
    started incident's notices never count (the gauge drops at the decision)."""
    notices = [
        world.event(Notified(principal=p, channel="triage", level=1, report_digest=DIGEST))
        for p in ("p-chen", "p-zhou")
    ]
    queue = usecases.QueueNotices([(world.input(n), None) for n in notices])
    await usecases.queue_notices(queue, world.uow(), world.env)
    alarm = usecases.AlarmHeld(300.0)
    world.now = T0 + timedelta(seconds=299)
    within = await usecases.alarm_held(alarm, world.uow(), world.env)
    assert (list(within.raised), within.incidents) == ([], 0)
    world.now = T0 + timedelta(seconds=301)
    past = await usecases.alarm_held(alarm, world.uow(), world.env)
    assert (list(past.raised), past.incidents) == ([(world.incident, T0)], 1)
    again = await usecases.alarm_held(alarm, world.uow(), world.env)
    assert (list(again.raised), again.incidents) == ([], 1)
    await world.start(world.decision())
    decided = await usecases.alarm_held(alarm, world.uow(), world.env)
    assert (list(decided.raised), decided.incidents) == ([], 0)


async def test_a_delivered_notice_is_recorded_once(world: World) -> None:
    notice = world.event(
        Notified(principal="p-chen", channel="escalation", level=1, report_digest=DIGEST)
    )
    queue = usecases.QueueNotices([(world.input(notice), None)])
    await usecases.queue_notices(queue, world.uow(), world.env)
    delivered = usecases.Delivery(notice, True, None)
    record = usecases.RecordDelivery([delivered, delivered])
    await usecases.record_delivery(record, world.uow(), world.env)
    await usecases.record_delivery(record, world.uow(), world.env)
    assert world.published() == [
        (
            "incident.notice.delivered.v1",
            {
                "notice_id": notice.id,
                "principal": "p-chen",
                "level": 1,
                "channel": "escalation",
                "attempts": 0,
                "adapter": "log",
            },
        )
    ]


async def test_an_acknowledgement_before_the_reassignment_that_routes_her_counts(
    world: World,
) -> None:
    """The finding of the short chaos run (acknowledgements intake accepted that never
    cleared): triage's reassignment (incident.triage) and the acknowledgement of the
    person it added (incident.activity) have no order between them. Her
    acknowledgement, first ignored as not routed, is applied when the reassignment
    routes her."""
    await world.start(world.decision())
    await world.clear(world.ack("p-ma"))
    ignored = [d for t, d in world.published() if t == "incident.acknowledgement.ignored.v1"]
    assert [(d["principal"], d["reason"]) for d in ignored] == [("p-ma", "not_routed")]
    await world.start(world.event(Reassigned(added=["p-ma"])))
    assert world.types()[-1] == "incident.escalation.cleared.v1"
    state = world.store.tables.states[world.incident].state
    assert state.acknowledged is not None and state.acknowledged.by == "p-ma"
    assert world.store.tables.waiting == []


async def test_a_kept_acknowledgement_never_counts_for_a_principal_excluded_later(
    world: World,
) -> None:
    await world.start(world.decision())
    await world.clear(world.ack("p-ma"))
    removed = Reassigned(removed=[Exclusion(principal="p-ma", rule="recused")], added=["p-ma"])
    await world.start(world.event(removed))
    assert "incident.escalation.cleared.v1" not in world.types()
    assert world.store.tables.waiting == []


async def test_an_early_acknowledgement_by_a_person_the_decision_excludes_is_ignored(
    world: World,
) -> None:
    """An acknowledgement that comes before escalation has the incident's exclusions is
    held, then judged against them when the decision starts the escalation."""
    await world.clear(world.ack("p-chen"))
    await world.start(world.decision(excluded=("p-chen",)))
    ignored = [d for t, d in world.published() if t == "incident.acknowledgement.ignored.v1"]
    assert [(d["principal"], d["reason"]) for d in ignored] == [("p-chen", "excluded")]
    assert "incident.escalation.cleared.v1" not in world.types()


async def test_a_failing_batch_leaves_nothing_behind(world: World) -> None:
    first = world.decision()
    world.incident = str(uuid.uuid4())
    gap = [LEVELS[1]]  # a chain of levels 2 alone: the domain refuses it
    bad = world.event(
        Triaged(category="harassment", severity="high", policy_version="t", chain=gap)
    )
    with pytest.raises(ValueError, match=r"levels 1\.\.n"):
        await world.start(first, bad)
    assert world.store.tables.states == {} and world.store.events == []
    assert world.store.tracking == {}


async def test_two_units_open_at_once_keep_each_others_changes(world: World) -> None:
    """The in-memory unit of work isolates as PostgreSQL does: a unit that ends after
    another one, on another incident, never puts back what the first one changed."""
    first = world.incident
    await world.start(world.decision())
    world.incident = second = str(uuid.uuid4())
    await world.start(world.decision())
    later = T0 + timedelta(hours=1)
    one, other = world.uow(), world.uow()
    async with one:
        async with other:
            await other.states.lock([second])
            await other.states.postpone(second, later)
        await one.states.lock([first])
        assert await one.states.get(second) is not None
        await one.states.postpone(first, later)
    states = world.store.tables.states
    assert (states[first].wakeup, states[second].wakeup) == (later, later)


async def test_an_input_held_after_another_unit_took_the_held_ones_stays_held(
    world: World,
) -> None:
    """As PostgreSQL's `DELETE ... RETURNING`: a unit takes the held inputs it sees; one
    another unit holds for the same incident after that is still held when both end."""
    first, second = world.ack("p-chen"), world.ack("p-zhou")
    async with world.uow() as unit:
        await unit.states.hold(world.incident, first)
    taker, holder = world.uow(), world.uow()
    async with taker:
        assert await taker.states.take_held([world.incident]) == [first]
        async with holder:
            await holder.states.hold(world.incident, second)
    async with world.uow() as unit:
        assert await unit.states.take_held([world.incident]) == [second]


async def test_a_due_deadline_another_unit_holds_is_skipped_then_fired_once(
    world: World,
) -> None:
    """As `FOR UPDATE SKIP LOCKED`: a state held by an open unit (an acknowledgement
    being applied) is not fired under it; it fires once when that unit is done."""
    await world.start(world.decision())
    world.now = T0 + timedelta(seconds=601)
    holder = world.uow()
    async with holder:
        await holder.states.lock([world.incident])
        assert await world.step() == 0
    assert await world.step() == 1
    assert await world.step() == 0
    assert world.types().count("incident.escalated.v1") == 1
