"""What escalation does: keep each incident's deadline, fire it once, deliver notices.

Inputs (triage decisions and their later revisions, reassignments, acknowledgements,
recusals, a handler's message to the reporter, which satisfies the feedback clock) and
fired deadlines all go through
`_step_or_hold`: lock the incident's state row, run a pure transition from
`services.domain.escalation`, append its effects as events and store the new state
and wake-up time, in one transaction. The scheduler sleeps until the earliest wake-up
(or a NOTIFY that an earlier one appeared) and takes due rows with SKIP LOCKED.

Notices (`incident.notified.v1`) are queued in `deliveries` with the consumer's
tracking row and delivered by a worker (`run_deliveries`), so a slow webhook or mail
server never holds up the consumers; a notice that fails for good is recorded there
and fed back as `delivery_failed`. Each outcome is also published, once, in the same
transaction as the row's new state: `incident.notice.delivered.v1` (the adapter's
confirmation) or `incident.notice.failed.v1` (its reason class), so the ledger proves
delivery, not only the queueing (docs/notifications.md).

Never silent (issue 18): every `incident.escalation.stalled.v1` the domain raises (nobody
left to ask, the independent people included) is also counted
(`incidents_escalation_stalled_total`) and logged at error level, and
`incidents_escalation_stalled_incidents` counts the incidents stalled now; ignored
acknowledgements are counted by reason and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import asyncpg
from aiokafka import ConsumerRecord
from prometheus_client import Counter, Gauge, Histogram

from services.domain import escalation as esc
from services.domain.envelope import Envelope
from services.domain.events import (
    Acknowledged,
    AcknowledgementIgnored,
    EscalationStalled,
    InvalidEvent,
    NoticeDelivered,
    NoticeFailed,
    Notified,
    Reassigned,
    Recused,
    ReporterMessage,
    Triaged,
    data_of,
    make_event,
    parse_envelope,
)
from services.escalation.notify import Notifier, Outcome, recording
from services.infra import eventstore
from services.infra.db import connect
from services.infra.groupcommit import GroupCommit
from services.infra.kafka import TRANSIENT_ERRORS, record_span
from services.infra.logging import bind_incident
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent, span_after

log = logging.getLogger(__name__)
LATENESS = Histogram(
    "incidents_escalation_lateness_seconds",
    "How long after its deadline an escalation fired.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30, 300),
)
PENDING = Gauge("incidents_escalation_pending_deadlines", "Incidents waiting on a deadline.")
STALLED = Counter(
    "incidents_escalation_stalled_total",
    "Stall alerts raised (incident.escalation.stalled.v1): nobody left to ask, first or repeated.",
)
STALLED_NOW = Gauge(
    "incidents_escalation_stalled_incidents", "Incidents whose escalation is stalled now."
)
ACK_IGNORED = Counter(
    "incidents_escalation_acknowledgements_ignored_total",
    "Acknowledgements ignored: the principal was excluded or not routed.",
    ["reason"],
)
QUEUED = Gauge("incidents_notify_queue_pending", "Notices queued and not yet delivered or failed.")
QUEUED_AGE = Gauge(
    "incidents_notify_queue_oldest_age_seconds",
    "Age of the oldest notice still queued (0 when none).",
)
PENDING_EVERY = 5.0
"""Seconds between counts of the pending deadlines (a gauge; the count scans them)."""
DELIVERY_CONCURRENCY = 16
"""Notices one worker delivers at once."""
DELIVERY_POLL_SECONDS = 0.5
"""How often the delivery worker looks for due notices without being woken."""
DELIVERY_MAX_ATTEMPTS = 5
"""Leases of one notice (workers that died on it) before it counts as failed."""
REPORTER_MESSAGE = "incident.reporter.message.v1"
DELIVERED = "incident.notice.delivered.v1"
FAILED = "incident.notice.failed.v1"
EVENT_IDS = uuid.UUID("6d1f6f3c-54a7-4f55-9c43-2b1f0ad0c0e1")


class Escalation:
    """Escalation's handlers, scheduler and notifier."""

    def __init__(self, runtime: Runtime, notifier: Notifier, clock: Callable[[], datetime]) -> None:
        self.runtime = runtime
        self.notifier = notifier
        self.now = clock
        self._wake = asyncio.Event()
        self._deliveries_due = asyncio.Event()
        self.delivery_lease = delivery_lease(runtime.settings)
        # Delivered notices record their outcome together (one UPDATE per shared commit).
        self._delivered: GroupCommit[Envelope, None] = GroupCommit(
            lambda: self.runtime.db, self._record_delivered, name="escalation-deliveries", writers=1
        )

    # -- inputs -------------------------------------------------------------------

    async def on_triage(self, records: Sequence[ConsumerRecord]) -> None:
        """The batch's decisions and reassignments, in order, in one transaction.

        Consecutive decisions start their escalations together (`_start_all`: one
        statement per table for the run); a later revision of a decision restarts its
        incident's chain (`esc.redecide`). Each holds its incident's lock to the end of
        the transaction; the other paths take one incident lock per transaction, so no
        cycle can form. A record that fails fails the batch, which `RecordProcessor`
        then retries one by one.
        """
        async with self.runtime.db.acquire() as conn, conn.transaction():
            decisions: list[tuple[ConsumerRecord, Envelope, Triaged]] = []
            for record in records:
                envelope = await self._parse(record)
                if envelope is None:
                    continue
                data = data_of(envelope)
                if isinstance(data, Triaged):
                    decisions.append((record, envelope, data))
                    continue
                await self._start_all(conn, decisions)  # what came before goes first
                decisions = []
                with record_span(record):
                    if await self._track(conn, envelope, record) and isinstance(data, Reassigned):
                        await self._step_or_hold(conn, envelope, _transition_for(envelope))
            await self._start_all(conn, decisions)

    async def _start_all(
        self,
        conn: asyncpg.Connection,
        decisions: Sequence[tuple[ConsumerRecord, Envelope, Triaged]],
    ) -> None:
        """Start the escalation of each decided incident that has none yet.

        Tracking rows, incident locks, the new states and their events go in one
        statement each; early inputs held for these incidents are then replayed in order.
        Decisions of incidents already started (a new revision, or a decision seen
        again under another id) then step their state, one by one, in order.
        """
        first = await eventstore.track_each(
            conn, "escalation", [(e.id, r.topic, r.partition, r.offset) for r, e, _ in decisions]
        )
        todo = [item for item, new in zip(decisions, first, strict=True) if new]
        if not todo:
            return
        incidents = sorted({e.subject for _, e, _ in todo})
        await _lock_incidents(conn, incidents)
        started = {
            r["incident_id"]
            for r in await conn.fetch(
                "SELECT incident_id FROM escalation_state WHERE incident_id = ANY($1::text[])",
                incidents,
            )
        }
        versions = await eventstore.stream_versions(conn, incidents)
        now = self.now()
        rows: list[tuple[str, str, datetime | None, str | None, str]] = []
        appends: list[tuple[str, int, Sequence[Envelope]]] = []
        revisions: list[tuple[ConsumerRecord, Envelope]] = []
        for record, envelope, triaged in todo:
            if envelope.subject in started:
                revisions.append((record, envelope))
                continue
            started.add(envelope.subject)
            with record_span(record):  # the state and its events continue the report's trace
                state, effects = esc.start(
                    triaged, envelope.subject, now, triaged.report_digest or "sha256:unknown"
                )
                rows.append(
                    (
                        state.incident_id,
                        json.dumps(state.to_json()),
                        esc.next_wakeup(state),
                        current_traceparent(),
                        envelope.correlationid or envelope.id,
                    )
                )
                if effects:
                    events = self._effect_events(state, effects, envelope, now)
                    appends.append((state.incident_id, versions[state.incident_id], events))
                    versions[state.incident_id] += len(events)
                    _observe(state.incident_id, effects)
        if rows:
            await self._insert_started(conn, rows, appends)
        for record, envelope in revisions:  # their rows exist now: nothing is held
            with record_span(record):
                await self._step_or_hold(conn, envelope, _transition_for(envelope))
        self._wake.set()

    async def _insert_started(
        self,
        conn: asyncpg.Connection,
        rows: Sequence[tuple[str, str, datetime | None, str | None, str]],
        appends: Sequence[tuple[str, int, Sequence[Envelope]]],
    ) -> None:
        """Insert new states and their events; replay the inputs held for them."""
        await conn.execute(
            "INSERT INTO escalation_state (incident_id, state, wakeup, traceparent, correlationid)"
            " SELECT i, s::jsonb, w, t, c FROM unnest($1::text[], $2::text[],"
            " $3::timestamptz[], $4::text[], $5::text[]) AS r (i, s, w, t, c)",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            [r[4] for r in rows],
        )
        await eventstore.append_streams(
            conn, appends, topic_prefix=self.runtime.settings.kafka_topic_prefix
        )
        early = await conn.fetch(
            "WITH gone AS (DELETE FROM early_events WHERE incident_id = ANY($1::text[])"
            " RETURNING incident_id, seq, body) SELECT body FROM gone ORDER BY incident_id, seq",
            [r[0] for r in rows],
        )
        for row in early:
            held = parse_envelope(bytes(row["body"]))
            await self._step_or_hold(conn, held, _transition_for(held))

    async def on_activity(self, records: Sequence[ConsumerRecord]) -> None:
        """Acknowledgements and recusals step the incident's state, one transaction each;
        the batch's notices go to the delivery queue together, in one transaction.

        A recusal excludes its principal at once (defence in depth: her acknowledgement
        is ignored even before triage's reassignment arrives)."""
        notices: list[tuple[ConsumerRecord, Envelope, str | None]] = []
        for record in records:
            with record_span(record):
                envelope = await self._parse(record)
                if envelope is None:
                    continue
                data = data_of(envelope)
                if isinstance(data, Notified):
                    notices.append((record, envelope, current_traceparent()))
                    continue
                if not isinstance(data, Acknowledged | Recused):
                    continue
                async with self.runtime.db.acquire() as conn, conn.transaction():
                    if await self._track(conn, envelope, record):
                        await self._step_or_hold(conn, envelope, _transition_for(envelope))
        if notices:
            async with self.runtime.db.acquire() as conn, conn.transaction():
                fresh = await eventstore.track_many(
                    conn,
                    "escalation",
                    [(e.id, r.topic, r.partition, r.offset) for r, e, _ in notices],
                )
                await self._enqueue(conn, [(e, t) for _, e, t in notices if e.id in fresh])
            self._deliveries_due.set()

    async def on_report(self, records: Sequence[ConsumerRecord]) -> None:
        """A handler's message to the reporter is the feedback the legal clock waits for.

        Nothing else on `incident.reports` is escalation's business; the message text is
        never read, kept or logged. Invalid records are left to triage, which
        dead-letters what it cannot read on this topic.
        """
        for record in records:
            try:
                envelope = parse_envelope(record.value or b"")
                if envelope.type != REPORTER_MESSAGE:
                    continue
                message = data_of(envelope)
            except InvalidEvent:
                continue
            if not isinstance(message, ReporterMessage) or message.direction != "to_reporter":
                continue
            with record_span(record):
                async with self.runtime.db.acquire() as conn, conn.transaction():
                    if await self._track(conn, envelope, record):
                        held = _without_text(envelope)  # held until triage if early
                        await self._step_or_hold(conn, held, _transition_for(held))

    async def _parse(self, record: ConsumerRecord) -> Envelope | None:
        try:
            envelope = parse_envelope(record.value or b"")
            data_of(envelope)
        except InvalidEvent as exc:
            await self.runtime.dead_letter_poison(record, exc)
            return None
        return envelope

    async def _track(
        self, conn: asyncpg.Connection, envelope: Envelope, record: ConsumerRecord
    ) -> bool:
        return await eventstore.track(
            conn, "escalation", envelope.id, record.topic, record.partition, record.offset
        )

    async def _step_or_hold(
        self,
        conn: asyncpg.Connection,
        envelope: Envelope,
        transition: Callable[[esc.EscalationState, datetime], esc.Step],
    ) -> None:
        await _lock_incident(conn, envelope.subject)
        row = await conn.fetchrow(
            "SELECT state FROM escalation_state WHERE incident_id = $1 FOR UPDATE",
            envelope.subject,
        )
        if row is None:  # the triage decision has not arrived yet: keep this for it
            await conn.execute(
                "INSERT INTO early_events (incident_id, body) VALUES ($1, $2)",
                envelope.subject,
                envelope.to_bytes(),
            )
            return
        before = esc.EscalationState.from_json(json.loads(row["state"]))
        now = self.now()
        after, effects = transition(before, now)
        await self._save(conn, before, after, effects, envelope, now)

    async def _save(
        self,
        conn: asyncpg.Connection,
        before: esc.EscalationState,
        after: esc.EscalationState,
        effects: Sequence[esc.Effect],
        cause: Envelope | None,
        now: datetime,
    ) -> None:
        """Store a step of an incident's escalation (its row exists: `_start_all` made it)."""
        if after == before and not effects:
            return
        await conn.execute(
            "UPDATE escalation_state SET state = $2::jsonb, wakeup = $3,"
            " updated_at = clock_timestamp() WHERE incident_id = $1",
            after.incident_id,
            json.dumps(after.to_json()),
            esc.next_wakeup(after),
        )
        if effects:
            await self._append(conn, after, effects, cause, now)
            _observe(after.incident_id, effects)
        self._wake.set()

    async def _append(
        self,
        conn: asyncpg.Connection,
        state: esc.EscalationState,
        effects: Sequence[esc.Effect],
        cause: Envelope | None,
        now: datetime,
    ) -> None:
        version = await eventstore.stream_version(conn, state.incident_id)
        events = self._effect_events(state, effects, cause, now)
        if any(e.correlationid is None for e in events):
            # a deadline fired (no cause): the correlation kept when the escalation started
            correlation = await conn.fetchval(
                "SELECT correlationid FROM escalation_state WHERE incident_id = $1",
                state.incident_id,
            ) or await eventstore.correlation_of(conn, state.incident_id)
            events = [
                e if e.correlationid else e.model_copy(update={"correlationid": correlation})
                for e in events
            ]
        await eventstore.append(
            conn,
            state.incident_id,
            version,
            events,
            topic_prefix=self.runtime.settings.kafka_topic_prefix,
        )

    def _effect_events(
        self,
        state: esc.EscalationState,
        effects: Sequence[esc.Effect],
        cause: Envelope | None,
        now: datetime,
    ) -> list[Envelope]:
        """The events a step's effects publish, in the active span's trace."""
        return [
            make_event(
                esc.effect_type(effect),
                subject=state.incident_id,
                data=effect,
                source=self.runtime.source,
                time=now,
                actor="system:escalation",
                causationid=cause.id if cause else None,
                correlationid=cause.correlationid if cause else None,
                traceparent=current_traceparent(),
                # the same state version and effect always get the same id, so even a
                # step replayed by mistake could not publish a fact twice
                event_id=str(uuid.uuid5(EVENT_IDS, f"{state.incident_id}:{state.version}:{i}")),
            )
            for i, effect in enumerate(effects)
        ]

    # -- deadlines ---------------------------------------------------------------

    async def fire_due(self, limit: int = 200) -> int:
        """Run every transition that is due now; returns how many incidents moved."""
        moved = 0
        async with self.runtime.db.acquire() as conn:
            while True:
                async with conn.transaction():
                    now = self.now()
                    rows = await conn.fetch(
                        "SELECT incident_id, state, traceparent FROM escalation_state"
                        " WHERE wakeup <= $1 ORDER BY wakeup LIMIT $2 FOR UPDATE SKIP LOCKED",
                        now,
                        limit,
                    )
                    for row in rows:
                        # the report's trace goes on: its events carry this span's context
                        with (
                            span_after("escalation: deadline", row["traceparent"]),
                            bind_incident(row["incident_id"]),
                        ):
                            await self._fire(conn, row, now)
                        moved += 1
                if len(rows) < limit:
                    return moved

    async def _fire(self, conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> None:
        before = esc.EscalationState.from_json(json.loads(row["state"]))
        after, effects = esc.tick(before, now)
        if before.due_at is not None and before.due_at <= now and after.due_at != before.due_at:
            LATENESS.observe((now - before.due_at).total_seconds())
        await self._save(conn, before, after, effects, None, now)
        if after == before:  # woken for nothing: never spin on this row
            wakeup = esc.next_wakeup(after)
            log.warning("incident %s woke with nothing due", after.incident_id)
            await conn.execute(
                "UPDATE escalation_state SET wakeup = $2 WHERE incident_id = $1",
                before.incident_id,
                wakeup if wakeup is not None and wakeup > now else None,
            )

    async def run_scheduler(self, stop: asyncio.Event) -> None:
        """Fire deadlines as they come due, until `stop`; survives database hiccups."""
        listener: asyncpg.Connection | None = None
        counted = 0.0
        while not stop.is_set():
            try:
                if listener is None or listener.is_closed():
                    listener = await connect(
                        self.runtime.settings.database_url, schema=self.runtime.schema
                    )
                    await listener.add_listener(
                        f"{self.runtime.schema}_wakeup", lambda *_: self._wake.set()
                    )
                self._wake.clear()
                # Woken by every saved state: look for due rows only when one is due.
                nearest = await self._nearest()
                held = False
                if nearest is not None and nearest <= self.now():
                    held = not await self.fire_due()  # due, but locked by another transaction
                    nearest = await self._nearest()
                if time.monotonic() - counted >= PENDING_EVERY:
                    async with self.runtime.db.acquire() as conn:
                        # a stalled incident always waits on its next alert
                        counts = await conn.fetchrow(
                            "SELECT count(*) AS pending,"
                            " count(*) FILTER (WHERE state @> '{\"stalled\": true}') AS stalled"
                            " FROM escalation_state WHERE wakeup IS NOT NULL"
                        )
                    PENDING.set(counts["pending"])
                    STALLED_NOW.set(counts["stalled"])
                    counted = time.monotonic()
                delay = 1.0
                if nearest is not None:
                    delay = max(0.0, min(delay, (nearest - self.now()).total_seconds()))
                if held and delay == 0.0:
                    delay = 0.05  # do not spin while the due row's lock is held
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_either(self._wake, stop), delay)
            except TRANSIENT_ERRORS as exc:
                log.warning("escalation scheduler: %r; retrying", exc)
                listener = None
                await asyncio.sleep(0.5)
        if listener is not None:
            await listener.close()

    async def _nearest(self) -> datetime | None:
        async with self.runtime.db.acquire() as conn:
            nearest: datetime | None = await conn.fetchval(
                "SELECT min(wakeup) FROM escalation_state WHERE wakeup IS NOT NULL"
            )
        return nearest

    # -- notices -----------------------------------------------------------------

    async def _enqueue(
        self, conn: asyncpg.Connection, notices: Sequence[tuple[Envelope, str | None]]
    ) -> None:
        """Queue notices (each with the traceparent its delivery continues) for the
        delivery worker; not those delivered before the queue existed."""
        if not notices:
            return
        await conn.execute(
            "INSERT INTO deliveries (event_id, incident_id, body, traceparent)"
            " SELECT e, i, b, t FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])"
            " AS r (e, i, b, t) WHERE NOT EXISTS (SELECT 1 FROM tracking"
            " WHERE consumer = 'escalation-delivery' AND event_key = r.e)"
            " ON CONFLICT (event_id) DO NOTHING",
            [e.id for e, _ in notices],
            [e.subject for e, _ in notices],
            [e.to_bytes() for e, _ in notices],
            [t for _, t in notices],
        )

    async def run_deliveries(self, stop: asyncio.Event) -> None:
        """Deliver queued notices until `stop`, up to `DELIVERY_CONCURRENCY` at once.

        A slow webhook or mail server holds up only its own notices, never the
        consumers. Due rows are leased (`_claim`), delivered outside any transaction and
        their outcome recorded (`_deliver`); a notice whose worker died is leased again
        when its lease runs out, with a longer lease each time.
        """
        inflight: set[asyncio.Task[None]] = set()
        measured = 0.0
        try:
            while not stop.is_set():
                self._deliveries_due.clear()
                try:
                    free = DELIVERY_CONCURRENCY - len(inflight)
                    for row in await self._claim(free) if free > 0 else ():
                        task = asyncio.create_task(self._deliver(row))
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                    if time.monotonic() - measured >= DELIVERY_POLL_SECONDS:
                        await self._refresh_queue_metrics()
                        measured = time.monotonic()
                except TRANSIENT_ERRORS as exc:
                    log.warning("notice delivery: %r; retrying", exc)
                # A finished delivery only matters when every slot is taken; otherwise
                # the queue is empty until a new notice (or the poll) says otherwise.
                full = len(inflight) >= DELIVERY_CONCURRENCY
                waits = [self._deliveries_due.wait(), stop.wait(), *(inflight if full else ())]
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_first_of(waits), DELIVERY_POLL_SECONDS)
        finally:
            for task in inflight:  # their leases run out; a later worker delivers them
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _claim(self, limit: int) -> list[asyncpg.Record]:
        async with self.runtime.db.acquire() as conn:
            return list(
                await conn.fetch(
                    "UPDATE deliveries d SET attempts = d.attempts + 1, next_at ="
                    " clock_timestamp() + make_interval(secs => $2 * least(8, 2 ^ d.attempts))"
                    " FROM (SELECT event_id FROM deliveries WHERE state = 'pending'"
                    " AND next_at <= clock_timestamp() ORDER BY next_at LIMIT $1"
                    " FOR UPDATE SKIP LOCKED) due WHERE d.event_id = due.event_id"
                    " RETURNING d.event_id, d.body, d.traceparent, d.attempts",
                    limit,
                    self.delivery_lease,
                )
            )

    async def _deliver(self, row: asyncpg.Record) -> None:
        """Deliver one leased notice and record the outcome, at least once per event id.

        A notice that failed for good (the adapter's own retries exhausted), or whose
        worker died `DELIVERY_MAX_ATTEMPTS` times, counts as failed: once every
        recipient of a level failed, the next level is asked at once.
        """
        envelope = parse_envelope(bytes(row["body"]))
        notice = Notified.model_validate(envelope.data)  # validated when it was queued
        with (
            span_after("escalation: deliver notice", row["traceparent"]),
            bind_incident(envelope.subject),
        ):
            outcome: Outcome | None = None
            if row["attempts"] > DELIVERY_MAX_ATTEMPTS:
                log.error("notice %s: gave up after %d leases", envelope.id, row["attempts"] - 1)
                delivered = False
            else:
                with recording() as record:
                    delivered = await self.notifier.deliver(
                        envelope.subject, notice, delivery_id=envelope.id
                    )
                outcome = record.delivered() if delivered else record.failed()
            try:
                if delivered:
                    await self._delivered.submit(self._outcome_event(envelope, notice, outcome))
                else:
                    async with self.runtime.db.acquire() as conn, conn.transaction():
                        if await conn.fetchval(
                            "UPDATE deliveries SET state = 'failed', done_at = clock_timestamp()"
                            " WHERE event_id = $1 AND state = 'pending' RETURNING 1",
                            envelope.id,
                        ):
                            # the locks a step takes, in its order, before any append
                            await _lock_incident(conn, envelope.subject)
                            await conn.execute(
                                "SELECT 1 FROM escalation_state WHERE incident_id = $1 FOR UPDATE",
                                envelope.subject,
                            )
                            failed = self._outcome_event(envelope, notice, outcome, failed=True)
                            await self._append_outcomes(conn, [failed])
                            await self._step_or_hold(conn, envelope, _transition_for(envelope))
            except TRANSIENT_ERRORS as exc:  # the lease runs out and it is delivered again
                log.warning("notice %s: outcome not recorded: %r", envelope.id, exc)

    async def _refresh_queue_metrics(self) -> None:
        async with self.runtime.db.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, min(created_at) AS oldest FROM deliveries"
                " WHERE state = 'pending'"
            )
        QUEUED.set(row["n"])
        oldest = row["oldest"]
        QUEUED_AGE.set(max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest else 0)

    def _outcome_event(
        self,
        notice_event: Envelope,
        notice: Notified,
        outcome: Outcome | None,
        *,
        failed: bool = False,
    ) -> Envelope:
        """`incident.notice.delivered.v1` or `.failed.v1` of a notice; one id per notice
        and outcome, so a notice delivered again after a crash can never record twice."""
        common = {
            "notice_id": notice_event.id,
            "principal": notice.principal,
            "level": notice.level,
            "channel": notice.channel,
            "attempts": outcome.attempts if outcome is not None else 0,
        }
        data: NoticeDelivered | NoticeFailed
        if failed:
            data = NoticeFailed.model_validate(
                {
                    **common,
                    "adapter": outcome.adapter if outcome is not None else None,
                    "reason": outcome.reason if outcome and outcome.reason else "gave_up",
                    "detail": outcome.detail if outcome is not None else None,
                }
            )
        else:
            data = NoticeDelivered.model_validate(
                {**common, "adapter": outcome.adapter if outcome is not None else "log"}
            )
        kind = FAILED if failed else DELIVERED
        return make_event(
            kind,
            subject=notice_event.subject,
            data=data,
            source=self.runtime.source,
            time=self.now(),
            actor="system:escalation",
            causationid=notice_event.id,
            correlationid=notice_event.correlationid,
            traceparent=current_traceparent(),
            event_id=str(uuid.uuid5(EVENT_IDS, f"{notice_event.id}:{kind}")),
        )

    async def _append_outcomes(self, conn: asyncpg.Connection, events: Sequence[Envelope]) -> None:
        """Append outcome events, each as the one event of its notice's own stream
        (`notice:<notice id>`; the subject stays the incident). So recording a delivery
        takes no incident lock: a batch of them never waits on (nor deadlocks with) a
        step holding the outbox counter and the incident locks, and the deliveries
        row's pending -> done update already makes it once per notice."""
        await eventstore.append_streams(
            conn,
            [(f"notice:{e.causationid}", 0, [e]) for e in events],
            topic_prefix=self.runtime.settings.kafka_topic_prefix,
        )

    async def _record_delivered(
        self, conn: asyncpg.Connection, events: Sequence[Envelope]
    ) -> list[None]:
        """`GroupCommit` writer: mark delivered notices (still pending) as delivered and
        publish their `incident.notice.delivered.v1`, once each."""
        notice_ids = [e.causationid or "" for e in events]
        done = {
            r["event_id"]
            for r in await conn.fetch(
                "UPDATE deliveries SET state = 'delivered', done_at = clock_timestamp()"
                " WHERE event_id = ANY($1::text[]) AND state = 'pending' RETURNING event_id",
                notice_ids,
            )
        }
        fresh = [e for e in events if e.causationid in done]
        if fresh:
            await self._append_outcomes(conn, fresh)
        return [None] * len(events)


def delivery_lease(settings: object) -> float:
    """Seconds a worker may take over one notice: every attempt of the adapter, each
    retry's longest wait (30 s), and a margin (the log adapter takes no time)."""
    if getattr(settings, "notify_adapter", "log") == "log":
        return 10.0
    retries = int(getattr(settings, "notify_retries", 3))
    timeout = float(getattr(settings, "notify_timeout_seconds", 5.0))
    return (retries + 1) * timeout + retries * 30.0 + 10.0


def _transition_for(envelope: Envelope) -> Callable[[esc.EscalationState, datetime], esc.Step]:
    data = data_of(envelope)
    if isinstance(data, Triaged):  # a decision of an incident already started
        return lambda s, now: esc.redecide(s, data, now)
    if isinstance(data, Acknowledged):
        return lambda s, now: esc.acknowledge(s, data.principal, now)
    if isinstance(data, Recused):
        return lambda s, now: esc.recuse(s, data.principal, now)
    if isinstance(data, Reassigned):
        removed = [x.principal for x in data.removed]
        return lambda s, now: esc.reassign(s, removed, data.added, now)
    if isinstance(data, ReporterMessage) and data.direction == "to_reporter":
        return lambda s, now: esc.clock_satisfied(s, esc.FEEDBACK, now)
    if isinstance(data, Notified):  # held only when its delivery failed before the decision
        return lambda s, now: esc.delivery_failed(s, data.principal, data.level, now, data.channel)
    return lambda s, now: (s, ())


def _observe(incident_id: str, effects: Sequence[esc.Effect]) -> None:
    """Count and log what operations must see among a step's effects.

    Called inside the step's transaction: a transaction retried after a failure counts
    its alert again (an alert too many, never one too few).
    """
    for effect in effects:
        if isinstance(effect, EscalationStalled):
            STALLED.inc()
            log.error(
                "incident %s: escalation stalled at level %d: nobody eligible, the"
                " independent roles included; alerting again every %s s until someone acts",
                incident_id,
                effect.level,
                effect.repeat_every,
            )
        elif isinstance(effect, AcknowledgementIgnored):
            ACK_IGNORED.labels(effect.reason).inc()
            log.warning(
                "incident %s: acknowledgement at level %d ignored (%s)",
                incident_id,
                effect.level,
                effect.reason,
            )


async def _lock_incident(conn: asyncpg.Connection, incident_id: str) -> None:
    """Serialise, per incident, starting its escalation and holding an early input.

    Without it the two raced when escalation came back to a backlog on both topics (the
    short chaos run caught it): the triage decision's transaction inserted the state and
    found no early input to replay, while an acknowledgement's transaction, which had
    found no state yet (the decision not committed), held itself in early_events after
    that, where nothing would ever replay it. `FOR UPDATE` cannot lock a row not there.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('escalation:' || $1, 0))", incident_id
    )


async def _lock_incidents(conn: asyncpg.Connection, incidents: Sequence[str]) -> None:
    """`_lock_incident` for several incidents, in the order given, in one statement."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('escalation:' || i, 0))"
        " FROM unnest($1::text[]) WITH ORDINALITY AS r (i, n) ORDER BY n",
        list(incidents),
    )


def _without_text(envelope: Envelope) -> Envelope:
    """A reporter message with its text blanked: the clock needs only that it was sent."""
    return envelope.model_copy(update={"data": {**envelope.data, "text": ""}})


async def _either(event: asyncio.Event, stop: asyncio.Event) -> None:
    await _first_of([event.wait(), stop.wait()])


async def _first_of(waits: Sequence[Awaitable[object]]) -> None:
    """Return when the first of `waits` is done; cancel the rest (tasks given are kept)."""
    futures = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, wait in zip(futures, waits, strict=True):
            if future is not wait:
                future.cancel()


def system_clock() -> datetime:
    """Wall time (tests pass another clock)."""
    return datetime.now(UTC)
