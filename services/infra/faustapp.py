"""faust plumbing for the stream processors (triage, escalation).

One faust configuration tuned for the local broker (BROKER.md): short session
timeouts so a worker is ready in seconds, a 20 ms fetch wait instead of faust's
hard-coded 1.5 s, `acks=all`, idempotence as configured. Agents hand each record to
the same `RecordProcessor` as plain consumers, so retries, dead-lettering and
tracking behave identically everywhere. The faust app runs inside the service's
FastAPI lifespan, so all four services share one HTTP and health pattern.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
from aiokafka import ConsumerRecord
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from services.infra import metrics
from services.infra.kafka import BatchHandler, ConsumerStats, RecordProcessor, record_span
from services.infra.runtime import Runtime
from services.infra.settings import CommonSettings


class _QuickFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread with a configurable fetch wait (faust hard-codes 1500 ms)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.conf.incidents_fetch_max_wait_ms
        return consumer


class _QuickConsumer(faust_aiokafka.Consumer):
    threadClass = _QuickFetchThread


class QuickTransport(faust_aiokafka.Transport):
    """The aiokafka transport with `_QuickConsumer`."""

    Consumer = _QuickConsumer


TRANSPORTS.data["incidents"] = f"{__name__}:QuickTransport"


class _Settings(faust.Settings):
    incidents_fetch_max_wait_ms: int = 20


def make_faust_app(settings: CommonSettings, name: str) -> faust.App:
    """A faust app with this project's broker settings (web server off: FastAPI serves)."""
    session_s = settings.kafka_session_timeout_ms / 1000
    datadir = Path(tempfile.gettempdir()) / "incidents-faust" / name
    datadir.mkdir(parents=True, exist_ok=True)
    host = settings.kafka_bootstrap.split(",")[0]
    app = faust.App(
        f"{settings.kafka_topic_prefix}{name}",
        broker=f"incidents://{host}",
        Settings=_Settings,
        incidents_fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(session_s / 3, 0.1),
        broker_request_timeout=max(40.0, session_s * 3),
        broker_rebalance_timeout=session_s * 2,
        producer_acks=-1,
        producer_linger_ms=2,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication,
        topic_allow_declare=True,
        web_enabled=False,
        store="memory://",
        datadir=datadir,
        autodiscover=False,
        stream_wait_empty=False,
    )
    return app


def _record(event: Any) -> ConsumerRecord:
    message = event.message
    return ConsumerRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp=int(message.timestamp * 1000) if message.timestamp else 0,
        timestamp_type=message.timestamp_type or 0,
        key=message.key,
        value=message.value,
        checksum=None,
        serialized_key_size=message.serialized_key_size or 0,
        serialized_value_size=message.serialized_value_size or 0,
        headers=tuple(message.headers or ()),
    )


def add_agent(
    app: faust.App,
    runtime: Runtime,
    *,
    name: str,
    topics: Sequence[str],
    handler: BatchHandler,
) -> ConsumerStats:
    """An agent over raw records of `topics`, processed with the shared retry policy."""
    processor = RecordProcessor(name, handler, runtime.dead_letter_poison)
    stop = asyncio.Event()
    channel = app.topic(*topics, key_type=bytes, value_type=bytes, value_serializer="raw")

    async def agent(stream: Any) -> None:
        async for event in stream.events():
            record = _record(event)
            with record_span(record):
                await processor.process([record], stop)
            metrics.CONSUMED.labels(name, record.topic).inc()
            tp = TP(record.topic, record.partition)
            metrics.observe_lag(
                name, record.topic, record.partition, app.consumer.highwater(tp), record.offset
            )

    agent.__name__ = name.replace("-", "_")
    app.agent(channel, name=name)(agent)
    return processor.stats
