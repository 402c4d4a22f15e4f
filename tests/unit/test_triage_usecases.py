"""Triage's use cases on the in-memory unit of work (no broker, no database).

The seed case decided from the directory kept from its events; a report delivered twice
decided once; an amendment accusing the handler moving the report to group HR; a
confirmation by the chief ethics officer deciding again; a recusal rerouting; a
failing unit of work leaving nothing behind.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import services
from services.domain.directory import DirectoryFile
from services.domain.envelope import Envelope
from services.domain.events import (
    EventData,
    InvalidEvent,
    PeopleConfirmed,
    PersonMatch,
    Recused,
    ReportAmended,
    ReportSubmitted,
    make_event,
)
from services.domain.incident import report_digest
from services.domain.policy import Policy
from services.infra.config import load_yaml_model
from services.infra.crypto import Pseudonyms
from services.infra.recorder_memory import InMemoryStore
from services.triage.memory import InMemoryTriageUnitOfWork, TriageStore
from services.triage.usecases import (
    EVENT_IDS,
    Cause,
    DecideAgain,
    DecideReports,
    KeepDirectory,
    PolicyConflict,
    RecordPolicy,
    Reexclude,
    Reroute,
    TriageUnitOfWork,
    TriageUseCases,
    directory_event,
)
from tests.helpers import signed

DATA = Path(services.__file__).parent / "data"
POLICY = load_yaml_model(DATA / "policy.yaml", Policy)
PEOPLE = load_yaml_model(DATA / "directory.yaml", DirectoryFile).people
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PSEUDONYMS = Pseudonyms(b"k" * 32)


class Triage:
    """The use cases with a store, the way the service runs them."""

    def __init__(self) -> None:
        self.store = InMemoryStore()
        self.tables = TriageStore()
        self.usecases = TriageUseCases(POLICY, PSEUDONYMS, topic_prefix="t.")
        self.offset = 0

    def uow(self) -> TriageUnitOfWork:
        return InMemoryTriageUnitOfWork(self.store, self.tables)

    def cause(self, envelope: Envelope, topic: str = "incident.reports") -> Cause:
        self.offset += 1
        return Cause(envelope, (envelope.id, topic, 0, self.offset))

    async def seeded(self) -> Triage:
        events = [
            make_event(
                "directory.person.upserted.v1",
                subject=p.id,
                data={"person_id": p.id, "unit": p.unit, "manager_id": p.manager, "roles": p.roles},
                source="/services/intake",
                time=T0,
                actor="system:directory-seed",
            )
            for p in PEOPLE
        ]
        causes = [self.cause(e, "directory.changes") for e in events]
        assert await self.usecases.keep_directory(KeepDirectory(causes), self.uow()) == len(PEOPLE)
        return self

    async def states(self) -> list[tuple[str, dict[str, Any]]]:
        uow = self.uow()
        async with uow:
            return await uow.decisions.states()

    def emitted(self, incident: str) -> list[Envelope]:
        return [r.stored().envelope for r in self.store.events if r.stream_id == incident]


def submitted(incident: str, accused: list[str], **fields: Any) -> tuple[Envelope, ReportSubmitted]:
    content = {
        "category": "sexual_misconduct",
        "summary": "Assault on a work trip",
        "description": "My store manager assaulted me in the hotel.",
        "unit": "city-retail",
        "accused": accused,
        "named": [],
    }
    report = ReportSubmitted.model_validate(
        {**content, "report_digest": report_digest(content), **fields}
    )
    return later(incident, ReportSubmitted.TYPE, report), report


def later(incident: str, type_: str, data: EventData) -> Envelope:
    return make_event(
        type_, subject=incident, data=data, source="/services/intake", time=T0, actor="p-liu"
    )


async def decided(triage: Triage, accused: list[str], **fields: Any) -> str:
    incident = str(uuid.uuid4())
    envelope, report = submitted(incident, accused, **fields)
    await triage.usecases.decide(DecideReports([(triage.cause(envelope), report)]), triage.uow())
    return incident


def data(events: list[Envelope], type_: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == type_]


async def test_the_seed_case_goes_to_the_units_hr_handler_named_reporter_excluded() -> None:
    triage = await Triage().seeded()
    incident = str(uuid.uuid4())
    envelope, report = submitted(incident, ["p-wang"], reporter=PSEUDONYMS.of(incident, "p-chen"))
    events = await triage.usecases.decide(
        DecideReports([(triage.cause(envelope), report)]), triage.uow()
    )
    assert [e.type for e in events] == [
        "incident.triaged.v1",
        "incident.assigned.v1",
        "incident.notified.v1",
    ]
    assert [e.id for e in triage.emitted(incident)] == [e.id for e in events]
    triaged = events[0].data
    excluded = {x["principal"]: x["rule"] for x in triaged["excluded"]}
    assert excluded["p-wang"] == "accused"
    assert excluded["p-li"] == excluded["p-zhang"] == "accused_management_chain"
    # the reporter (the unit's handler), matched by her pseudonym: not asked, not named
    assert triaged["chain"][0]["recipients"] == ["p-ma"]
    assert "p-chen" not in excluded
    assert events[0].causationid == envelope.id
    assert events[0].id == str(uuid.uuid5(EVENT_IDS, f"{envelope.id}:0"))
    assert [r.topic for r in triage.store.outbox] == [
        "t.incident.triage",
        "t.incident.triage",
        "t.incident.activity",
    ]
    row = triage.tables.decisions[incident]
    assert row.directory_seq == len(PEOPLE) and row.state is not None


async def test_a_report_delivered_twice_is_decided_once() -> None:
    triage = await Triage().seeded()
    incident = str(uuid.uuid4())
    envelope, report = submitted(incident, ["p-wang"])
    cause = triage.cause(envelope)
    first = await triage.usecases.decide(
        DecideReports([(cause, report), (cause, report)]), triage.uow()
    )
    again = await triage.usecases.decide(DecideReports([(cause, report)]), triage.uow())
    assert len(first) == 3 and again == []
    assert len(triage.emitted(incident)) == 3 and len(triage.store.outbox) == 3
    assert list(triage.tables.decisions) == [incident]


async def test_an_amendment_accusing_the_handler_moves_the_report_to_group_hr() -> None:
    triage = await Triage().seeded()
    incident = await decided(triage, ["p-wang"])
    amended = ReportAmended(accused_added=["p-chen"], report_digest="sha256:" + "1" * 64)
    cause = triage.cause(later(incident, "incident.report.amended.v1", amended))
    events = await triage.usecases.reexclude(Reexclude(cause, amended), triage.uow())
    assert [e.type for e in events] == ["incident.reassigned.v1", "incident.notified.v1"]
    assert events[0].data["removed"] == [{"principal": "p-chen", "rule": "accused"}]
    assert events[0].data["added"] == ["p-ma"]
    assert data(events, "incident.notified.v1")[0]["principal"] == "p-ma"
    row = triage.tables.decisions[incident]
    assert row.amendments == [{"accused": ["p-chen"], "named": []}]
    assert row.state is not None and row.state["report_digest"] == amended.report_digest
    # delivered again: nothing new
    assert await triage.usecases.reexclude(Reexclude(cause, amended), triage.uow()) == []
    assert len(triage.emitted(incident)) == 5


async def test_a_confirmation_by_the_chief_ethics_officer_decides_again() -> None:
    triage = await Triage().seeded()
    nobody = PersonMatch(field="accused", text="enc:v1:x", how="none")
    incident = await decided(triage, ["enc:v1:x"], people_matches=[nobody.model_dump()])
    first = data(triage.emitted(incident), "incident.triaged.v1")[0]
    assert first["chain"][0]["recipients"] == ["p-sun"]  # only the independent
    by_handler = PeopleConfirmed(principal="p-chen", accused=["p-wang"])
    cause = triage.cause(later(incident, "incident.people.confirmed.v1", by_handler))
    assert await triage.usecases.decide_again(DecideAgain(cause, by_handler), triage.uow()) == []
    by_her = PeopleConfirmed(principal="p-sun", accused=["p-wang"])
    cause = triage.cause(later(incident, "incident.people.confirmed.v1", by_her))
    events = await triage.usecases.decide_again(DecideAgain(cause, by_her), triage.uow())
    triaged = data(events, "incident.triaged.v1")[0]
    assert triaged["revision"] == 2
    assert triaged["chain"][0]["recipients"] == ["p-chen"]


async def test_a_recusal_reroutes_to_the_next_holder() -> None:
    triage = await Triage().seeded()
    incident = await decided(triage, ["p-wang"])
    recused = Recused(principal="p-chen")
    cause = triage.cause(later(incident, "incident.recused.v1", recused), "incident.activity")
    events = await triage.usecases.reroute(Reroute(cause, recused), triage.uow())
    assert [e.type for e in events] == ["incident.reassigned.v1", "incident.notified.v1"]
    assert events[0].data["added"] == ["p-ma"]
    assert data(events, "incident.notified.v1")[0]["principal"] == "p-ma"
    assert await triage.usecases.reroute(Reroute(cause, recused), triage.uow()) == []


async def test_an_input_before_its_decision_fails_and_leaves_nothing() -> None:
    triage = await Triage().seeded()
    recused = Recused(principal="p-chen")
    cause = triage.cause(later("nowhere", "incident.recused.v1", recused), "incident.activity")
    with pytest.raises(LookupError):
        await triage.usecases.reroute(Reroute(cause, recused), triage.uow())
    assert not [k for k in triage.store.tracking if k[0] == "triage-activity"]


async def test_directory_events_are_kept_as_consumed_once_and_folded_on_the_next_decision() -> None:
    triage = await Triage().seeded()
    moved = make_event(
        "directory.person.upserted.v1",
        subject="p-chen",
        data={"person_id": "p-chen", "unit": "group", "manager_id": "p-zhou", "roles": []},
        source="/services/intake",
        time=T0,
    )
    body = signed(moved)  # as consumed: kept with its signature, not encoded again
    cause = Cause(moved, (moved.id, "directory.changes", 0, 99), body=body)
    keep = KeepDirectory([cause, cause])
    assert await triage.usecases.keep_directory(keep, triage.uow()) == 1
    assert await triage.usecases.keep_directory(keep, triage.uow()) == 0
    assert triage.tables.directory_log[-1] == (moved.id, body)
    assert triage.usecases.directory.seq == len(PEOPLE) + 1  # folded as it was kept
    assert triage.usecases.org.roles_of("p-chen") == frozenset()
    incident = await decided(triage, ["p-wang"])
    triaged = data(triage.emitted(incident), "incident.triaged.v1")[0]
    assert triaged["chain"][0]["recipients"] == ["p-ma"]  # p-chen is no handler any more


def test_a_directory_event_is_checked_before_it_is_kept() -> None:
    bad = make_event(
        "directory.role.assigned.v1",
        subject="p-chen",
        data={"person_id": "p-chen", "role": "hr_head"},
        source="/services/intake",
        time=T0,
    )
    directory_event(bad)
    with pytest.raises(InvalidEvent):
        directory_event(bad.model_copy(update={"data": {"person_id": "p-chen"}}))
    with pytest.raises(InvalidEvent):
        directory_event(later("x", ReportSubmitted.TYPE, submitted("x", [])[1]))


async def test_a_changed_policy_under_an_old_version_is_refused() -> None:
    triage = Triage()
    await triage.usecases.record_policy(RecordPolicy(POLICY), triage.uow())
    changed = POLICY.model_copy(update={"reporter_acknowledgement_within": 86_400})
    other = TriageUseCases(changed, PSEUDONYMS)
    with pytest.raises(PolicyConflict):
        await other.record_policy(RecordPolicy(changed), triage.uow())


def upserted(person: str, manager: str | None, roles: list[str], unit: str) -> Envelope:
    return make_event(
        "directory.person.upserted.v1",
        subject=person,
        data={"person_id": person, "unit": unit, "manager_id": manager, "roles": roles},
        source="/services/intake",
        time=T0,
        actor="p-admin",
    )


async def test_a_manager_change_that_puts_a_later_level_in_the_accused_line_removes_her() -> None:
    """The chain is resolved when the report is decided; a directory change can then make
    a later level's recipient the accused's manager. Triage runs the exclusions again for
    the decisions the change touches, so escalation never asks her: she is removed, and
    her emptied level resolved again (nobody else holds hr_head here)."""
    triage = await Triage().seeded()
    incident = await decided(triage, ["p-wang"])
    triaged = data(triage.emitted(incident), "incident.triaged.v1")[0]
    assert triaged["chain"][1]["recipients"] == ["p-zhou"]
    move = triage.cause(upserted("p-wang", "p-zhou", ["store_manager"], "city-retail"))
    assert await triage.usecases.keep_directory(KeepDirectory([move]), triage.uow()) == 1
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert reassigned == {
        "removed": [{"principal": "p-zhou", "rule": "accused_management_chain"}],
        "added": [],
    }
    (row,) = [s for i, s in await triage.states() if i == incident]
    assert any(x["principal"] == "p-zhou" for x in row["decision"]["excluded"])
    # the same batch again changes nothing; a change off every line touches no decision
    assert await triage.usecases.keep_directory(KeepDirectory([move]), triage.uow()) == 0
    before = len(triage.emitted(incident))
    aside = upserted("p-admin", "p-admin2", ["admin"], "group")
    await triage.usecases.keep_directory(KeepDirectory([triage.cause(aside)]), triage.uow())
    assert len(triage.emitted(incident)) == before


async def test_a_recheck_lost_to_a_stop_is_done_with_the_next_directory_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch is committed and folded, then the worker stops before its re-check: the
    mark did not move, so the next directory batch (here one that touches nobody's line)
    re-checks the earlier change too."""
    triage = await Triage().seeded()
    incident = await decided(triage, ["p-wang"])
    recheck = triage.usecases.recheck

    async def stopped(*_: object, **__: object) -> int:
        raise RuntimeError("the worker stopped")

    monkeypatch.setattr(triage.usecases, "recheck", stopped)
    move = triage.cause(upserted("p-wang", "p-zhou", ["store_manager"], "city-retail"))
    with pytest.raises(RuntimeError):
        await triage.usecases.keep_directory(KeepDirectory([move]), triage.uow())
    assert data(triage.emitted(incident), "incident.reassigned.v1") == []
    monkeypatch.setattr(triage.usecases, "recheck", recheck)
    aside = triage.cause(upserted("p-admin", "p-admin2", ["admin"], "group"))
    await triage.usecases.keep_directory(KeepDirectory([aside]), triage.uow())
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert reassigned["removed"] == [{"principal": "p-zhou", "rule": "accused_management_chain"}]


async def moved(triage: Triage, *changes: Envelope) -> None:
    """Directory changes kept and folded, each batch re-checked (one batch)."""
    batch = KeepDirectory([triage.cause(e, "directory.changes") for e in changes])
    assert await triage.usecases.keep_directory(batch, triage.uow()) == len(changes)


async def test_a_move_two_levels_above_the_routed_handler_under_the_accused_removes_her() -> None:
    """The handler asked at level 1 answers to p-x, who answers to p-y. Moving p-y under
    the accused makes her answer to him: the decision is found through her line as it was
    kept (p-y two levels above her), and she is replaced by the other handler."""
    triage = await Triage().seeded()
    await moved(
        triage,
        upserted("p-y", "p-li", ["manager"], "city-retail"),
        upserted("p-x", "p-y", ["manager"], "city-retail"),
        upserted("p-chen", "p-x", ["hr_case_handler"], "city-retail"),
    )
    incident = await decided(triage, ["p-wang"])
    assert data(triage.emitted(incident), "incident.assigned.v1")[0]["principals"] == ["p-chen"]
    await moved(triage, upserted("p-y", "p-wang", ["manager"], "city-retail"))
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert reassigned == {
        "removed": [{"principal": "p-chen", "rule": "accused_reports"}],
        "added": ["p-ma"],
    }


async def test_a_move_of_the_accuseds_manager_above_a_later_level_removes_her() -> None:
    """p-liu is accused; his manager p-wang is on no routed person's line. Moving p-wang
    under p-zhou (level 2) puts her in p-liu's management line: found through the
    accused's line, she is removed."""
    triage = await Triage().seeded()
    incident = await decided(triage, ["p-liu"])
    await moved(triage, upserted("p-wang", "p-zhou", ["store_manager"], "city-retail"))
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert reassigned["removed"] == [{"principal": "p-zhou", "rule": "accused_management_chain"}]


async def test_a_manager_who_joins_the_directory_under_the_accused_removes_who_answers_to_him() -> (
    None
):
    """The handler's manager is not in the directory yet (her line stops at him). He joins,
    under the accused: she answers to the accused now, and is replaced."""
    triage = await Triage().seeded()
    await moved(triage, upserted("p-chen", "p-new", ["hr_case_handler"], "city-retail"))
    incident = await decided(triage, ["p-wang"])
    assert data(triage.emitted(incident), "incident.assigned.v1")[0]["principals"] == ["p-chen"]
    await moved(triage, upserted("p-new", "p-wang", ["manager"], "city-retail"))
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert reassigned["removed"] == [{"principal": "p-chen", "rule": "accused_reports"}]


async def test_a_decision_made_on_a_directory_the_recheck_had_not_reached_is_checked_in_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """p-chen answered to the accused, was moved away (that batch's re-check lost to a
    stop), was asked on the decision made then, and was moved back. From the last
    re-check's directory to now nothing changed about her, but the decision was made in
    between: it is checked in full, and she is removed."""
    triage = await Triage().seeded()
    await moved(triage, upserted("p-chen", "p-wang", ["hr_case_handler"], "city-retail"))
    recheck = triage.usecases.recheck

    async def stopped(*_: object, **__: object) -> int:
        raise RuntimeError("the worker stopped")

    monkeypatch.setattr(triage.usecases, "recheck", stopped)
    away = upserted("p-chen", "p-li", ["hr_case_handler"], "city-retail")
    with pytest.raises(RuntimeError):
        await moved(triage, away)
    incident = await decided(triage, ["p-wang"])  # its follow-up re-check fails too
    monkeypatch.setattr(triage.usecases, "recheck", recheck)
    assert data(triage.emitted(incident), "incident.assigned.v1")[0]["principals"] == ["p-chen"]
    back = upserted("p-chen", "p-wang", ["hr_case_handler"], "city-retail")
    await moved(triage, back)
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert reassigned["removed"] == [{"principal": "p-chen", "rule": "accused_reports"}]


async def test_the_lines_follow_a_move_that_changed_nothing_so_a_later_one_is_caught() -> None:
    """The routed handler gets a new manager, p-x, outside the accused's line: nothing to
    change, but her line now runs through p-x. When p-x is then moved under the accused,
    she answers to him: the decision is found through her line as re-checked (p-x), not
    as it was decided (p-li), and she is replaced."""
    triage = await Triage().seeded()
    await moved(triage, upserted("p-x", "p-zhang", ["manager"], "city-retail"))
    incident = await decided(triage, ["p-wang"])
    await moved(triage, upserted("p-chen", "p-x", ["hr_case_handler"], "city-retail"))
    assert data(triage.emitted(incident), "incident.reassigned.v1") == []
    await moved(triage, upserted("p-x", "p-wang", ["manager"], "city-retail"))
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert reassigned["removed"] == [{"principal": "p-chen", "rule": "accused_reports"}]


async def _stopped_before_its_recheck(
    triage: Triage, monkeypatch: pytest.MonkeyPatch, change: Envelope
) -> None:
    """`change` kept, committed and folded; the worker stops before its re-check."""

    async def stopped(*_: object, **__: object) -> int:
        raise RuntimeError("the worker stopped")

    with monkeypatch.context() as patched:
        patched.setattr(triage.usecases, "recheck", stopped)
        with pytest.raises(RuntimeError):
            await moved(triage, change)


async def restarted(triage: Triage) -> TriageUseCases:
    """A new worker on the same store, started as the service starts it."""
    triage.usecases = TriageUseCases(POLICY, PSEUDONYMS, topic_prefix="t.")
    await triage.usecases.record_policy(RecordPolicy(POLICY), triage.uow())
    return triage.usecases


async def test_a_recheck_lost_to_a_stop_is_done_when_triage_starts_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The move of the accused under level 2 (p-zhou) is committed, then the worker stops
    before its re-check. The restarted worker re-checks before it consumes anything: no
    other directory change, report or input is needed (review R5)."""
    triage = await Triage().seeded()
    incident = await decided(triage, ["p-wang"])
    move = upserted("p-wang", "p-zhou", ["store_manager"], "city-retail")
    await _stopped_before_its_recheck(triage, monkeypatch, move)
    assert data(triage.emitted(incident), "incident.reassigned.v1") == []
    usecases = await restarted(triage)
    assert await usecases.resume(triage.uow()) == 1
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert reassigned["removed"] == [{"principal": "p-zhou", "rule": "accused_management_chain"}]
    assert triage.tables.rechecked == len(triage.tables.directory_log)
    # a second worker starting, or this one again: nothing more
    assert await (await restarted(triage)).resume(triage.uow()) == 0
    assert len(data(triage.emitted(incident), "incident.reassigned.v1")) == 1


async def test_a_recheck_the_mark_lags_is_done_after_the_next_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that did not start with the re-check (or whose re-check failed) does it
    after the next input it handles: here a report about someone else."""
    triage = await Triage().seeded()
    incident = await decided(triage, ["p-wang"])
    move = upserted("p-wang", "p-zhou", ["store_manager"], "city-retail")
    await _stopped_before_its_recheck(triage, monkeypatch, move)
    await restarted(triage)
    await decided(triage, ["p-liu"])
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert reassigned["removed"] == [{"principal": "p-zhou", "rule": "accused_management_chain"}]
    assert triage.tables.rechecked == len(triage.tables.directory_log)


async def test_an_accused_the_directory_learns_of_later_is_excluded_with_who_answers_to_him() -> (
    None
):
    """The report accuses p-new, whom triage's directory does not know yet (intake's
    knew him first): the chain is the independent roles only, p-sun (chief ethics
    officer) first. p-new is then imported, with p-sun under him: the re-check resolves
    him, so he, his line and p-sun (who answers to him now) are excluded (review R6)."""
    triage = await Triage().seeded()
    sealed = "enc:v1:c2VhbGVk"
    incident = await decided(triage, ["p-new", sealed])
    (triaged,) = data(triage.emitted(incident), "incident.triaged.v1")
    assert [lv["recipients"] for lv in triaged["chain"]] == [["p-sun"], ["p-board"]]
    lines = triage.tables.lines[incident][1]
    assert "p-new" in lines and sealed not in lines  # a sealed name is nobody's id
    await moved(
        triage,
        upserted("p-new", "p-zhang", ["general_counsel"], "group"),
        upserted("p-sun", "p-new", ["chief_ethics_officer"], "group"),
    )
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert reassigned["removed"] == [
        {"principal": "p-new", "rule": "accused"},
        {"principal": "p-zhang", "rule": "accused_management_chain"},
        {"principal": "p-sun", "rule": "accused_reports"},
    ]
    (state,) = [s["decision"] for i, s in await triage.states() if i == incident]
    assert state["accused"] == ["p-new"] and state["unresolved_accused"] == [sealed]
    assert [lv["recipients"] for lv in state["chain"]] == [[], ["p-board"]]
    assert "p-sun" not in state["independent"]


async def test_an_accused_who_joins_above_a_routed_person_already_under_him_is_applied() -> None:
    """p-sun's record named p-new as her manager before p-new was in the directory; the
    report accuses p-new (unknown). p-new joins: nothing about p-sun changed, but the
    re-check resolves the accused, and she answers to him."""
    triage = await Triage().seeded()
    await moved(triage, upserted("p-sun", "p-new", ["chief_ethics_officer"], "group"))
    incident = await decided(triage, ["p-new"])
    assert data(triage.emitted(incident), "incident.assigned.v1")[0]["principals"] == ["p-sun"]
    await moved(triage, upserted("p-new", "p-zhang", ["general_counsel"], "group"))
    (reassigned,) = data(triage.emitted(incident), "incident.reassigned.v1")
    assert {"principal": "p-sun", "rule": "accused_reports"} in reassigned["removed"]
