"""Intake's report use cases on the in-memory recorder (no PostgreSQL, no broker).

The adapters (`POST /v1/reports`, the console, `POST /v1/events`, `incident.inbound`)
are thin: what a report may be and what it leaves behind is decided here, by
`services.intake.usecases`, which these tests drive through in-memory ports.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from services.domain.inbound import INBOUND_TYPE, incident_id_for
from services.domain.reports import (
    NameRow,
    PeopleRefused,
    Protector,
    ReportInput,
    UnknownCategory,
)
from services.infra.crypto import IncidentKey, Pseudonyms
from services.intake.memory import InMemoryIntakeStore, InMemoryIntakeUnitOfWork
from services.intake.usecases import (
    Answered,
    IdempotencyConflict,
    IdempotencyKey,
    Intake,
    NewIncident,
    NewReport,
    ReportRows,
    Submission,
    TakeInbound,
    TakeReport,
    UnknownReporter,
    take_inbound,
    take_report,
    write_reports,
)
from tests.unit.test_triage import POLICY

PSEUDONYMS = Pseudonyms(secrets.token_bytes(32))
PEOPLE = {"p-liu", "p-wang", "p-chen"}


class Memory:
    """Intake's rows and the directory, committed; `ReportReads` over them."""

    def __init__(self) -> None:
        self.store = InMemoryIntakeStore()
        self.answers_: dict[tuple[str, str], tuple[str, Submission]] = {}
        self.receipts: dict[str, tuple[str, str]] = {}
        self.retention: dict[str, str] = {}
        self.reporters: dict[str, str] = {}
        self.hashed = 0

    async def answers(self, keys: Sequence[IdempotencyKey]) -> Answered:
        return {
            (k.scope, k.key_digest): self.answers_[(k.scope, k.key_digest)]
            for k in keys
            if (k.scope, k.key_digest) in self.answers_
        }

    async def person_exists(self, person_id: str) -> bool:
        return person_id in PEOPLE

    async def incident_exists(self, incident_id: str) -> bool:
        return any(row.stream_id == incident_id for row in self.store.events)

    async def directory_people(
        self, ids: Sequence[str], norms: Sequence[str]
    ) -> tuple[Collection[str], Iterable[NameRow]]:
        return {i for i in ids if i in PEOPLE}, ()

    async def hash_secret(self, secret: str) -> str:
        self.hashed += 1
        return f"hash-of-{len(secret)}"

    async def submit(self, report: NewReport) -> Submission | IdempotencyConflict | None:
        """The writer: each report in a unit of work of its own."""
        async with Unit(self) as uow:
            (outcome,) = await write_reports(uow, [report], intake_of(self), NOW)
        return outcome


class Unit(InMemoryIntakeUnitOfWork):
    """`ReportUnitOfWork` in memory: intake's rows staged, applied on commit."""

    def __init__(self, memory: Memory) -> None:
        super().__init__(memory.store)
        self.memory = memory
        self.staged: list[tuple[dict[Any, Any], Any, Any]] = []

    @property
    def reports(self) -> ReportRows:
        return self

    def commit(self) -> None:
        super().commit()
        for table, key, value in self.staged:
            table[key] = value
        self.staged = []

    def rollback(self) -> None:
        super().rollback()
        self.staged = []

    async def lock_answers(self, keys: Sequence[IdempotencyKey]) -> Answered:
        return await self.memory.answers(keys)

    async def create_keys(self, incident_ids: Sequence[str]) -> list[Protector]:
        return [
            IncidentKey(i, secrets.token_bytes(32), secrets.token_bytes(16), PSEUDONYMS)
            for i in incident_ids
        ]

    async def add_incidents(self, incidents: Sequence[NewIncident]) -> None:
        for i in incidents:
            self.staged.append((self.memory.retention, i.incident_id, i.report.category))
            if i.reporter is not None:
                self.staged.append((self.memory.reporters, i.incident_id, i.reporter))

    async def add_receipts(self, rows: Sequence[tuple[str, str, str]]) -> None:
        for receipt, incident_id, secret_hash in rows:
            self.staged.append((self.memory.receipts, receipt, (incident_id, secret_hash)))

    async def add_answers(self, rows: Sequence[tuple[IdempotencyKey, dict[str, Any]]]) -> None:
        for key, stored in rows:
            answer = (key.request_hash, Submission(202, stored, replayed=True))
            self.staged.append((self.memory.answers_, (key.scope, key.key_digest), answer))


NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def key_for(principal: str | None, header: str, digest: str) -> IdempotencyKey:
    return IdempotencyKey(principal or "anonymous", header, digest)


def intake_of(memory: Memory) -> Intake:
    return Intake(POLICY, "urn:test:intake", "", memory.hash_secret, key_for)


REPORT = {"category": "harassment", "summary": "Remarks", "description": "Again on Monday."}


def command(**changes: Any) -> TakeReport:
    report = ReportInput.model_validate({**REPORT, **changes.pop("report", {})})
    fields: dict[str, Any] = {"reporter": None, "actor": "reporter:anonymous", "channel": "web"}
    return TakeReport(report, **{**fields, **changes})


async def take(memory: Memory, cmd: TakeReport) -> Submission:
    return await take_report(cmd, memory, memory, intake_of(memory))


async def test_an_anonymous_report_is_an_event_queued_with_its_receipt_and_retention() -> None:
    memory = Memory()
    answer = await take(memory, command())
    assert answer.status == 202 and not answer.replayed
    incident = answer.body["incident_id"]
    assert answer.body["receipt"] in memory.receipts and answer.body["secret"]
    assert [row.stream_id for row in memory.store.events] == [incident]
    assert [r.key for r in memory.store.outbox] == [incident]
    assert memory.retention == {incident: "harassment"}
    assert memory.hashed == 1


async def test_a_named_report_has_no_receipt_and_is_on_her_list() -> None:
    memory = Memory()
    answer = await take(memory, command(reporter="p-liu", actor="p-liu"))
    assert answer.body["receipt"] is None and answer.body["secret"] is None
    assert memory.reporters == {answer.body["incident_id"]: "p-liu"}
    assert memory.hashed == 0


async def test_an_unknown_category_is_refused_before_anything_is_hashed_or_written() -> None:
    memory = Memory()
    with pytest.raises(UnknownCategory, match=r"valid: .*harassment"):
        await take(memory, command(report={"category": "gossip"}))
    assert memory.hashed == 0 and not memory.store.events and not memory.receipts


async def test_an_unknown_reporter_and_the_reporter_accused_are_refused() -> None:
    memory = Memory()
    with pytest.raises(UnknownReporter):
        await take(memory, command(reporter="p-ghost", actor="system:hris", check_reporter=True))
    with pytest.raises(PeopleRefused, match=r"accused\.0"):
        await take(memory, command(reporter="p-liu", actor="p-liu", report={"accused": ["p-liu"]}))
    assert not memory.store.events


async def test_the_same_key_answers_again_and_another_body_conflicts() -> None:
    memory = Memory()
    key = IdempotencyKey("anonymous", "k1", "body-1")
    first = await take(memory, command(idempotency=key))
    again = await take(memory, command(idempotency=key))
    assert again.replayed and again.body["incident_id"] == first.body["incident_id"]
    assert again.body["secret"] is None and "shown once" in again.body["note"]
    with pytest.raises(IdempotencyConflict):
        await take(memory, command(idempotency=IdempotencyKey("anonymous", "k1", "body-2")))
    assert len(memory.store.events) == 1


def inbound(event_id: str, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "urn:hris",
        "type": INBOUND_TYPE,
        "time": "2026-12-07T09:00:00Z",
        "data": {**REPORT, **data},
    }


async def test_an_inbound_event_opens_its_derived_incident_once() -> None:
    memory = Memory()
    event_id = "0b6f3c52-5a1e-4d0e-9c43-7e2b1f0a9d11"
    cmd = TakeInbound(
        inbound(event_id, reporter="p-liu"),
        system_id="hris",
        principal="system:hris",
        scopes=frozenset({"report_for_person"}),
        channel="kafka",
        issue_receipt=False,
    )
    first = await take_inbound(cmd, memory, memory, intake_of(memory))
    assert first.body["incident_id"] == incident_id_for("hris", event_id)
    again = await take_inbound(cmd, memory, memory, intake_of(memory))
    assert again.replayed and again.body == first.body
    assert len(memory.store.events) == 1
    assert memory.store.events[0].stored().envelope.causationid == event_id
