"""Audit's use cases: append consumed records to the ledger, and answer auditors from it.

Each use case takes a command (or query) and an `AuditUnitOfWork`; none touches
asyncpg, HTTP or Kafka. The adapters are thin: the Kafka consumer (`app.py`) turns
records into `Consumed` and calls `append_batch`; the routes (`api.py`,
`receipt_proofs.py`) and console pages (`ui.py`) authenticate the caller, build a
query, call the use case and render its result, mapping `AuditError`s to answers.

The unit of work holds the recorder port (`services.infra.recorder`, where audit's
own events go: views, reads, refusals, disclosures), the `Ledger` (audit's own store:
leaves, tree and heads), the incidents' `Keys` (opening sealed fields after the
checks) and the console's `ConsoleIndex`. `services.audit.postgres` is the PostgreSQL
unit of work; `services.audit.memory` the in-memory one for use-case tests.

Guarded reads: every auditor read (entries, timeline, knowledge, state, the console's
incident pages) applies the conflict rule of `services.audit.conflicts` and is
recorded as one `audit.read.recorded.v1` per request, on the stream
`audit-reads:<principal>`, before the answer leaves. A range of the raw ledger has the
entries of each incident that excludes the reader withheld (index, leaf hash and
recording time kept, so the tree still verifies), and the read names those incidents
in `withheld`: the record of the attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from services.audit.conflicts import MAX_CHAIN, as_person, excluded_by
from services.audit.heads import Head
from services.audit.ledger import (
    OWN,
    UNTOLD,
    About,
    Consumed,
    LedgerRow,
    StoredRow,
    classify,
    decode_leaf,
    leaf_about,
    leaf_bytes,
    refuse_replays,
)
from services.audit.merkle import MerkleFrontier, leaf_hash
from services.audit.ui_index import Filters, Page, shown_options, visible_page
from services.domain.access import CONFLICT
from services.domain.directory import DirectoryFile, Person
from services.domain.envelope import Envelope
from services.domain.events import (
    CUSTODIAN_FIELDS,
    READER_FIELDS,
    AccessDenied,
    IdentityDisclosed,
    InvalidEvent,
    PeopleConfirmed,
    ReadRecorded,
    Reassigned,
    ReportAmended,
    ReportSubmitted,
    Triaged,
    Viewed,
    make_event,
    parse_envelope,
)
from services.domain.incident import fold
from services.domain.knowledge import Knowledge, LedgerEvent, knowledge_as_of
from services.domain.policy import Policy
from services.infra.crypto import IncidentKey
from services.infra.recorder import UnitOfWork
from services.infra.telemetry import current_traceparent

AUDIT_ROLES = frozenset({"auditor"})
IDENTITY_CUSTODIAN = "identity_custodian"
KNOWLEDGE_ROLES = frozenset({"auditor", IDENTITY_CUSTODIAN})
KNOWLEDGE_REASON = "the reporter named in an audit knowledge answer"
MAX_ENTRIES = 1000
"""Ledger entries one read of the raw ledger serves at most."""
NOT_FOUND_DETAIL = "No events of this incident are in the ledger."
LEDGER_SUBJECT = "ledger"
"""Subject of a read that is about a range of the ledger, not one incident."""
OwnEvent = AccessDenied | IdentityDisclosed | Viewed | ReadRecorded
JUDGED_TYPES = tuple(
    t.TYPE.rsplit(".", 1)[0] + "."
    for t in (ReportSubmitted, ReportAmended, PeopleConfirmed, Triaged, Reassigned)
)
"""The entries a conflict check reads (`_excluded`), as type families (every version:
an older one is upcast when read): who is accused or named, the category, triage's
exclusions and removals, and the report the reporter is matched from."""


# ------------------------------------------------------------------------- errors


class AuditError(Exception):
    """A refusal of a use case; the adapters map each kind to their answer."""


class Forbidden(AuditError):
    """The caller holds none of the roles the use case needs."""

    def __init__(self, allowed: frozenset[str]) -> None:
        super().__init__(f"The {' or '.join(sorted(allowed))} role is required.")
        self.allowed = allowed


class NotFound(AuditError):
    """Nothing to answer: unknown, or refused (a refusal looks exactly the same)."""

    def __init__(self, detail: str = NOT_FOUND_DETAIL, title: str = "Not found") -> None:
        super().__init__(detail)
        self.title, self.detail = title, detail


class Invalid(AuditError):
    """The query is not valid (a range, a size); `extra` is added to the answer."""

    def __init__(self, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.title, self.detail, self.extra = title, detail, extra


# ------------------------------------------------------------------------- the ports


@dataclass(frozen=True)
class AuditConfig:
    """What the use cases need of the configuration."""

    policy: Policy
    directory: DirectoryFile
    """The seed directory: roles and people until the directory's events reach the ledger."""
    source: str = "/services/audit"
    topic_prefix: str = ""


class Ledger(Protocol):
    """Audit's own store: the ledger's entries, its Merkle tree and its signed heads."""

    async def lock_tail(self) -> tuple[int, datetime]:
        """Serialise appends: the last index (-1 when empty) and the recording time of
        the next entries (never before the last entry's)."""

    async def leaves(self, record_keys: Sequence[str]) -> dict[str, bytes]:
        """The stored leaf of each record key already in the ledger."""

    async def known(self, record_keys: Sequence[str]) -> set[str]:
        """The record keys already in the ledger."""

    async def frontier(self, size: int) -> MerkleFrontier:
        """The incremental tree after `size` entries."""

    async def write(
        self, rows: Sequence[LedgerRow], nodes: Sequence[tuple[int, int, bytes]]
    ) -> None:
        """Store new rows (indexes after the tail) and the subtrees they completed."""

    async def size(self) -> int: ...

    async def incident_entries(self, incident_id: str) -> list[LedgerEvent]:
        """Every valid `incident.*` entry of the incident, in ledger order."""

    async def person_data(self, person_id: str) -> dict[str, Any] | None:
        """A person as the ledger's directory events have them, or None."""

    async def line_data(
        self, person_ids: Sequence[str], most: int
    ) -> dict[str, dict[str, Any] | None]:
        """`person_data` of the people and of everyone above them (up to `most` managers
        above each) the ledger has, at once; a person it lacks ends their line."""

    async def rows(self, start: int, end: int) -> list[StoredRow]:
        """The stored entries in [start, end)."""

    async def first_from(self, index: int) -> int | None:
        """The lowest index of a stored entry at `index` or above, None if none."""

    async def stray_people(self, most: int) -> list[tuple[str, int]]:
        """(person id, index) of up to `most` `ledger_people` rows at an index where the
        ledger holds no entry (never written so: the database derives each row from
        the entry it is appended with)."""

    async def entries_of(
        self, incident_ids: Sequence[str], families: Sequence[str] | None = None
    ) -> dict[str, list[LedgerEvent]]:
        """Each incident's `incident.*` entries (leaves that no longer parse left out);
        only those whose type starts with one of `families` when given."""

    async def first_report(self, incident_id: str) -> str | None:
        """The event id of the incident's first `incident.report.submitted.v1`."""

    async def entry_of_event(self, event_id: uuid.UUID) -> StoredRow | None:
        """The first valid entry of an event id."""

    async def leaf_hash(self, index: int) -> bytes: ...

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...

    async def consistency_proof(self, first: int, second: int) -> list[bytes]: ...

    async def latest_head(self) -> Head | None: ...

    async def all_heads(self) -> list[Head]: ...

    async def lock_stream(self, stream: str) -> None:
        """Serialise appends to one of audit's own streams (two requests both append)."""


class Keys(Protocol):
    """The incidents' data keys: only after the access checks."""

    async def get(self, incident_id: str) -> IncidentKey | None:
        """The incident's key; None when it has none or it was destroyed (erased)."""

    async def reporter_of(self, incident_id: str, events: Sequence[Envelope]) -> str | None:
        """The reporter's person id, for access decisions only (never shown)."""

    async def open_events(
        self, incident_id: str, events: Sequence[Envelope], *, fields: frozenset[str]
    ) -> list[Envelope]:
        """The events with the sealed values of `fields` readable."""


class ConsoleIndex(Protocol):
    """The console's incident index (`services.audit.ui_index`): one row per incident."""

    async def page(
        self, filters: Filters, *, before: int | None, after: int | None, hidden_from: str
    ) -> Page:
        """One page, newest first, without the incidents that exclude `hidden_from`."""

    async def facets(self) -> dict[str, list[str]]:
        """The categories and severities present, for the filter menus."""

    async def lag(self) -> int:
        """Ledger entries not folded into the index yet."""


class AuditUnitOfWork(UnitOfWork, Protocol):
    """One transaction over the recorder, the ledger, the keys and the console index."""

    config: AuditConfig

    @property
    def ledger(self) -> Ledger: ...

    @property
    def keys(self) -> Keys: ...

    @property
    def index(self) -> ConsoleIndex: ...


# ------------------------------------------------------------------------- append


@dataclass(frozen=True)
class AppendBatch:
    """Consumed records to append, in order."""

    records: tuple[Consumed, ...]


async def append_batch(command: AppendBatch, uow: AuditUnitOfWork) -> int:
    """Append the records not yet in the ledger, in order; returns how many were new."""
    async with uow:
        return await append_to(uow.ledger, command.records)


async def append_to(ledger: Ledger, records: Sequence[Consumed]) -> int:
    """`append_batch` inside an open transaction.

    A record refused as not authentic, and a replay (an event id recorded before, or
    earlier in the batch, with other content), is recorded as rejected input, once:
    the attempt is evidence. A record already in the ledger is skipped.
    """
    last, now = await ledger.lock_tail()
    candidates = [classify(r) for r in records]
    stored = await ledger.leaves([c.record_key for c in candidates if c.event is not None])
    candidates = refuse_replays(candidates, records, stored)
    others = [c.record_key for c in candidates if c.event is None]
    seen = set(stored) | (await ledger.known(others) if others else set())
    frontier = await ledger.frontier(last + 1)
    nodes: list[tuple[int, int, bytes]] = []
    rows: list[LedgerRow] = []
    for candidate in candidates:
        if candidate.record_key in seen:
            continue
        seen.add(candidate.record_key)
        last += 1
        leaf = leaf_bytes(last, now, candidate)
        hashed = leaf_hash(leaf)
        nodes.extend(frontier.append(hashed))
        rows.append(
            LedgerRow(
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
    if rows:
        await ledger.write(rows, nodes)
    return len(rows)


# ------------------------------------------------------------------------- who asks


@dataclass(frozen=True)
class RolesOf:
    """The roles of a principal: the ledger's directory, else the seed file."""

    principal: str


async def roles_of(query: RolesOf, uow: AuditUnitOfWork) -> frozenset[str]:
    async with uow:
        return await _roles(uow, query.principal)


async def _roles(uow: AuditUnitOfWork, principal: str) -> frozenset[str]:
    person = await uow.ledger.person_data(principal)
    if person is None:  # the directory's events have not reached the ledger: the seed file
        return uow.config.directory.roles_of(principal)
    return frozenset(person.get("roles") or ())


async def _authorise(
    uow: AuditUnitOfWork, principal: str, allowed: frozenset[str]
) -> frozenset[str]:
    roles = await _roles(uow, principal)
    if not roles & allowed:
        raise Forbidden(allowed)
    return roles


@dataclass(frozen=True)
class Authorise:
    """Does the principal hold one of `allowed`? (`Forbidden` if not.)"""

    principal: str
    allowed: frozenset[str] = AUDIT_ROLES


async def authorise(query: Authorise, uow: AuditUnitOfWork) -> frozenset[str]:
    """The principal's roles if one of them is allowed; `Forbidden` otherwise."""
    async with uow:
        return await _authorise(uow, query.principal, query.allowed)


async def person(person_id: str, uow: AuditUnitOfWork) -> Person | None:
    """A person as the ledger has them, else as the seed file has them (in an open uow)."""
    return as_person(await uow.ledger.person_data(person_id), uow.config.directory, person_id)


async def _excluded(
    uow: AuditUnitOfWork,
    incident_id: str,
    entries: Sequence[LedgerEvent],
    reader: str,
    known: dict[str, Person | None] | None = None,
) -> frozenset[str]:
    async def lookup(person_id: str) -> Person | None:
        return await person(person_id, uow)

    async def line(person_ids: Sequence[str]) -> dict[str, Person | None]:
        found = await uow.ledger.line_data(person_ids, MAX_CHAIN)
        return {p: as_person(data, uow.config.directory, p) for p, data in found.items()}

    return await excluded_by(
        lookup,
        uow.keys.reporter_of,
        uow.config.policy,
        incident_id,
        entries,
        known,
        reader=reader,
        line=line,
    )


# ------------------------------------------------------------------------- own events


async def record_own(
    uow: AuditUnitOfWork,
    stream: str,
    subject: str,
    data: OwnEvent,
    principal: str,
    correlationid: str | None = None,
) -> None:
    """Append one event of audit's own on `stream` (in the open unit of work).

    Published like every stored event, so it reaches the ledger and is signed with the
    rest. The stream is locked first, so two requests at once both append.
    """
    event = make_event(
        data.TYPE,
        subject=subject,
        data=data,
        source=uow.config.source,
        time=datetime.now(UTC),
        actor=principal,
        correlationid=correlationid,
        traceparent=current_traceparent(),
    )
    await uow.ledger.lock_stream(stream)
    version = (await uow.recorder.stream_versions([stream])).get(stream, 0)
    await uow.recorder.append_streams(
        [(stream, version, [event])], topic_prefix=uow.config.topic_prefix
    )


async def _about(
    uow: AuditUnitOfWork,
    kind: str,
    entries: Sequence[LedgerEvent],
    data: OwnEvent,
    principal: str,
) -> None:
    """Record an event about the incident on `<kind>:<incident id>`, in its correlation."""
    first = entries[0].envelope
    correlation = first.correlationid or first.id
    await record_own(uow, f"{kind}:{first.subject}", first.subject, data, principal, correlation)


# ------------------------------------------------------------------------- incident reads


@dataclass(frozen=True)
class ReadIncident:
    """An incident's entries for a principal, checked and recorded.

    `route` names the read in `audit.read.recorded.v1`; `action` the refused action in
    `incident.access.denied.v1`. With `content`, the reader's `incident.viewed.v1` is
    recorded and the report content opened; without it, everything stays sealed.
    """

    principal: str
    incident_id: str
    route: str = "console"
    content: bool = False
    allowed: frozenset[str] = AUDIT_ROLES
    action: str = "view"


@dataclass(frozen=True)
class IncidentRead:
    principal: str
    roles: frozenset[str]
    entries: list[LedgerEvent] = field(default_factory=list)


async def read_incident(query: ReadIncident, uow: AuditUnitOfWork) -> IncidentRead:
    """`Forbidden` without an allowed role; `NotFound` for an incident the ledger does not
    know or that excludes the reader (the refusal recorded first); else the entries,
    after the read (and with content the view) is recorded."""
    principal, incident_id = query.principal, query.incident_id
    async with uow:
        roles = await _authorise(uow, principal, query.allowed)
        entries = await uow.ledger.incident_entries(incident_id)
        if not entries:
            raise NotFound
        refused = principal in await _excluded(uow, incident_id, entries, principal)
        if refused:
            reason = f"excluded:{CONFLICT}"
            denied = AccessDenied(principal=principal, action=query.action, reason=reason)
            await _about(uow, "audit-denied", entries, denied, principal)
        else:
            read = ReadRecorded(principal=principal, route=query.route, incident_id=incident_id)
            correlation = await uow.ledger.first_report(incident_id)
            stream = f"audit-reads:{principal}"
            await record_own(uow, stream, incident_id, read, principal, correlation)
            digest = fold(incident_id, [e.envelope for e in entries]).report_digest
            if query.content and digest is not None:  # no report yet: nothing to open
                viewed = Viewed(principal=principal, report_digest=digest)
                await _about(uow, "audit-views", entries, viewed, principal)
            if query.content:
                entries = await _opened(uow, incident_id, entries, READER_FIELDS)
    if refused:  # after the commit: the refusal is in the ledger
        raise NotFound
    return IncidentRead(principal, roles, entries)


async def _opened(
    uow: AuditUnitOfWork, incident_id: str, entries: list[LedgerEvent], fields: frozenset[str]
) -> list[LedgerEvent]:
    """The entries with the sealed `fields` opened (an allow-list; only after the checks)."""
    events = [e.envelope for e in entries]
    opened = await uow.keys.open_events(incident_id, events, fields=fields)
    return [replace(e, envelope=o) for e, o in zip(entries, opened, strict=True)]


@dataclass(frozen=True)
class KnowledgeQuery:
    """Who knew the incident at `as_of` (ledger time)."""

    principal: str
    incident_id: str
    as_of: datetime


async def knowledge(query: KnowledgeQuery, uow: AuditUnitOfWork) -> Knowledge:
    """For auditors and identity custodians. The reporter appears as `reporter`, or by
    person id to an identity custodian: that answer is recorded first, as
    `incident.identity.disclosed.v1`, so the custodian appears in later answers."""
    read = await read_incident(
        ReadIncident(
            query.principal,
            query.incident_id,
            route="knowledge",
            allowed=KNOWLEDGE_ROLES,
            action="knowledge",
        ),
        uow,
    )
    if IDENTITY_CUSTODIAN not in read.roles:
        return knowledge_as_of(query.incident_id, read.entries, query.as_of)
    async with uow:
        key = await uow.keys.get(query.incident_id)
        if key is not None:  # erased: there is no identity left to disclose
            sealed = key.seal("reason", KNOWLEDGE_REASON)
            data = IdentityDisclosed(principal=query.principal, reason=sealed)
            await _about(uow, "disclosures", read.entries, data, query.principal)
        opened = await _opened(uow, query.incident_id, read.entries, CUSTODIAN_FIELDS)
    return knowledge_as_of(query.incident_id, opened, query.as_of, reveal_reporter=key is not None)


@dataclass(frozen=True)
class ListIncidents:
    """The console's incident list for a principal: filtered, fifty a page."""

    principal: str
    filters: Filters = field(default_factory=Filters)
    before: int | None = None
    after: int | None = None


@dataclass(frozen=True)
class IncidentList:
    page: Page
    options: dict[str, list[str]]
    behind: int
    """Ledger entries the index has not folded yet."""


async def list_incidents(query: ListIncidents, uow: AuditUnitOfWork) -> IncidentList:
    """A page of the index without the incidents that exclude the principal, with the
    filter menus and the index's lag.

    The index hides what its rows say (triage's `excluded`, the accused); each incident
    it lists is then judged as its page judges it (`_excluded`: the accused's line in
    the directory, the reporter, the named, and whether the reader answers to an
    accused, which triage checks only on the people it may route to). The page is
    filled from the rows left and its links are theirs (`visible_page`), and the menus
    offer the values of incidents the reader may see (`shown_options`): nothing in the
    answer depends on an incident hidden from the reader (review L1)."""
    principal = query.principal
    async with uow:

        async def fetch(filters: Filters, before: int | None, after: int | None) -> Page:
            return await uow.index.page(filters, before=before, after=after, hidden_from=principal)

        async def hidden(rows: list[dict[str, Any]]) -> set[str]:
            ids = [str(row["incident_id"]) for row in rows]
            return await _excluding(uow, await uow.ledger.entries_of(ids, JUDGED_TYPES), principal)

        listed = partial(fetch, query.filters)
        page = await visible_page(listed, hidden, before=query.before, after=query.after)
        options = await shown_options(await uow.index.facets(), page.rows, fetch, hidden)
        return IncidentList(page, options, await uow.index.lag())


# ------------------------------------------------------------------------- the raw ledger


@dataclass(frozen=True)
class ReadEntries:
    """Ledger entries in [start, end) (at most `MAX_ENTRIES`; `end` defaults to that)."""

    principal: str
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class Beyond:
    """What the database holds outside the entries a read of the whole ledger walks, told
    with the empty range that ends such a walk: the first entry stored past that range
    (a row added past a gap, which a walk never reaches, yet reads by incident or person
    find), and `ledger_people` rows at an index with no entry."""

    next_index: int | None
    stray_people: list[tuple[str, int]]


STRAYS_SHOWN = 10
"""`ledger_people` rows without an entry an empty range's answer names at most."""


@dataclass(frozen=True)
class EntriesRead:
    rows: list[StoredRow]
    withheld: frozenset[int]
    """Indexes of entries of incidents that exclude the reader: served without content."""
    beyond: Beyond | None = None
    """For a range that holds no entry (the end of a walk): what lies beyond it."""


async def read_entries(query: ReadEntries, uow: AuditUnitOfWork) -> EntriesRead:
    """The rows, guarded as the timeline is; the read is recorded (with the withheld
    incidents) before the answer."""
    start, principal = query.start, query.principal
    end = start + MAX_ENTRIES if query.end is None else query.end
    async with uow:
        await _authorise(uow, principal, AUDIT_ROLES)
        if end < start:
            raise Invalid("Invalid range", "end must not be below start.")
        if end - start > MAX_ENTRIES:
            raise Invalid("Range too large", f"At most {MAX_ENTRIES} entries per request.")
        # the entry past the range first: an append between the two reads lands in the
        # range (indexes are contiguous), so an empty range never sees it beyond
        after = await uow.ledger.first_from(end)
        rows = await uow.ledger.rows(start, end)
        beyond = None
        if not rows:
            beyond = Beyond(after, await uow.ledger.stray_people(STRAYS_SHOWN))
        about = {row.idx: leaf_about(row.leaf) for row in rows}
        incidents = await _excluded_in_range(uow, principal, rows, about)
        hidden = {idx for idx, its in about.items() if any(a.incident in incidents for a in its)}
        data = ReadRecorded(
            principal=principal, route="entries", start=start, end=end, withheld_entries=len(hidden)
        )
        await record_own(uow, f"audit-reads:{principal}", LEDGER_SUBJECT, data, principal)
    return EntriesRead(rows, frozenset(hidden), beyond)


async def _excluded_in_range(
    uow: AuditUnitOfWork,
    principal: str,
    rows: Sequence[StoredRow],
    about: Mapping[int, list[About]],
) -> frozenset[str]:
    """Of the incidents the leaves of a range are about (`about`, by index: `leaf_about`
    reads each leaf, never the `incident_id` column, which a superuser can point
    elsewhere, review D3), those that exclude `principal`, each judged on all its
    entries (not only those in the range), as the timeline judges it, with its own
    entries of the range that the column-selected read missed put back (a report whose
    column was pointed away still excludes whom it names). And, from every reader, of
    those an entry must be judged with (an incident's own event, or a copy
    `carried_incident` finds), `UNTOLD` and those no valid entry lets judge (a copy is
    never trusted to say who is excluded: an incident refused in full, during a key
    rotation say, is withheld from everyone)."""
    subjects = {a.incident for its in about.values() for a in its}
    if not subjects:
        return frozenset()
    judged = await uow.ledger.entries_of(sorted(subjects))
    unread = _unread_own(rows, about, judged)
    for incident, missed in unread.items():
        judged[incident] = sorted([*judged.get(incident, []), *missed], key=lambda e: e.index)
    unjudged = {
        a.incident
        for its in about.values()
        for a in its
        if a.judged and (a.incident == UNTOLD or not judged.get(a.incident))
    }
    return frozenset(unjudged | await _excluding(uow, judged, principal))


def _unread_own(
    rows: Sequence[StoredRow],
    about: Mapping[int, list[About]],
    judged: Mapping[str, Sequence[LedgerEvent]],
) -> dict[str, list[LedgerEvent]]:
    """By incident, its own entries among `rows` that `judged` (read by the column) lacks."""
    read = {i: {e.index for e in entries} for i, entries in judged.items()}
    unread: dict[str, list[LedgerEvent]] = {}
    for row in rows:
        for a in about.get(row.idx, ()):
            if a.kind == OWN and row.idx not in read.get(a.incident, ()):
                try:
                    envelope = parse_envelope(decode_leaf(row.leaf)["event"])
                except InvalidEvent:  # an event no read can fold: judged as it stands
                    continue
                entry = LedgerEvent(row.idx, row.recorded_at, envelope)
                unread.setdefault(a.incident, []).append(entry)
    return unread


async def _excluding(
    uow: AuditUnitOfWork, judged: Mapping[str, Sequence[LedgerEvent]], principal: str
) -> set[str]:
    """The incidents of `judged` (each with its entries) that exclude `principal`, the
    people looked up once for them all."""
    known: dict[str, Person | None] = {}
    return {
        incident
        for incident, entries in judged.items()
        if principal in await _excluded(uow, incident, entries, principal, known)
    }


# ------------------------------------------------------------------------- proofs and heads


@dataclass(frozen=True)
class InclusionQuery:
    index: int
    tree_size: int


@dataclass(frozen=True)
class InclusionProof:
    """The entry's leaf hash and the audit path to the root of the queried tree."""

    leaf_hash: bytes
    proof: list[bytes]


async def inclusion(query: InclusionQuery, uow: AuditUnitOfWork) -> InclusionProof:
    """RFC 9162 inclusion proof of entry `index` in the tree of `tree_size` entries (run
    it on a snapshot: the size checked and the proof read at the same instant)."""
    if query.index >= query.tree_size:
        raise Invalid("Invalid proof request", "index must be below tree_size.")
    async with uow:
        await _within(uow, query.tree_size)
        proof = await uow.ledger.inclusion_proof(query.index, query.tree_size)
        hashed = await uow.ledger.leaf_hash(query.index)
    return InclusionProof(hashed, proof)


@dataclass(frozen=True)
class ConsistencyQuery:
    first: int
    second: int


async def consistency(query: ConsistencyQuery, uow: AuditUnitOfWork) -> list[bytes]:
    """RFC 9162 proof that the tree of `first` entries is a prefix of that of `second`."""
    if query.first > query.second:
        raise Invalid("Invalid proof request", "first must not exceed second.")
    async with uow:
        await _within(uow, query.second)
        return await uow.ledger.consistency_proof(query.first, query.second)


async def _within(uow: AuditUnitOfWork, size: int) -> None:
    current = await uow.ledger.size()
    if size > current:
        raise Invalid(
            "Tree size too large", f"The ledger has {current} entries.", tree_size=current
        )


@dataclass(frozen=True)
class EventProofQuery:
    event_id: str


@dataclass(frozen=True)
class EventProof:
    """Where an event is, and the proof that the latest signed head contains it."""

    row: StoredRow
    entry: dict[str, Any]
    """The leaf's fields other than the event (the caller holds the event)."""
    head: Head
    proof: list[bytes]


NO_SUCH_EVENT = "No such event under a signed head."


async def event_proof(query: EventProofQuery, uow: AuditUnitOfWork) -> EventProof:
    """`NotFound` unless the event is in the ledger under the latest signed head."""
    try:
        wanted = uuid.UUID(query.event_id)
    except ValueError:
        raise NotFound(NO_SUCH_EVENT) from None
    async with uow:
        row = await uow.ledger.entry_of_event(wanted)
        head = await uow.ledger.latest_head()
        if row is None or head is None or row.idx >= head.tree_size:
            raise NotFound(NO_SUCH_EVENT)
        proof = await uow.ledger.inclusion_proof(row.idx, head.tree_size)
    entry = {k: v for k, v in decode_leaf(row.leaf).items() if k != "event"}
    return EventProof(row, entry, head, proof)


@dataclass(frozen=True)
class HeadsQuery:
    """Every signed head, by tree size; or only the latest (`NotFound` if none yet)."""

    latest: bool = False


async def signed_heads(query: HeadsQuery, uow: AuditUnitOfWork) -> list[Head]:
    async with uow:
        if not query.latest:
            return await uow.ledger.all_heads()
        head = await uow.ledger.latest_head()
    if head is None:
        raise NotFound("The ledger has not signed a tree head yet.", "No signed head yet")
    return [head]
