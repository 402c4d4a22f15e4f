"""Triage's use cases: what triage does with each input, whatever brought it.

Each use case takes a command (a frozen dataclass built by an adapter from consumed
records) and a `TriageUnitOfWork`, and never touches asyncpg, HTTP or Kafka:

- `record_policy` (`RecordPolicy`): the policy version in use, refused if an older file
  recorded the same version with other content (`PolicyConflict`);
- `keep_directory` (`KeepDirectory`): directory events kept in `directory_log`, in order,
  then `recheck`: the accused-based exclusions run again for the decisions they touch;
- `resume`: at start-up, the directory folded and a re-check a stop left undone done
  (after any input, too, while the mark lags: `_recheck_lagging`);
- `decide` (`DecideReports`): a batch of submitted reports decided, each once:
  `incident.triaged.v1`, then level 1's `incident.assigned.v1` and `incident.notified.v1`;
- `reexclude` (`Reexclude`): an amendment re-runs the exclusions (`incident.reassigned.v1`
  when someone asked is now excluded);
- `decide_again` (`DecideAgain`): the people confirmed by an independent-role holder, the
  decision made again (the next `revision`);
- `reroute` (`Reroute`): a recusal or an ordered reassignment, `incident.reassigned.v1`.

Every input is tracked in the unit of work that acts on it (a re-delivered one changes
nothing), and every event written has an id derived from its cause's id and its index,
so even a second worker racing on the same input cannot publish twice. The decisions are
pure (`services.domain.triage`); the directory is folded incrementally from the log
(`DirectoryProjection`) and kept in memory between units of work.

The repositories triage adds to the recorder (`Decisions`, `DirectoryLog`, `Policies`)
are Protocols here; `services.triage.postgres` implements them on PostgreSQL and
`services.triage.memory` in dictionaries (use-case tests).
"""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from services.domain.envelope import Envelope
from services.domain.events import (
    Assigned,
    Event,
    InvalidEvent,
    Notified,
    PeopleConfirmed,
    PeopleImported,
    ReassignmentOrdered,
    Recused,
    ReportAmended,
    ReportSubmitted,
    data_of,
    is_sealed,
    make_event,
    parse_envelope,
)
from services.domain.org import (
    DIRECTORY_EVENT_TYPES,
    DirectoryProjection,
    DirectoryView,
    Org,
    OrgPerson,
)
from services.domain.policy import Policy
from services.domain.triage import (
    Rerouting,
    TriageDecision,
    confirmed_report,
    decide,
    exclude_reporter,
    incident_unit,
    may_confirm,
    order_reassignment,
    recuse,
    reexclude,
    reporter_candidates,
    widened_candidates,
)
from services.domain.upcasting import UPCASTERS
from services.infra.crypto import Pseudonyms
from services.infra.recorder import TrackedInput, UnitOfWork

log = logging.getLogger(__name__)

ReportInput = ReportSubmitted | ReportAmended | PeopleConfirmed
ActivityInput = Recused | ReassignmentOrdered
_In = TypeVar("_In", bound=Event)
REPORT_INPUTS: tuple[type[ReportInput], ...] = (ReportSubmitted, ReportAmended, PeopleConfirmed)
"""The report-topic types triage acts on; every other one is ignored."""
ACTIVITY_INPUTS: tuple[type[ActivityInput], ...] = (Recused, ReassignmentOrdered)
"""The activity types triage acts on; every other one is ignored."""
DIRECTORY_CONSUMER = "triage-directory"
REPORTS_CONSUMER = "triage-reports"
ACTIVITY_CONSUMER = "triage-activity"
FREEZE_AFTER = 10_000
"""People changed by the directory events folded at once after which the heap is frozen
(`gc.freeze`)."""
EVENT_IDS = uuid.UUID("0b7a4f0e-2c55-4e0a-9a53-7d1c3e2f6a18")
"""Namespace of the ids of triage's events: uuid5 of the cause's id and the index."""
Outputs = list[Event]


class PolicyConflict(RuntimeError):
    """The policy file reuses a version already recorded with other content."""


class UnknownPolicy(LookupError):
    """A decision's policy version this instance cannot read: not recorded, or recorded
    by a newer instance in a form this one does not know (a rolling upgrade)."""


# -- the repositories a triage unit of work adds to the recorder ---------------------------


@dataclass(frozen=True)
class StoredDecision:
    """An incident's decision row: its inputs, and the decision as it stands (`state`)."""

    incident_id: str
    report: dict[str, Any]
    reporter: str | None
    policy_version: str
    directory_seq: int
    decided_at: datetime
    amendments: list[dict[str, Any]]
    state: dict[str, Any] | None
    """`{"decision": TriageDecision.to_json(), "report_digest": ...}`; None for incidents
    decided before it was kept (rebuilt from the columns above once, then kept)."""


@dataclass(frozen=True)
class NewDecision:
    incident_id: str
    report: ReportSubmitted
    policy_version: str
    state: dict[str, Any]
    lines: frozenset[str]
    """The people whose line the decision watches (`decision_lines`), as of the
    directory it was made with (`add`'s `directory_seq`)."""


class Decisions(Protocol):
    """The decision of each incident (`decisions`)."""

    async def add(
        self, decisions: Sequence[NewDecision], *, directory_seq: int, decided_at: datetime
    ) -> None:
        """Keep new decisions, each with its lines as of `directory_seq`."""
        ...

    async def for_update(self, incident_id: str) -> StoredDecision | None:
        """The incident's row, locked until the unit of work ends; None if undecided."""
        ...

    async def keep_state(
        self, incident_id: str, state: dict[str, Any], *, lines: Collection[str], seq: int
    ) -> None:
        """Keep the decision as it stands now, with its lines as of directory `seq`."""
        ...

    async def keep_lines(self, lines: Mapping[str, Collection[str]], *, seq: int) -> None:
        """Keep these decisions' lines (by incident) as of directory `seq`, the decisions
        unchanged."""
        ...

    async def forget_lines(self, incident_ids: Collection[str]) -> None:
        """Drop these decisions' lines and their directory (`lines_seq` NULL): the next
        re-check checks each of them in full, as one kept before `decision_lines`."""
        ...

    async def for_update_each(self, incident_ids: Collection[str]) -> list[StoredDecision]:
        """The incidents' rows, locked in incident order until the unit of work ends (the
        undecided left out)."""
        ...

    async def states(self) -> list[tuple[str, dict[str, Any]]]:
        """(incident, kept state) of every decision whose state is kept."""
        ...

    async def to_recheck(self, moved: Collection[str], *, since: int) -> list[str]:
        """The incidents, in order, whose kept decision a directory change after `since`
        may touch: someone in `moved` is on its lines, or its lines were taken from
        another directory than the one re-checked up to `since` (a later one; never:
        decisions kept before `decision_lines` existed; an earlier one, written by a
        unit of work the last re-check could not see, committed after it read them).
        Call it after `DirectoryLog.mark_rechecked`, in the same unit of work."""
        ...

    async def set_amendments(self, incident_id: str, amendments: list[dict[str, Any]]) -> None: ...


class DirectoryLog(Protocol):
    """Every directory event triage consumed, in order (`directory_log`)."""

    async def append(self, events: Sequence[tuple[str, bytes]]) -> None:
        """Keep (event id, body) pairs after the others; an id kept before is skipped."""
        ...

    async def after(self, seq: int) -> list[tuple[int, str, bytes]]:
        """(seq, event id, body) of the events kept after `seq`, in order."""
        ...

    async def hold_mark(self) -> None:
        """Share the re-check mark until the unit of work ends: wait for a re-check
        under way to commit, and keep any other from starting meanwhile (units that hold
        it do not wait for each other; one asking after a re-check asked waits for it).
        Every unit that keeps a decision calls it before it reads the directory or locks
        a decision: a re-check that marks past the directory the decision was made on
        then reads the decisions after it committed (docs/conflicts.md)."""
        ...

    async def rechecked(self) -> int:
        """The seq up to which the decisions were checked again, the mark held
        exclusively to the end of the unit of work: after every unit that holds it
        (`hold_mark`) ended, so two workers never re-check the same events and every
        decision made on a directory before the one this re-check marks is seen."""
        ...

    async def mark_rechecked(self, seq: int) -> None:
        """Move the mark to `seq`, and note which units of work this re-check can see
        (`Decisions.to_recheck` of the next one finds what the others wrote)."""
        ...


class Policies(Protocol):
    """Every policy version triage ran with, verbatim (`policies`)."""

    async def record(self, version: str, body: dict[str, Any]) -> None:
        """Keep a version unless it was kept before (the earlier body stays)."""
        ...

    async def body_of(self, version: str) -> dict[str, Any] | None: ...

    async def every(self) -> list[tuple[str, dict[str, Any]]]: ...


class TriageUnitOfWork(UnitOfWork, Protocol):
    """The recorder and triage's repositories, in one transaction."""

    @property
    def decisions(self) -> Decisions: ...

    @property
    def directory_log(self) -> DirectoryLog: ...

    @property
    def policies(self) -> Policies: ...


# -- commands -------------------------------------------------------------------------------


def _no_scope() -> AbstractContextManager[object]:
    return nullcontext()


@dataclass(frozen=True)
class Cause:
    """One consumed input: its envelope, where it came from (for tracking), and the
    scope its work runs in (the adapter's span continuing the input's trace)."""

    envelope: Envelope
    tracked: TrackedInput
    scope: Callable[[], AbstractContextManager[object]] = _no_scope
    body: bytes | None = None
    """The input's bytes as consumed (a directory event is kept as it came, signature
    and all, rather than encoded again); None: the envelope's canonical bytes."""


@dataclass(frozen=True)
class RecordPolicy:
    policy: Policy


@dataclass(frozen=True)
class KeepDirectory:
    events: Sequence[Cause]
    """Directory events, each checked by `directory_event`."""


@dataclass(frozen=True)
class DecideReports:
    reports: Sequence[tuple[Cause, ReportSubmitted]]


@dataclass(frozen=True)
class Reexclude:
    cause: Cause
    amended: ReportAmended
    consumer: str = REPORTS_CONSUMER


@dataclass(frozen=True)
class DecideAgain:
    cause: Cause
    confirmed: PeopleConfirmed
    consumer: str = REPORTS_CONSUMER


@dataclass(frozen=True)
class Reroute:
    cause: Cause
    change: Recused | ReassignmentOrdered
    consumer: str = ACTIVITY_CONSUMER


LaterCommand = Reexclude | DecideAgain | Reroute
_Later = TypeVar("_Later", Reexclude, DecideAgain, Reroute)


# -- reading inputs (pure: what an adapter checks before it builds a command) ---------------


def directory_event(envelope: Envelope) -> None:
    """Raise `InvalidEvent` unless this is a directory event with valid data."""
    if envelope.type not in DIRECTORY_EVENT_TYPES:
        raise InvalidEvent(f"not a directory event: {envelope.type}")
    # the data as folding will read it (not a fold: that built two snapshots per event)
    data_of(envelope)


def report_input(envelope: Envelope) -> ReportInput | None:
    """The data of a report-topic event triage acts on; None for the others (reporter
    messages are not triage's business). Raises `InvalidEvent` for invalid data."""
    return _read_one_of(REPORT_INPUTS, envelope)


def activity_input(envelope: Envelope) -> ActivityInput | None:
    """The data of a recusal or an ordered reassignment; None for every other activity
    type (its data is not read). Raises `InvalidEvent` for invalid data."""
    return _read_one_of(ACTIVITY_INPUTS, envelope)


def _read_one_of(models: Sequence[type[_In]], envelope: Envelope) -> _In | None:
    """The envelope's data as the one of `models` its type is read as (upcast), or None."""
    read_as = UPCASTERS.current(envelope.type)
    for model in models:
        if read_as == model.TYPE:
            return model.read(envelope)
    return None


def later_command(
    cause: Cause, data: ReportAmended | PeopleConfirmed | Recused | ReassignmentOrdered
) -> LaterCommand:
    """The command for an input that changes a decision made before."""
    match data:
        case ReportAmended():
            return Reexclude(cause, data)
        case PeopleConfirmed():
            return DecideAgain(cause, data)
        case Recused() | ReassignmentOrdered():
            return Reroute(cause, data)


# -- the use cases --------------------------------------------------------------------------


@dataclass
class _Kept:
    """An incident's decision as it stands, with what the use cases need beside it."""

    row: StoredDecision
    decision: TriageDecision
    policy: Policy
    digest: str


@dataclass(eq=False, repr=False)
class TriageUseCases:
    """Triage's use cases and the state they share: the policies and the directory,
    folded incrementally from `directory_log` (docs/scale.md)."""

    policy: Policy
    pseudonyms: Pseudonyms
    _: KW_ONLY
    source: str = "/services/triage"
    topic_prefix: str = ""
    traceparent: Callable[[], str | None] = lambda: None
    """The trace context triage's events carry (the adapter's current span)."""
    recheck_refused: Callable[[str], None] = lambda reason: None
    """Told each time the re-check of one decision is refused, with why (the adapter's
    `incidents_triage_recheck_refused_total`)."""
    policies: dict[str, Policy] = field(init=False)
    """Every policy version recorded, by version (an incident keeps its version)."""
    directory: DirectoryProjection = field(init=False, default_factory=DirectoryProjection)
    _unfrozen: int = field(init=False, default=0)
    """Directory events folded since the heap was last frozen."""
    _rechecked: int = field(init=False, default=0)
    """The re-check mark (`directory_rechecked`) as this worker last saw it committed:
    while the directory folded here is ahead of it, the next input re-checks first."""

    def __post_init__(self) -> None:
        self.policies = {self.policy.version: self.policy}

    @property
    def org(self) -> DirectoryView:
        """The directory as far as it was folded."""
        return self.directory.view()

    # -- policy -------------------------------------------------------------------------

    async def record_policy(self, command: RecordPolicy, uow: TriageUnitOfWork) -> None:
        """Record the policy version (refusing a changed file under an old version), and
        learn every version recorded before (an incident keeps its version)."""
        policy = command.policy
        # exclude_none: a policy without the (later) optional sections records as before
        body = policy.model_dump(mode="json", exclude_none=True)
        async with uow:
            await uow.policies.record(policy.version, body)
            if await uow.policies.body_of(policy.version) != body:
                raise PolicyConflict(
                    f"policy version {policy.version!r} was recorded with other content;"
                    " give the changed policy a new version"
                )
            for version, stored in await uow.policies.every():
                self.policies[version] = Policy.recorded(stored)

    # -- directory ----------------------------------------------------------------------

    async def resume(self, uow: TriageUnitOfWork) -> int:
        """At start-up, before consuming: fold the directory kept so far, then re-check
        the changes the re-check mark is behind (a batch committed by a worker that
        stopped before its re-check), so the restart does not wait for the next
        directory change. Returns how many incidents changed."""
        async with uow:
            await self._refresh_directory(uow)
        return await self._recheck_lagging(uow)

    async def _recheck_lagging(self, uow: TriageUnitOfWork) -> int:
        """Re-check now if the directory folded here is ahead of the mark as this worker
        last saw it (a re-check lost to a stop, or one that failed, is not left waiting
        for the next directory change). Nothing is read when nothing lags. Idempotent
        across workers: `recheck` holds the mark's row lock and starts from the mark.
        Called after an input's own unit of work committed: a failure is logged, not
        raised (the input is handled), and the next input, batch or start tries again."""
        if self.directory.seq <= self._rechecked:
            return 0
        try:
            return await self.recheck(uow)
        except Exception:  # the input is committed; the next one tries again
            log.exception("the directory re-check failed; the next input tries again")
            return 0

    async def keep_directory(self, command: KeepDirectory, uow: TriageUnitOfWork) -> int:
        """Keep a batch of directory events in `directory_log`, in order: one unit of
        work for the batch (a directory import brings hundreds of thousands:
        docs/directory-sync.md). Then fold them at once, from the envelopes in hand (not
        parsed again from the log), so the next decision does not fold a whole import.
        Returns how many were new."""
        if not command.events:
            return 0
        async with uow:
            fresh = await uow.recorder.track_each(
                DIRECTORY_CONSUMER, [c.tracked for c in command.events]
            )
            kept = [c for c, new in zip(command.events, fresh, strict=True) if new]
            await uow.directory_log.append(
                [(c.envelope.id, c.body or c.envelope.to_bytes()) for c in kept]
            )
        if kept:
            async with uow:  # once they are committed: a fold never runs ahead of the log
                await self._refresh_directory(uow, {c.envelope.id: c.envelope for c in kept})
        await self.recheck(uow, {c.envelope.id: c.envelope for c in kept})
        return len(kept)

    async def recheck(
        self, uow: TriageUnitOfWork, known: Mapping[str, Envelope] | None = None
    ) -> int:
        """Run the accused-based exclusions again, on the directory as it is now, for every
        decision the directory events folded since the last re-check may touch: someone
        whose manager or roles changed (`moved`) is on the management line of one of its
        accused, its routed people or its independent fallback. The chain was resolved
        when the report was decided; a manager change can since have put a later level's
        recipient in the accused's line (or under the accused), and nothing else would
        take them off before escalation asks them. Anyone newly excluded is removed
        (`incident.reassigned.v1`), and an emptied level resolved again, as for an
        amendment. An unresolved accused id the directory now knows (he joined) is
        resolved: excluded, with his line and whoever answers to him. The decisions are
        found through their lines (`decision_lines`: the people above, and the people of,
        each accused, routed and independent person, and each unresolved id, kept with
        each decision), looked up with the people who moved or joined: the work follows
        what moved, not how many decisions were ever kept (docs/scale.md). Each decision
        looked at has its lines taken again. It holds the mark exclusively from before it
        reads it: every decision under way (which holds it shared, `hold_mark`) is
        committed, and seen, first. A decision whose policy version cannot be read here
        is left (`UnknownPolicy`: logged, told to `recheck_refused`, its lines dropped so
        the next re-check checks it in full). The re-check commits with its mark
        (`directory_rechecked`), so one lost to a stop is done at the next start
        (`resume`), after the next input any worker handles (`_recheck_lagging`), or with
        the next directory batch, whichever comes first. Event ids derive from the last
        directory event looked at and the incident. Returns how many incidents changed
        (`known`: envelopes of the log already parsed, by id)."""
        changed, marked = 0, 0
        async with uow:
            done = await uow.directory_log.rechecked()
            self._rechecked = max(self._rechecked, done)  # committed before this unit
            view = self.org
            if done >= view.seq:
                return 0
            rows = [r for r in await uow.directory_log.after(done) if r[0] <= view.seq]
            if not rows:
                return 0
            cause_id = rows[-1][1]
            touched = {
                p
                for _, event_id, body in rows
                for p in _people_of((known or {}).get(event_id) or parse_envelope(body))
            }
            then = self.directory.at(done)
            # someone who joined counts: a line that stopped at him (a manager not in the
            # directory yet) goes on above him now
            moved = {
                p for p in touched if _line_facts(then.person(p)) != _line_facts(view.person(p))
            }
            await uow.directory_log.mark_rechecked(view.seq)
            marked = view.seq
            # every row locked (in order) before any append: an append holds the outbox
            # to the commit, as an amendment's does after its one row lock
            incidents = await uow.decisions.to_recheck(moved, since=done)
            decided = await uow.decisions.for_update_each(incidents)
            locked: list[_Kept] = []
            refused: list[str] = []
            for row in decided:
                try:
                    locked.append(await self._kept_of(uow, row))
                except UnknownPolicy as unknown:
                    # An older instance in a rolling upgrade: this decision alone is
                    # left, and the next re-check checks it in full.
                    refused.append(row.incident_id)
                    self.recheck_refused("unknown_policy")
                    log.warning(
                        "incident %s: re-check refused: %s; left for the next re-check",
                        row.incident_id,
                        unknown,
                    )
            await uow.decisions.forget_lines(refused)
            unchanged: dict[str, frozenset[str]] = {}
            for kept in locked:
                incident = kept.row.incident_id
                # an unresolved accused the directory knows now is resolved (reexclude)
                result = reexclude(kept.decision, [], view, kept.policy)
                reassigned = result.to_reassigned()
                if reassigned is None:
                    if result.decision.accused == kept.decision.accused:
                        # its lines may have changed all the same (someone on them moved)
                        unchanged[incident] = _lines(kept.decision, view)
                    else:  # resolved, nobody to remove (a rule the policy leaves out)
                        await self._keep(uow, incident, result.decision, kept.digest, view)
                    continue
                await self._keep(uow, incident, result.decision, kept.digest, view)
                outputs: Outputs = [reassigned, *_notified(reassigned.added, kept.digest)]
                events = self._made(
                    incident,
                    outputs,
                    datetime.now(UTC),
                    causationid=cause_id,
                    correlationid=await uow.recorder.correlation_of(incident),  # the report's
                    id_base=f"{cause_id}:{incident}",
                )
                await self._append_events(uow, incident, events)
                log.warning(
                    "incident %s: a directory change excluded %s",
                    incident,
                    ", ".join(x.principal for x in reassigned.removed),
                )
                changed += 1
            await uow.decisions.keep_lines(unchanged, seq=view.seq)
        self._rechecked = max(self._rechecked, marked)  # committed
        return changed

    async def _refresh_directory(
        self, uow: TriageUnitOfWork, known: Mapping[str, Envelope] | None = None
    ) -> None:
        """Catch up with directory events any triage worker recorded (`known`: envelopes
        already parsed, by id)."""
        rows = await uow.directory_log.after(self.directory.seq)
        for seq, event_id, body in rows:  # each event changes one person (or a chunk's)
            if seq <= self.directory.seq:
                continue  # folded by another catch-up while this one read the log
            envelope = known.get(event_id) if known else None
            self._unfrozen += self.directory.apply(envelope or parse_envelope(body), seq)
        if self._unfrozen >= FREEZE_AFTER:
            # A large directory is long-lived: without this, each full collection walks
            # every person again (0.3 to 3.5 s at 254,000 people on a loaded machine),
            # a pause in the middle of some report's decision (docs/scale.md).
            gc.freeze()
            self._unfrozen = 0

    # -- reports ------------------------------------------------------------------------

    async def decide(self, command: DecideReports, uow: TriageUnitOfWork) -> list[Envelope]:
        """Decide on each report not decided before, in one unit of work: its decision,
        its events. Returns the events appended."""
        async with uow:
            first = await uow.recorder.track_each(
                REPORTS_CONSUMER, [cause.tracked for cause, _ in command.reports]
            )
            todo = [item for item, new in zip(command.reports, first, strict=True) if new]
            if not todo:
                return []
            # before the directory is read: a re-check under way is waited for, and
            # one that starts now waits for this decision (docs/conflicts.md)
            await uow.directory_log.hold_mark()
            await self._refresh_directory(uow)
            now = datetime.now(UTC)
            org = self.org
            rows: list[NewDecision] = []
            outputs: list[tuple[Envelope, list[Envelope]]] = []
            for cause, report in todo:
                envelope = cause.envelope
                with cause.scope():  # the events continue the report's trace
                    # The report carries the reporter only as a pseudonym: whoever in the
                    # directory it matches is excluded. The match is never stored or
                    # published, only used.
                    decision = self.decision(envelope.subject, report, org, self.policy, now)
                    rows.append(
                        NewDecision(
                            envelope.subject,
                            report,
                            decision.policy_version,
                            _state(decision, report.report_digest),
                            _lines(decision, org),
                        )
                    )
                    produced = self._decided(decision, self.policy, report.report_digest)
                    outputs.append((envelope, self._events(envelope, produced, now)))
                    for note in decision.notes:
                        log.info("incident %s: %s", envelope.subject, note)
            await uow.decisions.add(rows, directory_seq=self.directory.seq, decided_at=now)
            versions = await uow.recorder.stream_versions([e.subject for e, _ in outputs])
            await uow.recorder.append_streams(
                [(e.subject, versions[e.subject], events) for e, events in outputs],
                topic_prefix=self.topic_prefix,
            )
        await self._recheck_lagging(uow)
        return [event for _, events in outputs for event in events]

    async def later(self, command: LaterCommand, uow: TriageUnitOfWork) -> list[Envelope]:
        """An input that changes a decision made before, in a unit of work of its own."""
        match command:
            case Reexclude():
                return await self.reexclude(command, uow)
            case DecideAgain():
                return await self.decide_again(command, uow)
            case Reroute():
                return await self.reroute(command, uow)

    async def reexclude(self, command: Reexclude, uow: TriageUnitOfWork) -> list[Envelope]:
        """An amendment: the exclusions run again with the accused it adds."""
        return await self._once(command, uow, self._reexcluded)

    async def decide_again(self, command: DecideAgain, uow: TriageUnitOfWork) -> list[Envelope]:
        """An independent-role holder confirmed the people: decide again with them."""
        return await self._once(command, uow, self._decided_again)

    async def reroute(self, command: Reroute, uow: TriageUnitOfWork) -> list[Envelope]:
        """A recusal or an ordered reassignment: `incident.reassigned.v1`, and the added
        told (`incident.notified.v1` at the level they were added for)."""
        return await self._once(command, uow, self._rerouted)

    async def _once(
        self,
        command: _Later,
        uow: TriageUnitOfWork,
        step: Callable[[TriageUnitOfWork, _Later, _Kept], Awaitable[list[Envelope]]],
    ) -> list[Envelope]:
        """A later input in its unit of work, in its cause's scope: tracked (a re-delivered
        one does nothing), then `step` with the incident's decision as it stands and the
        directory caught up."""
        cause = command.cause
        with cause.scope():
            async with uow:
                if not await self._first(uow, command.consumer, cause):
                    return []
                await uow.directory_log.hold_mark()  # before the row lock: lock order
                kept = await self._kept(uow, cause.envelope.subject)
                await self._refresh_directory(uow)
                events = await step(uow, command, kept)
        await self._recheck_lagging(uow)
        return events

    async def _reexcluded(
        self, uow: TriageUnitOfWork, command: Reexclude, kept: _Kept
    ) -> list[Envelope]:
        amended, subject = command.amended, command.cause.envelope.subject
        result = reexclude(
            kept.decision,
            amended.accused_added,
            self.org,
            kept.policy,
            named=amended.named_added,
            matches=amended.people_matches,
        )
        amendments = [
            *kept.row.amendments,
            {"accused": amended.accused_added, "named": amended.named_added},
        ]
        await uow.decisions.set_amendments(subject, amendments)
        await self._keep(uow, subject, result.decision, amended.report_digest, self.org)
        reassigned = result.to_reassigned()
        if reassigned is None:
            return []
        outputs: Outputs = [reassigned]
        outputs.extend(_notified(reassigned.added, amended.report_digest))
        return await self._append(uow, command.cause.envelope, outputs, datetime.now(UTC))

    async def _decided_again(
        self, uow: TriageUnitOfWork, command: DecideAgain, kept: _Kept
    ) -> list[Envelope]:
        confirmed, subject = command.confirmed, command.cause.envelope.subject
        if not may_confirm(kept.decision, confirmed.principal, self.org, kept.policy):
            log.warning(
                "incident %s: people confirmed by someone who holds no independent role or"
                " is excluded: ignored",
                subject,
            )
            return []
        report = ReportSubmitted.model_validate(kept.row.report)
        now = datetime.now(UTC)
        decision = self.decision(
            subject,
            confirmed_report(report, confirmed),
            self.org,
            kept.policy,
            now,
            prior=kept.decision,
            pseudonym=kept.row.reporter,
        )
        await self._keep(uow, subject, decision, kept.digest, self.org)
        for note in decision.notes:
            log.info("incident %s (revision %d): %s", subject, decision.revision, note)
        outputs = self._decided(decision, kept.policy, kept.digest)
        return await self._append(uow, command.cause.envelope, outputs, now)

    async def _rerouted(
        self, uow: TriageUnitOfWork, command: Reroute, kept: _Kept
    ) -> list[Envelope]:
        data, envelope = command.change, command.cause.envelope
        # A recusal or an order may reach anyone holding the chain's roles, and the
        # people an order adds: the reporter is looked for among them first.
        org = self.org
        added = data.to if isinstance(data, ReassignmentOrdered) else ()
        roles = [lv.role for lv in kept.decision.chain]
        reach = [p for role in dict.fromkeys(roles) for p in org.holders(role)]
        reporter = self.pseudonyms.match(
            envelope.subject,
            kept.row.reporter,
            reporter_candidates(org, kept.policy, None, (*reach, *added)),
        )
        decision = kept.decision
        if reporter is not None:
            decision = exclude_reporter(decision, reporter, org)
        result: Rerouting
        if isinstance(data, Recused):
            result = recuse(decision, data.principal, org, kept.policy)
        else:
            result = order_reassignment(decision, data, org, kept.policy)
        for note in result.notes:
            log.info("incident %s: %s", envelope.subject, note)
        if result.reassigned is None:
            log.warning(
                "incident %s: %s ignored: %s", envelope.subject, envelope.type, result.ignored
            )
            return []
        await self._keep(uow, envelope.subject, result.decision, kept.digest, org)
        outputs: Outputs = [result.reassigned]
        outputs.extend(
            Notified(principal=p, channel="triage", level=level, report_digest=kept.digest)
            for p, level in result.levels.items()
        )
        return await self._append(uow, envelope, outputs, datetime.now(UTC))

    # -- shared steps -------------------------------------------------------------------

    async def _keep(
        self,
        uow: TriageUnitOfWork,
        incident: str,
        decision: TriageDecision,
        digest: str,
        org: DirectoryView,
    ) -> None:
        """Keep the decision as it stands, with its lines in `org` (the directory it was
        made with)."""
        await uow.decisions.keep_state(
            incident, _state(decision, digest), lines=_lines(decision, org), seq=org.seq
        )

    async def _first(self, uow: TriageUnitOfWork, consumer: str, cause: Cause) -> bool:
        """Track the input; False if it was handled before (skip it)."""
        return (await uow.recorder.track_each(consumer, [cause.tracked]))[0]

    async def _kept(self, uow: TriageUnitOfWork, incident: str) -> _Kept:
        """The incident's decision as it stands (locked for this unit of work)."""
        row = await uow.decisions.for_update(incident)
        if row is None:
            raise LookupError(f"input for {incident} before its decision")
        return await self._kept_of(uow, row)

    async def _kept_of(self, uow: TriageUnitOfWork, row: StoredDecision) -> _Kept:
        """The decision of a locked row as it stands (`UnknownPolicy` if its policy
        version cannot be read here)."""
        policy = await self._policy_of(uow, row.policy_version)
        if row.state is not None:
            decision = TriageDecision.from_json(row.state["decision"])
            return _Kept(row, decision, policy, row.state["report_digest"])
        # Decided before the state was kept: rebuilt as the amendments left it.
        report = ReportSubmitted.model_validate(row.report)
        await self._refresh_directory(uow)
        org_then = self.directory.at(row.directory_seq)
        decision = self.decision(row.incident_id, report, org_then, policy, row.decided_at)
        for earlier in row.amendments:
            decision = reexclude(
                decision, earlier["accused"], self.org, policy, named=earlier["named"]
            ).decision
        return _Kept(row, decision, policy, report.report_digest)

    async def _policy_of(self, uow: TriageUnitOfWork, version: str) -> Policy:
        """A recorded policy version: one recorded after this instance started (by a
        newer instance) is read from `policies`; `UnknownPolicy` if it is not there or
        this version of triage cannot read it."""
        policy = self.policies.get(version)
        if policy is not None:
            return policy
        body = await uow.policies.body_of(version)
        if body is None:
            raise UnknownPolicy(f"policy version {version!r} is not recorded")
        try:
            policy = Policy.recorded(body)
        except ValueError as error:  # pydantic's ValidationError: a newer policy's form
            raise UnknownPolicy(
                f"policy version {version!r} cannot be read by this instance"
                f" ({error.__class__.__name__}): a newer triage recorded it"
            ) from None
        self.policies[version] = policy
        return policy

    def decision(
        self,
        incident_id: str,
        report: ReportSubmitted,
        org: Org,
        policy: Policy,
        now: datetime,
        *,
        prior: TriageDecision | None = None,
        pseudonym: str | None = None,
    ) -> TriageDecision:
        """`decide`, with the named reporter found among the few people who could be
        asked (`reporter_candidates`), never by a pseudonym per person of the directory;
        a level resolved outside the unit widens the search to its role's holders, and
        the decision is made again if the reporter is among them (docs/scale.md).

        `pseudonym`: the reporter's, when `report` does not carry it (a confirmation).
        The match is never stored or published, only used.
        """
        pseudonym = pseudonym or report.reporter
        unit, _source = incident_unit(report, org)
        scoped = reporter_candidates(org, policy, unit)
        reporter = self.pseudonyms.match(incident_id, pseudonym, scoped)
        decision = decide(report, org, policy, now, reporter_person=reporter, prior=prior)
        if reporter is None and pseudonym:
            tried = set(scoped)
            wider = [p for p in widened_candidates(decision, org) if p not in tried]
            reporter = self.pseudonyms.match(incident_id, pseudonym, wider)
            if reporter is not None:
                decision = decide(report, org, policy, now, reporter_person=reporter, prior=prior)
        return decision

    def _decided(self, decision: TriageDecision, policy: Policy, digest: str) -> Outputs:
        """`incident.triaged.v1`, then level 1's `assigned` and `notified`."""
        repeat = policy.severities[decision.severity].repeat_last_every
        triaged = decision.to_triaged().model_copy(
            update={"repeat_last_every": repeat, "report_digest": digest}
        )
        recipients = list(decision.first_recipients)
        if not recipients:  # escalation records nobody_eligible and asks the next level
            return [triaged]
        return [triaged, Assigned(level=1, principals=recipients), *_notified(recipients, digest)]

    def _events(self, cause: Envelope, outputs: Outputs, now: datetime) -> list[Envelope]:
        """Triage's events caused by `cause`, in the current trace, each with an id
        derived from the cause's id and the event's index (a re-delivered cause makes the
        same ids, which the event store refuses twice)."""
        return self._made(
            cause.subject,
            outputs,
            now,
            causationid=cause.id,
            correlationid=cause.correlationid or cause.id,
            id_base=cause.id,
        )

    def _made(
        self,
        subject: str,
        outputs: Outputs,
        now: datetime,
        *,
        causationid: str,
        correlationid: str | None,
        id_base: str,
    ) -> list[Envelope]:
        """Triage's events about `subject`, in the current trace, each with the id
        derived from `id_base` and its index."""
        return [
            make_event(
                data.TYPE,
                subject=subject,
                data=data,
                source=self.source,
                time=now,
                actor="system:triage",
                causationid=causationid,
                correlationid=correlationid,
                traceparent=self.traceparent(),
                event_id=str(uuid.uuid5(EVENT_IDS, f"{id_base}:{i}")),
            )
            for i, data in enumerate(outputs)
        ]

    async def _append(
        self, uow: TriageUnitOfWork, cause: Envelope, outputs: Outputs, now: datetime
    ) -> list[Envelope]:
        events = self._events(cause, outputs, now)
        await self._append_events(uow, cause.subject, events)
        return events

    async def _append_events(
        self, uow: TriageUnitOfWork, subject: str, events: list[Envelope]
    ) -> None:
        versions = await uow.recorder.stream_versions([subject])
        await uow.recorder.append_streams(
            [(subject, versions[subject], events)], topic_prefix=self.topic_prefix
        )


def _notified(principals: Sequence[str], digest: str) -> Outputs:
    """One `incident.notified.v1` per principal asked at level 1 by triage."""
    return [
        Notified(principal=p, channel="triage", level=1, report_digest=digest) for p in principals
    ]


def _state(decision: TriageDecision, digest: str) -> dict[str, Any]:
    """`decisions.state`: the decision and the digest of the report version it shows."""
    return {"decision": decision.to_json(), "report_digest": digest}


def _people_of(envelope: Envelope) -> list[str]:
    """The people a directory event changes (one, or a chunk's), from its data as kept
    (validated when it was consumed; an import's chunk is not parsed a second time)."""
    data = envelope.data if isinstance(envelope.data, Mapping) else {}
    listed = data.get("people") if envelope.type == PeopleImported.TYPE else [data]
    ids = (p.get("person_id") for p in listed or () if isinstance(p, Mapping))
    return [i for i in ids if isinstance(i, str)]


def _line_facts(person: OrgPerson | None) -> tuple[str | None, frozenset[str]] | None:
    """What of a person the exclusions walk: their manager and roles (None: unknown)."""
    return None if person is None else (person.manager, person.roles)


def _lines(decision: TriageDecision, org: Org) -> frozenset[str]:
    """The people whose manager or roles, if they changed, may change the decision's
    exclusions: each accused, routed (any level) and independent person, and everyone
    above them (`decision_lines`). Someone whose line changes has, on the line as it
    was, a first person whose manager changed: he is on the line before and after, so
    the lines kept as of the last re-check find every decision a change touches.

    Also each unresolved accused or named id (not a sealed name): the directory did not
    know him when it was kept, so his joining is a change to him, and the re-check then
    resolves him (`reexclude`)."""
    watched = (
        *decision.accused,
        *(p for level in decision.chain for p in level.recipients),
        *decision.independent,
    )
    unknown = (*decision.unresolved_accused, *decision.unresolved_named)
    lines = {*watched, *(p for p in unknown if not is_sealed(p))}
    for person in watched:
        lines.update(org.managers_above(person).managers)
    return frozenset(lines)
