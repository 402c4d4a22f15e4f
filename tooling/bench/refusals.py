"""The refusal figure of issue 18: a refusal costs the same for a real incident as for
an unknown id, so its timing does not tell an excluded person that the incident exists.

One real incident is grown to `events` events through the handlers' own route (a
routed handler's comments), then the excluded accused asks for it and for an unknown
id in turn, `requests` times each, the order of each pair drawn at random (so drift on
a shared machine falls on both sides alike). The figure is the median of the real
incident's refusals beside the unknown id's (the baseline); the target is less than
10 % apart. Routing is written into intake's table as triage's decision would write it
(a setup shortcut: the bench's intake runs alone, without triage).
"""

from __future__ import annotations

import random
import time
import uuid

import asyncpg
import httpx

from tooling.bench.figures import REPORT, Target
from tooling.bench.report import Figure, Latency, percentile

HANDLER = "dev-chen-token"
EXCLUDED = "dev-wang-token"
TARGET_APART = 0.10
"""The issue's target: the two medians differ by less than this fraction."""


async def refusal_figure(target: Target, *, events: int = 500, requests: int = 200) -> Figure:
    """Median refusal time (ms) for a real incident of `events` events vs an unknown id."""
    async with httpx.AsyncClient(base_url=target.intake_url, timeout=60.0) as http:
        answer = await http.post("/v1/reports", json=REPORT, headers=_auth(target.reporter_token))
        answer.raise_for_status()
        incident = str(answer.json()["incident_id"])
        await _route(target, incident)
        for n in range(events - 1):
            grown = await http.post(
                f"/v1/incidents/{incident}/comments",
                json={"text": f"note {n}"},
                headers=_auth(HANDLER),
            )
            grown.raise_for_status()
        size = await _stream_size(target, incident)
        unknown = str(uuid.uuid4())
        timed: dict[str, list[float]] = {incident: [], unknown: []}
        statuses: set[int] = set()
        for _ in range(10):  # warm-up: connections, caches, the two refusal streams
            for ident in (incident, unknown):
                await http.get(f"/v1/incidents/{ident}", headers=_auth(EXCLUDED))
        for _ in range(requests):
            pair = [incident, unknown]
            random.shuffle(pair)
            for ident in pair:
                began = time.perf_counter()
                refused = await http.get(f"/v1/incidents/{ident}", headers=_auth(EXCLUDED))
                timed[ident].append(time.perf_counter() - began)
                statuses.add(refused.status_code)
    real = Latency.of_seconds(timed[incident])
    ghost = Latency.of_seconds(timed[unknown])
    apart = real.p50 / ghost.p50 - 1 if ghost.p50 > 0 else float("nan")
    return Figure(
        key="refusals",
        name=f"refusal p50, real incident of {size} events (excluded caller)",
        value=real.p50,
        unit="ms",
        shown=f"{real.p50:.2f} ms ({apart * 100:+.1f} %)",
        baseline_name="unknown id, same caller",
        baseline=ghost.p50,
        target=f"within {TARGET_APART * 100:.0f} % at p50",
        met=abs(apart) < TARGET_APART and statuses == {404},
        limit=(
            "A refusal reads the caller's routing row (a primary-key lookup) and appends to"
            " access-denied:<id>; it never reads the incident's stream. The HTTP round trip"
            " and authentication dominate both sides."
        ),
        details={
            "events": size,
            "requests_each": requests,
            "real": real,
            "unknown": ghost,
            "p90_real_ms": percentile([t * 1000 for t in timed[incident]], 90),
            "p90_unknown_ms": percentile([t * 1000 for t in timed[unknown]], 90),
            "statuses": sorted(statuses),
            "setup": "routing rows written directly as triage's decision would (shortcut)",
        },
    )


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _route(target: Target, incident: str) -> None:
    """p-chen routed at level 1, p-wang excluded as the accused: triage's decision.

    Where a triage runs behind this intake (the attachment figures on a whole stack), its
    decision may reach intake's routing table first: its rows then stand as they are."""
    conn = await asyncpg.connect(target.database_url)
    try:
        await conn.executemany(
            f"INSERT INTO intake{target.schema_suffix}.routing"  # noqa: S608 - our own schema name
            " (incident_id, principal, level, routed, routed_at, excluded_rule, excluded_at,"
            " source_event) VALUES ($1, $2, $3, $4, now(), $5, now(), $6)"
            " ON CONFLICT (incident_id, principal) DO NOTHING",
            [
                (incident, "p-chen", 1, True, None, uuid.uuid4()),
                (incident, "p-wang", None, False, "accused", uuid.uuid4()),
            ],
        )
    finally:
        await conn.close()


async def _stream_size(target: Target, incident: str) -> int:
    conn = await asyncpg.connect(target.database_url)
    try:
        return int(
            await conn.fetchval(
                f"SELECT count(*) FROM intake{target.schema_suffix}.events"  # noqa: S608
                " WHERE stream_id = $1",
                incident,
            )
        )
    finally:
        await conn.close()
