"""faust agents (triage's and escalation's plumbing) on the real broker.

The consumer's fetch wait is the latency floor of every hop through an agent. faust
hard-codes 1.5 s; ours is `kafka_fetch_max_wait_ms`. Until this test existed the
override silently did not apply (faust builds its consumer thread by name) and records
reached the agents 0-750 ms late. Agents hand their handler batches of records.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from faust.contrib.asgi import faust_app_running

from services.infra.faust_internals import fetch_max_wait_ms
from services.infra.faustapp import add_agent, make_faust_app
from tests.helpers import broker_settings

pytestmark = pytest.mark.integration


class _Poison:
    """What add_agent needs of a runtime: somewhere to send records that fail for good,
    and a gate (`Runtime.screen`)."""

    def __init__(self) -> None:
        self.records: list[ConsumerRecord] = []

    async def dead_letter_poison(self, record: ConsumerRecord, exc: BaseException) -> None:
        self.records.append(record)

    async def screen(self, records: Sequence[ConsumerRecord]) -> list[ConsumerRecord]:
        """The signature check lets everything through: these records are not events."""
        return list(records)


async def test_an_agent_fetches_with_the_configured_wait_and_gets_batches(
    kafka_bootstrap: str,
) -> None:
    settings = broker_settings(kafka_bootstrap)
    prefix = settings.kafka_topic_prefix
    topic = f"{prefix}latency"
    lateness: list[float] = []
    batches: list[int] = []

    async def handler(records: Sequence[ConsumerRecord]) -> None:
        now = time.time() * 1000
        batches.append(len(records))
        lateness.extend(now - r.timestamp for r in records)

    app = make_faust_app(settings, "latency")
    poison = _Poison()
    add_agent(app, poison, name="latency-agent", topics=[topic], handler=handler)  # type: ignore[arg-type]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await producer.start()
    try:
        async with faust_app_running(app, stop_timeout=5):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while fetch_max_wait_ms(app) is None:  # the group is joining
                assert loop.time() < deadline, "the agent's consumer never started"
                await asyncio.sleep(0.1)
            # the fetch pace (kafka.FetchPace): 20 ms, stepping up while no record comes
            assert 20 <= (fetch_max_wait_ms(app) or 0) <= settings.kafka_fetch_idle_wait_ms
            # wait until the agent reads: one record, answered
            while not lateness:
                assert loop.time() < deadline, "the agent never got a record"
                await producer.send_and_wait(topic, b"warm-up", key=b"w")
                await asyncio.sleep(0.5)
            lateness.clear()
            for i in range(40):
                await producer.send_and_wait(topic, b"v", key=str(i).encode())
                await asyncio.sleep(0.03)
            assert fetch_max_wait_ms(app) == 20  # records flow: the short wait
            # and a burst, which the agent takes in batches
            await asyncio.gather(
                *(producer.send_and_wait(topic, b"b", key=str(i).encode()) for i in range(100))
            )
            while len(lateness) < 140:
                assert loop.time() < deadline + 10, f"only {len(lateness)} of 140 records came"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # time for a record to come twice, if one would
    finally:
        await producer.stop()
    assert len(lateness) == 140  # each record handed over once
    paced = lateness[:40]
    # With faust's 1.5 s wait the median was ~370 ms here; a 20 ms wait gives ~10 ms.
    assert statistics.median(paced) < 150, sorted(paced)
    assert max(batches) > 1, batches
    assert not poison.records
