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

import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
from aiokafka import ConsumerRecord

from services.audit import tree
from services.audit.heads import Head, all_heads, latest_head
from services.audit.indexed import Indexed, chunk_records
from services.audit.merkle import MerkleFrontier
from services.domain.envelope import Envelope, canonical_json, utc_rfc3339
from services.domain.events import (
    CATALOG,
    InputRejected,
    InvalidEvent,
    PeopleImported,
    PersonUpserted,
    ReadRecorded,
    ReportSubmitted,
    RoleAssigned,
    RoleRevoked,
    b64,
    parse_envelope,
    parse_event,
)
from services.domain.knowledge import LedgerEvent
from services.infra.kafka import header, record_span
from services.infra.telemetry import trace_id_of

LEAF_VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Consumed:
    """A record as consumed (topic, partition, offset, bytes), and why it is not
    authentic (`refused`, services/infra/signing.py), None when it is."""

    topic: str
    partition: int
    offset: int
    value: bytes
    traceparent: str | None = None
    refused: str | None = None


def consumed(
    records: Sequence[ConsumerRecord], refused: Sequence[str | None] | None = None
) -> list[Consumed]:
    """Kafka records as the append use case takes them (each one's span recorded, so
    each report's trace shows its ledger entry)."""
    reasons = refused if refused is not None else [None] * len(records)
    out = []
    for record, why in zip(records, reasons, strict=True):
        with record_span(record):
            pass
        out.append(as_consumed(record, why))
    return out


def as_consumed(record: Consumed | ConsumerRecord, refused: str | None = None) -> Consumed:
    """A Kafka record as `Consumed` (a `Consumed` as it is), refused for `refused` if set."""
    if isinstance(record, Consumed):
        return record if refused is None else replace(record, refused=refused)
    traceparent = header(record, "traceparent")
    value = record.value or b""
    return Consumed(record.topic, record.partition, record.offset, value, traceparent, refused)


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


class LedgerRow(NamedTuple):
    """One `ledger` row as an append writes it (the fields of `LEDGER_COLUMNS`)."""

    idx: int
    recorded_at: datetime
    topic: str
    partition: int
    offset: int
    record_key: str
    event_id: str | None
    incident_id: str | None
    event_type: str | None
    trace_id: str | None
    valid: bool
    leaf: bytes
    leaf_hash: bytes


LEDGER_COLUMNS = list(LedgerRow._fields)
"""The `ledger` columns an append writes, in the order of its rows."""


@dataclass(frozen=True)
class StoredRow:
    """A stored entry as the raw-ledger reads serve it: the leaf, and the columns the
    reads select it by, as stored (`indexed`, `recorded_at`; `people`, the rows of
    `ledger_people` at its index), for a verifier to compare with the leaf."""

    idx: int
    recorded_at: datetime
    topic: str
    partition: int
    offset: int
    leaf: bytes
    leaf_hash: bytes
    indexed: Indexed
    people: tuple[tuple[str, str | None], ...] = ()
    """(person id, record as JSON text or None) of each `ledger_people` row at `idx`."""


def classify(record: Consumed | ConsumerRecord, refused: str | None = None) -> Candidate:
    """Decide what a record is: a valid event (keyed by topic and id) or rejected input.

    A record `refused` as not authentic (services/infra/signing.py) is rejected input
    too, kept as evidence of the attempt.
    """
    record = as_consumed(record, refused)
    raw = record.value
    try:
        if record.refused is not None:
            raise InvalidEvent(f"{NOT_AUTHENTIC}{record.refused}")
        envelope, _data = parse_event(raw)
    except InvalidEvent as exc:
        return rejected(record, exc.reason[:1000])
    return _candidate(record, f"{record.topic}:{envelope.id}", envelope)


NOT_AUTHENTIC = "not authentic: "
"""How the reason of a refused record starts (then one of signing.REASONS)."""


def rejected(record: Consumed, reason: str, kind: str = "raw") -> Candidate:
    """The record as rejected input (`kind` "replayed" for a replay), with the reason."""
    digest = hashlib.sha256(record.value).hexdigest()
    key = f"{kind}:{record.topic}:{record.partition}:{record.offset}:{digest}"
    return _candidate(record, key, reason=reason)


def _candidate(
    record: Consumed, key: str, envelope: Envelope | None = None, *, reason: str | None = None
) -> Candidate:
    """The record keyed `key`: a valid event (its parsed `envelope`), else rejected input
    for `reason`."""
    indexed = Indexed.of(envelope)  # the rule verify proves the columns by
    return Candidate(
        record_key=key,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        event=json.loads(record.value) if envelope else None,
        raw=record.value,
        reason=reason,
        event_id=indexed.event_id,
        incident_id=indexed.incident_id,
        event_type=indexed.event_type,
        trace_id=trace_id_of((envelope.traceparent if envelope else None) or record.traceparent),
    )


def refuse_replays(
    candidates: list[Candidate],
    records: Sequence[Consumed | ConsumerRecord],
    stored: dict[str, bytes],
) -> list[Candidate]:
    """The candidates with each replay (an event id recorded before, or earlier in the
    batch, with other content) turned into rejected input."""
    events = {key: decode_leaf(leaf).get("event") for key, leaf in stored.items()}
    out = []
    for candidate, record in zip(candidates, records, strict=True):
        if candidate.event is not None:
            first = events.setdefault(candidate.record_key, candidate.event)
            if first != candidate.event:
                candidate = rejected(as_consumed(record), f"{NOT_AUTHENTIC}replayed", "replayed")
        out.append(candidate)
    return out


_replays = refuse_replays  # its former name (tests/unit/test_event_signing.py)


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
    """`services.audit.usecases.append_to` on a connection inside a transaction (benches
    and tests fill a ledger with it); returns how many records were new."""
    from services.audit.usecases import append_to  # here: usecases builds on this module

    return await append_to(PostgresLedger(conn), consumed(records, refused))


def decode_leaf(leaf: bytes) -> dict[str, Any]:
    """The JSON object inside a leaf."""
    value: dict[str, Any] = json.loads(leaf)
    return value


DEAD_LETTER = InputRejected.TYPE
COPY_DEPTH = 3
"""Copies decoded at most, looking for the record a leaf carries: a dead letter recorded
as an entry and up to two more inside it; a record wrapped deeper is `UNTOLD`."""
UNTOLD = "(a copy whose incident cannot be told)"
"""What `carried_incident` answers for a copy whose incident it cannot establish: an
incident no entry can be of (not an id any service gives), so every reader has the copy
withheld, the reader it would exclude and every other one alike."""
INCIDENT_EVENTS = f"valid AND event_type LIKE 'incident.%' AND event_type <> '{DEAD_LETTER}'"
"""The SQL condition of an incident's own entries. A dead letter is no incident's own
entry (its subject is `deadletter`): the record it carries is judged with the incident
`carried_incident` finds, never served as the events of an incident called
`deadletter`."""


def is_incident_event(event_type: str | None) -> bool:
    """Whether an entry of `event_type` is an incident's own event (`INCIDENT_EVENTS`)."""
    kind = event_type or ""
    return kind.startswith("incident.") and kind != DEAD_LETTER


def carried_incident(leaf: bytes) -> str | None:
    """The incident whose event a leaf carries as a copy, not as the incident's own entry:
    a rejected record's `raw` bytes (refused as not authentic, a replay, or unreadable
    to this version), or a consumer's dead letter (`incident.input.rejected.v1`, whose
    `original_b64` holds the record it could not take; a dead letter of a dead letter
    nests them). Either holds the event in clear (who is accused, who is excluded), so a
    raw read of the ledger judges it with that incident.

    Fails closed: `UNTOLD` for a copy whose incident cannot be established (bytes that
    are no JSON object, base64 that does not validate, a record without a known type, an
    `incident.*` event without a subject, more than `COPY_DEPTH` nested dead letters),
    which every reader then has withheld. None only for an entry that carries no copy, a
    dead letter whose original the refusing service left out (empty), and a copy that
    reads as an event of a known type that is no incident's (a directory record, say)."""
    if b'"raw":' not in leaf and DEAD_LETTER.encode() not in leaf:
        return None  # most entries: no copy (a quick test before any parsing)
    try:
        body: Any = decode_leaf(leaf)
    except (ValueError, TypeError, RecursionError):
        return UNTOLD  # a leaf that does not parse may still hold the copy's bytes
    if not isinstance(body, dict):
        return UNTOLD
    if "raw" in body:
        carried = body["raw"]
    elif _is_dead_letter(body.get("event")):
        carried = _original(body["event"])
    else:
        return None  # the marker was text inside another event (a summary, a reason)
    for _ in range(COPY_DEPTH):
        original = _decoded(carried)
        if original is None:
            return UNTOLD
        if not original:
            return None  # the refusing service kept nothing of it
        try:
            event = json.loads(original)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
            return UNTOLD
        if _is_dead_letter(event):
            carried = _original(event)
            continue
        return _subject_of(event)
    return UNTOLD  # more than COPY_DEPTH dead letters around it, the entry itself included


class About(NamedTuple):
    """What a raw read withholds an entry by: an incident its leaf is about, and how."""

    incident: str
    kind: str
    """`OWN`: the incident's own event (judged by its entries, this one among them);
    `COPY`: a copy of one (judged by the incident's entries, never by itself); `NAMED`:
    an event about an incident that is none of its own (a read of it, or an older read
    record naming it), withheld only from readers the incident excludes."""

    @property
    def judged(self) -> bool:
        """Whether the entry is withheld from everyone when its incident cannot be judged."""
        return self.kind != NAMED


OWN, COPY, NAMED = "own", "copy", "named"


def leaf_about(leaf: bytes) -> list[About]:
    """What a raw read decides to withhold an entry by, read from its leaf, never from
    the columns beside it (an index a superuser can point elsewhere, review D3): a
    copy's incident (`carried_incident`), an incident's own event's subject, the subject
    of any other event (a person, `ledger`: withheld only if it is an incident that
    excludes the reader), and the incidents an older `audit.read.recorded.v1` names as
    withheld (review D4). Nothing for a leaf that is no ledger leaf (served as stored:
    `carried_incident` has judged any copy its bytes may hold)."""
    carried = carried_incident(leaf)
    if carried is not None:
        return [About(carried, COPY)]
    try:
        body: Any = decode_leaf(leaf)
    except (ValueError, TypeError, RecursionError):
        return []  # no leaf the append writes: served as stored, for verify to name
    event = body.get("event") if isinstance(body, dict) else None
    if not isinstance(event, dict) or _is_dead_letter(event):
        return []  # no event (rejected input whose copy is no incident's), or a dead
        # letter whose original the refusing service left out, or no leaf at all
    subject, kind, data = event.get("subject"), event.get("type"), event.get("data")
    if isinstance(kind, str) and is_incident_event(kind):
        if isinstance(subject, str) and subject:
            return [About(subject, OWN)]
        return [About(UNTOLD, COPY)]
    about = [About(subject, NAMED)] if isinstance(subject, str) and subject else []
    named = data.get("withheld") if kind == ReadRecorded.TYPE and isinstance(data, dict) else None
    if isinstance(named, list):
        about += [About(i, NAMED) for i in named if isinstance(i, str) and i]
    return about


def _decoded(carried: Any) -> bytes | None:
    """The bytes a copy's base64 holds, None if it is no valid base64 text."""
    if not isinstance(carried, str):
        return None
    try:
        return base64.b64decode(carried, validate=True)
    except (ValueError, TypeError):
        return None


def _subject_of(event: Any) -> str | None:
    """The incident a copied record is an event of: its subject for an `incident.*`
    event that has one; None for an event of a known type that is no incident's;
    `UNTOLD` for anything else (no object, a type this catalog does not know)."""
    kind = event.get("type") if isinstance(event, dict) else None
    if not isinstance(kind, str):
        return UNTOLD
    if kind.startswith("incident."):
        subject = event.get("subject")
        return subject if isinstance(subject, str) and subject else UNTOLD
    return None if kind in CATALOG else UNTOLD


def _is_dead_letter(event: Any) -> bool:
    return isinstance(event, dict) and event.get("type") == DEAD_LETTER


def _original(event: Any) -> Any:
    """The `original_b64` of a dead letter (`incident.input.rejected.v1`), else None."""
    data = event.get("data") if _is_dead_letter(event) else None
    return data.get("original_b64") if isinstance(data, dict) else None


async def incident_entries(conn: asyncpg.Connection, incident_id: str) -> list[LedgerEvent]:
    """Every valid `incident.*` entry of one incident, in ledger order.

    Scoped by event type, not only by subject: a person or a log whose id happens to
    equal an incident id is not that incident (its events never land in the timeline).
    """
    rows = await conn.fetch(
        f"SELECT idx, recorded_at, leaf FROM ledger WHERE incident_id = $1 AND {INCIDENT_EVENTS}"  # noqa: S608
        " ORDER BY idx",
        incident_id,
    )
    entries = [
        LedgerEvent(
            index=row["idx"],
            recorded_at=row["recorded_at"],
            envelope=parse_envelope(decode_leaf(bytes(row["leaf"]))["event"]),
        )
        for row in rows
    ]
    return [e for e in entries if _its_own(e, incident_id)]


def _its_own(entry: LedgerEvent, incident_id: str) -> bool:
    """Whether the leaf itself says the entry is an event of the incident. The columns
    a query selects by are an index over the leaves that verify does not prove: a row
    whose column was pointed at another incident (a superuser with the triggers off)
    is left out, and logged, rather than added to that incident's views."""
    envelope = entry.envelope
    if envelope.subject == incident_id and envelope.type.startswith("incident."):
        return True
    log.error(
        "ledger entry %d is indexed under incident %s but its leaf is %s of %s: left out",
        entry.index,
        incident_id,
        envelope.type,
        envelope.subject,
    )
    return False


PERSON_EVENTS = [PersonUpserted.TYPE, RoleAssigned.TYPE, RoleRevoked.TYPE]
"""The directory events about one person, whose entries name them in `incident_id` (the
event's subject). A `directory.people.imported.v1` (a bulk import's chunk) names the
people it carries in `ledger_people` instead (`chunk_people`)."""


_PERSON_ROWS = """
 CROSS JOIN LATERAL (
  WITH chunk AS (SELECT idx, record FROM ledger_people WHERE person_id = p.person_id
   ORDER BY idx DESC LIMIT 1),
  since AS (SELECT GREATEST((SELECT idx FROM ledger WHERE incident_id = p.person_id
   AND (incident_id, idx) >= (p.person_id, 0)
   AND valid AND event_type = $3 ORDER BY incident_id DESC, idx DESC LIMIT 1),
   (SELECT idx FROM chunk)) AS idx)
  SELECT idx, event_type, leaf FROM ledger WHERE incident_id = p.person_id AND valid
  AND event_type = ANY($2::text[])
  AND (incident_id, idx) >= (p.person_id, COALESCE((SELECT idx FROM since), 0))
  -- of a chunk, only the person's record (kept beside the index), in a leaf's shape
  UNION ALL SELECT c.idx, $4, convert_to(json_build_object('event',
   json_build_object('data', json_build_object('people', json_build_array(c.record))))
   ::text, 'UTF8') FROM chunk c WHERE c.record IS NOT NULL
   AND c.idx >= (SELECT idx FROM since)
  UNION ALL SELECT l.idx, l.event_type, l.leaf FROM ledger l, chunk c
  WHERE l.idx = c.idx AND c.record IS NULL AND l.idx >= (SELECT idx FROM since)
 ) x
ORDER BY p.person_id, x.idx
"""
"""Each person's entries from their latest whole record on (`person_data`), for the
people of `p` (one row each): the statements below put it after their own `FROM`.
The row comparisons `(incident_id, idx) >= (person, n)` say `idx >= n` in the terms of
the ledger's index by incident, which PostgreSQL then uses for a person taken from the
outer query (with `incident_id = person` and `idx >= n` alone it scanned the ledger
once or twice a person where most entries share one subject, as an import's chunks do)."""

_PEOPLE = "".join(
    (
        "SELECT p.person_id, x.idx, x.event_type, x.leaf FROM unnest($1::text[]) AS p(person_id)",
        _PERSON_ROWS,
    )
)
"""The entries of `person_data` of each of `$1`."""

_LINE_UP = """
WITH RECURSIVE line(person_id, depth) AS (
 SELECT DISTINCT unnest($1::text[]) COLLATE "default", 0
 UNION
 SELECT m.manager COLLATE "default", line.depth + 1 FROM line CROSS JOIN LATERAL (
  SELECT CASE WHEN u.idx IS NOT NULL AND (k.idx IS NULL OR u.idx > k.idx)
   THEN substring(convert_from(u.leaf, 'UTF8') FROM '"manager_id":"([^"]*)"')
   ELSE k.record ->> 'manager_id' END AS manager
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (SELECT idx, leaf FROM ledger WHERE incident_id = line.person_id
   AND (incident_id, idx) >= (line.person_id, 0)
   AND valid AND event_type = $3 ORDER BY incident_id DESC, idx DESC LIMIT 1) u ON true
  LEFT JOIN LATERAL (SELECT idx, record FROM ledger_people WHERE person_id = line.person_id
   ORDER BY idx DESC LIMIT 1) k ON true
 ) m WHERE m.manager IS NOT NULL AND line.depth < $5
)
SELECT p.person_id, x.idx, x.event_type, x.leaf FROM (SELECT DISTINCT person_id FROM line) p
"""
_LINE = "".join((_LINE_UP, _PERSON_ROWS))
"""The entries of `person_data` of the people of `$1` and everyone above them, up to
`$5` managers: the manager of each is read from their latest whole record (an upsert's
leaf, or the record a chunk's `ledger_people` row keeps; a row without it ends the walk
there). The walk only chooses whom to fetch: each person is still folded from their
entries by `fold_person`, and a manager it misses (a leaf it cannot read so, an id
with an escaped character) is looked up on its own by the caller's walk, never
taken for nobody; nothing here parses a leaf as jsonb, so no leaf can fail it."""


async def person_data(conn: asyncpg.Connection, person_id: str) -> dict[str, Any] | None:
    """A person as the ledger has them, or None: their latest whole record (a
    `directory.person.upserted.v1`, or their place in a `directory.people.imported.v1`)
    with the `directory.role.assigned.v1`/`revoked.v1` recorded after it applied (as
    `services.domain.org` folds them), so an approved grant counts here too."""
    return (await people_data(conn, [person_id]))[person_id]


async def people_data(
    conn: asyncpg.Connection, person_ids: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    """`person_data` of each of `person_ids`, in one statement."""
    rows = await conn.fetch(
        _PEOPLE,
        list(person_ids),
        PERSON_EVENTS,
        PersonUpserted.TYPE,
        PeopleImported.TYPE,
    )
    return {person: None for person in person_ids} | _folded(rows)


async def line_data(
    conn: asyncpg.Connection, person_ids: Sequence[str], most: int
) -> dict[str, dict[str, Any] | None]:
    """`person_data` of `person_ids` and of their managers, theirs and so on, up to `most`
    managers above each, in one statement whatever the depth (a conflict check walks
    the accused's whole line: one statement a manager made a deep organisation slower).
    A person the ledger does not have ends their line; such a person is not in the
    answer (ask `person_data`, or the seed file, for them)."""
    rows = await conn.fetch(
        _LINE,
        list(person_ids),
        PERSON_EVENTS,
        PersonUpserted.TYPE,
        PeopleImported.TYPE,
        most,
    )
    return _folded(rows)


def _folded(rows: Sequence[asyncpg.Record]) -> dict[str, dict[str, Any] | None]:
    """Each person's rows (by person, in index order) folded by `fold_person`."""
    entries: dict[str, list[tuple[str, bytes]]] = {}
    for r in rows:
        entries.setdefault(r["person_id"], []).append((r["event_type"], bytes(r["leaf"])))
    return {person: fold_person(person, found) for person, found in entries.items()}


def chunk_people(rows: Sequence[LedgerRow]) -> list[tuple[str, int, str]]:
    """(person id, index, their record as JSON) of every person a valid
    `directory.people.imported.v1` among `rows` carries (each once per entry, with the
    last record it lists for them): the in-memory ledger's `ledger_people` (PostgreSQL
    derives the same rows itself as it stores the entries: audit migration 0008)."""
    found: list[tuple[str, int, str]] = []
    for row in rows:
        if row.valid and row.event_type == PeopleImported.TYPE:
            people = decode_leaf(row.leaf)["event"]["data"]["people"]
            last = chunk_records(people)
            found.extend((i, row.idx, json.dumps(p)) for i, p in last.items())
    return found


def _record_of(person_id: str, event_type: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """The person's whole record in an upsert's or a chunk's data (a chunk that lists
    them twice: the last), None if it has none."""
    if event_type == PersonUpserted.TYPE:
        return dict(data)
    for record in reversed(data.get("people") or ()):
        if record.get("person_id") == person_id:
            return dict(record)
    return None


def fold_person(person_id: str, entries: Sequence[tuple[str, bytes]]) -> dict[str, Any] | None:
    """The person from their directory entries (type, leaf) from the latest whole
    record on (an upsert, or an import's chunk that carries them)."""
    if not entries:
        return None
    person: dict[str, Any] = {"person_id": person_id, "roles": []}
    for event_type, leaf in entries:
        data = decode_leaf(leaf)["event"]["data"]
        if event_type in (PersonUpserted.TYPE, PeopleImported.TYPE):
            person = _record_of(person_id, event_type, data) or person
        elif event_type == RoleAssigned.TYPE:
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


STORED = (
    'idx, recorded_at, topic, partition, "offset", leaf, leaf_hash, valid, event_id,'
    " incident_id, event_type"
)
"""The columns of a `StoredRow` (fixed text)."""


def _stored(row: asyncpg.Record, people: Sequence[tuple[str, str | None]] = ()) -> StoredRow:
    event_id = row["event_id"]
    return StoredRow(
        row["idx"],
        row["recorded_at"],
        row["topic"],
        row["partition"],
        row["offset"],
        bytes(row["leaf"]),
        bytes(row["leaf_hash"]),
        Indexed(
            row["valid"],
            None if event_id is None else str(event_id),
            row["incident_id"],
            row["event_type"],
        ),
        tuple(people),
    )


class PostgresLedger:
    """The `Ledger` repository (`services.audit.usecases`) on a connection in a transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def lock_tail(self) -> tuple[int, datetime]:
        # The counter row is locked first, so appends are serialised, indexes are
        # gap-free, and the duplicate check cannot race.
        row = await self.conn.fetchrow(
            "SELECT last, clock_timestamp() AS now FROM counters WHERE name = 'ledger' FOR UPDATE"
        )
        last, now = int(row["last"]), row["now"]
        if last >= 0:
            previous = await self.conn.fetchval(
                "SELECT recorded_at FROM ledger WHERE idx = $1", last
            )
            now = max(now, previous)  # recorded_at never goes backwards along the index
        return last, now

    async def leaves(self, record_keys: Sequence[str]) -> dict[str, bytes]:
        return {
            r["record_key"]: bytes(r["leaf"])
            for r in await self.conn.fetch(
                "SELECT record_key, leaf FROM ledger WHERE record_key = ANY($1::text[])",
                list(record_keys),
            )
        }

    async def known(self, record_keys: Sequence[str]) -> set[str]:
        return {
            r["record_key"]
            for r in await self.conn.fetch(
                "SELECT record_key FROM ledger WHERE record_key = ANY($1::text[])",
                list(record_keys),
            )
        }

    async def frontier(self, size: int) -> MerkleFrontier:
        return await tree.frontier_at(self.conn, size)

    async def write(
        self, rows: Sequence[LedgerRow], nodes: Sequence[tuple[int, int, bytes]]
    ) -> None:
        # `ledger_people` is filled by the database from these rows (migration 0008)
        await self.conn.copy_records_to_table("ledger", records=rows, columns=LEDGER_COLUMNS)
        await tree.store_nodes(self.conn, list(nodes))
        await self.conn.execute("UPDATE counters SET last = $1 WHERE name = 'ledger'", rows[-1].idx)

    async def size(self) -> int:
        return int(await self.conn.fetchval("SELECT last + 1 FROM counters WHERE name = 'ledger'"))

    async def incident_entries(self, incident_id: str) -> list[LedgerEvent]:
        return await incident_entries(self.conn, incident_id)

    async def person_data(self, person_id: str) -> dict[str, Any] | None:
        return await person_data(self.conn, person_id)

    async def line_data(
        self, person_ids: Sequence[str], most: int
    ) -> dict[str, dict[str, Any] | None]:
        return await line_data(self.conn, person_ids, most)

    async def rows(self, start: int, end: int) -> list[StoredRow]:
        people: dict[int, list[tuple[str, str | None]]] = {}
        for r in await self.conn.fetch(
            "SELECT idx, person_id, record::text AS record FROM ledger_people"
            " WHERE idx >= $1 AND idx < $2 ORDER BY idx, person_id",
            start,
            end,
        ):
            people.setdefault(r["idx"], []).append((r["person_id"], r["record"]))
        return [
            _stored(r, people.get(r["idx"], ()))
            for r in await self.conn.fetch(
                f"SELECT {STORED} FROM ledger WHERE idx >= $1 AND idx < $2 ORDER BY idx",  # noqa: S608
                start,
                end,
            )
        ]

    async def first_from(self, index: int) -> int | None:
        found = await self.conn.fetchval("SELECT min(idx) FROM ledger WHERE idx >= $1", index)
        return None if found is None else int(found)

    async def stray_people(self, most: int) -> list[tuple[str, int]]:
        return [
            (r["person_id"], r["idx"])
            for r in await self.conn.fetch(
                "SELECT p.person_id, p.idx FROM ledger_people p WHERE NOT EXISTS"
                " (SELECT 1 FROM ledger l WHERE l.idx = p.idx) ORDER BY p.idx, p.person_id"
                " LIMIT $1",
                most,
            )
        ]

    async def entries_of(
        self, incident_ids: Sequence[str], families: Sequence[str] | None = None
    ) -> dict[str, list[LedgerEvent]]:
        by_incident: dict[str, list[LedgerEvent]] = {}
        for row in await self.conn.fetch(
            "SELECT idx, recorded_at, incident_id, leaf FROM ledger WHERE incident_id = ANY($1)"  # noqa: S608
            f" AND {INCIDENT_EVENTS}"
            " AND ($2::text[] IS NULL OR event_type LIKE ANY($2)) ORDER BY idx",
            list(incident_ids),
            None if families is None else [f + "%" for f in families],
        ):
            try:
                envelope = parse_envelope(decode_leaf(bytes(row["leaf"]))["event"])
            except (InvalidEvent, ValueError, TypeError, KeyError):
                continue  # verify names a leaf that no longer parses
            entry = LedgerEvent(index=row["idx"], recorded_at=row["recorded_at"], envelope=envelope)
            if _its_own(entry, row["incident_id"]):
                by_incident.setdefault(row["incident_id"], []).append(entry)
        return by_incident

    async def first_report(self, incident_id: str) -> str | None:
        first = await self.conn.fetchval(
            "SELECT event_id FROM ledger WHERE incident_id = $1 AND valid"
            " AND event_type = $2 ORDER BY idx LIMIT 1",
            incident_id,
            ReportSubmitted.TYPE,
        )
        return None if first is None else str(first)

    async def entry_of_event(self, event_id: uuid.UUID) -> StoredRow | None:
        row = await self.conn.fetchrow(
            f"SELECT {STORED} FROM ledger WHERE event_id = $1 AND valid"  # noqa: S608
            " ORDER BY idx LIMIT 1",
            event_id,
        )
        return None if row is None else _stored(row)

    async def leaf_hash(self, index: int) -> bytes:
        return bytes(await self.conn.fetchval("SELECT leaf_hash FROM ledger WHERE idx = $1", index))

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return await tree.inclusion_proof(self.conn, index, size)

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return await tree.consistency_proof(self.conn, first, second)

    async def latest_head(self) -> Head | None:
        return await latest_head(self.conn)

    async def all_heads(self) -> list[Head]:
        return await all_heads(self.conn)

    async def lock_stream(self, stream: str) -> None:
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", stream)
