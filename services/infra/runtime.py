"""The life of a service process: migrations, pool, producer, relay, consumers, watch.

Every service builds one `Runtime`, registers its consumers, and starts it from its
entry point (FastAPI lifespan or faust start-up). Stopping is orderly: consumers,
relay and watch finish their current step, then connections close.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.domain.envelope import utc_rfc3339
from services.domain.events import InputRejected, Topic, b64, make_event
from services.infra import eventstore, metrics, signing
from services.infra.db import create_pool, migrate_service
from services.infra.kafka import (
    TRANSIENT_ERRORS,
    BatchHandler,
    BrokerWatch,
    ConsumerLoop,
    all_topics,
    list_topics,
    make_producer,
)
from services.infra.relay import OutboxRelay
from services.infra.settings import CommonSettings
from services.infra.waits import first_of

log = logging.getLogger(__name__)


class Runtime:
    """Shared plumbing of one service process."""

    def __init__(
        self,
        settings: CommonSettings,
        name: str,
        migrations: Path | None,
        *,
        db_role: str | None = None,
    ) -> None:
        self.settings = settings
        self.db_role = db_role
        self.name = name
        metrics.register_service(name)
        self.schema = settings.schema_name(name)
        self.source = f"/services/{name}"
        self.keys = signing.configure(
            name, settings.environment, settings.event_signing_key, settings.event_keys_file
        )
        """The key set this service's consumers check events against (`screen`)."""
        self.migrations = migrations
        self.pool: asyncpg.Pool | None = None
        self.producer: AIOKafkaProducer | None = None
        self.relay: OutboxRelay | None = None
        self.watch = BrokerWatch(settings, name, all_topics(settings))
        self.consumers: list[ConsumerLoop] = []
        self.tasks: list[tuple[str, Callable[[asyncio.Event], Awaitable[None]]]] = []
        self.before_start: list[Callable[[], Awaitable[Any]]] = []
        """Steps run after the migrations, before anything consumes (e.g. the key store's)."""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    def consume(
        self,
        group: str,
        topics: Sequence[str],
        handler: BatchHandler,
        *,
        on_poison: Callable[[ConsumerRecord, BaseException], Awaitable[None]] | None = None,
        verify: bool = True,
    ) -> ConsumerLoop:
        """Register a consumer loop (started with the runtime).

        With `verify` (the default) only authentic records reach the handler (`screen`);
        audit verifies in its ingest instead, to record refused records in the ledger.
        """
        loop = ConsumerLoop(
            self.settings,
            group=group,
            topics=topics,
            handler=handler,
            on_poison=on_poison or self.dead_letter_poison,
            gate=self.screen if verify else None,
        )
        self.consumers.append(loop)
        return loop

    def background(self, name: str, run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        """Register a long-running task `run(stop)` (started with the runtime)."""
        self.tasks.append((name, run))

    @property
    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError(f"{self.name} runtime is not started")
        return self.pool

    async def start(self) -> None:
        """Migrate, connect, and start the relay, the watch and the consumers."""
        applied = await migrate_service(self.settings.database_url, self.schema, self.migrations)
        if applied:
            log.info("%s: applied migrations %s", self.name, ", ".join(applied))
        for step in self.before_start:
            await step()
        self.pool = await create_pool(
            self.settings.database_url,
            schema=self.schema,
            max_size=self.settings.db_pool_max,
            role=self.db_role,
        )
        marker_found: list[bool] = []

        async def prepare() -> None:
            marker_found.append(await self.watch.prepare())

        await self._retry(prepare)
        self.producer = make_producer(self.settings, client_id=f"{self.name}-relay")
        await self._retry(self.producer.start)
        self.relay = OutboxRelay(
            self.settings,
            database_url=self.settings.database_url,
            schema=self.schema,
            producer=self.producer,
            role=self.db_role,
        )
        self.watch.on_reset(self.relay.request_rewind)
        for loop in self.consumers:
            self.watch.on_reset(_rebuilder(loop))
        if not marker_found[-1] and await self._published_before():
            # The broker lost its data while this service was down: what it published
            # then may never have been consumed. Publish the replay window again.
            log.warning("%s: the broker forgot this service's topics; replaying", self.name)
            await self.relay.request_rewind()
            for loop in self.consumers:  # a killed predecessor may have committed stale offsets
                loop.rebuild(from_start=True)
        if self.settings.relay_enabled:
            self._spawn(self.relay.run(self._stop), "relay")
        self._spawn(self.watch.run(self._stop), "broker-watch")
        for loop in self.consumers:
            self._spawn(loop.run(self._stop), f"consumer:{loop.group}")
        for name, run in self.tasks:
            self._spawn(run(self._stop), name)
        self._spawn(self._refresh_metrics(self._stop), "metrics")
        self.started = True

    async def _published_before(self) -> bool:
        async with self.db.acquire() as conn:
            published = await conn.fetchval(
                "SELECT published FROM relay_state WHERE name = 'kafka'"
            )
        return bool(published)

    async def _retry(self, call: Callable[[], Awaitable[Any]], attempts: int = 30) -> None:
        for attempt in range(attempts):
            try:
                await call()
                return
            except Exception as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("%s: start-up step failed (%r); retrying", self.name, exc)
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}:{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self._stop.is_set():
            log.critical("%s crashed: %r", task.get_name(), task.exception())

    async def _refresh_metrics(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self.db.acquire() as conn:
                    await metrics.refresh_outbox(conn, self.name)
            except TRANSIENT_ERRORS as exc:
                log.debug("metrics refresh failed: %r", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)

    async def stop(self) -> None:
        """Stop background work and close connections."""
        self._stop.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=10)
            for task in pending:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*pending, return_exceptions=True)
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()
        self.started = False

    async def readiness(self) -> dict[str, str]:
        """Per dependency: "ok" or the error. Ready when all are ok."""
        checks: dict[str, str] = {}
        try:
            async with self.db.acquire() as conn:
                await conn.fetchval("SELECT 1")
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {exc!r}"
        try:
            topics = await asyncio.wait_for(list_topics(self.settings), 5)
            missing = {self.settings.topic(t) for t in Topic} - topics
            checks["broker"] = "ok" if not missing else f"missing topics: {sorted(missing)}"
        except Exception as exc:
            checks["broker"] = f"error: {exc!r}"
        for task in self._tasks:
            if task.done():
                checks[task.get_name()] = "stopped"
        return checks

    async def dead_letter(
        self,
        conn: asyncpg.Connection,
        *,
        reason: str,
        original: bytes,
        source_topic: str | None,
        partition: int | None,
        offset: int | None,
        causationid: str | None = None,
    ) -> None:
        """Queue an `incident.input.rejected.v1` record (inside the caller's transaction)."""
        event = make_event(
            InputRejected.TYPE,
            subject="deadletter",
            data=InputRejected(
                reason=reason[:2000],
                source_topic=source_topic,
                source_partition=partition,
                source_offset=offset,
                original_b64=b64(original),
            ),
            source=self.source,
            time=datetime.now(UTC),
            actor=f"system:{self.name}",
            causationid=causationid,
        )
        await eventstore.enqueue(
            conn,
            [
                (
                    event.id,
                    self.settings.topic(Topic.DEADLETTER),
                    "deadletter",
                    event.to_bytes(),
                    eventstore.record_headers(event),
                )
            ],
        )
        metrics.DEAD_LETTERED.labels(self.name).inc()
        log.warning(
            "dead-lettered input from %s at %s: %s", source_topic, utc_rfc3339(event.time), reason
        )

    def authenticity(self, records: Sequence[ConsumerRecord]) -> list[str | None]:
        """Per record, why it is not authentic (signing.REASONS), or None.

        Records of incident.inbound come from other systems, not from a service: they
        are not checked here (intake validates them as reports).
        """
        inbound = self.settings.topic(Topic.INBOUND)
        return [None if r.topic == inbound else self.keys.check_bytes(r.value)[0] for r in records]

    async def screen(self, records: Sequence[ConsumerRecord]) -> list[ConsumerRecord]:
        """The records a handler may act on: signed by a producer of their type with a
        valid key (`authenticity`) and not a replay (an id accepted before with other
        content). The others are refused (`refuse`) and left out."""
        inbound = self.settings.topic(Topic.INBOUND)
        verdicts: list[str | None] = []
        accepted: list[tuple[int, str, bytes]] = []
        for n, record in enumerate(records):
            if record.topic == inbound:
                verdicts.append(None)
                continue
            reason, event_id = self.keys.check_bytes(record.value)
            verdicts.append(reason)
            if reason is None and event_id is not None:
                accepted.append((n, event_id, hashlib.sha256(record.value or b"").digest()))
        if accepted:
            async with self.db.acquire() as conn:
                flags = await eventstore.replayed(conn, [(i, d) for _, i, d in accepted])
            for (n, _, _), replay in zip(accepted, flags, strict=True):
                if replay:
                    verdicts[n] = signing.REPLAYED
        passed = []
        for record, reason in zip(records, verdicts, strict=True):
            if reason is None:
                passed.append(record)
            else:
                await self.refuse(record, reason)
        return passed

    async def refuse(self, record: ConsumerRecord, reason: str) -> None:
        """Dead-letter a record that is not authentic, once per content, never act on it;
        count it (incidents_rejected_events_total) and log it as an error."""
        digest = hashlib.sha256(record.value or b"").hexdigest()
        key = f"refused:{record.topic}:{digest}"
        if not await self._dead_letter_once("refused", key, record, f"not authentic: {reason}"):
            return
        metrics.REJECTED_EVENTS.labels(self.name, reason).inc()
        log.error(
            "%s refused a record of %s[%d]@%d: %s",
            self.name,
            record.topic,
            record.partition,
            record.offset,
            reason,
        )

    async def dead_letter_poison(self, record: ConsumerRecord, exc: BaseException) -> None:
        """Default poison handler: dead-letter the record once (tracked by its coordinates)."""
        digest = hashlib.sha256(record.value or b"").hexdigest()[:16]
        key = f"poison:{record.topic}:{record.partition}:{record.offset}:{digest}"
        # the type only: an exception's text may quote the record
        await self._dead_letter_once("poison", key, record, f"handler failed: {type(exc).__name__}")

    async def _dead_letter_once(
        self, kind: str, key: str, record: ConsumerRecord, reason: str
    ) -> bool:
        """Dead-letter a record unless `key` was dead-lettered before; True if it was now."""
        async with self.db.acquire() as conn, conn.transaction():
            if not await eventstore.track(
                conn, f"{self.name}-{kind}", key, record.topic, record.partition, record.offset
            ):
                return False
            await self.dead_letter(
                conn,
                reason=reason,
                original=record.value or b"",
                source_topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        return True


def _rebuilder(loop: ConsumerLoop) -> Callable[[], Awaitable[None]]:
    async def rebuild() -> None:
        loop.rebuild(from_start=True)

    return rebuild


async def follow(
    stop: asyncio.Event,
    grew: asyncio.Event,
    step: Callable[[], Awaitable[bool]],
    *,
    spacing: float,
    fallback: float,
) -> None:
    """Run `step` until `stop`, woken by `grew` instead of polling.

    `step` returns True when it left work for later (something not yet due, a failure
    to retry): it runs again `spacing` seconds after it last began. Otherwise it waits
    for `grew` (set by whoever produces its work, e.g. the ledger's append in this
    process) or `fallback` seconds (work another process produced, gauges), and still
    runs at most once per `spacing` under a steady flow. An idle service then wakes
    once per `fallback`, not once per `spacing`.
    """
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        began = loop.time()
        grew.clear()
        if not await step():
            await first_of([grew.wait(), stop.wait()], fallback)
        rest = began + spacing - loop.time()
        if rest > 0 and not stop.is_set():
            await first_of([stop.wait()], rest)
