"""Escalation's use cases: start, step, clear, record a delivery (issue 23).

Each use case takes a command and an `EscalationUnitOfWork` (plus `Env`: the service's
source, clock, topic prefix and the hooks its adapter observes through) and runs in
one unit of work: tracking rows, the incident's state and wake-up, held inputs and the
events its effects publish commit together, or nothing does. No asyncpg, HTTP or Kafka
here: `services.escalation.postgres` is the PostgreSQL unit of work (the locks taken
in order and the skip-locked due rows live there), `services.escalation.memory` the
in-memory one; `services.escalation.handlers` holds the thin adapters (Kafka batches,
the scheduler loop, the delivery worker).

- `start` (a batch of `incident.triage` inputs, in order): decisions start their
  incident's escalation together, and the inputs held for those incidents are then
  replayed; a later revision, or a reassignment, steps the started state.
- `step` (deadlines due): every state whose wake-up has passed is ticked.
- `clear` (an acknowledgement; also a recusal, a message to the reporter or the
  incident's close): steps one incident, or holds the input until its decision starts
  the escalation (a decision whose incident's close was held starts closed: nobody is
  asked, not even for an empty level 1). An
  acknowledgement by an excluded principal changes nothing and is recorded as
  `incident.acknowledgement.ignored.v1`. One by a principal escalation does not route
  (yet) is recorded the same way and also kept: a reassignment can reach escalation
  after the acknowledgement of the person it added (other topic, no order between
  them), so when a later step routes her, her acknowledgement is applied then.
- `record_delivery` (a delivery worker's outcomes): `incident.notice.delivered.v1` or
  `.failed.v1`, once per notice; a failure feeds `delivery_failed` to the state.
- `queue_notices` (notices seen on `incident.activity`): queued once for delivery.
- `hold_notice` (a notice leased before its incident's decision reached escalation):
  held, not sent, until `start` makes it due again (SPEC invariant 3: until then
  nobody can tell whether its recipient is excluded).
- `alarm_held` (the delivery worker, now and then): the incidents whose notices have
  waited past a limit for a decision escalation never started from (dead-lettered
  here), each alarmed once, and how many there are now (review D7).

Every input is tracked by its event id (`Recorder.track_each`), so one seen again is
skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from services.domain import escalation as esc
from services.domain.envelope import Envelope
from services.domain.events import (
    Acknowledged,
    AcknowledgementIgnored,
    NoticeDelivered,
    NoticeFailed,
    Notified,
    Reassigned,
    Recused,
    ReporterMessage,
    StatusChanged,
    Triaged,
    data_of,
    make_event,
)
from services.escalation.notify import Outcome
from services.infra.logging import bind_incident
from services.infra.recorder import TrackedInput, UnitOfWork
from services.infra.telemetry import current_traceparent, span_after

CONSUMER = "escalation"
"""The tracking name of escalation's inputs."""
CLOSED = "closed"
"""The status that closes an incident for good (intake has no reopen)."""
EVENT_IDS = uuid.UUID("6d1f6f3c-54a7-4f55-9c43-2b1f0ad0c0e1")

Transition = Callable[[esc.EscalationState, datetime], esc.Step]


# -- ports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A new escalation: its state, the trace and correlation its deadlines continue."""

    state: esc.EscalationState
    traceparent: str | None
    correlationid: str


@dataclass(frozen=True)
class Due:
    """A state whose wake-up has passed, taken for this unit of work."""

    state: esc.EscalationState
    traceparent: str | None


class EscalationStates(Protocol):
    """One state per incident, its wake-up, and the inputs held for it."""

    async def lock(self, incidents: Sequence[str]) -> set[str]:
        """Serialise, per incident, starting its escalation and holding an input for
        it, to the end of the unit of work; several incidents are locked in order.
        Returns those of `incidents` that have a state (read once the locks are held)."""

    async def lock_states(self, incidents: Sequence[str]) -> None:
        """Hold the states of `incidents` that exist, in order, to the end of the unit
        of work (as `get` holds one)."""

    async def get(self, incident_id: str) -> esc.EscalationState | None:
        """The incident's state (held to the end of the unit of work), or None."""

    async def insert(self, started: Sequence[Started]) -> list[Envelope]:
        """Store new states (none of them has one yet), and remove and return the
        inputs held for their incidents (`take_held`)."""

    async def save(self, state: esc.EscalationState) -> None:
        """Store a state that exists, with its next wake-up (`esc.next_wakeup`)."""

    async def postpone(self, incident_id: str, wakeup: datetime | None) -> None:
        """Set a state's wake-up alone (one woken for nothing)."""

    async def correlation(self, incident_id: str) -> str | None:
        """The correlation id kept when the escalation started."""

    async def due(self, now: datetime, limit: int) -> list[Due]:
        """Up to `limit` states whose wake-up is at or before `now`, earliest first,
        none another unit of work holds."""

    async def hold(self, incident_id: str, envelope: Envelope) -> None:
        """Keep an input that came before the incident's decision."""

    async def take_held(self, incidents: Sequence[str]) -> list[Envelope]:
        """Remove and return the inputs held for `incidents`, by incident, in order."""

    async def wait(self, incident_id: str, envelope: Envelope) -> None:
        """Keep an acknowledgement by a principal not routed yet."""

    async def waiting(self, incident_id: str) -> list[Envelope]:
        """The acknowledgements kept for the incident, in order."""

    async def drop_waiting(self, incident_id: str, event_ids: Sequence[str]) -> None:
        """Forget kept acknowledgements (applied, or excluded for good)."""


class Deliveries(Protocol):
    """The durable queue of notices to deliver, and their outcomes."""

    async def enqueue(self, notices: Sequence[tuple[Envelope, str | None]]) -> None:
        """Queue notices (each with its traceparent), each once."""

    async def mark_delivered(self, notice_ids: Sequence[str]) -> set[str]:
        """Pending notices now delivered: the ids that were still pending."""

    async def mark_failed(self, notice_id: str) -> bool:
        """A pending notice now failed: False if it was not pending."""

    async def hold(self, notice_id: str, recheck_after: float) -> None:
        """Hold a pending notice its worker leased before the incident's decision: its
        leases are given back (none counts as a worker dying on it) and the notice
        comes due again in `recheck_after` seconds, or as soon as `release` wakes it."""

    async def release(self, incidents: Sequence[str]) -> int:
        """Make the held notices of `incidents` due now; how many there were."""

    async def alarm_held(self, queued_before: datetime) -> HeldPast:
        """Pending notices queued before `queued_before` whose incident has no state:
        mark them alarmed, and return the incidents none of whose notices was alarmed
        before (each with its oldest such notice's queue time), and how many incidents
        have such notices now. Several workers at once alarm each notice once."""


class EscalationUnitOfWork(UnitOfWork, Protocol):
    """The recorder with escalation's repositories, in one transaction."""

    @property
    def states(self) -> EscalationStates: ...

    @property
    def deliveries(self) -> Deliveries: ...


def _nothing(*_: object) -> None:
    return None


@dataclass(frozen=True)
class Env:
    """What the use cases need of the service: who they are and what they report."""

    source: str
    clock: Callable[[], datetime]
    topic_prefix: str = ""
    observe: Callable[[str, Sequence[esc.Effect]], None] = _nothing
    """Called with each step's effects (metrics, logs of stalls and ignored acks)."""
    late: Callable[[float], None] = _nothing
    """Called with how late (seconds) a deadline fired."""


# -- commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """One consumed event and where it came from (for tracking); `context` is entered
    while it is processed (the adapter's span continuing the record's trace)."""

    envelope: Envelope
    topic: str
    partition: int
    offset: int
    context: Callable[[], AbstractContextManager[object]] = field(default=nullcontext)

    @property
    def tracked(self) -> TrackedInput:
        return (self.envelope.id, self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class Start:
    """A batch of `incident.triage` inputs (decisions, reassignments), in order."""

    inputs: Sequence[Input]


@dataclass(frozen=True)
class Step:
    """Fire the deadlines due now, `limit` states per unit of work."""

    limit: int = 200


@dataclass(frozen=True)
class Clear:
    """Acknowledgements, recusals, closes, or handlers' messages to the reporter, in order."""

    inputs: Sequence[Input]


@dataclass(frozen=True)
class QueueNotices:
    """Notices seen on `incident.activity`, each with the traceparent its delivery continues."""

    notices: Sequence[tuple[Input, str | None]]


@dataclass(frozen=True)
class Delivery:
    """A delivery worker's outcome of one notice (`outcome` None: no adapter noted one)."""

    notice: Envelope
    delivered: bool
    outcome: Outcome | None = None
    traceparent: str | None = None


@dataclass(frozen=True)
class HoldNotice:
    """A leased notice whose incident had no escalation state when its worker looked."""

    notice: Envelope
    recheck_after: float
    """Seconds until it is looked at again if nothing wakes it earlier."""


@dataclass(frozen=True)
class AlarmHeld:
    """Alarm the incidents whose notices have waited `limit` seconds for a decision."""

    limit: float


@dataclass(frozen=True)
class HeldPast:
    """Incidents whose notices wait past the limit for a decision escalation lacks."""

    raised: Sequence[tuple[str, datetime]]
    """Alarmed now for the first time: incident id, when its oldest such notice was queued."""
    incidents: int
    """How many incidents have such notices now (alarmed now or before)."""


@dataclass(frozen=True)
class RecordDelivery:
    """Outcomes to record: the delivered ones together, then each failed one."""

    deliveries: Sequence[Delivery]


# -- use cases --------------------------------------------------------------------------


async def start(command: Start, uow: EscalationUnitOfWork, env: Env) -> int:
    """The batch's decisions and reassignments, in order, in one unit of work.

    Consecutive decisions start their escalations together; anything else on the topic
    first lets the decisions before it go, is tracked, and a reassignment steps its
    incident. A failure rolls the whole batch back. Returns how many held notices the
    new escalations made due (`hold_notice`), so the delivery worker can be woken.
    """
    async with uow:
        released = 0
        decisions: list[tuple[Input, Triaged]] = []
        for item in command.inputs:
            data = data_of(item.envelope)
            if isinstance(data, Triaged):
                decisions.append((item, data))
                continue
            released += await _start_all(uow, env, decisions)  # what came before goes first
            decisions = []
            with item.context():
                if await _track(uow, item) and isinstance(data, Reassigned):
                    await _step_or_hold(uow, env, item.envelope)
        return released + await _start_all(uow, env, decisions)


async def step(command: Step, uow: EscalationUnitOfWork, env: Env) -> int:
    """Tick every state that is due now; returns how many incidents moved."""
    moved = 0
    while True:
        async with uow:
            now = env.clock()
            due = await uow.states.due(now, command.limit)
            for item in due:
                incident = item.state.incident_id
                # the report's trace goes on: its events carry this span's context
                with span_after("escalation: deadline", item.traceparent), bind_incident(incident):
                    await _fire(uow, env, item.state, now)
                moved += 1
        if len(due) < command.limit:
            return moved


async def clear(command: Clear, uow: EscalationUnitOfWork, env: Env) -> None:
    """Step each input's incident with it (an acknowledgement, a recusal, a close, a
    message to the reporter), in order, once each, in one unit of work; an input is held until
    its incident's decision if it came first. A failure rolls the whole batch back.

    The batch's incidents are locked in order, and with more than one their states
    too, before any step: a step's append holds the outbox counter to the commit, so
    waiting for a later incident's state after it could deadlock with the scheduler
    (which holds due states, then appends)."""
    async with uow:
        fresh = await uow.recorder.track_each(CONSUMER, [i.tracked for i in command.inputs])
        todo = [item for item, new in zip(command.inputs, fresh, strict=True) if new]
        incidents = sorted({item.envelope.subject for item in todo})
        if not incidents:
            return
        await uow.states.lock(incidents)
        if len(incidents) > 1:
            await uow.states.lock_states(incidents)
        for item in todo:
            with item.context():
                await _step_or_hold(uow, env, item.envelope, locked=True)


async def queue_notices(command: QueueNotices, uow: EscalationUnitOfWork, env: Env) -> None:
    """Queue each notice seen for the first time for the delivery worker."""
    async with uow:
        fresh = await uow.recorder.track_each(CONSUMER, [i.tracked for i, _ in command.notices])
        queued = [(i.envelope, t) for (i, t), new in zip(command.notices, fresh, strict=True)]
        await uow.deliveries.enqueue([q for q, new in zip(queued, fresh, strict=True) if new])


async def hold_notice(command: HoldNotice, uow: EscalationUnitOfWork, env: Env) -> bool:
    """Hold a notice until its incident's escalation starts; False (nothing changed,
    the caller goes on with its lease) if it has started meanwhile.

    Its worker found no escalation state: the incident's decision, which triage emits
    with every notice it sends (its level-1 notices are appended with the decision
    itself, a reassignment's with the reassignment of a kept decision; escalation's own
    notices come from a state), is on incident.triage and not consumed yet. Without the
    state nobody can tell whether a removal excludes the recipient, so the notice is
    not sent. The incident is locked as a start locks it (`states.lock`), so either the
    start commits first and this sees its state, or this commits first and the start
    releases the notice (`_start_all`): it is never left held after the state exists.
    If the decision never reaches escalation (dead-lettered as forged or unreadable),
    the notice stays held, looked at again every `recheck_after` seconds and counted in
    the queue's gauges, and is never sent; `alarm_held` raises it past a limit."""
    async with uow:
        incident = command.notice.subject
        if incident in await uow.states.lock([incident]):
            return False
        await uow.deliveries.hold(command.notice.id, command.recheck_after)
        return True


async def alarm_held(command: AlarmHeld, uow: EscalationUnitOfWork, env: Env) -> HeldPast:
    """The incidents whose notices have waited `limit` seconds (by `env.clock`) for a
    decision escalation never started from, each alarmed once (review D7).

    `hold_notice` keeps a notice until its incident's escalation starts; when the
    decision never reaches escalation (dead-lettered: unreadable, a policy version or
    shape it cannot read, not authentic), nobody is told and no acknowledgement deadline
    runs, while intake's decision clock has stopped at triage's decision. A notice still
    waiting past the limit is that case (or escalation far behind on incident.triage):
    the caller alarms operations. The rows are marked in the unit, so a restart or
    another worker never raises an incident twice; a new notice of an incident already
    alarmed raises nothing more."""
    async with uow:
        return await uow.deliveries.alarm_held(env.clock() - timedelta(seconds=command.limit))


async def record_delivery(command: RecordDelivery, uow: EscalationUnitOfWork, env: Env) -> None:
    """Record outcomes, once per notice: delivered ones publish
    `incident.notice.delivered.v1`; a failed one `incident.notice.failed.v1`, then
    steps its incident with `delivery_failed` (held if its decision has not come)."""
    async with uow:
        delivered = [d for d in command.deliveries if d.delivered]
        if delivered:
            done = await uow.deliveries.mark_delivered([d.notice.id for d in delivered])
            once = {d.notice.id: d for d in reversed(delivered)}  # the first of each notice
            fresh = [outcome_event(env, d) for i, d in reversed(once.items()) if i in done]
            await _append_outcomes(uow, env, fresh)
        for failed in (d for d in command.deliveries if not d.delivered):
            if not await uow.deliveries.mark_failed(failed.notice.id):
                continue
            incident = failed.notice.subject
            # the locks a step takes, in its order, before any append
            await uow.states.lock([incident])
            await uow.states.get(incident)
            await _append_outcomes(uow, env, [outcome_event(env, failed)])
            await _step_or_hold(uow, env, failed.notice)


def first_alarms(marked: Iterable[tuple[str, datetime, bool]]) -> list[tuple[str, datetime]]:
    """`HeldPast.raised` from the notices `alarm_held` just marked (incident, queued at,
    whether the incident had an alarmed notice before): the incidents alarmed for the
    first time, each with its oldest notice's queue time, by incident id."""
    oldest: dict[str, datetime] = {}
    before: set[str] = set()
    for incident, queued_at, alarmed in marked:
        if alarmed:
            before.add(incident)
        oldest[incident] = min(queued_at, oldest.get(incident, queued_at))
    return sorted((i, t) for i, t in oldest.items() if i not in before)


# -- internals ----------------------------------------------------------------------------


async def _track(uow: EscalationUnitOfWork, item: Input) -> bool:
    (new,) = await uow.recorder.track_each(CONSUMER, [item.tracked])
    return new


async def _start_all(
    uow: EscalationUnitOfWork, env: Env, decisions: Sequence[tuple[Input, Triaged]]
) -> int:
    """Start the escalation of each decided incident that has none yet; returns how many
    held notices that made due.

    Incidents are locked in order; new states and their events go in together, and the
    notices held for them (`hold_notice`) come due; inputs held for these incidents are
    then replayed in order. An incident whose close was held starts closed instead (its
    state stored again before any event goes in), so its start asks nobody: an empty
    level 1 would move on at once otherwise. Decisions of incidents already started (a
    new revision, or a decision seen again under another id) then step their state, one
    by one, in order.
    """
    if not decisions:
        return 0
    first = await uow.recorder.track_each(CONSUMER, [i.tracked for i, _ in decisions])
    todo = [item for item, new in zip(decisions, first, strict=True) if new]
    if not todo:
        return 0
    incidents = sorted({i.envelope.subject for i, _ in todo})
    started = await uow.states.lock(incidents)
    now = env.clock()
    new: list[Started] = []
    decided: dict[str, Triaged] = {}
    produced: dict[str, tuple[Sequence[esc.Effect], Sequence[Envelope]]] = {}
    revisions: list[Input] = []
    for item, triaged in todo:
        envelope = item.envelope
        if envelope.subject in started:
            revisions.append(item)
            continue
        started.add(envelope.subject)
        with item.context():  # the state and its events continue the report's trace
            state, effects = esc.start(
                triaged, envelope.subject, now, triaged.report_digest or "sha256:unknown"
            )
            correlation = envelope.correlationid or envelope.id
            new.append(Started(state, current_traceparent(), correlation))
            decided[envelope.subject] = triaged
            if effects:
                events = _effect_events(env, state, effects, envelope, now)
                produced[state.incident_id] = (effects, events)
    released = 0
    if new:
        held = await uow.states.insert(new)
        released = await uow.deliveries.release([s.state.incident_id for s in new])
        for incident in dict.fromkeys(e.subject for e in held if _closes(e)):
            # closed before its decision came: it starts closed, and its start's
            # effects (the moves past an empty level 1) are never published
            triaged = decided[incident]
            digest = triaged.report_digest or "sha256:unknown"
            closed, _ = esc.start(triaged, incident, now, digest, closed_at=now)
            await uow.states.save(closed)
            produced.pop(incident, None)
        if produced:  # a start usually has none: triage asked level 1 already
            versions = await uow.recorder.stream_versions(list(produced))
            appends = [(i, versions[i], events) for i, (_, events) in produced.items()]
            await uow.recorder.append_streams(appends, topic_prefix=env.topic_prefix)
            for incident, (done, _) in produced.items():
                env.observe(incident, done)
        for envelope in held:
            await _step_or_hold(uow, env, envelope)
    for item in revisions:  # their states exist now: nothing is held
        with item.context():
            await _step_or_hold(uow, env, item.envelope)
    return released


async def _step_or_hold(
    uow: EscalationUnitOfWork, env: Env, envelope: Envelope, *, locked: bool = False
) -> None:
    """Step the input's incident with it, or hold the input until its decision;
    `locked`: the caller has locked the incident already (`states.lock`)."""
    incident = envelope.subject
    if not locked:
        await uow.states.lock([incident])
    before = await uow.states.get(incident)
    if before is None:  # the triage decision has not arrived yet: keep this for it
        await uow.states.hold(incident, envelope)
        return
    now = env.clock()
    after, effects = transition_for(envelope)(before, now)
    await _save(uow, env, before, after, effects, envelope, now)
    if _unrouted(envelope, effects):
        await uow.states.wait(incident, envelope)


async def _fire(
    uow: EscalationUnitOfWork, env: Env, before: esc.EscalationState, now: datetime
) -> None:
    after, effects = esc.tick(before, now)
    if before.due_at is not None and before.due_at <= now and after.due_at != before.due_at:
        env.late((now - before.due_at).total_seconds())
    await _save(uow, env, before, after, effects, None, now)
    if after == before:  # woken for nothing: never spin on this state
        wakeup = esc.next_wakeup(after)
        await uow.states.postpone(
            before.incident_id, wakeup if wakeup is not None and wakeup > now else None
        )


async def _save(
    uow: EscalationUnitOfWork,
    env: Env,
    before: esc.EscalationState,
    after: esc.EscalationState,
    effects: Sequence[esc.Effect],
    cause: Envelope | None,
    now: datetime,
) -> None:
    """Store a step of an incident's escalation (its state exists: `_start_all` made it),
    then settle the kept acknowledgements of principals the step routed or excluded."""
    if after == before and not effects:
        return
    await uow.states.save(after)
    if effects:
        await _append(uow, env, after, effects, cause, now)
        env.observe(after.incident_id, effects)
    if not (after.routed <= before.routed and after.excluded <= before.excluded):
        await _apply_waiting(uow, env, after)


async def _apply_waiting(uow: EscalationUnitOfWork, env: Env, state: esc.EscalationState) -> None:
    """Acknowledgements once ignored as `not_routed` whose principal is routed now:
    applied in order (the first clears); those of excluded principals are dropped."""
    done: list[str] = []
    for kept in await uow.states.waiting(state.incident_id):
        principal = _principal(kept)
        if principal in state.excluded:
            done.append(kept.id)
        elif principal in state.routed:
            done.append(kept.id)
            now = env.clock()
            after, effects = esc.acknowledge(state, principal, now)
            await _save(uow, env, state, after, effects, kept, now)
            state = after
    if done:
        await uow.states.drop_waiting(state.incident_id, done)


def _unrouted(envelope: Envelope, effects: Sequence[esc.Effect]) -> bool:
    """An acknowledgement ignored because its principal was not routed (not excluded)."""
    return any(
        isinstance(e, AcknowledgementIgnored) and e.reason == "not_routed" for e in effects
    ) and isinstance(data_of(envelope), Acknowledged)


def _closes(envelope: Envelope) -> bool:
    """The input closes its incident (`incident.status.changed.v1`, status closed)."""
    data = data_of(envelope)
    return isinstance(data, StatusChanged) and data.status == CLOSED


def _principal(envelope: Envelope) -> str:
    data = data_of(envelope)
    return data.principal if isinstance(data, Acknowledged) else ""


async def _append(
    uow: EscalationUnitOfWork,
    env: Env,
    state: esc.EscalationState,
    effects: Sequence[esc.Effect],
    cause: Envelope | None,
    now: datetime,
) -> None:
    incident = state.incident_id
    version = (await uow.recorder.stream_versions([incident]))[incident]
    events = _effect_events(env, state, effects, cause, now)
    if any(e.correlationid is None for e in events):
        # a deadline fired (no cause): the correlation kept when the escalation started
        correlation = await uow.states.correlation(incident) or await uow.recorder.correlation_of(
            incident
        )
        events = [
            e if e.correlationid else e.model_copy(update={"correlationid": correlation})
            for e in events
        ]
    await uow.recorder.append_streams([(incident, version, events)], topic_prefix=env.topic_prefix)


def _effect_events(
    env: Env,
    state: esc.EscalationState,
    effects: Sequence[esc.Effect],
    cause: Envelope | None,
    now: datetime,
) -> list[Envelope]:
    """The events a step's effects publish, in the active span's trace."""
    return [
        make_event(
            esc.effect_type(effect),
            subject=state.incident_id,
            data=effect,
            source=env.source,
            time=now,
            actor="system:escalation",
            causationid=cause.id if cause else None,
            correlationid=cause.correlationid if cause else None,
            traceparent=current_traceparent(),
            # the same state version and effect always get the same id, so even a
            # step replayed by mistake could not publish a fact twice
            event_id=str(uuid.uuid5(EVENT_IDS, f"{state.incident_id}:{state.version}:{i}")),
        )
        for i, effect in enumerate(effects)
    ]


async def _append_outcomes(uow: EscalationUnitOfWork, env: Env, events: Sequence[Envelope]) -> None:
    """Append outcome events, each as the one event of its notice's own stream
    (`notice:<notice id>`; the subject stays the incident). So recording a delivery
    takes no incident lock: a batch of them never waits on (nor deadlocks with) a
    step holding the outbox counter and the incident locks, and the queue's
    pending -> done update already makes it once per notice."""
    if events:
        await uow.recorder.append_streams(
            [(f"notice:{e.causationid}", 0, [e]) for e in events], topic_prefix=env.topic_prefix
        )


def outcome_event(env: Env, delivery: Delivery) -> Envelope:
    """`incident.notice.delivered.v1` or `.failed.v1` of a notice; one id per notice
    and outcome, so a notice delivered again after a crash can never record twice."""
    notice_event, outcome = delivery.notice, delivery.outcome
    notice = Notified.read(notice_event)
    common = {
        "notice_id": notice_event.id,
        "principal": notice.principal,
        "level": notice.level,
        "channel": notice.channel,
        "attempts": outcome.attempts if outcome is not None else 0,
    }
    data: NoticeDelivered | NoticeFailed
    if not delivery.delivered:
        data = NoticeFailed.model_validate(
            {
                **common,
                "adapter": outcome.adapter if outcome is not None else None,
                "reason": outcome.reason if outcome and outcome.reason else "gave_up",
                "detail": outcome.detail if outcome is not None else None,
            }
        )
    else:
        data = NoticeDelivered.model_validate(
            {**common, "adapter": outcome.adapter if outcome is not None else "log"}
        )
    kind = data.TYPE
    return make_event(
        kind,
        subject=notice_event.subject,
        data=data,
        source=env.source,
        time=env.clock(),
        actor="system:escalation",
        causationid=notice_event.id,
        correlationid=notice_event.correlationid,
        traceparent=delivery.traceparent,
        event_id=str(uuid.uuid5(EVENT_IDS, f"{notice_event.id}:{kind}")),
    )


def transition_for(envelope: Envelope) -> Transition:
    """The domain transition an input applies to its incident's state."""
    data = data_of(envelope)
    if isinstance(data, Triaged):  # a decision of an incident already started
        return lambda s, now: esc.redecide(s, data, now)
    if isinstance(data, Acknowledged):
        return lambda s, now: esc.acknowledge(s, data.principal, now)
    if isinstance(data, Recused):
        return lambda s, now: esc.recuse(s, data.principal, now)
    if isinstance(data, Reassigned):
        removed = [x.principal for x in data.removed]
        return lambda s, now: esc.reassign(s, removed, data.added, now)
    if isinstance(data, StatusChanged) and data.status == CLOSED:
        return lambda s, now: esc.close(s, now)
    if isinstance(data, ReporterMessage) and data.direction == "to_reporter":
        return lambda s, now: esc.clock_satisfied(s, esc.FEEDBACK, now)
    if isinstance(data, Notified):  # held only when its delivery failed before the decision
        return lambda s, now: esc.delivery_failed(s, data.principal, data.level, now, data.channel)
    return lambda s, now: (s, ())
