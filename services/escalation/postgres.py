"""Escalation's unit of work on PostgreSQL: the repositories of `usecases` over `.conn`.

`escalation_state` (one row per incident: the state as JSON, its wake-up, trace and
correlation), `early_events` (inputs that came before the incident's decision),
`unrouted_acknowledgements` (acknowledgements kept until their principal is routed)
and `deliveries` (the notice queue). What only PostgreSQL needs stays here: an
advisory lock per incident, taken in the order given, so starting an escalation and
holding an early input for it never race (`lock`); the state row `FOR UPDATE`; due
rows taken `FOR UPDATE SKIP LOCKED`, so each deadline fires once with several
workers; and the wake-up trigger (migration 0001) that NOTIFYs the scheduler.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Self

import asyncpg

from services.domain import escalation as esc
from services.domain.envelope import Envelope
from services.domain.events import parse_envelope
from services.escalation.usecases import Due, HeldPast, Started, first_alarms
from services.infra.recorder import OnConnection, PostgresUnitOfWork

DELIVERY_CONSUMER = "escalation-delivery"
"""Tracking name of notices delivered before the queue existed (never queued again)."""


class PostgresStates:
    """`EscalationStates` on a connection inside the unit of work's transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def lock(self, incidents: Sequence[str]) -> set[str]:
        # Without it the two raced when escalation came back to a backlog on both topics
        # (the short chaos run caught it): the decision's transaction inserted the state
        # and found no early input to replay, while an acknowledgement's transaction,
        # which had found no state yet, held itself in early_events after that, where
        # nothing would ever replay it. `FOR UPDATE` cannot lock a row not there. The
        # function (migration 0009) reads the states after the locks are held.
        rows = await self.conn.fetch(
            "SELECT i FROM escalation_lock($1::text[]) AS i", list(incidents)
        )
        return {r["i"] for r in rows}

    async def lock_states(self, incidents: Sequence[str]) -> None:
        await self.conn.execute(
            "SELECT 1 FROM escalation_state WHERE incident_id = ANY($1::text[])"
            " ORDER BY incident_id FOR UPDATE",
            list(incidents),
        )

    async def get(self, incident_id: str) -> esc.EscalationState | None:
        row = await self.conn.fetchrow(
            "SELECT state FROM escalation_state WHERE incident_id = $1 FOR UPDATE", incident_id
        )
        return None if row is None else _state(row["state"])

    async def insert(self, started: Sequence[Started]) -> list[Envelope]:
        # One statement: the rows go in, the held inputs come out (`take_held`'s order).
        rows = await self.conn.fetch(
            "WITH new AS (INSERT INTO escalation_state"
            " (incident_id, state, wakeup, traceparent, correlationid)"
            " SELECT i, s::jsonb, w, t, c FROM unnest($1::text[], $2::text[],"
            " $3::timestamptz[], $4::text[], $5::text[]) AS r (i, s, w, t, c)),"
            " gone AS (DELETE FROM early_events WHERE incident_id = ANY($1::text[])"
            " RETURNING incident_id, seq, body) SELECT body FROM gone ORDER BY incident_id, seq",
            [s.state.incident_id for s in started],
            [json.dumps(s.state.to_json()) for s in started],
            [esc.next_wakeup(s.state) for s in started],
            [s.traceparent for s in started],
            [s.correlationid for s in started],
        )
        return [parse_envelope(bytes(r["body"])) for r in rows]

    async def save(self, state: esc.EscalationState) -> None:
        await self.conn.execute(
            "UPDATE escalation_state SET state = $2::jsonb, wakeup = $3,"
            " updated_at = clock_timestamp() WHERE incident_id = $1",
            state.incident_id,
            json.dumps(state.to_json()),
            esc.next_wakeup(state),
        )

    async def postpone(self, incident_id: str, wakeup: datetime | None) -> None:
        await self.conn.execute(
            "UPDATE escalation_state SET wakeup = $2 WHERE incident_id = $1", incident_id, wakeup
        )

    async def correlation(self, incident_id: str) -> str | None:
        found: str | None = await self.conn.fetchval(
            "SELECT correlationid FROM escalation_state WHERE incident_id = $1", incident_id
        )
        return found

    async def due(self, now: datetime, limit: int) -> list[Due]:
        rows = await self.conn.fetch(
            "SELECT state, traceparent FROM escalation_state"
            " WHERE wakeup <= $1 ORDER BY wakeup LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit,
        )
        return [Due(_state(r["state"]), r["traceparent"]) for r in rows]

    async def hold(self, incident_id: str, envelope: Envelope) -> None:
        await self.conn.execute(
            "INSERT INTO early_events (incident_id, body) VALUES ($1, $2)",
            incident_id,
            envelope.to_bytes(),
        )

    async def take_held(self, incidents: Sequence[str]) -> list[Envelope]:
        rows = await self.conn.fetch(
            "WITH gone AS (DELETE FROM early_events WHERE incident_id = ANY($1::text[])"
            " RETURNING incident_id, seq, body) SELECT body FROM gone ORDER BY incident_id, seq",
            list(incidents),
        )
        return [parse_envelope(bytes(r["body"])) for r in rows]

    async def wait(self, incident_id: str, envelope: Envelope) -> None:
        await self.conn.execute(
            "INSERT INTO unrouted_acknowledgements (incident_id, event_id, body)"
            " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            incident_id,
            envelope.id,
            envelope.to_bytes(),
        )

    async def waiting(self, incident_id: str) -> list[Envelope]:
        rows = await self.conn.fetch(
            "SELECT body FROM unrouted_acknowledgements WHERE incident_id = $1 ORDER BY seq",
            incident_id,
        )
        return [parse_envelope(bytes(r["body"])) for r in rows]

    async def drop_waiting(self, incident_id: str, event_ids: Sequence[str]) -> None:
        await self.conn.execute(
            "DELETE FROM unrouted_acknowledgements WHERE incident_id = $1"
            " AND event_id = ANY($2::text[])",
            incident_id,
            list(event_ids),
        )


class PostgresDeliveries:
    """`Deliveries` on a connection inside the unit of work's transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def enqueue(self, notices: Sequence[tuple[Envelope, str | None]]) -> None:
        if not notices:
            return
        await self.conn.execute(
            "INSERT INTO deliveries (event_id, incident_id, body, traceparent)"
            " SELECT e, i, b, t FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])"
            " AS r (e, i, b, t) WHERE NOT EXISTS (SELECT 1 FROM tracking"
            " WHERE consumer = $5 AND event_key = r.e)"
            " ON CONFLICT (event_id) DO NOTHING",
            [e.id for e, _ in notices],
            [e.subject for e, _ in notices],
            [e.to_bytes() for e, _ in notices],
            [t for _, t in notices],
            DELIVERY_CONSUMER,
        )

    async def mark_delivered(self, notice_ids: Sequence[str]) -> set[str]:
        rows = await self.conn.fetch(
            "UPDATE deliveries SET state = 'delivered', done_at = clock_timestamp()"
            " WHERE event_id = ANY($1::text[]) AND state = 'pending' RETURNING event_id",
            list(notice_ids),
        )
        return {r["event_id"] for r in rows}

    async def mark_failed(self, notice_id: str) -> bool:
        return bool(
            await self.conn.fetchval(
                "UPDATE deliveries SET state = 'failed', done_at = clock_timestamp()"
                " WHERE event_id = $1 AND state = 'pending' RETURNING 1",
                notice_id,
            )
        )

    async def hold(self, notice_id: str, recheck_after: float) -> None:
        # Held: pending, attempts 0, due later (migration 0010); `release` keys on that.
        # Every earlier lease of it also found no state (states are never removed), so
        # no adapter ever had it: none of them counts towards DELIVERY_MAX_ATTEMPTS.
        await self.conn.execute(
            "UPDATE deliveries SET attempts = 0, next_at ="
            " clock_timestamp() + make_interval(secs => $2)"
            " WHERE event_id = $1 AND state = 'pending'",
            notice_id,
            recheck_after,
        )

    async def release(self, incidents: Sequence[str]) -> int:
        done = await self.conn.execute(
            "UPDATE deliveries SET next_at = clock_timestamp()"
            " WHERE incident_id = ANY($1::text[]) AND state = 'pending'"
            " AND attempts = 0 AND next_at > clock_timestamp()",
            list(incidents),
        )
        return int(done.rsplit(" ", 1)[-1])

    async def alarm_held(self, queued_before: datetime) -> HeldPast:
        # Waiting for a decision: pending, and no state for the incident (held or not
        # leased yet). The RETURNING subquery reads the statement's snapshot, so it
        # sees the rows alarmed by earlier statements only; a row another worker marks
        # meanwhile is re-checked under its lock and skipped (`alarmed_at IS NULL`).
        rows = await self.conn.fetch(
            "UPDATE deliveries d SET alarmed_at = clock_timestamp()"
            " WHERE d.state = 'pending' AND d.alarmed_at IS NULL AND d.created_at <= $1"
            " AND NOT EXISTS (SELECT 1 FROM escalation_state s"
            " WHERE s.incident_id = d.incident_id)"
            " RETURNING d.incident_id, d.created_at, EXISTS (SELECT 1 FROM deliveries o"
            " WHERE o.incident_id = d.incident_id AND o.alarmed_at IS NOT NULL) AS before",
            queued_before,
        )
        incidents: int = await self.conn.fetchval(
            "SELECT count(DISTINCT d.incident_id) FROM deliveries d"
            " WHERE d.state = 'pending' AND d.created_at <= $1"
            " AND NOT EXISTS (SELECT 1 FROM escalation_state s"
            " WHERE s.incident_id = d.incident_id)",
            queued_before,
        )
        return HeldPast(
            first_alarms((r["incident_id"], r["created_at"], r["before"]) for r in rows), incidents
        )


class PostgresEscalationUnitOfWork(PostgresUnitOfWork):
    """`EscalationUnitOfWork` on a pool: a connection and a transaction per `async with`."""

    states = OnConnection(PostgresStates)
    deliveries = OnConnection(PostgresDeliveries)


class JoinedUnitOfWork(PostgresEscalationUnitOfWork):
    """`EscalationUnitOfWork` inside a transaction someone else opened and ends (a
    `GroupCommit` writer's): entering and leaving it commit nothing.

    Appends take no savepoint (two round trips fewer): a refused append fails the
    whole shared transaction, which `GroupCommit` then writes item by item."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.savepoint = False
        self._conn = conn

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def _state(value: str) -> esc.EscalationState:
    return esc.EscalationState.from_json(json.loads(value))
