"""What triage does with each event: keep the directory, decide, re-exclude on amendment.

Each input is handled in a transaction with its tracking row, so a re-delivered record
makes no second decision or notification; the submitted reports of a batch share one
transaction (one statement per table), and a failed batch is retried record by record
(`RecordProcessor`). Decisions are pure
(`services.domain.triage.decide`); this module only loads inputs and stores outputs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
from aiokafka import ConsumerRecord

from services.domain.envelope import Envelope
from services.domain.events import (
    SUBMITTED,
    Assigned,
    EventData,
    InvalidEvent,
    Notified,
    ReportAmended,
    ReportSubmitted,
    make_event,
    parse_envelope,
)
from services.domain.org import DIRECTORY_EVENT_TYPES, OrgSnapshot, fold_directory
from services.domain.policy import Policy
from services.domain.triage import TriageDecision, decide, reexclude
from services.infra import eventstore
from services.infra.crypto import Pseudonyms
from services.infra.kafka import per_record, record_span
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent

log = logging.getLogger(__name__)
AMENDED = "incident.report.amended.v1"


class PolicyConflict(RuntimeError):
    """The policy file reuses a version already recorded with other content."""


class Triage:
    """Triage's handlers and the state they share (the directory, the policies)."""

    def __init__(self, runtime: Runtime, policy: Policy, pseudonyms: Pseudonyms) -> None:
        self.runtime = runtime
        self.policy = policy
        self.pseudonyms = pseudonyms
        self.policies: dict[str, Policy] = {policy.version: policy}
        self.org = OrgSnapshot()
        self.directory_seq = 0

    async def start(self) -> None:
        """Record the policy version (refusing a changed file under an old version)."""
        # exclude_none: a policy without the (later) optional sections records as before
        body = self.policy.model_dump(mode="json", exclude_none=True)
        async with self.runtime.db.acquire() as conn:
            await conn.execute(
                "INSERT INTO policies (version, body) VALUES ($1, $2::jsonb)"
                " ON CONFLICT DO NOTHING",
                self.policy.version,
                json.dumps(body),
            )
            stored = await conn.fetchval(
                "SELECT body FROM policies WHERE version = $1", self.policy.version
            )
            if json.loads(stored) != body:
                raise PolicyConflict(
                    f"policy version {self.policy.version!r} was recorded with other content;"
                    " give the changed policy a new version"
                )
            for row in await conn.fetch("SELECT version, body FROM policies"):
                self.policies[row["version"]] = Policy.model_validate(json.loads(row["body"]))

    # -- directory --------------------------------------------------------------

    async def on_directory(self, records: Sequence[ConsumerRecord]) -> None:
        await per_record(self._directory_event)(records)

    async def _directory_event(self, record: ConsumerRecord) -> None:
        try:
            envelope = parse_envelope(record.value or b"")
            if envelope.type not in DIRECTORY_EVENT_TYPES:
                raise InvalidEvent(f"not a directory event: {envelope.type}")
            fold_directory([envelope])  # validates the data before it is kept
        except InvalidEvent as exc:
            await self.runtime.dead_letter_poison(record, exc)
            return
        async with self.runtime.db.acquire() as conn, conn.transaction():
            if await eventstore.track(
                conn,
                "triage-directory",
                envelope.id,
                record.topic,
                record.partition,
                record.offset,
            ):
                await conn.execute(
                    "INSERT INTO directory_log (event_id, body) VALUES ($1, $2)"
                    " ON CONFLICT DO NOTHING",
                    envelope.id,
                    envelope.to_bytes(),
                )

    async def _refresh_directory(self, conn: asyncpg.Connection) -> None:
        """Catch up with directory events any triage worker recorded."""
        rows = await conn.fetch(
            "SELECT seq, body FROM directory_log WHERE seq > $1 ORDER BY seq", self.directory_seq
        )
        if rows:
            events = [parse_envelope(bytes(r["body"])) for r in rows]
            self.org = fold_directory(events, start=self.org)
            self.directory_seq = int(rows[-1]["seq"])

    async def _directory_at(self, conn: asyncpg.Connection, seq: int) -> OrgSnapshot:
        rows = await conn.fetch("SELECT body FROM directory_log WHERE seq <= $1 ORDER BY seq", seq)
        return fold_directory(parse_envelope(bytes(r["body"])) for r in rows)

    # -- reports ----------------------------------------------------------------

    async def on_report(self, records: Sequence[ConsumerRecord]) -> None:
        """Decide on the batch's submitted reports in one transaction (with their tracking
        rows); then each amendment in a transaction of its own, in order."""
        submitted: list[tuple[ConsumerRecord, Envelope, ReportSubmitted]] = []
        amended: list[tuple[ConsumerRecord, Envelope, ReportAmended]] = []
        for record in records:
            try:
                envelope = parse_envelope(record.value or b"")
                if envelope.type == SUBMITTED:
                    submitted.append(
                        (record, envelope, ReportSubmitted.model_validate(envelope.data))
                    )
                elif envelope.type == AMENDED:
                    amended.append((record, envelope, ReportAmended.model_validate(envelope.data)))
                # reporter messages are not triage's business
            except (InvalidEvent, ValueError) as exc:
                await self.runtime.dead_letter_poison(record, exc)
        if submitted:
            async with self.runtime.db.acquire() as conn, conn.transaction():
                await self._decide(conn, submitted)
        for record, envelope, data in amended:
            with record_span(record):
                async with self.runtime.db.acquire() as conn, conn.transaction():
                    if await self._track(conn, record, envelope):
                        await self._reexclude(conn, envelope, data)

    async def _track(self, conn: asyncpg.Connection, record: ConsumerRecord, env: Envelope) -> bool:
        return await eventstore.track(
            conn, "triage-reports", env.id, record.topic, record.partition, record.offset
        )

    async def _decide(
        self,
        conn: asyncpg.Connection,
        reports: Sequence[tuple[ConsumerRecord, Envelope, ReportSubmitted]],
    ) -> None:
        """Decide on each report not decided before: its decision row, its events."""
        first = await eventstore.track_each(
            conn,
            "triage-reports",
            [(e.id, r.topic, r.partition, r.offset) for r, e, _ in reports],
        )
        todo = [item for item, new in zip(reports, first, strict=True) if new]
        if not todo:
            return
        await self._refresh_directory(conn)
        now = datetime.now(UTC)
        rows, outputs = [], []
        for record, envelope, report in todo:
            with record_span(record):  # the events continue the report's trace
                # The report carries the reporter only as a pseudonym: whoever in the
                # directory it matches is excluded. The match is never stored or
                # published, only used.
                reporter = self._reporter(envelope.subject, report.reporter, self.org)
                decision = decide(report, self.org, self.policy, now, reporter_person=reporter)
                rows.append((envelope.subject, report, decision))
                repeat = self.policy.severities[decision.severity].repeat_last_every
                triaged = decision.to_triaged().model_copy(
                    update={"repeat_last_every": repeat, "report_digest": report.report_digest}
                )
                produced: list[tuple[str, EventData]] = [("incident.triaged.v1", triaged)]
                produced.extend(self._first_level(decision, report.report_digest))
                outputs.append((envelope, self._events(envelope, produced, now)))
                for note in decision.notes:
                    log.info("incident %s: %s", envelope.subject, note)
        await conn.execute(
            "INSERT INTO decisions (incident_id, report, reporter, policy_version,"
            " directory_seq, decided_at)"
            " SELECT i, r::jsonb, p, v, $5, $6"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x (i, r, p, v)",
            [subject for subject, _, _ in rows],
            [json.dumps(report.model_dump(mode="json")) for _, report, _ in rows],
            [report.reporter for _, report, _ in rows],
            [decision.policy_version for _, _, decision in rows],
            self.directory_seq,
            now,
        )
        versions = await eventstore.stream_versions(conn, [e.subject for e, _ in outputs])
        await eventstore.append_streams(
            conn,
            [(e.subject, versions[e.subject], events) for e, events in outputs],
            topic_prefix=self.runtime.settings.kafka_topic_prefix,
        )

    def _first_level(self, decision: TriageDecision, digest: str) -> list[tuple[str, EventData]]:
        recipients = list(decision.first_recipients)
        if not recipients:
            return []  # escalation records nobody_eligible and asks the next level
        out: list[tuple[str, EventData]] = [
            ("incident.assigned.v1", Assigned(level=1, principals=recipients))
        ]
        return out + _notified(recipients, digest)

    async def _reexclude(
        self, conn: asyncpg.Connection, envelope: Envelope, amended: ReportAmended
    ) -> None:
        row = await conn.fetchrow(
            "SELECT * FROM decisions WHERE incident_id = $1 FOR UPDATE", envelope.subject
        )
        if row is None:
            raise LookupError(f"amendment of {envelope.subject} before its decision")
        policy = self.policies[row["policy_version"]]
        report = ReportSubmitted.model_validate(json.loads(row["report"]))
        org_then = await self._directory_at(conn, row["directory_seq"])
        reporter = self._reporter(envelope.subject, row["reporter"], org_then)
        decision = decide(report, org_then, policy, row["decided_at"], reporter_person=reporter)
        amendments = json.loads(row["amendments"])
        await self._refresh_directory(conn)
        for earlier in amendments:
            decision = reexclude(
                decision, earlier["accused"], self.org, policy, named=earlier["named"]
            ).decision
        result = reexclude(
            decision, amended.accused_added, self.org, policy, named=amended.named_added
        )
        amendments.append({"accused": amended.accused_added, "named": amended.named_added})
        await conn.execute(
            "UPDATE decisions SET amendments = $2::jsonb WHERE incident_id = $1",
            envelope.subject,
            json.dumps(amendments),
        )
        reassigned = result.to_reassigned()
        if reassigned is None:
            return
        outputs: list[tuple[str, EventData]] = [("incident.reassigned.v1", reassigned)]
        outputs.extend(_notified(reassigned.added, amended.report_digest))
        await self._append(conn, envelope, outputs, datetime.now(UTC))

    def _reporter(self, incident_id: str, pseudonym: str | None, org: OrgSnapshot) -> str | None:
        """The directory person whose pseudonym in this incident is the report's reporter."""
        return self.pseudonyms.match(incident_id, pseudonym, org.people)

    def _events(
        self, cause: Envelope, outputs: list[tuple[str, EventData]], now: datetime
    ) -> list[Envelope]:
        """Triage's events caused by `cause`, in the current span's trace."""
        return [
            make_event(
                type_,
                subject=cause.subject,
                data=data,
                source=self.runtime.source,
                time=now,
                actor="system:triage",
                causationid=cause.id,
                correlationid=cause.correlationid or cause.id,
                traceparent=current_traceparent(),
            )
            for type_, data in outputs
        ]

    async def _append(
        self,
        conn: asyncpg.Connection,
        cause: Envelope,
        outputs: list[tuple[str, EventData]],
        now: datetime,
    ) -> None:
        version = await eventstore.stream_version(conn, cause.subject)
        await eventstore.append(
            conn,
            cause.subject,
            version,
            self._events(cause, outputs, now),
            topic_prefix=self.runtime.settings.kafka_topic_prefix,
        )


def _notified(principals: Sequence[str], digest: str) -> list[tuple[str, EventData]]:
    """One `incident.notified.v1` per principal asked at level 1 by triage."""
    return [
        (
            "incident.notified.v1",
            Notified(principal=p, channel="triage", level=1, report_digest=digest),
        )
        for p in principals
    ]
