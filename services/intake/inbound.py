"""The `incident.inbound` consumer: reports that registered systems publish on Kafka.

The contract is docs/inbound.md: one `incident.report.inbound.v1` CloudEvent per record,
in structured mode (`content-type: application/cloudevents+json`) or binary mode (`ce_*`
headers, `content-type: application/json`), signed with the sending system's registered
Ed25519 key (`services.infra.systems`). An authentic event in the system's scope is taken
by `IntakeService.take_inbound`, the use case and validation model of `POST /v1/reports`
(triage then decides it), and the sender is answered on `incident.inbound.results`, keyed
by its event id: `incident.inbound.accepted.v1` with the incident id, or
`incident.inbound.rejected.v1` with the reason. A resend of the same event answers the
same incident again.

Anything else (unsigned, wrongly signed, out of scope, malformed, oversized, invalid)
goes to `incident.deadletter` once, with the reason and the source offset, in the same
transaction as its tracking row and its rejection answer; the consumer carries on. The
original bytes are withheld (`original_b64` is empty; the reason carries their sha256):
whatever arrives here may be a report in clear, and the dead-letter topic, intake's outbox
and the logs keep it far longer than `incident.inbound` (7 days). The reason says only
where and what kind of error, never the input.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

import asyncpg
from aiokafka import ConsumerRecord

from services.domain.events import InboundAccepted, InboundRejected, Topic, make_event
from services.domain.inbound import InboundEvent, InboundRefused, decode, result_id_for
from services.infra import eventstore, metrics
from services.infra.runtime import Runtime
from services.infra.systems import System, Systems
from services.intake.service import IntakeService
from services.intake.usecases import REFUSALS, refusal_reason

CONSUMER = "intake-inbound"
log = logging.getLogger(__name__)


class InboundConsumer:
    """Handles one inbound record at a time, idempotently."""

    def __init__(self, runtime: Runtime, service: IntakeService, systems: Systems) -> None:
        self.runtime = runtime
        self.service = service
        self.systems = systems

    async def handle(self, record: ConsumerRecord) -> None:
        raw = record.value or b""
        inbound: InboundEvent | None = None
        system: System | None = None
        try:
            inbound = decode(record.headers or (), raw, prefix="ce_")
            system = self.systems.signer_of(inbound.event)
            submission = await self.service.take_inbound(
                inbound.event, system, channel="kafka", issue_receipt=False
            )
        except REFUSALS as exc:
            kind = exc.kind if isinstance(exc, InboundRefused) else "invalid"
            await self._reject(record, refusal_reason(exc), kind, inbound, system)
            return
        assert inbound.id is not None  # a taken event has a valid id
        accepted = InboundAccepted(
            event_id=inbound.id, system=system.id, incident_id=submission.body["incident_id"]
        )
        async with self.runtime.db.acquire() as conn, conn.transaction():
            if not await eventstore.track(
                conn, CONSUMER, _record_key(record), record.topic, record.partition, record.offset
            ):
                return
            await self._answer(conn, accepted, system.id, inbound.id)

    async def _answer(
        self,
        conn: asyncpg.Connection,
        data: InboundAccepted | InboundRejected,
        system_id: str,
        event_id: str,
    ) -> None:
        """Queue the sender's answer on incident.inbound.results, keyed by its event id."""
        accepted = isinstance(data, InboundAccepted)
        incident = data.incident_id if isinstance(data, InboundAccepted) else None
        correlation = await eventstore.correlation_of(conn, incident) if incident else None
        event = make_event(
            InboundAccepted.TYPE if accepted else InboundRejected.TYPE,
            subject=incident or "inbound",
            data=data,
            source=self.runtime.source,
            time=datetime.now(UTC),
            actor=f"system:{self.runtime.name}",
            correlationid=correlation,
            # the sender's id if it is a UUID (always, once accepted)
            causationid=event_id if accepted else None,
            event_id=result_id_for(system_id, event_id),
        )
        await eventstore.enqueue(
            conn,
            [
                (
                    event.id,
                    self.runtime.settings.topic(Topic.INBOUND_RESULTS),
                    event_id,
                    event.to_bytes(),
                    eventstore.record_headers(event),
                )
            ],
        )

    async def _reject(
        self,
        record: ConsumerRecord,
        reason: str,
        kind: str,
        inbound: InboundEvent | None,
        system: System | None,
    ) -> None:
        digest = hashlib.sha256(record.value or b"").hexdigest()
        async with self.runtime.db.acquire() as conn, conn.transaction():
            if not await eventstore.track(
                conn, CONSUMER, _record_key(record), record.topic, record.partition, record.offset
            ):
                return
            await self.runtime.dead_letter(
                conn,
                reason=f"{reason} (original withheld: a report in clear; sha256:{digest})",
                original=b"",
                source_topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            # Only an authenticated sender is answered: anybody could send a record
            # under another system's event id, and its owner must not read our refusal
            # of that forgery as the answer to its own event.
            event_id = inbound.id if inbound is not None else None
            if system is not None and event_id is not None and len(event_id) <= 200:
                rejected = InboundRejected(event_id=event_id, system=system.id, reason=reason)
                await self._answer(conn, rejected, system.id, event_id)
        if kind in ("unauthenticated", "out_of_scope"):  # a security event, not a typo
            metrics.REJECTED_EVENTS.labels(self.runtime.name, kind).inc()
            log.error("inbound record %s[%d]@%d refused: %s", *_where(record), reason)


def _record_key(record: ConsumerRecord) -> str:
    """The tracking key of one record: its coordinates and content (a record re-read
    after a broker reset is the same record; a resend of its event is a new one)."""
    digest = hashlib.sha256(record.value or b"").hexdigest()[:16]
    return f"inbound:{record.topic}:{record.partition}:{record.offset}:{digest}"


def _where(record: ConsumerRecord) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset
