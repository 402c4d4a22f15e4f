"""The reporter's proof that the ledger holds their report (docs/witness.md).

Intake does not own the ledger: it asks audit's public route
``GET /v1/ledger/proofs/event/{event_id}`` for the submission entry's place, inclusion
proof and cosigned checkpoint, and adds the one thing audit does not serve there, the
event itself, from its own event store (the exact bytes it published). The leaf is
rebuilt and must hash to the leaf hash audit states, or no proof is given.
`incidents receipt check` verifies the proof, then and later.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any

import httpx

from services.domain.envelope import canonical_json
from services.domain.events import ReportSubmitted
from services.infra.runtime import Runtime

log = logging.getLogger(__name__)
PROOF_FORMAT = "incidents.receipt.proof/v1"
TIMEOUT = 3.0


async def ledger_proof(runtime: Runtime, audit_url: str, incident_id: str) -> dict[str, Any] | None:
    """The proof for the report's submission, or None (not yet under a signed head, audit
    unreachable, or an answer that does not match what intake published)."""
    if not audit_url:
        return None
    async with runtime.db.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT event_id, body FROM events WHERE stream_id = $1 AND type = $2"
            " ORDER BY version LIMIT 1",
            incident_id,
            ReportSubmitted.TYPE,
        )
    if row is None:
        return None
    event_id = str(row["event_id"])
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            answer = await http.get(f"{audit_url.rstrip('/')}/v1/ledger/proofs/event/{event_id}")
        if answer.status_code != 200:
            return None
        found = answer.json()
        leaf = canonical_json({**found["entry"], "event": json.loads(bytes(row["body"]))})
        if hashlib.sha256(b"\x00" + leaf).hexdigest() != found["leaf_hash"]:
            log.warning("the ledger entry of %s does not match the published event", event_id)
            return None
        return {
            "format": PROOF_FORMAT,
            "incident_id": incident_id,
            "event_id": event_id,
            "index": found["index"],
            "tree_size": found["tree_size"],
            "leaf": base64.b64encode(leaf).decode(),
            "inclusion_proof": found["inclusion_proof"],
            "checkpoint": found["checkpoint"],
        }
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        log.warning("no ledger proof for the receipt view: %r", exc)
        return None
