"""Group commit on a real PostgreSQL: shared transactions, and a bad item fails alone.

Then through intake: concurrent reports share transactions and each still becomes
exactly one incident (event, outbox row, retention row, key, receipt when anonymous).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
import pytest

from services.infra import metrics
from services.infra.db import create_pool
from services.infra.groupcommit import GroupCommit
from tests.integration.test_reports import LIU, REPORT, module_settings, running_intake

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(fresh_database_url, schema="public", max_size=4)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE items (n integer PRIMARY KEY CHECK (n >= 0))")
    yield pool
    await pool.close()


def writer(pool: asyncpg.Pool, sizes: list[int]) -> GroupCommit[int, int]:
    async def write(conn: asyncpg.Connection, items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        await conn.execute("INSERT INTO items SELECT * FROM unnest($1::integer[])", list(items))
        await asyncio.sleep(0.01)  # a commit that takes a while: others queue meanwhile
        return [n * 2 for n in items]

    return GroupCommit(lambda: pool, write, name="test", max_batch=16, writers=2)


async def stored(pool: asyncpg.Pool) -> list[int]:
    async with pool.acquire() as conn:
        return [r["n"] for r in await conn.fetch("SELECT n FROM items ORDER BY n")]


async def test_concurrent_items_share_transactions_and_each_gets_its_result(
    pool: asyncpg.Pool,
) -> None:
    sizes: list[int] = []
    commit = writer(pool, sizes)
    results = await asyncio.gather(*(commit.submit(n) for n in range(100)))
    assert results == [n * 2 for n in range(100)]
    assert await stored(pool) == list(range(100))
    assert sum(sizes) == 100
    assert max(sizes) > 1, sizes  # they did share
    assert max(sizes) <= 16


async def test_a_bad_item_fails_only_its_own_caller(pool: asyncpg.Pool) -> None:
    sizes: list[int] = []
    commit = writer(pool, sizes)
    items = [*range(10), -1, *range(10, 20)]  # -1 breaks the CHECK
    results = await asyncio.gather(*(commit.submit(n) for n in items), return_exceptions=True)
    assert isinstance(results[10], asyncpg.CheckViolationError)
    assert [r for i, r in enumerate(results) if i != 10] == [n * 2 for n in range(20)]
    assert await stored(pool) == list(range(20))


async def test_a_cancelled_caller_does_not_stop_the_others(pool: asyncpg.Pool) -> None:
    sizes: list[int] = []
    commit = writer(pool, sizes)
    tasks = [asyncio.create_task(commit.submit(n)) for n in range(30)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    results = await asyncio.gather(*tasks[1:])
    assert results == [n * 2 for n in range(1, 30)]
    assert set(range(1, 30)) <= set(await stored(pool))


def batch_totals() -> tuple[float, float]:
    """(items, batches) written by intake's report writer so far in this process."""
    values: dict[str, float] = {}
    for family in metrics.GROUP_COMMIT_BATCH.collect():
        for sample in family.samples:
            if sample.labels.get("writer") == "intake reports":
                values[sample.name] = sample.value
    return (
        values.get("incidents_group_commit_batch_items_sum", 0.0),
        values.get("incidents_group_commit_batch_items_count", 0.0),
    )


async def test_concurrent_reports_share_commits_and_each_is_one_whole_incident(
    kafka_bootstrap: str, make_database: Callable[[str], str]
) -> None:
    settings = module_settings(kafka_bootstrap, make_database("groupcommit"))
    async with running_intake(settings) as intake:
        items_before, batches_before = batch_totals()

        async def post(i: int) -> Any:
            headers = LIU if i % 2 else {}
            body = {**REPORT, "summary": f"report {i}"}
            return await intake.client.post("/v1/reports", json=body, headers=headers)

        answers = await asyncio.gather(*(post(i) for i in range(60)))
        assert [a.status_code for a in answers] == [202] * 60
        items, batches = batch_totals()
        assert items - items_before == 60
        assert batches - batches_before < 60  # some reports shared a transaction
        ids = [a.json()["incident_id"] for a in answers]
        assert len(set(ids)) == 60
        [row] = await intake.fetch(
            "SELECT (SELECT count(*) FROM events WHERE stream_id = ANY($1)) AS events,"
            " (SELECT count(*) FROM events WHERE stream_id = ANY($1) AND version = 1) AS firsts,"
            " (SELECT count(*) FROM outbox WHERE key = ANY($1)) AS outbox,"
            " (SELECT count(*) FROM retention WHERE incident_id = ANY($1)) AS retention,"
            " (SELECT count(*) FROM receipts WHERE incident_id = ANY($1)) AS receipts,"
            " (SELECT count(DISTINCT position) FROM events) = (SELECT count(*) FROM events)"
            "   AND (SELECT max(position) FROM events) = (SELECT count(*) FROM events) AS gapless",
            ids,
        )
        assert dict(row) == {
            "events": 60,
            "firsts": 60,
            "outbox": 60,
            "retention": 60,
            "receipts": 30,
            "gapless": True,
        }
        keys = intake.app.state.keys
        async with intake.app.state.runtime.db.acquire() as conn:
            for incident_id in ids:
                assert await keys.get(conn, incident_id) is not None
        # an anonymous reporter's receipt and secret open their own incident
        anonymous = answers[0].json()
        opened = await intake.client.get(
            f"/v1/receipts/{anonymous['receipt']}",
            headers={"X-Receipt-Secret": anonymous["secret"]},
        )
        assert opened.status_code == 200
        assert opened.json()["incident_id"] == anonymous["incident_id"]


async def test_keys_sharing_a_commit_answer_as_the_first_request_with_them(
    kafka_bootstrap: str, make_database: Callable[[str], str]
) -> None:
    """One key six times, another with two bodies, and unkeyed reports, all at once:
    one incident per key, the other body refused, every unkeyed report written."""
    settings = module_settings(kafka_bootstrap, make_database("groupkeys"))
    async with running_intake(settings) as intake:
        _, batches_before = batch_totals()
        first = {"idempotency-key": "key-a", **LIU}
        second = {"idempotency-key": "key-b", **LIU}
        bodies = [{**REPORT, "summary": "body x"}, {**REPORT, "summary": "body y"}]
        calls = [
            *((REPORT, first) for _ in range(6)),
            *((bodies[i % 2], second) for i in range(6)),
            *(({**REPORT, "summary": f"plain {i}"}, LIU) for i in range(6)),
        ]
        answers = await asyncio.gather(
            *(intake.client.post("/v1/reports", json=b, headers=h) for b, h in calls)
        )
        _, batches = batch_totals()
        assert batches - batches_before < len(calls)  # they did share
        a, b, plain = answers[:6], answers[6:12], answers[12:]
        assert {x.status_code for x in a} == {202}
        assert len({x.json()["incident_id"] for x in a}) == 1
        assert sum(x.headers.get("idempotent-replayed") == "true" for x in a) == 5
        by_body = {s: {x.status_code for i, x in enumerate(b) if i % 2 == s} for s in (0, 1)}
        assert sorted(map(sorted, by_body.values())) == [[202], [409]]
        assert len({x.json()["incident_id"] for x in b if x.status_code == 202}) == 1
        assert {x.status_code for x in plain} == {202}
        ids = {x.json()["incident_id"] for x in answers if x.status_code == 202}
        assert len(ids) == 8  # key a, key b, six plain
        [row] = await intake.fetch(
            "SELECT (SELECT count(*) FROM events WHERE type = 'incident.report.submitted.v1')"
            " AS events, (SELECT count(*) FROM idempotency) AS keys"
        )
        assert (row["events"], row["keys"]) == (8, 2)
