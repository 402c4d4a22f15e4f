"""The event store, outbox and tracking on a real PostgreSQL: the guarantees others rely on."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from services.domain.events import make_event
from services.infra import eventstore
from services.infra.db import (
    INFRA_MIGRATIONS,
    MigrationError,
    create_pool,
    migrate,
    migrate_service,
)
from services.infra.settings import CommonSettings

pytestmark = pytest.mark.integration
SCHEMA = "svc"


def submitted(incident: str, summary: str = "s") -> object:
    return make_event(
        "incident.report.submitted.v1",
        subject=incident,
        data={
            "category": "harassment",
            "summary": summary,
            "description": "d",
            "report_digest": "sha256:00",
        },
        source="/tests",
        time=datetime.now(UTC),
    )


def acknowledged(incident: str) -> object:
    return make_event(
        "incident.acknowledged.v1",
        subject=incident,
        data={"principal": "p-chen", "level": 1},
        source="/tests",
        time=datetime.now(UTC),
    )


@pytest.fixture
async def pool(settings: CommonSettings) -> asyncpg.Pool:
    await migrate_service(settings.database_url, SCHEMA, None)
    pool = await create_pool(settings.database_url, schema=SCHEMA, max_size=12)
    yield pool
    await pool.close()


async def test_appended_events_load_back_in_version_order_and_are_queued(
    pool: asyncpg.Pool,
) -> None:
    first, second = submitted("inc-1"), acknowledged("inc-1")
    async with pool.acquire() as conn, conn.transaction():
        version = await eventstore.append(conn, "inc-1", 0, [first, second])
    assert version == 2
    async with pool.acquire() as conn:
        stored = await eventstore.load(conn, "inc-1")
        outbox = await conn.fetch("SELECT event_id::text, topic, key FROM outbox ORDER BY position")
    assert [s.envelope.id for s in stored] == [first.id, second.id]
    assert [s.version for s in stored] == [1, 2]
    assert [(r["event_id"], r["topic"], r["key"]) for r in outbox] == [
        (first.id, "incident.reports", "inc-1"),
        (second.id, "incident.activity", "inc-1"),
    ]


async def test_a_writer_with_a_stale_version_is_refused_and_writes_nothing(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await eventstore.append(conn, "inc-2", 0, [submitted("inc-2")])
    with pytest.raises(eventstore.ConcurrencyError):
        async with pool.acquire() as conn, conn.transaction():
            await eventstore.append(conn, "inc-2", 0, [acknowledged("inc-2")])
    async with pool.acquire() as conn:
        assert await eventstore.stream_version(conn, "inc-2") == 1
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 1


async def test_the_same_event_id_cannot_be_stored_twice(pool: asyncpg.Pool) -> None:
    event = submitted("inc-3")
    async with pool.acquire() as conn, conn.transaction():
        await eventstore.append(conn, "inc-3", 0, [event])
    with pytest.raises(eventstore.DuplicateEventError):
        async with pool.acquire() as conn, conn.transaction():
            await eventstore.append(conn, "other", 0, [event])


async def test_without_a_savepoint_a_refused_append_fails_the_whole_transaction(
    pool: asyncpg.Pool,
) -> None:
    """`savepoint=False` (a group commit's batch): the refusal is the same error, and the
    caller's transaction can only be rolled back, so nothing of it stays."""
    async with pool.acquire() as conn, conn.transaction():
        await eventstore.append(conn, "inc-6", 0, [submitted("inc-6")])
    async with pool.acquire() as conn:
        outbox = await conn.fetchval("SELECT count(*) FROM outbox")
        with pytest.raises(eventstore.ConcurrencyError):
            async with conn.transaction():
                await eventstore.append_streams(
                    conn, [("inc-7", 0, [submitted("inc-7")])], savepoint=False
                )
                try:
                    await eventstore.append_streams(
                        conn, [("inc-6", 0, [acknowledged("inc-6")])], savepoint=False
                    )
                finally:
                    with pytest.raises(asyncpg.InFailedSQLTransactionError):
                        await conn.execute("SELECT 1")
        assert await eventstore.stream_version(conn, "inc-7") == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox") == outbox


async def test_a_refused_append_leaves_the_callers_transaction_usable_and_no_gap(
    pool: asyncpg.Pool,
) -> None:
    """The refused append is undone alone (counter included); what the caller then
    appends in the same transaction takes the very next positions, in input order."""
    async with pool.acquire() as conn, conn.transaction():
        await eventstore.append(conn, "inc-4", 0, [submitted("inc-4")])
        before = await conn.fetchval("SELECT last FROM counters WHERE name = 'events'")
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(eventstore.ConcurrencyError):
            await eventstore.append(conn, "inc-4", 0, [acknowledged("inc-4")])
        batch = [submitted("inc-5"), acknowledged("inc-5"), acknowledged("inc-5")]
        assert await eventstore.append(conn, "inc-5", 0, batch) == 3
    async with pool.acquire() as conn:
        stored = await conn.fetch(
            "SELECT position, version, event_id::text FROM events"
            " WHERE stream_id = 'inc-5' ORDER BY position"
        )
        queued = await conn.fetch(
            "SELECT event_id::text FROM outbox WHERE key = 'inc-5' ORDER BY position"
        )
    assert [r["position"] for r in stored] == [before + 1, before + 2, before + 3]
    assert [(r["version"], r["event_id"]) for r in stored] == [
        (i + 1, e.id) for i, e in enumerate(batch)
    ]
    assert [r["event_id"] for r in queued] == [e.id for e in batch]


async def test_global_positions_are_gap_free_and_in_commit_order_under_concurrency(
    pool: asyncpg.Pool,
) -> None:
    """Forty writers at once, a third of them rolling back: positions stay 1..N and a
    reader that saw position N has already seen every position below it."""
    committed: list[int] = []

    async def writer(i: int) -> None:
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await eventstore.append(conn, f"inc-c{i}", 0, [submitted(f"inc-c{i}")])
            await asyncio.sleep(random.random() / 50)
            if i % 3 == 0:
                await tx.rollback()
            else:
                await tx.commit()
                committed.append(i)

    async def reader(stop: asyncio.Event) -> list[list[int]]:
        views = []
        async with pool.acquire() as conn:
            while not stop.is_set():
                positions = [
                    r["position"]
                    for r in await conn.fetch("SELECT position FROM events ORDER BY 1")
                ]
                views.append(positions)
                await asyncio.sleep(0)
        return views

    stop = asyncio.Event()
    watching = asyncio.create_task(reader(stop))
    await asyncio.gather(*(writer(i) for i in range(40)))
    stop.set()
    views = await watching
    async with pool.acquire() as conn:
        positions = [
            r["position"] for r in await conn.fetch("SELECT position FROM events ORDER BY 1")
        ]
        outbox = [r["position"] for r in await conn.fetch("SELECT position FROM outbox ORDER BY 1")]
    assert positions == list(range(1, len(committed) + 1))
    assert outbox == positions
    for view in views:  # every snapshot is a prefix: no later position visible before an earlier
        assert view == list(range(1, len(view) + 1))


async def test_tracking_says_a_redelivered_input_was_already_processed(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        assert await eventstore.track(conn, "c", "evt-1", "t", 0, 5)
    async with pool.acquire() as conn, conn.transaction():
        assert not await eventstore.track(conn, "c", "evt-1", "t", 0, 9)
        assert await eventstore.track(conn, "other-consumer", "evt-1", "t", 0, 9)


async def test_a_batch_is_tracked_in_order_each_input_processed_once(pool: asyncpg.Pool) -> None:
    """`track_each`: an input seen before, or repeated within the batch, is not processed."""
    async with pool.acquire() as conn, conn.transaction():
        assert await eventstore.track(conn, "c", "seen", "t", 0, 1)
    batch = [("a", "t", 0, 2), ("seen", "t", 0, 3), ("a", "t", 0, 2), ("b", "t", 1, 0)]
    async with pool.acquire() as conn, conn.transaction():
        assert await eventstore.track_each(conn, "c", batch) == [True, False, False, True]
    async with pool.acquire() as conn, conn.transaction():
        assert await eventstore.track_each(conn, "c", batch) == [False] * 4
        assert await eventstore.track_each(conn, "c", []) == []


async def test_tracking_rolls_back_with_the_effects(pool: asyncpg.Pool) -> None:
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await eventstore.track(conn, "c", "evt-2", "t", 0, 1)
            raise RuntimeError("the effect failed")
    async with pool.acquire() as conn, conn.transaction():
        assert await eventstore.track(conn, "c", "evt-2", "t", 0, 1)


async def test_migrations_apply_once_and_refuse_an_edited_file(
    settings: CommonSettings, tmp_path: Path
) -> None:
    (tmp_path / "0100_extra.sql").write_text("CREATE TABLE extra (id int);")
    conn = await asyncpg.connect(settings.database_url)
    try:
        first = await migrate(conn, "m", [tmp_path])
        again = await migrate(conn, "m", [tmp_path])
        assert first == ["0100_extra.sql"] and again == []
        (tmp_path / "0100_extra.sql").write_text("CREATE TABLE extra (id bigint);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, "m", [tmp_path])
    finally:
        await conn.close()


async def test_concurrent_start_ups_migrate_the_same_schema_once(settings: CommonSettings) -> None:
    results = await asyncio.gather(
        *(migrate_service(settings.database_url, "race", None) for _ in range(4))
    )
    infra = len(list(INFRA_MIGRATIONS.glob("*.sql")))
    assert sorted(len(r) for r in results) == [0, 0, 0, infra]


async def test_a_pool_connection_comes_back_clean_without_the_reset_query(
    pool: asyncpg.Pool,
) -> None:
    """The pool skips asyncpg's reset query (db._no_session_state): a transaction left
    open is still rolled back on release, and the schema's search path stays."""
    conn = await pool.acquire()
    await conn.execute("BEGIN")
    await conn.execute("INSERT INTO counters (name, last) VALUES ('left-open', 1)")
    await pool.release(conn)
    async with pool.acquire() as again:
        assert not again.is_in_transaction()
        assert await again.fetchval("SELECT count(*) FROM counters WHERE name = 'left-open'") == 0
        assert await again.fetchval("SELECT (current_schemas(false))[1]") == SCHEMA
