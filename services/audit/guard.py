"""Guarded reads: the raw ledger answers an auditor as the timeline does, and every read
is recorded.

`GET /v1/ledger/entries` (and `incidents audit replay`, built on it) applies the rule of
`services.audit.conflicts` to every incident in the range it serves: for an incident
that excludes the reader, its entries are withheld. A withheld entry keeps `index`,
`leaf_hash` and `recorded_at` (so the tree still verifies and ledger time still reads
in order) and loses the leaf bytes, the event, the topic and the offset.

Each auditor read (entries, timeline, knowledge, state, the console's incident pages)
is recorded as one `audit.read.recorded.v1` per request (not per entry), on the stream
`audit-reads:<principal>`, before the answer leaves. Audit appends it through its
event store and outbox like its other events, so it reaches the ledger and is signed
and verifiable like the rest. A read with entries withheld names the incidents in
`withheld`: that is the record of the attempt.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import asyncpg
from fastapi import Request

from services.audit.conflicts import append_own, excluded
from services.audit.ledger import decode_leaf
from services.domain.directory import DirectoryFile, Person
from services.domain.events import InvalidEvent, ReadRecorded, parse_envelope
from services.domain.knowledge import LedgerEvent
from services.domain.policy import Policy
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime

LEDGER_SUBJECT = "ledger"
"""Subject of a read that is about a range of the ledger, not one incident."""
WITHHELD_KEPT = ("index", "leaf_hash", "recorded_at")


async def excluded_in_range(
    request: Request, conn: asyncpg.Connection, principal: str, start: int, end: int
) -> frozenset[str]:
    """The incidents with entries in `[start, end)` that exclude `principal`.

    Each incident is judged on all its `incident.*` entries (not only those in the
    range), as the timeline judges it. A leaf that no longer parses is left out of the
    judgement (verify names it); it does not make the read fail.
    """
    subjects = [
        row["incident_id"]
        for row in await conn.fetch(
            "SELECT DISTINCT incident_id FROM ledger WHERE idx >= $1 AND idx < $2 AND valid"
            " AND event_type LIKE 'incident.%'",
            start,
            end,
        )
    ]
    if not subjects:
        return frozenset()
    by_incident: dict[str, list[LedgerEvent]] = defaultdict(list)
    for row in await conn.fetch(
        "SELECT idx, recorded_at, incident_id, leaf FROM ledger WHERE incident_id = ANY($1)"
        " AND valid AND event_type LIKE 'incident.%' ORDER BY idx",
        subjects,
    ):
        try:
            envelope = parse_envelope(decode_leaf(bytes(row["leaf"]))["event"])
        except (InvalidEvent, ValueError, TypeError, KeyError):
            continue
        by_incident[row["incident_id"]].append(
            LedgerEvent(index=row["idx"], recorded_at=row["recorded_at"], envelope=envelope)
        )
    keys: KeyStore = request.app.state.keys
    policy: Policy = request.app.state.policy
    directory: DirectoryFile = request.app.state.directory
    found: set[str] = set()
    known: dict[str, Person | None] = {}
    for incident, entries in by_incident.items():
        if principal in await excluded(
            conn, keys, policy, directory, incident, entries, known, reader=principal
        ):
            found.add(incident)
    return frozenset(found)


async def guard_entries(
    request: Request, principal: str, start: int, end: int, served: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`served` with the entries of incidents excluding `principal` withheld; the read
    is recorded (with the withheld incidents) before the answer is returned."""
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn, conn.transaction():
        withheld = await excluded_in_range(request, conn, principal, start, end)
        hidden: set[int] = set()
        if withheld:
            hidden = {
                row["idx"]
                for row in await conn.fetch(
                    "SELECT idx FROM ledger WHERE idx >= $1 AND idx < $2 AND incident_id = ANY($3)",
                    start,
                    end,
                    sorted(withheld),
                )
            }
        data = ReadRecorded(
            principal=principal, route="entries", start=start, end=end, withheld=sorted(withheld)
        )
        await append_own(runtime, conn, f"audit-reads:{principal}", LEDGER_SUBJECT, data, principal)
    return [
        {**{k: e[k] for k in WITHHELD_KEPT if k in e}, "withheld": True}
        if e["index"] in hidden
        else e
        for e in served
    ]


async def record_read(request: Request, principal: str, route: str, incident_id: str) -> None:
    """Record an auditor's read of one incident (once per request, before the answer)."""
    runtime: Runtime = request.app.state.runtime
    data = ReadRecorded(principal=principal, route=route, incident_id=incident_id)
    async with runtime.db.acquire() as conn, conn.transaction():
        # in the incident's correlation: its first event, the report (none: unknown id)
        first = await conn.fetchval(
            "SELECT event_id FROM ledger WHERE incident_id = $1 AND valid"
            " AND event_type = 'incident.report.submitted.v1' ORDER BY idx LIMIT 1",
            incident_id,
        )
        correlation = str(first) if first is not None else None
        await append_own(
            runtime, conn, f"audit-reads:{principal}", incident_id, data, principal, correlation
        )
