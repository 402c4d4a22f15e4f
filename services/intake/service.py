"""Intake's use cases. Each takes plain inputs, runs one transaction, returns a result."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from services.domain.policy import Policy
from services.domain.reports import ReportInput, submit_report
from services.infra import eventstore
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent


@dataclass(frozen=True)
class Accepted:
    """A report that is now durably an incident."""

    incident_id: str
    event_id: str


class IntakeService:
    """Turns reports into incidents: one event, stored and queued in one commit."""

    def __init__(self, runtime: Runtime, policy: Policy) -> None:
        self.runtime = runtime
        self.policy = policy

    async def submit(
        self,
        report: ReportInput,
        *,
        reporter: str | None,
        actor: str,
        channel: str,
        event_id: str | None = None,
        causationid: str | None = None,
    ) -> Accepted:
        """Open an incident for a report. Raises UnknownCategory for a bad category."""
        incident_id = str(uuid.uuid4())
        event = submit_report(
            report,
            self.policy,
            incident_id=incident_id,
            reporter=reporter,
            channel=channel,
            actor=actor,
            source=self.runtime.source,
            now=datetime.now(UTC),
            traceparent=current_traceparent(),
            event_id=event_id,
            causationid=causationid,
        )
        async with self.runtime.db.acquire() as conn, conn.transaction():
            await eventstore.append(
                conn, incident_id, 0, [event], topic_prefix=self.runtime.settings.kafka_topic_prefix
            )
        return Accepted(incident_id=incident_id, event_id=event.id)
