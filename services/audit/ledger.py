"""The ledger: canonical leaves, and appending consumed records exactly once, in order.

Leaf encoding, version 1 (documented in docs/audit.md): the canonical JSON
(sorted keys, no whitespace, UTF-8) of

    {"v": 1, "index": <int>, "recorded_at": "<RFC 3339 UTC, microseconds, Z>",
     "topic": <str>, "partition": <int>, "offset": <int>,
     "event": <the CloudEvent as received, a JSON object>}          # a valid event
     or "raw": "<base64 of the record value>", "reason": "<why it is not an event>"

and the Merkle leaf hash is SHA-256(0x00 || leaf). Everything an auditor needs to
check an entry is inside its leaf; the other columns are indexes for queries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord

from services.audit import tree
from services.audit.merkle import leaf_hash
from services.domain.envelope import canonical_json, utc_rfc3339
from services.domain.events import InvalidEvent, b64, parse_envelope, parse_event
from services.domain.knowledge import LedgerEvent
from services.infra.kafka import header, record_span
from services.infra.telemetry import trace_id_of

LEAF_VERSION = 1
LEDGER_COLUMNS = [
    "idx",
    "recorded_at",
    "topic",
    "partition",
    "offset",
    "record_key",
    "event_id",
    "incident_id",
    "event_type",
    "trace_id",
    "valid",
    "leaf",
    "leaf_hash",
]
"""The `ledger` columns an append writes, in the order of its rows."""


@dataclass(frozen=True)
class Candidate:
    """A consumed record, classified, before it gets its index."""

    record_key: str
    topic: str
    partition: int
    offset: int
    event: dict[str, Any] | None
    raw: bytes
    reason: str | None
    event_id: str | None
    incident_id: str | None
    event_type: str | None
    trace_id: str | None


def classify(record: ConsumerRecord, refused: str | None = None) -> Candidate:
    """Decide what a record is: a valid event (keyed by topic and id) or rejected input.

    `refused` is why the record is not authentic (services/infra/signing.py), if it is
    not: it is then rejected input too, kept as evidence of the attempt.
    """
    raw = record.value or b""
    try:
        if refused is not None:
            raise InvalidEvent(f"{NOT_AUTHENTIC}{refused}")
        envelope, _data = parse_event(raw)
    except InvalidEvent as exc:
        return _rejected(record, exc.reason[:1000])
    return Candidate(
        record_key=f"{record.topic}:{envelope.id}",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        event=json.loads(raw),
        raw=raw,
        reason=None,
        event_id=envelope.id,
        incident_id=envelope.subject,
        event_type=envelope.type,
        trace_id=trace_id_of(envelope.traceparent or header(record, "traceparent")),
    )


NOT_AUTHENTIC = "not authentic: "
"""How the reason of a refused record starts (then one of signing.REASONS)."""


def _rejected(record: ConsumerRecord, reason: str, kind: str = "raw") -> Candidate:
    raw = record.value or b""
    digest = hashlib.sha256(raw).hexdigest()
    return Candidate(
        record_key=f"{kind}:{record.topic}:{record.partition}:{record.offset}:{digest}",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        event=None,
        raw=raw,
        reason=reason,
        event_id=None,
        incident_id=None,
        event_type=None,
        trace_id=trace_id_of(header(record, "traceparent")),
    )


def _replays(
    candidates: list[Candidate], records: Sequence[ConsumerRecord], stored: dict[str, bytes]
) -> list[Candidate]:
    """The candidates with each replay (an event id recorded before, or earlier in the
    batch, with other content) turned into rejected input."""
    events = {key: decode_leaf(leaf).get("event") for key, leaf in stored.items()}
    out = []
    for candidate, record in zip(candidates, records, strict=True):
        if candidate.event is not None:
            first = events.setdefault(candidate.record_key, candidate.event)
            if first != candidate.event:
                candidate = _rejected(record, f"{NOT_AUTHENTIC}replayed", "replayed")
        out.append(candidate)
    return out


def leaf_bytes(index: int, recorded_at: datetime, candidate: Candidate) -> bytes:
    """The canonical leaf of an entry (version 1, see the module docstring)."""
    body: dict[str, Any] = {
        "v": LEAF_VERSION,
        "index": index,
        "recorded_at": utc_rfc3339(recorded_at),
        "topic": candidate.topic,
        "partition": candidate.partition,
        "offset": candidate.offset,
    }
    if candidate.event is not None:
        body["event"] = candidate.event
    else:
        body["raw"] = b64(candidate.raw)
        body["reason"] = candidate.reason
    return canonical_json(body)


async def append_records(
    conn: asyncpg.Connection,
    records: Sequence[ConsumerRecord],
    refused: Sequence[str | None] | None = None,
) -> int:
    """Append the records not yet in the ledger, in order; returns how many were new.

    `refused` says per record why it is not authentic (or None): such a record, and a
    replay (an event id recorded before with other content), is recorded as rejected
    input, once. Must run inside a transaction. The ledger counter row is locked first,
    so appends are serialised, indexes are gap-free, and the duplicate check cannot race.
    """
    row = await conn.fetchrow(
        "SELECT last, clock_timestamp() AS now FROM counters WHERE name = 'ledger' FOR UPDATE"
    )
    last, now = int(row["last"]), row["now"]
    reasons = refused if refused is not None else [None] * len(records)
    candidates = [classify(r, why) for r, why in zip(records, reasons, strict=True)]
    keys = [c.record_key for c in candidates if c.event is not None]
    stored = {
        r["record_key"]: bytes(r["leaf"])
        for r in await conn.fetch(
            "SELECT record_key, leaf FROM ledger WHERE record_key = ANY($1::text[])", keys
        )
    }
    candidates = _replays(candidates, records, stored)
    others = [c.record_key for c in candidates if c.event is None]
    seen = set(stored)
    if others:
        seen |= {
            r["record_key"]
            for r in await conn.fetch(
                "SELECT record_key FROM ledger WHERE record_key = ANY($1::text[])", others
            )
        }
    if last >= 0:
        previous = await conn.fetchval("SELECT recorded_at FROM ledger WHERE idx = $1", last)
        now = max(now, previous)  # recorded_at never goes backwards along the index
    frontier = await tree.frontier_at(conn, last + 1)
    nodes: list[tuple[int, int, bytes]] = []
    rows = []
    for candidate, record in zip(candidates, records, strict=True):
        with record_span(record):  # so each report's trace shows its ledger entry
            pass
        if candidate.record_key in seen:
            continue
        seen.add(candidate.record_key)
        last += 1
        leaf = leaf_bytes(last, now, candidate)
        hashed = leaf_hash(leaf)
        nodes.extend(frontier.append(hashed))
        rows.append(
            (
                last,
                now,
                candidate.topic,
                candidate.partition,
                candidate.offset,
                candidate.record_key,
                candidate.event_id,
                candidate.incident_id,
                candidate.event_type,
                candidate.trace_id,
                candidate.event is not None,
                leaf,
                hashed,
            )
        )
    if not rows:
        return 0
    await conn.copy_records_to_table(
        "ledger",
        records=rows,
        columns=LEDGER_COLUMNS,
    )
    await tree.store_nodes(conn, nodes)
    await conn.execute("UPDATE counters SET last = $1 WHERE name = 'ledger'", last)
    return len(rows)


def decode_leaf(leaf: bytes) -> dict[str, Any]:
    """The JSON object inside a leaf."""
    value: dict[str, Any] = json.loads(leaf)
    return value


async def incident_entries(conn: asyncpg.Connection, incident_id: str) -> list[LedgerEvent]:
    """Every valid `incident.*` entry of one incident, in ledger order.

    Scoped by event type, not only by subject: a person or a log whose id happens to
    equal an incident id is not that incident (its events never land in the timeline).
    """
    rows = await conn.fetch(
        "SELECT idx, recorded_at, leaf FROM ledger WHERE incident_id = $1 AND valid"
        " AND event_type LIKE 'incident.%' ORDER BY idx",
        incident_id,
    )
    return [
        LedgerEvent(
            index=row["idx"],
            recorded_at=row["recorded_at"],
            envelope=parse_envelope(decode_leaf(bytes(row["leaf"]))["event"]),
        )
        for row in rows
    ]


PERSON_EVENTS = [
    "directory.person.upserted.v1",
    "directory.role.assigned.v1",
    "directory.role.revoked.v1",
]


async def person_data(conn: asyncpg.Connection, person_id: str) -> dict[str, Any] | None:
    """A person as the ledger has them, or None: the latest `directory.person.upserted.v1`
    with the `directory.role.assigned.v1`/`revoked.v1` recorded after it applied (as
    `services.domain.org` folds them), so an approved grant counts here too."""
    rows = await conn.fetch(
        "SELECT event_type, leaf FROM ledger WHERE incident_id = $1 AND valid"
        " AND event_type = ANY($2::text[]) AND idx >= COALESCE((SELECT max(idx) FROM ledger"
        " WHERE incident_id = $1 AND valid AND event_type = $3), 0) ORDER BY idx",
        person_id,
        PERSON_EVENTS,
        PERSON_EVENTS[0],
    )
    if not rows:
        return None
    person: dict[str, Any] = {"person_id": person_id, "roles": []}
    for row in rows:
        data = decode_leaf(bytes(row["leaf"]))["event"]["data"]
        if row["event_type"] == PERSON_EVENTS[0]:
            person = dict(data)
        elif row["event_type"] == PERSON_EVENTS[1]:
            person["roles"] = sorted({*(person.get("roles") or ()), data["role"]})
        else:
            person["roles"] = [r for r in person.get("roles") or () if r != data["role"]]
    return person


async def roles_in_ledger(conn: asyncpg.Connection, principal: str) -> frozenset[str] | None:
    """The roles the ledger gives a person (`person_data`), or None if it has no record.

    Audit learns the directory from the ledger itself, so a role granted or revoked
    through intake's directory API counts here as soon as its event is recorded.
    """
    person = await person_data(conn, principal)
    return None if person is None else frozenset(person.get("roles") or ())
