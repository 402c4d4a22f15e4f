"""Who may do what with an incident: the handler access rules, and the status workflow.

Pure: the caller loads the incident's routing (from intake's routing projection) and
the principal's roles (from the directory), and asks `decide(...)`.

The rules, in order:

1. An excluded (conflicted) principal is always refused, whatever else is true of
   them: routed by mistake, or holding a standing role. Exclusions never expire.
2. `reassign` needs one of the policy's `conflicts.reassign_roles` (routed or not);
   `confirm_people` needs routing *and* one of `conflicts.independent_roles`.
3. A principal the incident is routed to (assigned, reassigned to, or escalated to)
   may do everything else: view, acknowledge, change status, comment, write to the
   reporter, recuse, attach a file, download one.
4. A standing read role (`auditor`) may view and download, read-only: every other
   action is refused.
5. Everyone else is refused.

A refusal hides the incident's existence (`conceals`, answered exactly like an unknown
id) unless the caller knows of the incident anyway: a read-only reader refused a write,
or a routed principal refused an action her role does not allow. `decide` only needs
the caller's own row of the routing, so the refusal of a principal with no row (the
unrelated, the unknown id) is an indexed lookup whatever the incident's size.

The recorded reason (`Refused.reason`) is the same `excluded` for every conflict rule,
so the ledger never tells the reporter (or any rule) apart; the rule itself is
`Refused.rule`, which the caller records sealed.

Exclusions hold from the first moment, not only once triage's decision arrived:
`conflicted(...)` runs triage's own conflict rules (`services.domain.triage.conflicts_of`)
on what the incident's events carry in clear (accused and named person ids, see
`implicated`), the reporter and the directory, and `Routing.excluding(...)` adds those
exclusions to the routing before `decide`. They carry the neutral rule `conflict`, so a
recorded refusal never says which rule (and so never who reported).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from services.domain.envelope import Envelope
from services.domain.events import (
    PeopleConfirmed,
    PersonMatch,
    ReportAmended,
    ReportSubmitted,
    is_sealed,
)
from services.domain.org import OrgSnapshot
from services.domain.policy import Policy
from services.domain.triage import conflicts_of

Action = Literal[
    "view",
    "acknowledge",
    "status",
    "comment",
    "message_reporter",
    "recuse",
    "reassign",
    "confirm_people",
    "attach",
    "download",
]
ACTIONS: tuple[Action, ...] = get_args(Action)
READ_ACTIONS: frozenset[Action] = frozenset({"view", "download"})

STANDING_READ_ROLES: frozenset[str] = frozenset({"auditor"})
"""Roles that may view any incident they are not excluded from, and do nothing else."""

RefusalReason = Literal["excluded", "not_routed", "read_only", "role_required", "no_such_incident"]

CONFLICT = "conflict"
"""The rule of an exclusion whose rule is not known (kept for old callers)."""
DEFAULT_REASSIGN_ROLES: tuple[str, ...] = ("chief_ethics_officer",)
"""Who may order a reassignment when the policy does not say (`conflicts.reassign_roles`)."""


@dataclass(frozen=True)
class Roles:
    """The policy's roles that grant the conflict actions (see `roles_of`)."""

    reassign: frozenset[str] = frozenset(DEFAULT_REASSIGN_ROLES)
    independent: frozenset[str] = frozenset()


def roles_of(policy: Policy) -> Roles:
    """The policy's `conflicts.reassign_roles` (default [chief_ethics_officer]) and
    `conflicts.independent_roles`, read defensively (an older policy model lacks one)."""
    conflicts = policy.conflicts
    reassign = getattr(conflicts, "reassign_roles", None) or DEFAULT_REASSIGN_ROLES
    independent = getattr(conflicts, "independent_roles", None) or ()
    return Roles(reassign=frozenset(reassign), independent=frozenset(independent))


@dataclass(frozen=True)
class RoutingRow:
    """One principal's routing state for an incident (a row of intake's projection)."""

    principal: str
    level: int | None
    routed: bool
    excluded_rule: str | None = None


@dataclass(frozen=True)
class Routing:
    """An incident's routing: who it is routed to (and at what level), who is excluded."""

    routed: Mapping[str, int] = field(default_factory=dict)
    excluded: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[RoutingRow]) -> Routing:
        routed: dict[str, int] = {}
        excluded: dict[str, str] = {}
        for row in rows:
            if row.routed:
                routed[row.principal] = row.level if row.level is not None else 0
            if row.excluded_rule is not None:
                excluded[row.principal] = row.excluded_rule
        return cls(routed=routed, excluded=excluded)

    def excluding(self, more: Mapping[str, str]) -> Routing:
        """This routing with `more` exclusions (a rule already recorded is kept)."""
        if not more:
            return self
        return Routing(routed=self.routed, excluded={**more, **self.excluded})


@dataclass(frozen=True)
class Implicated:
    """What an incident's report says of people in clear: the accused and named person
    ids, and how each free-text name was matched (`matches`: the candidates of an
    ambiguous name are all treated as conflicted)."""

    accused: tuple[str, ...] = ()
    named: tuple[str, ...] = ()
    matches: tuple[PersonMatch, ...] = ()

    @property
    def candidates(self) -> tuple[str, ...]:
        """Every candidate of an ambiguous name."""
        return _clear(c for m in self.matches if m.how == "ambiguous" for c in m.candidates)

    @property
    def people(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.accused, *self.named, *self.candidates)))


def implicated(events: Sequence[Envelope]) -> Implicated:
    """The accused and named of the submission, every amendment and every confirmation,
    and the name matches of the first two.

    Person ids are stored in clear; free-text names are sealed and skipped (nobody of
    the directory can be matched to them, by triage either), but the candidates of an
    ambiguous name count. A confirmation adds its lists: exclusions only ever grow.
    """
    accused: list[str] = []
    named: list[str] = []
    matches: list[PersonMatch] = []
    for envelope in events:
        if envelope.type == ReportSubmitted.TYPE:
            submitted = ReportSubmitted.read(envelope)
            accused += submitted.accused
            named += submitted.named
            matches += submitted.people_matches
        elif envelope.type == ReportAmended.TYPE:
            amended = ReportAmended.read(envelope)
            accused += amended.accused_added
            named += amended.named_added
            matches += amended.people_matches
        elif envelope.type == PeopleConfirmed.TYPE:
            confirmed = PeopleConfirmed.read(envelope)
            accused += confirmed.accused
            named += confirmed.named
    return Implicated(accused=_clear(accused), named=_clear(named), matches=tuple(matches))


def _clear(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in ids if not is_sealed(i)))


def conflict_unresolved(events: Sequence[Envelope], known: Callable[[str], bool]) -> bool:
    """Does the report name someone not (yet) confirmed to be a person of the directory?

    True while a name of the report (since the last `incident.people.confirmed.v1`)
    matched nobody or several people, or an entry is not a known directory id; a
    confirmation settles everything named before it.
    """
    pending = False
    for envelope in events:
        if envelope.type == PeopleConfirmed.TYPE:
            pending = False
            continue
        if envelope.type == ReportSubmitted.TYPE:
            submitted = ReportSubmitted.read(envelope)
            entries, matches = [*submitted.accused, *submitted.named], submitted.people_matches
        elif envelope.type == ReportAmended.TYPE:
            amended = ReportAmended.read(envelope)
            entries = [*amended.accused_added, *amended.named_added]
            matches = amended.people_matches
        else:
            continue
        if any(m.how in ("none", "ambiguous") for m in matches) or any(
            is_sealed(e) or not known(e) for e in entries
        ):
            pending = True
    return pending


def conflicted(
    found: Implicated,
    reporter: str | None,
    org: OrgSnapshot,
    policy: Policy,
    *,
    category: str | None = None,
    candidates: Iterable[str] = (),
) -> dict[str, str]:
    """Who triage's conflict rules exclude from these facts, each with its first rule.

    `org` needs the implicated people and every manager above the accused and above each
    of `candidates` (more is harmless); `reporter` is the reporter's person id, None if
    anonymous or unknown. `candidates` (the principal asking, the people a reassignment
    names) are checked for `accused_reports` too, where `category`'s rules turn it on.
    """
    people = conflicts_of(
        accused=found.accused,
        named=found.named,
        reporter=reporter,
        org=org,
        policy=policy,
        category=category,
        candidates=candidates,
        matches=found.matches,
    ).people(org)
    return {x.principal: x.rule for x in people}


def answers_to_accused(person: str, found: Implicated, org: OrgSnapshot) -> bool:
    """Is an accused (or a candidate of an ambiguous name) in `person`'s management
    chain? `org` needs `person` and the managers above them."""
    suspects = {*found.accused, *found.candidates}
    return bool(suspects & set(org.managers_above(person).managers))


def reassignment_refusals(
    to: Sequence[str],
    routing: Routing,
    found: Implicated,
    org: OrgSnapshot,
) -> dict[str, str]:
    """Why each person of a reassignment's `to` may not hold the incident (empty: all may).

    `unknown`: not a person of the directory; `excluded`: any exclusion of the incident
    (`routing` holds triage's, the recusals and removals, and the conflicts `conflicted`
    finds with `to` as candidates), or someone who answers to an accused whatever the
    category: a person chosen by hand is held to the strictest rule.
    `org` needs the people of `to` and the managers above them.
    """
    refusals: dict[str, str] = {}
    for person in to:
        if not org.knows(person):
            refusals[person] = "unknown"
        elif person in routing.excluded or answers_to_accused(person, found, org):
            refusals[person] = "excluded"
    return refusals


@dataclass(frozen=True)
class Allowed:
    """The action is allowed; `level` is the principal's routing level (None if standing)."""

    action: Action
    via: Literal["routed", "standing_role"]
    level: int | None = None


@dataclass(frozen=True)
class Refused:
    """The action is refused, and why: `reason` is recorded in clear, `rule` sealed."""

    action: Action
    reason: RefusalReason
    rule: str | None = None
    answered_as: RefusalReason | None = None
    """The reason the caller is answered by, where it is not `reason`: an excluded
    standing reader's write is answered as any standing reader's (`read_only`), so the
    answer never tells an incident that excludes her from an unknown id."""

    @property
    def detail(self) -> str:
        """The reason as recorded in `incident.access.denied.v1`: one word for every
        conflict rule, so the record never tells the rules (and the reporter) apart."""
        return self.reason

    @property
    def conceals(self) -> bool:
        """True when the answer must not reveal that the incident exists: always, but
        for a caller who knows of it anyway (a reader, a routed principal)."""
        return (self.answered_as or self.reason) not in ("read_only", "role_required")


Decision = Allowed | Refused


def decide(
    routing: Routing,
    principal: str,
    roles: Iterable[str],
    action: Action,
    grants: Roles = Roles(),
) -> Allowed | Refused:
    """May `principal` (holding `roles`) do `action` on an incident routed as `routing`?

    Only the principal's own entries of `routing` are read. `grants` are the policy's
    roles for `reassign` and `confirm_people`.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    held = set(roles)
    rule = routing.excluded.get(principal)
    level = routing.routed.get(principal)
    if rule is not None:
        # A standing reader writes to no incident, known or not (`read_only`, 403): an
        # excluded one is answered so too, or a 404 would tell her a report excludes her.
        standing_write = (
            STANDING_READ_ROLES & held
            and level is None
            and action not in READ_ACTIONS
            and action != "reassign"
        )
        return Refused(action, "excluded", rule, "read_only" if standing_write else None)
    if action == "reassign":
        if grants.reassign & held:
            return Allowed(action, "routed" if level is not None else "standing_role", level)
        return Refused(action, "role_required" if level is not None else "not_routed")
    if level is not None:
        if action == "confirm_people" and not grants.independent & held:
            return Refused(action, "role_required")
        return Allowed(action, "routed", level)
    if STANDING_READ_ROLES & held:
        if action in READ_ACTIONS:
            return Allowed(action, "standing_role")
        return Refused(action, "read_only")
    return Refused(action, "not_routed")


# The status workflow -------------------------------------------------------------

Status = Literal["investigating", "resolved", "closed"]
OPEN_STATUSES = frozenset({"submitted", "triaged", "acknowledged"})
TRANSITIONS: Mapping[str, frozenset[str]] = {
    **{s: frozenset({"investigating", "resolved", "closed"}) for s in OPEN_STATUSES},
    "investigating": frozenset({"resolved", "closed"}),
    "resolved": frozenset({"investigating", "closed"}),  # reopen, or close
    "closed": frozenset(),  # final
}


def status_change_refusal(
    current: str, new: str, *, acknowledged: bool, outcome: str | None
) -> str | None:
    """Why the incident may not move from `current` to `new` now (None: it may).

    A status change needs an acknowledgement first (whoever gave it), so that the
    escalation clock is stopped by an explicit act and never by a side effect.
    """
    if new == "closed" and not (outcome and outcome.strip()):
        return "closing an incident requires an outcome"
    if not acknowledged:
        return "the incident must be acknowledged before its status changes"
    if current == new:
        return f"the incident is already {current}"
    if new not in TRANSITIONS.get(current, frozenset()):
        return f"an incident cannot go from {current} to {new}"
    return None
