"""Who knew what, and when: knowledge and state of one incident as of an instant.

The audit ledger answers `GET /v1/incidents/{id}/knowledge` and `/state` with the
functions below. Both read the ledger entries of one incident and count only those
*recorded* at or before `as_of`: the clock is the ledger's, never the `time` a
client wrote into its own event, so nobody can backdate (or postdate) knowledge.

A principal knows an incident from the first "knowing" entry naming it (SPEC.md,
Events):

- `incident.notified.v1` and `incident.viewed.v1`: `data.principal`, shown
  `data.report_digest`;
- `incident.escalated.v1`: every one of `data.recipients`, shown the latest report
  version known at that point of the ledger;
- `incident.acknowledged.v1`: `data.principal`, also the latest report version; the
  first one sets that principal's `acknowledged_at`;
- `incident.report.submitted.v1`: the reporter (`reporter`, or the person id when the
  caller may see it) and, when the actor is a system, that system;
- `incident.report.amended.v1`: the reporter, who wrote the new version;
- `incident.identity.disclosed.v1`: the identity custodian shown who reported
  (`identity_disclosed`; they are shown no report version).

`incident.access.denied.v1` makes nobody know; every other type is ignored.

Pure: no I/O. Events whose `data` does not match the catalog raise `InvalidEvent`
(a `ValueError`), as they do in the incident fold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from services.domain.envelope import Envelope, utc_rfc3339
from services.domain.events import (
    UNREADABLE,
    Acknowledged,
    Escalated,
    IdentityDisclosed,
    Notified,
    ReportAmended,
    ReportSubmitted,
    Viewed,
    data_of,
    is_sealed,
)
from services.domain.incident import IncidentState, apply

Via = Literal[
    "notified", "viewed", "escalated", "acknowledged", "reported", "submitted", "identity_disclosed"
]

REPORTER = "reporter"
"""The principal the reporter appears as, unless the caller may see who it is."""

SUBMITTED = "incident.report.submitted.v1"
AMENDED = "incident.report.amended.v1"
NOTIFIED = "incident.notified.v1"
VIEWED = "incident.viewed.v1"
ESCALATED = "incident.escalated.v1"
ACKNOWLEDGED = "incident.acknowledged.v1"
DISCLOSED = "incident.identity.disclosed.v1"
KNOWING_TYPES = frozenset({NOTIFIED, VIEWED, ESCALATED, ACKNOWLEDGED, DISCLOSED})
"""The SPEC's knowing events; submission and amendment make the reporter know too."""

_SYSTEM_PREFIX = "system:"


def _readable_id(value: str) -> bool:
    """A person id, not a sealed value, a pseudonym or what an erased one reads as."""
    return not (is_sealed(value) or value.startswith("pn:") or value == UNREADABLE)


def _require_aware(name: str, moment: datetime) -> None:
    if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")


@dataclass(frozen=True)
class LedgerEvent:
    """One ledger entry: its index, when the ledger recorded it, and the event."""

    index: int
    recorded_at: datetime
    envelope: Envelope

    def __post_init__(self) -> None:
        _require_aware("recorded_at", self.recorded_at)


@dataclass(frozen=True)
class PrincipalKnowledge:
    """What one principal knew: since when, how, which report versions, acknowledged when."""

    principal: str
    first_known_at: datetime
    via: tuple[Via, ...] = ()
    report_digests: tuple[str, ...] = ()
    acknowledged_at: datetime | None = None
    marks: tuple[tuple[datetime, Via], ...] = field(default=(), compare=False)
    """Every knowing entry of this principal (ledger time, how), in ledger order: what
    the console's who-knew chart draws. Not part of the JSON answer."""

    def to_json(self) -> dict[str, Any]:
        """The SPEC's JSON form, times as RFC 3339 UTC with `Z`."""
        return {
            "principal": self.principal,
            "first_known_at": utc_rfc3339(self.first_known_at),
            "via": list(self.via),
            "report_digests": list(self.report_digests),
            "acknowledged_at": (
                None if self.acknowledged_at is None else utc_rfc3339(self.acknowledged_at)
            ),
        }


@dataclass(frozen=True)
class Knowledge:
    """Everyone who knew the incident at `as_of`, by (first_known_at, principal)."""

    incident_id: str
    as_of: datetime
    principals: tuple[PrincipalKnowledge, ...] = ()
    time_basis: str = "ledger"

    def get(self, principal: str) -> PrincipalKnowledge | None:
        """The knowledge of one principal, None if it did not know at `as_of`."""
        return next((p for p in self.principals if p.principal == principal), None)

    def names(self) -> tuple[str, ...]:
        """The principals who knew, in order."""
        return tuple(p.principal for p in self.principals)

    def to_json(self) -> dict[str, Any]:
        """`{"incident_id", "as_of", "time_basis", "principals": [...]}` as in SPEC.md."""
        return {
            "incident_id": self.incident_id,
            "as_of": utc_rfc3339(self.as_of),
            "time_basis": self.time_basis,
            "principals": [p.to_json() for p in self.principals],
        }


@dataclass
class _Acc:
    """Mutable accumulator for one principal while reading the ledger."""

    first_known_at: datetime
    via: list[Via] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    acknowledged_at: datetime | None = None
    marks: list[tuple[datetime, Via]] = field(default_factory=list)

    def freeze(self, principal: str) -> PrincipalKnowledge:
        return PrincipalKnowledge(
            principal=principal,
            first_known_at=self.first_known_at,
            via=tuple(self.via),
            report_digests=tuple(self.digests),
            acknowledged_at=self.acknowledged_at,
            marks=tuple(self.marks),
        )


class _Reader:
    """Accumulates knowledge entry by entry, in ledger order."""

    def __init__(self, reveal_reporter: bool) -> None:
        self.reveal_reporter = reveal_reporter
        self.known: dict[str, _Acc] = {}
        self.latest_digest: str | None = None
        self.reporter = REPORTER

    def learn(self, principal: str, at: datetime, via: Via, digest: str | None) -> _Acc:
        acc = self.known.get(principal)
        if acc is None:
            acc = self.known[principal] = _Acc(first_known_at=at)
        # min, not "first seen": stays right (and monotone in as_of) even if ledger
        # times were ever out of index order.
        acc.first_known_at = min(acc.first_known_at, at)
        acc.marks.append((at, via))
        if via not in acc.via:
            acc.via.append(via)
        if digest is not None and digest not in acc.digests:
            acc.digests.append(digest)
        return acc

    def read(self, entry: LedgerEvent) -> None:
        envelope, at = entry.envelope, entry.recorded_at
        if envelope.type not in KNOWING_TYPES and envelope.type not in (SUBMITTED, AMENDED):
            return  # access.denied and everything else: nobody learns anything
        match data_of(envelope):
            case ReportSubmitted() as data:
                self.latest_digest = data.report_digest
                # The person id: `reporter_identity` once opened (sealed values and
                # pseudonyms never name anyone), or `reporter` of events before #8.
                identity = data.reporter_identity or data.reporter
                if self.reveal_reporter and identity is not None and _readable_id(identity):
                    self.reporter = identity
                self.learn(self.reporter, at, "reported", data.report_digest)
                actor = envelope.actor
                if actor is not None and actor.startswith(_SYSTEM_PREFIX):
                    self.learn(actor, at, "submitted", data.report_digest)
            case ReportAmended() as data:
                self.latest_digest = data.report_digest
                self.learn(self.reporter, at, "reported", data.report_digest)
            case Notified() as data:
                self.learn(data.principal, at, "notified", data.report_digest)
            case Viewed() as data:
                self.learn(data.principal, at, "viewed", data.report_digest)
            case Escalated() as data:
                for recipient in data.recipients:
                    self.learn(recipient, at, "escalated", self.latest_digest)
            case IdentityDisclosed() as data:
                self.learn(data.principal, at, "identity_disclosed", None)
            case Acknowledged() as data:
                acc = self.learn(data.principal, at, "acknowledged", self.latest_digest)
                if acc.acknowledged_at is None or at < acc.acknowledged_at:
                    acc.acknowledged_at = at

    def result(self) -> tuple[PrincipalKnowledge, ...]:
        frozen = (acc.freeze(name) for name, acc in self.known.items())
        return tuple(sorted(frozen, key=lambda p: (p.first_known_at, p.principal)))


def _recorded_by(
    incident_id: str, entries: Iterable[LedgerEvent], as_of: datetime
) -> list[LedgerEvent]:
    """The entries recorded at or before `as_of`, in ledger (index) order.

    Every entry must belong to `incident_id`, counted or not: a foreign event means the
    caller selected the wrong rows, which an audit answer must not paper over.
    """
    _require_aware("as_of", as_of)
    chosen: list[LedgerEvent] = []
    for entry in entries:
        if entry.envelope.subject != incident_id:
            raise ValueError(
                f"ledger entry {entry.index} (event {entry.envelope.id}) belongs to "
                f"{entry.envelope.subject!r}, not {incident_id!r}"
            )
        if entry.recorded_at <= as_of:
            chosen.append(entry)
    chosen.sort(key=lambda e: e.index)
    return chosen


def knowledge_as_of(
    incident_id: str,
    entries: Sequence[LedgerEvent],
    as_of: datetime,
    *,
    reveal_reporter: bool = False,
) -> Knowledge:
    """Who knew the incident at `as_of` (ledger time), since when, how and which versions.

    `reveal_reporter` (for an identity custodian) names a non-anonymous reporter by
    `data.reporter` instead of `reporter`. Raises ValueError for a naive `as_of` or an
    entry of another incident.
    """
    reader = _Reader(reveal_reporter)
    for entry in _recorded_by(incident_id, entries, as_of):
        reader.read(entry)
    return Knowledge(incident_id=incident_id, as_of=as_of, principals=reader.result())


def state_as_of(incident_id: str, entries: Sequence[LedgerEvent], as_of: datetime) -> IncidentState:
    """The incident as it stood at `as_of`: the services' own fold over the recorded prefix."""
    state = IncidentState(incident_id=incident_id)
    for entry in _recorded_by(incident_id, entries, as_of):
        state = apply(state, entry.envelope)
    return state
