"""Kafka plumbing: producer, topic creation, a resilient consumer loop and a broker watch.

Delivery is at least once everywhere; effectively-once comes from PostgreSQL
(tracking rows committed with the effects). The local broker (Tansu) forgets all
topics, data and offsets when it restarts, so `BrokerWatch` notices and lets the
relay republish, and `ConsumerLoop` rebuilds its consumer instead of looping on errors.
Every consumer (these loops and the faust agents') paces its fetches with a `FetchPace`:
short waits while records flow, long ones when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import asyncpg
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from opentelemetry import trace

from services.domain.events import Topic
from services.infra import metrics
from services.infra.logging import bind_incident
from services.infra.settings import CommonSettings
from services.infra.telemetry import span_after

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    KafkaError,
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


def all_topics(settings: CommonSettings) -> list[str]:
    """Every catalog topic, with the configured prefix."""
    return [settings.topic(t) for t in Topic]


def security_options(settings: CommonSettings) -> dict[str, Any]:
    """The aiokafka options that encrypt and authenticate this service's connections
    (none with PLAINTEXT, the local broker): TLS against the configured CA, and the
    principal either the client certificate's (SSL: mTLS) or a SCRAM login (SASL_SSL).
    Every client of the service takes them, so the broker's ACLs (deploy/kafka/acls.sh)
    see one principal per service."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    context = create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile),
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
    )
    options: dict[str, Any] = {"security_protocol": protocol, "ssl_context": context}
    if protocol == "SASL_SSL" and settings.kafka_sasl_password_file is not None:
        password = settings.kafka_sasl_password_file.read_text(encoding="utf-8").strip()
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": password,
        }
    return options


def make_producer(settings: CommonSettings, client_id: str) -> AIOKafkaProducer:
    """The one producer configuration: acks=all, idempotence as configured."""
    return AIOKafkaProducer(
        **security_options(settings),
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        linger_ms=2,
        max_batch_size=1024 * 1024,
        max_request_size=MAX_MESSAGE_BYTES,
        request_timeout_ms=15000,
        retry_backoff_ms=200,
    )


async def ensure_topics(settings: CommonSettings, names: Iterable[str]) -> list[str]:
    """Create the topics that do not exist yet; returns those created."""
    admin = _admin_client(settings, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = sorted(set(names) - existing)
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    name=n,
                    num_partitions=settings.kafka_partitions,
                    replication_factor=settings.kafka_replication,
                )
                for n in missing
            ]
        )
        # The admin client reports per-topic failures in the response, not by raising.
        failed = [
            tuple(error)
            for error in getattr(response, "topic_errors", ())
            if error[1] not in (0, TopicAlreadyExistsError.errno)
        ]
        if failed:
            raise KafkaError(f"could not create topics: {failed}")
        return missing
    finally:
        await admin.close()


def _admin_client(settings: CommonSettings, *, request_timeout_ms: int) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        **security_options(settings),
        bootstrap_servers=settings.kafka_bootstrap,
        request_timeout_ms=request_timeout_ms,
    )


async def list_topics(settings: CommonSettings) -> set[str]:
    """Names of the topics the broker has now."""
    admin = _admin_client(settings, request_timeout_ms=5000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


class TopicMissing(KafkaError):  # type: ignore[misc]
    """The broker has no topic of this name."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"the broker has no topic {topic}")
        self.topic = topic


async def read_from_start(
    settings: CommonSettings,
    topic: str,
    *,
    within: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[ConsumerRecord]:
    """Every record `topic` holds now, read from each partition's start without a
    consumer group: nothing is committed, so no one's offsets move.

    The read stops at each partition's high watermark as the first fetch answered it
    (records added meanwhile may come too). Not `end_offsets`: the local broker answers
    it with the base of the last batch plus one, short of the end (../shared/BROKER.md);
    its fetch answers carry the true high watermark. `progress(read, total)` follows
    the read. TopicMissing if there is no such topic (asked first, so that the local
    broker does not create it by being asked for it), asyncio.TimeoutError after
    `within` seconds, KafkaError or OSError when the broker does not answer.
    """
    if topic not in await asyncio.wait_for(list_topics(settings), within):
        raise TopicMissing(topic)
    consumer = AIOKafkaConsumer(
        **security_options(settings),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=MAX_MESSAGE_BYTES * 2,
        request_timeout_ms=int(max(within, 5.0) * 1000),
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    await asyncio.wait_for(consumer.start(), within)
    try:
        await consumer.topics()  # the metadata of every topic, ours included
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends: dict[TopicPartition, int] = {}
        starts = {tp: await consumer.position(tp) for tp in assigned}
        records: list[ConsumerRecord] = []
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"reading {topic} took more than {within:g} s")
            batch = await consumer.getmany(timeout_ms=int(min(left, 0.2) * 1000))
            for got in batch.values():
                records.extend(got)
            for tp in assigned:
                highwater = consumer.highwater(tp)
                if tp not in ends and highwater is not None:
                    ends[tp] = highwater
            if progress is not None and len(ends) == len(assigned):
                progress(len(records), sum(ends[tp] - starts[tp] for tp in assigned))
            if len(ends) == len(assigned) and all(
                [await consumer.position(tp) >= ends[tp] for tp in assigned]
            ):
                return records
    finally:
        await consumer.stop()


class BrokerWatch:
    """Notices that the broker lost its data (a memory broker restarted) and says so.

    Each owner keeps a marker topic that only it creates. When the marker is gone,
    the broker was reset: topics are created again and every `on_reset` callback
    runs (the relay rewinds its cursor, consumers rebuild). Apache Kafka never loses
    the marker, so in production this only costs a metadata call now and then. The
    calls go over one admin client kept open (a new one per check, connecting and
    asking the broker's API versions each time, was most of an idle service's CPU
    once the fetches were paced); it is opened again after any failure.
    """

    def __init__(self, settings: CommonSettings, owner: str, topics: Sequence[str]) -> None:
        self.settings = settings
        self.owner = owner
        self.marker = settings.topic(f"_incidents.alive.{owner}")
        self.topics = list(topics)
        self.resets = 0
        self._callbacks: list[Callable[[], Awaitable[None]]] = []
        self._admin: AIOKafkaAdminClient | None = None

    def on_reset(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._callbacks.append(callback)

    async def prepare(self) -> bool:
        """Create our topics and the marker (at start); True if the marker was there.

        A missing marker at start means either a first start or a broker that lost its
        data while this service was down: the runtime tells them apart by its relay cursor.
        """
        created = await ensure_topics(self.settings, [*self.topics, self.marker])
        return self.marker not in created

    async def _topics(self) -> set[str]:
        """The broker's topics, asked over the kept admin client."""
        if self._admin is None:
            admin = _admin_client(self.settings, request_timeout_ms=5000)
            await admin.start()
            self._admin = admin
        try:
            return set(await self._admin.list_topics())
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the kept admin client (the next check opens another)."""
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def check(self) -> bool:
        """One check; True if a reset was detected (and handled)."""
        if self.marker in await self._topics():
            return False
        self.resets += 1
        metrics.BROKER_RESETS.labels(self.owner).inc()
        log.warning("broker lost its topics (reset %d): recreating and replaying", self.resets)
        await self.prepare()
        for callback in self._callbacks:
            await callback()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `broker_check_interval` seconds until `stop` is set."""
        try:
            while not stop.is_set():
                try:
                    await self.check()
                except TRANSIENT_ERRORS as exc:
                    log.info("broker check failed (will retry): %r", exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.broker_check_interval)
        finally:
            await self.close()


class FetchPace:
    """A consumer's fetch wait, adapted to the flow of records.

    A fetch that finds nothing waits on the broker before it answers empty, and the
    local broker (Tansu 0.6) looks for new records only now and then meanwhile: a record
    produced during a fetch of wait W is answered up to W/2 later (measured: p50 4 ms,
    max 12 ms at 20 ms; max 52 at 100; max 245 at 500). The wait is the latency floor of
    a hop, and each empty answer costs the consumer and the broker a round of Python
    and Rust: with a constant 20 ms an idle consumer took ~30 ms of CPU a second and
    Tansu ~38 for it. So the wait is `short_ms` while records flow; after
    `STEP_WAITS` empty waits it doubles, and again after as many of the new wait, up to
    `long_ms` (at 20/500: 20 ms for 0.5 s, 40 for 1 s, 80 for 2, 160 for 4, 320 for 8,
    then 500 from 15.5 s on). A record after a quiet spell of t seconds thus waits at
    most about short_ms / 2 + t / (2 * STEP_WAITS) for its fetch (20 ms after a second of
    quiet), never more than `long_ms` / 2, and from its batch on the waits are short
    again. `apply` sets
    the consumer's wait (its next fetch waits so long); it is called only on a change,
    and once at `long_ms` nothing wakes.

    Call `start` once the consumer exists and `records` whenever records came, both
    on the event loop the pace was started on (faust's consumer thread has its own).
    """

    STEP_WAITS = 25

    def __init__(self, short_ms: int, long_ms: int, apply: Callable[[int], None]) -> None:
        self.short_ms = short_ms
        self.long_ms = max(long_ms, short_ms)
        self.wait_ms = short_ms
        """The wait the consumer fetches with now."""
        self._apply = apply
        self._loop: asyncio.AbstractEventLoop | None = None
        self._since = 0.0
        """When the current wait was set, or the latest record came (loop time)."""
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, settings: CommonSettings, apply: Callable[[int], None]) -> FetchPace:
        """The pace the settings ask for (`kafka_fetch_max_wait_ms`, `..._idle_wait_ms`)."""
        return cls(settings.kafka_fetch_max_wait_ms, settings.kafka_fetch_idle_wait_ms, apply)

    @property
    def started(self) -> bool:
        return self._loop is not None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Begin (again) with the short wait, as if records had just come."""
        self.stop()
        self._loop = loop or asyncio.get_running_loop()
        self._set(self.short_ms)
        self.records()

    def records(self) -> None:
        """Records came: fetch with the short wait until it stays empty for a while."""
        loop = self._loop
        if loop is None:
            return
        self._since = loop.time()
        if self.wait_ms != self.short_ms:
            self.stop()  # a check scheduled for a longer wait
            self._set(self.short_ms)
        if self._timer is None:
            self._timer = loop.call_later(self._step_after(), self._check)

    def stop(self) -> None:
        """Drop the pending check (the consumer is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _step_after(self) -> float:
        return self.STEP_WAITS * self.wait_ms / 1000

    def _check(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        early = self._since + self._step_after() - loop.time()
        if early > 0.001:  # records came since this check was scheduled
            self._timer = loop.call_later(early, self._check)
            return
        self._set(min(self.wait_ms * 2, self.long_ms))
        self._since = loop.time()
        if self.wait_ms < self.long_ms:
            self._timer = loop.call_later(self._step_after(), self._check)

    def _set(self, wait_ms: int) -> None:
        if wait_ms != self.wait_ms:
            self.wait_ms = wait_ms
            self._apply(wait_ms)


def fetch_wait_setter() -> Callable[[AIOKafkaConsumer, int], None]:
    """The function that makes a running aiokafka consumer's next fetches wait so many
    milliseconds (`FetchPace`).

    aiokafka has no public setter, so it lives where every private access is
    (`faust_internals`), whose import loads faust (~150 ms, 11 MB): a consumer loop
    asks for it as it starts, so that a service without agents loads faust then, not
    at import and not on the event loop at its first change of pace, mid-flow.
    """
    from services.infra.faust_internals import set_consumer_fetch_wait

    return set_consumer_fetch_wait


BatchHandler = Callable[[Sequence[ConsumerRecord]], Awaitable[None]]
RecordHandler = Callable[[ConsumerRecord], Awaitable[None]]
Gate = Callable[[Sequence[ConsumerRecord]], Awaitable[list[ConsumerRecord]]]
"""Screens a batch before the handler: returns the records it may act on (the others
it has dealt with itself, e.g. `Runtime.screen` dead-letters forged events)."""


@dataclass
class ConsumerStats:
    """What a consumer loop has done, for health checks and metrics."""

    records: int = 0
    batches: int = 0
    retries: int = 0
    rebuilds: int = 0
    poisoned: int = 0
    connected: bool = False


@dataclass(eq=False)
class RecordProcessor:
    """Runs a handler over records with the one retry and poison policy.

    Transient failures (broker, database, network) are retried with backoff, forever,
    without skipping anything. Any other exception is a bug or a poison record: the
    batch is retried record by record, and a record that still fails `poison_after`
    times goes to `on_poison` (which dead-letters it) so the consumer carries on.
    A `gate` first drops the records the handler must never see (forged events: the
    signature check of docs/event-signing.md). Used by `ConsumerLoop` and by the faust
    agents alike.
    """

    name: str
    handler: BatchHandler
    on_poison: Callable[[ConsumerRecord, BaseException], Awaitable[None]]
    _: KW_ONLY
    poison_after: int = 3
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    gate: Gate | None = None

    async def process(self, records: Sequence[ConsumerRecord], stop: asyncio.Event) -> None:
        """Handle a batch; returns once every record was handled or dead-lettered."""
        if self.gate is not None:
            gate, given = self.gate, records
            passed: list[ConsumerRecord] = []

            async def screen() -> None:
                passed[:] = await gate(given)

            try:
                await self._retry_transient(screen, stop)
            except _Stopped:
                raise asyncio.CancelledError from None
            self.stats.records += len(records) - len(passed)
            if not passed:
                return
            records = passed
        try:
            await self._retry_transient(lambda: self.handler(records), stop)
            self.stats.records += len(records)
            return
        except Exception as exc:  # a bug or a poison record somewhere in the batch
            if isinstance(exc, _Stopped):
                raise asyncio.CancelledError from None
            if len(records) == 1:
                await self._poisoned(records[0], exc, stop)
                return
            log.warning("batch of %d failed (%r); retrying one by one", len(records), exc)
        for record in records:
            await self._process_one(record, stop)

    async def _process_one(self, record: ConsumerRecord, stop: asyncio.Event) -> None:
        last: BaseException | None = None
        for _attempt in range(self.poison_after):
            try:
                await self._retry_transient(lambda r=record: self.handler([r]), stop)  # type: ignore[misc]
                self.stats.records += 1
                return
            except _Stopped:
                raise asyncio.CancelledError from None
            except Exception as exc:
                last = exc
                self.stats.retries += 1
        assert last is not None
        await self._poisoned(record, last, stop)

    async def _poisoned(
        self, record: ConsumerRecord, exc: BaseException, stop: asyncio.Event
    ) -> None:
        log.error(
            "%s: record %s[%d]@%d failed for good: %r",
            self.name,
            record.topic,
            record.partition,
            record.offset,
            exc,
        )
        self.stats.poisoned += 1
        await self._retry_transient(lambda: self.on_poison(record, exc), stop)

    async def _retry_transient(
        self, call: Callable[[], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        delay = 0.1
        while True:
            try:
                await call()
                return
            except TRANSIENT_ERRORS as exc:
                if stop.is_set():
                    raise _Stopped from exc
                self.stats.retries += 1
                log.warning("transient failure in %s (retry in %.1fs): %r", self.name, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class _Stopped(Exception):
    """Raised inside retries when the loop is asked to stop."""


class ConsumerLoop:
    """Consume topics in a group, hand batches to a `RecordProcessor`, commit after each.

    Any Kafka error outside a handler rebuilds the consumer from its committed offsets.
    After a broker reset (`rebuild` with ``from_start``) committed offsets are not
    trusted: the consumer that ran on until `BrokerWatch` noticed the reset may have
    fetched the new topics at the old broker's positions and committed those, above
    records the relays published again. So each partition, the first time it is
    assigned after the reset, is read from offset 0 (and 0 is committed); the tracking
    rows make the re-read harmless.
    """

    def __init__(
        self,
        settings: CommonSettings,
        *,
        group: str,
        topics: Sequence[str],
        handler: BatchHandler,
        on_poison: Callable[[ConsumerRecord, BaseException], Awaitable[None]],
        poison_after: int = 3,
        max_records: int = 500,
        gate: Gate | None = None,
    ) -> None:
        self.settings = settings
        self.group = group
        self.topics = list(topics)
        self.max_records = max_records
        self.stats = ConsumerStats()
        self.processor = RecordProcessor(
            group, handler, on_poison, poison_after=poison_after, stats=self.stats, gate=gate
        )
        self._rebuild = asyncio.Event()
        self.client_id = f"{group}-{uuid.uuid4().hex[:6]}"
        self._reread: set[TopicPartition] | None = None
        """Partitions read from 0 since the last reset (None: no reset to recover from)."""
        self._current: AIOKafkaConsumer | None = None
        self._set_wait: Callable[[AIOKafkaConsumer, int], None] | None = None
        self.pace = FetchPace.of(settings, self._apply_wait)

    def _apply_wait(self, wait_ms: int) -> None:
        if self._current is not None and self._set_wait is not None:
            self._set_wait(self._current, wait_ms)

    def rebuild(self, *, from_start: bool = False) -> None:
        """Ask the loop to drop its consumer and join again.

        ``from_start`` (after a broker reset): read each partition from offset 0 the
        first time it is assigned from now on, whatever offset is committed for it.
        """
        if from_start:
            self._reread = set()
        self._rebuild.set()

    def _consumer(self) -> AIOKafkaConsumer:
        consumer = self._new_consumer()
        consumer.subscribe(self.topics, listener=_FromStart(self, consumer))
        return consumer

    async def _assigned(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Rebalance listener: after a reset, seek partitions not re-read yet to 0."""
        if self._reread is None:
            return
        fresh = assigned - self._reread
        if not fresh:
            return
        for tp in fresh:
            consumer.seek(tp, 0)
        self._reread |= fresh
        log.info(
            "consumer %s: after a broker reset, reading %d partitions from the start",
            self.group,
            len(fresh),
        )
        try:
            await consumer.commit(dict.fromkeys(fresh, 0))
        except Exception as exc:  # the seek holds; the next batch commits real offsets
            log.warning("consumer %s: committing offset 0 after a reset: %r", self.group, exc)

    def _new_consumer(self) -> AIOKafkaConsumer:
        session = self.settings.kafka_session_timeout_ms
        return AIOKafkaConsumer(
            **security_options(self.settings),
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.group,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session,
            heartbeat_interval_ms=max(session // 3, 100),
            rebalance_timeout_ms=session * 2,
            request_timeout_ms=max(40000, session * 3),
            fetch_max_wait_ms=self.pace.short_ms,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=MAX_MESSAGE_BYTES * 2,
            metadata_max_age_ms=5000,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set. Never raises for broker or handler failures."""
        if self._set_wait is None:
            self._set_wait = fetch_wait_setter()
        backoff = 0.2
        while not stop.is_set():
            consumer = self._consumer()
            self._rebuild.clear()
            try:
                await consumer.start()
                self._current = consumer
                self.pace.start()
                self.stats.connected = True
                backoff = 0.2
                while not stop.is_set() and not self._rebuild.is_set():
                    batches = await consumer.getmany(timeout_ms=200, max_records=self.max_records)
                    batches = {tp: records for tp, records in batches.items() if records}
                    if not batches:
                        continue
                    # Before any await: the fetcher sends its next fetch once these are
                    # taken, and it should wait short.
                    self.pace.records()
                    # One handler call (so one transaction) and one commit for the records
                    # of every partition fetched: each partition's stay in their order.
                    await self.processor.process(
                        [r for records in batches.values() for r in records], stop
                    )
                    await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items()})
                    self.stats.batches += 1
                    for tp, records in batches.items():
                        metrics.CONSUMED.labels(self.group, tp.topic).inc(len(records))
                        metrics.observe_lag(
                            self.group,
                            tp.topic,
                            tp.partition,
                            consumer.highwater(tp),
                            records[-1].offset,
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # transient, or a bug in a poison handler: never die
                level = logging.WARNING if isinstance(exc, TRANSIENT_ERRORS) else logging.ERROR
                log.log(level, "consumer %s: %r; rebuilding in %.1fs", self.group, exc, backoff)
                self.stats.rebuilds += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self.stats.connected = False
                self.pace.stop()
                self._current = None
                with contextlib.suppress(Exception):
                    await consumer.stop()
            if self._rebuild.is_set():
                self.stats.rebuilds += 1


class _FromStart(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands `ConsumerLoop` each new assignment (aiokafka calls it after every join)."""

    def __init__(self, loop: ConsumerLoop, consumer: AIOKafkaConsumer) -> None:
        self.loop = loop
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.loop._assigned(self.consumer, assigned)


def per_record(handler: RecordHandler) -> BatchHandler:
    """Adapt a one-record handler to the batch interface, one trace span per record."""

    async def handle(records: Sequence[ConsumerRecord]) -> None:
        for record in records:
            with record_span(record):
                await handler(record)

    return handle


_KEYED_BY_INCIDENT = re.compile(r"incident\.(reports|triage|activity|escalations)$")


@contextlib.contextmanager
def record_span(record: ConsumerRecord) -> Iterator[trace.Span]:
    """A span for processing one record, continuing the trace its header names.

    On the topics keyed by incident id, the incident is bound for the logs and the span
    while the record is processed.
    """
    with span_after(
        f"process {record.topic}",
        header(record, "traceparent"),
        trace.SpanKind.CONSUMER,
        partition=record.partition,
        offset=record.offset,
    ) as span:
        if record.key and _KEYED_BY_INCIDENT.search(record.topic):
            with bind_incident(record.key.decode("utf-8", "replace")):
                yield span
        else:
            yield span


def header(record: ConsumerRecord, name: str) -> str | None:
    """A record header as text (the first one if repeated, as propagators read it)."""
    for key, raw in record.headers or ():
        if key.lower() == name:
            return raw.decode("utf-8", "replace") if raw is not None else ""
    return None


__all__ = [
    "BrokerWatch",
    "ConsumerLoop",
    "ConsumerRecord",
    "FetchPace",
    "TopicPartition",
    "all_topics",
    "ensure_topics",
    "header",
    "make_producer",
    "per_record",
]
