"""The recorder port's contract: one suite, run on PostgreSQL and in memory.

Each test takes `backend` (parametrised `memory` and `postgres`): `backend.unit()` is a
new unit of work on one shared store (a fresh schema with the event store migrations
for PostgreSQL, an `InMemoryStore` for memory), `backend.outbox()` what its outbox holds.
The `postgres` half is marked `integration`; `make test-unit` runs the `memory` half.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from services.domain.envelope import Envelope
from services.domain.events import make_event
from services.infra import signing
from services.infra.recorder import (
    ConcurrencyError,
    DuplicateEventError,
    PostgresUnitOfWork,
    StoredEvent,
    UnitOfWork,
)
from services.infra.recorder_memory import InMemoryStore, InMemoryUnitOfWork

Queued = tuple[int, str, str, str, bytes, list[tuple[str, str]]]
"""(position, event id, topic, key, value, headers) of an outbox row."""


@dataclass
class Backend:
    name: str
    unit: Callable[[], UnitOfWork]
    outbox: Callable[[], Any]  # async () -> list[Queued]
    blocked: Callable[[], Any]  # async () -> bool: a unit of work waits for another


async def until_blocked(backend: Backend) -> None:
    """Let a racing unit of work of another task reach the point where it waits (the
    race's outcome is the same either way; reaching it tests the wait)."""
    for _ in range(500):
        if await backend.blocked():
            return
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def contract_database_url(make_database: Callable[[str], str]) -> str:
    """One database for the module's PostgreSQL half; each test takes a schema of it."""
    return make_database("contract_recorder")


@pytest.fixture(
    params=["memory", pytest.param("postgres", marks=pytest.mark.integration)],
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        store = InMemoryStore()

        async def memory_outbox() -> list[Queued]:
            return [
                (r.position, r.event_id, r.topic, r.key, r.value, r.headers) for r in store.outbox
            ]

        async def memory_blocked() -> bool:
            for _ in range(3):  # a racing task runs until it waits for the other unit
                await asyncio.sleep(0)
            return True

        yield Backend("memory", lambda: InMemoryUnitOfWork(store), memory_outbox, memory_blocked)
        return
    from services.infra.db import create_pool, migrate_service

    url = request.getfixturevalue("contract_database_url")
    schema = f"svc_{secrets.token_hex(4)}"  # a new schema is cheaper than a new database
    await migrate_service(url, schema, None)
    pool = await create_pool(url, schema=schema, max_size=4)

    async def postgres_outbox() -> list[Queued]:
        rows = await pool.fetch(
            "SELECT position, event_id::text, topic, key, value, headers FROM outbox"
            " ORDER BY position"
        )
        return [
            (
                r["position"],
                r["event_id"],
                r["topic"],
                r["key"],
                bytes(r["value"]),
                [tuple(h) for h in json.loads(r["headers"])],
            )
            for r in rows
        ]

    async def postgres_blocked() -> bool:
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(waiting)

    try:
        yield Backend(
            "postgres", lambda: PostgresUnitOfWork(pool), postgres_outbox, postgres_blocked
        )
    finally:
        await pool.close()


SUBMITTED, ACKNOWLEDGED = "incident.report.submitted.v1", "incident.acknowledged.v1"
DATA: dict[str, dict[str, Any]] = {
    SUBMITTED: {"category": "harassment", "summary": "s", "description": "d", "report_digest": "x"},
    ACKNOWLEDGED: {"principal": "p-chen", "level": 1},
}


def incident_event(type_: str, incident: str, **extra: Any) -> Envelope:
    return make_event(
        type_, subject=incident, data=DATA[type_], source="/tests", time=datetime.now(UTC), **extra
    )


def submitted(incident: str, **extra: Any) -> Envelope:
    return incident_event(SUBMITTED, incident, **extra)


def acknowledged(incident: str, **extra: Any) -> Envelope:
    return incident_event(ACKNOWLEDGED, incident, **extra)


def ids(events: list[StoredEvent]) -> list[str]:
    return [e.envelope.id for e in events]


async def committed(backend: Backend, *appends: tuple[str, int, list[Envelope]]) -> None:
    async with backend.unit() as uow:
        await uow.recorder.append_streams(list(appends))


# -- append, load, versions -----------------------------------------------------------


async def test_appended_events_load_back_in_version_order_signed_and_numbered(
    backend: Backend,
) -> None:
    first, second, other = submitted("inc-1"), acknowledged("inc-1"), submitted("inc-2")
    await committed(backend, ("inc-1", 0, [first, second]), ("inc-2", 0, [other]))
    async with backend.unit() as uow:
        stored = await uow.recorder.load("inc-1")
        versions = await uow.recorder.stream_versions(["inc-1", "inc-2", "none"])
        everything = await uow.recorder.read_all()
    assert ids(stored) == [first.id, second.id]
    assert [(s.stream_id, s.version, s.position) for s in stored] == [
        ("inc-1", 1, 1),
        ("inc-1", 2, 2),
    ]
    assert versions == {"inc-1": 2, "inc-2": 1, "none": 0}
    assert [(e.stream_id, e.version, e.position) for e in everything][-1] == ("inc-2", 1, 3)
    keys = signing.development_key_set()
    for event in everything:  # stored as signed, and the signature holds
        assert event.envelope.model_extra and "signature" in event.envelope.model_extra
        assert keys.check(event.envelope.to_dict()) is None
    assert stored[0].envelope.data == first.data


async def test_a_unit_sees_its_own_writes_and_a_later_unit_sees_them_once_committed(
    backend: Backend,
) -> None:
    event = submitted("inc-1")
    async with backend.unit() as writer:
        await writer.recorder.append_streams([("inc-1", 0, [event])])
        assert ids(await writer.recorder.load("inc-1")) == [event.id]
        assert await writer.recorder.stream_versions(["inc-1"]) == {"inc-1": 1}
        async with backend.unit() as reader:  # another unit: not committed yet
            assert await reader.recorder.load("inc-1") == []
            assert await reader.recorder.read_all() == []
    async with backend.unit() as later:
        assert ids(await later.recorder.load("inc-1")) == [event.id]


# -- refusals -------------------------------------------------------------------------


async def test_a_multi_stream_append_stores_all_or_nothing(backend: Backend) -> None:
    await committed(backend, ("inc-a", 0, [submitted("inc-a")]))
    kept = submitted("inc-c")
    async with backend.unit() as uow:
        with pytest.raises(ConcurrencyError):
            await uow.recorder.append_streams(
                [("inc-b", 0, [submitted("inc-b")]), ("inc-a", 0, [acknowledged("inc-a")])]
            )
        assert await uow.recorder.stream_versions(["inc-a", "inc-b"]) == {"inc-a": 1, "inc-b": 0}
        # the unit stays usable, and the refused append left no gap in the positions
        await uow.recorder.append_streams([("inc-c", 0, [kept])])
    async with backend.unit() as uow:
        assert await uow.recorder.load("inc-b") == []
        assert [(e.stream_id, e.position) for e in await uow.recorder.read_all()] == [
            ("inc-a", 1),
            ("inc-c", 2),
        ]
    assert [key for _, _, _, key, _, _ in await backend.outbox()] == ["inc-a", "inc-c"]


async def test_a_stream_moved_by_a_committed_unit_is_a_concurrency_error(
    backend: Backend,
) -> None:
    async with backend.unit() as late:
        assert await late.recorder.stream_versions(["inc-1"]) == {"inc-1": 0}
        await committed(backend, ("inc-1", 0, [submitted("inc-1")]))
        with pytest.raises(ConcurrencyError):
            await late.recorder.append_streams([("inc-1", 0, [acknowledged("inc-1")])])
    async with backend.unit() as uow:
        assert await uow.recorder.stream_versions(["inc-1"]) == {"inc-1": 1}


async def test_a_writer_racing_an_open_unit_waits_for_it_then_is_refused(
    backend: Backend,
) -> None:
    """The second writer of another task waits for the first unit to end (PostgreSQL
    waits on the counter row), then finds the stream moved."""
    first = submitted("inc-1")

    async def second_writer() -> None:
        async with backend.unit() as uow:
            await uow.recorder.append_streams([("inc-1", 0, [submitted("inc-1")])])

    async with backend.unit() as uow:
        await uow.recorder.append_streams([("inc-1", 0, [first])])
        racing = asyncio.create_task(second_writer())
        await until_blocked(backend)
    with pytest.raises(ConcurrencyError):
        await racing
    async with backend.unit() as uow:
        assert ids(await uow.recorder.load("inc-1")) == [first.id]


async def test_an_event_id_is_stored_once(backend: Backend) -> None:
    event = submitted("inc-1")
    await committed(backend, ("inc-1", 0, [event]))
    async with backend.unit() as uow:
        with pytest.raises(DuplicateEventError):
            await uow.recorder.append_streams([("other", 0, [event])])
        twice = submitted("inc-2")
        with pytest.raises(DuplicateEventError):
            await uow.recorder.append_streams([("inc-2", 0, [twice]), ("inc-3", 0, [twice])])
        assert await uow.recorder.stream_versions(["other", "inc-2"]) == {"other": 0, "inc-2": 0}


async def test_a_type_outside_the_catalog_is_refused_before_anything_is_stored(
    backend: Backend,
) -> None:
    good = submitted("inc-1")
    unknown = good.model_copy(update={"type": "incident.unheard.of.v1", "id": acknowledged("x").id})
    async with backend.unit() as uow:
        with pytest.raises(ValueError, match="not in the event catalog"):
            await uow.recorder.append_streams([("inc-1", 0, [good, unknown])])
        assert await uow.recorder.load("inc-1") == []
    assert await backend.outbox() == []


# -- reading everything ---------------------------------------------------------------


async def test_read_all_gives_events_after_a_position_in_position_order_by_pages(
    backend: Backend,
) -> None:
    a1, b1, a2, c1, b2 = (
        submitted("a"),
        submitted("b"),
        acknowledged("a"),
        submitted("c"),
        acknowledged("b"),
    )
    await committed(backend, ("a", 0, [a1]), ("b", 0, [b1]))
    await committed(backend, ("a", 1, [a2]), ("c", 0, [c1]), ("b", 1, [b2]))
    async with backend.unit() as uow:
        pages = [
            await uow.recorder.read_all(0, 2),
            await uow.recorder.read_all(2, 2),
            await uow.recorder.read_all(4, 2),
            await uow.recorder.read_all(5),
        ]
    assert [ids(page) for page in pages] == [[a1.id, b1.id], [a2.id, c1.id], [b2.id], []]
    assert [e.position for page in pages for e in page] == [1, 2, 3, 4, 5]


# -- consumers: tracking, replays, correlation ----------------------------------------


async def test_track_each_answers_true_once_per_consumer_and_key(backend: Backend) -> None:
    async with backend.unit() as uow:
        first = await uow.recorder.track_each(
            "triage", [("k1", "t", 0, 1), ("k2", "t", 0, 2), ("k1", "t", 0, 1)]
        )
        again = await uow.recorder.track_each("triage", [("k1", "t", 0, 1), ("k3", "t", 1, 7)])
    async with backend.unit() as uow:
        later = await uow.recorder.track_each("triage", [("k2", "t", 0, 2), ("k4", "t", 0, 9)])
        other = await uow.recorder.track_each("audit", [("k1", "t", 0, 1)])
        empty = await uow.recorder.track_each("audit", [])
    assert first == [True, True, False]
    assert again == [False, True]
    assert later == [False, True]
    assert other == [True]
    assert empty == []


async def test_replayed_flags_an_id_that_came_before_with_other_content(
    backend: Backend,
) -> None:
    i1, i2 = submitted("x").id, submitted("y").id
    async with backend.unit() as uow:
        first = await uow.recorder.replayed([(i1, b"d1"), (i2, b"d2"), (i1, b"d9"), (i1, b"d1")])
    async with backend.unit() as uow:
        later = await uow.recorder.replayed([(i1, b"d1"), (i2, b"d3")])
        empty = await uow.recorder.replayed([])
    assert first == [False, False, True, False]
    assert later == [False, True]
    assert empty == []


async def test_a_consumer_racing_an_open_unit_on_the_same_input_sees_it_once_committed(
    backend: Backend,
) -> None:
    """Two units of two tasks take the same input and the same event id with another
    digest: the second waits for the first to commit, then skips the input and flags the
    replay (PostgreSQL's `replayed` missed it here before a second look was added)."""
    event_id = submitted("x").id

    async def second_consumer() -> tuple[list[bool], list[bool]]:
        async with backend.unit() as uow:
            replay = await uow.recorder.replayed([(event_id, b"other")])
            return await uow.recorder.track_each("c", [("k1", "t", 0, 1)]), replay

    async with backend.unit() as uow:
        assert await uow.recorder.track_each("c", [("k1", "t", 0, 1)]) == [True]
        assert await uow.recorder.replayed([(event_id, b"first")]) == [False]
        racing = asyncio.create_task(second_consumer())
        await until_blocked(backend)
    assert await racing == ([False], [True])


async def test_correlation_of_is_the_first_events_correlation_or_its_own_id(
    backend: Backend,
) -> None:
    opening = submitted("inc-1")
    follow = acknowledged("inc-2", correlationid=opening.id)
    await committed(
        backend,
        ("inc-1", 0, [opening, acknowledged("inc-1", correlationid=opening.id)]),
        ("inc-2", 0, [follow]),
    )
    async with backend.unit() as uow:
        assert await uow.recorder.correlation_of("inc-1") == opening.id
        assert await uow.recorder.correlation_of("inc-2") == opening.id
        assert await uow.recorder.correlation_of("none") is None


# -- the outbox -----------------------------------------------------------------------


async def test_appended_events_are_queued_in_order_on_their_prefixed_topics(
    backend: Backend,
) -> None:
    first, second = submitted("inc-1"), acknowledged("inc-1", traceparent=None)
    async with backend.unit() as uow:
        await uow.recorder.append_streams([("inc-1", 0, [first, second])], topic_prefix="t1.")
        stored = await uow.recorder.load("inc-1")
    queued = await backend.outbox()
    assert [(p, i, t, k) for p, i, t, k, _, _ in queued] == [
        (1, first.id, "t1.incident.reports", "inc-1"),
        (2, second.id, "t1.incident.activity", "inc-1"),
    ]
    assert [Envelope.model_validate_json(v) for _, _, _, _, v, _ in queued] == [
        s.envelope for s in stored
    ]
    assert all(("content-type", "application/cloudevents+json") in h for *_, h in queued)


async def test_enqueue_signs_catalog_events_and_keeps_other_values(backend: Backend) -> None:
    event = acknowledged("inc-9")
    async with backend.unit() as uow:
        await uow.recorder.append_streams([("inc-1", 0, [submitted("inc-1")])])
        await uow.recorder.enqueue(
            [
                (event.id, "x.activity", "inc-9", event.to_bytes(), [("h", "1")]),
                (submitted("z").id, "x.raw", "k", b"not json", []),
            ]
        )
        await uow.recorder.enqueue([])
    queued = await backend.outbox()
    assert [(p, t, k) for p, _, t, k, _, _ in queued] == [
        (1, "incident.reports", "inc-1"),
        (2, "x.activity", "inc-9"),
        (3, "x.raw", "k"),
    ]
    signed = json.loads(queued[1][4])
    assert signed["id"] == event.id and "signature" in signed
    assert signing.development_key_set().check(signed) is None
    assert queued[1][5] == [("h", "1")]
    assert queued[2][4] == b"not json"


# -- the unit of work -----------------------------------------------------------------


async def test_an_exception_in_the_block_discards_everything_it_did(backend: Backend) -> None:
    i1 = submitted("x").id
    with pytest.raises(LookupError):
        async with backend.unit() as uow:
            await uow.recorder.append_streams([("inc-1", 0, [submitted("inc-1")])])
            await uow.recorder.enqueue([(i1, "raw", "k", b"v", [])])
            assert await uow.recorder.track_each("c", [("k1", "t", 0, 1)]) == [True]
            assert await uow.recorder.replayed([(i1, b"d1")]) == [False]
            raise LookupError("the use case failed")
    kept = submitted("inc-2")
    async with backend.unit() as uow:
        assert await uow.recorder.read_all() == []
        assert await uow.recorder.track_each("c", [("k1", "t", 0, 1)]) == [True]
        assert await uow.recorder.replayed([(i1, b"d2")]) == [False]
        await uow.recorder.append_streams([("inc-2", 0, [kept])])
    async with backend.unit() as uow:  # the counters rolled back too: no gap
        assert [(e.position, e.envelope.id) for e in await uow.recorder.read_all()] == [
            (1, kept.id)
        ]
    assert [(p, i) for p, i, *_ in await backend.outbox()] == [(1, kept.id)]


async def test_the_recorder_exists_only_inside_the_block(backend: Backend) -> None:
    uow = backend.unit()
    with pytest.raises(RuntimeError, match="not open"):
        _ = uow.recorder
    async with uow:
        await uow.recorder.stream_versions(["inc-1"])
        with pytest.raises(RuntimeError, match="already open"):
            await uow.__aenter__()
    with pytest.raises(RuntimeError, match="not open"):
        _ = uow.recorder
    async with uow:  # a unit of work can be opened again after it ended
        assert await uow.recorder.stream_versions(["inc-1"]) == {"inc-1": 0}


# -- in memory only -------------------------------------------------------------------


async def test_memory_a_unit_waiting_for_one_of_its_own_task_fails_instead_of_hanging() -> None:
    """PostgreSQL would wait forever here (two transactions of one task, one counter row);
    the in-memory store says so instead."""
    store = InMemoryStore()
    async with InMemoryUnitOfWork(store) as first:
        await first.recorder.append_streams([("inc-1", 0, [submitted("inc-1")])])
        async with InMemoryUnitOfWork(store) as second:
            with pytest.raises(RuntimeError, match="never end"):
                await second.recorder.append_streams([("inc-2", 0, [submitted("inc-2")])])
    assert [e.stream_id for e in store.events] == ["inc-1"]
    assert store.locks == {}


async def test_memory_two_units_waiting_for_each_other_fail_instead_of_hanging() -> None:
    """A holds an input and wants the counters; B holds the counters and waits for the
    input: A is refused (PostgreSQL would report a deadlock), rolls back, and B goes on."""
    store = InMemoryStore()
    b_holds_counters = asyncio.Event()

    async def unit_a() -> None:
        async with InMemoryUnitOfWork(store) as a:
            assert await a.recorder.track_each("c", [("k1", "t", 0, 1)]) == [True]
            await b_holds_counters.wait()  # B set it, then went on to wait for k1
            await a.recorder.append_streams([("inc-a", 0, [submitted("inc-a")])])

    async def unit_b() -> list[bool]:
        async with InMemoryUnitOfWork(store) as b:
            await b.recorder.append_streams([("inc-b", 0, [submitted("inc-b")])])
            b_holds_counters.set()
            return await b.recorder.track_each("c", [("k1", "t", 0, 1)])

    first, second = asyncio.create_task(unit_a()), asyncio.create_task(unit_b())
    with pytest.raises(RuntimeError, match="never end"):
        await first
    assert await second == [True]
    assert [e.stream_id for e in store.events] == ["inc-b"]
    assert store.locks == {}
