"""No conflicted person is ever asked: random org charts, random spellings, random steps.

Issue 18's property. An organisation is a random forest of up to six levels with the
shipped policy's roles scattered over it; people have names from a small pool, so two
people often share one (and some have an alternative name in Chinese characters). A
reporter names the accused and others by id or by a spelling of their name: another
case, other spacing, full-width letters, diacritics, another word order, or the
alternative name. Intake's resolution is played with `services.domain.names` (a unique
match becomes the person id, anything else stays text with its `PersonMatch`).

Then triage decides, and the incident goes through random recusals, ordered
reassignments and, when the report was conflict-unresolved, the confirmation of the
people by an independent-role holder. Every step is folded through triage's pure
functions and through `services.domain.escalation.start` / `reassign`. After every step,
nobody conflicted is a recipient at any level, in the independent fallback, added by a
reassignment, or eligible in escalation's state: the accused, their management line
(but independent roles, which the policy exempts), people who answer to them (for the
categories that turn `accused_reports` on), the reporter, the people named, every
candidate of an ambiguous name, and everyone who recused or was ordered off.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from hypothesis import event, given, settings
from hypothesis import strategies as st

import services
from services.domain import escalation as esc
from services.domain.events import (
    PeopleConfirmed,
    PersonMatch,
    ReassignmentOrdered,
    ReportSubmitted,
)
from services.domain.incident import report_digest
from services.domain.names import NameIndex
from services.domain.org import OrgPerson, OrgSnapshot
from services.domain.policy import Policy
from services.domain.triage import (
    TriageDecision,
    confirmed_report,
    decide,
    may_confirm,
    order_reassignment,
    recuse,
)
from services.infra.config import load_yaml_model

POLICY = load_yaml_model(Path(services.__file__).parent / "data" / "policy.yaml", Policy)
NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
ROLES = ("hr_case_handler", "hr_head", "chief_ethics_officer", "board_audit_committee")
UNITS = ("retail", "group", "logistics")
FAMILY = ("Wang", "Chen", "Li", "Zhou", "Müller", "O'Neil")
GIVEN = ("Jun", "Mei", "Wei", "José", "Ana")
HANZI = ("王军", "陈梅", "李伟", "周洁")


@dataclass
class Chart:
    org: OrgSnapshot
    names: dict[str, str]
    alternative: dict[str, str] = field(default_factory=dict)

    def index(self) -> NameIndex:
        return NameIndex.of(
            {
                p: (n, [self.alternative[p]] if p in self.alternative else [])
                for p, n in self.names.items()
            }
        )


@st.composite
def charts(draw: st.DrawFn) -> Chart:
    """A forest: each person's manager is someone drawn before, at most six levels deep."""
    size = draw(st.integers(2, 18))
    depth: dict[str, int] = {}
    people: list[OrgPerson] = []
    names: dict[str, str] = {}
    alternative: dict[str, str] = {}
    for n in range(size):
        pid = f"p{n}"
        shallow = [p for p, d in depth.items() if d < 5]
        manager = draw(st.sampled_from(shallow) | st.none()) if shallow else None
        depth[pid] = depth[manager] + 1 if manager else 0
        roles = draw(st.lists(st.sampled_from(ROLES), max_size=2, unique=True))
        people.append(OrgPerson(pid, draw(st.sampled_from(UNITS)), manager, frozenset(roles)))
        names[pid] = f"{draw(st.sampled_from(FAMILY))} {draw(st.sampled_from(GIVEN))}"
        if draw(st.booleans()):
            alternative[pid] = draw(st.sampled_from(HANZI))
    org = OrgSnapshot({p.id: p for p in people})
    return Chart(org, names, alternative)


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _with_diacritics(text: str) -> str:
    return unicodedata.normalize("NFC", "".join(c + "\u0301" if c in "aeiou" else c for c in text))


SPELLINGS: dict[str, Callable[[str], str]] = {
    "upper": str.upper,
    "lower": str.lower,
    "spaced": lambda t: "  " + t.replace(" ", "   ") + " ",
    "full-width": _full_width,
    "diacritics": _with_diacritics,
    "reversed": lambda t: " ".join(reversed(t.split())),
}


@st.composite
def references(draw: st.DrawFn, chart: Chart, person: str) -> str:
    """How a reporter refers to `person`: the id, or one spelling of a name of theirs."""
    how = draw(st.sampled_from(["id", "alternative", *SPELLINGS]))
    if how == "id":
        return person
    if how == "alternative" and person in chart.alternative:
        return chart.alternative[person]
    name = chart.names[person]
    for step in draw(st.lists(st.sampled_from(sorted(SPELLINGS)), min_size=1, max_size=3)):
        name = SPELLINGS[step](name)
    return name


def resolve(
    chart: Chart, field_: Literal["accused", "named"], texts: list[str], index: NameIndex
) -> tuple[list[str], list[PersonMatch]]:
    """Intake's part: a directory id stays; a name is matched (one person: their id)."""
    entries: list[str] = []
    matches: list[PersonMatch] = []
    for text in texts:
        if chart.org.knows(text):
            entries.append(text)
            continue
        found = index.resolve(text)
        matches.append(
            PersonMatch(
                field=field_,
                text=text,
                how=found.how,
                person_id=found.person_id,
                candidates=list(found.candidates),
            )
        )
        entries.append(found.person_id if found.person_id else text)
    return entries, matches


@dataclass
class Scenario:
    chart: Chart
    category: str
    accused: list[str]  # who the reporter meant
    named: list[str]
    reporter: str | None
    submitted: ReportSubmitted
    steps: list[tuple[str, int, list[int]]]  # (kind, pick, picks)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    chart = draw(charts())
    everyone = sorted(chart.org.people)
    person = st.sampled_from(everyone)
    accused = draw(st.lists(person, min_size=1, max_size=2, unique=True))
    named = draw(st.lists(person, max_size=2, unique=True))
    reporter = draw(st.none() | person)
    index = chart.index()
    accused_entries, accused_matches = resolve(
        chart, "accused", [draw(references(chart, p)) for p in accused], index
    )
    outsiders = draw(st.lists(st.just("a client from the trip"), max_size=1))
    named_entries, named_matches = resolve(
        chart, "named", [*(draw(references(chart, p)) for p in named), *outsiders], index
    )
    category = draw(st.sampled_from(["sexual_misconduct", "harassment", "fraud", "other"]))
    content = {
        "category": category,
        "summary": "s",
        "description": "d",
        "unit": draw(st.sampled_from([*UNITS, None])),
        "accused": accused_entries,
        "named": named_entries,
    }
    submitted = ReportSubmitted.model_validate(
        {
            **content,
            "report_digest": report_digest(content),
            "people_matches": [m.model_dump() for m in (*accused_matches, *named_matches)],
        }
    )
    kinds = st.sampled_from(["recuse", "order", "confirm"])
    index_ = st.integers(0, 10_000)
    steps = draw(
        st.lists(st.tuples(kinds, index_, st.lists(index_, max_size=3)), min_size=1, max_size=5)
    )
    return Scenario(chart, category, accused, named, reporter, submitted, steps)


def conflicted(scenario: Scenario) -> set[str]:
    """Everyone the rules name for this report, worked out the slow, obvious way."""
    org = scenario.chart.org
    independent = set(POLICY.conflicts.independent_roles)
    accused = set(scenario.accused)
    for match in scenario.submitted.people_matches:
        if match.how == "ambiguous" and match.field == "accused":
            accused |= set(match.candidates)
    out = set(accused) | set(scenario.named)
    for match in scenario.submitted.people_matches:
        out |= set(match.candidates) if match.how == "ambiguous" else set()
    if scenario.reporter:
        out.add(scenario.reporter)
    for person in accused:
        out |= {m for m in org.managers_above(person) if not org.roles_of(m) & independent}
    if "accused_reports" in POLICY.conflicts.rules_for(scenario.category):
        out |= {p for p in org.people if set(org.managers_above(p)) & accused}
    return out


def assert_nobody_conflicted(
    decision: TriageDecision, state: esc.EscalationState, never: set[str], org: OrgSnapshot
) -> None:
    for level in decision.chain:
        assert not set(level.recipients) & never, (level, never)
    assert not set(decision.independent) & never
    for number in range(1, state.last_level + 1):
        assert not set(state.eligible(number)) & never, (number, state, never)
    # Every rule applied and never lifted, for everyone who could be asked (who holds a
    # role of this chain or an independent one: `accused_reports` walks up from them).
    in_play = {lv.role for lv in decision.chain} | set(POLICY.conflicts.independent_roles)
    assert {p for p in never if org.roles_of(p) & in_play} <= decision.excluded_ids


def started(decision: TriageDecision, digest: str) -> esc.EscalationState:
    state, _ = esc.start(decision.to_triaged(), "i-1", NOW, digest)
    return state


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_no_conflicted_person_is_ever_asked(scenario: Scenario) -> None:
    org = scenario.chart.org
    submitted = scenario.submitted
    never = conflicted(scenario)
    decision = decide(submitted, org, POLICY, NOW, reporter_person=scenario.reporter)
    event(f"conflict-unresolved: {decision.conflict_unresolved}")
    digest = submitted.report_digest
    state = started(decision, digest)
    assert_nobody_conflicted(decision, state, never, org)
    everyone = sorted(org.people)
    for kind, pick, picks in scenario.steps:
        if kind == "recuse":
            asked = sorted(decision.recipients) or everyone
            who = asked[pick % len(asked)]
            result = recuse(decision, who, org, POLICY)
            never.add(who)
        elif kind == "order":
            reassigners = [p for p in everyone if org.roles_of(p) & {"chief_ethics_officer"}]
            principal = (reassigners or everyone)[pick % len(reassigners or everyone)]
            to = [everyone[i % len(everyone)] for i in picks] or [principal]
            remove = [everyone[pick % len(everyone)]]
            order = ReassignmentOrdered(principal=principal, to=to, remove=remove, reason="r")
            result = order_reassignment(decision, order, org, POLICY)
            if result.reassigned is not None:
                never |= set(remove)
        else:
            independent = set(POLICY.conflicts.independent_roles)
            holders = [p for p in everyone if org.roles_of(p) & independent] or everyone
            principal = holders[pick % len(holders)]
            if not may_confirm(decision, principal, org, POLICY):
                continue
            confirmed = PeopleConfirmed(
                principal=principal, accused=scenario.accused, named=scenario.named
            )
            decision = decide(
                confirmed_report(submitted, confirmed),
                org,
                POLICY,
                NOW,
                reporter_person=scenario.reporter,
                prior=decision,
            )
            assert not decision.conflict_unresolved
            event("confirmed")
            state = started(decision, digest)  # a new revision replaces the chain
            assert_nobody_conflicted(decision, state, never, org)
            continue
        if result.reassigned is not None:
            event(f"{kind}: {'someone added' if result.reassigned.added else 'nobody added'}")
            assert not set(result.reassigned.added) & never
            state, _ = esc.reassign(
                state,
                [x.principal for x in result.reassigned.removed],
                result.reassigned.added,
                NOW,
            )
        decision = result.decision
        assert_nobody_conflicted(decision, state, never, org)


def test_the_spellings_of_one_name_resolve_alike() -> None:
    """The generator's spellings are ones intake resolves (else the property is idle)."""
    chart = Chart(OrgSnapshot({"p0": OrgPerson("p0")}), {"p0": "Müller José"}, {"p0": "王军"})
    index = chart.index()
    for spell in SPELLINGS.values():
        assert index.resolve(spell("Müller José")).person_id == "p0"
    assert index.resolve("王军").person_id == "p0"
