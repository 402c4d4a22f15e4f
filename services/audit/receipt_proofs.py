"""`GET /v1/ledger/proofs/event/{event_id}`: the proof a reporter keeps that the log holds
their report (intake calls it for the receipt view; docs/witness.md).

Public and hashes only, like the inclusion-proof route: the entry's index, its leaf
hash, its place in the leaf (`entry`: the leaf's fields other than the event, which
the caller already holds), the inclusion proof under the latest signed head, and that
head as a cosigned checkpoint. The event itself is never served here: whoever holds the
event's bytes rebuilds the leaf as ``canonical_json({**entry, "event": event})``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from services.audit import tree
from services.audit.heads import latest_head
from services.audit.ledger import decode_leaf
from services.infra.http import Problem, problem_responses
from services.infra.runtime import Runtime

router = APIRouter(prefix="/v1")
NOT_YET = (404, "No such event under a signed head (yet).")


@router.get(
    "/ledger/proofs/event/{event_id}",
    summary="Inclusion proof of an event under the latest (cosigned) head",
    responses=problem_responses(NOT_YET, (422, "The event id is longer than 36 characters.")),
)
async def event_proof(
    request: Request, event_id: Annotated[str, Path(max_length=36)]
) -> dict[str, Any]:
    """Where the event is in the ledger and the proof that the latest head contains it."""
    try:
        wanted = uuid.UUID(event_id)
    except ValueError:
        raise Problem(404, "Not found", "No such event under a signed head.") from None
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        row = await conn.fetchrow(
            "SELECT idx, leaf, leaf_hash FROM ledger WHERE event_id = $1 AND valid"
            " ORDER BY idx LIMIT 1",
            wanted,
        )
        head = await latest_head(conn)
        if row is None or head is None or row["idx"] >= head.tree_size:
            raise Problem(404, "Not found", "No such event under a signed head.")
        proof = await tree.inclusion_proof(conn, row["idx"], head.tree_size)
    entry = {k: v for k, v in decode_leaf(bytes(row["leaf"])).items() if k != "event"}
    return {
        "index": row["idx"],
        "tree_size": head.tree_size,
        "leaf_hash": bytes(row["leaf_hash"]).hex(),
        "entry": entry,
        "inclusion_proof": [p.hex() for p in proof],
        "checkpoint": head.cosigned_checkpoint,
        "cosignatures": head.to_json()["cosignatures"],
    }
