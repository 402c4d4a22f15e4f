"""Who each incident is routed to, learned from `incident.triage`, `incident.escalations`
and the breach notices of `incident.activity`.

The `intake-routing` consumer keeps the `routing` table (migration 0003):

- `incident.triaged.v1`: each `excluded` principal is recorded with its rule;
- `incident.assigned.v1`: the `principals` are routed at `level`;
- `incident.reassigned.v1`: the `removed` principals stop being routed and become
  excluded (with their rule); the `added` ones are routed, at the level of those they
  replace (else the incident's current level, else 1);
- `incident.escalated.v1`: the `recipients` are routed at `level`;
- `incident.notified.v1` of the `breach` channel (on `incident.activity`): a legal
  clock's breach tells the current level, the next level and the independent roles
  (services/domain/escalation.py, `clock_recipients`); each recipient is routed at the
  notice's `level` like an escalation's, so the people told of a breach can open what
  they were told of. An exclusion still wins (`Routing`, `actions.decide`); other
  notices (asks, reminders) go to people already routed and change nothing here;
- `incident.triaged.v1` of a later `revision` (after the people were confirmed): its
  exclusions are added and its new level 1 is routed (nobody routed before is unrouted,
  nobody excluded is ever let back in);
- intake's own `incident.recused.v1` (the principal is excluded, rule `recused`) and
  `incident.reassignment.ordered.v1` (`remove` excluded, rule `reassigned`; `to` routed
  at their level): applied by intake in the transaction that records them, so the
  recused is refused from that commit on, before triage answers.

The table is intake's access table: `caller_routing` reads one principal's row by its
primary key, which is all a refusal needs (`services.intake.actions`); its cost does not
depend on the incident's size, nor on whether the incident exists.

`access_of` is what an access decision takes once the caller may act: this
projection plus the exclusions intake derives at once from the incident's own events and
its directory (`services.domain.access.conflicted`, triage's rules, and whether the
caller answers to an accused), so the conflicted are refused before triage's decision
arrives, and even if it never does.

Triage's first `incident.triaged.v1` of an incident also stops its decision clock
(`decision_clocks`, `services.intake.deadlines`) in the same transaction; when the
report had been raised as overdue, `on_overdue_decided` is called after the commit
(the watcher's gauge drops at once).

The events that say where an incident stands (decided, escalated, stalled, a clock
breached) are also kept as they are, in `incident_progress`, so intake's pages show the
status audit shows (`services.intake.progress`, services/domain/status.py).

Other event types of these topics are tracked and ignored. An exclusion is never
lifted by a later event, so records of the two topics may arrive in any order without
ever widening access. Each record is tracked by its event id in the same transaction
as its effect: a re-delivered record changes nothing. A record that is not a valid
event goes to `incident.deadletter` with its bytes and the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord

from services.domain.access import (
    Implicated,
    Routing,
    RoutingRow,
    conflicted,
    implicated,
)
from services.domain.directory import Person
from services.domain.envelope import Envelope
from services.domain.escalation import BREACH_CHANNEL
from services.domain.events import (
    Assigned,
    Escalated,
    Exclusion,
    InvalidEvent,
    Notified,
    Reassigned,
    ReassignmentOrdered,
    Recused,
    Triaged,
    data_of,
    parse_envelope,
)
from services.domain.org import OrgSnapshot
from services.domain.policy import Policy
from services.domain.status import FROM_TRIAGE_AND_ESCALATION
from services.infra import eventstore
from services.infra.kafka import BatchHandler
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime
from services.intake.deadlines import PostgresDecisionClocks

CONSUMER = "intake-routing"

_ROUTE = """
INSERT INTO routing (incident_id, principal, level, routed, routed_at, source_event)
VALUES ($1, $2, $3, true, $4, $5)
ON CONFLICT (incident_id, principal) DO UPDATE SET
    level = CASE WHEN routing.routed THEN least(routing.level, excluded.level)
                 ELSE excluded.level END,
    routed_at = CASE WHEN routing.routed THEN routing.routed_at ELSE excluded.routed_at END,
    routed = true,
    source_event = excluded.source_event,
    updated_at = clock_timestamp()
"""

_EXCLUDE = """
INSERT INTO routing (incident_id, principal, routed, excluded_rule, excluded_at, source_event)
VALUES ($1, $2, false, $3, $4, $5)
ON CONFLICT (incident_id, principal) DO UPDATE SET
    routed = CASE WHEN $6 THEN false ELSE routing.routed END,
    excluded_rule = coalesce(routing.excluded_rule, excluded.excluded_rule),
    excluded_at = coalesce(routing.excluded_at, excluded.excluded_at),
    source_event = excluded.source_event,
    updated_at = clock_timestamp()
"""


async def apply_event(conn: asyncpg.Connection, envelope: Envelope) -> None:
    """Project one valid event into the routing table (inside the caller's transaction)."""
    incident = envelope.subject
    data = data_of(envelope)
    at = envelope.time
    match data:
        case Triaged():
            await _many(
                conn,
                _EXCLUDE,
                [(incident, x.principal, x.rule, at, envelope.id, False) for x in data.excluded],
            )
            if data.revision > 1 and data.chain:  # a re-decision: its level 1 is asked now
                first = data.chain[0]
                await _many(
                    conn,
                    _ROUTE,
                    [(incident, p, first.level, at, envelope.id) for p in first.recipients],
                )
        case Recused():
            await _many(
                conn, _EXCLUDE, [(incident, data.principal, "recused", at, envelope.id, True)]
            )
        case ReassignmentOrdered():
            await _replace(conn, envelope, data.remove, "reassigned", data.to)
        case Assigned():
            await _many(
                conn, _ROUTE, [(incident, p, data.level, at, envelope.id) for p in data.principals]
            )
        case Reassigned():
            await _replace(
                conn, envelope, [x.principal for x in data.removed], data.removed, data.added
            )
        case Escalated():
            await _many(
                conn, _ROUTE, [(incident, p, data.level, at, envelope.id) for p in data.recipients]
            )
        case Notified(channel=channel) if channel == BREACH_CHANNEL:
            await _many(conn, _ROUTE, [(incident, data.principal, data.level, at, envelope.id)])
        case _:
            return


async def _replace(
    conn: asyncpg.Connection,
    envelope: Envelope,
    gone: Sequence[str],
    rules: Sequence[Exclusion] | str,
    added: Sequence[str],
) -> None:
    """Unroute and exclude `gone` (each with its rule, or all with one), and route `added`
    at the level of those they replace (else the incident's current level, else 1)."""
    incident, at = envelope.subject, envelope.time
    level = await conn.fetchval(
        "SELECT coalesce("
        " (SELECT min(level) FROM routing WHERE incident_id = $1 AND routed"
        "  AND principal = ANY($2::text[])),"
        " (SELECT max(level) FROM routing WHERE incident_id = $1 AND routed),"
        " 1)",
        incident,
        list(gone),
    )
    excluded = (
        [(p, rules) for p in gone]
        if isinstance(rules, str)
        else [(x.principal, x.rule) for x in rules]
    )
    await _many(
        conn, _EXCLUDE, [(incident, p, rule, at, envelope.id, True) for p, rule in excluded]
    )
    await _many(conn, _ROUTE, [(incident, p, level, at, envelope.id) for p in added])


async def exclude(
    conn: asyncpg.Connection, incident_id: str, principal: str, rule: str, cause: Envelope
) -> None:
    """Record an exclusion intake found itself (routing unchanged; never lifted)."""
    await conn.execute(_EXCLUDE, incident_id, principal, rule, cause.time, cause.id, False)


async def _many(conn: asyncpg.Connection, statement: str, rows: list[tuple[Any, ...]]) -> None:
    """One statement for each row, in order, pipelined (one round trip, not one per row)."""
    if rows:
        await conn.executemany(statement, rows)


async def routing_of(conn: asyncpg.Connection, incident_id: str) -> Routing:
    """An incident's routing, as the access rules take it."""
    rows = await conn.fetch(
        "SELECT principal, level, routed, excluded_rule FROM routing WHERE incident_id = $1",
        incident_id,
    )
    return _routing(rows)


async def caller_routing(conn: asyncpg.Connection, incident_id: str, principal: str) -> Routing:
    """One principal's routing of an incident (one primary-key lookup): all `decide`
    reads for her, and the same work for an incident that does not exist."""
    rows = await conn.fetch(
        "SELECT principal, level, routed, excluded_rule FROM routing"
        " WHERE incident_id = $1 AND principal = $2",
        incident_id,
        principal,
    )
    return _routing(rows)


def _routing(rows: Sequence[asyncpg.Record]) -> Routing:
    return Routing.from_rows(
        RoutingRow(
            principal=r["principal"],
            level=r["level"],
            routed=r["routed"],
            excluded_rule=r["excluded_rule"],
        )
        for r in rows
    )


# The people the conflict rules need: the implicated and every manager above them. The
# rows are carried through the recursion, each step one primary-key lookup (the LIMIT
# keeps the planner from turning the step into a hash join over the whole table, as it
# did with a final `people WHERE person_id IN (chain)`: 5 ms at 20,000 people, 0.07 ms
# at 13, and 1 ms at 3,000 with a plain join; issue 21, docs/scale.md). UNION stops
# loops.
_CHAIN = """
WITH RECURSIVE chain AS (
    SELECT person_id, unit, manager_id, roles FROM people WHERE person_id = ANY($1::text[])
    UNION
    SELECT m.person_id, m.unit, m.manager_id, m.roles
    FROM chain c CROSS JOIN LATERAL (
        SELECT person_id, unit, manager_id, roles FROM people p
        WHERE p.person_id = c.manager_id LIMIT 1
    ) m
)
SELECT person_id, unit, manager_id, roles FROM chain
"""


@dataclass(frozen=True)
class Facts:
    """What the conflict rules need of one incident: who its events implicate, who
    reported (None if anonymous), and the directory around them (see `facts_of`)."""

    found: Implicated
    reporter: str | None
    org: OrgSnapshot


async def facts_of(
    conn: asyncpg.Connection,
    incident_id: str,
    events: Sequence[Envelope],
    keys: KeyStore,
    people: Sequence[str] = (),
) -> Facts:
    """The incident's conflict facts; the directory holds the implicated, `people` and
    every manager above them (a chain each: never a scan of the organisation)."""
    found = implicated(events)
    wanted = list(dict.fromkeys((*found.people, *people)))
    rows = await conn.fetch(_CHAIN, wanted) if wanted else []
    org = OrgSnapshot.from_people(
        Person(id=r["person_id"], unit=r["unit"], manager=r["manager_id"], roles=r["roles"])
        for r in rows
    )
    reporter = await keys.reporter_of(conn, incident_id, events)
    return Facts(found, reporter, org)


@dataclass(frozen=True)
class Access:
    """What an access decision of a caller who may act takes (see `access_of`): the
    routing with the conflicts known at once, those conflicts (person -> first rule),
    and the facts they came from."""

    routing: Routing
    at_once: dict[str, str]
    facts: Facts


async def access_of(
    conn: asyncpg.Connection,
    incident_id: str,
    events: Sequence[Envelope],
    keys: KeyStore,
    policy: Policy,
    *,
    asking: str | None = None,
    category: str | None = None,
    people: Sequence[str] = (),
) -> Access:
    """The projection plus the conflicts known at once, `asking` being a candidate
    (whether she answers to an accused, where `category`'s rules say); the directory of
    the facts also holds `people` and the managers above them."""
    routing = await routing_of(conn, incident_id)
    candidates = (asking,) if asking else ()
    facts = await facts_of(conn, incident_id, events, keys, (*candidates, *people))
    at_once = conflicted(
        facts.found,
        facts.reporter,
        facts.org,
        policy,
        category=category,
        candidates=candidates,
    )
    return Access(routing.excluding(at_once), at_once, facts)


async def keep_progress(conn: asyncpg.Connection, events: Sequence[Envelope]) -> None:
    """Keep the events that say where an incident stands (`incident_progress`, one
    statement for the batch), for `services.intake.progress`."""
    kept = [e for e in events if e.type in FROM_TRIAGE_AND_ESCALATION]
    if kept:
        await conn.execute(
            "INSERT INTO incident_progress (event_id, incident_id, time, body)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::jsonb[])"
            " ON CONFLICT (event_id) DO NOTHING",
            [e.id for e in kept],
            [e.subject for e in kept],
            [e.time for e in kept],
            [e.model_dump_json() for e in kept],
        )


def routing_handler(
    runtime: Runtime, on_overdue_decided: Callable[[], None] = lambda: None
) -> BatchHandler:
    """The batch handler of the `intake-routing` consumer: one transaction per batch,
    the batch's tracking rows in one statement, then each new event in order, then the
    decision clocks the batch's decisions stop (one statement)."""

    async def handle(records: Sequence[ConsumerRecord]) -> None:
        raised = 0
        async with runtime.db.acquire() as conn, conn.transaction():
            valid = []
            for record in records:
                envelope = await _parse(runtime, conn, record)
                if envelope is not None:
                    valid.append((record, envelope))
            first = await eventstore.track_each(
                conn, CONSUMER, [(e.id, r.topic, r.partition, r.offset) for r, e in valid]
            )
            fresh = [e for (_, e), new in zip(valid, first, strict=True) if new]
            for envelope in fresh:
                await apply_event(conn, envelope)
            await keep_progress(conn, fresh)
            raised = await PostgresDecisionClocks(conn).decided(
                [(e.subject, e.time) for e in fresh if e.type == Triaged.TYPE]
            )
        if raised:
            on_overdue_decided()

    return handle


async def _parse(
    runtime: Runtime, conn: asyncpg.Connection, record: ConsumerRecord
) -> Envelope | None:
    """The record's valid event, or None once it is dead-lettered (once) with its reason."""
    raw = record.value or b""
    try:
        envelope = parse_envelope(raw)
        data_of(envelope)  # validates the payload of a catalog type, or raises
    except InvalidEvent as exc:
        key = (
            f"rejected:{record.topic}:{record.partition}:{record.offset}:"
            + hashlib.sha256(raw).hexdigest()[:16]
        )
        if await eventstore.track(
            conn, CONSUMER, key, record.topic, record.partition, record.offset
        ):
            await runtime.dead_letter(
                conn,
                reason=exc.reason,
                original=raw,
                source_topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        return None
    return envelope
