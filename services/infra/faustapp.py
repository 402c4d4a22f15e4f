"""faust plumbing for the stream processors (triage, escalation).

One faust configuration tuned for the local broker (BROKER.md): short session
timeouts so a worker is ready in seconds, fetch waits paced like every consumer's
(`kafka.FetchPace`: 20 ms while records flow, long when idle) instead of faust's
hard-coded 1.5 s, `acks=all`, idempotence as configured. Agents hand batches of
records to the same `RecordProcessor` as plain consumers, so retries, dead-lettering and
tracking behave identically everywhere. The faust app runs inside the service's
FastAPI lifespan, so all four services share one HTTP and health pattern.

Every private attribute of faust or aiokafka this needs (the fetch-wait override,
what `GroupRejoin` reads and does) is touched in `faust_internals`, and only there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from faust.types import TP

from services.infra import faust_internals as internals
from services.infra import metrics
from services.infra.kafka import (
    BatchHandler,
    ConsumerStats,
    FetchPace,
    RecordProcessor,
    security_options,
)
from services.infra.runtime import Runtime
from services.infra.settings import CommonSettings

log = logging.getLogger(__name__)
_LEADER_TOPIC = "-__assignor-__leader"


def make_faust_app(settings: CommonSettings, name: str) -> faust.App:
    """A faust app with this project's broker settings (web server off: FastAPI serves)."""
    session_s = settings.kafka_session_timeout_ms / 1000
    datadir = Path(tempfile.gettempdir()) / "incidents-faust" / name
    datadir.mkdir(parents=True, exist_ok=True)
    host = settings.kafka_bootstrap.split(",")[0]
    app = faust.App(
        f"{settings.kafka_topic_prefix}{name}",
        broker=f"incidents://{host}",
        broker_credentials=broker_credentials(settings),
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
    # read by the consumer faust builds (`faust_internals.QuickTransport`)
    setattr(app, internals.FETCH_MAX_WAIT_ATTR, settings.kafka_fetch_max_wait_ms)
    setattr(app, internals.FETCH_PACE_ATTR, functools.partial(FetchPace.of, settings))
    return app


def broker_credentials(settings: CommonSettings) -> faust.types.auth.CredentialsT | None:
    """faust's form of `kafka.security_options`: the same TLS context and principal."""
    options = security_options(settings)
    if not options:
        return None
    if settings.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(
        username=options["sasl_plain_username"],
        password=options["sasl_plain_password"],
        ssl_context=options["ssl_context"],
        mechanism=options["sasl_mechanism"],
    )


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


AGENT_BATCH = 64
"""Records an agent hands its handler at once (handlers share a transaction over them)."""
AGENT_GATHER_TURNS = 8
"""Turns of the event loop without a new record after which a record that found its
agent idle goes to the handler with those that came meanwhile: the records of one
fetch reach the agent one at a time, a few turns apart. (A fixed 2 ms sleep did the
same at 2 ms or more, a timer late by whatever else the loop had to do.)"""


async def _gather(waiting: asyncio.Queue[Any]) -> None:
    """Let the rest of a fetch come into `waiting` (the agent was idle)."""
    size, quiet = waiting.qsize(), 0
    while quiet < AGENT_GATHER_TURNS and size < AGENT_BATCH - 1:
        await asyncio.sleep(0)
        if waiting.qsize() > size:
            size, quiet = waiting.qsize(), 0
        else:
            quiet += 1


def add_agent(
    app: faust.App,
    runtime: Runtime,
    *,
    name: str,
    topics: Sequence[str],
    handler: BatchHandler,
) -> ConsumerStats:
    """An agent over raw records of `topics`, processed with the shared retry policy.

    Records come in batches, as from `ConsumerLoop`: whatever arrived while the handler
    worked on the previous batch (up to `AGENT_BATCH`); a record that finds the handler
    idle waits for those fetched with it (`AGENT_GATHER_TURNS`). The handler opens each
    record's span (`record_span`) itself, since it may write the batch in one
    transaction. A record is acknowledged (so its offset may be committed) only once its
    batch is handled.

    Not faust's ``take_events``: its loop wakes every ``within`` seconds whether records
    came or not, and with a window short enough for the hops (5 ms) an idle triage took
    64-79 ms of CPU a second and an idle escalation 74-93. Here nothing runs until a
    record comes.
    """
    processor = RecordProcessor(name, handler, runtime.dead_letter_poison, gate=runtime.screen)
    stop = asyncio.Event()
    channel = app.topic(*topics, key_type=bytes, value_type=bytes, value_serializer="raw")

    async def agent(stream: Any) -> None:
        manual = stream.noack()  # acknowledged below, once handled
        waiting: asyncio.Queue[Any] = asyncio.Queue(AGENT_BATCH)

        async def handle() -> None:
            while True:
                events = [await waiting.get()]
                if waiting.empty():  # the agent was idle: let the rest of a fetch come
                    await _gather(waiting)
                while len(events) < AGENT_BATCH and not waiting.empty():
                    events.append(waiting.get_nowait())
                records = [_record(event) for event in events]
                await processor.process(records, stop)
                for event, record in zip(events, records, strict=True):
                    await manual.ack(event)
                    metrics.CONSUMED.labels(name, record.topic).inc()
                    tp = TP(record.topic, record.partition)
                    metrics.observe_lag(
                        name,
                        record.topic,
                        record.partition,
                        app.consumer.highwater(tp),
                        record.offset,
                    )

        def failed(task: asyncio.Task[None]) -> None:
            # A handler that died may leave the queue full: empty it, so the put below
            # returns and the agent raises the handler's error, as it did when it
            # handled records itself (`RecordProcessor` retries and dead-letters, so
            # only a bug gets here). Its records were not acknowledged: read again.
            if not task.cancelled():
                while not waiting.empty():
                    waiting.get_nowait()

        handling = asyncio.create_task(handle())
        handling.add_done_callback(failed)
        try:
            async for event in manual.events():
                if handling.done():
                    break
                await waiting.put(event)
                if handling.done():
                    break
        finally:
            handling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handling

    agent.__name__ = name.replace("-", "_")
    app.agent(channel, name=name)(agent)
    return processor.stats


class GroupRejoin:
    """After the broker lost its data, make sure the agents read every partition again.

    A restarted memory broker has no topics; the first client that asks for one (a
    relay's producer, a consumer refreshing its metadata) has it auto-created with the
    broker's default partition count (Tansu: 4) before `BrokerWatch` creates it with
    ours. faust's consumer rejoins by itself when its heartbeat fails, usually on stale
    metadata (the old count), and Tansu, whose group generation stays 0, keeps handing
    a member it knows the assignment of its first join. The new partition is never
    read: every record keyed to it is lost to this service (the short chaos run of #9:
    reports whose only notification comes from escalation got none).

    So, once that rejoin has settled (never during it: two joins at once leave ghost
    members that Tansu waits for), the assignment is compared with fresh metadata. If
    a partition is missing, the member leaves (aiokafka only leaves at generation > 0,
    which Tansu never reaches) and joins again under a new id, and gets a full
    assignment. The new group has no committed offsets, so new partitions are read
    from their earliest record; faust's read offsets start afresh with any assignment,
    and the tracking rows make re-reads no-ops. One worker per service is assumed (as
    here): with two, each would see the other's partitions as missing, so the rejoins
    are bounded.
    """

    ATTEMPTS = 3
    QUIET_CHECKS = 3
    SETTLE_TIMEOUT = 60.0

    def __init__(self, app: faust.App, session_timeout: float) -> None:
        self.app = app
        self.session_timeout = session_timeout
        self.rejoins = 0
        self._task: asyncio.Task[None] | None = None

    async def __call__(self) -> None:
        """`BrokerWatch.on_reset` callback (the topics exist again): check in the background."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.ensure_future(self._until_covered())

    async def _until_covered(self) -> None:
        # The heartbeat fails within one interval of the restart (before we heard of it),
        # and aiokafka's own rejoin follows: let it happen first.
        await asyncio.sleep(self.session_timeout)
        for attempt in range(self.ATTEMPTS + 1):
            try:
                missing = await self._missing_when_settled()
                if not missing:
                    if attempt:
                        log.info("faust reads every partition again after %d rejoins", attempt)
                    await self._read_from_the_start()
                    return
                if attempt == self.ATTEMPTS:
                    break
                log.warning(
                    "after a broker reset faust is not assigned %s; joining again as a new member",
                    sorted(f"{tp.topic}[{tp.partition}]" for tp in missing),
                )
                failed = await self._call(self._rejoin_as_new_member)
                if failed is not None:
                    log.info("leaving the group failed (%r); the broker times it out", failed)
                self.rejoins += 1
            except (TimeoutError, KafkaError, OSError) as exc:
                log.warning("checking faust's assignment after a broker reset failed: %r", exc)
                await asyncio.sleep(1.0)
        log.error("faust still misses partitions after %d rejoins", self.ATTEMPTS)

    async def _read_from_the_start(self) -> None:
        """Read every assigned partition of the new topics from offset 0, and commit 0.

        faust keeps its offsets per partition across the reset: it resumed the new
        topics at the old broker's positions (or committed those there), so records the
        relays republished below them were skipped (the short chaos run lost 22
        acknowledgements so). Its bookkeeping for them is dropped, as on a revoke;
        everything is read again, which tracking makes harmless.
        """
        consumer: Any = self.app.consumer
        partitions = {tp for tp in consumer.assignment() if not tp.topic.endswith(_LEADER_TOPIC)}
        if partitions:
            await internals.forget_and_commit(self.app, dict.fromkeys(partitions, 0))
            for tp in partitions:
                await consumer.seek(tp, 0)
            log.info(
                "after a broker reset faust reads %d partitions from the start", len(partitions)
            )

    async def _call(self, method: Any) -> Any:
        # faust's consumer thread owns the aiokafka consumer: touch it only from there
        return await internals.call_in_consumer_thread(self.app, method)

    async def _missing_when_settled(self) -> set[TopicPartition]:
        """Partitions of the subscribed topics not assigned, once no rejoin is pending.

        Metadata is refreshed first: a change of partition count makes aiokafka rejoin
        by itself (as leader), and that rejoin is left to finish before looking.
        """
        await self._call(self._refresh)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.SETTLE_TIMEOUT
        quiet = 0
        while quiet < self.QUIET_CHECKS:
            if loop.time() > deadline:
                raise TimeoutError("faust's consumer group did not settle")
            await asyncio.sleep(1.0)
            quiet = quiet + 1 if await self._call(self._settled) else 0
        return set(await self._call(self._missing))

    def _consumer(self) -> Any:
        return internals.aiokafka_consumer(self.app)

    async def _settled(self) -> bool:
        return internals.group_settled(self._consumer())

    async def _refresh(self) -> None:
        await internals.refresh_metadata(self._consumer())

    async def _missing(self) -> set[TopicPartition]:
        consumer = self._consumer()
        # faust elects its leader on partition 0 of its own topic: not ours to check
        topics = [t for t in consumer.subscription() if not t.endswith(_LEADER_TOPIC)]
        return internals.topic_partitions(consumer, topics) - set(consumer.assignment())

    async def _rejoin_as_new_member(self) -> KafkaError | None:
        return await internals.leave_and_rejoin(self._consumer())
