"""Escalation's unit of work in memory, for use-case tests that run in milliseconds.

`InMemoryEscalationStore` is `services.infra.recorder_memory.InMemoryStore` with
escalation's tables beside the event store: states (with wake-up, trace, correlation),
early inputs, kept acknowledgements and the delivery queue. `InMemoryEscalationUnitOfWork`
works on copies of them and puts the copies in place when its block ends cleanly (an
exception drops them), with the recorder's own staging. Incident locks are held like
the recorder's keys (one unit at a time per incident); due states are taken in wake-up
order. Nothing here waits on a clock: tests pass theirs to `usecases.Env`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from services.domain import escalation as esc
from services.domain.envelope import Envelope
from services.escalation.usecases import Deliveries, Due, EscalationStates, Started
from services.infra.recorder_memory import InMemoryStore, InMemoryUnitOfWork


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


class InMemoryEscalationUnitOfWork(InMemoryUnitOfWork):
    """`EscalationUnitOfWork` on an `InMemoryEscalationStore`."""

    def __init__(self, store: InMemoryEscalationStore) -> None:
        super().__init__(store)
        self.tables_store = store
        self._tables: Tables | None = None

    async def __aenter__(self) -> InMemoryEscalationUnitOfWork:
        await super().__aenter__()
        self._tables = copy.deepcopy(self.tables_store.tables)
        return self

    def _working(self) -> Tables:
        if self._tables is None:
            raise RuntimeError("the unit of work is not open (use `async with uow:`)")
        return self._tables

    @property
    def states(self) -> EscalationStates:
        return MemoryStates(self)

    @property
    def deliveries(self) -> Deliveries:
        return MemoryDeliveries(self._working())

    def commit(self) -> None:
        if self._tables is not None:
            self.tables_store.tables = self._tables
        super().commit()

    def rollback(self) -> None:
        self._tables = None
        super().rollback()


class MemoryStates:
    """`EscalationStates` on a unit's working tables."""

    def __init__(self, unit: InMemoryEscalationUnitOfWork) -> None:
        self.unit = unit
        self.tables = unit._working()

    async def lock(self, incidents: Sequence[str]) -> None:
        for incident in incidents:
            await self.unit._hold(("escalation", incident))

    async def get(self, incident_id: str) -> esc.EscalationState | None:
        row = self.tables.states.get(incident_id)
        return None if row is None else row.state

    async def started(self, incidents: Sequence[str]) -> set[str]:
        return {i for i in incidents if i in self.tables.states}

    async def insert(self, started: Sequence[Started]) -> None:
        for s in started:
            row = Row(s.state, esc.next_wakeup(s.state), s.traceparent, s.correlationid)
            self.tables.states[s.state.incident_id] = row

    async def save(self, state: esc.EscalationState) -> None:
        row = self.tables.states[state.incident_id]
        row.state, row.wakeup = state, esc.next_wakeup(state)

    async def postpone(self, incident_id: str, wakeup: datetime | None) -> None:
        self.tables.states[incident_id].wakeup = wakeup

    async def correlation(self, incident_id: str) -> str | None:
        row = self.tables.states.get(incident_id)
        return None if row is None else row.correlationid

    async def due(self, now: datetime, limit: int) -> list[Due]:
        rows = sorted(
            (r for r in self.tables.states.values() if r.wakeup is not None and r.wakeup <= now),
            key=lambda r: r.wakeup or now,
        )
        return [Due(r.state, r.traceparent) for r in rows[:limit]]

    async def hold(self, incident_id: str, envelope: Envelope) -> None:
        self.tables.early.append((incident_id, envelope))

    async def take_held(self, incidents: Sequence[str]) -> list[Envelope]:
        wanted = set(incidents)
        taken = [(i, e) for i, e in self.tables.early if i in wanted]
        self.tables.early = [(i, e) for i, e in self.tables.early if i not in wanted]
        return [e for _, e in sorted(taken, key=lambda item: item[0])]  # stable: seq order

    async def wait(self, incident_id: str, envelope: Envelope) -> None:
        if (incident_id, envelope.id) not in {(i, e.id) for i, e in self.tables.waiting}:
            self.tables.waiting.append((incident_id, envelope))

    async def waiting(self, incident_id: str) -> list[Envelope]:
        return [e for i, e in self.tables.waiting if i == incident_id]

    async def drop_waiting(self, incident_id: str, event_ids: Sequence[str]) -> None:
        gone = set(event_ids)
        self.tables.waiting = [
            (i, e) for i, e in self.tables.waiting if i != incident_id or e.id not in gone
        ]


class MemoryDeliveries:
    """`Deliveries` on a unit's working tables."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables

    async def enqueue(self, notices: Sequence[tuple[Envelope, str | None]]) -> None:
        for notice, traceparent in notices:
            self.tables.deliveries.setdefault(notice.id, Queued(notice, traceparent))

    async def mark_delivered(self, notice_ids: Sequence[str]) -> set[str]:
        return {i for i in notice_ids if self._done(i, "delivered")}

    async def mark_failed(self, notice_id: str) -> bool:
        return self._done(notice_id, "failed")

    def _done(self, notice_id: str, state: str) -> bool:
        queued = self.tables.deliveries.get(notice_id)
        if queued is None or queued.state != "pending":
            return False
        queued.state = state
        return True
