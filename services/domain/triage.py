"""Triage's decision: severity, deadlines, who is asked in which order, and who never is.

`decide(report, org, policy, now, reporter_person=...)` is a pure function of the
report, the directory snapshot at that moment, the pinned policy and the clock
(SPEC.md, Configuration files):

1. Severity comes from `policy.categories`, the chain of roles from
   `policy.severities[severity].chain`.
2. Conflicts are excluded first, by the rules the policy turns on for the report's
   category (`policy.conflicts.rules_for(category)`):

   - `accused`: the accused person ids the directory knows. A free-text name (or an
     id the directory does not know) cannot be matched; it is kept in
     `unresolved_accused` and makes the report conflict-unresolved (below).
   - `accused_management_chain`: every manager above each accused person up to the
     top, except holders of `policy.conflicts.independent_roles`. The walk goes on
     through an independent manager; it stops at a loop in the manager data.
   - `named_in_report`: the named person ids the directory knows.
   - `reporter`: the reporter's person id, resolved by the caller (the report carries
     a pseudonym that this pure code does not read).
   - `accused_reports`: people who answer to an accused, directly or further down:
     each *candidate* (a holder of a role the decision may route to) whose own
     management chain contains an accused. The people below each accused are walked
     down from him when they are fewer than twice the candidates (a team lead's few
     reports), else each candidate's chain is walked up: never the whole
     organisation, and at a company's size only the smaller of the two
     (docs/scale.md). Independent roles
     are not exempt: answering to the accused is a conflict whatever the role.
   - `ambiguous_match` (always on): every candidate of a name that matched several
     people (`PersonMatch.how == "ambiguous"`). Each candidate of an ambiguous *accused*
     name may be the accused: the two rules about the accused's line
     (`accused_management_chain`, `accused_reports`) apply to each of them too.

   Each excluded person carries the first rule (in `RULE_ORDER`) that excluded them,
   and all of them.
3. Each level's role is resolved after exclusions to the eligible holders in the
   incident's unit (the report's `unit`, else the unit of the first accused person the
   directory knows), else to the eligible holders anywhere in the organisation. A level
   with nobody left stays in the chain with no recipients and is flagged
   (`nobody_eligible`): escalation records `nobody_eligible` and asks the next level at
   once. `independent` lists the eligible holders of the independent roles: escalation's
   fallback when the chain runs out.
4. A **conflict-unresolved** report (an accused or named entry that is not a person of
   the directory, or a name that matched nobody or several people) gets a chain of the
   independent roles only: one level per role in the policy's order, each with that
   role's `acknowledge_within` in the severity's chain, else the chain's first level's.
5. Deadlines: level 1's acknowledgement, the reporter's acknowledgement and feedback.

Later inputs change a decision, always by pure functions of it (exclusions only grow):

- `reexclude`: an amendment adds accused (or named) people;
- `decide(..., prior=decision)`: an independent-role holder confirmed the people
  (`incident.people.confirmed.v1`, see `may_confirm`); the new decision has
  `revision + 1`, keeps every earlier exclusion and the legal clocks;
- `recuse`: a handler declared a conflict (rule `recused`); the next eligible holder of
  her level's role replaces her;
- `order_reassignment`: a holder of `conflicts.reassign_roles` moved the incident
  (rule `reassigned` for the people removed; the new people must pass every exclusion).

No I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from pydantic import TypeAdapter

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
from services.domain.org import Org
from services.domain.policy import CONFLICT_RULES, Level, Policy
from services.domain.reports import UnknownCategory

ACCUSED = "accused"
MANAGEMENT_CHAIN = "accused_management_chain"
NAMED = "named_in_report"
REPORTER = "reporter"
ACCUSED_REPORTS = "accused_reports"
assert (ACCUSED, MANAGEMENT_CHAIN, NAMED, REPORTER, ACCUSED_REPORTS) == CONFLICT_RULES
AMBIGUOUS = "ambiguous_match"
"""Always on: a candidate of a name that matched several people."""
RECUSED = "recused"
"""Event-driven: she declared a conflict (`incident.recused.v1`)."""
REASSIGNED = "reassigned"
"""Event-driven: an ordered reassignment removed her (`incident.reassignment.ordered.v1`)."""
RULE_ORDER = (*CONFLICT_RULES, AMBIGUOUS, RECUSED, REASSIGNED)
"""Every rule, in the order a person's first rule is chosen."""
UNRESOLVED_HOW = frozenset({"none", "ambiguous"})
NO_INDEPENDENT_ROLE = "independent_roles"
"""The role of the one empty level of a conflict-unresolved chain when the policy has no
independent roles: nobody may be asked, so escalation raises its stalled alert."""

LEVEL_1_ACKNOWLEDGE = "level_1_acknowledge"
REPORTER_ACKNOWLEDGEMENT = "reporter_acknowledgement"
FEEDBACK = "feedback"

Scope = Literal["unit", "organisation", "nobody"]
UnitSource = Literal["report", "accused", "none"]


@dataclass(frozen=True)
class ExcludedPerson:
    """One person who may never be routed the report, and why.

    `rule` is the first rule (in the policy's order) that excluded them, `rules` all of
    them. `routable`: they hold a role of the chain, so without the exclusion they could
    have been asked.
    """

    principal: str
    rule: str
    rules: tuple[str, ...]
    routable: bool = False

    def to_exclusion(self) -> Exclusion:
        return Exclusion(principal=self.principal, rule=self.rule)


@dataclass(frozen=True)
class ResolvedLevel:
    """One level of the chain with the people it resolved to.

    `scope` says where they were found: in the incident's `unit`, anywhere in the
    `organisation`, or `nobody` eligible. `excluded_holders` are the holders of the role
    (where they were looked for last) who were left out for a conflict.
    """

    level: int
    role: str
    acknowledge_within: int
    recipients: tuple[str, ...]
    scope: Scope
    excluded_holders: tuple[str, ...] = ()

    @property
    def nobody_eligible(self) -> bool:
        """Nobody is left to ask: escalation records `nobody_eligible` and moves on at once."""
        return not self.recipients

    def to_chain_level(self) -> ChainLevel:
        return ChainLevel(
            level=self.level,
            role=self.role,
            recipients=list(self.recipients),
            acknowledge_within=self.acknowledge_within,
        )


@dataclass(frozen=True)
class TriageDecision:
    """Everything triage decided about one incident, with what explains it."""

    category: str
    severity: str
    policy_version: str
    decided_at: datetime
    unit: str | None
    unit_source: UnitSource
    chain: tuple[ResolvedLevel, ...]
    excluded: tuple[ExcludedPerson, ...]
    unresolved_accused: tuple[str, ...]
    unresolved_named: tuple[str, ...]
    management_cycles: tuple[tuple[str, ...], ...]
    deadlines: Mapping[str, datetime]
    notes: tuple[str, ...]
    directory_as_of: datetime | None = None
    revision: int = 1
    conflict_unresolved: bool = False
    independent: tuple[str, ...] = ()
    accused: tuple[str, ...] = ()
    """The accused person ids the directory knew (for `accused_reports` on later candidates)."""
    unresolved_matches: int = 0
    """Names of the report that matched nobody or several people."""

    @property
    def first_level(self) -> ResolvedLevel:
        return self.chain[0]

    @property
    def first_recipients(self) -> tuple[str, ...]:
        """Who is asked now (`incident.assigned.v1` + one `incident.notified.v1` each).

        Empty when level 1 has nobody eligible: then nobody is assigned by triage, and
        escalation records `nobody_eligible` and asks level 2 at once.
        """
        return self.chain[0].recipients

    @property
    def nobody_eligible_levels(self) -> tuple[int, ...]:
        return tuple(level.level for level in self.chain if level.nobody_eligible)

    @property
    def excluded_ids(self) -> frozenset[str]:
        return frozenset(x.principal for x in self.excluded)

    def exclusion_of(self, principal: str) -> ExcludedPerson | None:
        return next((x for x in self.excluded if x.principal == principal), None)

    @property
    def published_exclusions(self) -> tuple[ExcludedPerson, ...]:
        """The exclusions `incident.triaged.v1` carries.

        All of them but one kind: a person excluded only as the reporter is left out,
        whether or not they hold a role of the chain. Listing them would name the
        reporter on a topic every consumer and auditor reads (the SPEC carries the
        reporter's id only as a pseudonym). The chain is resolved without them all the
        same, and intake and audit exclude the reporter by themselves (they open
        `reporter_identity`), so they are refused the report without being named.
        """
        return tuple(x for x in self.excluded if x.rules != (REPORTER,))

    @property
    def recipients(self) -> frozenset[str]:
        """Everyone a level of the chain asks (or would ask)."""
        return frozenset(p for level in self.chain for p in level.recipients)

    def to_triaged(self) -> Triaged:
        """The `incident.triaged.v1` data of this decision."""
        return Triaged(
            category=self.category,
            severity=self.severity,
            policy_version=self.policy_version,
            chain=[level.to_chain_level() for level in self.chain],
            excluded=[x.to_exclusion() for x in self.published_exclusions],
            deadlines=dict(self.deadlines),
            revision=self.revision,
            conflict_unresolved=self.conflict_unresolved,
            independent=list(self.independent),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, for the service to keep the decision between events."""
        plain = replace(self, deadlines=dict(self.deadlines))
        return _DECISION.dump_python(plain, mode="json")  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> TriageDecision:
        decision = _DECISION.validate_python(value)
        return replace(decision, deadlines=MappingProxyType(dict(decision.deadlines)))


_ORDER = {rule: i for i, rule in enumerate(RULE_ORDER)}


def _ranked(rules: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(dict.fromkeys(rules), key=_ORDER.__getitem__))


class Conflicts:
    """Exclusions in the making: principal -> rules, in the order they were found;
    `people` lists them."""

    def __init__(self) -> None:
        self.rules: dict[str, list[str]] = {}
        self.unresolved_accused: list[str] = []
        self.unresolved_named: list[str] = []
        self.cycles: list[tuple[str, ...]] = []
        self.notes: list[str] = []

    def add(self, principal: str, rule: str) -> None:
        rules = self.rules.setdefault(principal, [])
        if rule not in rules:
            rules.append(rule)

    def people(
        self, org: Org, chain_roles: frozenset[str] = frozenset()
    ) -> tuple[ExcludedPerson, ...]:
        found: list[ExcludedPerson] = []
        for principal, rules in self.rules.items():
            ranked = _ranked(rules)
            routable = bool(org.roles_of(principal) & chain_roles)
            found.append(ExcludedPerson(principal, ranked[0], ranked, routable))
        # Grouped by first rule, in the order found within a rule (stable sort).
        return tuple(sorted(found, key=lambda x: _ORDER[x.rule]))


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v.strip() for v in values if v.strip()))


def _entries(n: int, what: str) -> str:
    return f"{n} {what} entr{'y is' if n == 1 else 'ies are'}"


def conflicts_of(
    *,
    accused: Sequence[str],
    named: Sequence[str],
    reporter: str | None,
    org: Org,
    policy: Policy,
    category: str | None = None,
    candidates: Iterable[str] = (),
    matches: Sequence[PersonMatch] = (),
    earlier_lines: Sequence[str] = (),
    candidate_roles: Sequence[str] = (),
) -> Conflicts:
    """Who the policy's conflict rules exclude, with the notes and loops found on the
    way (`.people(org)`: the exclusions `decide` makes from the same inputs, for a service
    that must refuse the conflicted before triage's decision reaches it: intake, audit).

    `category` turns on the category's rules; `accused_reports` is only checked for
    `candidates` (e.g. the principal asking), because it walks up from them; `matches`
    adds the candidates of ambiguous names. `candidate_roles`: every holder of these
    roles is a candidate too (before `candidates`, in `_candidates` order), without
    listing them all when the people below the accused are fewer. `earlier_lines`:
    people whose lines an earlier revision treated as the accused's (its accused and
    ambiguous candidates): exclusions only grow, so the people who answer to them stay
    excluded when a revision brings new candidates."""
    rules = set(policy.conflicts.rules_for(category))
    independent = frozenset(policy.conflicts.independent_roles)
    out = Conflicts()
    known_accused = [a for a in _unique(accused) if org.knows(a)]
    # Any of the candidates of an ambiguous accused name may be the accused: the people
    # above and below each of them are treated as if he were.
    maybe_accused = _ambiguous_accused(matches, org)
    lines_of = list(
        dict.fromkeys((*known_accused, *maybe_accused, *(p for p in earlier_lines if org.knows(p))))
    )
    out.unresolved_accused = [a for a in _unique(accused) if not org.knows(a)]
    out.unresolved_named = [n for n in _unique(named) if not org.knows(n)]
    if out.unresolved_accused:
        out.notes.append(
            f"{_entries(len(out.unresolved_accused), 'accused')} not a person of the "
            "directory (free text or unknown id): only the independent roles may see the "
            "report until one of them confirms who is meant"
        )
    if out.unresolved_named:
        out.notes.append(
            f"{_entries(len(out.unresolved_named), 'named')} not a person of the directory: "
            "only the independent roles may see the report until the people are confirmed"
        )
    # Rules in the canonical order, so a person's first rule is found first.
    if ACCUSED in rules:
        for person in known_accused:
            out.add(person, ACCUSED)
    if MANAGEMENT_CHAIN in rules:
        for person in lines_of:
            chain = org.managers_above(person)
            for manager in chain.managers:
                held = org.roles_of(manager) & independent
                if held:
                    out.notes.append(
                        f"{manager} manages accused {person} (directly or above) but holds "
                        f"independent role {', '.join(sorted(held))}: stays eligible"
                    )
                    continue
                out.add(manager, MANAGEMENT_CHAIN)
            if chain.cycle and chain.cycle not in out.cycles:
                out.cycles.append(chain.cycle)
                loop = " -> ".join((*chain.cycle, chain.cycle[0]))
                out.notes.append(
                    f"circular manager data above {person}: {loop}; the walk stopped there"
                )
            if chain.dangling is not None:
                out.notes.append(
                    f"manager {chain.dangling} above {person} is not in the directory; "
                    "the chain above them is unknown"
                )
    if NAMED in rules:
        for person in _unique(named):
            if org.knows(person):
                out.add(person, NAMED)
    if REPORTER in rules and reporter:
        # The reporter's id comes from the caller, matched against the directory
        # already; it is excluded even if the directory does not know it (yet).
        out.add(reporter, REPORTER)
    if ACCUSED_REPORTS in rules and lines_of:
        for candidate in _answering(org, lines_of, candidate_roles, list(candidates)):
            out.add(candidate, ACCUSED_REPORTS)
    for match in matches:
        if match.how == "ambiguous":
            for person in match.candidates:
                out.add(person, AMBIGUOUS)
    return out


def _answering(
    org: Org, lines_of: Sequence[str], roles: Sequence[str], explicit: Sequence[str]
) -> list[str]:
    """The candidates (holders of `roles`, then `explicit`) who answer to one of
    `lines_of`, in candidate order, but for those of `lines_of` themselves.

    Walks down from `lines_of` when fewer people are below them than twice the
    candidates, else up from every candidate: the cheaper walk, the same answer."""
    above = frozenset(lines_of)
    first = {role: i for i, role in reversed(list(enumerate(roles)))}
    held = sum(len(org.holders(role)) for role in first)
    below = _below(org, lines_of, limit=2 * (held + len(explicit)))
    if below is None:
        pool = list(dict.fromkeys((*_candidates(org, roles), *explicit)))
        found = [p for p in pool if any(m in above for m in org.managers_above(p).managers)]
    else:

        def order(person: str) -> tuple[int, str]:
            return min(first[r] for r in org.roles_of(person) if r in first), person

        holding = sorted((p for p in below if org.roles_of(p) & first.keys()), key=order)
        found = list(dict.fromkeys((*holding, *(p for p in explicit if p in below))))
    return [p for p in found if p not in above]


def _below(org: Org, tops: Sequence[str], *, limit: int) -> frozenset[str] | None:
    """Everyone who answers to one of `tops`, directly or further down (walking the
    direct reports; loops in the manager data end the walk), or None once more than
    `limit` people were found: then walking up from the candidates costs less."""
    found: set[str] = set()
    todo = list(tops)
    while todo:
        for person in org.reports_of(todo.pop()):
            if person not in found:
                found.add(person)
                todo.append(person)
                if len(found) > limit:
                    return None
    return frozenset(found)


def _ambiguous_accused(matches: Sequence[PersonMatch], org: Org) -> list[str]:
    """The directory's candidates of the ambiguous accused names."""
    found = (
        p for m in matches if m.how == "ambiguous" and m.field == "accused" for p in m.candidates
    )
    return [p for p in dict.fromkeys(found) if org.knows(p)]


def _candidates(org: Org, roles: Iterable[str]) -> list[str]:
    """Everyone who holds one of `roles`: the people a decision may route to."""
    return list(dict.fromkeys(p for role in roles for p in org.holders(role)))


def _unresolved_matches(matches: Sequence[PersonMatch]) -> int:
    return sum(1 for m in matches if m.how in UNRESOLVED_HOW)


def _resolve(
    number: int, level: Level, org: Org, unit: str | None, excluded: frozenset[str]
) -> tuple[ResolvedLevel, str | None]:
    """The level resolved after exclusions, and a note when it was not found in the unit."""
    if unit is not None:
        holders = org.holders(level.role, unit)
        eligible = tuple(h for h in holders if h not in excluded)
        if eligible:
            left_out = tuple(h for h in holders if h in excluded)
            return ResolvedLevel(
                number, level.role, level.acknowledge_within, eligible, "unit", left_out
            ), None
    holders = org.holders(level.role)
    eligible = tuple(h for h in holders if h not in excluded)
    left_out = tuple(h for h in holders if h in excluded)
    where = f"in unit {unit}" if unit is not None else "(no unit known)"
    if eligible:
        note = (
            f"level {number} ({level.role}): nobody eligible {where}; "
            "routed to eligible holders anywhere in the organisation"
            if unit is not None
            else None
        )
        return ResolvedLevel(
            number, level.role, level.acknowledge_within, eligible, "organisation", left_out
        ), note
    why = f"excluded holders: {', '.join(left_out)}" if left_out else "nobody holds the role"
    return ResolvedLevel(
        number, level.role, level.acknowledge_within, (), "nobody", left_out
    ), f"level {number} ({level.role}): nobody eligible anywhere ({why}); next level at once"


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now


def _merge(
    earlier: Iterable[ExcludedPerson], later: Iterable[ExcludedPerson], chain_roles: frozenset[str]
) -> tuple[ExcludedPerson, ...]:
    """Both sets of exclusions, each person once with every rule (exclusions only grow)."""
    rules: dict[str, list[str]] = {}
    routable: dict[str, bool] = {}
    for x in (*earlier, *later):
        rules.setdefault(x.principal, []).extend(x.rules)
        routable[x.principal] = routable.get(x.principal, False) or x.routable
    merged = [
        ExcludedPerson(p, ranked[0], ranked, routable[p])
        for p, ranked in ((p, _ranked(r)) for p, r in rules.items())
    ]
    return tuple(sorted(merged, key=lambda x: _ORDER[x.rule]))


def independent_of(org: Org, policy: Policy, excluded: frozenset[str]) -> tuple[str, ...]:
    """Eligible holders of the independent roles (policy order), anywhere: the fallback."""
    return tuple(
        p for p in _candidates(org, policy.conflicts.independent_roles) if p not in excluded
    )


def _unresolved_chain(policy: Policy, severity: str) -> list[Level]:
    """The chain of a conflict-unresolved report: the independent roles only."""
    chain = policy.severities[severity].chain
    within = {level.role: level.acknowledge_within for level in chain}
    roles = policy.conflicts.independent_roles
    if not roles:
        return [Level(role=NO_INDEPENDENT_ROLE, acknowledge_within=chain[0].acknowledge_within)]
    return [
        Level(role=role, acknowledge_within=within.get(role, chain[0].acknowledge_within))
        for role in dict.fromkeys(roles)
    ]


def decide(
    report: ReportSubmitted,
    org: Org,
    policy: Policy,
    now: datetime,
    *,
    reporter_person: str | None,
    prior: TriageDecision | None = None,
) -> TriageDecision:
    """Triage one report: severity, deadlines, the chain of recipients and the exclusions.

    `reporter_person` is the reporter's person id as the caller resolved it (None when
    anonymous or unknown); `report.reporter` is not read. Raises `UnknownCategory` if the
    policy does not know the category (intake validates it first, so this is a bug or a
    policy swapped underneath).

    `prior`: the incident's decision so far, when deciding again (the people were
    confirmed: `report` then carries the confirmed lists). The new decision has the next
    revision, keeps every exclusion of `prior` and its legal clocks (the reporter's
    acknowledgement and feedback run from the first receipt); level 1's deadline runs
    from `now`.
    """
    _aware(now)
    severity = policy.categories.get(report.category)
    if severity is None:
        raise UnknownCategory(report.category, sorted(policy.categories))
    if prior is not None and prior.policy_version != policy.version:
        raise ValueError(
            f"the incident keeps policy {prior.policy_version!r}; got {policy.version!r}"
        )
    rules = policy.severities[severity]
    unresolved_matches = _unresolved_matches(report.people_matches)
    conflict_unresolved = bool(
        unresolved_matches
        or any(not org.knows(a) for a in _unique(report.accused))
        or any(not org.knows(n) for n in _unique(report.named))
    )
    levels = _unresolved_chain(policy, severity) if conflict_unresolved else list(rules.chain)
    chain_roles = frozenset(level.role for level in levels)
    conflicts = conflicts_of(
        accused=report.accused,
        named=report.named,
        reporter=reporter_person or None,
        org=org,
        policy=policy,
        category=report.category,
        candidate_roles=[*(lv.role for lv in levels), *policy.conflicts.independent_roles],
        matches=report.people_matches,
        earlier_lines=prior.accused if prior is not None else (),
    )
    excluded = conflicts.people(org, chain_roles)
    if prior is not None:
        excluded = _merge(prior.excluded, excluded, chain_roles)
    excluded_ids = frozenset(x.principal for x in excluded)

    unit, unit_source = incident_unit(report, org)

    notes = list(conflicts.notes)
    if unresolved_matches:
        notes.append(
            f"{unresolved_matches} name(s) matched nobody or several people in the directory:"
            " only the independent roles may see the report until one of them confirms who"
            " is meant"
        )
    if unit is None:
        notes.append(
            "no unit: the report names none and no accused person is in the directory; "
            "every level is resolved across the organisation"
        )
    chain: list[ResolvedLevel] = []
    for number, level in enumerate(levels, start=1):
        resolved, note = _resolve(number, level, org, unit, excluded_ids)
        chain.append(resolved)
        if note:
            notes.append(note)

    deadlines = {
        LEVEL_1_ACKNOWLEDGE: now + timedelta(seconds=levels[0].acknowledge_within),
        REPORTER_ACKNOWLEDGEMENT: now + timedelta(seconds=policy.reporter_acknowledgement_within),
        FEEDBACK: now + timedelta(seconds=rules.feedback_within),
    }
    if prior is not None:  # the legal clocks run from the first receipt
        deadlines.update({k: v for k, v in prior.deadlines.items() if k != LEVEL_1_ACKNOWLEDGE})
    known_accused = tuple(a for a in _unique(report.accused) if org.knows(a))
    maybe_accused = tuple(_ambiguous_accused(report.people_matches, org))
    return TriageDecision(
        category=report.category,
        severity=severity,
        policy_version=policy.version,
        decided_at=now,
        unit=unit,
        unit_source=unit_source,
        chain=tuple(chain),
        excluded=excluded,
        unresolved_accused=tuple(conflicts.unresolved_accused),
        unresolved_named=tuple(conflicts.unresolved_named),
        management_cycles=tuple(conflicts.cycles),
        deadlines=MappingProxyType(deadlines),
        notes=tuple(notes),
        directory_as_of=org.as_of,
        revision=prior.revision + 1 if prior is not None else 1,
        conflict_unresolved=conflict_unresolved,
        independent=independent_of(org, policy, excluded_ids),
        accused=tuple(
            dict.fromkeys((*(prior.accused if prior else ()), *known_accused, *maybe_accused))
        ),
        unresolved_matches=unresolved_matches,
    )


def incident_unit(report: ReportSubmitted, org: Org) -> tuple[str | None, UnitSource]:
    """The unit the chain is resolved in first: the report's, else the first accused's."""
    unit = (report.unit or "").strip() or None
    if unit is not None:
        return unit, "report"
    for person in _unique(report.accused):
        found = org.unit_of(person)
        if found:
            return found, "accused"
    return None, "none"


def reporter_candidates(
    org: Org, policy: Policy, unit: str | None, extra: Iterable[str] = ()
) -> list[str]:
    """The people a named reporter must be looked for among, before a decision: whoever
    could be asked or given the incident without a fallback to the whole organisation.

    The reporter rule only changes who is routed (the reporter is never published, and
    intake and audit exclude the reporter by themselves), so matching the pseudonym
    against anyone else changes nothing: the holders of the policy's chain roles in
    `unit`, the holders of the independent and reassigning roles anywhere, and `extra`
    (the people a reassignment adds). A level resolved across the organisation widens
    the search to its role's holders (`widened_candidates`). See docs/scale.md.
    """
    chain_roles = dict.fromkeys(
        level.role for rules in policy.severities.values() for level in rules.chain
    )
    anywhere = [*policy.conflicts.independent_roles, *policy.conflicts.reassign_roles]
    in_unit = (
        (p for role in chain_roles for p in org.holders(role, unit)) if unit is not None else ()
    )
    found = (p for role in dict.fromkeys(anywhere) for p in org.holders(role))
    return list(dict.fromkeys((*in_unit, *found, *extra)))


def widened_candidates(decision: TriageDecision, org: Org) -> list[str]:
    """The holders of the roles of the levels a decision resolved outside its unit: the
    reporter, if among them, must be excluded and the decision made again."""
    return list(
        dict.fromkeys(
            p for lv in decision.chain if lv.scope != "unit" for p in org.holders(lv.role)
        )
    )


def exclude_reporter(decision: TriageDecision, reporter: str, org: Org) -> TriageDecision:
    """The decision with the reporter excluded too (matched after it was made, e.g. when
    a later recusal or reassignment may reach people outside the first candidates)."""
    if reporter in decision.excluded_ids:
        return decision
    chain_roles = frozenset(level.role for level in decision.chain)
    routable = bool(org.roles_of(reporter) & chain_roles)
    found = ExcludedPerson(reporter, REPORTER, (REPORTER,), routable)
    return replace(decision, excluded=_merge(decision.excluded, (found,), chain_roles))


def confirmed_report(report: ReportSubmitted, confirmed: PeopleConfirmed) -> ReportSubmitted:
    """The report with the people an independent-role holder confirmed (ids only)."""
    return report.model_copy(
        update={
            "accused": list(confirmed.accused),
            "named": list(confirmed.named),
            "people_matches": [],
        }
    )


def may_confirm(decision: TriageDecision, principal: str, org: Org, policy: Policy) -> bool:
    """Only a holder of an independent role who is not excluded may confirm the people."""
    independent = frozenset(policy.conflicts.independent_roles)
    return bool(org.roles_of(principal) & independent) and principal not in decision.excluded_ids


@dataclass(frozen=True)
class Reexclusion:
    """What an amendment changes in the routing.

    `newly_excluded`: people conflicted now who were not excluded before (with their
    rules). `still_routed`: the chain without them; a level they emptied is resolved
    again (same unit, every exclusion so far), and whoever that adds is in `added`
    by level. `removed_from_routing`: the newly excluded who had been recipients of some
    level (the record must show they had been routed). `decision`: the decision with all
    of it applied, for the next amendment.
    """

    newly_excluded: tuple[ExcludedPerson, ...]
    still_routed: tuple[ResolvedLevel, ...]
    removed_from_routing: tuple[ExcludedPerson, ...]
    added: Mapping[int, tuple[str, ...]]
    decision: TriageDecision

    @property
    def changed(self) -> bool:
        return bool(self.newly_excluded or self.added)

    def to_reassigned(self, current_level: int = 1) -> Reassigned | None:
        """The `incident.reassigned.v1` data, or None when nothing changed.

        `removed` lists every newly excluded person (routed or not, so the incident's
        excluded set grows and they are refused the report); `added` the people added to
        the level being asked now.
        """
        added = self.added.get(current_level, ())
        if not self.newly_excluded and not added:
            return None
        return Reassigned(
            removed=[x.to_exclusion() for x in self.newly_excluded], added=list(added)
        )


def reexclude(
    decision: TriageDecision,
    accused: Sequence[str],
    org: Org,
    policy: Policy,
    *,
    named: Sequence[str] = (),
    matches: Sequence[PersonMatch] = (),
) -> Reexclusion:
    """Re-run the accused (and named) exclusions after an amendment.

    `accused` is the amended list (all accused, or only the added ones: the result is the
    same, as exclusions only grow). `named` are named people the amendment added,
    `matches` how its free-text names were resolved (ambiguous candidates are
    excluded). The reporter rule does not change with an amendment. `policy` must be
    the decision's pinned version.

    The decision's own unresolved entries are tried again too: an accused (or named) id
    the directory did not know when the report was decided, and knows now (a person
    imported later), is resolved: excluded with his line and whoever answers to him, and
    kept among the decision's `accused` from then on. Sealed free-text names stay
    unresolved (only a confirmation resolves them). With `accused=[]` this is the
    directory re-check.
    """
    if policy.version != decision.policy_version:
        raise ValueError(
            f"the incident keeps policy {decision.policy_version!r}; got {policy.version!r}"
        )
    chain_roles = frozenset(level.role for level in decision.chain)
    conflicts = conflicts_of(
        accused=[*decision.accused, *decision.unresolved_accused, *accused],
        named=[*decision.unresolved_named, *named],
        reporter=None,
        org=org,
        policy=policy,
        category=decision.category,
        candidate_roles=[*(lv.role for lv in decision.chain), *policy.conflicts.independent_roles],
        matches=matches,
    )
    before = decision.excluded_ids
    newly = tuple(x for x in conflicts.people(org, chain_roles) if x.principal not in before)
    gone = frozenset(x.principal for x in newly)
    every = before | gone

    routed_before = frozenset(p for level in decision.chain for p in level.recipients)
    notes = [n for n in conflicts.notes if n not in decision.notes]
    chain: list[ResolvedLevel] = []
    added: dict[int, tuple[str, ...]] = {}
    for level in decision.chain:
        left = tuple(p for p in level.recipients if p not in gone)
        if left == level.recipients:
            chain.append(level)
            continue
        if left:
            chain.append(replace(level, recipients=left))
            continue
        # Everyone of this level is conflicted now: resolve it again.
        again = Level(role=level.role, acknowledge_within=level.acknowledge_within)
        resolved, note = _resolve(level.level, again, org, decision.unit, every)
        chain.append(resolved)
        if resolved.recipients:
            added[level.level] = resolved.recipients
        if note:
            notes.append(note)

    updated = replace(
        decision,
        chain=tuple(chain),
        excluded=decision.excluded + newly,
        unresolved_accused=_still_unknown(
            (*decision.unresolved_accused, *conflicts.unresolved_accused), org
        ),
        unresolved_named=_still_unknown(
            (*decision.unresolved_named, *conflicts.unresolved_named), org
        ),
        management_cycles=tuple(dict.fromkeys((*decision.management_cycles, *conflicts.cycles))),
        notes=decision.notes + tuple(notes),
        independent=independent_of(org, policy, every),
        accused=tuple(
            dict.fromkeys(
                (
                    *decision.accused,
                    *(a for a in decision.unresolved_accused if org.knows(a)),
                    *(a for a in _unique(accused) if org.knows(a)),
                    *_ambiguous_accused(matches, org),
                )
            )
        ),
        unresolved_matches=decision.unresolved_matches + _unresolved_matches(matches),
    )
    return Reexclusion(
        newly_excluded=newly,
        still_routed=tuple(chain),
        removed_from_routing=tuple(x for x in newly if x.principal in routed_before),
        added=MappingProxyType(added),
        decision=updated,
    )


def _still_unknown(entries: Iterable[str], org: Org) -> tuple[str, ...]:
    """The entries the directory does not know (yet), each once, in order."""
    return tuple(e for e in dict.fromkeys(entries) if not org.knows(e))


@dataclass(frozen=True)
class Rerouting:
    """What a recusal or an ordered reassignment changes.

    `reassigned`: the `incident.reassigned.v1` data, None when nothing changes (then
    `ignored` says why). `decision`: the decision with the change applied (the removed
    excluded for good, replacements in the levels they were asked at), for the next event.
    `levels`: the level each added person was added for (a replacement: the level she
    replaces; a person an order added: the first level of the people it removed, else 1).
    """

    decision: TriageDecision
    reassigned: Reassigned | None
    ignored: str | None = None
    notes: tuple[str, ...] = ()
    levels: Mapping[str, int] = field(default_factory=dict)


def _pinned(decision: TriageDecision, policy: Policy) -> None:
    if policy.version != decision.policy_version:
        raise ValueError(
            f"the incident keeps policy {decision.policy_version!r}; got {policy.version!r}"
        )


def _next_holder(
    level: ResolvedLevel, org: Org, unit: str | None, taken: frozenset[str]
) -> str | None:
    """The first holder of the level's role not excluded nor asked there: unit, then anywhere."""
    for where in (unit, None) if unit is not None else (None,):
        found = next((h for h in org.holders(level.role, where) if h not in taken), None)
        if found is not None:
            return found
    return None


def _reroute(
    decision: TriageDecision,
    removed: Mapping[str, str],
    org: Org,
    policy: Policy,
    *,
    replace_removed: bool,
    to: Sequence[str] = (),
) -> Rerouting:
    """Exclude `removed` (principal -> rule) for good; replace them at their levels
    (`replace_removed`) and/or add `to`, everyone added passing every exclusion.

    The accused-based rules are checked again on the directory as it is now for every
    candidate (the org may have changed since the decision): anyone they newly exclude
    is removed too, with their rule.
    """
    chain_roles = frozenset(level.role for level in decision.chain)
    independent = policy.conflicts.independent_roles
    fresh = conflicts_of(
        accused=decision.accused,
        named=(),
        reporter=None,
        org=org,
        policy=policy,
        category=decision.category,
        candidates=to,
        candidate_roles=[*(lv.role for lv in decision.chain), *independent],
    ).people(org, chain_roles)
    before = decision.excluded_ids
    fresh = tuple(x for x in fresh if x.principal not in before and x.principal not in removed)
    asked = [
        ExcludedPerson(p, rule, (rule,), bool(org.roles_of(p) & chain_roles))
        for p, rule in removed.items()
        if p not in before
    ]
    excluded = _merge(decision.excluded, (*asked, *fresh), chain_roles)
    every = frozenset(x.principal for x in excluded)
    gone = frozenset(removed)
    notes: list[str] = []
    chain: list[ResolvedLevel] = []
    added: dict[str, int] = {}
    for level in decision.chain:
        left = tuple(p for p in level.recipients if p not in every)
        if replace_removed and gone & set(level.recipients):
            nxt = _next_holder(level, org, decision.unit, every | set(left))
            if nxt is None:
                notes.append(
                    f"level {level.level} ({level.role}): nobody eligible left to replace "
                    "the recused"
                )
            else:
                left += (nxt,)
                added.setdefault(nxt, level.level)
        if left != level.recipients:
            scope: Scope = level.scope if left else "nobody"
            level = replace(level, recipients=left, scope=scope)
        chain.append(level)
    held = [lv.level for lv in decision.chain if gone & set(lv.recipients)]
    for person in dict.fromkeys(to):
        if person in every or not org.knows(person):
            notes.append("a person to add is excluded or not in the directory: not added")
        else:
            added.setdefault(person, min(held, default=1))
    published = [x for x in (*asked, *fresh) if x.rules != (REPORTER,)]
    updated = replace(
        decision,
        chain=tuple(chain),
        excluded=excluded,
        independent=independent_of(org, policy, every),
        notes=decision.notes + tuple(notes),
    )
    if not published and not added:
        return Rerouting(updated, None, "nobody to remove or add", tuple(notes))
    reassigned = Reassigned(removed=[x.to_exclusion() for x in published], added=list(added))
    return Rerouting(updated, reassigned, None, tuple(notes), MappingProxyType(added))


def recuse(decision: TriageDecision, principal: str, org: Org, policy: Policy) -> Rerouting:
    """She declared a conflict: excluded from then on (rule `recused`), and at each level
    she was asked at, the next eligible holder of its role joins (unit first, then the
    organisation). A second recusal changes nothing."""
    _pinned(decision, policy)
    if principal in decision.excluded_ids:
        return Rerouting(decision, None, "already excluded")
    return _reroute(decision, {principal: RECUSED}, org, policy, replace_removed=True)


def order_reassignment(
    decision: TriageDecision, order: ReassignmentOrdered, org: Org, policy: Policy
) -> Rerouting:
    """A reassignment ordered by a holder of `conflicts.reassign_roles`: `remove` are
    excluded from then on (rule `reassigned`), `to` added but for anyone excluded or not
    in the directory. Refused (nothing changes) when the principal holds no reassigning
    role or is excluded. When nobody of `to` is left, the removal still stands."""
    _pinned(decision, policy)
    if not org.roles_of(order.principal) & frozenset(policy.conflicts.reassign_roles):
        return Rerouting(decision, None, "the principal holds no reassigning role")
    if order.principal in decision.excluded_ids:
        return Rerouting(decision, None, "the principal is excluded")
    removed = {p: REASSIGNED for p in order.remove}
    return _reroute(decision, removed, org, policy, replace_removed=False, to=order.to)


_DECISION: TypeAdapter[TriageDecision] = TypeAdapter(TriageDecision)
