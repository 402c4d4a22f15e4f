"""Audit's HTTP routes for auditors. Thin adapters: authenticate, build a query, call the
use case (`services.audit.usecases`), render; its refusals become problem answers."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request

from services.audit import usecases
from services.audit.checkpoint import NoteSigner
from services.audit.indexed import columns_document, index_problems
from services.audit.ledger import (
    DEAD_LETTER,
    UNTOLD,
    StoredRow,
    carried_incident,
    decode_leaf,
)
from services.audit.merkle import leaf_hash
from services.audit.usecases import (
    AUDIT_ROLES,
    MAX_ENTRIES,
    AuditError,
    AuditUnitOfWork,
    Authorise,
    ConsistencyQuery,
    Forbidden,
    HeadsQuery,
    InclusionQuery,
    Invalid,
    KnowledgeQuery,
    NotFound,
    ReadEntries,
    ReadIncident,
    authorise,
    read_entries,
    read_incident,
    signed_heads,
)
from services.domain.envelope import utc_rfc3339
from services.domain.knowledge import (
    LedgerEvent,
    deliveries_as_of,
    progress_as_of,
    state_as_of,
)
from services.infra.auth import Authenticator
from services.infra.http import Instant, Problem, problem_responses
from services.infra.telemetry import trace_id_of

AsOf = Annotated[
    Instant | None,
    Query(description="RFC 3339 date-time with an offset (`Z` or `±hh:mm`); default now."),
]
"""The `as_of` query parameter of the incident routes: now when absent."""
Authorization = Annotated[str | None, Header()]
"""The `Authorization` header (a bearer token) of the auditor routes."""

router = APIRouter(prefix="/v1")
MAX_INDEX = 2**63 - 1
"""The largest ledger index or tree size a route accepts (PostgreSQL's bigint)."""
TreeSize = Annotated[int, Query(ge=1, le=MAX_INDEX)]
"""A tree size a proof route accepts."""
Index = Annotated[int, Query(ge=0, le=MAX_INDEX)]
"""A ledger index a proof route accepts."""
UNAUTHORIZED = (401, "No bearer token, or one that is not valid.")
FORBIDDEN = (403, "The caller does not hold the auditor role.")
INVALID = (422, "The request is not valid (a parameter, a range or a tree size).")
NO_INCIDENT = (404, "The ledger holds no event of this incident.")
NO_HEAD = (404, "No tree head has been signed yet.")
INCIDENT_ANSWERS = problem_responses(UNAUTHORIZED, FORBIDDEN, NO_INCIDENT, INVALID)
PROOF_ANSWERS = problem_responses(INVALID)
WITHHELD_KEPT = ("index", "leaf_hash", "recorded_at")
"""What a withheld entry keeps: the tree still verifies, ledger time still reads in order."""
UNTOLD_KEPT = ("topic", "partition", "offset")
"""What a copy withheld because its incident cannot be told keeps besides (`untold_entry`)."""
DEAD_LETTER_KEPT = ("source_topic", "source_partition", "source_offset")
T = TypeVar("T")


def unit_of_work(request: Request, *, snapshot: bool = False) -> AuditUnitOfWork:
    """A new unit of work (`snapshot`: one repeatable-read transaction)."""
    uow: AuditUnitOfWork = request.app.state.unit_of_work(snapshot=snapshot)
    return uow


async def answer(call: Awaitable[T]) -> T:
    """The use case's result; its refusal as the problem answer it stands for."""
    try:
        return await call
    except Forbidden as exc:
        raise Problem(403, "Forbidden", str(exc)) from None
    except NotFound as exc:
        raise Problem(404, exc.title, exc.detail) from None
    except Invalid as exc:
        raise Problem(422, exc.title, exc.detail, **exc.extra) from None
    except AuditError as exc:  # a kind without its own answer yet: refuse, say nothing
        raise Problem(404, "Not found", str(exc)) from None


async def caller(request: Request, authorization: str | None) -> str:
    """The authenticated principal; 401 otherwise."""
    auth: Authenticator = request.app.state.auth
    principal = await auth.principal_id_async(authorization)
    if principal is None:
        raise Problem(401, "Unauthorized", "A valid bearer token is required.")
    return principal


async def require_auditor(request: Request, authorization: str | None) -> str:
    """The calling principal if it holds the auditor role; 401 or 403 otherwise."""
    principal = await caller(request, authorization)
    await answer(authorise(Authorise(principal, AUDIT_ROLES), unit_of_work(request)))
    return principal


async def incident_read(
    request: Request,
    authorization: str | None,
    incident_id: str,
    route: str = "console",
    content: bool = False,
) -> list[LedgerEvent]:
    """The incident's entries for an auditor (`read_incident`): 401, 403 or 404 (a
    refusal recorded), the read recorded; opened only when `content` is asked (the view
    recorded first). Tools that poll the timeline without content leave no view."""
    principal = await caller(request, authorization)
    query = ReadIncident(principal, incident_id, route=route, content=content)
    return (await answer(read_incident(query, unit_of_work(request)))).entries


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
    authorization: Authorization = None,
) -> dict[str, Any]:
    """The incident's events in ledger order, each with its index and recording time.

    Content stays sealed (`enc:v1:...`, as in the ledger) unless `content=true`: then it
    is opened for the auditor (`[erased]` once the incident was erased), after the
    auditor's `incident.viewed.v1` is committed (so the ledger says they knew).
    """
    entries = await incident_read(request, authorization, incident_id, "timeline", content)
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


@dataclass(frozen=True)
class IncidentAsOf:
    """What the as-of incident routes take: the incident, the caller's request and bearer
    token, and the instant asked (`as_of`, now when absent)."""

    incident_id: str
    request: Request
    authorization: str | None
    moment: datetime

    async def entries(self, route: str, content: bool = False) -> list[LedgerEvent]:
        """The incident's entries for an auditor (`incident_read`)."""
        return await incident_read(
            self.request, self.authorization, self.incident_id, route, content
        )

    def answer(self, **parts: Any) -> dict[str, Any]:
        """The answer: the incident, the instant, on the ledger's clock, and `parts`."""
        moment = utc_rfc3339(self.moment)
        return {"incident_id": self.incident_id, "as_of": moment, "time_basis": "ledger", **parts}


async def incident_as_of(
    incident_id: str,
    request: Request,
    as_of: AsOf = None,
    authorization: Authorization = None,
) -> IncidentAsOf:
    # `Instant` already refused a time without an offset (422)
    moment = datetime.now(UTC) if as_of is None else as_of
    return IncidentAsOf(incident_id, request, authorization, moment)


Incident = Annotated[IncidentAsOf, Depends(incident_as_of)]
"""The parameters of an as-of incident route (path, `as_of`, `Authorization`)."""


@router.get(
    "/incidents/{incident_id}/knowledge",
    summary="Who knew, as of an instant",
    responses=INCIDENT_ANSWERS,
)
async def knowledge(incident: Incident) -> dict[str, Any]:
    """Principals who had been shown the report by `as_of`, by ledger time (no backdating).

    For the auditor and identity custodian roles. The reporter appears as `reporter`,
    or by person id to an identity custodian: that answer is itself recorded first, as
    `incident.identity.disclosed.v1`, so the custodian appears in later answers.
    """
    principal = await caller(incident.request, incident.authorization)
    query = KnowledgeQuery(principal, incident.incident_id, incident.moment)
    return (await answer(usecases.knowledge(query, unit_of_work(incident.request)))).to_json()


@router.get(
    "/incidents/{incident_id}/deliveries",
    summary="Each notice and what became of it, per person",
    responses=INCIDENT_ANSWERS,
)
async def deliveries(incident: Incident) -> dict[str, Any]:
    """Every `incident.notified.v1` recorded by `as_of` (ledger time) with its outcome
    (`incident.notice.delivered.v1` / `.failed.v1`) and the recipient's first view after
    it: queued, delivered or failed, when, by which adapter, after how many attempts and,
    for a failure, its reason class. For auditors, refused as the timeline is."""
    entries = await incident.entries("deliveries")
    found = deliveries_as_of(incident.incident_id, entries, incident.moment)
    return incident.answer(notices=[n.to_json() for n in found])


@router.get(
    "/incidents/{incident_id}/state",
    summary="The incident as it stood at an instant",
    responses=INCIDENT_ANSWERS,
)
async def state(
    incident: Incident,
    content: Annotated[bool, Query(description=CONTENT_HELP)] = False,
) -> dict[str, Any]:
    """Rebuilt by replaying the ledger through the domain fold the services use.

    The state's content (the outcome) stays sealed unless `content=true`, which records
    the auditor's `incident.viewed.v1` first, as for the timeline.
    """
    entries = await incident.entries("state", content)
    incident_id, moment = incident.incident_id, incident.moment
    return incident.answer(
        state=state_as_of(incident_id, entries, moment).to_json(),
        # the status and level in the words every view uses (services/domain/status.py)
        progress=progress_as_of(incident_id, entries, moment).to_json(),
    )


@router.get(
    "/ledger/entries",
    summary="Ledger entries in [start, end)",
    responses=problem_responses(UNAUTHORIZED, FORBIDDEN, INVALID),
)
async def entries(
    request: Request,
    start: Annotated[int, Query(ge=0, le=MAX_INDEX - MAX_ENTRIES)] = 0,
    end: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
    authorization: Authorization = None,
) -> dict[str, Any]:
    """At most 1,000 entries, each with its stored leaf bytes, to recompute the tree.

    Guarded as the timeline is (`services.audit.usecases`): an incident that excludes
    the caller, as the entries' leaves say (never their index columns), has its entries
    withheld (`withheld: true`, only index, leaf hash and recording time, and the
    service's verdicts `leaf_ok` and `indexed_ok` on what the caller cannot check), and
    the read is recorded as `audit.read.recorded.v1` (with how many entries were
    withheld, never which incidents).

    Every stored leaf is served, as base64 of its bytes, whether or not it still parses:
    one that does not has `event: null` and an `error`, so a verifier can name it.
    A range that holds no entry (where a verifier's walk ends) says what lies beyond it
    (`beyond`: the next stored entry's index, and `ledger_people` rows with no entry),
    so rows stored past a gap, which the reads by incident or person find, are named.
    """
    principal = await caller(request, authorization)
    query = ReadEntries(principal, start, end)
    read = await answer(read_entries(query, unit_of_work(request)))
    served = [served_entry(row) for row in read.rows]
    body: dict[str, Any] = {
        "entries": [
            withheld_entry(row, e) if row.idx in read.withheld else e
            for row, e in zip(read.rows, served, strict=True)
        ]
    }
    if read.beyond is not None:  # the end of a walk: what it would not reach
        body["beyond"] = {
            "next_index": read.beyond.next_index,
            "stray_people": [
                {"person_id": person, "index": index} for person, index in read.beyond.stray_people
            ],
        }
    return body


def served_entry(row: StoredRow) -> dict[str, Any]:
    """One ledger row as `/v1/ledger/entries` serves it; a leaf that does not parse is
    served as stored, with the row's own columns (`event: null`, and why in `error`)."""
    entry: dict[str, Any] = {
        "index": row.idx,
        "leaf": base64.b64encode(row.leaf).decode(),
        "leaf_hash": row.leaf_hash.hex(),
        "recorded_at": utc_rfc3339(row.recorded_at),
        "topic": row.topic,
        "partition": row.partition,
        "offset": row.offset,
        "event": None,
        "indexed": indexed_columns(row),
    }
    try:
        decoded = decode_leaf(row.leaf)
        entry["recorded_at"] = decoded["recorded_at"]
        entry["event"] = decoded.get("event")
    except (ValueError, TypeError, KeyError):  # not JSON, not UTF-8, not an object
        entry["error"] = "the stored leaf is not a ledger leaf (not JSON, or no recorded_at)"
    return entry


def withheld_entry(row: StoredRow, served: dict[str, Any]) -> dict[str, Any]:
    """An entry as served to a reader it is withheld from: `WITHHELD_KEPT` only, and for
    a copy whose incident cannot be told (`carried_incident` says `UNTOLD`: withheld from
    every reader alike, so nothing below depends on who asks) `untold_entry` besides."""
    kept = {k: served[k] for k in WITHHELD_KEPT if k in served}
    if carried_incident(row.leaf) == UNTOLD:
        kept |= untold_entry(row, served)
    return {**kept, **withheld_checks(row, served), "withheld": True}


def withheld_checks(row: StoredRow, served: dict[str, Any]) -> dict[str, bool]:
    """The verdicts a reader gets for an entry he may not read, in place of the checks
    his verifier runs on every other entry (review D3): `leaf_ok`, the stored leaf hashes
    to the stored leaf hash and says it is this entry; `indexed_ok`, the stored index
    columns and `ledger_people` rows say what the leaf says, by the rule verify uses
    (`index_problems`). Two booleans, false only when the database was changed behind
    the ledger: nothing of the content. They are the service's word, as every stored
    column it serves is (docs/security.md, "Withheld entries")."""
    try:
        body: Any = decode_leaf(row.leaf)
    except (ValueError, TypeError, RecursionError):
        body = None
    leaf_ok = (
        isinstance(body, dict)
        and leaf_hash(row.leaf) == row.leaf_hash
        and body.get("index") == row.idx
        and isinstance(body.get("recorded_at"), str)
    )
    indexed_ok = leaf_ok and not index_problems(served["indexed"], body, row.idx)
    return {"leaf_ok": leaf_ok, "indexed_ok": indexed_ok}


def untold_entry(row: StoredRow, served: dict[str, Any]) -> dict[str, Any]:
    """What an untold copy keeps: where audit read the record (`UNTOLD_KEPT`), `untold`,
    and for a dead letter who refused the original and where it was read (its `source`,
    `source_topic`, `source_partition`, `source_offset`). Those are written by audit and
    by the refusing service, never taken from the original. Not kept: the original, the
    dead letter's `reason` and a rejected record's `reason`, which may quote the
    original (an unknown type is named as given), nor the index columns (the subject)."""
    kept: dict[str, Any] = {k: served[k] for k in UNTOLD_KEPT if k in served}
    kept["untold"] = True
    event = served.get("event")
    if isinstance(event, dict) and event.get("type") == DEAD_LETTER:  # a dead letter's own
        data = event.get("data")
        fields = data if isinstance(data, dict) else {}
        kept["dead_letter"] = {
            "rejected_by": event.get("source"),
            **{k: fields.get(k) for k in DEAD_LETTER_KEPT},
        }
    return kept


def indexed_columns(row: StoredRow) -> dict[str, Any]:
    """The columns the reads select an entry by, as stored (not as its leaf says them):
    `verify` proves each says what the leaf says (`services.audit.indexed`). `people`:
    the `ledger_people` rows at the entry's index, when there are any."""
    people = (
        (person, None if record is None else json.loads(record)) for person, record in row.people
    )
    return columns_document(row.indexed, utc_rfc3339(row.recorded_at), people)


@router.get("/ledger/proofs/inclusion", summary="RFC 9162 inclusion proof", responses=PROOF_ANSWERS)
async def inclusion(request: Request, index: Index, tree_size: TreeSize) -> dict[str, Any]:
    """Proof that entry `index` is in the tree of `tree_size` entries (public: hashes only)."""
    query = InclusionQuery(index, tree_size)
    proof = await answer(usecases.inclusion(query, unit_of_work(request, snapshot=True)))
    return {
        "index": index,
        "tree_size": tree_size,
        "leaf_hash": proof.leaf_hash.hex(),
        "proof": [p.hex() for p in proof.proof],
    }


@router.get(
    "/ledger/proofs/consistency", summary="RFC 9162 consistency proof", responses=PROOF_ANSWERS
)
async def consistency(request: Request, first: TreeSize, second: TreeSize) -> dict[str, Any]:
    """Proof that the tree of `first` entries is a prefix of the tree of `second`."""
    query = ConsistencyQuery(first, second)
    proof = await answer(usecases.consistency(query, unit_of_work(request, snapshot=True)))
    return {"first": first, "second": second, "proof": [p.hex() for p in proof]}


@router.get(
    "/ledger/head",
    summary="The latest signed tree head",
    responses=problem_responses(NO_HEAD),
)
async def head(request: Request) -> dict[str, Any]:
    """Public: the newest C2SP checkpoint, signed with the key at /v1/ledger/public-key."""
    latest = await answer(signed_heads(HeadsQuery(latest=True), unit_of_work(request)))
    return latest[0].to_json()


@router.get("/ledger/heads", summary="Every signed tree head")
async def heads(request: Request) -> dict[str, Any]:
    """Public: all heads signed so far, by tree size."""
    found = await answer(signed_heads(HeadsQuery(), unit_of_work(request)))
    return {"heads": [h.to_json() for h in found]}


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
