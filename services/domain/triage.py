"""Triage's decision: severity, deadlines, who is asked in which order, and who never is.

`decide(report, org, policy, now, reporter_person=...)` is a pure function of the
report, the directory snapshot at that moment, the pinned policy and the clock
(SPEC.md, Configuration files):

1. Severity comes from `policy.categories`, the chain of roles from
   `policy.severities[severity].chain`.
2. Conflicts are excluded first, by the rules of `policy.conflicts.exclude`:

   - `accused`: the accused person ids the directory knows. A free-text name (or an
     id the directory does not know) cannot be matched; it is kept in
     `unresolved_accused` and said in `notes`, never guessed.
   - `accused_management_chain`: every manager above each accused person up to the
     top, except holders of `policy.conflicts.independent_roles`. The walk goes on
     through an independent manager; it stops at a loop in the manager data.
   - `named_in_report`: the named person ids the directory knows.
   - `reporter`: the reporter's person id, resolved by the caller (the report carries
     a pseudonym that this pure code does not read).

   Each excluded person carries the first rule (in the policy's order) that excluded
   them, and all of them.
3. Each level's role is resolved after exclusions to the eligible holders in the
   incident's unit (the report's `unit`, else the unit of the first accused person the
   directory knows), else to the eligible holders anywhere in the organisation. A level
   with nobody left stays in the chain with no recipients and is flagged
   (`nobody_eligible`): escalation records `nobody_eligible` and asks the next level at
   once.
4. Deadlines: level 1's acknowledgement, the reporter's acknowledgement and feedback.

`reexclude` re-runs the exclusion when an amendment adds an accused (or named) person:
who is newly conflicted, and the routing without them.

No I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal

from services.domain.events import ChainLevel, Exclusion, Reassigned, ReportSubmitted, Triaged
from services.domain.org import OrgSnapshot
from services.domain.policy import CONFLICT_RULES, Level, Policy
from services.domain.reports import UnknownCategory

ACCUSED = "accused"
MANAGEMENT_CHAIN = "accused_management_chain"
NAMED = "named_in_report"
REPORTER = "reporter"
assert (ACCUSED, MANAGEMENT_CHAIN, NAMED, REPORTER) == CONFLICT_RULES

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

    def to_triaged(self) -> Triaged:
        """The `incident.triaged.v1` data of this decision."""
        return Triaged(
            category=self.category,
            severity=self.severity,
            policy_version=self.policy_version,
            chain=[level.to_chain_level() for level in self.chain],
            excluded=[x.to_exclusion() for x in self.published_exclusions],
            deadlines=dict(self.deadlines),
        )


class _Conflicts:
    """Exclusions in the making: principal -> rules, in the order they were found."""

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

    def people(self, org: OrgSnapshot, chain_roles: frozenset[str]) -> tuple[ExcludedPerson, ...]:
        order = {rule: i for i, rule in enumerate(CONFLICT_RULES)}
        found: list[ExcludedPerson] = []
        for principal, rules in self.rules.items():
            ranked = tuple(sorted(rules, key=order.__getitem__))
            routable = bool(org.roles_of(principal) & chain_roles)
            found.append(ExcludedPerson(principal, ranked[0], ranked, routable))
        # Grouped by first rule, in the order found within a rule (stable sort).
        return tuple(sorted(found, key=lambda x: order[x.rule]))


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v.strip() for v in values if v.strip()))


def _conflicts(
    *,
    accused: Sequence[str],
    named: Sequence[str],
    reporter: str | None,
    org: OrgSnapshot,
    policy: Policy,
) -> _Conflicts:
    rules = set(policy.conflicts.exclude)
    independent = frozenset(policy.conflicts.independent_roles)
    out = _Conflicts()
    known_accused = [a for a in _unique(accused) if org.knows(a)]
    out.unresolved_accused = [a for a in _unique(accused) if not org.knows(a)]
    out.unresolved_named = [n for n in _unique(named) if not org.knows(n)]
    if out.unresolved_accused:
        out.notes.append(
            f"{len(out.unresolved_accused)} accused entr"
            f"{'y is' if len(out.unresolved_accused) == 1 else 'ies are'} not a person of the "
            "directory (free text or unknown id): no conflict exclusion is possible for "
            "them or their managers; check by hand"
        )
    if out.unresolved_named:
        out.notes.append(
            f"{len(out.unresolved_named)} named entr"
            f"{'y is' if len(out.unresolved_named) == 1 else 'ies are'} not a person of the "
            "directory: they cannot be excluded"
        )
    # Rules in the canonical order, so a person's first rule is found first.
    if ACCUSED in rules:
        for person in known_accused:
            out.add(person, ACCUSED)
    if MANAGEMENT_CHAIN in rules:
        for person in known_accused:
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
    return out


def conflicts_of(
    *,
    accused: Sequence[str],
    named: Sequence[str],
    reporter: str | None,
    org: OrgSnapshot,
    policy: Policy,
) -> tuple[ExcludedPerson, ...]:
    """Who the policy's conflict rules exclude, without resolving any chain.

    The exclusions `decide` makes from the same inputs: for a service that must refuse
    the conflicted before triage's decision reaches it (intake, audit).
    """
    found = _conflicts(accused=accused, named=named, reporter=reporter, org=org, policy=policy)
    return found.people(org, frozenset())


def _resolve(
    number: int, level: Level, org: OrgSnapshot, unit: str | None, excluded: frozenset[str]
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


def decide(
    report: ReportSubmitted,
    org: OrgSnapshot,
    policy: Policy,
    now: datetime,
    *,
    reporter_person: str | None,
) -> TriageDecision:
    """Triage one report: severity, deadlines, the chain of recipients and the exclusions.

    `reporter_person` is the reporter's person id as the caller resolved it (None when
    anonymous or unknown); `report.reporter` is not read. Raises `UnknownCategory` if the
    policy does not know the category (intake validates it first, so this is a bug or a
    policy swapped underneath).
    """
    _aware(now)
    severity = policy.categories.get(report.category)
    if severity is None:
        raise UnknownCategory(report.category, sorted(policy.categories))
    rules = policy.severities[severity]
    conflicts = _conflicts(
        accused=report.accused,
        named=report.named,
        reporter=reporter_person or None,
        org=org,
        policy=policy,
    )
    chain_roles = frozenset(level.role for level in rules.chain)
    excluded = conflicts.people(org, chain_roles)
    excluded_ids = frozenset(x.principal for x in excluded)

    unit: str | None = (report.unit or "").strip() or None
    unit_source: UnitSource = "report" if unit else "none"
    if unit is None:
        for person in _unique(report.accused):
            found = org.unit_of(person)
            if found:
                unit, unit_source = found, "accused"
                break

    notes = list(conflicts.notes)
    if unit is None:
        notes.append(
            "no unit: the report names none and no accused person is in the directory; "
            "every level is resolved across the organisation"
        )
    chain: list[ResolvedLevel] = []
    for number, level in enumerate(rules.chain, start=1):
        resolved, note = _resolve(number, level, org, unit, excluded_ids)
        chain.append(resolved)
        if note:
            notes.append(note)

    deadlines = {
        LEVEL_1_ACKNOWLEDGE: now + timedelta(seconds=rules.chain[0].acknowledge_within),
        REPORTER_ACKNOWLEDGEMENT: now + timedelta(seconds=policy.reporter_acknowledgement_within),
        FEEDBACK: now + timedelta(seconds=rules.feedback_within),
    }
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
    )


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
    org: OrgSnapshot,
    policy: Policy,
    *,
    named: Sequence[str] = (),
) -> Reexclusion:
    """Re-run the accused (and named) exclusions after an amendment.

    `accused` is the amended list (all accused, or only the added ones: the result is the
    same, as exclusions only grow). `named` are named people the amendment added. The
    reporter rule does not change with an amendment. `policy` must be the decision's
    pinned version.
    """
    if policy.version != decision.policy_version:
        raise ValueError(
            f"the incident keeps policy {decision.policy_version!r}; got {policy.version!r}"
        )
    conflicts = _conflicts(accused=accused, named=named, reporter=None, org=org, policy=policy)
    chain_roles = frozenset(level.role for level in decision.chain)
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
        unresolved_accused=tuple(
            dict.fromkeys((*decision.unresolved_accused, *conflicts.unresolved_accused))
        ),
        unresolved_named=tuple(
            dict.fromkeys((*decision.unresolved_named, *conflicts.unresolved_named))
        ),
        management_cycles=tuple(dict.fromkeys((*decision.management_cycles, *conflicts.cycles))),
        notes=decision.notes + tuple(notes),
    )
    return Reexclusion(
        newly_excluded=newly,
        still_routed=tuple(chain),
        removed_from_routing=tuple(x for x in newly if x.principal in routed_before),
        added=MappingProxyType(added),
        decision=updated,
    )
