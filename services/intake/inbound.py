"""The `incident.inbound` consumer: reports that other systems publish on Kafka.

A valid `incident.report.submitted.v1` CloudEvent becomes an incident exactly as if it
had been posted over HTTP (same validation, `ReportInput`, and the same resolution of
the people named, `IntakeService.resolve_people`). The inbound event id is the idempotency
key: a re-delivered record is tracked and skipped. Anything else goes to
`incident.deadletter` with the reason and the source offset, in the same transaction
as the tracking row, and the consumer carries on. The original bytes are withheld
(`original_b64` is empty; the reason carries their sha256): whatever arrives here may
be a report in clear, and the dead-letter topic, intake's outbox and the logs keep it
far longer than `incident.inbound` (7 days). An operator reads the original on
`incident.inbound` at the source offset while it is kept. The reason says only where
and what kind of error (`summary: String should have at most 500 characters`),
never the input.
"""

from __future__ import annotations

import hashlib
import uuid

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from services.domain.events import SUBMITTED, InvalidEvent, explain, parse_envelope
from services.domain.reports import PeopleRefused, ReportInput, UnknownCategory
from services.infra import eventstore
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent
from services.intake.service import IntakeService

CONSUMER = "intake-inbound"


class InboundConsumer:
    """Handles one inbound record at a time, idempotently."""

    def __init__(self, runtime: Runtime, service: IntakeService) -> None:
        self.runtime = runtime
        self.service = service

    async def handle(self, record: ConsumerRecord) -> None:
        raw = record.value or b""
        try:
            envelope = parse_envelope(raw)
            if envelope.type != SUBMITTED:
                raise InvalidEvent(
                    f"incident.inbound accepts only {SUBMITTED}, not {envelope.type}"
                )
            fields = {k: v for k, v in envelope.data.items() if k in ReportInput.model_fields}
            report = ReportInput.model_validate(fields)
            reporter = envelope.data.get("reporter")
            if reporter is not None and not isinstance(reporter, str):
                raise InvalidEvent("data.reporter must be a person id or null")
        except (InvalidEvent, ValidationError) as exc:
            reason = (
                exc.reason if isinstance(exc, InvalidEvent) else f"invalid report: {explain(exc)}"
            )
            await self._reject(record, reason, key=None)
            return
        key = f"inbound:{envelope.id}"
        incident_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"incident.inbound/{envelope.id}"))
        if report.category not in self.service.policy.categories:
            unknown = UnknownCategory(report.category, sorted(self.service.policy.categories))
            await self._reject(record, str(unknown), key=key)
            return
        try:  # the same resolution and refusals as POST /v1/reports
            people = await self.service.resolve_people(report, reporter)
        except PeopleRefused as exc:
            await self._reject(record, f"invalid report: {exc}", key=key)
            return
        # The plaintext of this record is sealed before anything is stored or republished
        # (incident.inbound itself must be short-retention: see docs/security.md, Privacy).
        async with self.runtime.db.acquire() as conn, conn.transaction():
            if not await eventstore.track(
                conn, CONSUMER, key, record.topic, record.partition, record.offset
            ):
                return
            await self.service.open_incident(
                conn,
                incident_id,
                report,
                reporter=reporter,
                channel="kafka",
                actor=envelope.actor or f"system:{envelope.source}",
                traceparent=current_traceparent() or envelope.traceparent,
                causationid=envelope.id,
                people=people,
            )

    async def _reject(self, record: ConsumerRecord, reason: str, key: str | None) -> None:
        key = key or (
            f"rejected:{record.topic}:{record.partition}:{record.offset}:"
            + hashlib.sha256(record.value or b"").hexdigest()[:16]
        )
        async with self.runtime.db.acquire() as conn, conn.transaction():
            if not await eventstore.track(
                conn, CONSUMER, key, record.topic, record.partition, record.offset
            ):
                return
            digest = hashlib.sha256(record.value or b"").hexdigest()
            await self.runtime.dead_letter(
                conn,
                reason=f"{reason} (original withheld: a report in clear; sha256:{digest})",
                original=b"",
                source_topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
