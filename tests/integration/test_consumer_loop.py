"""ConsumerLoop (audit's and intake's plain consumers) after a broker reset, on the real broker.

A memory broker that restarts loses every offset, but the consumer that ran on until
`BrokerWatch` noticed may have fetched the new topics at the old broker's positions and
committed those there, above the records the relays publish again. A rebuild after a
reset must not trust such an offset: each partition is read again from 0, once.
The test plants the stale offsets itself (a commit for the group, as that consumer
would have made), so it does not depend on the timing of a real restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from services.infra.kafka import ConsumerLoop, ensure_topics
from tests.helpers import broker_settings, eventually

pytestmark = pytest.mark.integration

PER_PARTITION = 10
STALE = 7
"""The offset planted as committed in every partition: records 0-6 lie below it."""


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit offsets for `group` without joining it, as a consumer that ran on would."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def test_a_rebuild_after_a_reset_reads_every_partition_from_the_start(
    kafka_bootstrap: str,
) -> None:
    settings = broker_settings(kafka_bootstrap)
    prefix = settings.kafka_topic_prefix
    topic = settings.topic("loop.test")
    await ensure_topics(settings, [topic])
    partitions = [TopicPartition(topic, p) for p in range(settings.kafka_partitions)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for tp in partitions:
            for n in range(PER_PARTITION):
                await producer.send_and_wait(
                    topic, f"{tp.partition}:{n}".encode(), partition=tp.partition
                )
    finally:
        await producer.stop()
    group = f"{prefix}group"
    await _commit(kafka_bootstrap, group, dict.fromkeys(partitions, STALE))

    seen: list[tuple[int, int]] = []

    async def handler(records: Sequence[ConsumerRecord]) -> None:
        seen.extend((r.partition, r.offset) for r in records)

    async def poison(record: ConsumerRecord, exc: BaseException) -> None:
        raise AssertionError(f"no record should fail: {exc!r}")

    loop = ConsumerLoop(settings, group=group, topics=[topic], handler=handler, on_poison=poison)
    stop = asyncio.Event()
    running = asyncio.create_task(loop.run(stop))
    everything = {(tp.partition, n) for tp in partitions for n in range(PER_PARTITION)}
    above = {(p, n) for p, n in everything if n >= STALE}
    try:
        # The trap is armed: an ordinary start resumes at the committed (stale) offsets.
        await eventually(lambda: _async(set(seen) >= above), timeout=20)
        await asyncio.sleep(0.5)
        assert set(seen) == above

        seen.clear()
        loop.rebuild(from_start=True)  # what BrokerWatch's reset callback asks
        await eventually(lambda: _async(set(seen) >= everything), timeout=20)
        await asyncio.sleep(0.5)
        assert sorted(seen) == sorted(everything), "each record once, none skipped"

        # Once re-read, a partition is not read again by a later, ordinary rebuild.
        seen.clear()
        loop.rebuild()
        await eventually(lambda: _async(loop.stats.rebuilds >= 2), timeout=20)
        await asyncio.sleep(1.5)
        assert seen == []
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def _async(value: bool) -> bool:
    return value
