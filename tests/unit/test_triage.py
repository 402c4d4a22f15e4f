"""Triage's decision, case by case, on the seed organisation and the shipped policy.

The seed organisation (services/data/directory.yaml):

    p-zhang (ceo, group)
    ├── p-li (unit_president, city-retail)
    │   ├── p-wang (store_manager, city-retail)
    │   │   └── p-liu (employee, city-retail)
    │   └── p-chen (hr_case_handler, city-retail)
    ├── p-zhou (hr_head, group)
    │   └── p-ma (hr_case_handler, group)
    └── p-sun (chief_ethics_officer, group)
    p-board (board_audit_committee, group)

The shipped policy routes `sexual_misconduct` (critical) to hr_case_handler (1h), then
hr_head (2h), chief_ethics_officer (4h), board_audit_committee (24h), and excludes the
accused, their management chain (but chief_ethics_officer and board_audit_committee,
which are independent), people named in the report and the reporter.

The seed case: a store manager (p-wang) assaulted an employee; the report must reach
City Retail's HR case handler (p-chen), and never p-wang, his manager, the unit
president (p-li), nor the CEO above him (p-zhang).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import services
from services.domain.directory import DirectoryFile, Person
from services.domain.events import (
    ChainLevel,
    Exclusion,
    PeopleConfirmed,
    PersonMatch,
    Reassigned,
    ReassignmentOrdered,
    ReportSubmitted,
    Triaged,
)
from services.domain.incident import report_digest
from services.domain.org import OrgPerson, OrgSnapshot
from services.domain.policy import CONFLICT_RULES, MANDATORY_EXCLUDE, Policy
from services.domain.reports import UnknownCategory
from services.domain.triage import (
    ExcludedPerson,
    TriageDecision,
    confirmed_report,
    conflicts_of,
    decide,
    may_confirm,
    order_reassignment,
    recuse,
    reexclude,
)
from services.infra.config import load_yaml_model

DATA = Path(services.__file__).parent / "data"
SEED = OrgSnapshot.from_directory(load_yaml_model(DATA / "directory.yaml", DirectoryFile))
POLICY = load_yaml_model(DATA / "policy.yaml", Policy)
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
CHAIN = ("hr_case_handler", "hr_head", "chief_ethics_officer", "board_audit_committee")
INDEPENDENT = ("chief_ethics_officer", "board_audit_committee")


def report(
    accused: list[str],
    *,
    category: str = "sexual_misconduct",
    unit: str | None = "city-retail",
    named: list[str] | None = None,
) -> ReportSubmitted:
    content = {
        "category": category,
        "summary": "Store manager assaulted an employee",
        "description": "On the work trip, after dinner...",
        "unit": unit,
        "accused": accused,
        "named": named or [],
    }
    return ReportSubmitted.model_validate({**content, "report_digest": report_digest(content)})


def org(*people: tuple[str, str | None, str | None, list[str]]) -> OrgSnapshot:
    """A snapshot from (id, unit, manager, roles) rows."""
    return OrgSnapshot.from_people(
        Person(id=i, unit=unit, manager=manager, roles=roles) for i, unit, manager, roles in people
    )


# An analyst who reports to the chief ethics officer: an independent role in her chain.
WITH_ANALYST = SEED.with_person(OrgPerson("p-kim", "group", "p-sun", frozenset({"analyst"})))
# Circular manager data: a and b manage each other.
CIRCULAR = org(
    ("a", "shop", "b", ["store_manager"]),
    ("b", "shop", "a", ["hr_case_handler", "hr_head"]),
    ("c", "shop", "b", ["hr_case_handler"]),
    ("d", "group", None, ["hr_head", "chief_ethics_officer", "board_audit_committee"]),
)


@dataclass(frozen=True)
class Case:
    """One report against an organisation, and what triage must decide."""

    name: str
    accused: list[str]
    levels: Mapping[int, tuple[str, ...]]  # every level's recipients; () = nobody eligible
    excluded: Mapping[str, str]  # every excluded person and the first rule
    unit: str | None = "city-retail"
    named: list[str] = field(default_factory=list)
    reporter: str | None = None
    org: OrgSnapshot = SEED
    not_excluded: tuple[str, ...] = ()  # spelled out for the reader
    unresolved_accused: tuple[str, ...] = ()
    cycles: tuple[tuple[str, ...], ...] = ()
    scopes: Mapping[int, str] = field(default_factory=dict)  # where a level was found
    decided_unit: str | None = "city-retail"
    category: str = "sexual_misconduct"
    chain: tuple[str, ...] = CHAIN


CASES = [
    Case(
        "the seed case: a store manager accused, routed to his unit's HR case handler",
        accused=["p-wang"],
        levels={1: ("p-chen",), 2: ("p-zhou",), 3: ("p-sun",), 4: ("p-board",)},
        excluded={
            "p-wang": "accused",
            "p-li": "accused_management_chain",
            "p-zhang": "accused_management_chain",
        },
        # p-chen's own manager is p-li, but being managed by a conflicted person is no
        # conflict; p-liu reports to the accused, which is no conflict either.
        not_excluded=("p-chen", "p-liu", "p-zhou", "p-ma"),
        scopes={1: "unit", 2: "organisation", 3: "organisation", 4: "organisation"},
    ),
    Case(
        "the unit comes from the accused when the report names none",
        accused=["p-wang"],
        unit=None,
        levels={1: ("p-chen",), 2: ("p-zhou",), 3: ("p-sun",), 4: ("p-board",)},
        excluded={
            "p-wang": "accused",
            "p-li": "accused_management_chain",
            "p-zhang": "accused_management_chain",
        },
    ),
    Case(
        "accused unknown to the directory (a free-text name): only the independent roles",
        accused=["the night manager at store 12"],
        levels={1: ("p-sun",), 2: ("p-board",)},
        excluded={},
        unresolved_accused=("the night manager at store 12",),
        chain=INDEPENDENT,
    ),
    Case(
        "no unit and no known accused: the independent roles across the organisation",
        accused=["Someone"],
        unit=None,
        levels={1: ("p-sun",), 2: ("p-board",)},
        excluded={},
        unresolved_accused=("Someone",),
        scopes={1: "organisation"},
        decided_unit=None,
        chain=INDEPENDENT,
    ),
    Case(
        "the accused is the unit's HR case handler: level 1 falls back to group HR",
        accused=["p-chen"],
        levels={1: ("p-ma",), 2: ("p-zhou",), 3: ("p-sun",), 4: ("p-board",)},
        excluded={
            "p-chen": "accused",
            "p-li": "accused_management_chain",
            "p-zhang": "accused_management_chain",
        },
        scopes={1: "organisation"},
    ),
    Case(
        "the accused is the HR head: his own HR case handler is never asked",
        accused=["p-zhou"],
        unit=None,
        # p-ma reports to p-zhou (accused_reports): City Retail's handler is asked.
        levels={1: ("p-chen",), 2: (), 3: ("p-sun",), 4: ("p-board",)},
        excluded={
            "p-zhou": "accused",
            "p-zhang": "accused_management_chain",
            "p-ma": "accused_reports",
        },
        scopes={1: "organisation", 2: "nobody"},
        decided_unit="group",
    ),
    Case(
        "fraud by the HR head: nobody who answers to him is asked, in any category",
        accused=["p-zhou"],
        unit=None,
        category="fraud",
        # p-ma reports to p-zhou (accused_reports, on for every category): City
        # Retail's handler is asked, as for harassment.
        levels={1: ("p-chen",), 2: (), 3: ("p-sun",)},
        excluded={
            "p-zhou": "accused",
            "p-zhang": "accused_management_chain",
            "p-ma": "accused_reports",
        },
        scopes={1: "organisation", 2: "nobody"},
        decided_unit="group",
        chain=CHAIN[:3],
    ),
    Case(
        "the unit president is accused: nobody who answers to him is asked",
        accused=["p-li"],
        levels={1: ("p-ma",), 2: ("p-zhou",), 3: ("p-sun",), 4: ("p-board",)},
        excluded={
            "p-li": "accused",
            "p-zhang": "accused_management_chain",
            "p-chen": "accused_reports",
        },
        scopes={1: "organisation"},
    ),
    Case(
        "the CEO is accused: everyone answers to him but the board",
        accused=["p-zhang"],
        unit=None,
        levels={1: (), 2: (), 3: (), 4: ("p-board",)},
        excluded={
            "p-zhang": "accused",
            "p-chen": "accused_reports",
            "p-ma": "accused_reports",
            "p-zhou": "accused_reports",
            "p-sun": "accused_reports",  # independent, but answering to the accused
        },
        decided_unit="group",
    ),
    Case(
        "the reporter is the unit's HR case handler: excluded as the reporter",
        accused=["p-wang"],
        reporter="p-chen",
        levels={1: ("p-ma",), 2: ("p-zhou",), 3: ("p-sun",), 4: ("p-board",)},
        excluded={
            "p-wang": "accused",
            "p-li": "accused_management_chain",
            "p-zhang": "accused_management_chain",
            "p-chen": "reporter",
        },
    ),
    Case(
        "a person named in the report is excluded",
        accused=["p-wang"],
        named=["p-chen"],
        levels={1: ("p-ma",), 2: ("p-zhou",), 3: ("p-sun",), 4: ("p-board",)},
        excluded={
            "p-wang": "accused",
            "p-li": "accused_management_chain",
            "p-zhang": "accused_management_chain",
            "p-chen": "named_in_report",
        },
    ),
    Case(
        "circular manager data (a -> b -> a) terminates and excludes both",
        accused=["a"],
        unit="shop",
        org=CIRCULAR,
        # c reports to b, who reports to a: c answers to the accused.
        levels={1: (), 2: ("d",), 3: ("d",), 4: ("d",)},
        excluded={"a": "accused", "b": "accused_management_chain", "c": "accused_reports"},
        cycles=(("a", "b"),),
        decided_unit="shop",
    ),
    Case(
        "an empty directory: every level has nobody eligible",
        accused=["p-wang"],
        org=OrgSnapshot.empty(),
        levels={1: (), 2: ()},
        excluded={},
        unresolved_accused=("p-wang",),
        scopes={1: "nobody", 2: "nobody"},
        chain=INDEPENDENT,
    ),
    Case(
        "an independent role above the accused stays eligible",
        accused=["p-kim"],
        unit=None,
        org=WITH_ANALYST,
        # p-kim -> p-sun (chief_ethics_officer, independent) -> p-zhang (excluded).
        levels={1: ("p-ma",), 2: ("p-zhou",), 3: ("p-sun",), 4: ("p-board",)},
        excluded={"p-kim": "accused", "p-zhang": "accused_management_chain"},
        not_excluded=("p-sun",),
        decided_unit="group",
    ),
    Case(
        "an independent role holder who is accused is excluded all the same",
        accused=["p-sun"],
        unit=None,
        levels={1: ("p-ma",), 2: ("p-zhou",), 3: (), 4: ("p-board",)},
        excluded={"p-sun": "accused", "p-zhang": "accused_management_chain"},
        decided_unit="group",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_triage_routes_around_conflicts(case: Case) -> None:
    decision = decide(
        report(case.accused, unit=case.unit, named=case.named, category=case.category),
        case.org,
        POLICY,
        NOW,
        reporter_person=case.reporter,
    )
    assert [level.role for level in decision.chain] == list(case.chain)
    assert decision.conflict_unresolved == (case.chain == INDEPENDENT)
    assert {level.level: level.recipients for level in decision.chain} == case.levels
    assert {x.principal: x.rule for x in decision.excluded} == case.excluded
    for person in case.not_excluded:
        assert decision.exclusion_of(person) is None, person
    assert decision.nobody_eligible_levels == tuple(n for n, r in case.levels.items() if not r)
    for level in decision.chain:
        assert level.nobody_eligible == (not case.levels[level.level])
    assert decision.first_recipients == case.levels[1]
    assert decision.unresolved_accused == case.unresolved_accused
    assert decision.management_cycles == case.cycles
    assert decision.unit == case.decided_unit
    for number, scope in case.scopes.items():
        assert decision.chain[number - 1].scope == scope
    # Whatever the case: no excluded person is routed, every recipient holds the role.
    for level in decision.chain:
        assert not set(level.recipients) & decision.excluded_ids
        assert all(level.role in case.org.roles_of(p) for p in level.recipients)


# -- the decision in detail -----------------------------------------------------------------


def seed_decision(**kwargs: str | None) -> TriageDecision:
    return decide(report(["p-wang"]), SEED, POLICY, NOW, reporter_person=kwargs.get("reporter"))


def test_the_seed_case_as_the_triaged_event() -> None:
    assert seed_decision().to_triaged() == Triaged(
        category="sexual_misconduct",
        severity="critical",
        policy_version="2026-12-08",
        chain=[
            ChainLevel(
                level=1, role="hr_case_handler", recipients=["p-chen"], acknowledge_within=3600
            ),
            ChainLevel(level=2, role="hr_head", recipients=["p-zhou"], acknowledge_within=7200),
            ChainLevel(
                level=3, role="chief_ethics_officer", recipients=["p-sun"], acknowledge_within=14400
            ),
            ChainLevel(
                level=4,
                role="board_audit_committee",
                recipients=["p-board"],
                acknowledge_within=86400,
            ),
        ],
        excluded=[
            Exclusion(principal="p-wang", rule="accused"),
            Exclusion(principal="p-li", rule="accused_management_chain"),
            Exclusion(principal="p-zhang", rule="accused_management_chain"),
        ],
        deadlines={
            "level_1_acknowledge": NOW + timedelta(hours=1),
            "reporter_acknowledgement": NOW + timedelta(days=7),
            "feedback": NOW + timedelta(days=90),
        },
        revision=1,
        conflict_unresolved=False,
        independent=["p-sun", "p-board"],
    )


def test_the_deadlines_follow_the_severity() -> None:
    decision = decide(report([], category="harassment"), SEED, POLICY, NOW, reporter_person=None)
    assert decision.severity == "high"
    assert [level.role for level in decision.chain] == list(CHAIN[:3])
    assert dict(decision.deadlines) == {
        "level_1_acknowledge": NOW + timedelta(hours=4),
        "reporter_acknowledgement": NOW + timedelta(days=7),
        "feedback": NOW + timedelta(days=90),
    }
    assert decision.decided_at == NOW
    assert decision.policy_version == POLICY.version


def test_a_person_excluded_by_several_rules_keeps_the_first_and_all() -> None:
    decision = decide(
        report(["p-wang"], named=["p-li", "p-wang"]), SEED, POLICY, NOW, reporter_person="p-li"
    )
    wang, li = decision.exclusion_of("p-wang"), decision.exclusion_of("p-li")
    assert wang is not None and li is not None
    assert (wang.rule, wang.rules) == ("accused", ("accused", "named_in_report"))
    assert (li.rule, li.rules) == (
        "accused_management_chain",
        ("accused_management_chain", "named_in_report", "reporter"),
    )


def test_a_reporter_is_excluded_but_never_named_in_the_event() -> None:
    # p-liu, the employee, reports: she holds no role of the chain. Listing her in
    # incident.triaged.v1 would reveal who reported, and change nothing.
    decision = seed_decision(reporter="p-liu")
    liu = decision.exclusion_of("p-liu")
    assert liu is not None and liu.rule == "reporter" and not liu.routable
    assert "p-liu" not in {x.principal for x in decision.to_triaged().excluded}
    # Nor one who would have been asked (review L4): the chain goes around her all the
    # same, and intake and audit refuse her as the reporter without the event naming her.
    chen = seed_decision(reporter="p-chen")
    assert "p-chen" not in {x.principal for x in chen.to_triaged().excluded}
    assert "p-chen" in chen.excluded_ids
    assert all("p-chen" not in level.recipients for level in chen.to_triaged().chain)


def test_an_unknown_accused_is_said_in_the_notes() -> None:
    decision = decide(report(["Wang Jun"]), SEED, POLICY, NOW, reporter_person=None)
    assert decision.excluded == ()
    assert any("not a person of the directory" in note for note in decision.notes)


def test_circular_manager_data_is_said_in_the_notes() -> None:
    decision = decide(report(["a"], unit="shop"), CIRCULAR, POLICY, NOW, reporter_person=None)
    assert any("circular manager data above a: a -> b -> a" in n for n in decision.notes)


def test_only_the_rules_the_policy_lists_apply() -> None:
    # model_copy skips validation: a policy file could not leave these rules out
    # (test_policy), but the fold must still apply only what it is given.
    lenient = POLICY.model_copy(
        update={"conflicts": POLICY.conflicts.model_copy(update={"exclude": ["accused"]})}
    )
    decision = decide(report(["p-wang"]), SEED, lenient, NOW, reporter_person="p-chen")
    assert {x.principal: x.rule for x in decision.excluded} == {"p-wang": "accused"}
    assert decision.first_recipients == ("p-chen",)


def test_an_unknown_category_is_refused() -> None:
    with pytest.raises(UnknownCategory, match="'gossip'"):
        decide(report([], category="gossip"), SEED, POLICY, NOW, reporter_person=None)


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        decide(report([]), SEED, POLICY, datetime(2026, 11, 2, 9, 0), reporter_person=None)


def test_the_directory_time_is_kept_with_the_decision() -> None:
    moment = NOW - timedelta(minutes=5)
    snapshot = OrgSnapshot(SEED.people, as_of=moment)
    assert decide(report([]), snapshot, POLICY, NOW, reporter_person=None).directory_as_of == moment


# -- amendments that add an accused -----------------------------------------------------


def test_an_amendment_accusing_the_handler_moves_the_report_to_group_hr() -> None:
    before = seed_decision()
    result = reexclude(before, ["p-wang", "p-chen"], SEED, POLICY)
    assert [(x.principal, x.rule) for x in result.newly_excluded] == [("p-chen", "accused")]
    assert [x.principal for x in result.removed_from_routing] == ["p-chen"]
    assert result.still_routed[0].recipients == ("p-ma",)
    assert dict(result.added) == {1: ("p-ma",)}
    assert result.to_reassigned() == Reassigned(
        removed=[Exclusion(principal="p-chen", rule="accused")], added=["p-ma"]
    )
    # The updated decision keeps the earlier exclusions and adds the new one.
    assert result.decision.excluded_ids == {"p-wang", "p-li", "p-zhang", "p-chen"}
    assert result.decision.chain == result.still_routed


def test_an_amendment_accusing_the_hr_head_leaves_that_level_with_nobody() -> None:
    result = reexclude(seed_decision(), ["p-zhou"], SEED, POLICY)
    assert [(x.principal, x.rule) for x in result.newly_excluded] == [
        ("p-zhou", "accused"),
        ("p-ma", "accused_reports"),  # she answers to him; never routed, excluded all the same
    ]
    assert result.still_routed[1].nobody_eligible
    assert result.still_routed[0].recipients == ("p-chen",)  # p-chen is no conflict
    assert dict(result.added) == {}
    assert result.to_reassigned(current_level=2) == Reassigned(
        removed=[
            Exclusion(principal="p-zhou", rule="accused"),
            Exclusion(principal="p-ma", rule="accused_reports"),
        ],
        added=[],
    )


def test_an_amendment_that_adds_nobody_new_changes_nothing() -> None:
    before = seed_decision()
    result = reexclude(before, ["p-wang", "the driver"], SEED, POLICY)
    assert not result.changed and result.to_reassigned() is None
    assert result.still_routed == before.chain
    assert result.decision.unresolved_accused == ("the driver",)


def test_an_amendment_uses_the_incidents_pinned_policy() -> None:
    newer = POLICY.model_copy(update={"version": "2027-01-01"})
    with pytest.raises(ValueError, match="keeps policy '2026-12-08'"):
        reexclude(seed_decision(), ["p-chen"], SEED, newer)


# -- properties over random organisations -------------------------------------------------

ROLES = ("handler", "head", "ethics", "board", "clerk")
UNITS = ("u1", "u2", None)


@st.composite
def org_charts(draw: st.DrawFn) -> OrgSnapshot:
    """Random people, units, roles and managers: loops, self-managers, unknown managers."""
    ids = [f"p{n}" for n in range(draw(st.integers(0, 10)))]
    managers = st.sampled_from([*ids, "ghost"]) | st.none() if ids else st.none()
    return org(
        *(
            (
                i,
                draw(st.sampled_from(UNITS)),
                draw(managers),
                draw(st.lists(st.sampled_from(ROLES), max_size=3, unique=True)),
            )
            for i in ids
        )
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    chain = draw(st.lists(st.sampled_from(ROLES[:4]), min_size=1, max_size=4))
    return Policy.model_validate(
        {
            "version": "p",
            "categories": {"c": "s"},
            "severities": {
                "s": {
                    "chain": [{"role": r, "acknowledge_within": "1h"} for r in chain],
                    "repeat_last_every": "1h",
                    "feedback_within": "90d",
                }
            },
            "reporter_acknowledgement_within": "7d",
            "conflicts": {
                "exclude": [
                    *MANDATORY_EXCLUDE,
                    *draw(
                        st.lists(
                            st.sampled_from(
                                [r for r in CONFLICT_RULES if r not in MANDATORY_EXCLUDE]
                            ),
                            unique=True,
                        )
                    ),
                ],
                "independent_roles": draw(st.lists(st.sampled_from(ROLES), unique=True)),
                "categories": {
                    "c": {"exclude": draw(st.lists(st.sampled_from(CONFLICT_RULES), unique=True))}
                },
            },
        }
    )


def people_of(chart: OrgSnapshot) -> st.SearchStrategy[str]:
    return st.sampled_from([*chart.people, "a free-text name", "p-outsider"])


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[OrgSnapshot, Policy, ReportSubmitted, str | None, list[str]]:
    chart = draw(org_charts())
    policy = draw(policies())
    someone = people_of(chart)
    content = {
        "category": "c",
        "summary": "s",
        "description": "d",
        "unit": draw(st.sampled_from([*UNITS, "u3"])),
        "accused": draw(st.lists(someone, max_size=3)),
        "named": draw(st.lists(someone, max_size=3)),
    }
    submitted = ReportSubmitted.model_validate({**content, "report_digest": report_digest(content)})
    reporter = draw(st.none() | someone)
    amended = draw(st.lists(someone, max_size=3))
    return chart, policy, submitted, reporter, amended


def assert_routing_is_clean(decision: TriageDecision, chart: OrgSnapshot) -> None:
    excluded = decision.excluded_ids
    for level in decision.chain:
        assert not set(level.recipients) & excluded, (level, excluded)
        assert all(level.role in chart.roles_of(p) for p in level.recipients)


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_no_excluded_person_is_ever_routed(
    scenario: tuple[OrgSnapshot, Policy, ReportSubmitted, str | None, list[str]],
) -> None:
    chart, policy, submitted, reporter, _ = scenario
    decision = decide(submitted, chart, policy, NOW, reporter_person=reporter)
    assert_routing_is_clean(decision, chart)
    excluded = decision.excluded_ids
    rules = set(policy.conflicts.rules_for(submitted.category))
    independent = set(policy.conflicts.independent_roles)
    known_accused = [a for a in submitted.accused if chart.knows(a)]

    # Everyone the rules name is excluded...
    expected: dict[str, set[str]] = {}
    if "accused" in rules:
        for person in known_accused:
            expected.setdefault(person, set()).add("accused")
    if "accused_management_chain" in rules:
        for person in known_accused:
            for manager in chart.managers_above(person):
                if not chart.roles_of(manager) & independent:
                    expected.setdefault(manager, set()).add("accused_management_chain")
    if "named_in_report" in rules:
        for person in submitted.named:
            if chart.knows(person):
                expected.setdefault(person, set()).add("named_in_report")
    if "reporter" in rules and reporter:
        expected.setdefault(reporter, set()).add("reporter")
    if "accused_reports" in rules:
        roles = [*(level.role for level in decision.chain), *independent]
        for person in chart.people:
            if (
                chart.roles_of(person) & set(roles)
                and person not in known_accused
                and set(chart.managers_above(person)) & set(known_accused)
            ):
                expected.setdefault(person, set()).add("accused_reports")
    # ... and nobody else, each with the first of their rules in the policy's order.
    assert {x.principal: set(x.rules) for x in decision.excluded} == expected
    for x in decision.excluded:
        assert x.rule == min(x.rules, key=CONFLICT_RULES.index)
    unresolved = [p for p in (*submitted.accused, *submitted.named) if not chart.knows(p)]
    assert decision.conflict_unresolved == bool(unresolved)
    if unresolved:  # the independent roles only
        assert [level.role for level in decision.chain] == (
            list(dict.fromkeys(policy.conflicts.independent_roles)) or ["independent_roles"]
        )

    # Each level: the eligible holders of the unit, else of the organisation, else nobody.
    for level in decision.chain:
        in_unit = (
            [p for p in chart.holders(level.role, decision.unit) if p not in excluded]
            if decision.unit
            else []
        )
        anywhere = [p for p in chart.holders(level.role) if p not in excluded]
        assert list(level.recipients) == (in_unit or anywhere)
        assert level.nobody_eligible == (not anywhere)

    # The event is valid and names no one who is routed as excluded.
    triaged = decision.to_triaged()
    assert {x.principal for x in triaged.excluded} <= excluded


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_an_amendment_never_leaves_a_conflicted_person_routed(
    scenario: tuple[OrgSnapshot, Policy, ReportSubmitted, str | None, list[str]],
) -> None:
    chart, policy, submitted, reporter, amended = scenario
    before = decide(submitted, chart, policy, NOW, reporter_person=reporter)
    result = reexclude(before, [*submitted.accused, *amended], chart, policy)
    assert_routing_is_clean(result.decision, chart)
    assert before.excluded_ids <= result.decision.excluded_ids
    newly = {x.principal for x in result.newly_excluded}
    assert not newly & before.excluded_ids
    for level in result.still_routed:
        assert not set(level.recipients) & newly
    # Nobody who was routed and is still eligible loses their place.
    for old, new in zip(before.chain, result.still_routed, strict=True):
        kept = [p for p in old.recipients if p not in newly]
        if kept:
            assert list(new.recipients) == kept


# -- names that match nobody or several people ------------------------------------------------


def with_matches(submitted: ReportSubmitted, *matches: PersonMatch) -> ReportSubmitted:
    return submitted.model_copy(update={"people_matches": list(matches)})


def test_a_name_matching_several_people_excludes_them_all_and_asks_only_the_independent() -> None:
    """ "Chen" could be p-chen or p-ma's namesake: both candidates are conflicted, and only
    the independent roles see the report until someone confirms who is meant."""
    ambiguous = PersonMatch(
        field="accused", text="enc:v1:x", how="ambiguous", candidates=["p-chen", "p-ma"]
    )
    decision = decide(
        with_matches(report(["enc:v1:x"]), ambiguous), SEED, POLICY, NOW, reporter_person=None
    )
    assert decision.conflict_unresolved and decision.unresolved_matches == 1
    assert [(lv.role, lv.recipients, lv.acknowledge_within) for lv in decision.chain] == [
        ("chief_ethics_officer", ("p-sun",), 4 * 3600),
        ("board_audit_committee", ("p-board",), 24 * 3600),
    ]
    assert decision.deadlines["level_1_acknowledge"] == NOW + timedelta(hours=4)
    rules = {x.principal: x.rules for x in decision.excluded}
    assert rules["p-chen"] == rules["p-ma"] == ("ambiguous_match",)
    # Either may be the accused: the managers above them are excluded as for an accused.
    assert rules["p-li"] == rules["p-zhou"] == rules["p-zhang"] == ("accused_management_chain",)
    assert decision.independent == ("p-sun", "p-board")
    triaged = decision.to_triaged()
    assert triaged.conflict_unresolved and triaged.independent == ["p-sun", "p-board"]


def test_a_name_matching_nobody_asks_only_the_independent_roles() -> None:
    nobody = PersonMatch(field="named", text="enc:v1:y", how="none")
    decision = decide(
        with_matches(report(["p-wang"], named=["enc:v1:y"]), nobody),
        SEED,
        POLICY,
        NOW,
        reporter_person="p-liu",
    )
    assert decision.conflict_unresolved
    assert [lv.recipients for lv in decision.chain] == [("p-sun",), ("p-board",)]
    assert {"p-wang", "p-li", "p-zhang", "p-liu"} <= decision.excluded_ids


def test_without_independent_roles_an_unresolved_report_asks_nobody() -> None:
    bare = POLICY.model_copy(
        update={"conflicts": POLICY.conflicts.model_copy(update={"independent_roles": []})}
    )
    decision = decide(report(["someone"]), SEED, bare, NOW, reporter_person=None)
    assert [(lv.role, lv.recipients) for lv in decision.chain] == [("independent_roles", ())]
    assert decision.independent == ()


def test_conflicts_of_checks_the_accuseds_reports_among_the_candidates_given() -> None:
    people = conflicts_of(
        accused=["p-zhou"],
        named=[],
        reporter=None,
        org=SEED,
        policy=POLICY,
        category="harassment",
        candidates=["p-ma", "p-chen"],
    ).people(SEED)
    assert {x.principal: x.rule for x in people} == {
        "p-zhou": "accused",
        "p-zhang": "accused_management_chain",
        "p-ma": "accused_reports",
    }
    fraud = conflicts_of(
        accused=["p-zhou"], named=[], reporter=None, org=SEED, policy=POLICY,
        category="fraud", candidates=["p-ma"],
    ).people(SEED)  # fmt: skip
    assert {x.principal: x.rule for x in fraud}["p-ma"] == "accused_reports"  # every category


# -- deciding again after the people are confirmed ---------------------------------------------


def unresolved_decision() -> tuple[ReportSubmitted, TriageDecision]:
    submitted = with_matches(
        report(["enc:v1:x"]),
        PersonMatch(
            field="accused", text="enc:v1:x", how="ambiguous", candidates=["p-chen", "p-ma"]
        ),
    )
    return submitted, decide(submitted, SEED, POLICY, NOW, reporter_person="p-liu")


def test_only_an_independent_holder_who_is_not_excluded_may_confirm() -> None:
    _, decision = unresolved_decision()
    assert may_confirm(decision, "p-sun", SEED, POLICY)
    assert not may_confirm(decision, "p-chen", SEED, POLICY)  # no independent role
    excluded = decide(report(["p-sun"]), SEED, POLICY, NOW, reporter_person=None)
    assert not may_confirm(excluded, "p-sun", SEED, POLICY)  # accused herself


def test_a_confirmation_decides_again_keeping_every_exclusion_and_the_legal_clocks() -> None:
    submitted, first = unresolved_decision()
    later = NOW + timedelta(hours=3)
    confirmed = PeopleConfirmed(principal="p-sun", accused=["p-wang"], named=[])
    again = decide(
        confirmed_report(submitted, confirmed),
        SEED,
        POLICY,
        later,
        reporter_person="p-liu",
        prior=first,
    )
    assert again.revision == 2 and not again.conflict_unresolved
    # The ordinary chain now. Exclusions are never lifted: p-chen and p-ma (candidates)
    # and the line above them (p-zhou above p-ma) stay out.
    assert [lv.recipients for lv in again.chain] == [(), (), ("p-sun",), ("p-board",)]
    assert first.excluded_ids <= again.excluded_ids
    assert {"p-wang", "p-li", "p-zhang"} <= again.excluded_ids
    assert again.deadlines["level_1_acknowledge"] == later + timedelta(hours=1)
    assert again.deadlines["feedback"] == first.deadlines["feedback"]
    assert (
        again.deadlines["reporter_acknowledgement"] == first.deadlines["reporter_acknowledgement"]
    )
    assert again.to_triaged().revision == 2


def test_a_decision_survives_its_json_form() -> None:
    _, decision = unresolved_decision()
    assert TriageDecision.from_json(json.loads(json.dumps(decision.to_json()))) == decision


# -- recusal and ordered reassignment -----------------------------------------------------------


def test_a_recusing_handler_is_replaced_by_the_next_eligible_holder_of_her_role() -> None:
    result = recuse(seed_decision(), "p-chen", SEED, POLICY)
    assert result.reassigned == Reassigned(
        removed=[Exclusion(principal="p-chen", rule="recused")], added=["p-ma"]
    )
    assert dict(result.levels) == {"p-ma": 1}
    assert result.decision.chain[0].recipients == ("p-ma",)
    assert result.decision.exclusion_of("p-chen") == ExcludedPerson(
        "p-chen", "recused", ("recused",), True
    )
    # Recusing again changes nothing.
    assert recuse(result.decision, "p-chen", SEED, POLICY).reassigned is None


def test_when_nobody_is_left_the_recusal_still_removes_her() -> None:
    first = recuse(seed_decision(), "p-chen", SEED, POLICY).decision
    result = recuse(first, "p-ma", SEED, POLICY)
    assert result.reassigned == Reassigned(
        removed=[Exclusion(principal="p-ma", rule="recused")], added=[]
    )
    assert result.decision.chain[0].nobody_eligible


def test_an_ordered_reassignment_adds_only_people_who_pass_every_exclusion() -> None:
    order = ReassignmentOrdered(
        principal="p-sun", to=["p-ma", "p-wang", "p-nobody"], remove=["p-chen"], reason="enc:v1:r"
    )
    result = order_reassignment(seed_decision(reporter="p-liu"), order, SEED, POLICY)
    assert result.reassigned == Reassigned(
        removed=[Exclusion(principal="p-chen", rule="reassigned")], added=["p-ma"]
    )
    assert result.decision.chain[0].recipients == ()
    assert "p-chen" in result.decision.excluded_ids


def test_an_ordered_reassignment_to_nobody_eligible_still_removes() -> None:
    order = ReassignmentOrdered(principal="p-sun", to=["p-li"], remove=["p-chen"], reason="r")
    result = order_reassignment(seed_decision(), order, SEED, POLICY)
    assert result.reassigned == Reassigned(
        removed=[Exclusion(principal="p-chen", rule="reassigned")], added=[]
    )


def test_an_order_from_someone_without_the_role_or_excluded_is_ignored() -> None:
    by_handler = ReassignmentOrdered(principal="p-ma", to=["p-ma"], remove=["p-chen"], reason="r")
    ignored = order_reassignment(seed_decision(), by_handler, SEED, POLICY)
    assert ignored.reassigned is None and ignored.ignored
    accused = decide(report(["p-sun"]), SEED, POLICY, NOW, reporter_person=None)
    by_accused = ReassignmentOrdered(principal="p-sun", to=["p-ma"], reason="r")
    assert order_reassignment(accused, by_accused, SEED, POLICY).reassigned is None
