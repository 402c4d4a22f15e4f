"""Intake's use cases (issue 23's application layer): a command in, a result out.

Reports have one path, whichever door they come in by. `POST /v1/reports` and its
harassment alias, the console's report form (which posts through the same route
function), `POST /v1/events` and the `incident.inbound` consumer each validate the
report with the one model (`services.domain.reports.ReportRequest`), build a
`TakeReport` (the report, who sends it, through which channel) and call `take_report`
(an inbound event through `take_inbound`, which adds its idempotency and incident id
and then calls `take_report`). The category is checked here, once; the refusals are
the exceptions below and the domain's (`UnknownCategory`, `PeopleRefused`,
`InboundRefused`), which `services.intake.api.report_problem` maps to HTTP in one place
and `refusal_reason` words for a dead letter.

Nothing here touches asyncpg, HTTP or Kafka. A report works through two ports:

- `ReportReads`: what is checked before anything is written (an earlier answer to the
  Idempotency-Key, the reporter and the people in the directory, an existing incident);
- `ReportWriter.submit`: the write, which shares a transaction with the reports that
  arrive while the previous one commits (intake's group commit): the writer runs
  `write_reports` for the batch inside one `ReportUnitOfWork`, the recorder port's
  `UnitOfWork` plus intake's report rows (`ReportRows`). The event, its outbox row, the
  receipt, the reporter's list row and the Idempotency-Key answer commit together.

The decision deadline (SPEC invariants 1 and 8) has its use case here too:
`open_incidents` starts each report's clock (`DecisionClocks.start`, in the report's
transaction) and `raise_overdue_decisions` raises `incident.decision.overdue.v1` for the
reports triage has not decided within the limit, once each, behind a
`DecisionUnitOfWork` (the watcher in `services.intake.deadlines` is its thin adapter).

The PostgreSQL implementations are in `services.intake.service` and
`services.intake.deadlines`; the decision clocks in memory in `services.intake.memory`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from services.domain.envelope import Envelope
from services.domain.events import DecisionOverdue, InvalidEvent, make_event
from services.domain.inbound import authorize, incident_id_for, report_of
from services.domain.policy import Policy
from services.domain.receipts import new_receipt, new_secret, request_digest
from services.domain.reports import (
    NameRow,
    People,
    PeopleRefused,
    Protector,
    ReportInput,
    UnknownCategory,
    check_category,
    resolve_people,
    submit_report,
    to_look_up,
)
from services.infra.recorder import ConcurrencyError, UnitOfWork

ANONYMOUS_ACTOR: Final = "reporter:anonymous"
REPLAY_NOTE: Final = (
    "This answer repeats an earlier one for the same Idempotency-Key. The secret was"
    " shown once, in that first answer, and is not stored: it cannot be shown again."
)


# -- commands, results and refusals ----------------------------------------------------


@dataclass(frozen=True)
class IdempotencyKey:
    """An Idempotency-Key in its scope (a keyed pseudonym of the caller, or "anonymous").

    `key_digest` is the SHA-256 of the header value: the value itself is never stored.
    Make one with `IntakeService.idempotency_key`.
    """

    scope: str
    key_digest: str
    request_hash: str

    @property
    def lock_id(self) -> int:
        """A 64-bit advisory lock id for this (scope, key)."""
        raw = hashlib.sha256(f"idempotency\0{self.scope}\0{self.key_digest}".encode()).digest()
        return int.from_bytes(raw[:8], "big", signed=True)


@dataclass(frozen=True)
class TakeReport:
    """The command of every report: the validated report and the facts of its door.

    `incident_id` (an inbound event's derived id) replaces a random one; without
    `issue_receipt` an anonymous report gets no receipt and secret (an inbound report on
    Kafka: the answer travels on a topic); `causationid` is the event it came from;
    `check_reporter` asks the directory whether a reporter a system names exists.
    """

    report: ReportInput
    reporter: str | None
    actor: str
    channel: str
    idempotency: IdempotencyKey | None = None
    check_reporter: bool = False
    incident_id: str | None = None
    issue_receipt: bool = True
    causationid: str | None = None
    traceparent: str | None = None


@dataclass(frozen=True)
class TakeInbound:
    """An inbound event (docs/inbound.md) of an authenticated registered system."""

    event: dict[str, Any]
    system_id: str
    principal: str
    scopes: frozenset[str]
    channel: str
    issue_receipt: bool
    traceparent: str | None = None


@dataclass(frozen=True)
class NewIncident:
    """What opening one incident needs (see `write_reports`)."""

    incident_id: str
    report: ReportInput
    reporter: str | None
    channel: str
    actor: str
    traceparent: str | None
    causationid: str | None = None
    people: People = field(default_factory=People)
    """The accused and named, resolved (`resolve_people`)."""


@dataclass(frozen=True)
class NewReport:
    """A report waiting for its shared transaction: its incident, the receipt and the
    argon2id hash of its secret if anonymous, its Idempotency-Key if it came with one."""

    incident: NewIncident
    receipt: str | None
    secret_hash: str | None
    idempotency: IdempotencyKey | None = None
    stored: dict[str, Any] | None = None
    """The answer stored with the Idempotency-Key (repeated to a later request)."""


@dataclass(frozen=True)
class Submission:
    """The answer to a report: HTTP status and JSON body; `replayed` for a repeated key."""

    status: int
    body: dict[str, Any]
    replayed: bool


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with another request body."""


class UnknownReporter(ValueError):
    """A system named a reporter the directory does not know."""


REFUSALS = (InvalidEvent, UnknownCategory, UnknownReporter, PeopleRefused, IdempotencyConflict)
"""What taking a report may refuse with (`InboundRefused` is an `InvalidEvent`)."""


def refusal_reason(exc: Exception) -> str:
    """The reason of a refused report, for a dead letter or a rejection answer: where
    and what, never the input."""
    if isinstance(exc, InvalidEvent):
        return exc.reason
    if isinstance(exc, UnknownCategory | UnknownReporter):
        return f"invalid report: {exc}"
    if isinstance(exc, PeopleRefused):
        return f"invalid report: {exc.where}: {exc.reason}"
    if isinstance(exc, IdempotencyConflict):
        return "this event id was sent before with other data: use a new id"
    raise TypeError(exc)


# -- ports -----------------------------------------------------------------------------


Answered = dict[tuple[str, str], tuple[str, Submission]]
"""(scope, key digest) -> (request hash, the answer replayed)."""


class ReportReads(Protocol):
    """What a report is checked against before anything is written."""

    async def answers(self, keys: Sequence[IdempotencyKey]) -> Answered:
        """The answers stored with these keys (an expired one is forgotten)."""
        ...

    async def person_exists(self, person_id: str) -> bool: ...

    async def incident_exists(self, incident_id: str) -> bool: ...

    async def directory_people(
        self, ids: Sequence[str], norms: Sequence[str]
    ) -> tuple[Collection[str], Iterable[NameRow]]:
        """Which of `ids` are person ids, and the names whose normal form is in `norms`."""
        ...


class ReportRows(Protocol):
    """Intake's rows of a report, inside the unit of work's transaction."""

    async def lock_answers(self, keys: Sequence[IdempotencyKey]) -> Answered:
        """Lock the keys (all at once, in one order) and read their stored answers."""
        ...

    async def create_keys(self, incident_ids: Sequence[str]) -> list[Protector]:
        """A new data key per incident (what seals its report)."""
        ...

    async def add_incidents(self, incidents: Sequence[NewIncident]) -> None:
        """Their retention rows, and a named reporter's list of her reports."""
        ...

    async def add_receipts(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """(receipt, incident id, argon2id hash of the secret) per anonymous report."""
        ...

    async def add_answers(self, rows: Sequence[tuple[IdempotencyKey, dict[str, Any]]]) -> None:
        """The answer to repeat for each Idempotency-Key."""
        ...


@dataclass(frozen=True)
class Undecided:
    """A report triage has not decided, past its decision deadline."""

    incident_id: str
    submitted_at: datetime


class DecisionClocks(Protocol):
    """Each report's decision deadline (`decision_clocks`), inside a unit of work.

    Content-free: an incident id and times. A report's clock starts with the report,
    stops at triage's first decision (`decided`), and is raised at most once
    (`mark_raised`); a raised clock still counts as overdue until it is decided.
    """

    async def start(self, clocks: Sequence[tuple[str, datetime]]) -> None:
        """(incident id, submission time) of new reports."""
        ...

    async def decided(self, decisions: Sequence[tuple[str, datetime]]) -> int:
        """Stop these clocks (incident id, decision time; a later decision changes
        nothing); how many of them had been raised as overdue."""
        ...

    async def due(self, submitted_by: datetime, limit: int) -> list[Undecided]:
        """Undecided, unraised reports submitted at or before `submitted_by`, oldest
        first, at most `limit`, each locked until the unit ends; a clock another unit
        holds is skipped (`FOR UPDATE SKIP LOCKED`), so several instances never raise
        one twice."""
        ...

    async def mark_raised(self, incident_ids: Sequence[str], at: datetime) -> None: ...

    async def earliest_waiting(self) -> datetime | None:
        """The submission time of the oldest undecided report not raised yet."""
        ...

    async def overdue_now(self) -> int:
        """Reports raised as overdue and still undecided."""
        ...


class ReportUnitOfWork(UnitOfWork, Protocol):
    """The recorder, intake's report rows and the reports' decision clocks, in one
    transaction."""

    @property
    def reports(self) -> ReportRows: ...

    @property
    def decisions(self) -> DecisionClocks: ...


class DecisionUnitOfWork(UnitOfWork, Protocol):
    """The recorder and the decision clocks, in one transaction."""

    @property
    def decisions(self) -> DecisionClocks: ...


class ReportWriter(Protocol):
    """Runs `write_reports` for a report, in a transaction it may share with others."""

    async def submit(self, report: NewReport) -> Submission | IdempotencyConflict | None: ...


@dataclass(frozen=True)
class Intake:
    """What the report use cases need besides their ports: the policy, this service's
    event source and topic prefix, and the argon2id hash of a receipt's secret."""

    policy: Policy
    source: str
    topic_prefix: str
    hash_secret: Callable[[str], Awaitable[str]]
    key_for: Callable[[str | None, str, str], IdempotencyKey]
    """`IntakeService.idempotency_key`: (principal, header, request digest) -> key."""


# -- use cases -------------------------------------------------------------------------


def _earlier(answered: Answered, key: IdempotencyKey) -> Submission | None:
    found = answered.get((key.scope, key.key_digest))
    if found is None:
        return None
    request_hash, submission = found
    if request_hash != key.request_hash:
        raise IdempotencyConflict
    return submission


async def take_report(
    command: TakeReport, reads: ReportReads, writer: ReportWriter, intake: Intake
) -> Submission:
    """Open an incident for a report (every door: see the module doc).

    An anonymous report (no reporter) gets a receipt and a one-time secret unless the
    command says otherwise; only the secret's argon2id hash is stored. With an
    Idempotency-Key, the answer is stored in the same transaction as the event; a
    request with the same key and body gets it again (the secret replaced by null and a
    note), another body raises IdempotencyConflict. Raises UnknownCategory,
    PeopleRefused (see `resolve_people`), and UnknownReporter when `check_reporter` and
    the directory does not know the reporter.
    """
    report, reporter = command.report, command.reporter
    if command.idempotency is not None:
        earlier = _earlier(await reads.answers([command.idempotency]), command.idempotency)
        if earlier is not None:
            return earlier
    if command.check_reporter and reporter and not await reads.person_exists(reporter):
        raise UnknownReporter(f"the directory has no person {reporter!r}")
    check_category(report, intake.policy)  # once, before anything is hashed or written
    ids, norms = to_look_up(report)
    people = People()
    if ids or norms:
        known, names = await reads.directory_people(ids, norms)
        people = resolve_people(report, known_ids=known, names=names, reporter=reporter)
    anonymous = reporter is None and command.issue_receipt
    incident_id = command.incident_id or str(uuid.uuid4())
    receipt = secret = secret_hash = None
    if anonymous:
        receipt, secret = new_receipt(), new_secret()
        secret_hash = await intake.hash_secret(secret)
    answer = {"incident_id": incident_id, "receipt": receipt, "secret": None}
    stored = {**answer, "note": REPLAY_NOTE} if anonymous else answer
    incident = NewIncident(
        incident_id,
        report,
        reporter,
        command.channel,
        command.actor,
        command.traceparent,
        command.causationid,
        people,
    )
    outcome = await writer.submit(
        NewReport(incident, receipt, secret_hash, command.idempotency, stored)
    )
    if isinstance(outcome, IdempotencyConflict):
        raise outcome
    if outcome is not None:  # a request with this key was answered first
        return outcome
    return Submission(202, {**answer, "secret": secret}, replayed=False)


async def take_inbound(
    command: TakeInbound, reads: ReportReads, writer: ReportWriter, intake: Intake
) -> Submission:
    """An inbound event (docs/inbound.md), taken as `take_report` takes a report.

    The actor is the system; a `reporter` it names only within its scope. The incident
    id derives from the system and the event id, and the event id is the
    Idempotency-Key: a resend answers the first answer (one incident), the same id with
    other data raises IdempotencyConflict. Raises InboundRefused too.
    """
    envelope, request = report_of(command.event)
    reporter = request.reporter
    authorize(command.system_id, command.scopes, reporter)
    key = intake.key_for(
        command.principal, f"ce:{envelope.id}", request_digest("inbound", envelope.data)
    )
    incident_id = incident_id_for(command.system_id, envelope.id)
    earlier = _earlier(await reads.answers([key]), key)
    if earlier is None and await reads.incident_exists(incident_id):
        # a resend after its stored answer expired: the same incident, which exists;
        # the receipt was given the first time only
        earlier = Submission(
            202, {"incident_id": incident_id, "receipt": None, "secret": None}, True
        )
    if earlier is not None:
        return earlier
    return await take_report(
        TakeReport(
            request.report(),
            reporter=reporter,
            actor=command.principal,
            channel=command.channel,
            idempotency=key,
            check_reporter=True,
            incident_id=incident_id,
            issue_receipt=command.issue_receipt,
            causationid=envelope.id,
            traceparent=command.traceparent,
        ),
        reads,
        writer,
        intake,
    )


async def write_reports(
    uow: ReportUnitOfWork, reports: Sequence[NewReport], intake: Intake, now: datetime
) -> list[Submission | IdempotencyConflict | None]:
    """Inside the unit of work: open the incidents, store the receipts and the
    Idempotency-Key answers. Per report: None when it was written, else the answer of
    an earlier request with its key (or IdempotencyConflict), and nothing written.

    The keys are locked first, in one order, so two batches never wait on each other's
    keys; a key repeated within the batch answers as its first.
    """
    rows = uow.reports
    answered = await rows.lock_answers([r.idempotency for r in reports if r.idempotency])
    outcomes: list[Submission | IdempotencyConflict | None] = []
    written: list[NewReport] = []
    for report in reports:
        key = report.idempotency
        if key is not None:
            try:
                earlier = _earlier(answered, key)
            except IdempotencyConflict as exc:
                outcomes.append(exc)
                continue
            if earlier is not None:
                outcomes.append(earlier)
                continue
            stored = Submission(202, report.stored or {}, replayed=True)
            answered[(key.scope, key.key_digest)] = (key.request_hash, stored)
        outcomes.append(None)
        written.append(report)
    if not written:
        return outcomes
    await open_incidents(uow, [r.incident for r in written], intake, now)
    receipts = [
        (r.receipt, r.incident.incident_id, r.secret_hash or "")
        for r in written
        if r.receipt is not None
    ]
    if receipts:
        await rows.add_receipts(receipts)
    keyed = [(r.idempotency, r.stored or {}) for r in written if r.idempotency is not None]
    if keyed:
        await rows.add_answers(keyed)
    return outcomes


async def open_incidents(
    uow: ReportUnitOfWork, incidents: Sequence[NewIncident], intake: Intake, now: datetime
) -> list[Envelope]:
    """Inside the unit of work: each incident's key, its sealed submitted event (stored
    and queued), its retention row and its named reporter's row."""
    keys = await uow.reports.create_keys([i.incident_id for i in incidents])
    events = [
        submit_report(
            i.report,
            intake.policy,
            incident_id=i.incident_id,
            reporter=i.reporter,
            channel=i.channel,
            actor=i.actor,
            source=intake.source,
            now=now,
            protect=key,
            people=i.people,
            traceparent=i.traceparent,
            causationid=i.causationid,
        )
        for i, key in zip(incidents, keys, strict=True)
    ]
    await uow.recorder.append_streams(  # a refusal ends the transaction
        [(e.subject, 0, [e]) for e in events], topic_prefix=intake.topic_prefix
    )
    await uow.reports.add_incidents(incidents)
    await uow.decisions.start([(e.subject, e.time) for e in events])
    return events


# -- the decision deadline -------------------------------------------------------------

DECISION_EVENT_IDS: Final = uuid.UUID("5d0f2f0e-8a3c-4b7e-9c41-6f2d1a7b9e30")
"""The namespace of overdue events' ids: uuid5 of `decision-overdue:<incident>`, one id
per report whichever instance or attempt raises it (the event store refuses a second)."""
DECISION_ACTOR: Final = "system:intake"
RAISE_ATTEMPTS: Final = 3
"""Units of work tried when a report's stream moved on meanwhile (a reporter's message)."""


@dataclass(frozen=True)
class RaiseOverdue:
    """Raise the decision deadlines passed by `now` (at most `limit` in one unit)."""

    now: datetime
    within: timedelta
    source: str
    topic_prefix: str = ""
    limit: int = 100


@dataclass(frozen=True)
class OverdueDecisions:
    """What a round raised, how many reports are overdue and undecided now (the gauge),
    and when the next waiting report falls due (None: none waits; the round's `now`
    when it left some for the next unit)."""

    raised: list[Envelope]
    overdue_now: int
    next_due: datetime | None


def overdue_event_id(incident_id: str) -> str:
    """The id of a report's one `incident.decision.overdue.v1`."""
    return str(uuid.uuid5(DECISION_EVENT_IDS, f"decision-overdue:{incident_id}"))


async def raise_overdue_decisions(
    command: RaiseOverdue, uow: DecisionUnitOfWork
) -> OverdueDecisions:
    """Append `incident.decision.overdue.v1` (incident id and times, nothing else) to the
    stream of each report submitted more than `within` ago that triage has not decided,
    and mark its clock raised, in one unit of work: once per report, whichever instance
    takes it (`DecisionClocks.due` skips what another holds; the event id is derived
    from the incident). Nobody in the directory is told: triage, which knows the
    conflicts, did not decide, so nobody can be chosen safely; operations hear of it
    through the adapter's metrics and log. A stream that moved on meanwhile is retried."""
    for attempt in range(RAISE_ATTEMPTS):
        try:
            return await _raise_overdue(command, uow)
        except ConcurrencyError:
            if attempt == RAISE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _raise_overdue(command: RaiseOverdue, uow: DecisionUnitOfWork) -> OverdueDecisions:
    async with uow:
        clocks, recorder = uow.decisions, uow.recorder
        late = await clocks.due(command.now - command.within, command.limit)
        events: list[Envelope] = []
        if late:
            ids = [u.incident_id for u in late]
            versions = await recorder.stream_versions(ids)
            for u in late:
                events.append(
                    make_event(
                        DecisionOverdue.TYPE,
                        subject=u.incident_id,
                        data=DecisionOverdue(
                            submitted_at=u.submitted_at, due_at=u.submitted_at + command.within
                        ),
                        source=command.source,
                        time=command.now,
                        actor=DECISION_ACTOR,
                        correlationid=await recorder.correlation_of(u.incident_id),
                        event_id=overdue_event_id(u.incident_id),
                    )
                )
            await recorder.append_streams(
                [(e.subject, versions[e.subject], [e]) for e in events],
                topic_prefix=command.topic_prefix,
            )
            await clocks.mark_raised(ids, command.now)
        overdue = await clocks.overdue_now()
        earliest = await clocks.earliest_waiting()
    if len(late) == command.limit:
        next_due: datetime | None = command.now
    else:
        next_due = None if earliest is None else earliest + command.within
    return OverdueDecisions(events, overdue, next_due)
