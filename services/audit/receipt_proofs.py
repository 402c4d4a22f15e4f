"""`GET /v1/ledger/proofs/event/{event_id}`: the proof a reporter keeps that the log holds
their report (intake calls it for the receipt view; docs/witness.md).

Public and hashes only, like the inclusion-proof route: the entry's index, its leaf
hash, its place in the leaf (`entry`: the leaf's fields other than the event, which
the caller already holds), the inclusion proof under the latest signed head, and that
head as a cosigned checkpoint. The event itself is never served here: whoever holds the
event's bytes rebuilds the leaf as ``canonical_json({**entry, "event": event})``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from services.audit.api import answer, unit_of_work
from services.audit.usecases import EventProofQuery
from services.audit.usecases import event_proof as find_proof
from services.infra.http import problem_responses

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
    uow = unit_of_work(request, snapshot=True)
    found = await answer(find_proof(EventProofQuery(event_id), uow))
    return {
        "index": found.row.idx,
        "tree_size": found.head.tree_size,
        "leaf_hash": found.row.leaf_hash.hex(),
        "entry": found.entry,
        "inclusion_proof": [p.hex() for p in found.proof],
        "checkpoint": found.head.cosigned_checkpoint,
        "cosignatures": found.head.to_json()["cosignatures"],
    }
