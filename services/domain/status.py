"""One status of an incident for everybody: a pure fold over its events.

Handlers, reporters (named or anonymous), auditors and the API all show an incident's
progress through `progress_of` (or `advance`, one event at a time, for a projection),
so they say the same thing in the same words (`Progress.label`):

- `submitted`: the report is in; nobody is asked yet;
- `triaged`: triage decided, level 1 is asked;
- `escalated`: escalation moved on to level N (`escalated to level N`), past the chain's
  last level to the independent roles (`escalated to the independent level`);
- `acknowledged`: a handler of the current chain acknowledged (at level N);
- `investigating`, `resolved`, `closed` (with the outcome the handler recorded);
- `stalled` is a flag on top of any of the first three: escalation raised
  `incident.escalation.stalled.v1` (nobody left to ask) and nobody acted since;
- `decision_overdue` is a flag on `submitted`: intake raised
  `incident.decision.overdue.v1` (no triage decision within its limit) and triage has
  not decided since (a decision clears it; the event stays in the ledger).

Levels follow escalation's rules (services/domain/escalation.py): triage asks level 1;
`incident.escalated.v1` asks level N (an empty level is passed with nobody asked); the
independent level is one past the chain's last level. A later decision (`revision` > 1,
after the people were confirmed) restarts the chain from its level 1, and an
acknowledgement of the old chain no longer counts (escalation ignores it too); the
workflow statuses a handler set (investigating, resolved, closed) stay.

Deadlines: `due_at(level)` is the acknowledgement deadline of the level as it was last
asked (the handler's deadline: triage's `level_1_acknowledge`, else the decision time
plus level 1's `acknowledge_within`; for level N the time it was asked plus its
`acknowledge_within`, the independent level taking the last level's; a repeat of the top
level its repeat interval). The reporter's deadlines are the legal clocks of the first
decision (`reporter_acknowledgement`, `feedback`; they run on across revisions), with
when each was met: the first acknowledgement, the first message to the reporter.

Intake's own event store holds the reporter's and handlers' events; it keeps the triage
and escalation events it consumes beside them (`services.intake.progress`), and audit
reads them all from its ledger. Events are read as JSON (`data`), so a replay of the
ledger, which has validated them, can fold them without the catalog's models. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from services.domain.envelope import Envelope, utc_rfc3339_or_none
from services.domain.events import (
    Acknowledged,
    Assigned,
    DeadlineBreached,
    DecisionOverdue,
    Erased,
    Escalated,
    EscalationCleared,
    EscalationStalled,
    Reassigned,
    ReporterMessage,
    ReportSubmitted,
    StatusChanged,
    Triaged,
)

FROM_TRIAGE_AND_ESCALATION: Final = frozenset(
    event.TYPE
    for event in (
        Triaged,
        Assigned,
        Reassigned,
        Escalated,
        EscalationCleared,
        EscalationStalled,
        DeadlineBreached,
    )
)
"""The types `advance` reads that triage and escalation publish (intake keeps copies)."""
PROGRESS_TYPES: Final = FROM_TRIAGE_AND_ESCALATION | frozenset(
    event.TYPE
    for event in (
        ReportSubmitted,
        Acknowledged,
        StatusChanged,
        ReporterMessage,
        Erased,
        DecisionOverdue,
    )
)
"""The event types `advance` reads; every other type leaves the progress as it is."""

STATUSES: Final = (
    "submitted",
    "triaged",
    "escalated",
    "acknowledged",
    "investigating",
    "resolved",
    "closed",
)
"""Every status, in workflow order (`new` before the report is known)."""
WAITING: Final = frozenset({"submitted", "triaged", "escalated"})
"""Statuses in which nobody of the current chain has acknowledged yet."""
REPORTER_ACKNOWLEDGEMENT: Final = "reporter_acknowledgement"
FEEDBACK: Final = "feedback"
LEVEL_1_ACKNOWLEDGE: Final = "level_1_acknowledge"


@dataclass(frozen=True)
class Progress:
    """Where an incident stands (see the module docstring); `label` says it in words."""

    status: str = "new"
    level: int | None = None
    """The level asked last (1-based), None before triage."""
    last_level: int | None = None
    """The current decision's last chain level; `last_level + 1` is the independent level."""
    revision: int = 0
    stalled: bool = False
    decision_overdue: bool = False
    """Intake raised `incident.decision.overdue.v1` and no decision came since."""
    outcome: str | None = None
    """The closing outcome as the events carry it (sealed unless they were opened)."""
    submitted_at: datetime | None = None
    acknowledged_at: datetime | None = None
    """When the current chain acknowledged (None after a new revision)."""
    first_acknowledged_at: datetime | None = None
    """The first acknowledgement ever: it met the reporter's acknowledgement clock."""
    first_feedback_at: datetime | None = None
    """The first message to the reporter: it met the feedback clock."""
    closed_at: datetime | None = None
    erased: bool = False
    reporter_acknowledgement_due: datetime | None = None
    feedback_due: datetime | None = None
    breached: tuple[str, ...] = ()
    """Legal clocks escalation recorded as breached."""
    asked: tuple[tuple[int, datetime], ...] = ()
    """(level, acknowledgement deadline) of each level asked under the current decision."""
    within: tuple[int, ...] = ()
    """Seconds each level of the current decision has to acknowledge."""
    repeat_every: int | None = None

    @property
    def independent(self) -> bool:
        """Whether the level asked last is the independent level (past the chain)."""
        return (
            self.level is not None and self.last_level is not None and self.level > self.last_level
        )

    @property
    def level_label(self) -> str | None:
        if self.level is None:
            return None
        return "the independent level" if self.independent else f"level {self.level}"

    @property
    def label(self) -> str:
        """The status in words, the same on every page and in every answer."""
        where = self.level_label
        match self.status:
            case "triaged":
                text = f"triaged, {where} asked" if where else "triaged"
            case "escalated":
                text = f"escalated to {where}" if where else "escalated"
            case "acknowledged":
                text = f"acknowledged at {where}" if where else "acknowledged"
            case "closed":
                text = "closed with outcome" if self.outcome else "closed"
            case other:
                text = other
        if self.stalled and self.status in WAITING:
            text += " (stalled: nobody left to ask)"
        if self.decision_overdue and self.status == "submitted":
            text += " (overdue: no triage decision)"
        return text

    def due_at(self, level: int | None) -> datetime | None:
        """The acknowledgement deadline of `level` as it was last asked (None if never)."""
        found = None
        for number, due in self.asked:
            if number == level:
                found = due
        return found

    @property
    def acknowledgement_due_at(self) -> datetime | None:
        """The current level's deadline while nobody acknowledged; else None."""
        if self.status not in WAITING or self.stalled:
            return None
        return self.due_at(self.level)

    def to_json(self) -> dict[str, Any]:
        """What every view shows of it (times RFC 3339 UTC)."""

        return {
            "status": self.status,
            "label": self.label,
            "level": self.level,
            "independent_level": self.independent,
            "stalled": self.stalled,
            "decision_overdue": self.decision_overdue and self.status == "submitted",
            "outcome": self.outcome,
            "acknowledged_at": utc_rfc3339_or_none(self.acknowledged_at),
            "closed_at": utc_rfc3339_or_none(self.closed_at),
        }

    def reporter_clocks(self) -> list[dict[str, Any]]:
        """The legal clocks that concern the reporter: due, met when, breached."""

        return [
            {
                "clock": name,
                "due_at": utc_rfc3339_or_none(due),
                "met_at": utc_rfc3339_or_none(met),
                "breached": name in self.breached and met is None,
            }
            for name, due, met in (
                (
                    REPORTER_ACKNOWLEDGEMENT,
                    self.reporter_acknowledgement_due,
                    self.first_acknowledged_at,
                ),
                (FEEDBACK, self.feedback_due, self.first_feedback_at),
            )
            if due is not None
        ]


_TIMES: Final = (
    "submitted_at",
    "acknowledged_at",
    "first_acknowledged_at",
    "first_feedback_at",
    "closed_at",
    "reporter_acknowledgement_due",
    "feedback_due",
)


def to_store(progress: Progress) -> dict[str, Any]:
    """A JSON form that `from_store` reads back exactly (for a projection's row)."""
    out: dict[str, Any] = dict(progress.__dict__)
    for name in _TIMES:
        out[name] = None if out[name] is None else out[name].isoformat()
    out["asked"] = [[level, due.isoformat()] for level, due in progress.asked]
    out["breached"], out["within"] = list(progress.breached), list(progress.within)
    return out


def from_store(doc: Mapping[str, Any] | None) -> Progress:
    """`to_store`'s form back (nothing stored: the progress of no event)."""
    if not doc:
        return Progress()
    values = dict(doc)
    for name in _TIMES:
        values[name] = _time(values.get(name))
    values["asked"] = tuple((int(level), _checked_time(due)) for level, due in doc["asked"])
    values["breached"], values["within"] = tuple(doc["breached"]), tuple(doc["within"])
    return Progress(**values)


def _checked_time(value: Any) -> datetime:
    moment = _time(value)
    if moment is None:
        raise ValueError(f"not a time: {value!r}")
    return moment


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def advance(
    progress: Progress, event_type: str, time: datetime, data: Mapping[str, Any]
) -> Progress:
    """The progress after one more event (its type, time and JSON data)."""
    if event_type not in PROGRESS_TYPES:
        return progress
    changes: dict[str, Any] = {}
    waiting = progress.status in WAITING or progress.status == "new"
    match event_type:
        case ReportSubmitted.TYPE:
            changes.update(submitted_at=time)
            if progress.status == "new":
                changes["status"] = "submitted"
        case Triaged.TYPE:
            revision = int(data.get("revision", 1))
            if revision <= progress.revision:
                return progress  # a decision repeated, or an older one arriving late
            chain = list(data.get("chain") or ())
            within = tuple(int(level["acknowledge_within"]) for level in chain)
            deadlines = data.get("deadlines") or {}
            first_due = _time(deadlines.get(LEVEL_1_ACKNOWLEDGE)) if revision == 1 else None
            if first_due is None and within:
                first_due = time + timedelta(seconds=within[0])
            changes.update(
                revision=revision,
                level=1 if chain else None,
                last_level=len(chain),
                within=within,
                repeat_every=data.get("repeat_last_every"),
                asked=((1, first_due),) if first_due is not None else (),
                stalled=False,
                decision_overdue=False,
                acknowledged_at=None,
            )
            if progress.reporter_acknowledgement_due is None:  # the first decision's clocks
                changes.update(
                    reporter_acknowledgement_due=_time(deadlines.get(REPORTER_ACKNOWLEDGEMENT)),
                    feedback_due=_time(deadlines.get(FEEDBACK)),
                )
            if waiting or progress.status == "acknowledged":
                changes["status"] = "triaged"
        case Escalated.TYPE:
            level = int(data["level"])
            changes["level"] = level
            if data.get("recipients"):
                repeat = level == progress.level and progress.repeat_every is not None
                seconds = progress.repeat_every if repeat else _within(progress, level)
                if seconds is not None:
                    changes["asked"] = (*progress.asked, (level, time + timedelta(seconds=seconds)))
                changes["stalled"] = False
            if waiting:
                changes["status"] = "escalated"
        case EscalationStalled.TYPE:
            changes.update(stalled=True, level=int(data.get("level") or 0) or progress.level)
        case EscalationCleared.TYPE:
            changes["stalled"] = False
        case Reassigned.TYPE if data.get("added"):
            changes["stalled"] = False
        case Acknowledged.TYPE:
            changes.update(
                stalled=False, first_acknowledged_at=progress.first_acknowledged_at or time
            )
            if progress.acknowledged_at is None:
                changes["acknowledged_at"] = time
            if progress.status in WAITING:
                changes["status"] = "acknowledged"
        case StatusChanged.TYPE:
            status = str(data["status"])
            changes.update(status=status, outcome=data.get("outcome") or progress.outcome)
            if status == "closed":
                changes["closed_at"] = time
        case ReporterMessage.TYPE if data.get("direction") == "to_reporter":
            if progress.first_feedback_at is None:
                changes["first_feedback_at"] = time
        case DeadlineBreached.TYPE:
            clock = str(data.get("clock"))
            if clock not in progress.breached:
                changes["breached"] = (*progress.breached, clock)
        case Erased.TYPE:
            changes["erased"] = True
        case DecisionOverdue.TYPE if progress.revision == 0:  # not once triage decided
            changes["decision_overdue"] = True
    return replace(progress, **changes) if changes else progress


def _within(progress: Progress, level: int) -> int | None:
    """Seconds level `level` has to acknowledge (the independent level: the last's)."""
    if not progress.within:
        return None
    return progress.within[min(level, len(progress.within)) - 1]


def progress_of(events: Iterable[Envelope]) -> Progress:
    """The progress after `events`, in order (one incident's, any topics mixed)."""
    progress = Progress()
    for event in events:
        progress = advance(progress, event.type, event.time, event.data)
    return progress


def in_time_order(*streams: Iterable[Envelope]) -> list[Envelope]:
    """Events of several streams of one incident merged by their time (a stable sort:
    each stream keeps its own order among equal times)."""
    merged = [event for stream in streams for event in stream]
    merged.sort(key=lambda event: event.time)
    return merged
