"""Handlers' actions on an incident, as use cases: one unit of work each, no HTTP.

`act(...)` is the one way an action runs: decide, record, commit, and only then return.
Each action is a `Build` (a pure function of the `Context`: the incident's events, its
fold, the access decision, the conflict facts) that returns the events to record and
the result. The routes (`services.intake.handlers`) and the console pages are thin
adapters; the `ActionError`s raised here are mapped to HTTP there, in one place.

Access is decided in two steps, so that a refusal costs the same whatever the
incident, and whether it exists or not:

1. The caller's own row of the routing projection (one primary-key lookup in intake's
   access table, `services.intake.routing.caller_routing`). An excluded principal, a
   principal with no row and no standing role, and any caller on an unknown id are
   refused here, before the incident's stream is read: the same statements, the same
   answer (404 `No such incident.`), the same record.
2. Only a caller this row (or a standing role) lets through has the stream loaded and
   folded, and the exclusions intake derives at once checked: triage's conflict rules on
   the incident's own events (also after an amendment or a confirmation), the reporter,
   and whether the caller answers to an accused (her management chain, read at request
   time). A conflicted caller is refused here, as excluded, with the same answer,
   and (but for the reporter, whom it would name) her exclusion is written into the
   access table, so that her next refusal is the first step's.

Every refusal is recorded as `incident.access.denied.v1` (subject: the incident id asked
for) on the stream `access-denied:<id>`, never on the incident's stream: a probe adds
nothing to the incident's fold, and the next refusal appends at the stream's version (an
index lookup), so refusals do not grow the cost of later ones. The recorded `reason` is
one word for every conflict rule (`excluded`); the rule intake found in the incident's
events is recorded in `rule`, sealed with the incident's key.

The conflict actions (issue 18): `recuse` (a routed principal declares a conflict: she
is excluded, rule `recused`, from this commit on), `reassign` (a holder of the policy's
`conflicts.reassign_roles` names who holds the incident now; each must be a person of
the directory that no exclusion of the incident keeps out and who answers to no
accused), and `confirm_people` (a routed holder of an independent role settles who a
conflict-unresolved report concerns). Recusals and ordered reassignments are applied to
the routing projection in the transaction that records them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from services.domain.access import (
    Action,
    Allowed,
    Refused,
    Routing,
    conflict_unresolved,
    conflicted,
    decide,
    reassignment_refusals,
    roles_of,
)
from services.domain.envelope import Envelope
from services.domain.events import (
    AccessDenied,
    Event,
    PeopleConfirmed,
    ReassignmentOrdered,
    Recused,
    StatusChanged,
    make_event,
)
from services.domain.incident import IncidentState, fold
from services.domain.policy import Policy
from services.infra import eventstore
from services.infra.auth import Principal
from services.infra.crypto import CryptoError, IncidentKey
from services.infra.keystore import KeyStore
from services.infra.recorder import PostgresUnitOfWork
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent
from services.intake.routing import Facts, access_of, apply_event, caller_routing, exclude

ATTEMPTS = 10
"""Appends retried on a stream version conflict before answering 503."""

REPORTER = "reporter"
"""Triage's rule for the reporter (never written in clear where it would name her)."""
ROUTING_TYPES = frozenset({Recused.TYPE, ReassignmentOrdered.TYPE})
"""Intake's own events the routing projection learns in the transaction that records them."""


# What a use case answers when it does not succeed ---------------------------------


class ActionError(Exception):
    """A use case's answer other than success; `services.intake.handlers` maps it to HTTP.
    A subclass that always says the same declares it as its `detail`."""

    status = 500
    title = "Internal error"
    detail = "Internal error."

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = self.detail if detail is None else detail
        super().__init__(self.detail)
        self.extra = extra


class NotFound(ActionError):
    """No such incident, or the caller may not know of it (the two look the same)."""

    status, title, detail = 404, "Not found", "No such incident."


class Forbidden(ActionError):
    """The caller knows of the incident (routed, or a reader) but may not do this."""

    status, title, detail = 403, "Forbidden", "You may not do this on this incident."


class NotNow(ActionError):
    """The incident's state does not allow the action now (closed, erased, settled...)."""

    status, title = 409, "Conflict"


class Erased(NotNow):
    title = "Erased"


class Rejected(ActionError):
    """The request names people it may not (unknown, excluded): `errors` says which."""

    status, title = 422, "Invalid request"


class Busy(ActionError):
    status, title, detail = 503, "Busy", "The incident kept changing; retry."


# The one way an action runs -------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What an allowed action sees: the stream as loaded, its fold, the decision, the
    routing it was decided on and the conflict facts (with the `people` asked for)."""

    runtime: Runtime
    incident_id: str
    principal: Principal
    events: list[Envelope]
    state: IncidentState
    allowed: Allowed
    key: IncidentKey | None = None
    routing: Routing = field(default_factory=Routing)
    facts: Facts | None = None
    policy: Policy | None = None

    def seal(self, field_name: str, value: str) -> str:
        """A value sealed with the incident's key; NotNow once the incident was erased."""
        if self.key is None:
            raise Erased("This incident's content was erased: nothing can be added.")
        return self.key.seal(field_name, value)

    def event(self, data: Event) -> Envelope:
        """The event `data` of this incident, by the caller, in the current trace."""
        return incident_event(
            self.runtime,
            self.incident_id,
            self.events,
            data,
            self.principal.id,
            traceparent=current_traceparent(),
        )


def incident_event(
    runtime: Runtime,
    incident_id: str,
    events: Sequence[Envelope],
    data: Event,
    actor: str,
    *,
    traceparent: str | None,
) -> Envelope:
    """A new event of an incident whose stream is `events`: by `actor`, now, in the
    incident's correlation."""
    correlation = events[0].correlationid or events[0].id
    return new_event(
        runtime, incident_id, data, actor, correlationid=correlation, traceparent=traceparent
    )


def new_event(
    runtime: Runtime, subject: str, data: Event, actor: str, **envelope: str | None
) -> Envelope:
    """The event `data` (of its class's type) about `subject`, by `actor`, now, from this
    service; `envelope`: its other attributes (`correlationid`, `traceparent`)."""
    return make_event(
        data.TYPE,
        subject=subject,
        data=data,
        source=runtime.source,
        time=datetime.now(UTC),
        actor=actor,
        **envelope,
    )


T = TypeVar("T")
Build = Callable[[Context], tuple[list[Envelope], T]]


async def act(
    runtime: Runtime,
    keys: KeyStore,
    principal: Principal,
    incident_id: str,
    action: Action,
    build: Build[T],
    *,
    policy: Policy,
    people: Sequence[str] = (),
) -> T:
    """Decide and record one action; returns what `build` made, after the commit.

    `people`: person ids the action names (a reassignment's, a confirmation's), loaded
    with their management chains into `Context.facts`. Raises NotFound or Forbidden
    (after the refusal committed), Busy, or what `build` raises (nothing is recorded).
    """
    for _attempt in range(ATTEMPTS):
        try:
            # a refused append ends the transaction anyway (and the attempt is retried):
            # no savepoint around it
            async with PostgresUnitOfWork(runtime.db, savepoint=False) as uow:
                result = await _attempt_once(
                    runtime, keys, policy, uow, incident_id, principal, action, build, people
                )
        except eventstore.ConcurrencyError:
            continue
        # committed: the recorded events (or the refusal) are durable from here on
        if isinstance(result, Refused):
            raise NotFound() if result.conceals else Forbidden()
        return result
    raise Busy()


async def _attempt_once(
    runtime: Runtime,
    keys: KeyStore,
    policy: Policy,
    uow: PostgresUnitOfWork,
    incident_id: str,
    principal: Principal,
    action: Action,
    build: Build[T],
    people: Sequence[str],
) -> T | Refused:
    """One attempt in one unit of work: the events through its recorder, the routing
    and refusal rows on its connection."""
    conn = uow.conn
    grants = roles_of(policy)
    # 1. the caller's row only: the refusal of the excluded, the unrelated and the
    # unknown id does exactly this, and records, whatever the incident
    verdict = decide(
        await caller_routing(conn, incident_id, principal.id),
        principal.id,
        principal.roles,
        action,
        grants,
    )
    if isinstance(verdict, Refused):
        await record_refusal(runtime, conn, incident_id, principal, action, verdict.detail)
        return verdict
    # 2. the caller may know of it: the stream, and the conflicts it carries itself
    stored = await uow.recorder.load(incident_id)
    events = [s.envelope for s in stored]
    version = stored[-1].version if stored else 0
    state = fold(incident_id, events)
    if not events or state.category is None:
        refused = Refused(action, "no_such_incident")
        await record_refusal(runtime, conn, incident_id, principal, action, refused.detail)
        return refused
    access = await access_of(
        conn,
        incident_id,
        events,
        keys,
        policy,
        asking=principal.id,
        category=state.category,
        people=people,
    )
    routing, facts = access.routing, access.facts
    verdict = decide(routing, principal.id, principal.roles, action, grants)
    try:  # an incident from before #8 gets its key now; an erased one stays keyless
        key: IncidentKey | None = await keys.create(conn, incident_id)
    except CryptoError:
        key = None
    if isinstance(verdict, Refused):
        rule = access.at_once.get(principal.id)
        sealed = key.seal("rule", rule) if key is not None and rule is not None else None
        denied = await record_refusal(
            runtime, conn, incident_id, principal, action, verdict.detail, sealed
        )
        if rule is not None and rule != REPORTER:
            # Kept in the access table, so her next refusal is the first step's (an
            # indexed lookup). Not the reporter's: that row would name her in clear, and
            # she knows of the incident anyway.
            await exclude(conn, incident_id, principal.id, rule, denied)
        return verdict
    context = Context(
        runtime, incident_id, principal, events, state, verdict, key, routing, facts, policy
    )
    new, result = build(context)
    await uow.recorder.append_streams(
        [(incident_id, version, new)], topic_prefix=runtime.settings.kafka_topic_prefix
    )
    for event in new:
        if event.type in ROUTING_TYPES:
            await apply_event(conn, event)
        if event.type == StatusChanged.TYPE and event.data.get("status") == "closed":
            await start_retention(conn, incident_id, state.category, event.time)
    return result


async def start_retention(
    conn: asyncpg.Connection, incident_id: str, category: str | None, closed_at: datetime
) -> None:
    """The incident was closed: its retention runs from now (inside the caller's txn)."""
    await conn.execute(
        "INSERT INTO retention (incident_id, category, closed_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (incident_id) DO UPDATE SET closed_at = EXCLUDED.closed_at",
        incident_id,
        category or "",
        closed_at,
    )


def refusal_stream(incident_id: str) -> str:
    """The stream an incident's refusals are recorded on (never the incident's own)."""
    return f"access-denied:{incident_id}"


async def record_refusal(
    runtime: Runtime,
    conn: asyncpg.Connection,
    incident_id: str,
    principal: Principal,
    action: str,
    reason: str,
    sealed_rule: str | None = None,
) -> Envelope:
    """Record `incident.access.denied.v1` on `access-denied:<id>` (inside the caller's
    transaction): the same statements for a real incident and an unknown id. It carries
    the incident's correlation id, when there is an incident."""
    correlation = await eventstore.correlation_of(conn, incident_id)
    data = AccessDenied(principal=principal.id, action=action, reason=reason, rule=sealed_rule)
    event = new_event(
        runtime,
        incident_id,
        data,
        principal.id,
        correlationid=correlation,
        traceparent=current_traceparent(),
    )
    stream = refusal_stream(incident_id)
    version = await eventstore.stream_version(conn, stream)
    await eventstore.append(
        conn, stream, version, [event], topic_prefix=runtime.settings.kafka_topic_prefix
    )
    return event


# The conflict actions -------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """A conflict action recorded: its event, and the incident's status (unchanged)."""

    event: Envelope
    status: str


def _open(context: Context) -> None:
    if context.state.status == "closed":
        raise NotNow("The incident is closed.", current_status="closed")


def recuse(reason: str | None) -> Build[Done]:
    """`incident.recused.v1`: the caller (routed to the incident) declares a conflict."""

    def build(context: Context) -> tuple[list[Envelope], Done]:
        _open(context)
        sealed = None if reason is None else context.seal("reason", reason)
        event = context.event(Recused(principal=context.principal.id, reason=sealed))
        return [event], Done(event, context.state.status)

    return build


def reassign(to: Sequence[str], remove: Sequence[str], reason: str) -> Build[Done]:
    """`incident.reassignment.ordered.v1`, once every person of `to` may hold it.

    Raises Rejected (422, `errors` per person) for a person of `to` the directory does
    not know or any exclusion keeps out, for an unknown person in `remove`, or one in
    both lists.
    """

    def build(context: Context) -> tuple[list[Envelope], Done]:
        _open(context)
        facts, policy = context.facts, context.policy
        assert facts is not None and policy is not None  # act sets them
        # the people named are candidates: triage's rules as it will check them again
        named = conflicted(
            facts.found,
            facts.reporter,
            facts.org,
            policy,
            category=context.state.category,
            candidates=to,
        )
        refusals = reassignment_refusals(
            to, context.routing.excluding(named), facts.found, facts.org
        )
        errors = [
            {"field": f"to.{to.index(p)}", "message": _WHY[why]} for p, why in refusals.items()
        ]
        errors += [
            {"field": f"remove.{i}", "message": _WHY["unknown"]}
            for i, p in enumerate(remove)
            if not facts.org.knows(p)
        ]
        errors += [
            {"field": f"remove.{i}", "message": "also in `to`"}
            for i, p in enumerate(remove)
            if p in to
        ]
        _refuse(errors)
        event = context.event(
            ReassignmentOrdered(
                principal=context.principal.id,
                to=list(to),
                remove=list(remove),
                reason=context.seal("reason", reason),
            ),
        )
        return [event], Done(event, context.state.status)

    return build


def _refuse(errors: list[dict[str, str]]) -> None:
    """Rejected, with each field's problem, when there is any."""
    if errors:
        raise Rejected("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)


_WHY = {
    "unknown": "not a person of the directory",
    "excluded": "may not hold this incident (a conflict of interest)",
}


def confirm_people(
    accused: Sequence[str], named: Sequence[str], outsiders: int, note: str | None
) -> Build[Done]:
    """`incident.people.confirmed.v1`, while the report is conflict-unresolved.

    Raises NotNow when it is not (any more), Rejected for a person id the directory
    does not know.
    """

    def build(context: Context) -> tuple[list[Envelope], Done]:
        _open(context)
        facts = context.facts
        assert facts is not None  # act loads them
        if not conflict_unresolved(context.events, facts.org.knows):
            raise NotNow("The people of this report are settled: there is nothing to confirm.")
        errors = [
            {"field": f"{name}.{i}", "message": _WHY["unknown"]}
            for name, ids in (("accused", accused), ("named", named))
            for i, p in enumerate(ids)
            if not facts.org.knows(p)
        ]
        _refuse(errors)
        event = context.event(
            PeopleConfirmed(
                principal=context.principal.id,
                accused=list(dict.fromkeys(accused)),
                named=list(dict.fromkeys(named)),
                outsiders=outsiders,
                note=None if note is None else context.seal("note", note),
            ),
        )
        return [event], Done(event, context.state.status)

    return build
