"""Audit's conflict check: an auditor excluded from an incident is refused it here too.

Audit reads every incident from its ledger, so it applies the same rule intake does
(`services.domain.access`): a principal is excluded if the ledger's own events exclude
them (triage's `incident.triaged.v1`, `incident.reassigned.v1`, folded with the domain
code), or if triage's conflict rules exclude them from what the incident's events carry
in clear (accused, named), its reporter (opened with the incident's key, which audit
holds, and compared, never shown) and the accused's managers in the directory as the
ledger has it (else the seed file). So the check holds before triage's decision
reaches the ledger, and if it never does.

The use cases (`services.audit.usecases`) refuse an excluded reader with exactly the
404 of an incident the ledger does not know, recorded first as
`incident.access.denied.v1` (reason `excluded:conflict`) on the stream
`audit-denied:<incident id>`, published like audit's other events, so the ledger
itself holds the attempt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from services.audit.ledger import line_data, person_data
from services.domain.access import conflicted, implicated
from services.domain.directory import DirectoryFile, Person
from services.domain.envelope import Envelope
from services.domain.incident import fold
from services.domain.knowledge import LedgerEvent
from services.domain.org import OrgSnapshot
from services.domain.policy import Policy
from services.infra.keystore import KeyStore

MAX_CHAIN = 100
"""Managers walked above one accused person at most (the data may loop)."""
PersonLookup = Callable[[str], Awaitable[Person | None]]
"""A person by id (the ledger's directory, else the seed file), or None."""
LineLookup = Callable[[Sequence[str]], Awaitable[dict[str, Person | None]]]
"""The people of the ids given and everyone above them the ledger has, at once (a
person it lacks is left out: `PersonLookup` asks the seed file for them)."""
ReporterLookup = Callable[[str, Sequence[Envelope]], Awaitable[str | None]]
"""The reporter's person id of an incident (opened, compared, never shown), or None."""


def as_person(
    data: dict[str, Any] | None, directory: DirectoryFile, person_id: str
) -> Person | None:
    """A person from the ledger's data (`person_data`), else as the seed file has them."""
    if data is None:
        return next((p for p in directory.people if p.id == person_id), None)
    return Person(
        id=data["person_id"],
        unit=data.get("unit"),
        manager=data.get("manager_id"),
        roles=list(data.get("roles") or ()),
    )


async def person_in_ledger(
    conn: asyncpg.Connection, directory: DirectoryFile, person_id: str
) -> Person | None:
    """A person as the ledger has them (`person_data`), else as the seed file has them."""
    return as_person(await person_data(conn, person_id), directory, person_id)


async def _org(
    person: PersonLookup,
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
                known[current] = await person(current)
            someone = known[current]
            if someone is None:
                break
            found[current] = someone
            current = someone.manager
    return OrgSnapshot.from_people(found.values())


async def excluded_by(
    person: PersonLookup,
    reporter_of: ReporterLookup,
    policy: Policy,
    incident_id: str,
    entries: Sequence[LedgerEvent],
    known: dict[str, Person | None] | None = None,
    *,
    reader: str | None = None,
    line: LineLookup | None = None,
) -> frozenset[str]:
    """Everyone excluded from the incident, by the ledger's decisions or the report itself
    (`known`: people already looked up, see `_org`; `line`: the implicated people's
    and the reader's whole lines looked up at once first, so the walk up them asks
    nothing more of the ledger however deep they go).

    `reader`, the principal asking, is also checked against the rules that walk up from
    a candidate (`accused_reports`: an auditor who answers to the accused, directly or
    through his management line), as intake checks the principal asking.
    """
    events: list[Envelope] = [e.envelope for e in entries if e.envelope.subject == incident_id]
    state = fold(incident_id, events)
    found = implicated(events)
    candidates = () if reader is None else (reader,)
    starts = (*found.people, *candidates)
    if line is not None:
        known = {} if known is None else known
        missing = [p for p in starts if p not in known]
        if missing:
            known.update(await line(missing))
    org = await _org(person, starts, known)
    reporter = await reporter_of(incident_id, events)
    rules = conflicted(found, reporter, org, policy, category=state.category, candidates=candidates)
    return state.excluded | frozenset(rules)


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
    """`excluded_by` on a connection: the people of the ledger (else `directory`) and
    the reporter opened with `keys`."""

    async def person(person_id: str) -> Person | None:
        return await person_in_ledger(conn, directory, person_id)

    async def line(person_ids: Sequence[str]) -> dict[str, Person | None]:
        found = await line_data(conn, person_ids, MAX_CHAIN)
        return {p: as_person(data, directory, p) for p, data in found.items()}

    async def reporter_of(incident: str, events: Sequence[Envelope]) -> str | None:
        return await keys.reporter_of(conn, incident, events)

    return await excluded_by(
        person, reporter_of, policy, incident_id, entries, known, reader=reader, line=line
    )
