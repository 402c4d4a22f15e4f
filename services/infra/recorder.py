"""The recorder port: what a use case may do with the event store, and a unit of work.

A use case (`services/<service>/usecases.py`) never touches asyncpg: it takes a
`UnitOfWork`, opens it (`async with uow:`), works through `uow.recorder` (and the
service's own repositories, which a service's unit of work adds beside it), and the
unit of work commits on a clean exit and rolls everything back on an exception.

Two implementations pass the same contract suite (`tests/contract/test_recorder.py`):

- `PostgresRecorder` / `PostgresUnitOfWork`: the event store, outbox and tracking
  tables of `services.infra.eventstore`, in one PostgreSQL transaction;
- `InMemoryRecorder` / `InMemoryUnitOfWork` (`services.infra.recorder_memory`): the same
  behaviour in dictionaries, for use-case tests that run in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

import asyncpg
from asyncpg.transaction import Transaction

from services.domain.envelope import Envelope
from services.infra import eventstore
from services.infra.eventstore import ConcurrencyError, DuplicateEventError, StoredEvent

__all__ = [
    "ConcurrencyError",
    "DuplicateEventError",
    "OutboxRow",
    "PostgresRecorder",
    "PostgresUnitOfWork",
    "Recorder",
    "StoredEvent",
    "TrackedInput",
    "UnitOfWork",
]

Append = tuple[str, int, Sequence[Envelope]]
"""(stream id, the version the caller decided on, the events to append after it)."""
TrackedInput = tuple[str, str, int, int]
"""(event key, topic, partition, offset) of a consumed input."""
OutboxRow = tuple[str, str, str, bytes, list[tuple[str, str]]]
"""(event id, topic, key, value, headers) queued for the relay."""


class Recorder(Protocol):
    """The event store, outbox and consumer tracking of one service, inside a unit of work.

    Semantics (the contract suite checks each on both implementations):

    - `append_streams` stores each stream's events at `expected + 1, expected + 2, ...`
      and queues them on their catalog topics (prefixed); if any stream is no longer at
      its expected version nothing is stored and `ConcurrencyError` is raised; an event
      id stored before raises `DuplicateEventError`; a type outside the catalog raises
      `ValueError`. Positions grow in commit order.
    - `load` gives a stream's events in version order; `stream_versions` the current
      version of each stream asked for (0 for none); `read_all` events after a global
      position, in position order.
    - `track_each` answers per input whether it is to be processed (its key not seen by
      this consumer before, nor earlier in the same call).
    - `replayed` answers per (event id, digest) whether the id came before with another
      digest.
    - `correlation_of` is the correlation id of a stream's first event (its own id when
      it has none); None for an empty stream.
    - `enqueue` queues raw rows for the relay (signed when they are catalog events).
    """

    async def append_streams(
        self, appends: Sequence[Append], *, topic_prefix: str = ""
    ) -> None: ...

    async def load(self, stream_id: str) -> list[StoredEvent]: ...

    async def stream_versions(self, stream_ids: Sequence[str]) -> dict[str, int]: ...

    async def read_all(self, after: int = 0, limit: int = 1000) -> list[StoredEvent]: ...

    async def track_each(self, consumer: str, inputs: Sequence[TrackedInput]) -> list[bool]: ...

    async def replayed(self, digests: Sequence[tuple[str, bytes]]) -> list[bool]: ...

    async def correlation_of(self, stream_id: str) -> str | None: ...

    async def enqueue(self, rows: Sequence[OutboxRow]) -> None: ...


class UnitOfWork(Protocol):
    """One transaction: `async with uow:` commits on a clean exit, rolls back on error.

    `recorder` is only valid inside the block. A service's own unit of work extends this
    with its repositories (`services/<service>/usecases.py` names them).
    """

    @property
    def recorder(self) -> Recorder: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class PostgresRecorder:
    """`Recorder` on a connection that is inside a transaction (`services.infra.eventstore`)."""

    def __init__(self, conn: asyncpg.Connection, *, savepoint: bool = True) -> None:
        self.conn = conn
        self.savepoint = savepoint

    async def append_streams(self, appends: Sequence[Append], *, topic_prefix: str = "") -> None:
        await eventstore.append_streams(
            self.conn, appends, topic_prefix=topic_prefix, savepoint=self.savepoint
        )

    async def load(self, stream_id: str) -> list[StoredEvent]:
        return await eventstore.load(self.conn, stream_id)

    async def stream_versions(self, stream_ids: Sequence[str]) -> dict[str, int]:
        return await eventstore.stream_versions(self.conn, stream_ids)

    async def read_all(self, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        return await eventstore.read_all(self.conn, after, limit)

    async def track_each(self, consumer: str, inputs: Sequence[TrackedInput]) -> list[bool]:
        return await eventstore.track_each(self.conn, consumer, inputs)

    async def replayed(self, digests: Sequence[tuple[str, bytes]]) -> list[bool]:
        return await eventstore.replayed(self.conn, digests)

    async def correlation_of(self, stream_id: str) -> str | None:
        return await eventstore.correlation_of(self.conn, stream_id)

    async def enqueue(self, rows: Sequence[OutboxRow]) -> None:
        await eventstore.enqueue(self.conn, rows)


class PostgresUnitOfWork:
    """A unit of work on a pool: a connection and a transaction per `async with`.

    `conn` is there for a service's own PostgreSQL repositories (its projections), which
    must run in the same transaction; use cases themselves never use it.
    """

    def __init__(self, pool: asyncpg.Pool, *, savepoint: bool = True) -> None:
        self.pool = pool
        self.savepoint = savepoint
        self._conn: asyncpg.Connection | None = None
        self._transaction: Transaction | None = None

    @property
    def conn(self) -> asyncpg.Connection:
        if self._conn is None:
            raise RuntimeError("the unit of work is not open (use `async with uow:`)")
        return self._conn

    @property
    def recorder(self) -> Recorder:
        return PostgresRecorder(self.conn, savepoint=self.savepoint)

    async def __aenter__(self) -> Self:
        if self._conn is not None:
            raise RuntimeError("this unit of work is already open")
        conn = await self.pool.acquire()
        try:
            transaction = conn.transaction()
            await transaction.start()
        except BaseException:
            await self.pool.release(conn)
            raise
        self._conn, self._transaction = conn, transaction
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        conn, transaction = self._conn, self._transaction
        self._conn = self._transaction = None
        assert conn is not None and transaction is not None
        try:
            if exc_type is None:
                await transaction.commit()
            else:
                await transaction.rollback()
        finally:
            await self.pool.release(conn)


R = TypeVar("R")


class OnConnection(Generic[R]):
    """A repository of a `PostgresUnitOfWork` subclass, made on the unit's connection
    each time it is read: `decisions = OnConnection(PostgresDecisions)` in the class
    body gives `uow.decisions` (inside `async with` only, as `conn`)."""

    def __init__(self, make: Callable[[asyncpg.Connection], R]) -> None:
        self.make = make

    def __get__(self, uow: PostgresUnitOfWork, owner: type[PostgresUnitOfWork]) -> R:
        return self.make(uow.conn)
