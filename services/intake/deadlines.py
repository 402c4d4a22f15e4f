"""The decision deadline's adapters: the clocks in PostgreSQL and the watcher.

SPEC invariants 1 and 8: every report answered 202 is decided by triage, and is
acknowledged within its deadline or escalates. Escalation starts its deadlines from
triage's decision, so a report triage never decides (triage down for an hour, a record
it dead-lettered: a signing key rotated out of order, a bug, a poison record) would wait
unseen. Its deadline therefore starts at submission, here, in intake:

- intake owns the report: the clock starts in the transaction that records it
  (`decision_clocks`, migration 0012; `usecases.open_incidents`), so no accepted report
  can lack one, whichever door it came in by;
- intake already consumes triage's decisions (the `intake-routing` consumer,
  `services.intake.routing`), which stops the clock in the transaction of its tracking
  row;
- the watcher (`DecisionWatch`, a background task of intake's runtime) runs
  `usecases.raise_overdue_decisions` with `INCIDENTS_DECISION_WITHIN`: one indexed query
  over the undecided reports (a partial index holds only those), `FOR UPDATE SKIP
  LOCKED`, and an event id derived from the incident, so a restart or a second instance
  never raises a report twice.

Escalation could have kept the clock too, but it would need to consume every report to
learn of one triage never decided, and it holds no row of a report before the decision.

The watcher does not poll: it sleeps until the next waiting report falls due, and at
most `INCIDENTS_DECISION_WITHIN` (a report submitted after a round, by any instance,
falls due no earlier than that) or `IDLE_SECONDS`. The routing consumer wakes it when a
raised report is decided, so the gauge drops at once.

Each raised report is counted (`incidents_decision_overdue_total`), logged at error
level (incident id and times only), and `incidents_decision_overdue_incidents` counts
the reports raised and still undecided. The event, `incident.decision.overdue.v1`, goes
to the ledger like every intake event. Nobody in the directory is notified: the alert is
for operations (deploy/README.md, docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
from prometheus_client import Counter, Gauge

from services.infra.recorder import PostgresUnitOfWork
from services.infra.runtime import Runtime
from services.infra.waits import first_of
from services.intake import usecases
from services.intake.usecases import DecisionClocks, Undecided

log = logging.getLogger(__name__)

OVERDUE = Counter(
    "incidents_decision_overdue_total",
    "Reports raised as overdue (incident.decision.overdue.v1): no triage decision within"
    " INCIDENTS_DECISION_WITHIN of their acceptance, once per report.",
)
OVERDUE_NOW = Gauge(
    "incidents_decision_overdue_incidents",
    "Reports raised as overdue and still without a triage decision now.",
)
IDLE_SECONDS: Final = 60.0
"""Longest sleep of the watcher: refreshes the gauge when nothing is due (another
instance's consumer may have stopped a clock)."""
SHORTEST_SLEEP: Final = 0.2
"""Shortest sleep between rounds: a due report another instance holds is left to it."""


class PostgresDecisionClocks:
    """`usecases.DecisionClocks` on a connection inside a transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def start(self, clocks: Sequence[tuple[str, datetime]]) -> None:
        if clocks:
            await self.conn.execute(
                "INSERT INTO decision_clocks (incident_id, submitted_at)"
                " SELECT * FROM unnest($1::text[], $2::timestamptz[])"
                " ON CONFLICT (incident_id) DO NOTHING",
                [incident for incident, _ in clocks],
                [at for _, at in clocks],
            )

    async def decided(self, decisions: Sequence[tuple[str, datetime]]) -> int:
        if not decisions:
            return 0
        raised: int = await self.conn.fetchval(
            "WITH stopped AS ("
            " UPDATE decision_clocks c SET decided_at = d.at"
            " FROM (SELECT i, min(a) AS at FROM unnest($1::text[], $2::timestamptz[])"
            "       AS x (i, a) GROUP BY i) d"
            " WHERE c.incident_id = d.i AND c.decided_at IS NULL"
            " RETURNING c.overdue_at)"
            " SELECT count(*) FROM stopped WHERE overdue_at IS NOT NULL",
            [incident for incident, _ in decisions],
            [at for _, at in decisions],
        )
        return raised

    async def due(self, submitted_by: datetime, limit: int) -> list[Undecided]:
        rows = await self.conn.fetch(
            "SELECT incident_id, submitted_at FROM decision_clocks"
            " WHERE decided_at IS NULL AND overdue_at IS NULL AND submitted_at <= $1"
            " ORDER BY submitted_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            submitted_by,
            limit,
        )
        return [Undecided(r["incident_id"], r["submitted_at"]) for r in rows]

    async def mark_raised(self, incident_ids: Sequence[str], at: datetime) -> None:
        await self.conn.execute(
            "UPDATE decision_clocks SET overdue_at = $2 WHERE incident_id = ANY($1::text[])",
            list(incident_ids),
            at,
        )

    async def earliest_waiting(self) -> datetime | None:
        earliest: datetime | None = await self.conn.fetchval(
            "SELECT min(submitted_at) FROM decision_clocks"
            " WHERE decided_at IS NULL AND overdue_at IS NULL"
        )
        return earliest

    async def overdue_now(self) -> int:
        count: int = await self.conn.fetchval(
            "SELECT count(*) FROM decision_clocks"
            " WHERE decided_at IS NULL AND overdue_at IS NOT NULL"
        )
        return count


class PostgresDecisionUnitOfWork(PostgresUnitOfWork):
    """`usecases.DecisionUnitOfWork`: the event store and the decision clocks in one
    transaction on intake's pool."""

    @property
    def decisions(self) -> DecisionClocks:
        return PostgresDecisionClocks(self.conn)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DecisionWatch:
    """The watcher: raises overdue decisions, sleeping until the next one falls due."""

    def __init__(
        self, runtime: Runtime, within: float, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.runtime = runtime
        self.within = timedelta(seconds=within)
        self.clock = clock
        self._wake = asyncio.Event()

    def nudge(self) -> None:
        """Run a round now (a raised report was decided: the gauge drops)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """The loop (a background task of intake's runtime)."""
        while not stop.is_set():
            self._wake.clear()
            try:
                pause = self._pause(await self.round())
            except Exception as exc:  # the next round tries again
                log.warning("decision deadline round failed: %r", exc)
                pause = IDLE_SECONDS / 4
            await first_of([self._wake.wait(), stop.wait()], pause)

    async def round(self) -> usecases.OverdueDecisions:
        """One round: raise what is due, count, log; what it found."""
        settings = self.runtime.settings
        result = await usecases.raise_overdue_decisions(
            usecases.RaiseOverdue(
                now=self.clock(),
                within=self.within,
                source=self.runtime.source,
                topic_prefix=settings.kafka_topic_prefix,
            ),
            PostgresDecisionUnitOfWork(self.runtime.db),
        )
        for event in result.raised:
            OVERDUE.inc()
            log.error(
                "report %s has no triage decision %ds after intake accepted it (due %s):"
                " incident.decision.overdue.v1 raised; triage may be down or dead-lettering",
                event.subject,
                int(self.within.total_seconds()),
                event.data["due_at"],
            )
        OVERDUE_NOW.set(result.overdue_now)
        return result

    def _pause(self, result: usecases.OverdueDecisions) -> float:
        """Seconds until the next round: the next report's due time, at most `within`
        (nothing submitted later falls due sooner) and `IDLE_SECONDS`."""
        pause = min(self.within.total_seconds(), IDLE_SECONDS)
        if result.next_due is not None:
            pause = min(pause, (result.next_due - self.clock()).total_seconds())
        return max(pause, SHORTEST_SLEEP)
