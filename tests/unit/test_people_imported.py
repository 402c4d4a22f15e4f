"""`directory.people.imported.v1`, a bulk import's chunk: folding it is folding one
`directory.person.upserted.v1` per person it carries, in its order, for every consumer.

Each test builds the same history twice, once with single upserts and once with the
chunk in their place, and compares what each consumer ends up knowing: triage's
directory (the pure fold, the versioned projection, the use case on the in-memory unit
of work), escalation's addresses, audit's people on the in-memory ledger (the
PostgreSQL ledger: tests/integration/test_directory_people_imported.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from services.audit.ledger import Consumed, LedgerRow, chunk_people, fold_person
from services.audit.memory import AuditMemory, InMemoryAuditUnitOfWork
from services.audit.usecases import AppendBatch, AuditConfig, append_batch
from services.domain.directory import DirectoryFile, Person
from services.domain.directory_sync import MAX_CHUNK_DATA_BYTES, event_chunks, record_bytes
from services.domain.envelope import Envelope
from services.domain.events import (
    MAX_PEOPLE_PER_EVENT,
    InvalidEvent,
    PeopleImported,
    PersonUpserted,
    RoleAssigned,
    RoleRevoked,
    data_of,
    make_event,
    record_key,
)
from services.domain.org import DIRECTORY_EVENT_TYPES, DirectoryProjection, fold_directory
from services.escalation.addresses import latest_addresses, people_of
from services.infra.recorder_memory import InMemoryStore
from services.intake.directory import people_event
from services.triage.memory import InMemoryTriageUnitOfWork, TriageStore
from services.triage.usecases import Cause, KeepDirectory, TriageUseCases, directory_event
from tests.helpers import signed
from tests.unit.test_audit_usecases import POLICY as AUDIT_POLICY
from tests.unit.test_triage_usecases import POLICY, PSEUDONYMS

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
ORIGIN = {"source": "/services/intake", "actor": "system:hris"}
PEOPLE: list[dict[str, Any]] = [
    {"person_id": "p-top", "name": "Top", "email": "top@example.com", "roles": ["hr_head"]},
    {"person_id": "p-mid", "name": "Mid", "unit": "ops", "manager_id": "p-top"},
    {"person_id": "p-low", "name": "Low", "unit": "ops", "manager_id": "p-mid", "roles": ["x"]},
    # listed twice: the second record is the one that stands
    {"person_id": "p-mid", "name": "Mid", "unit": "hr", "manager_id": "p-top", "email": "m@e.x"},
]


def _event(type_: str, subject: str, data: dict[str, Any], seconds: int) -> Envelope:
    at = T0 + timedelta(seconds=seconds)
    return make_event(type_, subject=subject, data=data, time=at, **ORIGIN)


def histories() -> tuple[list[Envelope], list[Envelope]]:
    """The same directory history twice: the import as single upserts, then as a chunk.

    Before the import p-low holds role `y` (an upsert and a grant the import replaces);
    after it p-top is granted `auditor` and p-low is upserted again by the admin API."""
    before = [
        _event(PersonUpserted.TYPE, "p-low", {"person_id": "p-low", "roles": ["y"]}, 0),
        _event(RoleAssigned.TYPE, "p-low", {"person_id": "p-low", "role": "z"}, 1),
    ]
    after = [
        _event(RoleAssigned.TYPE, "p-top", {"person_id": "p-top", "role": "auditor"}, 3),
        _event(RoleRevoked.TYPE, "p-mid", {"person_id": "p-mid", "role": "none-held"}, 3),
        _event(PersonUpserted.TYPE, "p-low", {"person_id": "p-low", "unit": "legal"}, 4),
    ]
    singles = [_event(PersonUpserted.TYPE, p["person_id"], p, 2) for p in PEOPLE]
    chunk = _event(PeopleImported.TYPE, "directory-import:1", {"people": PEOPLE}, 2)
    return [*before, *singles, *after], [*before, chunk, *after]


IDS = ("p-top", "p-mid", "p-low", "p-nobody")


# -- the event ------------------------------------------------------------------------------


def test_a_chunk_holds_one_to_the_maximum_of_people() -> None:
    person = {"person_id": "p-a"}
    assert PeopleImported.TYPE in DIRECTORY_EVENT_TYPES
    most = PeopleImported.model_validate({"people": [person] * MAX_PEOPLE_PER_EVENT})
    assert len(most.people) == 500
    for people in ([], [person] * (MAX_PEOPLE_PER_EVENT + 1)):
        event = _event(PeopleImported.TYPE, "i", {"people": [person]}, 0)
        with pytest.raises(InvalidEvent):
            directory_event(event.model_copy(update={"data": {"people": people}}))
    with pytest.raises(InvalidEvent):  # a person without an id is no record
        directory_event(
            _event(PeopleImported.TYPE, "i", {"people": [person]}, 0).model_copy(
                update={"data": {"people": [{"name": "x"}]}}
            )
        )
    data = data_of(_event(PeopleImported.TYPE, "i", {"people": PEOPLE}, 0))
    assert isinstance(data, PeopleImported)
    # every item has exactly the data of the person's upsert
    assert [p.model_dump() for p in data.people] == [
        PersonUpserted.model_validate(p).model_dump() for p in PEOPLE
    ]


# -- triage ---------------------------------------------------------------------------------


def test_the_fold_of_a_chunk_is_the_fold_of_its_upserts() -> None:
    singles, chunked = histories()
    assert fold_directory(chunked) == fold_directory(singles)
    whole = fold_directory(chunked)
    assert whole.person("p-mid") is not None and whole.unit_of("p-mid") == "hr"
    assert whole.roles_of("p-low") == frozenset()  # the later upsert replaced the import's
    assert whole.roles_of("p-top") == {"hr_head", "auditor"}
    assert whole.managers_above("p-mid").managers == ("p-top",)
    for until in (T0, T0 + timedelta(seconds=2), T0 + timedelta(seconds=3)):
        assert fold_directory(chunked, until=until) == fold_directory(singles, until=until)


def test_the_projection_folds_a_chunk_at_one_sequence_number() -> None:
    singles, chunked = histories()
    one, other = DirectoryProjection(), DirectoryProjection()
    for seq, envelope in enumerate(singles, start=1):
        one.apply(envelope, seq)
    changed = [other.apply(envelope, seq) for seq, envelope in enumerate(chunked, start=1)]
    assert changed == [1, 1, 3, 1, 0, 1]  # the chunk: three people (p-mid once)
    assert other.view().snapshot() == one.view().snapshot()
    # before and after the chunk, the directory as it was is the same as with single events
    assert other.at(2).snapshot() == one.at(2).snapshot()
    assert other.at(3).snapshot() == one.at(2 + len(PEOPLE)).snapshot()
    assert other.at(3).reports_of("p-top") == ("p-mid",)
    assert other.at(3).holders("x", "ops") == ("p-low",)
    assert other.at(2).holders("x") == ()


async def test_triage_keeps_a_chunk_as_one_event_and_knows_the_same_people() -> None:
    directories = []
    for history in histories():
        usecases = TriageUseCases(POLICY, PSEUDONYMS, topic_prefix="t.")
        tables, store = TriageStore(), InMemoryStore()
        causes = [Cause(e, (e.id, "directory.changes", 0, n)) for n, e in enumerate(history)]
        for cause in causes:
            directory_event(cause.envelope)
        kept = await usecases.keep_directory(
            KeepDirectory(causes), InMemoryTriageUnitOfWork(store, tables)
        )
        assert kept == len(history) == len(tables.directory_log)
        directories.append(usecases.org.snapshot())
    assert directories[0] == directories[1]
    assert directories[1].roles_of("p-top") == {"hr_head", "auditor"}


# -- escalation -----------------------------------------------------------------------------


def record(envelope: Envelope, offset: int) -> ConsumerRecord:
    value = envelope.to_bytes()
    return ConsumerRecord(
        topic="directory.changes",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=envelope.subject.encode(),
        value=value,
        checksum=None,
        serialized_key_size=len(envelope.subject),
        serialized_value_size=len(value),
        headers=(),
    )


def test_escalation_takes_the_same_addresses_from_a_chunk() -> None:
    singles, chunked = histories()
    found = [latest_addresses([record(e, n) for n, e in enumerate(h)]) for h in (singles, chunked)]
    assert found[0] == found[1]
    assert found[1]["p-mid"] == ("m@e.x", T0 + timedelta(seconds=2))  # listed last
    assert found[1]["p-low"] == (None, T0 + timedelta(seconds=4))
    assert [p.person_id for p in people_of(chunked[2])] == [p["person_id"] for p in PEOPLE]
    assert people_of(chunked[0])[0].person_id == "p-low"
    assert people_of(chunked[1]) == []  # a role carries no address


# -- audit ----------------------------------------------------------------------------------


async def audit_people(history: list[Envelope]) -> dict[str, dict[str, Any] | None]:
    config = AuditConfig(AUDIT_POLICY, DirectoryFile())
    memory, store = AuditMemory(), InMemoryStore()
    records = tuple(
        Consumed("directory.changes", 0, n, e.to_bytes()) for n, e in enumerate(history)
    )
    assert await append_batch(AppendBatch(records), InMemoryAuditUnitOfWork(config, store, memory))
    uow = InMemoryAuditUnitOfWork(config, store, memory)
    async with uow:
        return {i: await uow.ledger.person_data(i) for i in IDS}


async def test_audit_knows_the_same_people_from_a_chunk_in_its_ledger() -> None:
    singles, chunked = histories()
    known = await audit_people(singles)
    assert known == await audit_people(chunked)
    assert known["p-nobody"] is None
    assert known["p-top"] is not None and known["p-top"]["roles"] == ["auditor", "hr_head"]
    assert known["p-mid"] is not None and known["p-mid"]["unit"] == "hr"
    assert known["p-low"] is not None and known["p-low"]["roles"] == []


async def test_audit_memory_ledger_gives_whole_lines_as_postgresql_does() -> None:
    """`line_data` on the in-memory ledger: the people and everyone above them, each as
    `person_data` has them (the same expectations as the PostgreSQL test)."""
    for history in histories():
        config = AuditConfig(AUDIT_POLICY, DirectoryFile())
        memory, store = AuditMemory(), InMemoryStore()
        records = tuple(
            Consumed("directory.changes", 0, n, e.to_bytes()) for n, e in enumerate(history)
        )
        unit = InMemoryAuditUnitOfWork(config, store, memory)
        assert await append_batch(AppendBatch(records), unit)
        uow = InMemoryAuditUnitOfWork(config, store, memory)
        async with uow:
            people = {i: await uow.ledger.person_data(i) for i in IDS}
            assert await uow.ledger.line_data(["p-low"], 100) == {"p-low": people["p-low"]}
            assert await uow.ledger.line_data(["p-mid", "p-nobody"], 100) == {
                p: people[p] for p in ("p-mid", "p-top")
            }
            assert await uow.ledger.line_data(["p-mid"], 0) == {"p-mid": people["p-mid"]}


def test_fold_person_reads_the_last_record_of_a_chunk_and_the_roles_after_it() -> None:
    _, chunked = histories()

    def leaf(envelope: Envelope) -> bytes:
        return json.dumps({"event": envelope.to_dict()}).encode()

    entries = [(e.type, leaf(e)) for e in (chunked[2], chunked[4])]
    assert fold_person("p-mid", entries) == {
        **PersonUpserted.model_validate(PEOPLE[3]).model_dump(mode="json"),
    }
    rows = [
        LedgerRow(
            n,
            T0,
            "directory.changes",
            0,
            n,
            f"k{n}",
            e.id,
            e.subject,
            e.type,
            None,
            valid,
            leaf(e),
            b"h" * 32,
        )
        for n, (e, valid) in enumerate(
            [(chunked[2], True), (chunked[2], False), (chunked[3], True)]
        )
    ]
    # each person of a valid chunk once, by the entry's index; nothing for other entries
    found = chunk_people(rows)
    assert [(i, idx) for i, idx, _ in found] == [("p-top", 0), ("p-mid", 0), ("p-low", 0)]
    assert json.loads(found[1][2]) == PersonUpserted.model_validate(PEOPLE[3]).model_dump(
        mode="json"
    )  # the last record the chunk lists for them


# -- the import's events ----------------------------------------------------------------------


def test_an_import_cuts_its_people_into_events_well_under_a_megabyte() -> None:
    """500 ordinary people to an event; people at the admin API's limits (200-character
    names in a 3-byte script, 20 alternative names, 20 roles) fewer, and the signed
    record stays under Kafka's usual 1 MiB; one person alone over the budget is an event
    of one (as large as their single upsert would be)."""
    ordinary = [Person(id=f"p-{i:05d}", name=f"Person {i}", unit="ops") for i in range(1_001)]
    assert [len(c) for c in event_chunks(ordinary, max_people=500)] == [500, 500, 1]
    large = Person(
        id="p-" + "x" * 98,
        name="名" * 200,
        alternative_names=["名" * 200] * 20,
        email="a" * 240 + "@example.com",
        unit="u" * 100,
        manager="m" * 100,
        roles=[f"role_{'r' * 50}_{i}" for i in range(20)],
    )
    people = [large.model_copy(update={"id": f"p-{i:098d}"}) for i in range(100)]
    chunks = event_chunks(people, max_people=500)
    assert sum(len(c) for c in chunks) == 100 and len(chunks) > 1
    for chunk in chunks:
        event = people_event(chunk, "directory-import:x", "/services/intake", "system:x", T0)
        assert len(signed(event)) < 1024 * 1024
        assert sum(record_bytes(p) for p in chunk) <= MAX_CHUNK_DATA_BYTES
    huge = large.model_copy(update={"alternative_names": ["名" * 200] * 500})
    assert [len(c) for c in event_chunks([large, huge, large], max_people=500)] == [1, 1, 1]


def test_every_directory_event_has_one_record_key_so_one_order() -> None:
    """Keyed by person, a later change of someone an import's chunk carries could be
    read before the chunk (another partition); one key keeps the directory in order."""
    _, chunked = histories()
    assert {record_key(e) for e in chunked} == {"directory"}
    report = make_event(
        "incident.acknowledged.v1",
        subject="inc-1",
        data={"principal": "p", "level": 1},
        time=T0,
        **ORIGIN,
    )
    assert record_key(report) == "inc-1"
