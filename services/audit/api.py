"""Audit's HTTP routes for auditors. Thin: authorise, query, answer."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Header, Query, Request

from services.audit import tree
from services.audit.checkpoint import NoteSigner
from services.audit.conflicts import NOT_FOUND_DETAIL, record, refuse_if_excluded
from services.audit.guard import guard_entries, record_read
from services.audit.heads import all_heads, latest_head
from services.audit.ledger import decode_leaf, incident_entries, roles_in_ledger
from services.domain.directory import DirectoryFile
from services.domain.envelope import utc_rfc3339
from services.domain.events import CUSTODIAN_FIELDS, READER_FIELDS, IdentityDisclosed, Viewed
from services.domain.incident import fold
from services.domain.knowledge import (
    LedgerEvent,
    deliveries_as_of,
    knowledge_as_of,
    progress_as_of,
    state_as_of,
)
from services.domain.policy import Policy
from services.infra.auth import Authenticator
from services.infra.crypto import IncidentKey
from services.infra.http import Instant, Problem, problem_responses
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime
from services.infra.telemetry import trace_id_of

AsOf = Annotated[
    Instant | None,
    Query(description="RFC 3339 date-time with an offset (`Z` or `±hh:mm`); default now."),
]
"""The `as_of` query parameter of the incident routes: now when absent."""

router = APIRouter(prefix="/v1")
AUDIT_ROLES = frozenset({"auditor"})
IDENTITY_CUSTODIAN = "identity_custodian"
KNOWLEDGE_ROLES = frozenset({"auditor", IDENTITY_CUSTODIAN})
DISCLOSED = "incident.identity.disclosed.v1"
KNOWLEDGE_REASON = "the reporter named in an audit knowledge answer"
MAX_ENTRIES = 1000
MAX_INDEX = 2**63 - 1
"""The largest ledger index or tree size a route accepts (PostgreSQL's bigint)."""
UNAUTHORIZED = (401, "No bearer token, or one that is not valid.")
FORBIDDEN = (403, "The caller does not hold the auditor role.")
INVALID = (422, "The request is not valid (a parameter, a range or a tree size).")
NO_INCIDENT = (404, "The ledger holds no event of this incident.")
NO_HEAD = (404, "No tree head has been signed yet.")
INCIDENT_ANSWERS = problem_responses(UNAUTHORIZED, FORBIDDEN, NO_INCIDENT, INVALID)


async def require_auditor(request: Request, authorization: str | None) -> str:
    """The calling principal if it holds the auditor role; 401 or 403 otherwise."""
    principal, _roles = await require_role(request, authorization, AUDIT_ROLES)
    return principal


async def require_role(
    request: Request, authorization: str | None, allowed: frozenset[str]
) -> tuple[str, frozenset[str]]:
    """The calling principal and its roles if it holds one of `allowed`; else 401 or 403."""
    auth: Authenticator = request.app.state.auth
    principal = await auth.principal_id_async(authorization)
    if principal is None:
        raise Problem(401, "Unauthorized", "A valid bearer token is required.")
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn:
        roles = await roles_in_ledger(conn, principal)
    if roles is None:  # the directory's events have not reached the ledger: the seed file
        directory: DirectoryFile = request.app.state.directory
        roles = directory.roles_of(principal)
    if not roles & allowed:
        raise Problem(403, "Forbidden", f"The {' or '.join(sorted(allowed))} role is required.")
    return principal, roles


CONTENT_HELP = (
    "Open the sealed report content; the auditor's incident.viewed.v1 is recorded in the"
    " ledger first. Without it, content stays sealed as the ledger holds it."
)


@router.get(
    "/incidents/{incident_id}/timeline",
    summary="Every event of an incident",
    responses=INCIDENT_ANSWERS,
)
async def timeline(
    incident_id: str,
    request: Request,
    content: Annotated[bool, Query(description=CONTENT_HELP)] = False,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """The incident's events in ledger order, each with its index and recording time.

    Content stays sealed (`enc:v1:...`, as in the ledger) unless `content=true`: then it
    is opened for the auditor (`[erased]` once the incident was erased), after the
    auditor's `incident.viewed.v1` is committed (so the ledger says they knew).
    """
    entries = await _answer(request, authorization, incident_id, content, "timeline")
    return {
        "incident_id": incident_id,
        "events": [
            {
                "index": e.index,
                "recorded_at": utc_rfc3339(e.recorded_at),
                "trace_id": trace_id_of(e.envelope.traceparent),
                "event": e.envelope.to_dict(),
            }
            for e in entries
        ],
    }


@router.get(
    "/incidents/{incident_id}/knowledge",
    summary="Who knew, as of an instant",
    responses=INCIDENT_ANSWERS,
)
async def knowledge(
    incident_id: str,
    request: Request,
    as_of: AsOf = None,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Principals who had been shown the report by `as_of`, by ledger time (no backdating).

    For the auditor and identity custodian roles. The reporter appears as `reporter`,
    or by person id to an identity custodian: that answer is itself recorded first, as
    `incident.identity.disclosed.v1`, so the custodian appears in later answers.
    """
    _principal, roles = await require_role(request, authorization, KNOWLEDGE_ROLES)
    entries = await _entries(request, incident_id)
    await refuse_conflicted(request, _principal, incident_id, entries, "knowledge")
    await record_read(request, _principal, "knowledge", incident_id)
    moment = _instant(as_of)
    if IDENTITY_CUSTODIAN not in roles:
        return knowledge_as_of(incident_id, entries, moment).to_json()
    keys: KeyStore = request.app.state.keys
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn, conn.transaction():
        key = await keys.get(conn, incident_id)
        if key is not None:  # erased: there is no identity left to disclose
            await record_disclosure(runtime, conn, key, _principal, entries)
    opened = await readable(request, incident_id, entries, fields=CUSTODIAN_FIELDS)
    return knowledge_as_of(incident_id, opened, moment, reveal_reporter=key is not None).to_json()


@router.get(
    "/incidents/{incident_id}/deliveries",
    summary="Each notice and what became of it, per person",
    responses=INCIDENT_ANSWERS,
)
async def deliveries(
    incident_id: str,
    request: Request,
    as_of: AsOf = None,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Every `incident.notified.v1` recorded by `as_of` (ledger time) with its outcome
    (`incident.notice.delivered.v1` / `.failed.v1`) and the recipient's first view after
    it: queued, delivered or failed, when, by which adapter, after how many attempts and,
    for a failure, its reason class. For auditors, refused as the timeline is."""
    entries = await _incident(request, authorization, incident_id, "deliveries")
    moment = _instant(as_of)
    return {
        "incident_id": incident_id,
        "as_of": utc_rfc3339(moment),
        "time_basis": "ledger",
        "notices": [n.to_json() for n in deliveries_as_of(incident_id, entries, moment)],
    }


@router.get(
    "/incidents/{incident_id}/state",
    summary="The incident as it stood at an instant",
    responses=INCIDENT_ANSWERS,
)
async def state(
    incident_id: str,
    request: Request,
    as_of: AsOf = None,
    content: Annotated[bool, Query(description=CONTENT_HELP)] = False,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Rebuilt by replaying the ledger through the domain fold the services use.

    The state's content (the outcome) stays sealed unless `content=true`, which records
    the auditor's `incident.viewed.v1` first, as for the timeline.
    """
    entries = await _answer(request, authorization, incident_id, content, "state")
    moment = _instant(as_of)
    return {
        "incident_id": incident_id,
        "as_of": utc_rfc3339(moment),
        "time_basis": "ledger",
        "state": state_as_of(incident_id, entries, moment).to_json(),
        # the status and level in the words every view uses (services/domain/status.py)
        "progress": progress_as_of(incident_id, entries, moment).to_json(),
    }


def _instant(as_of: datetime | None) -> datetime:
    # `Instant` already refused a time without an offset (422)
    return datetime.now(UTC) if as_of is None else as_of


async def _incident(
    request: Request, authorization: str | None, incident_id: str, route: str = "console"
) -> list[LedgerEvent]:
    _principal, entries = await _checked(request, authorization, incident_id, route)
    return entries


async def _checked(
    request: Request, authorization: str | None, incident_id: str, route: str
) -> tuple[str, list[LedgerEvent]]:
    """The auditor and the incident's entries, sealed; 401, 403 or 404 (recorded).

    The read itself is recorded too (`audit.read.recorded.v1`), before the answer.
    """
    principal = await require_auditor(request, authorization)
    entries = await _entries(request, incident_id)
    await refuse_conflicted(request, principal, incident_id, entries, "view")
    await record_read(request, principal, route, incident_id)
    return principal, entries


async def _answer(
    request: Request, authorization: str | None, incident_id: str, content: bool, route: str
) -> list[LedgerEvent]:
    """The checked entries: opened (the view recorded first) only when content is asked.

    Reading who knew when needs no content, so tools that poll the timeline (the demo,
    `incidents traces show`, `verify`) leave no view of their own in the ledger.
    """
    if content:
        return await _read(request, authorization, incident_id, route)
    return await _incident(request, authorization, incident_id, route)


async def _read(
    request: Request, authorization: str | None, incident_id: str, route: str
) -> list[LedgerEvent]:
    """For an answer with content: the checks, `incident.viewed.v1` committed, then opened.

    Like intake's view, an auditor who reads a report leaves a knowing record in the
    ledger (on the stream `audit-views:<id>`) before any content leaves the service.
    """
    principal, entries = await _checked(request, authorization, incident_id, route)
    digest = fold(incident_id, [e.envelope for e in entries]).report_digest
    if digest is not None:  # no report in the ledger (yet): nothing to open
        runtime: Runtime = request.app.state.runtime
        async with runtime.db.acquire() as conn, conn.transaction():
            data = Viewed(principal=principal, report_digest=digest)
            await record(runtime, conn, "audit-views", entries, data, principal)
    return await readable(request, incident_id, entries)


async def refuse_conflicted(
    request: Request, principal: str, incident_id: str, entries: list[LedgerEvent], action: str
) -> None:
    """404 (recorded) for a principal the incident excludes: `services.audit.conflicts`."""
    policy: Policy = request.app.state.policy
    directory: DirectoryFile = request.app.state.directory
    runtime: Runtime = request.app.state.runtime
    keys: KeyStore = request.app.state.keys
    await refuse_if_excluded(
        runtime, keys, policy, directory, principal, incident_id, entries, action
    )


async def readable(
    request: Request,
    incident_id: str,
    entries: list[LedgerEvent],
    *,
    fields: frozenset[str] = READER_FIELDS,
) -> list[LedgerEvent]:
    """The entries with the sealed `fields` opened (only after the access checks).

    An allow-list: an auditor reads the content, never who reported; the identity
    custodian's recorded knowledge answer alone passes `CUSTODIAN_FIELDS`.
    """
    keys: KeyStore = request.app.state.keys
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn:
        events = [e.envelope for e in entries]
        opened = await keys.open_events(conn, incident_id, events, fields=fields)
    return [replace(e, envelope=o) for e, o in zip(entries, opened, strict=True)]


async def record_disclosure(
    runtime: Runtime,
    conn: asyncpg.Connection,
    key: IncidentKey,
    principal: str,
    entries: list[LedgerEvent],
) -> None:
    """Queue `incident.identity.disclosed.v1` for a custodian's knowledge answer (in txn)."""
    data = IdentityDisclosed(principal=principal, reason=key.seal("reason", KNOWLEDGE_REASON))
    await record(runtime, conn, "disclosures", entries, data, principal)


async def _entries(request: Request, incident_id: str) -> list[LedgerEvent]:
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn:
        entries = await incident_entries(conn, incident_id)
    if not entries:
        raise Problem(404, "Not found", NOT_FOUND_DETAIL)
    return entries


async def ledger_size(conn: asyncpg.Connection) -> int:
    """How many entries the ledger has."""
    return int(await conn.fetchval("SELECT last + 1 FROM counters WHERE name = 'ledger'"))


@router.get(
    "/ledger/entries",
    summary="Ledger entries in [start, end)",
    responses=problem_responses(UNAUTHORIZED, FORBIDDEN, INVALID),
)
async def entries(
    request: Request,
    start: Annotated[int, Query(ge=0, le=MAX_INDEX - MAX_ENTRIES)] = 0,
    end: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """At most 1,000 entries, each with its stored leaf bytes, to recompute the tree.

    Guarded as the timeline is (`services.audit.guard`): an incident that excludes the
    caller has its entries withheld (`withheld: true`, only index, leaf hash and
    recording time), and the read is recorded as `audit.read.recorded.v1`.

    Every stored leaf is served, as base64 of its bytes, whether or not it still parses:
    one that does not has `event: null` and an `error`, so a verifier can name it.
    """
    principal = await require_auditor(request, authorization)
    end = start + MAX_ENTRIES if end is None else end
    if end < start:
        raise Problem(422, "Invalid range", "end must not be below start.")
    if end - start > MAX_ENTRIES:
        raise Problem(422, "Range too large", f"At most {MAX_ENTRIES} entries per request.")
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn:
        rows = await conn.fetch(
            'SELECT idx, recorded_at, topic, partition, "offset", leaf, leaf_hash FROM ledger'
            " WHERE idx >= $1 AND idx < $2 ORDER BY idx",
            start,
            end,
        )
    served = [served_entry(row) for row in rows]
    return {"entries": await guard_entries(request, principal, start, end, served)}


def served_entry(row: asyncpg.Record) -> dict[str, Any]:
    """One ledger row as `/v1/ledger/entries` serves it; a leaf that does not parse is
    served as stored, with the row's own columns (`event: null`, and why in `error`)."""
    leaf = bytes(row["leaf"])
    entry: dict[str, Any] = {
        "index": row["idx"],
        "leaf": base64.b64encode(leaf).decode(),
        "leaf_hash": bytes(row["leaf_hash"]).hex(),
        "recorded_at": utc_rfc3339(row["recorded_at"]),
        "topic": row["topic"],
        "partition": row["partition"],
        "offset": row["offset"],
        "event": None,
    }
    try:
        decoded = decode_leaf(leaf)
        entry["recorded_at"] = decoded["recorded_at"]
        entry["event"] = decoded.get("event")
    except (ValueError, TypeError, KeyError):  # not JSON, not UTF-8, not an object
        entry["error"] = "the stored leaf is not a ledger leaf (not JSON, or no recorded_at)"
    return entry


@router.get(
    "/ledger/proofs/inclusion",
    summary="RFC 9162 inclusion proof",
    responses=problem_responses(INVALID),
)
async def inclusion(
    request: Request,
    index: Annotated[int, Query(ge=0, le=MAX_INDEX)],
    tree_size: Annotated[int, Query(ge=1, le=MAX_INDEX)],
) -> dict[str, Any]:
    """Proof that entry `index` is in the tree of `tree_size` entries (public: hashes only)."""
    if index >= tree_size:
        raise Problem(422, "Invalid proof request", "index must be below tree_size.")
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        await _within(conn, tree_size)
        proof = await tree.inclusion_proof(conn, index, tree_size)
        leaf = await conn.fetchval("SELECT leaf_hash FROM ledger WHERE idx = $1", index)
    return {
        "index": index,
        "tree_size": tree_size,
        "leaf_hash": bytes(leaf).hex(),
        "proof": [p.hex() for p in proof],
    }


@router.get(
    "/ledger/proofs/consistency",
    summary="RFC 9162 consistency proof",
    responses=problem_responses(INVALID),
)
async def consistency(
    request: Request,
    first: Annotated[int, Query(ge=1, le=MAX_INDEX)],
    second: Annotated[int, Query(ge=1, le=MAX_INDEX)],
) -> dict[str, Any]:
    """Proof that the tree of `first` entries is a prefix of the tree of `second`."""
    if first > second:
        raise Problem(422, "Invalid proof request", "first must not exceed second.")
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        await _within(conn, second)
        proof = await tree.consistency_proof(conn, first, second)
    return {"first": first, "second": second, "proof": [p.hex() for p in proof]}


async def _within(conn: asyncpg.Connection, size: int) -> None:
    current = await ledger_size(conn)
    if size > current:
        raise Problem(
            422, "Tree size too large", f"The ledger has {current} entries.", tree_size=current
        )


@router.get(
    "/ledger/head",
    summary="The latest signed tree head",
    responses=problem_responses(NO_HEAD),
)
async def head(request: Request) -> dict[str, Any]:
    """Public: the newest C2SP checkpoint, signed with the key at /v1/ledger/public-key."""
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn:
        latest = await latest_head(conn)
    if latest is None:
        raise Problem(404, "No signed head yet", "The ledger has not signed a tree head yet.")
    return latest.to_json()


@router.get("/ledger/heads", summary="Every signed tree head")
async def heads(request: Request) -> dict[str, Any]:
    """Public: all heads signed so far, by tree size."""
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn:
        return {"heads": [h.to_json() for h in await all_heads(conn)]}


@router.get("/ledger/public-key", summary="The key that signs tree heads")
async def public_key(request: Request) -> dict[str, Any]:
    """Public: the Ed25519 key, raw (base64) and as a C2SP note verifier key."""
    signer: NoteSigner = request.app.state.signer
    return {
        "origin": signer.name,
        "public_key": base64.b64encode(signer.public_key).decode(),
        "verifier_key": signer.verifier_key,
        "key_id": signer.key_id,
    }
