"""Audit's unit of work on PostgreSQL: the recorder, the ledger and the keys on one
connection, in one transaction (`services.audit.usecases.AuditUnitOfWork`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Self

import asyncpg

from services.audit.ledger import PostgresLedger
from services.audit.ui_index import PostgresConsoleIndex
from services.audit.usecases import AuditConfig
from services.domain.envelope import Envelope
from services.infra.crypto import IncidentKey
from services.infra.keystore import KeyStore
from services.infra.recorder import PostgresUnitOfWork

Isolation = Literal["read_committed", "repeatable_read", "serializable"]


class PostgresKeys:
    """`Keys` on the key store, through the unit of work's connection."""

    def __init__(self, store: KeyStore, conn: asyncpg.Connection) -> None:
        self.store = store
        self.conn = conn

    async def get(self, incident_id: str) -> IncidentKey | None:
        return await self.store.get(self.conn, incident_id)

    async def reporter_of(self, incident_id: str, events: Sequence[Envelope]) -> str | None:
        return await self.store.reporter_of(self.conn, incident_id, events)

    async def open_events(
        self, incident_id: str, events: Sequence[Envelope], *, fields: frozenset[str]
    ) -> list[Envelope]:
        return await self.store.open_events(self.conn, incident_id, events, fields=fields)


class PostgresAuditUnitOfWork(PostgresUnitOfWork):
    """`AuditUnitOfWork` on a pool; `isolation="repeatable_read"` for answers that must
    read one snapshot (a proof and the size it is checked against)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: AuditConfig,
        keys: KeyStore,
        *,
        isolation: Isolation = "read_committed",
    ) -> None:
        super().__init__(pool)
        self.config = config
        self._keys = keys
        self.isolation = isolation

    @property
    def ledger(self) -> PostgresLedger:
        return PostgresLedger(self.conn)

    @property
    def keys(self) -> PostgresKeys:
        return PostgresKeys(self._keys, self.conn)

    @property
    def index(self) -> PostgresConsoleIndex:
        return PostgresConsoleIndex(self.conn)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        if self.isolation != "read_committed":  # before any query: the snapshot is taken then
            level = self.isolation.replace("_", " ").upper()
            try:
                await self.conn.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
            except BaseException as exc:
                await self.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return self
