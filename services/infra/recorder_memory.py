"""The recorder port in memory: `InMemoryStore`, `InMemoryRecorder`, `InMemoryUnitOfWork`.

The same behaviour as `PostgresRecorder` / `PostgresUnitOfWork` (the contract suite,
`tests/contract/test_recorder.py`, runs on both), kept in dictionaries, so a use case
can be tested in milliseconds without PostgreSQL:

    store = InMemoryStore()
    async with InMemoryUnitOfWork(store) as uow:
        await uow.recorder.append_streams([("inc-1", 0, [event])])

A unit of work stages what its block does and applies it to the store when the block
ends cleanly; an exception discards all of it. Events are signed as stored and queued
exactly as `services.infra.eventstore` signs them, so the outbox holds the bytes the
relay would publish.

Concurrent units of work on one store behave as PostgreSQL's transactions do for the
contract: each sees what others committed and its own changes. A unit that writes
events or outbox rows holds the store's counters until it ends (PostgreSQL locks the
counter rows), and one that tracks an input or remembers a digest holds that key; a
second unit that needs what another open unit holds waits for it to end, then checks
again (so a stream moved by the other one is a `ConcurrencyError`). Waiting for a unit
of the same asyncio task, or for one that waits for this one, could never end
(PostgreSQL would hang, or report a deadlock): that raises `RuntimeError` instead.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Self

from services.domain.events import parse_envelope
from services.infra.eventstore import (
    ConcurrencyError,
    DuplicateEventError,
    StoredEvent,
    queued,
    signed,
    signed_rows,
)
from services.infra.recorder import Append, OutboxRow, Recorder, TrackedInput

__all__ = ["InMemoryRecorder", "InMemoryStore", "InMemoryUnitOfWork", "OutboxRecord"]

_EVENTS, _OUTBOX = ("counter", "events"), ("counter", "outbox")


@dataclass(frozen=True)
class _Row:
    """An event as stored: its place and the signed bytes (parsed anew on each read)."""

    position: int
    stream_id: str
    version: int
    event_id: str
    body: bytes

    def stored(self) -> StoredEvent:
        return StoredEvent(self.position, self.stream_id, self.version, parse_envelope(self.body))


@dataclass(frozen=True)
class OutboxRecord:
    """A row queued for the relay, as the `outbox` table holds it."""

    position: int
    event_id: str
    topic: str
    key: str
    value: bytes
    headers: list[tuple[str, str]]


@dataclass
class InMemoryStore:
    """What the event store, outbox, tracking and digest tables hold (committed state).

    Read it in tests (`events`, `outbox`, `tracking`, `digests`); write it only through a
    unit of work.
    """

    events: list[_Row] = field(default_factory=list)
    """Every event, in position order."""
    outbox: list[OutboxRecord] = field(default_factory=list)
    """Every queued row, in position order."""
    tracking: dict[tuple[str, str], tuple[str, int, int]] = field(default_factory=dict)
    """(consumer, event key) -> (topic, partition, offset) of each processed input."""
    digests: dict[str, bytes] = field(default_factory=dict)
    """Event id -> the content digest first accepted under it."""
    versions: set[tuple[str, int]] = field(default_factory=set, repr=False)
    """(stream id, version) of every event (the primary key)."""
    event_ids: set[str] = field(default_factory=set, repr=False)
    """The id of every event (the unique index)."""
    locks: dict[Hashable, InMemoryUnitOfWork] = field(default_factory=dict, repr=False)
    """What open units of work hold (counters, tracking keys, digest ids)."""


class InMemoryUnitOfWork:
    """One transaction on an `InMemoryStore`: `async with uow:` commits or rolls back.

    A service's own in-memory unit of work extends this (its repositories beside
    `recorder`), applying their changes in `commit` and dropping them in `rollback`
    (both called on a clean exit, `rollback` alone on an exception), and locking with
    `hold` / `held_elsewhere`, checking `require_open`: the public names below.
    """

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self._open = False
        self._task: asyncio.Task[object] | None = None
        self._ended = asyncio.Event()
        self._waiting: InMemoryUnitOfWork | None = None
        self._events: list[_Row] = []
        self._outbox: list[OutboxRecord] = []
        self._tracking: dict[tuple[str, str], tuple[str, int, int]] = {}
        self._digests: dict[str, bytes] = {}

    @property
    def recorder(self) -> Recorder:
        self.require_open()
        return InMemoryRecorder(self)

    # What a service's own in-memory repositories build on (they take no private name):

    @property
    def is_open(self) -> bool:
        """Whether the unit is inside its `async with` block."""
        return self._open

    def require_open(self) -> None:
        """Raise `RuntimeError` outside the `async with` block (as `recorder` does)."""
        if not self._open:
            raise RuntimeError("the unit of work is not open (use `async with uow:`)")

    async def hold(self, resource: Hashable) -> None:
        """Hold `resource` (any hashable key a repository chooses: a row, an advisory
        lock) until this unit ends, waiting for another unit that holds it; a wait that
        could never end raises `RuntimeError` (see the module docstring)."""
        await self._hold(resource)

    def held_elsewhere(self, resource: Hashable) -> bool:
        """Whether another open unit holds `resource` (what `SKIP LOCKED` skips)."""
        return self.store.locks.get(resource, self) is not self

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError("this unit of work is already open")
        self._open, self._task, self._ended = True, asyncio.current_task(), asyncio.Event()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.rollback()

    def commit(self) -> None:
        """Apply the block's changes to the store (nothing here can fail half-way)."""
        store = self.store
        for row in self._events:
            store.events.append(row)
            store.versions.add((row.stream_id, row.version))
            store.event_ids.add(row.event_id)
        store.outbox.extend(self._outbox)
        store.tracking.update(self._tracking)
        store.digests.update(self._digests)
        self._clear()

    def rollback(self) -> None:
        """Drop what the block staged and release what it held (after `commit`: only the
        latter)."""
        self._clear()
        for resource in [r for r, unit in self.store.locks.items() if unit is self]:
            del self.store.locks[resource]
        self._open = False
        self._ended.set()

    def _clear(self) -> None:
        self._events, self._outbox, self._tracking, self._digests = [], [], {}, {}

    async def _hold(self, resource: Hashable) -> None:
        """Hold a resource until this unit ends, waiting for another unit holding it."""
        while (owner := self.store.locks.get(resource, self)) is not self:
            if owner._task is asyncio.current_task() or owner._waits_for(self):
                raise RuntimeError(
                    f"{resource} is held by an open unit of work of this task, or one"
                    " waiting for this one: waiting would never end (PostgreSQL would hang"
                    " or report a deadlock)"
                )
            self._waiting = owner
            try:
                await owner._ended.wait()
            finally:
                self._waiting = None
        self.store.locks[resource] = self

    def _waits_for(self, unit: InMemoryUnitOfWork) -> bool:
        """Whether this unit waits for `unit` to end, directly or through others."""
        waiting = self._waiting
        while waiting is not None and waiting is not unit:
            waiting = waiting._waiting
        return waiting is unit


class InMemoryRecorder:
    """`Recorder` inside an `InMemoryUnitOfWork` (see the `Recorder` protocol)."""

    def __init__(self, unit: InMemoryUnitOfWork) -> None:
        self.unit = unit
        self.store = unit.store

    def _rows(self) -> list[_Row]:
        """Committed events and this unit's, in position order (this unit holds the
        counter while it has any, so its positions follow every committed one)."""
        return self.store.events + self.unit._events

    async def append_streams(self, appends: Sequence[Append], *, topic_prefix: str = "") -> None:
        rows = signed_rows(appends)
        if not rows:
            return
        await self.unit._hold(_EVENTS)
        taken = self.store.versions | {(r.stream_id, r.version) for r in self.unit._events}
        ids = self.store.event_ids | {r.event_id for r in self.unit._events}
        base = len(self._rows())
        staged: list[_Row] = []
        for stream_id, version, event, body in rows:  # refused as PostgreSQL's indexes do
            if (stream_id, version) in taken:
                raise ConcurrencyError(f"a stream moved on: {stream_id} version {version}")
            if event.id in ids:
                raise DuplicateEventError(f"event {event.id} is already stored")
            taken.add((stream_id, version))
            ids.add(event.id)
            staged.append(_Row(base + len(staged) + 1, stream_id, version, event.id, body))
        self.unit._events.extend(staged)
        await self._enqueue_signed(queued(rows, topic_prefix))

    async def load(self, stream_id: str) -> list[StoredEvent]:
        rows = [r for r in self._rows() if r.stream_id == stream_id]
        return [r.stored() for r in sorted(rows, key=lambda r: r.version)]

    async def stream_versions(self, stream_ids: Sequence[str]) -> dict[str, int]:
        current: dict[str, int] = {}
        for row in self._rows():
            current[row.stream_id] = max(current.get(row.stream_id, 0), row.version)
        return {s: current.get(s, 0) for s in stream_ids}

    async def read_all(self, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        return [r.stored() for r in self._rows() if r.position > after][:limit]

    async def track_each(self, consumer: str, inputs: Sequence[TrackedInput]) -> list[bool]:
        fresh: list[bool] = []
        for key, topic, partition, offset in inputs:
            await self.unit._hold(("tracking", consumer, key))
            seen = (consumer, key) in self.store.tracking or (consumer, key) in self.unit._tracking
            if not seen:
                self.unit._tracking[consumer, key] = (topic, partition, offset)
            fresh.append(not seen)
        return fresh

    async def replayed(self, digests: Sequence[tuple[str, bytes]]) -> list[bool]:
        answers: list[bool] = []
        for event_id, digest in digests:
            await self.unit._hold(("digest", event_id))
            known = self.unit._digests.get(event_id, self.store.digests.get(event_id))
            if known is None:
                self.unit._digests[event_id] = known = digest
            answers.append(known != digest)
        return answers

    async def correlation_of(self, stream_id: str) -> str | None:
        events = await self.load(stream_id)
        if not events:
            return None
        first = events[0].envelope
        return first.correlationid or first.id

    async def enqueue(self, rows: Sequence[OutboxRow]) -> None:
        await self._enqueue_signed([(i, t, k, signed(v), h) for i, t, k, v, h in rows])

    async def _enqueue_signed(self, rows: Sequence[OutboxRow]) -> None:
        if not rows:
            return
        await self.unit._hold(_OUTBOX)
        base = len(self.store.outbox) + len(self.unit._outbox)
        self.unit._outbox.extend(
            OutboxRecord(base + n, str(uuid.UUID(i)), t, k, v, list(h))
            for n, (i, t, k, v, h) in enumerate(rows, start=1)
        )
