"""Triage's Kafka adapters: records in, commands out (`services.triage.usecases`).

- `directory.changes`: each valid directory event becomes part of a `KeepDirectory`;
- `incident.reports`: the batch's submitted reports one `DecideReports`; an amendment a
  `Reexclude`, a confirmation by an independent-role holder a `DecideAgain`;
- `incident.activity`: a recusal or an ordered reassignment a `Reroute`; every other
  activity type is ignored.

A record that cannot be read is dead-lettered here; everything else is the use cases'
(docs/conflicts.md). The submitted reports of a batch share one unit of work; each later
input has one of its own, in order. A failed batch is retried record by record by the
caller (`RecordProcessor`), and tracking makes a re-delivered record change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from aiokafka import ConsumerRecord
from prometheus_client import Counter

from services.domain.envelope import Envelope
from services.domain.events import (
    InvalidEvent,
    PeopleConfirmed,
    ReassignmentOrdered,
    Recused,
    ReportAmended,
    ReportSubmitted,
    parse_envelope,
)
from services.domain.org import DirectoryProjection, DirectoryView, Org
from services.domain.policy import Policy
from services.domain.triage import TriageDecision
from services.infra.crypto import Pseudonyms
from services.infra.kafka import record_span
from services.infra.recorder import TrackedInput
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent
from services.triage.postgres import PostgresTriageUnitOfWork
from services.triage.usecases import (
    Cause,
    DecideReports,
    KeepDirectory,
    LaterCommand,
    PolicyConflict,
    RecordPolicy,
    TriageUseCases,
    activity_input,
    directory_event,
    later_command,
    report_input,
)

__all__ = ["PolicyConflict", "Triage"]


def _tracked(record: ConsumerRecord, envelope: Envelope) -> TrackedInput:
    return (envelope.id, record.topic, record.partition, record.offset)


def _cause(record: ConsumerRecord, envelope: Envelope) -> Cause:
    """The input, its work in a span continuing the record's trace."""

    def scope() -> AbstractContextManager[object]:
        return record_span(record)

    return Cause(envelope, _tracked(record, envelope), scope)


RECHECK_REFUSED = Counter(
    "incidents_triage_recheck_refused_total",
    "Decisions a directory re-check left for the next one (reason unknown_policy: a"
    " policy version this instance cannot read, recorded by a newer one).",
    ["reason"],
)


class Triage:
    """Triage's consumers: each builds commands from a batch of records and runs them."""

    def __init__(self, runtime: Runtime, policy: Policy, pseudonyms: Pseudonyms) -> None:
        self.runtime = runtime
        self.usecases = TriageUseCases(
            policy,
            pseudonyms,
            topic_prefix=runtime.settings.kafka_topic_prefix if runtime is not None else "",
            traceparent=current_traceparent,
            recheck_refused=lambda reason: RECHECK_REFUSED.labels(reason).inc(),
        )

    def uow(self) -> PostgresTriageUnitOfWork:
        return PostgresTriageUnitOfWork(self.runtime.db)

    @property
    def policy(self) -> Policy:
        return self.usecases.policy

    @property
    def pseudonyms(self) -> Pseudonyms:
        return self.usecases.pseudonyms

    @property
    def policies(self) -> dict[str, Policy]:
        return self.usecases.policies

    @property
    def directory(self) -> DirectoryProjection:
        """The directory, folded incrementally from `directory_log` (docs/scale.md)."""
        return self.usecases.directory

    @directory.setter
    def directory(self, projection: DirectoryProjection) -> None:
        self.usecases.directory = projection

    @property
    def org(self) -> DirectoryView:
        """The directory as far as it was folded."""
        return self.usecases.org

    def _decision(
        self, incident_id: str, report: ReportSubmitted, org: Org, policy: Policy, now: datetime
    ) -> TriageDecision:
        """`TriageUseCases.decision` (for the org bench and its tests)."""
        return self.usecases.decision(incident_id, report, org, policy, now)

    async def start(self) -> None:
        """Record the policy version (refusing a changed file under an old version), then,
        before consuming, fold the directory and do the re-check a stop left undone."""
        await self.usecases.record_policy(RecordPolicy(self.policy), self.uow())
        await self.usecases.resume(self.uow())

    async def on_directory(self, records: Sequence[ConsumerRecord]) -> None:
        """Keep a batch of directory events in `directory_log`, in order (one unit of
        work and two statements per batch, not per event: docs/directory-sync.md)."""
        valid: list[Cause] = []
        for record in records:
            try:
                envelope = parse_envelope(record.value or b"")
                directory_event(envelope)
            except InvalidEvent as exc:
                await self.runtime.dead_letter_poison(record, exc)
                continue
            # no span per event: nothing here is traced, and an import brings 254,000
            valid.append(Cause(envelope, _tracked(record, envelope), body=record.value))
        if valid:
            await self.usecases.keep_directory(KeepDirectory(valid), self.uow())

    async def on_report(self, records: Sequence[ConsumerRecord]) -> None:
        """Decide on the batch's submitted reports in one unit of work (with their
        tracking rows); then each amendment and confirmation in one of its own, in order."""
        submitted: list[tuple[Cause, ReportSubmitted]] = []
        later: list[LaterCommand] = []
        for record in records:
            try:
                envelope = parse_envelope(record.value or b"")
                data = report_input(envelope)
            except (InvalidEvent, ValueError) as exc:
                await self.runtime.dead_letter_poison(record, exc)
                continue
            if isinstance(data, ReportSubmitted):
                submitted.append((_cause(record, envelope), data))
            elif isinstance(data, ReportAmended | PeopleConfirmed):
                later.append(later_command(_cause(record, envelope), data))
        if submitted:
            await self.usecases.decide(DecideReports(submitted), self.uow())
        for command in later:
            await self.usecases.later(command, self.uow())

    async def on_activity(self, records: Sequence[ConsumerRecord]) -> None:
        """Recusals and ordered reassignments, each in a unit of work of its own, in order.

        Every other activity type is ignored without reading its data; a record that is
        not an event is left to escalation and audit, which dead-letter what they cannot
        read on this topic. A recusal or order whose data is invalid is dead-lettered.
        """
        todo: list[LaterCommand] = []
        for record in records:
            try:
                envelope = parse_envelope(record.value or b"")
            except InvalidEvent:
                continue
            try:
                data: Recused | ReassignmentOrdered | None = activity_input(envelope)
            except ValueError as exc:
                await self.runtime.dead_letter_poison(record, exc)
                continue
            if data is not None:
                todo.append(later_command(_cause(record, envelope), data))
        for command in todo:
            await self.usecases.later(command, self.uow())
