"""The fetch pace of a running ConsumerLoop on the real broker: its consumer's fetcher
waits longer while no record comes, and short again as soon as one does."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.infra.kafka import ConsumerLoop, ensure_topics
from tests.helpers import broker_settings, eventually

pytestmark = pytest.mark.integration


def _fetcher_wait(loop: ConsumerLoop) -> int | None:
    """The wait the running consumer's fetcher puts in its next fetch request."""
    consumer: Any = loop._current
    fetcher = None if consumer is None else consumer._fetcher
    return None if fetcher is None else int(fetcher._fetch_max_wait_ms)


async def test_a_quiet_consumer_fetches_with_longer_waits_and_a_record_brings_the_short_one(
    kafka_bootstrap: str,
) -> None:
    settings = broker_settings(kafka_bootstrap).model_copy(update={"kafka_fetch_idle_wait_ms": 80})
    topic = settings.topic("pace.test")
    await ensure_topics(settings, [topic])
    got: list[ConsumerRecord] = []
    waits_then: list[tuple[int, int | None]] = []  # (pace, fetcher) as each batch came

    async def handler(records: Sequence[ConsumerRecord]) -> None:
        waits_then.append((loop.pace.wait_ms, _fetcher_wait(loop)))
        got.extend(records)

    async def poison(record: ConsumerRecord, exc: BaseException) -> None:
        raise AssertionError(exc)

    loop = ConsumerLoop(
        settings,
        group=f"{settings.kafka_topic_prefix}pace",
        topics=[topic],
        handler=handler,
        on_poison=poison,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(loop.run(stop))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        # 20 ms, then 40 after 25 empty waits, then 80 (the idle wait) after 25 more
        await eventually(lambda: _is(_fetcher_wait(loop) == 80 and loop.pace.wait_ms == 80))
        await eventually(lambda: _sent_and_got(producer, topic, got), timeout=30)
        # the batch came after a fetch of 80 ms; before its handler ran, the wait of the
        # next fetch was short again
        assert waits_then[0] == (20, 20)
    finally:
        await producer.stop()
        stop.set()
        await asyncio.wait_for(running, 15)


async def _is(value: bool) -> bool:
    return value


async def _sent_and_got(producer: AIOKafkaProducer, topic: str, got: list[Any]) -> bool:
    if not got:
        await producer.send_and_wait(topic, b"x", key=b"k")
        await asyncio.sleep(0.2)
    return bool(got)
