"""Audit's use cases on the in-memory unit of work (`services.audit.memory`): appending a
batch, a replay refused, who knew, and a reader who answers to the accused refused."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.audit.ledger import Consumed
from services.audit.memory import (
    AuditMemory,
    InMemoryAuditUnitOfWork,
    InMemoryConsoleIndex,
    InMemoryKeys,
)
from services.audit.ui_index import PAGE, Filters, Page, keyset_page
from services.audit.usecases import (
    AppendBatch,
    AuditConfig,
    Forbidden,
    IncidentList,
    KnowledgeQuery,
    ListIncidents,
    NotFound,
    ReadEntries,
    ReadIncident,
    append_batch,
    knowledge,
    list_incidents,
    read_entries,
    read_incident,
)
from services.domain.directory import DirectoryFile, Person
from services.domain.envelope import Envelope
from services.domain.events import make_event
from services.domain.policy import CONFLICT_RULES, Policy
from services.infra.recorder_memory import InMemoryStore

INCIDENT = "7f1c1c3e-8a52-4a5e-9d8e-0d6f1f0a2b21"
DIGEST = "sha256:" + "0" * 64
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
DIRECTORY = DirectoryFile(
    people=[
        Person(id="p-li", unit="retail", manager=None, roles=["unit_president"]),
        Person(id="p-wang", unit="retail", manager="p-li", roles=["store_manager"]),
        Person(id="p-liu", unit="retail", manager="p-wang", roles=["auditor"]),
        Person(id="p-audit", unit="group", manager=None, roles=["auditor"]),
        Person(id="p-zhou", unit="hr", manager=None, roles=["hr_case_handler"]),
    ]
)
POLICY = Policy.model_validate(
    {
        "version": "t",
        "categories": {"harassment": "high"},
        "severities": {
            "high": {
                "chain": [{"role": "hr_case_handler", "acknowledge_within": "1h"}],
                "repeat_last_every": "1h",
                "feedback_within": "90d",
            }
        },
        "reporter_acknowledgement_within": "7d",
        "conflicts": {
            "exclude": list(CONFLICT_RULES),
            "independent_roles": ["chief_ethics_officer"],
        },
    }
)


class Audit:
    """One in-memory audit: the recorder's store and the ledger, shared by its units."""

    def __init__(self) -> None:
        self.store = InMemoryStore()
        self.memory = AuditMemory()
        self.config = AuditConfig(POLICY, DIRECTORY)

    def uow(self) -> InMemoryAuditUnitOfWork:
        return InMemoryAuditUnitOfWork(self.config, self.store, self.memory)

    def own_types(self) -> list[str]:
        """The types of audit's own events, as recorded (the outbox publishes them)."""
        return [json.loads(row.value)["type"] for row in self.store.outbox]


def event(type_: str, data: dict[str, Any], actor: str, seconds: int = 0) -> Envelope:
    return make_event(
        type_,
        subject=INCIDENT,
        data=data,
        source="/services/intake",
        time=T0 + timedelta(seconds=seconds),
        actor=actor,
    )


def record(envelope: Envelope, offset: int, value: bytes | None = None) -> Consumed:
    return Consumed("incident.events", 0, offset, value or envelope.to_bytes())


def report() -> Envelope:
    return event(
        "incident.report.submitted.v1",
        {
            "category": "harassment",
            "summary": "s",
            "description": "d",
            "accused": ["p-wang"],
            "report_digest": DIGEST,
        },
        "anonymous",
    )


async def fill(audit: Audit, *envelopes: Envelope) -> int:
    records = tuple(record(e, n) for n, e in enumerate(envelopes))
    return await append_batch(AppendBatch(records), audit.uow())


async def test_a_batch_is_appended_once_in_order_with_a_growing_tree() -> None:
    audit = Audit()
    submitted = report()
    viewed = event(
        "incident.viewed.v1", {"principal": "p-zhou", "report_digest": DIGEST}, "p-zhou", 60
    )
    assert await fill(audit, submitted, viewed) == 2
    assert await fill(audit, submitted, viewed) == 0  # redelivered: nothing new
    rows = audit.memory.rows
    assert [r.idx for r in rows] == [0, 1]
    assert [r.event_id for r in rows] == [submitted.id, viewed.id]
    assert all(r.valid and r.incident_id == INCIDENT for r in rows)
    assert rows[1].recorded_at >= rows[0].recorded_at
    leaf = json.loads(rows[0].leaf)
    assert (leaf["index"], leaf["event"]["id"]) == (0, submitted.id)


async def test_a_replayed_event_is_recorded_as_rejected_input_never_as_the_event() -> None:
    audit = Audit()
    original = report()
    await fill(audit, original)
    forged = json.loads(original.to_bytes())
    forged["data"]["summary"] = "other words under the same id"
    replay = record(original, 7, json.dumps(forged).encode())
    assert await append_batch(AppendBatch((replay,)), audit.uow()) == 1
    assert await append_batch(AppendBatch((replay,)), audit.uow()) == 0  # the attempt, once
    stored = audit.memory.rows[1]
    assert not stored.valid and stored.event_id is None
    assert json.loads(stored.leaf)["reason"] == "not authentic: replayed"
    assert [r.event_id for r in audit.memory.rows if r.valid] == [original.id]


async def test_a_refused_record_is_kept_as_evidence() -> None:
    audit = Audit()
    refused = Consumed("incident.events", 0, 3, report().to_bytes(), refused="unsigned")
    assert await append_batch(AppendBatch((refused,)), audit.uow()) == 1
    assert json.loads(audit.memory.rows[0].leaf)["reason"] == "not authentic: unsigned"


async def test_knowledge_names_who_was_shown_the_report_and_records_the_read() -> None:
    audit = Audit()
    viewed = event(
        "incident.viewed.v1", {"principal": "p-zhou", "report_digest": DIGEST}, "p-zhou", 60
    )
    await fill(audit, report(), viewed)
    later = datetime.now(UTC) + timedelta(minutes=1)
    answer = await knowledge(KnowledgeQuery("p-audit", INCIDENT, later), audit.uow())
    assert "p-zhou" in {p.principal for p in answer.principals}
    assert audit.own_types() == ["audit.read.recorded.v1"]
    before = await knowledge(KnowledgeQuery("p-audit", INCIDENT, T0), audit.uow())
    assert not before.principals  # ledger time: nothing was recorded by then


async def test_an_auditor_who_answers_to_the_accused_is_refused_as_for_an_unknown_incident() -> (
    None
):
    audit = Audit()
    await fill(audit, report())
    with pytest.raises(NotFound) as refused:
        await read_incident(ReadIncident("p-liu", INCIDENT), audit.uow())
    with pytest.raises(NotFound) as unknown:
        await read_incident(ReadIncident("p-audit", "no-such-incident"), audit.uow())
    assert str(refused.value) == str(unknown.value)
    assert audit.own_types() == ["incident.access.denied.v1"]  # the attempt, recorded
    read = await read_incident(ReadIncident("p-audit", INCIDENT), audit.uow())
    assert [e.envelope.type for e in read.entries] == ["incident.report.submitted.v1"]


async def test_a_principal_without_the_auditor_role_is_forbidden() -> None:
    audit = Audit()
    await fill(audit, report())
    with pytest.raises(Forbidden):
        await read_incident(ReadIncident("p-zhou", INCIDENT), audit.uow())
    assert audit.own_types() == []


async def test_rejected_copies_of_an_incident_are_withheld_from_a_reader_it_excludes() -> None:
    """A copy of an incident's event that the ledger holds as rejected input (refused
    after a key rotation, say) or inside a consumer's dead letter carries the event in
    clear (who is accused, who is excluded): a raw range of the ledger withholds it from
    a reader the incident excludes, as it withholds the incident's own entries."""
    audit = Audit()
    submitted = report()
    decided = event(
        "incident.triaged.v1",
        {
            "category": "harassment",
            "severity": "high",
            "policy_version": "t",
            "chain": [],
            "excluded": [{"principal": "p-wang", "rule": "accused"}],
        },
        "system:triage",
        30,
    )
    dead = make_event(
        "incident.input.rejected.v1",
        subject="deadletter",
        data={
            "reason": "handler failed: ValueError",
            "source_topic": "incident.reports",
            "original_b64": base64.b64encode(submitted.to_bytes()).decode(),
        },
        source="/services/triage",
        time=T0,
        actor="system:triage",
    )
    records = (
        record(submitted, 0),
        Consumed("incident.triage", 0, 1, decided.to_bytes(), refused="unknown key"),
        Consumed("incident.deadletter", 0, 2, dead.to_bytes()),
    )
    assert await append_batch(AppendBatch(records), audit.uow()) == 3
    read = await read_entries(ReadEntries("p-liu"), audit.uow())
    assert read.withheld == {0, 1, 2}
    recorded = json.loads(audit.store.outbox[-1].value)["data"]
    assert recorded["withheld"] == [] and recorded["withheld_entries"] == 3  # never which
    everyone = await read_entries(ReadEntries("p-audit"), audit.uow())
    assert everyone.withheld == frozenset()

    # an incident whose every event was refused: no valid entry says who is excluded,
    # so its copies are withheld from every auditor (a copy never decides)
    other = json.loads(submitted.to_bytes())
    other["subject"] = "a0b1c2d3-0000-4000-8000-000000000001"
    refused = Consumed("incident.reports", 0, 3, json.dumps(other).encode(), refused="unknown key")
    assert await append_batch(AppendBatch((refused,)), audit.uow()) == 1
    everyone = await read_entries(ReadEntries("p-audit"), audit.uow())
    assert everyone.withheld == {3}


class OneRowIndex(InMemoryConsoleIndex):
    """The console index listing the one incident, hidden only as the index hides it."""

    async def page(
        self, filters: Filters, *, before: int | None, after: int | None, hidden_from: str
    ) -> Page:
        return Page([{"incident_id": INCIDENT, "first_idx": 0}], None, None)


async def test_the_console_list_leaves_out_an_incident_that_excludes_the_reader() -> None:
    """The index hides an incident by triage's `excluded` and the accused alone; an
    auditor who answers to the accused (a rule for harassment, checked on the reader, not
    on triage's candidates) is excluded all the same, so the list leaves it out too."""
    audit = Audit()
    await fill(audit, report())

    async def listed(principal: str) -> list[str]:
        uow = audit.uow()
        uow.index = OneRowIndex()
        found = await list_incidents(ListIncidents(principal), uow)
        return [row["incident_id"] for row in found.page.rows]

    assert await listed("p-liu") == []
    assert await listed("p-audit") == [INCIDENT]


class ManyRowsIndex(InMemoryConsoleIndex):
    """The console index over `count` incidents (first ledger indexes 0 to count - 1),
    keyset pages as `list_page` reads them; the one at `at` is INCIDENT, the others are
    in no ledger entry (nobody is excluded from them)."""

    def __init__(self, count: int, at: int) -> None:
        self.rows = [
            {"incident_id": i, "first_idx": n, "category": "harassment" if n == at else "fraud"}
            for n in reversed(range(count))
            for i in [INCIDENT if n == at else f"i-{n}"]
        ]

    async def page(
        self, filters: Filters, *, before: int | None, after: int | None, hidden_from: str
    ) -> Page:
        kept = [r for r in self.rows if filters.category in (None, r["category"])]
        if after is not None:
            found = [r for r in reversed(kept) if r["first_idx"] > after][: PAGE + 1]
            more, rows = len(found) > PAGE, found[:PAGE][::-1]
        else:
            upper = before if before is not None else len(self.rows)
            found = [r for r in kept if r["first_idx"] < upper][: PAGE + 1]
            more, rows = len(found) > PAGE, found[:PAGE]
        return keyset_page(rows, more=more, before=before, after=after)

    async def facets(self) -> dict[str, list[str]]:
        return {"category": ["fraud", "harassment"], "severity": []}


async def test_an_excluded_auditors_list_pages_tell_nothing_of_the_hidden_incident() -> None:
    """Review L1: the list left out an incident that excludes the reader after paging, so
    its page came up short and its "older" link was the hidden incident's first ledger
    index; the category menu offered a category only hidden incidents have. Pages are now
    filled from the rows the reader may see, every link is one of those rows, and the menus
    offer what those rows hold: the hidden incident leaves no trace in the answer."""
    audit = Audit()
    await fill(audit, report())
    hidden_at = 120 - PAGE  # the last row of the first page, were nothing hidden

    async def answer(principal: str, before: int | None, after: int | None) -> IncidentList:
        uow = audit.uow()
        uow.index = ManyRowsIndex(120, hidden_at)
        return await list_incidents(ListIncidents(principal, before=before, after=after), uow)

    async def listed(
        principal: str, before: int | None = None, after: int | None = None
    ) -> tuple[list[int], int | None, int | None]:
        page = (await answer(principal, before, after)).page
        return [int(row["first_idx"]) for row in page.rows], page.newer, page.older

    pages, links = [], []
    page = await listed("p-liu")
    while True:  # down, from the newest, by the "older" links
        pages.append(page[0])
        links += [link for link in page[1:] if link is not None]
        if page[2] is None:
            break
        page = await listed("p-liu", before=page[2])
    assert hidden_at not in links  # the old code: the first page's "older" link
    seen = [idx for rows in pages for idx in rows]
    assert seen == [n for n in reversed(range(120)) if n != hidden_at]
    assert [len(rows) for rows in pages] == [PAGE, PAGE, 120 - 1 - 2 * PAGE]
    back = await listed("p-liu", after=pages[-1][0])  # up again, by a "newer" link
    assert back[0] == pages[1]
    back = await listed("p-liu", after=back[1])
    assert back[0] == pages[0] and back[1] is None
    links += [link for link in back[1:] if link is not None]
    assert hidden_at not in links
    # nor does the category menu offer a category that only the hidden incident has
    assert (await answer("p-liu", None, None)).options["category"] == ["fraud"]
    # an auditor the incident does not exclude sees it where it is, and its category
    assert (await listed("p-audit"))[0] == list(reversed(range(120 - PAGE, 120)))
    assert (await answer("p-audit", None, None)).options["category"] == ["fraud", "harassment"]


def dead_letter(original: bytes, offset: int = 0) -> Envelope:
    """A consumer's dead letter of `original` (as services.infra.runtime writes one)."""
    return make_event(
        "incident.input.rejected.v1",
        subject="deadletter",
        data={
            "reason": "handler failed: ValueError",
            "source_topic": "incident.deadletter" if offset else "incident.reports",
            "source_offset": offset,
            "original_b64": base64.b64encode(original).decode(),
        },
        source="/services/triage",
        time=T0,
        actor="system:triage",
    )


async def test_a_read_record_never_names_the_incidents_withheld_from_its_reader() -> None:
    """Review D4: the reporter, by name, is an auditor and reads the raw ledger, which
    withholds the report from her. Her read record is no incident's entry, so every
    auditor is shown it, the accused made auditor too: it says how many entries were
    withheld from her, never which incident (before, `withheld: [<his case>]` told him
    who else his case excludes)."""
    audit = Audit()
    auditors = {"p-wang", "p-rep"}
    people = [
        *DIRECTORY.people,
        Person(id="p-rep", unit="group", manager=None, roles=[]),
    ]
    people = [
        Person(id=p.id, unit=p.unit, manager=p.manager, roles=[*p.roles, "auditor"])
        if p.id in auditors
        else p
        for p in people
    ]
    audit.config = AuditConfig(POLICY, DirectoryFile(people=people))
    keys = InMemoryKeys(reporters={INCIDENT: "p-rep"})
    audit.uow = lambda: InMemoryAuditUnitOfWork(audit.config, audit.store, audit.memory, keys=keys)  # type: ignore[method-assign]
    await fill(audit, report())
    mine = await read_entries(ReadEntries("p-rep", 0, 10), audit.uow())
    assert mine.withheld == {0}
    published = tuple(
        Consumed("incident.activity", 0, 100 + n, bytes(row.value))
        for n, row in enumerate(audit.store.outbox)
    )
    await append_batch(AppendBatch(published), audit.uow())  # published, consumed back
    seen = await read_entries(ReadEntries("p-wang", 0, 50), audit.uow())
    assert seen.withheld == {0}
    shown = [json.loads(r.leaf)["event"] for r in seen.rows if r.idx not in seen.withheld]
    reads = [e["data"] for e in shown if e["type"] == "audit.read.recorded.v1"]
    assert reads == [
        {
            "principal": "p-rep",
            "route": "entries",
            "incident_id": None,
            "start": 0,
            "end": 10,
            "withheld": [],
            "withheld_entries": 1,
        }
    ]
    assert INCIDENT not in json.dumps(shown)


async def test_an_older_read_record_naming_an_incident_is_withheld_from_whom_it_excludes() -> None:
    """A read record written before review D4 names the incidents withheld from its
    reader: a raw read withholds it from the readers one of them excludes."""
    audit = Audit()
    older = make_event(
        "audit.read.recorded.v1",
        subject="ledger",
        data={
            "principal": "p-zhou",
            "route": "entries",
            "start": 0,
            "end": 9,
            "withheld": [INCIDENT],
        },
        source="/services/audit",
        time=T0,
        actor="p-zhou",
    )
    records = (record(report(), 0), Consumed("incident.activity", 0, 1, older.to_bytes()))
    assert await append_batch(AppendBatch(records), audit.uow()) == 2
    assert (await read_entries(ReadEntries("p-liu"), audit.uow())).withheld == {0, 1}
    assert (await read_entries(ReadEntries("p-audit"), audit.uow())).withheld == frozenset()


async def test_a_copy_whose_incident_cannot_be_told_is_withheld_from_every_reader() -> None:
    """A dead letter carries the original record's bytes. When they do not say which
    incident they belong to (bytes a parser refuses that a person still reads, or a
    report wrapped in more dead letters than are unwrapped), the copy is withheld from
    every auditor: the one the incident excludes (p-liu answers to the accused p-wang)
    and an unrelated one alike (review L2: they were shown to both)."""
    audit = Audit()
    submitted = report()
    wrapped = submitted.to_bytes()
    for depth in range(4):
        wrapped = dead_letter(wrapped, depth).to_bytes()
    unparseable = b"report: p-wang, store 12, " + submitted.to_bytes()[:40]
    records = (
        record(submitted, 0),
        Consumed("incident.deadletter", 0, 1, dead_letter(unparseable).to_bytes()),
        Consumed("incident.deadletter", 0, 2, wrapped),
        Consumed("incident.reports", 0, 3, unparseable),  # rejected input, kept raw
        Consumed("incident.deadletter", 0, 4, dead_letter(submitted.to_bytes()).to_bytes()),
    )
    assert await append_batch(AppendBatch(records), audit.uow()) == 5
    excluded = await read_entries(ReadEntries("p-liu"), audit.uow())
    assert excluded.withheld == {0, 1, 2, 3, 4}
    unrelated = await read_entries(ReadEntries("p-audit"), audit.uow())
    assert unrelated.withheld == {1, 2, 3}  # a copy told to be INCIDENT's is shown to him
    recorded = json.loads(audit.store.outbox[-1].value)["data"]
    assert recorded["withheld"] == [] and recorded["withheld_entries"] == 3


async def test_dead_letters_are_no_incidents_events() -> None:
    """Every dead letter has the subject `deadletter`: asked as an incident, it is not
    found, so no reader gets the originals through the timeline, state or knowledge
    routes or the console (each reads `read_incident`), whatever the raw read decides."""
    audit = Audit()
    submitted = report()
    dead = dead_letter(submitted.to_bytes())
    await fill(audit, submitted)
    await append_batch(
        AppendBatch((Consumed("incident.deadletter", 0, 9, dead.to_bytes()),)), audit.uow()
    )
    for reader in ("p-liu", "p-audit"):
        with pytest.raises(NotFound):
            await read_incident(ReadIncident(reader, "deadletter"), audit.uow())
    shown = await read_incident(ReadIncident("p-audit", INCIDENT), audit.uow())
    assert [e.envelope.type for e in shown.entries] == ["incident.report.submitted.v1"]
