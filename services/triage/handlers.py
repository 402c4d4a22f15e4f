"""What triage does with each event: keep the directory, decide, and change a decision.

- `directory.changes`: the directory, event-sourced (`directory_log`);
- `incident.reports`: a submitted report is decided (`incident.triaged.v1`, level 1's
  `incident.assigned.v1` and `incident.notified.v1`); an amendment re-runs the
  exclusions; a confirmation of the people by an independent-role holder decides again
  (the next `revision`);
- `incident.activity`: a recusal or an ordered reassignment gives
  `incident.reassigned.v1`; every other activity type is ignored.

Each input is handled in a transaction with its tracking row, so a re-delivered record
makes no second decision or notification; the submitted reports of a batch share one
transaction (one statement per table), and a failed batch is retried record by record
(`RecordProcessor`). Every event triage writes has an id derived from its cause's id,
so even a second worker racing on the same input cannot publish twice. Decisions
are pure (`services.domain.triage`); the decision as it stands is kept in
`decisions.state`, and this module only loads inputs and stores outputs
(docs/conflicts.md).
"""

from __future__ import annotations

import gc
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord

from services.domain.envelope import Envelope
from services.domain.events import (
    SUBMITTED,
    Assigned,
    EventData,
    InvalidEvent,
    Notified,
    PeopleConfirmed,
    ReassignmentOrdered,
    Recused,
    ReportAmended,
    ReportSubmitted,
    make_event,
    parse_envelope,
)
from services.domain.org import (
    DIRECTORY_EVENT_TYPES,
    DirectoryProjection,
    DirectoryView,
    Org,
    fold_directory,
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
from services.infra import eventstore
from services.infra.crypto import Pseudonyms
from services.infra.kafka import record_span
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent

log = logging.getLogger(__name__)
AMENDED = "incident.report.amended.v1"
CONFIRMED = "incident.people.confirmed.v1"
RECUSED = "incident.recused.v1"
ORDERED = "incident.reassignment.ordered.v1"
ACTIVITY: dict[str, type[Recused] | type[ReassignmentOrdered]] = {
    RECUSED: Recused,
    ORDERED: ReassignmentOrdered,
}
"""The activity types triage acts on; every other one is ignored."""
FREEZE_AFTER = 10_000
"""Directory events folded at once after which the heap is frozen (`gc.freeze`)."""
EVENT_IDS = uuid.UUID("0b7a4f0e-2c55-4e0a-9a53-7d1c3e2f6a18")
"""Namespace of the ids of triage's events: uuid5 of the cause's id and the index."""
LaterInput = ReportAmended | PeopleConfirmed | Recused | ReassignmentOrdered


class Kept:
    """An incident's decision as it stands, with what the service needs beside it."""

    def __init__(
        self, row: Mapping[str, Any], decision: TriageDecision, policy: Policy, digest: str
    ) -> None:
        self.row = row
        self.decision = decision
        self.policy = policy
        self.digest = digest


class PolicyConflict(RuntimeError):
    """The policy file reuses a version already recorded with other content."""


class Triage:
    """Triage's handlers and the state they share (the directory, the policies)."""

    def __init__(self, runtime: Runtime, policy: Policy, pseudonyms: Pseudonyms) -> None:
        self.runtime = runtime
        self.policy = policy
        self.pseudonyms = pseudonyms
        self.policies: dict[str, Policy] = {policy.version: policy}
        self.directory = DirectoryProjection()
        """The directory, folded incrementally from `directory_log` (docs/scale.md)."""

    @property
    def org(self) -> DirectoryView:
        """The directory as far as it was folded."""
        return self.directory.view()

    @property
    def directory_seq(self) -> int:
        return self.directory.seq

    async def start(self) -> None:
        """Record the policy version (refusing a changed file under an old version)."""
        # exclude_none: a policy without the (later) optional sections records as before
        body = self.policy.model_dump(mode="json", exclude_none=True)
        async with self.runtime.db.acquire() as conn:
            await conn.execute(
                "INSERT INTO policies (version, body) VALUES ($1, $2::jsonb)"
                " ON CONFLICT DO NOTHING",
                self.policy.version,
                json.dumps(body),
            )
            stored = await conn.fetchval(
                "SELECT body FROM policies WHERE version = $1", self.policy.version
            )
            if json.loads(stored) != body:
                raise PolicyConflict(
                    f"policy version {self.policy.version!r} was recorded with other content;"
                    " give the changed policy a new version"
                )
            for row in await conn.fetch("SELECT version, body FROM policies"):
                self.policies[row["version"]] = Policy.model_validate(json.loads(row["body"]))

    # -- directory --------------------------------------------------------------

    async def on_directory(self, records: Sequence[ConsumerRecord]) -> None:
        """Keep a batch of directory events in `directory_log`, in order: one
        transaction and two statements per batch, not per event (a directory import
        brings hundreds of thousands: docs/directory-sync.md)."""
        valid: list[tuple[ConsumerRecord, Envelope]] = []
        for record in records:
            try:
                envelope = parse_envelope(record.value or b"")
                if envelope.type not in DIRECTORY_EVENT_TYPES:
                    raise InvalidEvent(f"not a directory event: {envelope.type}")
                fold_directory([envelope])  # validates the data before it is kept
            except InvalidEvent as exc:
                await self.runtime.dead_letter_poison(record, exc)
                continue
            valid.append((record, envelope))
        if not valid:
            return
        async with self.runtime.db.acquire() as conn, conn.transaction():
            fresh = await eventstore.track_each(
                conn,
                "triage-directory",
                [(e.id, r.topic, r.partition, r.offset) for r, e in valid],
            )
            kept = [e for (_, e), new in zip(valid, fresh, strict=True) if new]
            await conn.execute(
                "INSERT INTO directory_log (event_id, body)"
                " SELECT * FROM unnest($1::uuid[], $2::bytea[]) ON CONFLICT DO NOTHING",
                [e.id for e in kept],
                [e.to_bytes() for e in kept],
            )

    async def _refresh_directory(self, conn: asyncpg.Connection) -> None:
        """Catch up with directory events any triage worker recorded."""
        rows = await conn.fetch(
            "SELECT seq, body FROM directory_log WHERE seq > $1 ORDER BY seq", self.directory_seq
        )
        for row in rows:  # each event changes one person, in place
            self.directory.apply(parse_envelope(bytes(row["body"])), int(row["seq"]))
        if len(rows) >= FREEZE_AFTER:
            # A large directory is long-lived: without this, each full collection walks
            # every person again (0.3 to 3.5 s at 254,000 people on a loaded machine),
            # a pause in the middle of some report's decision (docs/scale.md).
            gc.freeze()

    async def _directory_at(self, conn: asyncpg.Connection, seq: int) -> DirectoryView:
        """The directory as it was at `seq`: a view of the projection's history."""
        await self._refresh_directory(conn)
        return self.directory.at(seq)

    # -- reports ----------------------------------------------------------------

    async def on_report(self, records: Sequence[ConsumerRecord]) -> None:
        """Decide on the batch's submitted reports in one transaction (with their tracking
        rows); then each amendment and confirmation in a transaction of its own, in order."""
        submitted: list[tuple[ConsumerRecord, Envelope, ReportSubmitted]] = []
        later: list[tuple[ConsumerRecord, Envelope, LaterInput]] = []
        for record in records:
            try:
                envelope = parse_envelope(record.value or b"")
                if envelope.type == SUBMITTED:
                    submitted.append(
                        (record, envelope, ReportSubmitted.model_validate(envelope.data))
                    )
                elif envelope.type == AMENDED:
                    later.append((record, envelope, ReportAmended.model_validate(envelope.data)))
                elif envelope.type == CONFIRMED:
                    later.append((record, envelope, PeopleConfirmed.model_validate(envelope.data)))
                # reporter messages are not triage's business
            except (InvalidEvent, ValueError) as exc:
                await self.runtime.dead_letter_poison(record, exc)
        if submitted:
            async with self.runtime.db.acquire() as conn, conn.transaction():
                await self._decide(conn, submitted)
        await self._each(later, "triage-reports")

    async def on_activity(self, records: Sequence[ConsumerRecord]) -> None:
        """Recusals and ordered reassignments, each in a transaction of its own, in order.

        Every other activity type is ignored without reading its data; a record that is
        not an event is left to escalation and audit, which dead-letter what they cannot
        read on this topic. A recusal or order whose data is invalid is dead-lettered.
        """
        todo: list[tuple[ConsumerRecord, Envelope, LaterInput]] = []
        for record in records:
            try:
                envelope = parse_envelope(record.value or b"")
            except InvalidEvent:
                continue
            model = ACTIVITY.get(envelope.type)
            if model is None:
                continue
            try:
                todo.append((record, envelope, model.model_validate(envelope.data)))
            except ValueError as exc:
                await self.runtime.dead_letter_poison(record, exc)
        await self._each(todo, "triage-activity")

    async def _each(
        self, inputs: Sequence[tuple[ConsumerRecord, Envelope, LaterInput]], consumer: str
    ) -> None:
        for record, envelope, data in inputs:
            with record_span(record):
                async with self.runtime.db.acquire() as conn, conn.transaction():
                    if await self._track(conn, record, envelope, consumer):
                        await self._later(conn, envelope, data)

    async def _later(self, conn: asyncpg.Connection, envelope: Envelope, data: LaterInput) -> None:
        match data:
            case ReportAmended():
                await self._reexclude(conn, envelope, data)
            case PeopleConfirmed():
                await self._confirm(conn, envelope, data)
            case Recused() | ReassignmentOrdered():
                await self._reroute(conn, envelope, data)

    async def _track(
        self,
        conn: asyncpg.Connection,
        record: ConsumerRecord,
        env: Envelope,
        consumer: str = "triage-reports",
    ) -> bool:
        return await eventstore.track(
            conn, consumer, env.id, record.topic, record.partition, record.offset
        )

    async def _decide(
        self,
        conn: asyncpg.Connection,
        reports: Sequence[tuple[ConsumerRecord, Envelope, ReportSubmitted]],
    ) -> None:
        """Decide on each report not decided before: its decision row, its events."""
        first = await eventstore.track_each(
            conn,
            "triage-reports",
            [(e.id, r.topic, r.partition, r.offset) for r, e, _ in reports],
        )
        todo = [item for item, new in zip(reports, first, strict=True) if new]
        if not todo:
            return
        await self._refresh_directory(conn)
        now = datetime.now(UTC)
        rows, outputs = [], []
        for record, envelope, report in todo:
            with record_span(record):  # the events continue the report's trace
                # The report carries the reporter only as a pseudonym: whoever in the
                # directory it matches is excluded. The match is never stored or
                # published, only used.
                decision = self._decision(envelope.subject, report, self.org, self.policy, now)
                rows.append((envelope.subject, report, decision))
                produced = self._decided(decision, self.policy, report.report_digest)
                outputs.append((envelope, self._events(envelope, produced, now)))
                for note in decision.notes:
                    log.info("incident %s: %s", envelope.subject, note)
        await conn.execute(
            "INSERT INTO decisions (incident_id, report, reporter, policy_version,"
            " directory_seq, decided_at, state)"
            " SELECT i, r::jsonb, p, v, $5, $6, s::jsonb"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $7::text[])"
            " AS x (i, r, p, v, s)",
            [subject for subject, _, _ in rows],
            [json.dumps(report.model_dump(mode="json")) for _, report, _ in rows],
            [report.reporter for _, report, _ in rows],
            [decision.policy_version for _, _, decision in rows],
            self.directory_seq,
            now,
            [_state(decision, report.report_digest) for _, report, decision in rows],
        )
        versions = await eventstore.stream_versions(conn, [e.subject for e, _ in outputs])
        await eventstore.append_streams(
            conn,
            [(e.subject, versions[e.subject], events) for e, events in outputs],
            topic_prefix=self.runtime.settings.kafka_topic_prefix,
        )

    def _decided(
        self, decision: TriageDecision, policy: Policy, digest: str
    ) -> list[tuple[str, EventData]]:
        """`incident.triaged.v1`, then level 1's `assigned` and `notified`."""
        repeat = policy.severities[decision.severity].repeat_last_every
        triaged = decision.to_triaged().model_copy(
            update={"repeat_last_every": repeat, "report_digest": digest}
        )
        return [("incident.triaged.v1", triaged), *self._first_level(decision, digest)]

    def _first_level(self, decision: TriageDecision, digest: str) -> list[tuple[str, EventData]]:
        recipients = list(decision.first_recipients)
        if not recipients:
            return []  # escalation records nobody_eligible and asks the next level
        out: list[tuple[str, EventData]] = [
            ("incident.assigned.v1", Assigned(level=1, principals=recipients))
        ]
        return out + _notified(recipients, digest)

    async def _kept(self, conn: asyncpg.Connection, incident: str) -> Kept:
        """The incident's decision as it stands (locked for this transaction)."""
        row = await conn.fetchrow(
            "SELECT * FROM decisions WHERE incident_id = $1 FOR UPDATE", incident
        )
        if row is None:
            raise LookupError(f"input for {incident} before its decision")
        policy = self.policies[row["policy_version"]]
        report = ReportSubmitted.model_validate(json.loads(row["report"]))
        if row["state"] is not None:
            state = json.loads(row["state"])
            decision = TriageDecision.from_json(state["decision"])
            return Kept(row, decision, policy, state["report_digest"])
        # Decided before the state was kept: rebuilt as the amendments left it.
        org_then = await self._directory_at(conn, row["directory_seq"])
        decision = self._decision(incident, report, org_then, policy, row["decided_at"])
        for earlier in json.loads(row["amendments"]):
            decision = reexclude(
                decision, earlier["accused"], self.org, policy, named=earlier["named"]
            ).decision
        return Kept(row, decision, policy, report.report_digest)

    async def _keep(
        self, conn: asyncpg.Connection, incident: str, decision: TriageDecision, digest: str
    ) -> None:
        await conn.execute(
            "UPDATE decisions SET state = $2::jsonb WHERE incident_id = $1",
            incident,
            _state(decision, digest),
        )

    async def _reexclude(
        self, conn: asyncpg.Connection, envelope: Envelope, amended: ReportAmended
    ) -> None:
        kept = await self._kept(conn, envelope.subject)
        await self._refresh_directory(conn)
        result = reexclude(
            kept.decision,
            amended.accused_added,
            self.org,
            kept.policy,
            named=amended.named_added,
            matches=amended.people_matches,
        )
        amendments = json.loads(kept.row["amendments"])
        amendments.append({"accused": amended.accused_added, "named": amended.named_added})
        await conn.execute(
            "UPDATE decisions SET amendments = $2::jsonb WHERE incident_id = $1",
            envelope.subject,
            json.dumps(amendments),
        )
        await self._keep(conn, envelope.subject, result.decision, amended.report_digest)
        reassigned = result.to_reassigned()
        if reassigned is None:
            return
        outputs: list[tuple[str, EventData]] = [("incident.reassigned.v1", reassigned)]
        outputs.extend(_notified(reassigned.added, amended.report_digest))
        await self._append(conn, envelope, outputs, datetime.now(UTC))

    async def _confirm(
        self, conn: asyncpg.Connection, envelope: Envelope, confirmed: PeopleConfirmed
    ) -> None:
        """An independent-role holder confirmed the people: decide again with them."""
        kept = await self._kept(conn, envelope.subject)
        await self._refresh_directory(conn)
        if not may_confirm(kept.decision, confirmed.principal, self.org, kept.policy):
            log.warning(
                "incident %s: people confirmed by someone who holds no independent role or"
                " is excluded: ignored",
                envelope.subject,
            )
            return
        report = ReportSubmitted.model_validate(json.loads(kept.row["report"]))
        now = datetime.now(UTC)
        decision = self._decision(
            envelope.subject,
            confirmed_report(report, confirmed),
            self.org,
            kept.policy,
            now,
            prior=kept.decision,
            pseudonym=kept.row["reporter"],
        )
        await self._keep(conn, envelope.subject, decision, kept.digest)
        for note in decision.notes:
            log.info("incident %s (revision %d): %s", envelope.subject, decision.revision, note)
        outputs = self._decided(decision, kept.policy, kept.digest)
        await self._append(conn, envelope, outputs, now)

    async def _reroute(
        self, conn: asyncpg.Connection, envelope: Envelope, data: Recused | ReassignmentOrdered
    ) -> None:
        """A recusal or an ordered reassignment: `incident.reassigned.v1`, and the added
        told (`incident.notified.v1` at the level they were added for)."""
        kept = await self._kept(conn, envelope.subject)
        await self._refresh_directory(conn)
        # A recusal or an order may reach anyone holding the chain's roles, and the
        # people an order adds: the reporter is looked for among them first.
        org = self.org
        added = data.to if isinstance(data, ReassignmentOrdered) else ()
        roles = [lv.role for lv in kept.decision.chain]
        reach = [p for role in dict.fromkeys(roles) for p in org.holders(role)]
        reporter = self.pseudonyms.match(
            envelope.subject,
            kept.row["reporter"],
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
            return
        await self._keep(conn, envelope.subject, result.decision, kept.digest)
        outputs: list[tuple[str, EventData]] = [("incident.reassigned.v1", result.reassigned)]
        outputs.extend(
            (
                "incident.notified.v1",
                Notified(principal=p, channel="triage", level=level, report_digest=kept.digest),
            )
            for p, level in result.levels.items()
        )
        await self._append(conn, envelope, outputs, datetime.now(UTC))

    def _decision(
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

    def _events(
        self,
        cause: Envelope,
        outputs: list[tuple[str, EventData]],
        now: datetime,
    ) -> list[Envelope]:
        """Triage's events caused by `cause`, in the current span's trace, each with an id
        derived from the cause's id and the event's index (a re-delivered cause makes the
        same ids, which the event store refuses twice)."""
        return [
            make_event(
                type_,
                subject=cause.subject,
                data=data,
                source=self.runtime.source,
                time=now,
                actor="system:triage",
                causationid=cause.id,
                correlationid=cause.correlationid or cause.id,
                traceparent=current_traceparent(),
                event_id=str(uuid.uuid5(EVENT_IDS, f"{cause.id}:{i}")),
            )
            for i, (type_, data) in enumerate(outputs)
        ]

    async def _append(
        self,
        conn: asyncpg.Connection,
        cause: Envelope,
        outputs: list[tuple[str, EventData]],
        now: datetime,
    ) -> None:
        version = await eventstore.stream_version(conn, cause.subject)
        await eventstore.append(
            conn,
            cause.subject,
            version,
            self._events(cause, outputs, now),
            topic_prefix=self.runtime.settings.kafka_topic_prefix,
        )


def _notified(principals: Sequence[str], digest: str) -> list[tuple[str, EventData]]:
    """One `incident.notified.v1` per principal asked at level 1 by triage."""
    return [
        (
            "incident.notified.v1",
            Notified(principal=p, channel="triage", level=1, report_digest=digest),
        )
        for p in principals
    ]


def _state(decision: TriageDecision, digest: str) -> str:
    """`decisions.state`: the decision and the digest of the report version it shows."""
    return json.dumps({"decision": decision.to_json(), "report_digest": digest})
