"""The incident as a fold of its events: `apply(state, event) -> state`.

The services decide with it and the audit replay rebuilds "the incident as it stood
at T" with it, so both read history through the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from services.domain.envelope import Envelope, canonical_json, utc_rfc3339
from services.domain.events import (
    Acknowledged,
    Assigned,
    Escalated,
    Reassigned,
    ReportAmended,
    ReportSubmitted,
    StatusChanged,
    Triaged,
    data_of,
)

REPORT_FIELDS = (
    "category",
    "summary",
    "description",
    "occurred_at",
    "location",
    "unit",
    "accused",
    "named",
)


def report_digest(report: dict[str, Any]) -> str:
    """sha256 digest of the report content a principal is shown (canonical JSON)."""
    content = {name: report.get(name) for name in REPORT_FIELDS}
    return "sha256:" + hashlib.sha256(canonical_json(content)).hexdigest()


@dataclass(frozen=True)
class IncidentState:
    """What is known about one incident after a prefix of its events."""

    incident_id: str
    version: int = 0
    status: str = "new"
    category: str | None = None
    severity: str | None = None
    policy_version: str | None = None
    submitted_at: datetime | None = None
    anonymous: bool = True
    accused: tuple[str, ...] = ()
    report_digest: str | None = None
    routed: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    escalation_level: int = 0
    outcome: str | None = None
    history: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form: times in RFC 3339 UTC, sets as sorted lists."""
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if isinstance(value, datetime):
                out[name] = utc_rfc3339(value)
            elif isinstance(value, frozenset):
                out[name] = sorted(value)
            elif isinstance(value, tuple):
                out[name] = list(value)
            else:
                out[name] = value
        return out


def apply(state: IncidentState, event: Envelope) -> IncidentState:
    """The state after one more event. Events of other incidents are refused."""
    if event.subject != state.incident_id:
        raise ValueError(f"event {event.id} belongs to {event.subject}, not {state.incident_id}")
    new = replace(state, version=state.version + 1, history=(*state.history, event.type))
    data = data_of(event)
    match data:
        case ReportSubmitted():
            return replace(
                new,
                status="submitted",
                category=data.category,
                submitted_at=event.time,
                anonymous=data.reporter is None,
                accused=tuple(data.accused),
                report_digest=data.report_digest,
            )
        case ReportAmended():
            return replace(
                new,
                accused=(*new.accused, *data.accused_added),
                report_digest=data.report_digest,
            )
        case Triaged():
            return replace(
                new,
                status="triaged",
                severity=data.severity,
                policy_version=data.policy_version,
                excluded=frozenset(x.principal for x in data.excluded),
            )
        case Assigned():
            return replace(new, routed=new.routed | set(data.principals))
        case Reassigned():
            gone = {x.principal for x in data.removed}
            return replace(
                new,
                routed=(new.routed - gone) | set(data.added),
                excluded=new.excluded | gone,
            )
        case Escalated():
            return replace(
                new,
                routed=new.routed | set(data.recipients),
                escalation_level=max(new.escalation_level, data.level),
            )
        case Acknowledged() if new.acknowledged_at is None:
            return replace(
                new,
                status="acknowledged" if new.status in {"submitted", "triaged"} else new.status,
                acknowledged_at=event.time,
                acknowledged_by=data.principal,
            )
        case StatusChanged():
            return replace(new, status=data.status, outcome=data.outcome or new.outcome)
        case _:
            return new


def fold(incident_id: str, events: Iterable[Envelope]) -> IncidentState:
    """Replay events (in order) from nothing."""
    state = IncidentState(incident_id=incident_id)
    for event in events:
        state = apply(state, event)
    return state
