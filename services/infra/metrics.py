"""Prometheus metrics every service exposes on `/metrics` (one registry per process).

Names follow Prometheus conventions (`incidents_` prefix, base units, `_total` for
counters). Values that need a database query are refreshed by `refresh_outbox` from
a background task, never computed inside a scrape.
"""

from __future__ import annotations

import time

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

HTTP_LATENCY = Histogram(
    "incidents_http_request_duration_seconds",
    "HTTP request latency by route and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONSUMED = Counter(
    "incidents_consumer_records_total", "Records handled by a consumer.", ["consumer", "topic"]
)
CONSUMER_LAG = Gauge(
    "incidents_consumer_lag_records",
    "Records on the broker not yet consumed, per partition.",
    ["consumer", "topic", "partition"],
)
DEAD_LETTERED = Counter(
    "incidents_deadletter_records_total", "Records sent to the dead-letter topic.", ["service"]
)
REJECTED_EVENTS = Counter(
    "incidents_rejected_events_total",
    "Records refused as not authentic (unsigned, bad signature, unknown or revoked key,"
    " wrong producer, replayed): a security signal (docs/event-signing.md).",
    ["service", "reason"],
)
PUBLISHED = Counter("incidents_outbox_published_total", "Outbox rows published.", ["service"])
OUTBOX_BACKLOG = Gauge(
    "incidents_outbox_backlog_events", "Outbox rows not yet published.", ["service"]
)
OUTBOX_OLDEST_AGE = Gauge(
    "incidents_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest unpublished outbox row (0 when none).",
    ["service"],
)
BROKER_RESETS = Counter(
    "incidents_broker_resets_total",
    "Times the broker was found to have lost its data.",
    ["service"],
)
GROUP_COMMIT_BATCH = Histogram(
    "incidents_group_commit_batch_items",
    "Items written per shared transaction (1 under light load).",
    ["writer"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


def register_service(service: str) -> None:
    """Export the service's counters from the start, at 0: "no dead letter yet" is a value."""
    for counter in (DEAD_LETTERED, PUBLISHED, BROKER_RESETS):
        counter.labels(service)


def observe_lag(
    consumer: str, topic: str, partition: int, highwater: int | None, done: int
) -> None:
    """A partition's lag once the record at offset `done` is handled (unknown highwater: kept)."""
    if highwater is not None:
        CONSUMER_LAG.labels(consumer, topic, str(partition)).set(max(0, highwater - done - 1))


async def refresh_outbox(conn: asyncpg.Connection, service: str) -> None:
    """Update the outbox gauges from the database."""
    row = await conn.fetchrow(
        "SELECT count(*) AS backlog, min(o.created_at) AS oldest FROM outbox o"
        " WHERE o.position > coalesce((SELECT published FROM relay_state WHERE name = 'kafka'), 0)"
    )
    OUTBOX_BACKLOG.labels(service).set(row["backlog"])
    oldest = row["oldest"]
    OUTBOX_OLDEST_AGE.labels(service).set(
        max(0.0, time.time() - oldest.timestamp()) if oldest else 0
    )
