"""The decision clocks' contract (`usecases.DecisionClocks`, the decision deadline): one
suite, run on PostgreSQL (`services.intake.deadlines`, intake's migrations on a fresh
schema) and in memory (`services.intake.memory`), through `raise_overdue_decisions`
where it can. The `postgres` half is marked `integration`."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from services.domain.events import DecisionOverdue, ReportSubmitted, make_event
from services.intake.memory import InMemoryIntakeStore, InMemoryIntakeUnitOfWork
from services.intake.usecases import (
    DecisionUnitOfWork,
    OverdueDecisions,
    RaiseOverdue,
    raise_overdue_decisions,
)

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
WITHIN = timedelta(minutes=5)


@dataclass
class Backend:
    name: str
    unit: Callable[[], DecisionUnitOfWork]


@pytest.fixture(scope="module")
def clocks_database_url(make_database: Callable[[str], str]) -> str:
    return make_database("contract_decision_clocks")


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        store = InMemoryIntakeStore()
        yield Backend("memory", lambda: InMemoryIntakeUnitOfWork(store))
        return
    from services.infra.db import create_pool, migrate_service
    from services.intake.app import MIGRATIONS
    from services.intake.deadlines import PostgresDecisionUnitOfWork

    url = request.getfixturevalue("clocks_database_url")
    schema = f"intake_{secrets.token_hex(4)}"
    await migrate_service(url, schema, MIGRATIONS)
    pool = await create_pool(url, schema=schema, max_size=4)
    try:
        yield Backend("postgres", lambda: PostgresDecisionUnitOfWork(pool))
    finally:
        await pool.close()


async def report(backend: Backend, incident: str, at: datetime) -> None:
    """A report recorded with its clock, in one unit (as `open_incidents` does)."""
    event = make_event(
        ReportSubmitted.TYPE,
        subject=incident,
        data={"category": "harassment", "summary": "s", "description": "d", "report_digest": "x"},
        source="/tests",
        time=at,
    )
    async with backend.unit() as uow:
        await uow.recorder.append_streams([(incident, 0, [event])])
        await uow.decisions.start([(incident, at)])


async def round_at(backend: Backend, at: datetime) -> OverdueDecisions:
    return await raise_overdue_decisions(RaiseOverdue(at, WITHIN, "/tests"), backend.unit())


async def decided(backend: Backend, incident: str, at: datetime) -> int:
    async with backend.unit() as uow:
        return await uow.decisions.decided([(incident, at)])


def new_id() -> str:
    return f"inc-{secrets.token_hex(4)}"


async def test_only_the_undecided_report_past_its_limit_is_raised_once(backend: Backend) -> None:
    late, on_time, recent = new_id(), new_id(), new_id()
    await report(backend, late, T0)
    await report(backend, on_time, T0)
    await report(backend, recent, T0 + timedelta(minutes=4))
    assert await decided(backend, on_time, T0 + timedelta(seconds=3)) == 0

    first = await round_at(backend, T0 + WITHIN)
    assert [e.subject for e in first.raised] == [late]
    assert first.raised[0].type == DecisionOverdue.TYPE
    assert first.overdue_now == 1
    assert first.next_due == T0 + timedelta(minutes=4) + WITHIN  # `recent`, still waiting

    second = await round_at(backend, T0 + timedelta(hours=1))
    assert [e.subject for e in second.raised] == [recent]  # `late` not again
    assert second.overdue_now == 2 and second.next_due is None

    async with backend.unit() as uow:
        versions = await uow.recorder.stream_versions([late, on_time])
    assert versions == {late: 2, on_time: 1}


async def test_a_decision_stops_the_clock_once_and_counts_a_raised_report(
    backend: Backend,
) -> None:
    incident = new_id()
    await report(backend, incident, T0)
    await round_at(backend, T0 + WITHIN)
    assert await decided(backend, incident, T0 + timedelta(hours=1)) == 1
    assert await decided(backend, incident, T0 + timedelta(hours=2)) == 0  # already stopped
    after = await round_at(backend, T0 + timedelta(hours=3))
    assert after.raised == [] and after.overdue_now == 0


async def test_a_clock_held_by_one_unit_is_skipped_by_another(backend: Backend) -> None:
    held, free = new_id(), new_id()
    await report(backend, held, T0)
    await report(backend, free, T0 + timedelta(seconds=1))
    holder = backend.unit()
    async with holder:
        taken = await holder.decisions.due(T0 + timedelta(seconds=1), 1)
        assert [u.incident_id for u in taken] == [held]
        other = await round_at(backend, T0 + WITHIN + timedelta(seconds=1))
        assert [e.subject for e in other.raised] == [free]
    rest = await round_at(backend, T0 + WITHIN + timedelta(seconds=2))
    assert [e.subject for e in rest.raised] == [held]


async def test_a_unit_that_fails_raises_nothing(backend: Backend) -> None:
    incident = new_id()
    await report(backend, incident, T0)
    with pytest.raises(RuntimeError):
        async with backend.unit() as uow:
            await uow.decisions.mark_raised([incident], T0)
            raise RuntimeError("failed after the mark")
    async with backend.unit() as uow:
        assert await uow.decisions.overdue_now() == 0
        assert await uow.decisions.earliest_waiting() == T0
