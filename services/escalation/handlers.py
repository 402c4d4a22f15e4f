"""Escalation's adapters: Kafka consumers, the deadline scheduler, the delivery worker.

Each builds a command and calls a use case of `services.escalation.usecases` on the
PostgreSQL unit of work (`services.escalation.postgres`): inputs (triage decisions and
their later revisions, reassignments, acknowledgements, recusals, the incident's close,
a handler's message to the reporter, which satisfies the feedback clock) and fired
deadlines each step an incident's state with a pure transition of
`services.domain.escalation`, its effects appended as events with the new state and
wake-up time, in one transaction. The scheduler sleeps until the earliest wake-up (or a
NOTIFY that an earlier one appeared) and runs `usecases.step`, which takes due rows with
SKIP LOCKED.

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
acknowledgements are counted by reason and logged. A notice held past
`notify_held_alarm_seconds` for a decision escalation never read (dead-lettered here:
nobody told, no deadline) alarms its incident once (`alarm_held`: an error line,
`incidents_escalation_held_alarms_total`, `incidents_escalation_held_incidents`).
"""

from __future__ import annotations

import asyncio
import logging
import time
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
    Event,
    InvalidEvent,
    Notified,
    Reassigned,
    Recused,
    ReporterMessage,
    StatusChanged,
    Triaged,
    data_of,
    parse_envelope,
)
from services.escalation import usecases
from services.escalation.inputs import input_of, parsed_as
from services.escalation.notify import (
    CLOSED_DETAIL,
    EXCLUDED_DETAIL,
    Notifier,
    Outcome,
    recording,
)
from services.escalation.postgres import JoinedUnitOfWork, PostgresEscalationUnitOfWork
from services.infra.db import connect
from services.infra.groupcommit import GroupCommit
from services.infra.kafka import TRANSIENT_ERRORS, header
from services.infra.logging import bind_incident
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent, span_after
from services.infra.waits import first_of

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
HELD_ALARMS = Counter(
    "incidents_escalation_held_alarms_total",
    "Incidents alarmed once: a notice waited INCIDENTS_NOTIFY_HELD_ALARM_SECONDS for a"
    " decision escalation never started from (dead-lettered here).",
)
HELD_NOW = Gauge(
    "incidents_escalation_held_incidents",
    "Incidents whose notices wait past INCIDENTS_NOTIFY_HELD_ALARM_SECONDS for a decision"
    " escalation lacks, now.",
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
"""Shortest pause between two looks for due notices when a due one was left (locked by
another worker, or every slot taken)."""
IDLE_FALLBACK_SECONDS = 5.0
"""Longest sleep of the scheduler and the delivery worker: each sleeps until its next due
row, woken early by a new one (the delivery worker by an in-process event, the scheduler
by a NOTIFY naming a wake-up earlier than its next); this bound only catches a wake-up
lost (a listener connection that dropped, another instance's notice) and refreshes the
gauges while idle."""
DELIVERY_MAX_ATTEMPTS = 5
"""Leases of one notice (workers that died on it) before it counts as failed."""
HELD_RECHECK_SECONDS = 60.0
"""How long a notice taken before its incident's decision is held before it is looked at
again, if the decision's arrival has not made it due earlier (`usecases.hold_notice`)."""


class Escalation:
    """Escalation's adapters: Kafka consumers, the scheduler and the delivery worker,
    each building a command for `services.escalation.usecases`."""

    def __init__(self, runtime: Runtime, notifier: Notifier, clock: Callable[[], datetime]) -> None:
        self.runtime = runtime
        self.notifier = notifier
        self.now = clock
        self._wake = asyncio.Event()
        self._deliveries_due = asyncio.Event()
        self.delivery_lease = delivery_lease(runtime.settings)
        self.held_alarm = float(getattr(runtime.settings, "notify_held_alarm_seconds", 300.0))
        self.env = usecases.Env(
            source=runtime.source,
            clock=lambda: self.now(),
            topic_prefix=runtime.settings.kafka_topic_prefix,
            observe=_observe,
            late=LATENESS.observe,
        )
        self._planned: datetime | None = None
        """The wake-up the scheduler sleeps until (None: none, or being looked up)."""
        # Delivered notices record their outcome together (one UPDATE per shared commit).
        self._delivered: GroupCommit[usecases.Delivery, None] = GroupCommit(
            lambda: self.runtime.db, self._record_delivered, name="escalation-deliveries", writers=1
        )

    def unit_of_work(self) -> PostgresEscalationUnitOfWork:
        return PostgresEscalationUnitOfWork(self.runtime.db)

    # -- inputs -------------------------------------------------------------------

    async def on_triage(self, records: Sequence[ConsumerRecord]) -> None:
        """The batch's decisions and reassignments, in order, in one transaction
        (`usecases.start`). A record that fails fails the batch, which
        `RecordProcessor` then retries one by one; an invalid one is dead-lettered.

        Anything else on the topic (an assignment comes with every decision) changes no
        state here: it is read, so an invalid one is still dead-lettered, but neither
        tracked nor given a span (a tracking row, a transaction when it came alone)."""
        inputs = [
            input_of(record, parsed[0])
            for record in records
            if (parsed := await self._parse(record)) is not None
            and isinstance(parsed[1], Triaged | Reassigned)
        ]
        if inputs and await usecases.start(usecases.Start(inputs), self.unit_of_work(), self.env):
            self._deliveries_due.set()  # notices held for these decisions are due now

    async def on_activity(self, records: Sequence[ConsumerRecord]) -> None:
        """The batch's acknowledgements, recusals and closes step their incidents, in
        order, in one transaction (`usecases.clear`); its notices go to the delivery queue
        together, in another. A record that fails fails the batch, which
        `RecordProcessor` then retries one by one; an invalid one is dead-lettered.

        A recusal excludes its principal at once (defence in depth: her acknowledgement
        is ignored even before triage's reassignment arrives). A notice's delivery span
        continues the record's trace itself (no span of its own for queueing it)."""
        clears: list[usecases.Input] = []
        notices: list[tuple[usecases.Input, str | None]] = []
        for record in records:
            parsed = await self._parse(record)
            if parsed is None:
                continue
            envelope, data = parsed
            if isinstance(data, Notified):
                item = usecases.Input(envelope, record.topic, record.partition, record.offset)
                notices.append((item, header(record, "traceparent")))
            elif isinstance(data, Acknowledged | Recused) or (
                isinstance(data, StatusChanged) and data.status == usecases.CLOSED
            ):
                clears.append(input_of(record, envelope))
        if clears:
            await usecases.clear(usecases.Clear(clears), self.unit_of_work(), self.env)
        if notices:
            command = usecases.QueueNotices(notices)
            await usecases.queue_notices(command, self.unit_of_work(), self.env)
            self._deliveries_due.set()

    async def on_report(self, records: Sequence[ConsumerRecord]) -> None:
        """A handler's message to the reporter is the feedback the legal clock waits for;
        the batch's messages step their incidents in one transaction (`usecases.clear`).

        Nothing else on `incident.reports` is escalation's business; the message text is
        never read, kept or logged. Invalid records are left to triage, which
        dead-letters what it cannot read on this topic.
        """
        clears: list[usecases.Input] = []
        for record in records:
            parsed = parsed_as(record, ReporterMessage)
            if parsed is None:
                continue
            envelope, message = parsed
            if message.direction != "to_reporter":
                continue
            held = _without_text(envelope)  # held until triage if early
            clears.append(input_of(record, held))
        if clears:
            await usecases.clear(usecases.Clear(clears), self.unit_of_work(), self.env)

    async def _parse(self, record: ConsumerRecord) -> tuple[Envelope, Event] | None:
        """The record's envelope and data (validated once), or None: dead-lettered."""
        try:
            envelope = parse_envelope(record.value or b"")
            return envelope, data_of(envelope)
        except InvalidEvent as exc:
            await self.runtime.dead_letter_poison(record, exc)
            return None

    # -- deadlines ---------------------------------------------------------------

    async def fire_due(self, limit: int = 200) -> int:
        """Run every transition that is due now; returns how many incidents moved."""
        return await usecases.step(usecases.Step(limit), self.unit_of_work(), self.env)

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
                        f"{self.runtime.schema}_wakeup",
                        lambda _conn, _pid, _channel, payload: self._notified(payload),
                    )
                self._wake.clear()
                # Woken by an earlier wake-up: look for due rows only when one is due.
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
                delay = IDLE_FALLBACK_SECONDS
                if nearest is not None:
                    delay = max(0.0, min(delay, (nearest - self.now()).total_seconds()))
                if held and delay == 0.0:
                    delay = 0.05  # do not spin while the due row's lock is held
                await first_of([self._wake.wait(), stop.wait()], delay)
            except TRANSIENT_ERRORS as exc:
                log.warning("escalation scheduler: %r; retrying", exc)
                listener = None
                await asyncio.sleep(0.5)
        if listener is not None:
            await listener.close()

    async def _nearest(self) -> datetime | None:
        """The earliest wake-up, which the scheduler then sleeps until (`_planned`);
        while it is looked up, every NOTIFY wakes the scheduler (its commit may be
        after the query's snapshot)."""
        self._planned = None
        async with self.runtime.db.acquire() as conn:
            nearest: datetime | None = await conn.fetchval(
                "SELECT min(wakeup) FROM escalation_state WHERE wakeup IS NOT NULL"
            )
        self._planned = nearest
        return nearest

    def _notified(self, payload: str) -> None:
        """A NOTIFY of saved states (migration 0008: their earliest wake-up, in Unix
        seconds; sent after the commit): wake the scheduler only if that is earlier than
        the wake-up it sleeps until. Any other payload wakes it."""
        try:
            when = datetime.fromtimestamp(float(payload), UTC)
        except (ValueError, OverflowError, OSError):
            when = None
        if when is None or self._planned is None or when < self._planned:
            self._wake.set()

    # -- notices -----------------------------------------------------------------

    async def run_deliveries(self, stop: asyncio.Event) -> None:
        """Deliver queued notices until `stop`, up to `DELIVERY_CONCURRENCY` at once.

        A slow webhook or mail server holds up only its own notices, never the
        consumers. Due rows are leased (`_claim`), delivered outside any transaction and
        their outcome recorded (`_deliver`); a notice whose worker died is leased again
        when its lease runs out, with a longer lease each time.
        """
        inflight: set[asyncio.Task[None]] = set()
        measured = looked = 0.0
        try:
            while not stop.is_set():
                self._deliveries_due.clear()
                delay = DELIVERY_POLL_SECONDS
                try:
                    free = DELIVERY_CONCURRENCY - len(inflight)
                    for row in await self._claim(free) if free > 0 else ():
                        task = asyncio.create_task(self._deliver(row))
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                    # At most every short pause (under load), the gauges, and how long
                    # to sleep: until the next pending notice comes due (a lease that
                    # runs out), at most the fallback; a new notice wakes it earlier.
                    if time.monotonic() - measured >= DELIVERY_POLL_SECONDS:
                        next_due = await self._refresh_queue_metrics()
                        measured = time.monotonic()
                        delay = _seconds_until(
                            next_due, DELIVERY_POLL_SECONDS, IDLE_FALLBACK_SECONDS
                        )
                    if time.monotonic() - looked >= min(PENDING_EVERY, self.held_alarm):
                        await self.alarm_held()
                        looked = time.monotonic()
                except TRANSIENT_ERRORS as exc:
                    log.warning("notice delivery: %r; retrying", exc)
                # A finished delivery only matters when every slot is taken; otherwise
                # the queue is empty until a new notice (or the timer) says otherwise.
                full = len(inflight) >= DELIVERY_CONCURRENCY
                waits = [self._deliveries_due.wait(), stop.wait(), *(inflight if full else ())]
                await first_of(waits, delay)
        finally:
            for task in inflight:  # their leases run out; a later worker delivers them
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def alarm_held(self) -> int:
        """Alarm each incident whose notices have waited `notify_held_alarm_seconds` for a
        decision escalation never started from, once (`usecases.alarm_held`: an error log
        line naming the incident only, `incidents_escalation_held_alarms_total`), and set
        `incidents_escalation_held_incidents`; returns how many were alarmed now.

        Such a notice is held for good (`usecases.hold_notice`): the decision was
        dead-lettered here, and intake's decision clock stopped at triage's decision, so
        without this nobody would be told and nothing would escalate (review D7). The
        delivery worker calls it every `PENDING_EVERY` seconds (sooner for a shorter
        limit)."""
        held = await usecases.alarm_held(
            usecases.AlarmHeld(self.held_alarm), self.unit_of_work(), self.env
        )
        for incident, _ in held.raised:
            HELD_ALARMS.inc()
            log.error(
                "incident %s: its notices have waited over %.0f s for a triage decision"
                " escalation has not read (dead-lettered?): nobody has been asked and no"
                " deadline runs; list dead letters (incidents deadletter list), fix, re-drive",
                incident,
                self.held_alarm,
            )
        HELD_NOW.set(held.incidents)
        return len(held.raised)

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

        Whether the incident excludes the recipient, or is closed, is asked before every
        attempt (SPEC invariant 3): here before the first (`_standing`, one indexed
        read), and by the adapter before each retry (`_StillAllowed`, the same read), so
        a removal or a close folded while a webhook or mail server is retried stops it.
        A notice not sent for that is recorded failed (`gave_up`, `EXCLUDED_DETAIL` or
        `CLOSED_DETAIL`: a closed incident asks and tells nobody). A notice taken before
        the incident's decision reached escalation is held, never sent on a guess
        (`usecases.hold_notice`); the decision makes it due again, and one held past
        `notify_held_alarm_seconds` is alarmed (`alarm_held`).

        A notice that failed for good (the adapter's own retries exhausted), or whose
        worker died `DELIVERY_MAX_ATTEMPTS` times, counts as failed: once every
        recipient of a level failed, the next level is asked at once. A look-up that
        fails sends nothing and records nothing: the lease runs out and the notice is
        taken again.
        """
        envelope = parse_envelope(bytes(row["body"]))
        notice = Notified.read(envelope)  # validated when it was queued
        with (
            span_after("escalation: deliver notice", row["traceparent"]),
            bind_incident(envelope.subject),
        ):
            outcome: Outcome | None = None
            recheck = _StillAllowed(self._standing, envelope.subject, notice.principal)
            try:
                standing = await self._standing(envelope.subject, notice.principal)
                if standing is None:
                    held = usecases.HoldNotice(envelope, HELD_RECHECK_SECONDS)
                    if await usecases.hold_notice(held, self.unit_of_work(), self.env):
                        log.info("notice %s: held until its incident's decision", envelope.id)
                        return
                    standing = await self._standing(envelope.subject, notice.principal)
            except TRANSIENT_ERRORS as exc:  # the lease runs out and it is taken again
                log.warning("notice %s: not looked up: %r", envelope.id, exc)
                return
            if standing is None:  # never: states are not removed; never sent on a guess
                return
            excluded, closed = standing
            if excluded:
                _log_excluded(envelope, notice)
                delivered = False
                outcome = Outcome(None, False, 0, "gave_up", EXCLUDED_DETAIL)
            elif closed:
                log.info(
                    "notice %s: not sent: incident %s is closed", envelope.id, envelope.subject
                )
                delivered = False
                outcome = Outcome(None, False, 0, "gave_up", CLOSED_DETAIL)
            elif row["attempts"] > DELIVERY_MAX_ATTEMPTS:
                log.error("notice %s: gave up after %d leases", envelope.id, row["attempts"] - 1)
                delivered = False
            else:
                with recording() as record:
                    delivered = await self.notifier.deliver(
                        envelope.subject, notice, delivery_id=envelope.id, still_allowed=recheck
                    )
                if not delivered and recheck.unsure:  # not sent; taken again later
                    return
                if not delivered and recheck.excluded:
                    _log_excluded(envelope, notice)
                outcome = record.delivered() if delivered else record.failed()
            delivery = usecases.Delivery(envelope, delivered, outcome, current_traceparent())
            try:
                if delivered:
                    await self._delivered.submit(delivery)
                else:
                    command = usecases.RecordDelivery([delivery])
                    await usecases.record_delivery(command, self.unit_of_work(), self.env)
            except TRANSIENT_ERRORS as exc:  # the lease runs out and it is delivered again
                log.warning("notice %s: outcome not recorded: %r", envelope.id, exc)

    async def _standing(self, incident_id: str, principal: str) -> tuple[bool, bool] | None:
        """Whether the incident's escalation excludes `principal` now (triage's decision,
        a reassignment's removal, a recusal), and whether it is closed; None while
        escalation has no state for the incident (its decision comes on another topic
        than the notice, with no order between them), when nobody can tell. One read by
        primary key."""
        async with self.runtime.db.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT coalesce((state -> 'excluded') ? $2, false) AS excluded,"
                " coalesce(state ->> 'closed_at', '') <> '' AS closed"
                " FROM escalation_state WHERE incident_id = $1",
                incident_id,
                principal,
            )
        return None if row is None else (bool(row["excluded"]), bool(row["closed"]))

    async def _refresh_queue_metrics(self) -> datetime | None:
        """Set the queue's gauges; when the next pending notice comes due (None: none)."""
        async with self.runtime.db.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, min(created_at) AS oldest, min(next_at) AS next_due"
                " FROM deliveries WHERE state = 'pending'"
            )
        QUEUED.set(row["n"])
        oldest = row["oldest"]
        QUEUED_AGE.set(max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest else 0)
        next_due: datetime | None = row["next_due"]
        return next_due

    async def _record_delivered(
        self, conn: asyncpg.Connection, deliveries: Sequence[usecases.Delivery]
    ) -> list[None]:
        """`GroupCommit` writer: record delivered notices in its shared transaction."""
        command = usecases.RecordDelivery(deliveries)
        await usecases.record_delivery(command, JoinedUnitOfWork(conn), self.env)
        return [None] * len(deliveries)


class _StillAllowed:
    """The adapter's question before each retry of one notice: may it still be sent?

    One read (`standing`: `Escalation._standing`). False when the incident excludes the
    recipient now (`excluded`; `detail` `EXCLUDED_DETAIL`) or has been closed since the
    first attempt (`closed`; `detail` `CLOSED_DETAIL`, which the adapter notes: a closed
    incident tells nobody), and also when the read failed (`unsure`: the worker then
    records nothing and the notice is taken again when its lease runs out), so a retry
    is never sent unchecked."""

    def __init__(
        self,
        standing: Callable[[str, str], Awaitable[tuple[bool, bool] | None]],
        incident_id: str,
        principal: str,
    ) -> None:
        self.standing = standing
        self.incident_id = incident_id
        self.principal = principal
        self.excluded = False
        self.closed = False
        self.unsure = False
        self.detail: str | None = None

    async def __call__(self) -> bool:
        try:
            standing = await self.standing(self.incident_id, self.principal)
        except TRANSIENT_ERRORS as exc:
            log.warning(
                "incident %s: exclusion not looked up before a retry: %r", self.incident_id, exc
            )
            self.unsure = True
            return False
        # no state (never once the first attempt was made: states are not removed)
        self.excluded = standing is None or standing[0]
        self.closed = standing is not None and standing[1]
        if self.excluded:
            self.detail = EXCLUDED_DETAIL
        elif self.closed:
            self.detail = CLOSED_DETAIL
            log.info("incident %s: closed; a notice's retry is not sent", self.incident_id)
        return not (self.excluded or self.closed)


def _log_excluded(envelope: Envelope, notice: Notified) -> None:
    log.warning(
        "notice %s: not sent: %s is excluded from incident %s since it was queued",
        envelope.id,
        notice.principal,
        envelope.subject,
    )


def delivery_lease(settings: object) -> float:
    """Seconds a worker may take over one notice: every attempt of the adapter, each
    retry's longest wait (30 s), and a margin (the log adapter takes no time)."""
    if getattr(settings, "notify_adapter", "log") == "log":
        return 10.0
    retries = int(getattr(settings, "notify_retries", 3))
    timeout = float(getattr(settings, "notify_timeout_seconds", 5.0))
    return (retries + 1) * timeout + retries * 30.0 + 10.0


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


def _without_text(envelope: Envelope) -> Envelope:
    """A reporter message with its text blanked: the clock needs only that it was sent."""
    return envelope.model_copy(update={"data": {**envelope.data, "text": ""}})


def _seconds_until(when: datetime | None, shortest: float, longest: float) -> float:
    """Seconds from now (wall time, as the database's timestamps) until `when`, within
    [`shortest`, `longest`]; `longest` when there is no `when`."""
    if when is None:
        return longest
    return min(longest, max(shortest, (when - datetime.now(UTC)).total_seconds()))


def system_clock() -> datetime:
    """Wall time (tests pass another clock)."""
    return datetime.now(UTC)
