"""The outbox relay on a real broker: in order, at least once, and nothing lost to a restart."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import asyncpg
import pytest

from services.infra import eventstore
from services.infra.db import create_pool, migrate_service
from services.infra.kafka import BrokerWatch, all_topics, make_producer
from services.infra.relay import OutboxRelay
from services.infra.settings import CommonSettings
from tests.helpers import drain, eventually
from tooling.localstack import Tansu

pytestmark = pytest.mark.integration
SCHEMA = "relay"


async def queue(pool: asyncpg.Pool, topic: str, items: list[tuple[str, int]]) -> None:
    """Queue (key, n) messages, one transaction per message, like independent requests."""
    for key, n in items:
        async with pool.acquire() as conn, conn.transaction():
            await eventstore.enqueue(
                conn,
                [
                    (
                        f"00000000-0000-4000-8000-{n:012d}",
                        topic,
                        key,
                        json.dumps([key, n]).encode(),
                        [],
                    )
                ],
            )


class RelayUnderTest:
    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self.producer = make_producer(settings, "relay-test")
        self.relay = OutboxRelay(
            settings, database_url=settings.database_url, schema=SCHEMA, producer=self.producer
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> OutboxRelay:
        await self.producer.start()
        self.task = asyncio.create_task(self.relay.run(self.stop))
        return self.relay

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)
        await self.producer.stop()


@pytest.fixture
async def pool(settings: CommonSettings) -> asyncpg.Pool:
    await migrate_service(settings.database_url, SCHEMA, None)
    pool = await create_pool(settings.database_url, schema=SCHEMA)
    yield pool
    await pool.close()


def per_key(records: list) -> dict[str, list[int]]:
    order: dict[str, list[int]] = defaultdict(list)
    for record in records:
        key, n = json.loads(record.value)
        order[key].append(n)
    return order


async def test_the_relay_publishes_every_row_in_order_per_key(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    topic = settings.topic("relay.order")
    items = [(f"k{i % 5}", i) for i in range(200)]
    await queue(pool, topic, items)
    async with RelayUnderTest(settings) as relay:
        await eventually(lambda: _published(relay, 200))
    order = per_key(await drain(settings.kafka_bootstrap, topic, 200))
    for key in {k for k, _ in items}:
        assert order[key] == [n for k, n in items if k == key]


async def _published(relay: OutboxRelay, n: int) -> bool:
    return relay.stats.published >= n


async def test_a_restarted_relay_resumes_where_it_stopped_without_losing_anything(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    topic = settings.topic("relay.resume")
    await queue(pool, topic, [("k", i) for i in range(50)])
    async with RelayUnderTest(settings) as relay:
        await eventually(lambda: _published(relay, 50))
    await queue(pool, topic, [("k", i) for i in range(50, 80)])
    async with RelayUnderTest(settings) as relay:
        await eventually(lambda: _published(relay, 30))
        assert relay.stats.published == 30  # resumed from its durable cursor
    assert per_key(await drain(settings.kafka_bootstrap, topic, 80))["k"] == list(range(80))


async def test_only_one_relay_per_schema_publishes_at_a_time(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    topic = settings.topic("relay.leader")
    await queue(pool, topic, [("k", i) for i in range(20)])
    async with RelayUnderTest(settings) as one, RelayUnderTest(settings) as two:
        await eventually(lambda: _published_sum(one, two, 20))
        await asyncio.sleep(0.3)
        assert sorted([one.stats.leader, two.stats.leader]) == [False, True]
        assert one.stats.published + two.stats.published == 20


async def _published_sum(a: OutboxRelay, b: OutboxRelay, n: int) -> bool:
    return a.stats.published + b.stats.published >= n


async def test_after_the_broker_lost_everything_the_relay_publishes_it_again(
    settings: CommonSettings, pool: asyncpg.Pool, tansu: Tansu | None
) -> None:
    """Tansu keeps data in memory: a restart forgets topics and messages, and even acks
    sends it then drops. The watch notices, the relay rewinds, the data comes back."""
    if tansu is None:
        pytest.skip("the broker is external; only a broker we started can be restarted")
    topic = settings.topic("relay.reset")
    watch = BrokerWatch(settings, "relay-test", [topic, *all_topics(settings)])
    await watch.prepare()
    await queue(pool, topic, [("k", i) for i in range(10)])
    async with RelayUnderTest(settings) as relay:
        watch.on_reset(relay.request_rewind)
        await eventually(lambda: _published(relay, 10))
        assert len(await drain(settings.kafka_bootstrap, topic, 10)) == 10
        tansu.restart()
        await eventually(watch.check, timeout=20)
        await queue(pool, topic, [("k", i) for i in range(10, 15)])
        records = await drain(settings.kafka_bootstrap, topic, 15, timeout=20)
    assert per_key(records)["k"] == list(range(15))
    assert relay.stats.rewinds == 1
