"""The incremental directory (`DirectoryProjection`) against the full fold it replaces,
and the named reporter found among the few candidates instead of everyone.

The projection must answer, at every sequence number, exactly as `fold_directory` of
the events up to it: people, holders of each role (anywhere and per unit), management
chains, size and `as_of`; and a view taken once must not change when later events are
applied.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

import services
from services.domain.directory import DirectoryFile
from services.domain.envelope import Envelope
from services.domain.events import ReportSubmitted, make_event
from services.domain.org import DirectoryProjection, Org, OrgSnapshot, fold_directory
from services.domain.policy import Policy
from services.domain.triage import _answering, _candidates, decide, reporter_candidates
from services.infra.config import load_yaml_model
from services.infra.crypto import Pseudonyms
from services.triage.handlers import Triage
from tests.unit.test_triage_conflicts import ROLES as CHART_ROLES
from tests.unit.test_triage_conflicts import charts
from tooling.bench.orgchart import generate, seed_case

DATA = Path(services.__file__).parent / "data"
POLICY = load_yaml_model(DATA / "policy.yaml", Policy)
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
IDS = ("a", "b", "c", "d", "e")
ROLES = ("hr_case_handler", "hr_head", "chief_ethics_officer")
UNITS = (None, "u1", "u2")


def submitted(**fields: Any) -> ReportSubmitted:
    base = {"category": "sexual_misconduct", "summary": "s", "description": "d"}
    return ReportSubmitted.model_validate({**base, "report_digest": "sha256:" + "0" * 64, **fields})


def event(type_: str, minute: int, **data: Any) -> Envelope:
    return make_event(
        f"directory.{type_}.v1",
        subject=data["person_id"],
        data=data,
        source="/services/intake",
        time=T0 + timedelta(minutes=minute),
        actor="system:test",
    )


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[int, Envelope]]:
    """Random directory events (times not in order) at growing, gapped seq numbers."""
    out: list[tuple[int, Envelope]] = []
    seq = 0
    for _ in range(draw(st.integers(0, 25))):
        seq += draw(st.integers(1, 3))
        person = draw(st.sampled_from(IDS))
        minute = draw(st.integers(0, 60))
        kind = draw(st.sampled_from(("person.upserted", "role.assigned", "role.revoked")))
        if kind == "person.upserted":
            envelope = event(
                kind,
                minute,
                person_id=person,
                unit=draw(st.sampled_from(UNITS)),
                manager_id=draw(st.sampled_from((None, *IDS))),
                roles=draw(st.lists(st.sampled_from(ROLES), max_size=2, unique=True)),
            )
        else:
            envelope = event(kind, minute, person_id=person, role=draw(st.sampled_from(ROLES)))
        out.append((seq, envelope))
    return out


def same(view: Org, folded: OrgSnapshot) -> None:
    assert len(view) == len(folded)
    assert view.as_of == folded.as_of
    for person in (*IDS, "nobody"):
        assert view.person(person) == folded.person(person)
        assert view.knows(person) == folded.knows(person)
        assert view.managers_above(person) == folded.managers_above(person)
        assert view.reports_of(person) == folded.reports_of(person)
    for role in ROLES:
        for unit in UNITS:
            assert view.holders(role, unit) == folded.holders(role, unit)


@settings(max_examples=150, deadline=None)
@given(histories())
def test_the_projection_equals_a_full_fold_at_every_seq(
    history: list[tuple[int, Envelope]],
) -> None:
    projection = DirectoryProjection()
    early = projection.view()
    taken = []
    for seq, envelope in history:
        projection.apply(envelope, seq)
        taken.append(projection.view())  # a view of now, kept while later events come
    same(early, OrgSnapshot())
    for k, (seq, _envelope) in enumerate(history):
        folded = fold_directory(e for _, e in history[: k + 1])
        same(projection.at(seq), folded)
        same(taken[k], folded)  # views never change afterwards
        assert projection.at(seq).snapshot() == folded
        if k + 1 < len(history) and history[k + 1][0] > seq + 1:
            same(projection.at(seq + 1), folded)  # between two events: the earlier one
    assert projection.at(0).snapshot() == OrgSnapshot()


def test_a_seq_not_after_the_last_is_refused() -> None:
    projection = DirectoryProjection()
    projection.apply(event("person.upserted", 0, person_id="a"), 5)
    try:
        projection.apply(event("person.upserted", 1, person_id="b"), 5)
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("seq 5 twice was accepted")
    assert not projection.view().knows("b") and projection.seq == 5


def test_decide_on_a_view_is_decide_on_the_snapshot() -> None:
    """The pure decision cannot tell a projection's view from the folded snapshot."""
    people = generate(2500)
    case = seed_case(people)
    projection = DirectoryProjection()
    events = [
        event(
            "person.upserted", 0, person_id=p.id, unit=p.unit, manager_id=p.manager, roles=p.roles
        )
        for p in people
    ]
    for seq, envelope in enumerate(events, start=1):
        projection.apply(envelope, seq)
    report = submitted(accused=[case.accused], unit=case.unit)
    on_view = decide(report, projection.view(), POLICY, T0, reporter_person=case.reporter)
    on_snapshot = decide(report, fold_directory(events), POLICY, T0, reporter_person=case.reporter)
    assert on_view == on_snapshot
    assert {case.accused, *case.line} <= on_view.excluded_ids
    assert not on_view.recipients & {case.accused, *case.line}


# -- the named reporter among the candidates --------------------------------------------


def triage_of(people: int) -> tuple[Triage, Any]:
    directory = generate(people)
    projection = DirectoryProjection()
    for seq, p in enumerate(directory, start=1):
        upserted = event(
            "person.upserted", 0, person_id=p.id, unit=p.unit, manager_id=p.manager, roles=p.roles
        )
        projection.apply(upserted, seq)
    triage = Triage(cast(Any, None), POLICY, Pseudonyms(os.urandom(32)))
    triage.directory = projection
    return triage, directory


def test_the_candidates_are_the_unit_s_role_holders_and_the_independent_ones() -> None:
    triage, _ = triage_of(2500)
    org = triage.org
    found = set(reporter_candidates(org, POLICY, "u-0001"))
    assert set(org.holders("hr_case_handler", "u-0001")) <= found
    assert set(org.holders("chief_ethics_officer")) <= found
    assert not set(org.holders("hr_case_handler", "u-0002")) & found  # another unit
    assert "p-0001-0344" not in found  # an employee is nobody's candidate
    assert len(found) < 20  # of 2,500 people


def test_a_reporter_who_could_be_asked_is_excluded_and_one_who_could_not_changes_nothing() -> None:
    triage, directory = triage_of(2500)
    case = seed_case(directory)
    handler = triage.org.holders("hr_case_handler", case.unit)[0]
    incident = "inc-1"

    def decided(reporter: str) -> Any:
        report = submitted(
            accused=[case.accused],
            unit=case.unit,
            reporter=triage.pseudonyms.of(incident, reporter),
        )
        return triage._decision(incident, report, triage.org, POLICY, T0)

    by_handler = decided(handler)
    assert handler in by_handler.excluded_ids and handler not in by_handler.recipients
    by_employee = decided(case.reporter)  # the seed case: an employee, asked by nobody
    assert case.reporter not in by_employee.excluded_ids
    assert handler in by_employee.first_recipients


def test_a_reporter_outside_the_unit_is_found_when_a_level_falls_back_to_everyone() -> None:
    """Both HR case handlers of the unit are named: level 1 is resolved across the
    organisation, where the reporter (a handler of another unit) must not be asked."""
    triage, directory = triage_of(2500)
    case = seed_case(directory)
    here = list(triage.org.holders("hr_case_handler", case.unit))
    elsewhere = triage.org.holders("hr_case_handler", "u-0002")[0]
    incident = "inc-2"
    report = submitted(
        accused=[case.accused],
        named=here,
        unit=case.unit,
        reporter=triage.pseudonyms.of(incident, elsewhere),
    )
    decision = triage._decision(incident, report, triage.org, POLICY, T0)
    assert decision.chain[0].scope == "organisation"
    assert elsewhere in decision.excluded_ids
    assert elsewhere not in decision.recipients and decision.first_recipients


def test_the_seed_directory_file_is_the_same_as_a_projection_of_it() -> None:
    seed = load_yaml_model(DATA / "directory.yaml", DirectoryFile)
    projection = DirectoryProjection()
    for seq, p in enumerate(seed.people, start=1):
        upserted = event(
            "person.upserted", 0, person_id=p.id, unit=p.unit, manager_id=p.manager, roles=p.roles
        )
        projection.apply(upserted, seq)
    assert projection.view().snapshot().people == OrgSnapshot.from_directory(seed).people


@settings(max_examples=200, deadline=None)
@given(charts(), st.data())
def test_the_walk_down_and_the_walk_up_find_the_same_candidates(chart: Any, data: Any) -> None:
    """Who answers to the accused: walked down from them, or up from each candidate
    (the naive way), in the same order, on random org charts."""
    org = chart.org
    everyone = sorted(org.people)
    lines = data.draw(st.lists(st.sampled_from(everyone), min_size=1, max_size=3, unique=True))
    roles = data.draw(st.lists(st.sampled_from(CHART_ROLES), max_size=4))
    explicit = data.draw(st.lists(st.sampled_from(everyone), max_size=2))
    pool = list(dict.fromkeys((*_candidates(org, roles), *explicit)))
    naive = [p for p in pool if p not in lines and set(org.managers_above(p).managers) & set(lines)]
    assert _answering(org, lines, roles, explicit) == naive
