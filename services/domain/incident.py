"""The incident as a fold of its events: `apply(state, event) -> state`.

The services decide with it and the audit replay rebuilds "the incident as it stood
at T" with it, so both read history through the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.domain.envelope import Envelope, canonical_json, utc_rfc3339
from services.domain.events import (
    CATALOG,
    Acknowledged,
    Assigned,
    Escalated,
    EventData,
    InvalidEvent,
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
    """The state after one more event. Events of other incidents are refused.

    The event's data is validated against the catalog (`InvalidEvent` for an unknown
    type or bad data), then folded by `apply_data`.
    """
    if event.subject != state.incident_id:
        raise ValueError(f"event {event.id} belongs to {event.subject}, not {state.incident_id}")
    data_of(event)
    return apply_data(state, event.type, event.time, event.data)


def apply_data(
    state: IncidentState, event_type: str, time: datetime, data: Mapping[str, Any]
) -> IncidentState:
    """The fold itself, over an event's type, time and JSON data, valid for its type.

    `apply` validates first; a replay of the audit ledger, whose events were validated
    as they were recorded, calls this directly and skips the per-event validation. It
    reads the JSON as the catalog's models would (their defaults for absent fields).
    """
    return _evolve(state, data_changes(state.__dict__, event_type, time, data))


def data_changes(
    fields: Mapping[str, Any], event_type: str, time: datetime, data: Mapping[str, Any]
) -> dict[str, Any]:
    """What one event changes in a state whose fields are ``fields`` (an
    `IncidentState`'s ``__dict__``): `apply_data` without building the new state, so a
    replay can keep each incident's fields in a plain dict, update it in place and build
    its `IncidentState` once at the end (`state_of`). Raises before changing anything."""
    try:
        fold = _FOLD[event_type]
    except KeyError:
        raise InvalidEvent(f"unknown event type {event_type!r}") from None
    changes = fold(fields, time, data)
    changes["version"] = fields["version"] + 1
    changes["history"] = (*fields["history"], event_type)
    return changes


_Map = Mapping[str, Any]
_Changes = Callable[[_Map, datetime, _Map], dict[str, Any]]


def _submitted(fields: _Map, time: datetime, data: _Map) -> dict[str, Any]:
    return {
        "status": "submitted",
        "category": data["category"],
        "submitted_at": time,
        "anonymous": data.get("reporter") is None,
        "accused": tuple(data.get("accused", ())),
        "report_digest": data["report_digest"],
    }


def _amended(fields: _Map, time: datetime, data: _Map) -> dict[str, Any]:
    return {
        "accused": (*fields["accused"], *data.get("accused_added", ())),
        "report_digest": data["report_digest"],
    }


def _triaged(fields: _Map, time: datetime, data: _Map) -> dict[str, Any]:
    return {
        "status": "triaged",
        "severity": data["severity"],
        "policy_version": data["policy_version"],
        "excluded": frozenset(x["principal"] for x in data.get("excluded", ())),
    }


def _routed(key: str) -> _Changes:
    """The fold of an event that routes the incident to the principals under ``key`` of
    its data at its level (assigned: the level triage asked, 1, never 0; escalated)."""

    def changes(fields: _Map, time: datetime, data: _Map) -> dict[str, Any]:
        return {
            "routed": fields["routed"] | set(data[key]),
            "escalation_level": max(fields["escalation_level"], int(data["level"])),
        }

    return changes


def _reassigned(fields: _Map, time: datetime, data: _Map) -> dict[str, Any]:
    gone = {x["principal"] for x in data.get("removed", ())}
    return {
        "routed": (fields["routed"] - gone) | set(data.get("added", ())),
        "excluded": fields["excluded"] | gone,
    }


def _acknowledged(fields: _Map, time: datetime, data: _Map) -> dict[str, Any]:
    if fields["acknowledged_at"] is not None:
        return {}  # the first acknowledgement stands
    status = fields["status"]
    return {
        "status": "acknowledged" if status in {"submitted", "triaged"} else status,
        "acknowledged_at": time,
        "acknowledged_by": data["principal"],
    }


def _status(fields: _Map, time: datetime, data: _Map) -> dict[str, Any]:
    return {"status": data["status"], "outcome": data.get("outcome") or fields["outcome"]}


def _unchanged(fields: _Map, time: datetime, data: _Map) -> dict[str, Any]:
    return {}


def state_of(fields: Mapping[str, Any]) -> IncidentState:
    """The `IncidentState` whose fields are ``fields`` (all of them, as `data_changes`
    keeps them)."""
    new = object.__new__(IncidentState)
    new.__dict__.update(fields)
    return new


def _evolve(state: IncidentState, changes: dict[str, Any]) -> IncidentState:
    """`dataclasses.replace` without its per-call field checks (the fold's hot path):
    `changes` only ever names fields of `IncidentState`, as the fold above writes them."""
    new = object.__new__(IncidentState)
    new.__dict__.update(state.__dict__)
    new.__dict__.update(changes)
    return new


_CHANGES_OF_DATA: dict[type[EventData], _Changes] = {
    ReportSubmitted: _submitted,
    ReportAmended: _amended,
    Triaged: _triaged,
    Assigned: _routed("principals"),
    Reassigned: _reassigned,
    Escalated: _routed("recipients"),
    Acknowledged: _acknowledged,
    StatusChanged: _status,
}
_FOLD: dict[str, _Changes] = {
    name: _CHANGES_OF_DATA.get(entry.data, _unchanged) for name, entry in CATALOG.items()
}
"""What the fold does with each event type of the catalog, by the catalog's model for it
(an event of another model changes only the version and the history)."""


def fold(incident_id: str, events: Iterable[Envelope]) -> IncidentState:
    """Replay events (in order) from nothing."""
    state = IncidentState(incident_id=incident_id)
    for event in events:
        state = apply(state, event)
    return state
