"""Audit's conflict check: an auditor excluded from an incident is refused it here too.

Audit reads every incident from its ledger, so it applies the same rule intake does
(`services.domain.access`): a principal is excluded if the ledger's own events exclude
them (triage's `incident.triaged.v1`, `incident.reassigned.v1`, folded with the domain
code), or if triage's conflict rules exclude them from what the incident's events carry
in clear (accused, named), its reporter (opened with the incident's key, which audit
holds, and compared, never shown) and the accused's managers in the directory as the
ledger has it (else the seed file). So the check holds before triage's decision
reaches the ledger, and if it never does.

A refusal answers exactly the 404 of an incident the ledger does not know, and is
recorded first as `incident.access.denied.v1` (reason `excluded:conflict`) on the
stream `audit-denied:<incident id>`, published like audit's other events, so the
ledger itself holds the attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from services.audit.ledger import person_data
from services.domain.access import CONFLICT, conflicted, implicated
from services.domain.directory import DirectoryFile, Person
from services.domain.envelope import Envelope
from services.domain.events import (
    AccessDenied,
    IdentityDisclosed,
    ReadRecorded,
    Viewed,
    make_event,
)
from services.domain.incident import fold
from services.domain.knowledge import LedgerEvent
from services.domain.org import OrgSnapshot
from services.domain.policy import Policy
from services.infra import eventstore
from services.infra.http import Problem
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent

MAX_CHAIN = 100
"""Managers walked above one accused person at most (the data may loop)."""
NOT_FOUND_DETAIL = "No events of this incident are in the ledger."
OwnEvent = AccessDenied | IdentityDisclosed | Viewed | ReadRecorded
TYPES: dict[type, str] = {
    ReadRecorded: "audit.read.recorded.v1",
    AccessDenied: "incident.access.denied.v1",
    IdentityDisclosed: "incident.identity.disclosed.v1",
    Viewed: "incident.viewed.v1",
}


async def person_in_ledger(
    conn: asyncpg.Connection, directory: DirectoryFile, person_id: str
) -> Person | None:
    """A person as the ledger has them (`person_data`), else as the seed file has them."""
    data = await person_data(conn, person_id)
    if data is None:
        return next((p for p in directory.people if p.id == person_id), None)
    return Person(
        id=data["person_id"],
        unit=data.get("unit"),
        manager=data.get("manager_id"),
        roles=list(data.get("roles") or ()),
    )


async def _org(
    conn: asyncpg.Connection,
    directory: DirectoryFile,
    people: Sequence[str],
    known: dict[str, Person | None] | None = None,
) -> OrgSnapshot:
    """The implicated people and every manager above them, as far as the data goes.

    `known` memoises the people looked up (one request judging many incidents meets
    the same managers again and again).
    """
    found: dict[str, Person] = {}
    known = {} if known is None else known
    for start in people:
        current: str | None = start
        for _step in range(MAX_CHAIN):
            if current is None or current in found:
                break
            if current not in known:
                known[current] = await person_in_ledger(conn, directory, current)
            person = known[current]
            if person is None:
                break
            found[current] = person
            current = person.manager
    return OrgSnapshot.from_people(found.values())


async def excluded(
    conn: asyncpg.Connection,
    keys: KeyStore,
    policy: Policy,
    directory: DirectoryFile,
    incident_id: str,
    entries: Sequence[LedgerEvent],
    known: dict[str, Person | None] | None = None,
    *,
    reader: str | None = None,
) -> frozenset[str]:
    """Everyone excluded from the incident, by the ledger's decisions or the report itself
    (`known`: people already looked up, see `_org`).

    `reader`, the principal asking, is also checked against the rules that walk up from
    a candidate (`accused_reports`: an auditor who answers to the accused, directly or
    through his management line), as intake checks the principal asking.
    """
    events: list[Envelope] = [e.envelope for e in entries if e.envelope.subject == incident_id]
    state = fold(incident_id, events)
    found = implicated(events)
    candidates = () if reader is None else (reader,)
    org = await _org(conn, directory, (*found.people, *candidates), known)
    reporter = await keys.reporter_of(conn, incident_id, events)
    rules = conflicted(found, reporter, org, policy, category=state.category, candidates=candidates)
    return state.excluded | frozenset(rules)


async def record(
    runtime: Runtime,
    conn: asyncpg.Connection,
    stream_kind: str,
    entries: Sequence[LedgerEvent],
    data: OwnEvent,
    principal: str,
) -> None:
    """Queue one event of audit's own about the incident (in the caller's transaction),
    on the stream `<stream_kind>:<incident id>`, in the incident's correlation."""
    first = entries[0].envelope
    stream = f"{stream_kind}:{first.subject}"
    correlation = first.correlationid or first.id
    await append_own(runtime, conn, stream, first.subject, data, principal, correlation)


async def append_own(
    runtime: Runtime,
    conn: asyncpg.Connection,
    stream: str,
    subject: str,
    data: OwnEvent,
    principal: str,
    correlationid: str | None = None,
) -> None:
    """Queue one event of audit's own on `stream` (in the caller's transaction).

    Published like every stored event, so it reaches the ledger and is signed with the
    rest. The stream is locked first, so two requests at once both append (one after
    the other) instead of one failing on the stream version.
    """
    event = make_event(
        TYPES[type(data)],
        subject=subject,
        data=data,
        source=runtime.source,
        time=datetime.now(UTC),
        actor=principal,
        correlationid=correlationid,
        traceparent=current_traceparent(),
    )
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", stream)
    version = await eventstore.stream_version(conn, stream)
    await eventstore.append(
        conn, stream, version, [event], topic_prefix=runtime.settings.kafka_topic_prefix
    )


async def refuse_if_excluded(
    runtime: Runtime,
    keys: KeyStore,
    policy: Policy,
    directory: DirectoryFile,
    principal: str,
    incident_id: str,
    entries: Sequence[LedgerEvent],
    action: str,
) -> None:
    """404, as for an unknown incident, if `principal` is excluded (recorded first)."""
    async with runtime.db.acquire() as conn, conn.transaction():
        found = await excluded(
            conn, keys, policy, directory, incident_id, entries, reader=principal
        )
        if principal not in found:
            return
        reason = f"excluded:{CONFLICT}"
        data = AccessDenied(principal=principal, action=action, reason=reason)
        await record(runtime, conn, "audit-denied", entries, data, principal)
    raise Problem(404, "Not found", NOT_FOUND_DETAIL)
