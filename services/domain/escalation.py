"""Escalation of one incident as a state machine: `(state, input) -> (state, effects)`.

The escalation service keeps one `EscalationState` per incident (one row, `to_json()`)
and feeds it what happens: the triage decision (`start`, and `redecide` for a later
revision of it), acknowledgements (`acknowledge`), reassignments (`reassign`), recusals
(`recuse`), failed deliveries (`delivery_failed`), amended reports (`report_amended`),
the incident's close (`close`) and the passing of time (`due`, `reminders`, or both at
once with `tick`). Each function returns the new state and the effects to publish:
plain catalog payloads (`Escalated`, `Notified`, `EscalationCleared`, `EscalationStalled`,
`AcknowledgementIgnored`, `ReminderDue`, `DeadlineBreached`). `effect_type(effect)`
names each one's event type.

Nothing here does I/O or reads a clock: `now` is always passed in, and must be
timezone-aware. The service persists the new state and the effects in one transaction
(outbox); `state.version` grows by one on every transition that changes the state or
has effects, so `(incident_id, version, index of the effect)` is a stable key for event
ids.

## Rules (decisions)

- **Level 1 is asked by triage** (it emits `assigned` and `notified`), so `start`
  emits nothing for it and only starts its deadline: triage's
  `deadlines["level_1_acknowledge"]` when the decision carries it (so a late start, after
  a restart, does not push the deadline back), else `now + acknowledge_within`.
- **Exactly once.** One deadline is pending at a time (`due_at`).
  `due(state, now, expected_due_at)` fires only when `expected_due_at == due_at`, the
  state is not acknowledged, and `now >= due_at`; otherwise it is a no-op. Early calls,
  repeated calls and calls for a deadline that an acknowledgement (or an earlier
  escalation) already cleared do nothing. A new deadline is always later than `now`,
  so one `due` call moves at most one step.
- **Escalating** (`not_acknowledged`) moves to the next level: `Escalated(level=k,
  recipients, reason, deadline)` then one `Notified(channel="escalation")` per
  recipient, and waits `now + acknowledge_within` of level k (counted from when the
  level was really asked, so a late firing after a restart does not shorten it).
- **Empty levels.** Every empty level of the chain the move passes is recorded once, as
  `Escalated(level=k, recipients=[], reason="nobody_eligible")`, and the next level is
  asked at once (same `now`) with reason `nobody_eligible` too. All the `Escalated` of one
  move carry the same `deadline`: the instant the move became due, that is the missed
  acknowledgement deadline for `not_acknowledged`, else `now` (start, reassignment,
  failed delivery). `start` with an empty level 1 therefore records
  `Escalated(level=1, [], nobody_eligible)`; a non-empty level 1 never gets an
  `Escalated`.
- **Never silent: the independent level.** When a move runs past the chain's last level
  with nobody eligible, it asks the decision's `independent` people (holders of the
  policy's independent roles, after exclusions) as one more level, numbered
  `last + 1` (`fallback_level`, role `independent`): `Escalated(level=last+1,
  recipients, "nobody_eligible")`, a `Notified` each, and the last level's
  `acknowledge_within`. It is then the top level (it repeats, see below). It is asked
  only when the chain ran out of people, never because the last level did not answer.
- **Stalled.** If nobody is eligible at the independent level either, the chain stops
  at level `last + 1` and raises `EscalationStalled(level=last+1, nobody_eligible,
  roles_tried=the chain's roles, repeat_every)`; `due` raises it again every repeat
  interval (`state.stalled`, its deadline pending like any other) until someone acts:
  an acknowledgement by anyone still routed (an earlier level's recipient), a
  reassignment that adds someone (added to the independent level, which is then asked
  with a fresh deadline, no `Escalated`: triage announces additions), or a new
  revision of the decision. The service counts and logs each one at error level.
- **The top level repeats** (the last level, or the independent level once it was
  asked) every `repeat_last_every`: `Escalated(level=top, reason="not_acknowledged",
  deadline=missed)` and `Notified` again. A decision without `repeat_last_every`
  repeats every `acknowledge_within` of the last level instead (`repeat_every`):
  nothing stops silently. A top level emptied by removals moves on (last level: to the
  independent level; independent level: stalled).
- **Acknowledgement** by a principal routed so far (an eligible recipient of any level
  up to the current one, or added by reassignment) and not excluded: the state is
  acknowledged, the pending deadline goes, `EscalationCleared(level=current_level)`.
  A second acknowledgement, and one before `start`, do nothing. The clear names the
  level current when the acknowledgement was *applied*: if an escalation won the race,
  the clear is at the new level, never a clear of a level that was already escalated
  away from.
- **Ignored acknowledgements** (defence in depth): one by a principal excluded at that
  moment (triage's exclusions, a reassignment's removal, a recusal) or not routed
  changes nothing but is recorded, once per call (the service calls once per
  acknowledgement event), as `AcknowledgementIgnored(principal, level=current_level,
  reason="excluded" | "not_routed")`.
- **Excluded** principals (triage's `excluded`, everyone a reassignment removes, every
  recusal) are never notified, escalated to, nor accepted as acknowledgers, whichever
  level they appear in. Additions of an excluded principal are ignored: exclusion wins.
  Exclusions only grow, across revisions too.
- **Reassignment** (`reassign(removed, added)`): added principals join the current
  level. If the current level is left with nobody eligible, the chain moves on at once
  (`nobody_eligible`; past the last level, the independent level or the stall above).
  If the removed principal is the one who acknowledged, the acknowledgement no longer
  counts: the current level is asked again with a fresh deadline (or the chain moves on
  if it is empty).
- **Recusal** (`recuse(principal)`, from `incident.recused.v1`) is the removal alone:
  she is excluded at once, so her later acknowledgement is ignored even before triage's
  `incident.reassigned.v1` (removing her, adding her replacement) arrives. It does not
  move the chain on by itself, since that reassignment follows; the pending deadline
  stands, so nothing waits forever (if she had acknowledged, her level is asked again).
  The recusal and the reassignment give the same state in either order (apart from
  `version`, which counts the steps).
- **Revisions.** A decision whose `revision` is higher than the state's (`redecide`,
  after the people were confirmed) replaces the chain, its `independent` people and
  its repeat interval and restarts it from its level 1, asked by triage as for a first
  decision (its deadline starts, no `Escalated` for it). Exclusions are the union of
  both. An acknowledgement of the old chain does not carry over: the new chain must
  acknowledge. Legal clocks run on from the first decision. A decision whose revision
  is not higher is a no-op.
- **Failed delivery** (`delivery_failed(principal, level)`, after the adapter has given
  up retrying): once every eligible recipient of the current ask has failed, the next
  level is asked at once with reason `delivery_failed`. Failures for another level are
  ignored. A removal that leaves only recipients whose delivery failed counts the same.
  At the top level there is nothing higher: the repeat deadline stands.
- **Legal clocks** come from `Triaged.deadlines` (`reporter_acknowledgement`,
  `feedback`; other keys are not legal clocks and are ignored). `ReminderDue(clock,
  due_at)` fires `reminder_lead` before the deadline, by default 10 % of the span from
  `start` to the deadline (7 days: 16.8 h before; 90 days: 9 days before; a policy of
  seconds scales with it), and `DeadlineBreached(clock, due_at)` at the deadline. Each
  fires once. A reminder that would only fire at or after its deadline (the service
  was down) is skipped: the breach says more. The first valid handler acknowledgement
  satisfies `reporter_acknowledgement` (the reporter's receipt view then shows that
  the report was received and when); `clock_satisfied` satisfies any clock (the
  service calls it for `feedback` when a handler writes to the reporter). A satisfied
  clock neither reminds nor breaches. Legal clocks keep running after acknowledgement:
  feedback is owed regardless.
- **Reminders that remind** (issue 22). A `ReminderDue` is followed, in the same step,
  by a `Notified(channel="reminder")` to each eligible recipient of the current level
  (and to the acknowledger, if she is routed elsewhere); a `DeadlineBreached` by a
  `Notified(channel="breach")` to them, to the eligible recipients of the next level
  with anyone eligible (the one escalation would ask next) and to the independent
  people. Each notice
  names the level its recipient belongs to; everyone once, excluded people never
  (`clock_recipients`). They go through the same delivery queue as the asks, exactly
  once (the step's version keys their event ids, as for every effect). They are not
  asks: no deadline starts, and a failed delivery of one never moves the chain on
  (`is_ask`; `delivery_failed` ignores them). A stalled chain has nobody to remind:
  the stall alert is already raised.
- **Closed** (`close`, from intake's `incident.status.changed.v1` with status `closed`;
  closed is final, intake has no reopen): the chain stops for good. The pending
  deadline goes (an ask's, a repeat's or a stall alert's), and nobody is asked,
  re-asked, reminded or told of a breach from then on: `due`, `reassign`, `recuse`,
  `redecide` and `delivery_failed` still record what they change (exclusions,
  additions, the new chain) but ask nobody. A legal clock not satisfied at the close is
  not satisfied by it: intake writes nothing to the reporter when a handler closes
  (she can read the outcome in her view, but `feedback` is met by a message to her,
  as the reporter's view counts it), and once closed no message can be written. So
  its reminder is skipped (`reminded`, as for a reminder that came too late) and its
  `DeadlineBreached` is still recorded at its deadline, with no notice: a breach of
  the law stays in the ledger and in the reporter's view. The close adds no event of
  escalation's own: intake's close is in the ledger, and the state keeps `closed_at`.
  A second close, and one held until the decision (`start(closed_at=...)`), do the
  same once; an acknowledgement after the close is still applied (it satisfies
  `reporter_acknowledgement`, clears nothing that would be asked).

## Stored format

`to_json` writes format 2. `from_json` also reads format 1 (before revisions, the
independent level and stalls): revision 1, no independent people, and a chain that
format 1 had stopped silently (started, unacknowledged, no deadline) gets its deadline
back at the instant it stopped, so the next `tick` moves it on under the rules above
(migration 0004 wakes those rows). A format 2 row written before `closed_at` existed
reads as open (it was: escalation did not know of closes then).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from services.domain.envelope import utc_rfc3339, utc_rfc3339_or_none
from services.domain.events import (
    AcknowledgementIgnored,
    DeadlineBreached,
    Escalated,
    EscalationCleared,
    EscalationStalled,
    Notified,
    ReminderDue,
    Triaged,
)

STATE_FORMAT: Final = 2
READABLE_FORMATS: Final = (1, STATE_FORMAT)
REPORTER_ACKNOWLEDGEMENT: Final = "reporter_acknowledgement"
FEEDBACK: Final = "feedback"
LEGAL_CLOCKS: Final = (REPORTER_ACKNOWLEDGEMENT, FEEDBACK)
DEFAULT_REMINDER_LEAD: Final = 0.1
ESCALATION_CHANNEL: Final = "escalation"
REMINDER_CHANNEL: Final = "reminder"
BREACH_CHANNEL: Final = "breach"
CLOCK_CHANNELS: Final = frozenset({REMINDER_CHANNEL, BREACH_CHANNEL})
"""Channels of notices about a legal clock: they tell, they do not ask."""
LEVEL_1_ACKNOWLEDGE: Final = "level_1_acknowledge"
INDEPENDENT_ROLE: Final = "independent"
"""The role name of the independent level (one past the chain's last level)."""

Reason = Literal["not_acknowledged", "nobody_eligible", "delivery_failed"]
IgnoredReason = Literal["excluded", "not_routed"]


Effect = (
    Escalated
    | EscalationCleared
    | EscalationStalled
    | AcknowledgementIgnored
    | Notified
    | ReminderDue
    | DeadlineBreached
)


def effect_type(effect: Effect) -> str:
    """The event type an effect is published as (its class says)."""
    return effect.TYPE


@dataclass(frozen=True)
class Level:
    """One level of the chain: who is asked and how long they have (seconds)."""

    level: int
    role: str
    recipients: tuple[str, ...]
    acknowledge_within: int


@dataclass(frozen=True)
class Acknowledgement:
    """The acknowledgement that stopped the chain."""

    by: str
    at: datetime
    level: int


@dataclass(frozen=True)
class LegalClock:
    """A legal deadline (EU 2019/1937): reminded once before, breached once at it."""

    name: str
    due_at: datetime
    remind_at: datetime
    reminded: bool = False
    breached: bool = False
    satisfied_at: datetime | None = None

    @property
    def next_at(self) -> datetime | None:
        """When this clock next has something to say, or None."""
        if self.satisfied_at is not None or self.breached:
            return None
        return self.due_at if self.reminded else self.remind_at


@dataclass(frozen=True)
class EscalationState:
    """Escalation of one incident. Immutable; every change makes a new state.

    `current_level` runs from 1 to `fallback_level` (the independent level); `stalled`
    means nobody is left there either and `due_at` is the next `EscalationStalled`.
    """

    incident_id: str
    chain: tuple[Level, ...]
    report_digest: str
    repeat_last_every: int | None = None
    current_level: int = 0
    asked_at: datetime | None = None
    due_at: datetime | None = None
    acknowledged: Acknowledgement | None = None
    excluded: frozenset[str] = frozenset()
    undelivered: frozenset[str] = frozenset()
    clocks: tuple[LegalClock, ...] = ()
    version: int = 0
    revision: int = 1
    independent: tuple[str, ...] = ()
    stalled: bool = False
    closed_at: datetime | None = None
    """When the incident was closed (final): nothing is asked or reminded since."""

    # Derived views

    def level(self, number: int) -> Level:
        """The level with this number (1-based); `fallback_level` is the independent one."""
        if number == self.fallback_level:
            last = self.chain[-1]
            return Level(number, INDEPENDENT_ROLE, self.independent, last.acknowledge_within)
        return self.chain[number - 1]

    def eligible(self, number: int) -> tuple[str, ...]:
        """Recipients of a level who may be asked: not excluded, each once, in order."""
        out: list[str] = []
        for principal in self.level(number).recipients:
            if principal not in self.excluded and principal not in out:
                out.append(principal)
        return tuple(out)

    @property
    def last_level(self) -> int:
        """The chain's last level."""
        return len(self.chain)

    @property
    def fallback_level(self) -> int:
        """The independent level, asked when the chain ran out of people."""
        return len(self.chain) + 1

    @property
    def repeat_every(self) -> int:
        """Seconds between repeats of the top level (and of a stall alert)."""
        if self.repeat_last_every is not None:
            return self.repeat_last_every
        return self.chain[-1].acknowledge_within

    @property
    def routed(self) -> frozenset[str]:
        """Everyone asked so far who may still act: eligible recipients up to the current level."""
        return frozenset(p for k in range(1, self.current_level + 1) for p in self.eligible(k))

    def clock(self, name: str) -> LegalClock | None:
        return next((c for c in self.clocks if c.name == name), None)

    @property
    def reporter_acknowledgement_due(self) -> datetime | None:
        clock = self.clock(REPORTER_ACKNOWLEDGEMENT)
        return clock.due_at if clock else None

    @property
    def feedback_due(self) -> datetime | None:
        clock = self.clock(FEEDBACK)
        return clock.due_at if clock else None

    # Persistence

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (times RFC 3339 UTC, sets as sorted lists); see `from_json`."""
        ack = self.acknowledged
        return {
            "format": STATE_FORMAT,
            "incident_id": self.incident_id,
            "chain": [
                {
                    "level": lv.level,
                    "role": lv.role,
                    "recipients": list(lv.recipients),
                    "acknowledge_within": lv.acknowledge_within,
                }
                for lv in self.chain
            ],
            "report_digest": self.report_digest,
            "repeat_last_every": self.repeat_last_every,
            "current_level": self.current_level,
            "asked_at": utc_rfc3339_or_none(self.asked_at),
            "due_at": utc_rfc3339_or_none(self.due_at),
            "acknowledged": (
                None
                if ack is None
                else {"by": ack.by, "at": utc_rfc3339(ack.at), "level": ack.level}
            ),
            "excluded": sorted(self.excluded),
            "undelivered": sorted(self.undelivered),
            "clocks": [
                {
                    "name": c.name,
                    "due_at": utc_rfc3339(c.due_at),
                    "remind_at": utc_rfc3339(c.remind_at),
                    "reminded": c.reminded,
                    "breached": c.breached,
                    "satisfied_at": utc_rfc3339_or_none(c.satisfied_at),
                }
                for c in self.clocks
            ],
            "version": self.version,
            "revision": self.revision,
            "independent": list(self.independent),
            "stalled": self.stalled,
            "closed_at": utc_rfc3339_or_none(self.closed_at),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> EscalationState:
        """The state `to_json` wrote (this format or format 1); ValueError if it is not one."""
        fmt = value.get("format")
        if fmt not in READABLE_FORMATS:
            raise ValueError(f"escalation state format {fmt!r} is not supported")
        try:
            ack = value["acknowledged"]
            state = cls(
                incident_id=str(value["incident_id"]),
                chain=tuple(
                    Level(
                        level=int(lv["level"]),
                        role=str(lv["role"]),
                        recipients=tuple(str(p) for p in lv["recipients"]),
                        acknowledge_within=int(lv["acknowledge_within"]),
                    )
                    for lv in value["chain"]
                ),
                report_digest=str(value["report_digest"]),
                repeat_last_every=_int_or_none(value["repeat_last_every"]),
                current_level=int(value["current_level"]),
                asked_at=_time_in(value["asked_at"]),
                due_at=_time_in(value["due_at"]),
                acknowledged=(
                    None
                    if ack is None
                    else Acknowledgement(
                        by=str(ack["by"]), at=_time(ack["at"]), level=int(ack["level"])
                    )
                ),
                excluded=frozenset(str(p) for p in value["excluded"]),
                undelivered=frozenset(str(p) for p in value["undelivered"]),
                clocks=tuple(
                    LegalClock(
                        name=str(c["name"]),
                        due_at=_time(c["due_at"]),
                        remind_at=_time(c["remind_at"]),
                        reminded=bool(c["reminded"]),
                        breached=bool(c["breached"]),
                        satisfied_at=_time_in(c["satisfied_at"]),
                    )
                    for c in value["clocks"]
                ),
                version=int(value["version"]),
                revision=int(value.get("revision", 1)),
                independent=tuple(str(p) for p in value.get("independent", ())),
                stalled=bool(value.get("stalled", False)),
                closed_at=_time_in(value.get("closed_at")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an escalation state: {exc!r}") from exc
        if fmt == 1 and _stopped_silently(state):
            # Format 1 stopped a chain with nobody left (or no repeat) and said nothing
            # more; its deadline comes back at the instant it stopped, so the next tick
            # asks the independent level, repeats or raises the stall.
            state = replace(state, due_at=state.asked_at)
        return state


Step = tuple[EscalationState, tuple[Effect, ...]]


# Transitions


def start(
    triaged: Triaged,
    incident_id: str,
    now: datetime,
    report_digest: str,
    *,
    reminder_lead: float | timedelta = DEFAULT_REMINDER_LEAD,
    closed_at: datetime | None = None,
) -> Step:
    """The state after triage decided the chain; level 1 is already asked by triage.

    `reminder_lead` is a fraction of each legal clock's span (from `now` to its
    deadline) or a fixed time before it. `closed_at`: the incident was closed before
    its decision reached escalation (the close was held): the state starts closed and
    asks nobody. ValueError if the chain is not levels 1..n.
    """
    _aware(now)
    chain = _chain_of(triaged)
    if isinstance(reminder_lead, timedelta):
        if reminder_lead < timedelta(0):
            raise ValueError("reminder_lead is not negative")
    elif not 0.0 <= reminder_lead < 1.0:
        raise ValueError("reminder_lead as a fraction is in [0, 1)")
    clocks = []
    for name in LEGAL_CLOCKS:
        deadline = triaged.deadlines.get(name)
        if deadline is not None:
            _aware(deadline)
            clocks.append(
                LegalClock(
                    name, due_at=deadline, remind_at=_remind_at(now, deadline, reminder_lead)
                )
            )
    state = EscalationState(
        incident_id=incident_id,
        chain=chain,
        report_digest=report_digest,
        repeat_last_every=triaged.repeat_last_every,
        excluded=frozenset(x.principal for x in triaged.excluded),
        clocks=tuple(sorted(clocks, key=lambda c: c.due_at)),
        version=1,
        revision=triaged.revision,
        independent=tuple(triaged.independent),
    )
    if closed_at is not None:  # level 1 was asked by triage: its people stay routed
        return _closed(replace(state, current_level=1), closed_at), ()
    return _begin(state, triaged, now)


def redecide(state: EscalationState, triaged: Triaged, now: datetime) -> Step:
    """A later decision of the incident (a higher `revision`) replaces the chain and
    restarts it from its level 1; one not newer than the state's is a no-op."""
    _aware(now)
    if triaged.revision <= state.revision:
        return state, ()
    fresh = replace(
        state,
        chain=_chain_of(triaged),
        report_digest=triaged.report_digest or state.report_digest,
        repeat_last_every=triaged.repeat_last_every,
        current_level=0,
        asked_at=None,
        due_at=None,
        acknowledged=None,  # the new chain must acknowledge
        excluded=state.excluded | {x.principal for x in triaged.excluded},
        undelivered=frozenset(),
        revision=triaged.revision,
        independent=tuple(triaged.independent),
        stalled=False,
    )
    if state.closed_at is not None:  # the new chain is kept (triage asked its level 1)
        return _changed(state, replace(fresh, current_level=1), ())
    return _changed(state, *_begin(fresh, triaged, now))


def due(state: EscalationState, now: datetime, expected_due_at: datetime | None) -> Step:
    """Fire the pending deadline `expected_due_at`, if it is the one pending, has
    passed and is not acknowledged; otherwise nothing."""
    _aware(now)
    missed = state.due_at
    if (
        missed is None
        or expected_due_at != missed
        or now < missed
        or state.acknowledged is not None
        or state.closed_at is not None
    ):
        return state, ()
    if state.stalled:
        return _changed(state, *_stall(state, now, ()))
    if state.current_level < state.last_level:
        return _changed(state, *_move_on(state, now, "not_acknowledged", missed))
    top = state.current_level
    recipients = state.eligible(top)
    if not recipients:  # emptied by a recusal, or a format 1 stop: move past it
        if top < state.fallback_level:
            return _changed(state, *_move_on(state, now, "nobody_eligible", missed))
        return _changed(state, *_stall(state, now, ()))
    repeated = replace(
        state,
        asked_at=now,
        due_at=now + timedelta(seconds=state.repeat_every),
        undelivered=frozenset(),
    )
    return _changed(state, repeated, _asked(state, top, recipients, "not_acknowledged", missed))


def acknowledge(state: EscalationState, principal: str, now: datetime) -> Step:
    """A principal acknowledged; clears the chain if they are routed and not excluded,
    and records the acknowledgement as ignored if they are not."""
    _aware(now)
    if principal in state.excluded:
        return _ignored(state, principal, "excluded")
    if principal not in state.routed:
        return _ignored(state, principal, "not_routed")
    if state.acknowledged is not None:
        return state, ()
    level = state.current_level
    new = replace(
        state,
        acknowledged=Acknowledgement(by=principal, at=now, level=level),
        due_at=None,
        stalled=False,
        clocks=_satisfy(state.clocks, REPORTER_ACKNOWLEDGEMENT, now),
    )
    return _changed(state, new, (EscalationCleared(level=level, principal=principal),))


def reassign(
    state: EscalationState,
    removed: Iterable[str],
    added: Iterable[str],
    now: datetime,
    *,
    move_on: bool = True,
) -> Step:
    """Triage removed principals (now excluded for good) and added others to the current
    level. `move_on=False` (a recusal) never moves the chain on by itself."""
    _aware(now)
    gone = frozenset(removed)
    excluded = state.excluded | gone
    current = state.current_level
    at = max(current, 1)
    joining = tuple(
        p for p in dict.fromkeys(added) if p not in excluded and p not in state.level(at).recipients
    )
    new = replace(state, excluded=excluded, undelivered=state.undelivered - gone)
    if joining:
        new = _widen(new, at, joining)
    reopened = state.acknowledged is not None and state.acknowledged.by in gone
    if reopened:
        new = replace(new, acknowledged=None)
    if current == 0 or new.acknowledged is not None or new.closed_at is not None:
        return _changed(state, new, ())
    waiting = new.due_at is not None and not new.stalled  # an ask's deadline is pending
    if new.eligible(current):
        if not waiting and (reopened or joining):
            new = _ask(new, current, now)
        elif waiting and set(new.eligible(current)) <= new.undelivered:
            return _changed(state, *_fail_over(new, now))
        return _changed(state, new, ())
    if new.stalled:  # already alerting on its own schedule
        return _changed(state, new, ())
    if not move_on:
        # triage's reassignment follows a recusal; an acknowledged level asked again
        # keeps a deadline, so the chain moves on if that never comes
        return _changed(state, _ask(new, current, now) if reopened else new, ())
    if current < new.fallback_level:
        return _changed(state, *_move_on(new, now, "nobody_eligible", now))
    return _changed(state, *_stall(new, now, ()))


def recuse(state: EscalationState, principal: str, now: datetime) -> Step:
    """A handler declared a conflict: excluded at once; triage's reassignment follows."""
    return reassign(state, [principal], [], now, move_on=False)


def is_ask(channel: str) -> bool:
    """A notice on `channel` asks its recipient to act (triage's, escalation's), unlike a
    reminder or breach notice, which tells of a legal clock."""
    return channel not in CLOCK_CHANNELS


def delivery_failed(
    state: EscalationState,
    principal: str,
    level: int,
    now: datetime,
    channel: str = ESCALATION_CHANNEL,
) -> Step:
    """Delivery to `principal` of the ask of `level` failed for good; once every eligible
    recipient of the current ask failed, the next level is asked at once. A reminder or
    breach notice that failed changes nothing."""
    _aware(now)
    if (
        not is_ask(channel)
        or state.acknowledged is not None
        or state.closed_at is not None
        or state.due_at is None
        or state.stalled
        or level != state.current_level
        or principal not in state.eligible(level)
    ):
        return state, ()
    new = replace(state, undelivered=state.undelivered | {principal})
    if set(new.eligible(level)) <= new.undelivered:
        return _changed(state, *_fail_over(new, now))
    return _changed(state, new, ())


def report_amended(state: EscalationState, report_digest: str) -> EscalationState:
    """Later notifications carry the digest of the amended report."""
    if report_digest == state.report_digest:
        return state
    return replace(state, report_digest=report_digest, version=state.version + 1)


def reminders(state: EscalationState, now: datetime) -> Step:
    """Reminders and breaches of the legal clocks that are due at `now`, each once."""
    _aware(now)
    effects: list[Effect] = []
    clocks: list[LegalClock] = []
    for clock in state.clocks:
        if clock.satisfied_at is None:
            if not clock.reminded and now >= clock.remind_at:
                if now < clock.due_at:
                    effects.append(ReminderDue(clock=clock.name, due_at=clock.due_at))
                    effects.extend(_clock_notices(state, REMINDER_CHANNEL))
                clock = replace(clock, reminded=True)
            if not clock.breached and now >= clock.due_at:
                effects.append(DeadlineBreached(clock=clock.name, due_at=clock.due_at))
                effects.extend(_clock_notices(state, BREACH_CHANNEL))
                clock = replace(clock, breached=True)
        clocks.append(clock)
    return _changed(state, replace(state, clocks=tuple(clocks)), tuple(effects))


def clock_recipients(state: EscalationState, breach: bool) -> tuple[tuple[str, int], ...]:
    """Who a legal clock's reminder (or, with `breach`, its breach) tells, each with the
    level she belongs to: the current level's eligible recipients and the acknowledger;
    for a breach also the next level with anyone eligible and the independent people.
    Each once, in that order; excluded people never; nobody once the incident is closed."""
    current = state.current_level
    if current == 0 or state.closed_at is not None:
        return ()
    wanted: list[tuple[str, int]] = [(p, current) for p in state.eligible(current)]
    ack = state.acknowledged
    if ack is not None and ack.by not in state.excluded:
        wanted.append((ack.by, ack.level))
    if breach:
        # the level escalation would ask next: the first one after this with anyone in it
        for number in range(current + 1, state.fallback_level):
            if state.eligible(number):
                wanted.extend((p, number) for p in state.eligible(number))
                break
        wanted.extend((p, state.fallback_level) for p in state.eligible(state.fallback_level))
    seen: set[str] = set()
    out = []
    for principal, level in wanted:
        if principal not in seen:
            seen.add(principal)
            out.append((principal, level))
    return tuple(out)


def _clock_notices(state: EscalationState, channel: str) -> tuple[Notified, ...]:
    return tuple(
        Notified(principal=p, channel=channel, level=level, report_digest=state.report_digest)
        for p, level in clock_recipients(state, breach=channel == BREACH_CHANNEL)
    )


def clock_satisfied(state: EscalationState, clock: str, now: datetime) -> Step:
    """A legal clock was satisfied (e.g. `feedback`: a handler wrote to the reporter)."""
    _aware(now)
    return _changed(state, replace(state, clocks=_satisfy(state.clocks, clock, now)), ())


def close(state: EscalationState, now: datetime) -> Step:
    """The incident was closed (final): the chain stops, nothing is asked or reminded
    from now on; a legal clock not yet satisfied is still breached at its deadline
    (recorded, nobody notified). A second close does nothing."""
    _aware(now)
    if state.closed_at is not None:
        return state, ()
    return _changed(state, _closed(state, now), ())


def tick(state: EscalationState, now: datetime) -> Step:
    """Everything due at `now`: the pending deadline, then the legal clocks."""
    state, escalations = due(state, now, state.due_at)
    state, legal = reminders(state, now)
    return state, escalations + legal


def next_wakeup(state: EscalationState) -> datetime | None:
    """The earliest instant at which `tick` would do something, or None."""
    moments = [c.next_at for c in state.clocks]
    if state.acknowledged is None:
        moments.append(state.due_at)
    return min((m for m in moments if m is not None), default=None)


# Internals


def _chain_of(triaged: Triaged) -> tuple[Level, ...]:
    levels = sorted(triaged.chain, key=lambda lv: lv.level)
    if not levels or [lv.level for lv in levels] != list(range(1, len(levels) + 1)):
        raise ValueError("an escalation chain has levels 1..n, at least one")
    return tuple(
        Level(lv.level, lv.role, tuple(lv.recipients), lv.acknowledge_within) for lv in levels
    )


def _begin(state: EscalationState, triaged: Triaged, now: datetime) -> Step:
    """Level 1 of a (new) chain: asked by triage, or the chain moves on at once."""
    if state.eligible(1):
        asked = _ask(state, 1, now)
        first_due = triaged.deadlines.get(LEVEL_1_ACKNOWLEDGE)
        if first_due is not None:
            _aware(first_due)
            asked = replace(asked, due_at=first_due)
        return asked, ()
    return _move_on(state, now, "nobody_eligible", now)


def _closed(state: EscalationState, at: datetime) -> EscalationState:
    """The state closed at `at`: no deadline pending, no stall alert, and the reminder
    of every clock still open skipped (its breach stays due)."""
    clocks = tuple(
        c if c.satisfied_at is not None or c.reminded else replace(c, reminded=True)
        for c in state.clocks
    )
    return replace(
        state, closed_at=at, due_at=None, stalled=False, undelivered=frozenset(), clocks=clocks
    )


def _ask(state: EscalationState, number: int, now: datetime) -> EscalationState:
    """Level `number` is asked at `now`; its deadline starts."""
    within = state.level(number).acknowledge_within
    return replace(
        state,
        current_level=number,
        asked_at=now,
        due_at=now + timedelta(seconds=within),
        undelivered=frozenset(),
        stalled=False,
    )


def _move_on(state: EscalationState, now: datetime, reason: Reason, deadline: datetime) -> Step:
    """Ask the next level with anyone eligible, recording each empty chain level on the
    way; past the last level, the independent level, else the stall."""
    effects: list[Effect] = []
    for number in range(state.current_level + 1, state.fallback_level + 1):
        recipients = state.eligible(number)
        if recipients:
            effects.extend(_asked(state, number, recipients, reason, deadline))
            return _ask(state, number, now), tuple(effects)
        if number < state.fallback_level:
            effects.append(_escalated(number, (), "nobody_eligible", deadline))
        reason = "nobody_eligible"
    return _stall(state, now, tuple(effects))


def _stall(state: EscalationState, now: datetime, effects: tuple[Effect, ...]) -> Step:
    """Nobody left at all: raise the alert now and again every repeat interval."""
    every = state.repeat_every
    stalled = replace(
        state,
        current_level=state.fallback_level,
        asked_at=now,
        due_at=now + timedelta(seconds=every),
        undelivered=frozenset(),
        stalled=True,
    )
    alert = EscalationStalled(
        level=state.fallback_level,
        reason="nobody_eligible",
        roles_tried=list(dict.fromkeys(lv.role for lv in state.chain)),
        repeat_every=every,
    )
    return stalled, (*effects, alert)


def _widen(state: EscalationState, number: int, joining: tuple[str, ...]) -> EscalationState:
    """Principals join level `number` (the independent level included)."""
    if number == state.fallback_level:
        return replace(state, independent=state.independent + joining)
    level = state.level(number)
    widened = replace(level, recipients=level.recipients + joining)
    return replace(state, chain=(*state.chain[: number - 1], widened, *state.chain[number:]))


def _ignored(state: EscalationState, principal: str, reason: IgnoredReason) -> Step:
    """An acknowledgement that does not count, recorded (`_changed` gives it a version)."""
    ignored = AcknowledgementIgnored(principal=principal, level=state.current_level, reason=reason)
    return _changed(state, state, (ignored,))


def _fail_over(state: EscalationState, now: datetime) -> Step:
    """Every recipient of the current ask failed delivery."""
    if state.current_level < state.last_level:
        return _move_on(state, now, "delivery_failed", now)
    return state, ()  # nothing higher: the repeat deadline stands


def _stopped_silently(state: EscalationState) -> bool:
    return state.current_level > 0 and state.acknowledged is None and state.due_at is None


def _asked(
    state: EscalationState,
    number: int,
    recipients: Sequence[str],
    reason: Reason,
    deadline: datetime,
) -> tuple[Effect, ...]:
    notified = tuple(
        Notified(
            principal=p,
            channel=ESCALATION_CHANNEL,
            level=number,
            report_digest=state.report_digest,
        )
        for p in recipients
    )
    return (_escalated(number, recipients, reason, deadline), *notified)


def _escalated(
    number: int, recipients: Sequence[str], reason: Reason, deadline: datetime
) -> Escalated:
    return Escalated(level=number, recipients=list(recipients), reason=reason, deadline=deadline)


def _changed(old: EscalationState, new: EscalationState, effects: tuple[Effect, ...]) -> Step:
    """Stamp a new version on a state that changed or has effects: the effects' event ids
    are keyed by the new version, so two steps never share one."""
    if new == old and not effects:
        return old, effects
    return replace(new, version=old.version + 1), effects


def _satisfy(clocks: tuple[LegalClock, ...], name: str, now: datetime) -> tuple[LegalClock, ...]:
    return tuple(
        replace(c, satisfied_at=now) if c.name == name and c.satisfied_at is None else c
        for c in clocks
    )


def _remind_at(now: datetime, deadline: datetime, lead: float | timedelta) -> datetime:
    span = max(deadline - now, timedelta(0))
    ahead = min(lead, span) if isinstance(lead, timedelta) else span * float(lead)
    return deadline - ahead


def _aware(moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime: every time in escalation is timezone-aware")


def _time(text: Any) -> datetime:
    moment = datetime.fromisoformat(str(text))
    _aware(moment)
    return moment.astimezone(UTC)


def _time_in(text: Any) -> datetime | None:
    return None if text is None else _time(text)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
