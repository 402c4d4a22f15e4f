"""The outbox relay: publishes committed outbox rows to Kafka, in position order.

One relay per service schema is active at a time (a PostgreSQL advisory lock held on
a dedicated connection); others wait. It wakes on NOTIFY from the outbox trigger or
every `outbox_poll_interval`. A batch is sent, every ack awaited, and only then is the
cursor moved (by the statement that reads the next batch, or alone within
`SAVE_WITHIN`), so a crash re-sends (at least once) but never skips. Consumers dedupe
by event id. When the broker lost its data the cursor is rewound by the replay
window, so everything the broker forgot is published again, still in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import KW_ONLY, dataclass, field

import asyncpg
from aiokafka import AIOKafkaProducer
from opentelemetry import trace

from services.infra import metrics
from services.infra.db import connect
from services.infra.kafka import TRANSIENT_ERRORS
from services.infra.settings import CommonSettings
from services.infra.telemetry import current_traceparent, span_after
from services.infra.waits import first_of

log = logging.getLogger(__name__)

_NEXT = (
    "SELECT position, topic, key, value, headers FROM outbox"
    " WHERE position > $1 ORDER BY position LIMIT $2"
)
_MOVE = "UPDATE relay_state SET published = $1, updated_at = clock_timestamp() WHERE name = 'kafka'"
# The cursor's UPDATE runs to completion whether or not the SELECT reads anything.
_MOVE_AND_NEXT = (
    "WITH moved AS (UPDATE relay_state SET published = $1, updated_at = clock_timestamp()"
    " WHERE name = 'kafka' RETURNING 1)"
    " SELECT position, topic, key, value, headers FROM outbox"
    " WHERE position > $1 ORDER BY position LIMIT $2"
)


SAVE_WITHIN = 0.05
"""Seconds a published cursor waits for the next read to carry its move (then it is
saved alone): under a steady flow each batch costs one statement, not two."""


@dataclass
class RelayStats:
    """Progress of the relay, for readiness and metrics."""

    published: int = 0
    cursor: int = 0
    rewinds: int = 0
    leader: bool = False
    last_publish_at: float = 0.0


@dataclass(eq=False)
class OutboxRelay:
    """Publishes one schema's outbox."""

    settings: CommonSettings
    _: KW_ONLY
    database_url: str
    schema: str
    producer: AIOKafkaProducer
    role: str | None = None
    stats: RelayStats = field(default_factory=RelayStats, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _rewind: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    @property
    def _lock_key(self) -> int:
        """The advisory lock only one relay of the schema holds."""
        return int.from_bytes(
            hashlib.sha256(f"relay:{self.schema}".encode()).digest()[:8], "big", signed=True
        )

    def wake(self) -> None:
        self._wake.set()

    async def request_rewind(self) -> None:
        """Republish the replay window (the broker lost what it had)."""
        self._rewind.set()
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set, reconnecting on database or broker failures."""
        delay = 0.2
        while not stop.is_set():
            try:
                await self._run_leader(stop)
            except asyncio.CancelledError:
                raise
            except TRANSIENT_ERRORS as exc:
                log.warning("relay %s: %r; retrying in %.1fs", self.schema, exc, delay)
                self.stats.leader = False
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)

    async def _run_leader(self, stop: asyncio.Event) -> None:
        conn = await connect(self.database_url, schema=self.schema, role=self.role)
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                if stop.is_set():
                    return
            self.stats.leader = True
            await conn.add_listener(f"{self.schema}_outbox", lambda *_: self._wake.set())
            await conn.execute(
                "INSERT INTO relay_state (name) VALUES ('kafka') ON CONFLICT DO NOTHING"
            )
            cursor = int(
                await conn.fetchval("SELECT published FROM relay_state WHERE name='kafka'")
            )
            rows: list[asyncpg.Record] | None = None  # fetched with the last cursor move
            unsaved = False  # published up to `cursor`, relay_state not moved there yet
            try:
                while not stop.is_set():
                    if self._rewind.is_set():
                        self._rewind.clear()
                        cursor = await self._rewound(conn, cursor)
                        rows, unsaved = None, False
                    if rows is None:
                        self._wake.clear()
                        query = _MOVE_AND_NEXT if unsaved else _NEXT
                        rows = await conn.fetch(query, cursor, self.settings.outbox_batch)
                        unsaved = False
                    if rows:
                        await self._publish(rows)
                        cursor, sent = int(rows[-1]["position"]), len(rows)
                        self.stats.cursor = cursor
                        self.stats.published += sent
                        metrics.PUBLISHED.labels(self.schema).inc(sent)
                        self.stats.last_publish_at = time.time()
                        # Every ack is in: the cursor moves with the next read, one round
                        # trip. The wake flag was cleared before this batch was read, so
                        # it is set if a row committed since.
                        if len(rows) < self.settings.outbox_batch and not self._wake.is_set():
                            # Nothing more yet: a row that commits within SAVE_WITHIN
                            # carries the move with its read; else the move is saved alone.
                            rows, unsaved = None, True
                            await first_of([self._wake.wait(), stop.wait()], SAVE_WITHIN)
                            continue
                        self._wake.clear()
                        rows = await conn.fetch(_MOVE_AND_NEXT, cursor, self.settings.outbox_batch)
                        continue
                    rows = None
                    await first_of(
                        [self._wake.wait(), stop.wait()], self.settings.outbox_poll_interval
                    )
            finally:
                if unsaved:  # stopping: keep what was published (else it is sent again)
                    with contextlib.suppress(Exception):
                        await conn.execute(_MOVE, cursor)
        finally:
            self.stats.leader = False
            with contextlib.suppress(Exception):
                await conn.close()  # closing the session releases the advisory lock

    async def _rewound(self, conn: asyncpg.Connection, cursor: int) -> int:
        start = await conn.fetchval(
            "SELECT coalesce(min(position), $1 + 1) - 1 FROM outbox"
            " WHERE created_at >= clock_timestamp() - make_interval(secs => $2)",
            cursor,
            self.settings.outbox_replay_window,
        )
        new_cursor = min(int(start), cursor)
        await conn.execute(
            "UPDATE relay_state SET published = $1, resets = resets + 1,"
            " updated_at = clock_timestamp() WHERE name = 'kafka'",
            new_cursor,
        )
        self.stats.rewinds += 1
        log.warning("relay %s rewound from %d to %d", self.schema, cursor, new_cursor)
        return new_cursor

    async def _publish(self, rows: list[asyncpg.Record]) -> None:
        futures = []
        for row in rows:
            stored = json.loads(row["headers"])
            origin = next((v for k, v in stored if k == "traceparent"), None)
            headers = [(k, v.encode()) for k, v in stored if k != "traceparent"]
            # The publish continues the trace of the request that wrote the row; the
            # header carries this span, so consumers hang their work below it.
            with span_after(
                f"outbox publish {row['topic']}",
                origin,
                trace.SpanKind.PRODUCER,
                position=int(row["position"]),
            ):
                traceparent = current_traceparent()
                if traceparent:
                    headers.append(("traceparent", traceparent.encode()))
                futures.append(
                    await self.producer.send(
                        row["topic"],
                        value=bytes(row["value"]),
                        key=row["key"].encode(),
                        headers=headers,
                    )
                )
        await asyncio.gather(*futures)
