"""Triage's repositories on PostgreSQL, in the transaction of a `PostgresUnitOfWork`.

`PostgresTriageUnitOfWork(pool)` is the `TriageUnitOfWork` the service runs with: the
recorder (event store, outbox, tracking) and `decisions`, `directory_log` and `policies`
(migrations/) on the same connection, so a use case commits or rolls back all of it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.infra.recorder import OnConnection, PostgresUnitOfWork
from services.triage.usecases import NewDecision, StoredDecision


def _stored(row: asyncpg.Record) -> StoredDecision:
    return StoredDecision(
        incident_id=row["incident_id"],
        report=json.loads(row["report"]),
        reporter=row["reporter"],
        policy_version=row["policy_version"],
        directory_seq=int(row["directory_seq"]),
        decided_at=row["decided_at"],
        amendments=json.loads(row["amendments"]),
        state=json.loads(row["state"]) if row["state"] is not None else None,
    )


class PostgresDecisions:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add(
        self, decisions: Sequence[NewDecision], *, directory_seq: int, decided_at: datetime
    ) -> None:
        await self.conn.execute(
            "INSERT INTO decisions (incident_id, report, reporter, policy_version,"
            " directory_seq, decided_at, state, lines_seq, written_by)"
            " SELECT i, r::jsonb, p, v, $5, $6, s::jsonb, $5, pg_current_xact_id()"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $7::text[])"
            " AS x (i, r, p, v, s)",
            [d.incident_id for d in decisions],
            [json.dumps(d.report.model_dump(mode="json")) for d in decisions],
            [d.report.reporter for d in decisions],
            [d.policy_version for d in decisions],
            directory_seq,
            decided_at,
            [json.dumps(d.state) for d in decisions],
        )
        await self.conn.execute(
            "INSERT INTO decision_lines (person_id, incident_id)"
            " SELECT * FROM unnest($1::text[], $2::text[])",
            [p for d in decisions for p in d.lines],
            [d.incident_id for d in decisions for _ in d.lines],
        )

    async def for_update(self, incident_id: str) -> StoredDecision | None:
        row = await self.conn.fetchrow(
            "SELECT * FROM decisions WHERE incident_id = $1 FOR UPDATE", incident_id
        )
        return None if row is None else _stored(row)

    async def for_update_each(self, incident_ids: Collection[str]) -> list[StoredDecision]:
        rows = await self.conn.fetch(
            "SELECT * FROM decisions WHERE incident_id = ANY($1::text[])"
            " ORDER BY incident_id FOR UPDATE",
            list(incident_ids),
        )
        return [_stored(row) for row in rows]

    async def keep_state(
        self, incident_id: str, state: dict[str, Any], *, lines: Collection[str], seq: int
    ) -> None:
        await self._keep({incident_id: lines}, json.dumps(state), seq)

    async def keep_lines(self, lines: Mapping[str, Collection[str]], *, seq: int) -> None:
        if lines:
            await self._keep(lines, None, seq)

    async def forget_lines(self, incident_ids: Collection[str]) -> None:
        if incident_ids:
            await self._keep(dict.fromkeys(incident_ids, ()), None, None)

    async def _keep(
        self, lines: Mapping[str, Collection[str]], state: str | None, seq: int | None
    ) -> None:
        """The lines of each incident, and its state (None: as it is), in one statement:
        the lines not kept any more deleted, the new ones added (both CTEs see the rows
        as they were before it)."""
        await self.conn.execute(
            "WITH new (incident_id, person_id) AS"
            " (SELECT * FROM unnest($1::text[], $2::text[])),"
            " kept AS (UPDATE decisions SET state = coalesce($3::jsonb, state),"
            " lines_seq = $4, written_by = pg_current_xact_id()"
            " WHERE incident_id = ANY($5::text[]) RETURNING incident_id),"
            " gone AS (DELETE FROM decision_lines AS l WHERE l.incident_id = ANY($5::text[])"
            " AND NOT EXISTS (SELECT FROM new WHERE new.incident_id = l.incident_id"
            " AND new.person_id = l.person_id))"
            " INSERT INTO decision_lines (person_id, incident_id)"
            " SELECT new.person_id, new.incident_id FROM new JOIN kept USING (incident_id)"
            " ON CONFLICT DO NOTHING",
            [i for i, people in lines.items() for _ in people],
            [p for people in lines.values() for p in people],
            state,
            seq,
            list(lines),
        )

    async def states(self) -> list[tuple[str, dict[str, Any]]]:
        rows = await self.conn.fetch(
            "SELECT incident_id, state FROM decisions WHERE state IS NOT NULL ORDER BY incident_id"
        )
        return [(row["incident_id"], json.loads(row["state"])) for row in rows]

    async def to_recheck(self, moved: Collection[str], *, since: int) -> list[str]:
        rows = await self.conn.fetch(
            "SELECT incident_id FROM decision_lines WHERE person_id = ANY($1::text[])"
            " UNION SELECT incident_id FROM decisions"
            " WHERE state IS NOT NULL AND (lines_seq IS NULL OR lines_seq > $2)"
            # a branch of its own, so that each one uses its index
            " UNION SELECT incident_id FROM decisions WHERE state IS NOT NULL"
            " AND written_by >= (SELECT previous_horizon FROM directory_rechecked)"
            " AND lines_seq < $2"
            " ORDER BY incident_id",
            list(moved),
            since,
        )
        return [row["incident_id"] for row in rows]

    async def set_amendments(self, incident_id: str, amendments: list[dict[str, Any]]) -> None:
        await self.conn.execute(
            "UPDATE decisions SET amendments = $2::jsonb WHERE incident_id = $1",
            incident_id,
            json.dumps(amendments),
        )


class PostgresDirectoryLog:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def append(self, events: Sequence[tuple[str, bytes]]) -> None:
        await self.conn.execute(
            "INSERT INTO directory_log (event_id, body)"
            " SELECT * FROM unnest($1::uuid[], $2::bytea[]) ON CONFLICT DO NOTHING",
            [event_id for event_id, _ in events],
            [body for _, body in events],
        )

    async def after(self, seq: int) -> list[tuple[int, str, bytes]]:
        rows = await self.conn.fetch(
            "SELECT seq, event_id::text, body FROM directory_log WHERE seq > $1 ORDER BY seq",
            seq,
        )
        return [(int(row["seq"]), row["event_id"], bytes(row["body"])) for row in rows]

    async def hold_mark(self) -> None:
        # A table lock, not the row's FOR SHARE: the lock manager queues requests in
        # order, so a stream of overlapping decisions cannot starve a waiting re-check
        # (FOR SHARE joins the row's current sharers and skips a waiting FOR UPDATE),
        # and it takes the fast path, writing nothing to the row.
        await self.conn.execute("LOCK TABLE directory_rechecked IN ROW SHARE MODE")

    async def rechecked(self) -> int:
        # EXCLUSIVE conflicts with ROW SHARE (hold_mark), not with plain reads
        await self.conn.execute("LOCK TABLE directory_rechecked IN EXCLUSIVE MODE")
        seq = await self.conn.fetchval("SELECT seq FROM directory_rechecked FOR UPDATE")
        return int(seq or 0)

    async def mark_rechecked(self, seq: int) -> None:
        await self.conn.execute(
            "UPDATE directory_rechecked SET seq = $1, previous_horizon = horizon,"
            " horizon = pg_snapshot_xmin(pg_current_snapshot())",
            seq,
        )


class PostgresPolicies:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def record(self, version: str, body: dict[str, Any]) -> None:
        await self.conn.execute(
            "INSERT INTO policies (version, body) VALUES ($1, $2::jsonb) ON CONFLICT DO NOTHING",
            version,
            json.dumps(body),
        )

    async def body_of(self, version: str) -> dict[str, Any] | None:
        stored = await self.conn.fetchval("SELECT body FROM policies WHERE version = $1", version)
        return None if stored is None else dict(json.loads(stored))

    async def every(self) -> list[tuple[str, dict[str, Any]]]:
        rows = await self.conn.fetch("SELECT version, body FROM policies")
        return [(row["version"], json.loads(row["body"])) for row in rows]


class PostgresTriageUnitOfWork(PostgresUnitOfWork):
    """`TriageUnitOfWork` on a pool: one connection and transaction per `async with`."""

    decisions = OnConnection(PostgresDecisions)
    directory_log = OnConnection(PostgresDirectoryLog)
    policies = OnConnection(PostgresPolicies)
