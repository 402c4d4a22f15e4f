"""Escalation's unit of work in memory, for use-case tests that run in milliseconds.

`InMemoryEscalationStore` is `services.infra.recorder_memory.InMemoryStore` with
escalation's tables beside the event store: states (with wake-up, trace, correlation),
early inputs, kept acknowledgements and the delivery queue. `InMemoryEscalationUnitOfWork`
reads what other units committed plus its own staged changes, and applies those, row
by row, when its block ends cleanly (an exception drops them), with the recorder's own
staging. Incident locks are held like the recorder's keys (one unit at a time per
incident); due states are taken in wake-up order, skipping those another unit holds
(as `FOR UPDATE SKIP LOCKED`). Nothing here waits on a clock: tests pass theirs to
`usecases.Env`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from services.domain import escalation as esc
from services.domain.envelope import Envelope
from services.escalation.usecases import (
    Deliveries,
    Due,
    EscalationStates,
    HeldPast,
    Started,
    first_alarms,
)
from services.infra.recorder_memory import InMemoryStore, InMemoryUnitOfWork

R = TypeVar("R")


@dataclass
class Row:
    """One incident's row: its state and what `escalation_state` keeps beside it."""

    state: esc.EscalationState
    wakeup: datetime | None
    traceparent: str | None = None
    correlationid: str | None = None


@dataclass
class Queued:
    """One notice in the delivery queue."""

    notice: Envelope
    traceparent: str | None
    state: str = "pending"
    held: bool = False
    """Held until its incident's escalation starts (`Deliveries.hold`); no leases here."""
    alarmed: bool = False
    """Alarmed as waiting too long for a decision (`Deliveries.alarm_held`)."""

    @property
    def queued_at(self) -> datetime:
        """When it was queued: here, the notice's own time (no clock in this module)."""
        return self.notice.time


@dataclass
class Tables:
    """Escalation's own tables (committed, or a unit's working copy)."""

    states: dict[str, Row] = field(default_factory=dict)
    early: list[tuple[str, Envelope]] = field(default_factory=list)
    waiting: list[tuple[str, Envelope]] = field(default_factory=list)
    deliveries: dict[str, Queued] = field(default_factory=dict)


@dataclass
class InMemoryEscalationStore(InMemoryStore):
    """The event store and escalation's tables; read `tables` in tests."""

    tables: Tables = field(default_factory=Tables)


@dataclass
class _Staged:
    """What one unit of work changed in escalation's tables, applied on a clean exit."""

    states: dict[str, Row] = field(default_factory=dict)
    early: list[tuple[str, Envelope]] = field(default_factory=list)
    taken: set[tuple[str, str]] = field(default_factory=set)
    """(incident, event id) of the committed held inputs this unit took: as PostgreSQL's
    DELETE, only those it saw; what another unit holds after that stays held."""
    waiting: list[tuple[str, Envelope]] = field(default_factory=list)
    dropped: set[tuple[str, str]] = field(default_factory=set)
    """(incident, event id) of kept acknowledgements this unit dropped."""
    deliveries: dict[str, Queued] = field(default_factory=dict)


class InMemoryEscalationUnitOfWork(InMemoryUnitOfWork):
    """`EscalationUnitOfWork` on an `InMemoryEscalationStore`.

    Reads see what other units committed and this unit's own changes (PostgreSQL's read
    committed); writes are staged and applied row by row on a clean exit, so two units
    open at once never put back what the other changed.
    """

    def __init__(self, store: InMemoryEscalationStore) -> None:
        super().__init__(store)
        self.tables_store = store
        self.staged = _Staged()

    def _working(self) -> _Staged:
        self.require_open()
        return self.staged

    @property
    def states(self) -> EscalationStates:
        return MemoryStates(self)

    @property
    def deliveries(self) -> Deliveries:
        return MemoryDeliveries(self)

    def commit(self) -> None:
        tables, staged = self.tables_store.tables, self.staged
        tables.states.update(staged.states)
        tables.early = [e for e in tables.early if (e[0], e[1].id) not in staged.taken]
        tables.early += staged.early
        tables.waiting = [
            w for w in tables.waiting if (w[0], w[1].id) not in staged.dropped
        ] + staged.waiting
        tables.deliveries.update(staged.deliveries)
        self.staged = _Staged()
        super().commit()

    def rollback(self) -> None:
        self.staged = _Staged()
        super().rollback()


def _own(staged: dict[str, R], committed: dict[str, R], key: str) -> R | None:
    """A unit's own copy of a row (copied from the committed one on first use, so the
    unit may change it), or None when there is no such row."""
    if key not in staged:
        if key not in committed:
            return None
        staged[key] = copy.deepcopy(committed[key])
    return staged[key]


class MemoryStates:
    """`EscalationStates` over the committed tables and a unit's staged changes."""

    def __init__(self, unit: InMemoryEscalationUnitOfWork) -> None:
        self.unit = unit
        self.staged = unit._working()
        self.tables = unit.tables_store.tables

    def _row(self, incident_id: str) -> Row | None:
        """The incident's row as this unit sees it (a staged copy, to change)."""
        return _own(self.staged.states, self.tables.states, incident_id)

    async def lock(self, incidents: Sequence[str]) -> set[str]:
        for incident in incidents:
            await self.unit.hold(("escalation", incident))
        return {i for i in incidents if i in self.staged.states or i in self.tables.states}

    async def lock_states(self, incidents: Sequence[str]) -> None:
        return None  # no row locks here: `lock` already serialises the units

    async def get(self, incident_id: str) -> esc.EscalationState | None:
        row = self._row(incident_id)
        return None if row is None else row.state

    async def insert(self, started: Sequence[Started]) -> list[Envelope]:
        for s in started:
            row = Row(s.state, esc.next_wakeup(s.state), s.traceparent, s.correlationid)
            self.staged.states[s.state.incident_id] = row
        return await self.take_held([s.state.incident_id for s in started])

    async def save(self, state: esc.EscalationState) -> None:
        row = self._row(state.incident_id)
        assert row is not None, "save is for a state that exists"
        row.state, row.wakeup = state, esc.next_wakeup(state)

    async def postpone(self, incident_id: str, wakeup: datetime | None) -> None:
        row = self._row(incident_id)
        assert row is not None, "postpone is for a state that exists"
        row.wakeup = wakeup

    async def correlation(self, incident_id: str) -> str | None:
        row = self._row(incident_id)
        return None if row is None else row.correlationid

    async def due(self, now: datetime, limit: int) -> list[Due]:
        # FOR UPDATE SKIP LOCKED: states another unit holds are skipped, those taken held
        rows = {**self.tables.states, **self.staged.states}
        ready = sorted(
            (
                (r.wakeup, incident)
                for incident, r in rows.items()
                if r.wakeup is not None
                and r.wakeup <= now
                and not self.unit.held_elsewhere(("escalation", incident))
            ),
        )[:limit]
        taken = []
        for _, incident in ready:
            await self.unit.hold(("escalation", incident))
            row = self._row(incident)
            assert row is not None
            taken.append(Due(row.state, row.traceparent))
        return taken

    def _early(self) -> list[tuple[str, Envelope]]:
        kept = [e for e in self.tables.early if (e[0], e[1].id) not in self.staged.taken]
        return kept + self.staged.early

    async def hold(self, incident_id: str, envelope: Envelope) -> None:
        self.staged.early.append((incident_id, envelope))

    async def take_held(self, incidents: Sequence[str]) -> list[Envelope]:
        wanted = set(incidents)
        taken = [(i, e) for i, e in self._early() if i in wanted]
        self.staged.taken |= {(i, e.id) for i, e in taken}
        self.staged.early = [(i, e) for i, e in self.staged.early if i not in wanted]
        return [e for _, e in sorted(taken, key=lambda item: item[0])]  # stable: seq order

    def _waiting(self) -> list[tuple[str, Envelope]]:
        committed = [w for w in self.tables.waiting if (w[0], w[1].id) not in self.staged.dropped]
        return committed + self.staged.waiting

    async def wait(self, incident_id: str, envelope: Envelope) -> None:
        if (incident_id, envelope.id) not in {(i, e.id) for i, e in self._waiting()}:
            self.staged.waiting.append((incident_id, envelope))

    async def waiting(self, incident_id: str) -> list[Envelope]:
        return [e for i, e in self._waiting() if i == incident_id]

    async def drop_waiting(self, incident_id: str, event_ids: Sequence[str]) -> None:
        gone = {(incident_id, e) for e in event_ids}
        self.staged.dropped |= gone
        self.staged.waiting = [w for w in self.staged.waiting if (w[0], w[1].id) not in gone]


class MemoryDeliveries:
    """`Deliveries` over the committed queue and a unit's staged changes."""

    def __init__(self, unit: InMemoryEscalationUnitOfWork) -> None:
        self.staged = unit._working()
        self.tables = unit.tables_store.tables

    def _queued(self, notice_id: str) -> Queued | None:
        return _own(self.staged.deliveries, self.tables.deliveries, notice_id)

    async def enqueue(self, notices: Sequence[tuple[Envelope, str | None]]) -> None:
        for notice, traceparent in notices:
            if self._queued(notice.id) is None:
                self.staged.deliveries[notice.id] = Queued(notice, traceparent)

    async def mark_delivered(self, notice_ids: Sequence[str]) -> set[str]:
        return {i for i in notice_ids if self._done(i, "delivered")}

    async def mark_failed(self, notice_id: str) -> bool:
        return self._done(notice_id, "failed")

    async def hold(self, notice_id: str, recheck_after: float) -> None:
        queued = self._queued(notice_id)
        if queued is not None and queued.state == "pending":
            queued.held = True

    async def release(self, incidents: Sequence[str]) -> int:
        wanted = set(incidents)
        released = 0
        for notice_id, seen in {**self.tables.deliveries, **self.staged.deliveries}.items():
            if seen.notice.subject not in wanted or seen.state != "pending" or not seen.held:
                continue
            queued = self._queued(notice_id)  # this unit's own copy, changed on commit
            if queued is not None:
                queued.held = False
                released += 1
        return released

    async def alarm_held(self, queued_before: datetime) -> HeldPast:
        started = {*self.tables.states, *self.staged.states}
        seen = {**self.tables.deliveries, **self.staged.deliveries}
        waiting = {
            notice_id: q
            for notice_id, q in seen.items()
            if q.state == "pending"
            and q.queued_at <= queued_before
            and q.notice.subject not in started
        }
        before = {q.notice.subject for q in seen.values() if q.alarmed}
        marked = []
        for notice_id, q in waiting.items():
            if q.alarmed:
                continue
            own = self._queued(notice_id)
            assert own is not None
            own.alarmed = True
            marked.append((q.notice.subject, q.queued_at, q.notice.subject in before))
        incidents = len({q.notice.subject for q in waiting.values()})
        return HeldPast(first_alarms(marked), incidents)

    def _done(self, notice_id: str, state: str) -> bool:
        queued = self._queued(notice_id)
        if queued is None or queued.state != "pending":
            return False
        queued.state = state
        return True
