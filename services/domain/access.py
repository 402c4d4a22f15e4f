"""Who may do what with an incident: the handler access rules, and the status workflow.

Pure: the caller loads the incident's routing (from intake's routing projection) and
the principal's roles (from the directory), and asks `decide(...)`.

The rules, in order:

1. An excluded (conflicted) principal is always refused, whatever else is true of
   them: routed by mistake, or holding a standing role. Exclusions never expire.
2. A principal the incident is routed to (assigned, reassigned to, or escalated to)
   may do everything: view, acknowledge, change status, comment, write to the reporter.
3. A standing read role (`auditor`) may view, read-only: every other action is refused.
4. Everyone else is refused.

A refusal says whether the incident's existence must stay hidden from the caller
(`conceals`): from an excluded principal always, and from anyone refused a view.
Refusing a write to a principal who is simply not routed (or read-only) may say so.

Exclusions hold from the first moment, not only once triage's decision arrived:
`conflicted(...)` runs triage's own conflict rules (`services.domain.triage.conflicts_of`)
on what the incident's events carry in clear (accused and named person ids, see
`implicated`), the reporter and the directory, and `Routing.excluding(...)` adds those
exclusions to the routing before `decide`. They carry the neutral rule `conflict`, so a
recorded refusal never says which rule (and so never who reported).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from services.domain.envelope import Envelope
from services.domain.events import ReportAmended, ReportSubmitted, is_sealed
from services.domain.org import OrgSnapshot
from services.domain.policy import Policy
from services.domain.triage import conflicts_of

Action = Literal["view", "acknowledge", "status", "comment", "message_reporter"]
ACTIONS: tuple[Action, ...] = ("view", "acknowledge", "status", "comment", "message_reporter")
READ_ACTIONS: frozenset[Action] = frozenset({"view"})

STANDING_READ_ROLES: frozenset[str] = frozenset({"auditor"})
"""Roles that may view any incident they are not excluded from, and do nothing else."""

RefusalReason = Literal["excluded", "not_routed", "read_only"]

CONFLICT = "conflict"
"""The rule of an exclusion derived before (or besides) triage: it names no rule."""


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
    """The person ids an incident's report names in clear: accused and named."""

    accused: tuple[str, ...] = ()
    named: tuple[str, ...] = ()

    @property
    def people(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.accused, *self.named)))


def implicated(events: Sequence[Envelope]) -> Implicated:
    """The accused and named of the submission and every amendment, as stored.

    Person ids are stored in clear; free-text names are sealed and skipped (nobody of
    the directory can be matched to them, by triage either).
    """
    accused: list[str] = []
    named: list[str] = []
    for envelope in events:
        if envelope.type == "incident.report.submitted.v1":
            submitted = ReportSubmitted.model_validate(envelope.data)
            accused += submitted.accused
            named += submitted.named
        elif envelope.type == "incident.report.amended.v1":
            amended = ReportAmended.model_validate(envelope.data)
            accused += amended.accused_added
            named += amended.named_added
    return Implicated(accused=_clear(accused), named=_clear(named))


def _clear(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in ids if not is_sealed(i)))


def conflicted(
    found: Implicated, reporter: str | None, org: OrgSnapshot, policy: Policy
) -> dict[str, str]:
    """Who triage's conflict rules exclude from these facts, each with the rule `conflict`.

    `org` needs the implicated people and every manager above the accused (more is
    harmless); `reporter` is the reporter's person id, None if anonymous or unknown.
    """
    people = conflicts_of(
        accused=found.accused, named=found.named, reporter=reporter, org=org, policy=policy
    )
    return {x.principal: CONFLICT for x in people}


@dataclass(frozen=True)
class Allowed:
    """The action is allowed; `level` is the principal's routing level (None if standing)."""

    action: Action
    via: Literal["routed", "standing_role"]
    level: int | None = None


@dataclass(frozen=True)
class Refused:
    """The action is refused, and why."""

    action: Action
    reason: RefusalReason
    rule: str | None = None

    @property
    def detail(self) -> str:
        """The reason as recorded in `incident.access.denied.v1` (`excluded:<rule>`...)."""
        return f"{self.reason}:{self.rule}" if self.rule else self.reason

    @property
    def conceals(self) -> bool:
        """True when the answer must not reveal that the incident exists."""
        return self.reason == "excluded" or self.action in READ_ACTIONS


Decision = Allowed | Refused


def decide(
    routing: Routing, principal: str, roles: Iterable[str], action: Action
) -> Allowed | Refused:
    """May `principal` (holding `roles`) do `action` on an incident routed as `routing`?"""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    rule = routing.excluded.get(principal)
    if rule is not None:
        return Refused(action, "excluded", rule)
    level = routing.routed.get(principal)
    if level is not None:
        return Allowed(action, "routed", level)
    if STANDING_READ_ROLES & set(roles):
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
