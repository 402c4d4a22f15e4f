"""Event store, transactional outbox and consumer tracking (one PostgreSQL schema each).

All three take a connection that is already inside a transaction, so a handler can
append events, queue them for Kafka and mark the input it consumed in one commit:
either all of it happened or none of it did. Every event is signed as it is stored or
queued (services/infra/signing.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from services.domain.envelope import CLOUDEVENTS_CONTENT_TYPE, Envelope
from services.domain.events import CATALOG, parse_envelope, record_key
from services.infra import signing


class ConcurrencyError(RuntimeError):
    """Another writer appended to the stream first (expected version is stale)."""


class DuplicateEventError(RuntimeError):
    """An event with this id is already stored."""


@dataclass(frozen=True)
class StoredEvent:
    """An event as the store returns it."""

    position: int
    stream_id: str
    version: int
    envelope: Envelope


def record_headers(envelope: Envelope) -> list[tuple[str, str]]:
    """Kafka headers for a structured-mode CloudEvent (traceparent travels here too)."""
    headers = [("content-type", CLOUDEVENTS_CONTENT_TYPE)]
    if envelope.traceparent:
        headers.append(("traceparent", envelope.traceparent))
    return headers


def _counted(inserted: int | None, wanted: int, counter: str) -> None:
    if inserted != wanted:  # no counter row: the UPDATE found nothing, so nothing went in
        raise RuntimeError(f"counter {counter!r} missing: migrations not applied?")


# One statement each reserves the positions (the counter row stays locked to commit, so
# positions are in commit order) and inserts the rows, numbered in input order: one
# round trip instead of two, and no executemany. The counter is taken inside the
# statement, so a failed insert leaves no gap either.
_ENQUEUE = """
WITH counter AS (
    UPDATE counters SET last = last + $1 WHERE name = 'outbox' RETURNING last - $1 AS base
), inserted AS (
    INSERT INTO outbox (position, event_id, topic, key, value, headers)
    SELECT counter.base + r.n, r.event_id, r.topic, r.key, r.value, r.headers::jsonb
    FROM counter, unnest($2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::text[])
        WITH ORDINALITY AS r (event_id, topic, key, value, headers, n)
    RETURNING 1
)
SELECT count(*) FROM inserted
"""

_APPEND = """
WITH counter AS (
    UPDATE counters SET last = last + $1 WHERE name = 'events' RETURNING last - $1 AS base
), inserted AS (
    INSERT INTO events (stream_id, version, position, event_id, type, time, body)
    SELECT r.stream_id, r.version, counter.base + r.n, r.event_id, r.type, r.time, r.body
    FROM counter, unnest(
        $2::text[], $3::integer[], $4::uuid[], $5::text[], $6::timestamptz[], $7::bytea[]
    ) WITH ORDINALITY AS r (stream_id, version, event_id, type, time, body, n)
    RETURNING 1
)
SELECT count(*) FROM inserted
"""


async def enqueue(
    conn: asyncpg.Connection,
    rows: Sequence[tuple[str, str, str, bytes, list[tuple[str, str]]]],
) -> None:
    """Queue (event_id, topic, key, value, headers) rows for the relay, in order.

    Each value is an event this service publishes: it is signed here (`signing`), so
    what the relay publishes is what the consumers verify and the ledger hashes.
    """
    await _enqueue_signed(conn, [(i, t, k, signed(v), h) for i, t, k, v, h in rows])


def signed(value: bytes) -> bytes:
    """A structured-mode event's bytes, signed by the service of this process that
    publishes it (docs/event-signing.md); a value that is no event stays as it is (the
    relay's own tests queue such values; a consumer refuses them as invalid input)."""
    try:
        event = json.loads(value)
    except ValueError:
        return value
    if not isinstance(event, dict) or event.get("type") not in CATALOG:
        return value
    return signing.sign_event(event)


async def _enqueue_signed(
    conn: asyncpg.Connection,
    rows: Sequence[tuple[str, str, str, bytes, list[tuple[str, str]]]],
) -> None:
    if not rows:
        return
    inserted = await conn.fetchval(
        _ENQUEUE,
        len(rows),
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        [json.dumps(r[4]) for r in rows],
    )
    _counted(inserted, len(rows), "outbox")


async def append(
    conn: asyncpg.Connection,
    stream_id: str,
    expected_version: int,
    events: Sequence[Envelope],
    *,
    topic_prefix: str = "",
) -> int:
    """Append events to a stream and queue them on their catalog topics.

    `expected_version` is the stream's version the caller decided on (0 for a new
    stream). Returns the new version. Raises ConcurrencyError if someone else
    appended meanwhile, DuplicateEventError if an event id was stored before.
    """
    await append_streams(conn, [(stream_id, expected_version, events)], topic_prefix=topic_prefix)
    return expected_version + len(events)


async def append_streams(
    conn: asyncpg.Connection,
    appends: Sequence[tuple[str, int, Sequence[Envelope]]],
    *,
    topic_prefix: str = "",
    savepoint: bool = True,
) -> None:
    """`append` for several streams at once: (stream_id, expected_version, events) each.

    One statement stores them all and one queues them, in the order given; if any
    stream moved, nothing is appended (ConcurrencyError names the first such stream
    PostgreSQL reports). The store runs in a savepoint, so the caller's transaction
    survives the refusal; a caller whose transaction ends with the error anyway passes
    ``savepoint=False`` and saves the two round trips (SAVEPOINT, RELEASE).
    """
    rows = signed_rows(appends)
    if not rows:
        return
    arguments = (
        len(rows),
        [stream_id for stream_id, _, _, _ in rows],
        [version for _, version, _, _ in rows],
        [e.id for _, _, e, _ in rows],
        [e.type for _, _, e, _ in rows],
        [e.time for _, _, e, _ in rows],
        [body for _, _, _, body in rows],
    )
    try:
        if savepoint:
            async with conn.transaction():
                inserted = await conn.fetchval(_APPEND, *arguments)
        else:
            inserted = await conn.fetchval(_APPEND, *arguments)
        _counted(inserted, len(rows), "events")
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name and "event_id" in exc.constraint_name:
            raise DuplicateEventError(str(exc)) from exc
        raise ConcurrencyError(f"a stream moved on: {exc.detail or exc}") from exc
    await _enqueue_signed(conn, queued(rows, topic_prefix))


SignedRow = tuple[str, int, Envelope, bytes]
"""(stream id, version, event, its signed bytes): one event as an append stores it."""


def signed_rows(appends: Sequence[tuple[str, int, Sequence[Envelope]]]) -> list[SignedRow]:
    """The rows an append stores, numbered after each stream's expected version, in the
    order given; ValueError for a type outside the catalog. Signed once: the events
    table, the outbox and Kafka hold the same bytes (shared by the in-memory recorder)."""
    rows = [
        (stream_id, expected + n, event)
        for stream_id, expected, events in appends
        for n, event in enumerate(events, start=1)
    ]
    for _, _, event in rows:
        if event.type not in CATALOG:
            raise ValueError(f"{event.type} is not in the event catalog")
    return [(s, v, e, signing.sign_event(e.to_dict())) for s, v, e in rows]


def queued(
    rows: Sequence[SignedRow], topic_prefix: str
) -> list[tuple[str, str, str, bytes, list[tuple[str, str]]]]:
    """The outbox rows of appended events: each on its catalog topic (prefixed), keyed
    by `record_key` (the incident; one key for the directory)."""
    return [
        (e.id, topic_prefix + CATALOG[e.type].topic, record_key(e), body, record_headers(e))
        for _, _, e, body in rows
    ]


async def stream_version(conn: asyncpg.Connection, stream_id: str) -> int:
    """The current version of a stream (0 if it has no events)."""
    value = await conn.fetchval(
        "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1", stream_id
    )
    return int(value)


async def load(conn: asyncpg.Connection, stream_id: str) -> list[StoredEvent]:
    """Every event of a stream, in version order."""
    rows = await conn.fetch(
        "SELECT position, stream_id, version, body FROM events"
        " WHERE stream_id = $1 ORDER BY version",
        stream_id,
    )
    return [_stored(r) for r in rows]


async def read_all(
    conn: asyncpg.Connection, after: int = 0, limit: int = 1000
) -> list[StoredEvent]:
    """Events of every stream after a global position, in position order (for replay)."""
    rows = await conn.fetch(
        "SELECT position, stream_id, version, body FROM events"
        " WHERE position > $1 ORDER BY position LIMIT $2",
        after,
        limit,
    )
    return [_stored(r) for r in rows]


def _stored(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        position=row["position"],
        stream_id=row["stream_id"],
        version=row["version"],
        envelope=parse_envelope(bytes(row["body"])),
    )


async def track(
    conn: asyncpg.Connection,
    consumer: str,
    event_key: str,
    topic: str,
    partition: int,
    offset: int,
) -> bool:
    """Mark an input as processed by `consumer`; False if it already was (skip it)."""
    return event_key in await track_many(conn, consumer, [(event_key, topic, partition, offset)])


async def track_many(
    conn: asyncpg.Connection,
    consumer: str,
    inputs: Sequence[tuple[str, str, int, int]],
) -> set[str]:
    """`track` for several inputs (event_key, topic, partition, offset) in one statement;
    the keys not processed before (the others are to be skipped)."""
    if not inputs:
        return set()
    rows = await conn.fetch(
        'INSERT INTO tracking (consumer, event_key, topic, partition, "offset")'
        " SELECT $1, k, t, p, o FROM unnest($2::text[], $3::text[], $4::integer[], $5::bigint[])"
        " AS r (k, t, p, o) ON CONFLICT DO NOTHING RETURNING event_key",
        consumer,
        [i[0] for i in inputs],
        [i[1] for i in inputs],
        [i[2] for i in inputs],
        [i[3] for i in inputs],
    )
    return {r["event_key"] for r in rows}


async def track_each(
    conn: asyncpg.Connection,
    consumer: str,
    inputs: Sequence[tuple[str, str, int, int]],
) -> list[bool]:
    """`track_many`, answered per input in order: True where the input is to be
    processed (its key not processed before, and not earlier in this batch: a record
    delivered twice in one batch is processed once)."""
    fresh = await track_many(conn, consumer, inputs)
    first: list[bool] = []
    for key, *_ in inputs:
        first.append(key in fresh)
        fresh.discard(key)
    return first


async def stream_versions(conn: asyncpg.Connection, stream_ids: Sequence[str]) -> dict[str, int]:
    """`stream_version` of several streams in one query (0 for those with no events)."""
    rows = await conn.fetch(
        "SELECT stream_id, max(version) AS version FROM events"
        " WHERE stream_id = ANY($1::text[]) GROUP BY stream_id",
        list(stream_ids),
    )
    found = {r["stream_id"]: int(r["version"]) for r in rows}
    return {s: found.get(s, 0) for s in stream_ids}


async def replayed(conn: asyncpg.Connection, digests: Sequence[tuple[str, bytes]]) -> list[bool]:
    """Remember the (event id, content digest) of accepted events; per input, True when
    its id came before with another digest (a replay: same id, other content).

    A record delivered again (same digest) is not a replay; two records of one batch
    with the same id and different digests make the second a replay.
    """
    if not digests:
        return []
    rows = await conn.fetch(
        "WITH new AS (INSERT INTO event_digests (event_id, digest)"
        " SELECT DISTINCT ON (i) i, d FROM unnest($1::text[], $2::bytea[])"
        " WITH ORDINALITY AS r (i, d, n) ORDER BY i, n"
        " ON CONFLICT DO NOTHING RETURNING event_id, digest)"
        " SELECT event_id, digest FROM new UNION ALL SELECT event_id, digest"
        " FROM event_digests WHERE event_id = ANY($1::text[])"
        " AND event_id NOT IN (SELECT event_id FROM new)",
        [i for i, _ in digests],
        [d for _, d in digests],
    )
    known = {r["event_id"]: bytes(r["digest"]) for r in rows}
    # An id neither inserted nor seen: another transaction inserted it and committed while
    # the INSERT waited for it, after this statement's snapshot. A new statement sees it.
    missing = [i for i, _ in digests if i not in known]
    if missing:
        later = await conn.fetch(
            "SELECT event_id, digest FROM event_digests WHERE event_id = ANY($1::text[])",
            missing,
        )
        known.update((r["event_id"], bytes(r["digest"])) for r in later)
    return [known.get(i, d) != d for i, d in digests]


async def correlation_of(conn: asyncpg.Connection, stream_id: str) -> str | None:
    """The correlation id of an incident's events as this service stored them: its first
    stored event's `correlationid` (the incident's first event id), or that event's own
    id when it is the incident's first event. None for an empty stream."""
    body = await conn.fetchval(
        "SELECT body FROM events WHERE stream_id = $1 ORDER BY version LIMIT 1", stream_id
    )
    if body is None:
        return None
    first = parse_envelope(bytes(body))
    return first.correlationid or first.id
