"""Intake's decision clocks in memory, for use-case tests that run in milliseconds.

`InMemoryIntakeStore` is `services.infra.recorder_memory.InMemoryStore` with the
`decision_clocks` table beside the event store; `InMemoryIntakeUnitOfWork` is a
`usecases.DecisionUnitOfWork` on it that behaves as `services.intake.deadlines`' does on
PostgreSQL: reads see what other units committed and this unit's own changes, writes
are staged and applied on a clean exit (an exception drops them), and `due` holds each
clock it returns until the unit ends, skipping those another open unit holds (as `FOR
UPDATE SKIP LOCKED`). A report unit of work of a test extends it (its `decisions` are
the same clocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from services.infra.recorder_memory import InMemoryStore, InMemoryUnitOfWork
from services.intake.usecases import DecisionClocks, Undecided


@dataclass(frozen=True)
class Clock:
    """One report's row of `decision_clocks`."""

    submitted_at: datetime
    decided_at: datetime | None = None
    overdue_at: datetime | None = None


@dataclass
class InMemoryIntakeStore(InMemoryStore):
    """The event store and the decision clocks; read `clocks` in tests."""

    clocks: dict[str, Clock] = field(default_factory=dict)


class InMemoryIntakeUnitOfWork(InMemoryUnitOfWork):
    """`usecases.DecisionUnitOfWork` on an `InMemoryIntakeStore`."""

    def __init__(self, store: InMemoryIntakeStore) -> None:
        super().__init__(store)
        self.intake_store = store
        self.staged_clocks: dict[str, Clock] = {}

    @property
    def decisions(self) -> DecisionClocks:
        self.require_open()
        return InMemoryDecisionClocks(self)

    def commit(self) -> None:
        super().commit()
        self.intake_store.clocks.update(self.staged_clocks)
        self.staged_clocks = {}

    def rollback(self) -> None:
        super().rollback()
        self.staged_clocks = {}

    def clocks(self) -> dict[str, Clock]:
        """The table as this unit sees it: committed rows and its own changes."""
        return {**self.intake_store.clocks, **self.staged_clocks}


class InMemoryDecisionClocks:
    """`usecases.DecisionClocks` of one open `InMemoryIntakeUnitOfWork`."""

    def __init__(self, unit: InMemoryIntakeUnitOfWork) -> None:
        self.unit = unit

    async def start(self, clocks: Sequence[tuple[str, datetime]]) -> None:
        seen = self.unit.clocks()
        for incident, at in clocks:
            if incident not in seen:  # ON CONFLICT DO NOTHING
                self.unit.staged_clocks[incident] = seen[incident] = Clock(at)

    async def decided(self, decisions: Sequence[tuple[str, datetime]]) -> int:
        first: dict[str, datetime] = {}
        for incident, at in decisions:
            first[incident] = min(at, first.get(incident, at))
        raised = 0
        for incident, at in first.items():
            await self.unit.hold(("decision_clocks", incident))  # UPDATE locks the row
            row = self.unit.clocks().get(incident)
            if row is None or row.decided_at is not None:
                continue
            self.unit.staged_clocks[incident] = replace(row, decided_at=at)
            raised += row.overdue_at is not None
        return raised

    async def due(self, submitted_by: datetime, limit: int) -> list[Undecided]:
        waiting = sorted(
            (row.submitted_at, incident)
            for incident, row in self.unit.clocks().items()
            if row.decided_at is None
            and row.overdue_at is None
            and row.submitted_at <= submitted_by
        )
        taken: list[Undecided] = []
        for submitted_at, incident in waiting:
            if len(taken) == limit:
                break
            resource = ("decision_clocks", incident)
            if self.unit.held_elsewhere(resource):  # SKIP LOCKED
                continue
            await self.unit.hold(resource)
            taken.append(Undecided(incident, submitted_at))
        return taken

    async def mark_raised(self, incident_ids: Sequence[str], at: datetime) -> None:
        rows = self.unit.clocks()
        for incident in incident_ids:
            if incident in rows:
                self.unit.staged_clocks[incident] = replace(rows[incident], overdue_at=at)

    async def earliest_waiting(self) -> datetime | None:
        waiting = [
            row.submitted_at
            for row in self.unit.clocks().values()
            if row.decided_at is None and row.overdue_at is None
        ]
        return min(waiting, default=None)

    async def overdue_now(self) -> int:
        return sum(
            1
            for row in self.unit.clocks().values()
            if row.decided_at is None and row.overdue_at is not None
        )
