"""Audit's HTTP routes for auditors. Thin: authorise, query, answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from services.audit.ledger import decode_leaf
from services.domain.directory import DirectoryFile
from services.infra.auth import TokenAuthenticator
from services.infra.http import Problem
from services.infra.runtime import Runtime

router = APIRouter(prefix="/v1")
AUDIT_ROLES = frozenset({"auditor"})


def require_auditor(request: Request, authorization: str | None) -> str:
    """The calling principal if it holds the auditor role; 401 or 403 otherwise."""
    auth: TokenAuthenticator = request.app.state.auth
    principal = auth.principal_id(authorization)
    if principal is None:
        raise Problem(401, "Unauthorized", "A valid bearer token is required.")
    directory: DirectoryFile = request.app.state.directory
    if not directory.roles_of(principal) & AUDIT_ROLES:
        raise Problem(403, "Forbidden", "The auditor role is required.")
    return principal


@router.get("/incidents/{incident_id}/timeline", summary="Every event of an incident")
async def timeline(
    incident_id: str,
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """The incident's events in ledger order, each with its index and recording time."""
    require_auditor(request, authorization)
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT idx, recorded_at, trace_id, leaf FROM ledger"
            " WHERE incident_id = $1 AND valid ORDER BY idx",
            incident_id,
        )
    if not rows:
        raise Problem(404, "Not found", "No events of this incident are in the ledger.")
    events = []
    for row in rows:
        leaf = decode_leaf(bytes(row["leaf"]))
        events.append(
            {
                "index": row["idx"],
                "recorded_at": leaf["recorded_at"],
                "trace_id": row["trace_id"],
                "event": leaf["event"],
            }
        )
    return {"incident_id": incident_id, "events": events}
