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

## Delivery: queued is not told (issue 22)

`incident.notified.v1` says a notice was *queued* for a principal's channel, not that
she got it. Escalation records what its adapter said: `incident.notice.delivered.v1`
(a webhook's 2xx, an SMTP server's acceptance, or the log adapter's line) or
`incident.notice.failed.v1` (with a reason class), each naming the notice by its
event id (`notice_id`). "Opened" is derived, no event of its own: her first
`incident.viewed.v1` recorded at or after her first notice. `via` is unchanged
(`notified` still means a notice was queued) and two fields are added per principal:

- `delivery`: `{queued_at, delivered_at, failed_at, opened_at, adapter}`, the first
  of each (ledger time), `adapter` the one that first delivered; null for a principal
  never notified. `deliveries_as_of` gives the same per notice (the audit route
  `/deliveries`).
- `knew_at`: the first entry that shows she could know: a notice delivered by an
  adapter that reaches a person (webhook, smtp: not `log`, which tells nobody), her
  view, acknowledgement, report or submission, or a disclosure to her. Null when all
  the ledger holds is a queued, failed or log-only notice, or an escalation naming
  her: `first_known_at` stays when the ledger first *named* her, as before.

Outcome events are joined to their notices by id, in any ledger order (they travel on
`incident.escalations`, the notices on `incident.activity`).

Pure: no I/O. Events whose `data` does not match the catalog raise `InvalidEvent`
(a `ValueError`), as they do in the incident fold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from services.domain.envelope import Envelope, utc_rfc3339, utc_rfc3339_or_none
from services.domain.events import (
    UNREADABLE,
    Acknowledged,
    Escalated,
    IdentityDisclosed,
    NoticeDelivered,
    NoticeFailed,
    Notified,
    ReportAmended,
    ReportSubmitted,
    Viewed,
    data_of,
    is_sealed,
)
from services.domain.incident import IncidentState, apply
from services.domain.status import Progress, progress_of

Via = Literal[
    "notified", "viewed", "escalated", "acknowledged", "reported", "submitted", "identity_disclosed"
]
Mark = Via | Literal["delivered", "failed", "opened"]
"""A chart mark: how the ledger named her, or what became of a notice to her."""

REPORTER = "reporter"
"""The principal the reporter appears as, unless the caller may see who it is."""

KNOWING_TYPES = frozenset(
    event.TYPE for event in (Notified, Viewed, Escalated, Acknowledged, IdentityDisclosed)
)
"""The SPEC's knowing events; submission and amendment make the reporter know too."""
_TOLD_TYPES = KNOWING_TYPES | {ReportSubmitted.TYPE, ReportAmended.TYPE}
"""The types by which someone learns of the report."""
OUTCOME_TYPES = frozenset({NoticeDelivered.TYPE, NoticeFailed.TYPE})
TELLING_ADAPTERS = frozenset({"webhook", "smtp"})
"""Adapters whose confirmation means a person was reached (the log adapter's does not)."""
PROOF_VIA: frozenset[Via] = frozenset(
    {"viewed", "acknowledged", "reported", "submitted", "identity_disclosed"}
)
"""Knowing entries that show by themselves that she could know (unlike a queued notice
or an escalation naming her)."""

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
class NoticeDelivery:
    """One notice (`incident.notified.v1`) and what became of it, by ledger time."""

    notice_id: str
    principal: str
    level: int
    channel: str
    queued_at: datetime
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    opened_at: datetime | None = None
    adapter: str | None = None
    attempts: int | None = None
    reason: str | None = None
    detail: str | None = None

    @property
    def status(self) -> str:
        """queued, delivered or failed (delivered wins if a retry after a crash said both)."""
        if self.delivered_at is not None:
            return "delivered"
        return "failed" if self.failed_at is not None else "queued"

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "status": self.status,
            "queued_at": utc_rfc3339(self.queued_at),
            "delivered_at": utc_rfc3339_or_none(self.delivered_at),
            "failed_at": utc_rfc3339_or_none(self.failed_at),
            "opened_at": utc_rfc3339_or_none(self.opened_at),
        }


@dataclass(frozen=True)
class Delivery:
    """A principal's notices summed up: the first of each step, by ledger time."""

    queued_at: datetime
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    opened_at: datetime | None = None
    adapter: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "queued_at": utc_rfc3339(self.queued_at),
            "delivered_at": utc_rfc3339_or_none(self.delivered_at),
            "failed_at": utc_rfc3339_or_none(self.failed_at),
            "opened_at": utc_rfc3339_or_none(self.opened_at),
            "adapter": self.adapter,
        }


@dataclass(frozen=True)
class PrincipalKnowledge:
    """What one principal knew: since when, how, which report versions, acknowledged when."""

    principal: str
    first_known_at: datetime
    via: tuple[Via, ...] = ()
    report_digests: tuple[str, ...] = ()
    acknowledged_at: datetime | None = None
    marks: tuple[tuple[datetime, Mark], ...] = field(default=(), compare=False)
    """Every knowing entry of this principal (ledger time, how), in ledger order, then
    her notices' outcomes and first opening: what the console's who-knew chart draws.
    Not part of the JSON answer."""
    delivery: Delivery | None = field(default=None, compare=False)
    knew_at: datetime | None = field(default=None, compare=False)
    """Both derived from the same entries as the rest (tests compare the rest)."""

    def to_json(self) -> dict[str, Any]:
        """The SPEC's JSON form, times as RFC 3339 UTC with `Z`, plus `delivery` and
        `knew_at` (module docstring)."""
        return {
            "principal": self.principal,
            "first_known_at": utc_rfc3339(self.first_known_at),
            "via": list(self.via),
            "report_digests": list(self.report_digests),
            "acknowledged_at": utc_rfc3339_or_none(self.acknowledged_at),
            "knew_at": utc_rfc3339_or_none(self.knew_at),
            "delivery": None if self.delivery is None else self.delivery.to_json(),
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
    marks: list[tuple[datetime, Mark]] = field(default_factory=list)

    def freeze(self, principal: str, notices: Sequence[NoticeDelivery]) -> PrincipalKnowledge:
        delivery = _summary(notices)
        proofs = [at for at, via in self.marks if via in PROOF_VIA]
        proofs += [
            n.delivered_at
            for n in notices
            if n.delivered_at is not None and n.adapter in TELLING_ADAPTERS
        ]
        marks = list(self.marks)
        for notice in notices:
            if notice.delivered_at is not None:
                marks.append((notice.delivered_at, "delivered"))
            if notice.failed_at is not None:
                marks.append((notice.failed_at, "failed"))
        if delivery is not None and delivery.opened_at is not None:
            marks.append((delivery.opened_at, "opened"))
        return PrincipalKnowledge(
            principal=principal,
            first_known_at=self.first_known_at,
            via=tuple(self.via),
            report_digests=tuple(self.digests),
            acknowledged_at=self.acknowledged_at,
            marks=tuple(marks),
            delivery=delivery,
            knew_at=min(proofs, default=None),
        )


def _summary(notices: Sequence[NoticeDelivery]) -> Delivery | None:
    """The first of each step over one principal's notices."""
    if not notices:
        return None
    delivered = [n for n in notices if n.delivered_at is not None]
    first = min(delivered, key=lambda n: n.delivered_at or n.queued_at, default=None)
    return Delivery(
        queued_at=min(n.queued_at for n in notices),
        delivered_at=None if first is None else first.delivered_at,
        failed_at=min((n.failed_at for n in notices if n.failed_at), default=None),
        opened_at=min((n.opened_at for n in notices if n.opened_at), default=None),
        adapter=None if first is None else first.adapter,
    )


class _Reader:
    """Accumulates knowledge entry by entry, in ledger order."""

    def __init__(self, reveal_reporter: bool) -> None:
        self.reveal_reporter = reveal_reporter
        self.known: dict[str, _Acc] = {}
        self.latest_digest: str | None = None
        self.reporter = REPORTER
        self.notices: dict[str, NoticeDelivery] = {}
        self.outcomes: list[tuple[datetime, NoticeDelivered | NoticeFailed]] = []
        self.views: dict[str, list[datetime]] = {}

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
        if envelope.type in OUTCOME_TYPES:
            outcome = data_of(envelope)
            if isinstance(outcome, NoticeDelivered | NoticeFailed):
                self.outcomes.append((at, outcome))
            return
        if envelope.type not in _TOLD_TYPES:
            return  # access.denied and everything else: nobody learns anything
        data = data_of(envelope)
        if isinstance(data, Notified):
            notice = NoticeDelivery(envelope.id, data.principal, data.level, data.channel, at)
            self.notices.setdefault(envelope.id, notice)
        elif isinstance(data, Viewed):
            self.views.setdefault(data.principal, []).append(at)
        match data:
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
                # `reporter`: the reporter reading her own report (named, docs/reporters.md)
                who = self.reporter if data.principal == REPORTER else data.principal
                self.learn(who, at, "viewed", data.report_digest)
            case Escalated() as data:
                for recipient in data.recipients:
                    self.learn(recipient, at, "escalated", self.latest_digest)
            case IdentityDisclosed() as data:
                self.learn(data.principal, at, "identity_disclosed", None)
            case Acknowledged() as data:
                acc = self.learn(data.principal, at, "acknowledged", self.latest_digest)
                if acc.acknowledged_at is None or at < acc.acknowledged_at:
                    acc.acknowledged_at = at

    def deliveries(self) -> list[NoticeDelivery]:
        """Every notice with its outcome (joined by notice id) and first opening."""
        notices = dict(self.notices)
        for at, outcome in self.outcomes:
            notice = notices.get(outcome.notice_id)
            if notice is None:  # its notice is not (yet) in the ledger: nothing to join
                continue
            if isinstance(outcome, NoticeDelivered):
                if notice.delivered_at is None or at < notice.delivered_at:
                    notice = replace(
                        notice, delivered_at=at, adapter=outcome.adapter, attempts=outcome.attempts
                    )
            elif notice.failed_at is None or at < notice.failed_at:
                notice = replace(
                    notice,
                    failed_at=at,
                    adapter=notice.adapter or outcome.adapter,
                    attempts=notice.attempts or outcome.attempts,
                    reason=outcome.reason,
                    detail=outcome.detail,
                )
            notices[outcome.notice_id] = notice
        out = []
        for notice in notices.values():
            opened = [v for v in self.views.get(notice.principal, ()) if v >= notice.queued_at]
            out.append(replace(notice, opened_at=min(opened, default=None)))
        return sorted(out, key=lambda n: (n.queued_at, n.principal, n.notice_id))

    def result(self) -> tuple[PrincipalKnowledge, ...]:
        by_principal: dict[str, list[NoticeDelivery]] = {}
        for notice in self.deliveries():
            by_principal.setdefault(notice.principal, []).append(notice)
        frozen = (acc.freeze(name, by_principal.get(name, ())) for name, acc in self.known.items())
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


def deliveries_as_of(
    incident_id: str, entries: Sequence[LedgerEvent], as_of: datetime
) -> list[NoticeDelivery]:
    """Every notice of the incident recorded by `as_of` (ledger time), with its
    delivery, failure and first opening, in the order they were queued."""
    reader = _Reader(reveal_reporter=False)
    for entry in _recorded_by(incident_id, entries, as_of):
        reader.read(entry)
    return reader.deliveries()


def progress_as_of(incident_id: str, entries: Sequence[LedgerEvent], as_of: datetime) -> Progress:
    """Where the incident stood at `as_of`, in the words every view uses (status.py)."""
    return progress_of(e.envelope for e in _recorded_by(incident_id, entries, as_of))


def state_as_of(incident_id: str, entries: Sequence[LedgerEvent], as_of: datetime) -> IncidentState:
    """The incident as it stood at `as_of`: the services' own fold over the recorded prefix."""
    state = IncidentState(incident_id=incident_id)
    for entry in _recorded_by(incident_id, entries, as_of):
        state = apply(state, entry.envelope)
    return state
