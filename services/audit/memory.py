"""Audit's unit of work in memory, for use-case tests that run in milliseconds.

`InMemoryAuditUnitOfWork` extends the recorder's `InMemoryUnitOfWork` with the ledger
(`InMemoryLedger`, rows kept in an `AuditMemory`) and the incidents' keys
(`InMemoryKeys`). Ledger rows a block writes are staged and applied on a clean exit,
dropped on an exception, as the recorder's are. Appends hold the ledger's tail until
the block ends, as PostgreSQL's row lock does.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.audit.heads import Head
from services.audit.indexed import Indexed
from services.audit.ledger import (
    PERSON_EVENTS,
    LedgerRow,
    StoredRow,
    chunk_people,
    decode_leaf,
    fold_person,
    is_incident_event,
)
from services.audit.merkle import MemoryTree, MerkleFrontier
from services.audit.ui_index import Filters, Page
from services.audit.usecases import AuditConfig
from services.domain.envelope import Envelope
from services.domain.events import (
    InvalidEvent,
    PeopleImported,
    PersonUpserted,
    ReportSubmitted,
    parse_envelope,
)
from services.domain.knowledge import LedgerEvent
from services.infra.crypto import IncidentKey
from services.infra.recorder_memory import InMemoryStore, InMemoryUnitOfWork

_TAIL = ("ledger", "tail")


@dataclass
class AuditMemory:
    """What audit's own tables hold: the ledger's rows (in index order) and signed heads."""

    rows: list[LedgerRow] = field(default_factory=list)
    heads: list[Head] = field(default_factory=list)


def _stored(row: LedgerRow, people: Sequence[tuple[str, str | None]] = ()) -> StoredRow:
    indexed = Indexed(row.valid, row.event_id, row.incident_id, row.event_type)
    return StoredRow(
        row.idx,
        row.recorded_at,
        row.topic,
        row.partition,
        row.offset,
        row.leaf,
        row.leaf_hash,
        indexed,
        tuple(people),
    )


def _entry(row: LedgerRow) -> LedgerEvent:
    envelope = parse_envelope(decode_leaf(row.leaf)["event"])
    return LedgerEvent(index=row.idx, recorded_at=row.recorded_at, envelope=envelope)


def _about_incident(row: LedgerRow) -> bool:
    return row.valid and is_incident_event(row.event_type)


class InMemoryLedger:
    """`Ledger` (services.audit.usecases) over the committed rows and the block's own."""

    def __init__(self, unit: InMemoryAuditUnitOfWork) -> None:
        self.unit = unit

    @property
    def _rows(self) -> list[LedgerRow]:
        return [*self.unit.memory.rows, *self.unit.staged]

    async def lock_tail(self) -> tuple[int, datetime]:
        await self.unit.hold(_TAIL)
        rows = self._rows
        now = datetime.now(UTC)
        return len(rows) - 1, max(now, rows[-1].recorded_at) if rows else now

    async def leaves(self, record_keys: Sequence[str]) -> dict[str, bytes]:
        wanted = set(record_keys)
        return {r.record_key: r.leaf for r in self._rows if r.record_key in wanted}

    async def known(self, record_keys: Sequence[str]) -> set[str]:
        return set(await self.leaves(record_keys))

    async def frontier(self, size: int) -> MerkleFrontier:
        return MerkleFrontier.from_leaf_hashes(r.leaf_hash for r in self._rows[:size])

    async def write(
        self, rows: Sequence[LedgerRow], nodes: Sequence[tuple[int, int, bytes]]
    ) -> None:
        if rows[0].idx != len(self._rows):
            raise RuntimeError("ledger rows must follow the tail (call lock_tail first)")
        self.unit.staged.extend(rows)

    async def size(self) -> int:
        return len(self._rows)

    async def incident_entries(self, incident_id: str) -> list[LedgerEvent]:
        return [
            _entry(r) for r in self._rows if r.incident_id == incident_id and _about_incident(r)
        ]

    async def person_data(self, person_id: str) -> dict[str, Any] | None:
        rows = self._rows
        chunks = {idx for found, idx, _ in chunk_people(rows) if found == person_id}
        mine = [
            r
            for r in rows
            if (r.incident_id == person_id and r.valid and r.event_type in PERSON_EVENTS)
            or r.idx in chunks
        ]
        wholes = [r.idx for r in mine if r.event_type in (PersonUpserted.TYPE, PeopleImported.TYPE)]
        since = max(wholes, default=0)
        return fold_person(
            person_id, [(r.event_type or "", r.leaf) for r in mine if r.idx >= since]
        )

    async def line_data(
        self, person_ids: Sequence[str], most: int
    ) -> dict[str, dict[str, Any] | None]:
        found: dict[str, dict[str, Any] | None] = {}
        for start in person_ids:
            current: str | None = start
            for _ in range(most + 1):
                if current is None or current in found:
                    break
                data = await self.person_data(current)
                if data is None:
                    break
                found[current] = data
                current = data.get("manager_id")
        return found

    async def rows(self, start: int, end: int) -> list[StoredRow]:
        rows = self._rows[start:end]
        people: dict[int, list[tuple[str, str | None]]] = {}
        for person, idx, record in sorted(chunk_people(rows), key=lambda p: (p[1], p[0])):
            people.setdefault(idx, []).append((person, record))
        return [_stored(r, people.get(r.idx, ())) for r in rows]

    async def first_from(self, index: int) -> int | None:
        return min((r.idx for r in self._rows if r.idx >= index), default=None)

    async def stray_people(self, most: int) -> list[tuple[str, int]]:
        return []  # its people index is derived from its rows as they are read

    async def entries_of(
        self, incident_ids: Sequence[str], families: Sequence[str] | None = None
    ) -> dict[str, list[LedgerEvent]]:
        out: dict[str, list[LedgerEvent]] = {}
        for row in self._rows:
            incident = row.incident_id
            if families is not None and not (row.event_type or "").startswith(tuple(families)):
                continue
            if incident is not None and incident in incident_ids and _about_incident(row):
                try:
                    out.setdefault(incident, []).append(_entry(row))
                except (InvalidEvent, ValueError, TypeError, KeyError):
                    continue
        return out

    async def first_report(self, incident_id: str) -> str | None:
        for row in self._rows:
            if (
                row.incident_id == incident_id
                and row.valid
                and row.event_type == ReportSubmitted.TYPE
            ):
                return row.event_id
        return None

    async def entry_of_event(self, event_id: uuid.UUID) -> StoredRow | None:
        for row in self._rows:
            if row.valid and row.event_id == str(event_id):
                return _stored(row)
        return None

    async def leaf_hash(self, index: int) -> bytes:
        return self._rows[index].leaf_hash

    def _tree(self) -> MemoryTree:
        return MemoryTree(r.leaf_hash for r in self._rows)

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self._tree().inclusion_proof(index, size)

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self._tree().consistency_proof(first, second)

    async def latest_head(self) -> Head | None:
        heads = await self.all_heads()
        return heads[-1] if heads else None

    async def all_heads(self) -> list[Head]:
        return sorted(self.unit.memory.heads, key=lambda h: h.tree_size)

    async def lock_stream(self, stream: str) -> None:
        await self.unit.hold(("stream", stream))


@dataclass
class InMemoryKeys:
    """`Keys`: the incidents' keys and reporters as a test sets them; opening is the
    identity (the test events carry their content in clear)."""

    keys: dict[str, IncidentKey] = field(default_factory=dict)
    reporters: dict[str, str] = field(default_factory=dict)

    async def get(self, incident_id: str) -> IncidentKey | None:
        return self.keys.get(incident_id)

    async def reporter_of(self, incident_id: str, events: Sequence[Envelope]) -> str | None:
        return self.reporters.get(incident_id)

    async def open_events(
        self, incident_id: str, events: Sequence[Envelope], *, fields: frozenset[str]
    ) -> list[Envelope]:
        return list(events)


class InMemoryConsoleIndex:
    """`ConsoleIndex` that lists nothing (the console index is a PostgreSQL projection;
    its own tests run there)."""

    async def page(
        self, filters: Filters, *, before: int | None, after: int | None, hidden_from: str
    ) -> Page:
        return Page([], None, None)

    async def facets(self) -> dict[str, list[str]]:
        return {"category": [], "severity": []}

    async def lag(self) -> int:
        return 0


class InMemoryAuditUnitOfWork(InMemoryUnitOfWork):
    """`AuditUnitOfWork` in memory: the recorder's store, audit's rows, the keys."""

    def __init__(
        self,
        config: AuditConfig,
        store: InMemoryStore | None = None,
        memory: AuditMemory | None = None,
        keys: InMemoryKeys | None = None,
    ) -> None:
        super().__init__(store if store is not None else InMemoryStore())
        self.config = config
        self.memory = memory if memory is not None else AuditMemory()
        self.keys = keys if keys is not None else InMemoryKeys()
        self.index = InMemoryConsoleIndex()
        self.staged: list[LedgerRow] = []

    @property
    def ledger(self) -> InMemoryLedger:
        self.require_open()
        return InMemoryLedger(self)

    def commit(self) -> None:
        self.memory.rows.extend(self.staged)
        self.staged = []
        super().commit()

    def rollback(self) -> None:
        self.staged = []
        super().rollback()
