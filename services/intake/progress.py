"""Where an incident stands, as intake shows it: its own events and the triage and
escalation events the `intake-routing` consumer keeps (`incident_progress`), folded by
the one status function (services/domain/status.py) that audit's pages use too.

The kept events lag the topics by the consumer's delay; until triage's decision
arrives an incident shows `submitted` (or what its own events say).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from services.domain.envelope import Envelope, utc_rfc3339
from services.domain.status import WAITING, Progress, in_time_order, progress_of


async def kept_events(
    conn: asyncpg.Connection, incident_ids: Sequence[str]
) -> dict[str, list[Envelope]]:
    """The kept triage and escalation events of these incidents, by incident, in time order."""
    rows = await conn.fetch(
        "SELECT incident_id, body FROM incident_progress WHERE incident_id = ANY($1::text[])"
        " ORDER BY incident_id, time, event_id",
        list(incident_ids),
    )
    found: dict[str, list[Envelope]] = {}
    for row in rows:
        found.setdefault(row["incident_id"], []).append(Envelope.model_validate_json(row["body"]))
    return found


async def standings(
    conn: asyncpg.Connection, incident_ids: Sequence[str]
) -> dict[str, tuple[list[Envelope], Progress]]:
    """Each incident's own events (in stream order) and its progress (from those and the
    kept ones): two queries for the whole list (the lists of handlers and reporters)."""
    rows = await conn.fetch(
        "SELECT stream_id, body FROM events WHERE stream_id = ANY($1::text[])"
        " ORDER BY stream_id, version",
        list(incident_ids),
    )
    kept = await kept_events(conn, incident_ids)
    own: dict[str, list[Envelope]] = {incident_id: [] for incident_id in incident_ids}
    for row in rows:
        own[row["stream_id"]].append(Envelope.model_validate_json(bytes(row["body"])))
    return {
        incident_id: (events, progress_of(in_time_order(events, kept.get(incident_id, []))))
        for incident_id, events in own.items()
    }


async def progress(conn: asyncpg.Connection, incident_id: str, own: Sequence[Envelope]) -> Progress:
    """The incident's progress from its own events (`own`, opened if the outcome is to be
    read) and the kept ones."""
    kept = (await kept_events(conn, [incident_id])).get(incident_id, [])
    return progress_of(in_time_order(own, kept))


def handler_status(progress: Progress, level: int | None) -> dict[str, Any]:
    """What a handler's views show of it: the status in the common words and, while
    nobody has acknowledged, the acknowledgement deadline of the level she was asked at."""
    waiting = progress.status in WAITING
    due = progress.due_at(level) if waiting and level is not None else None
    return {
        "status": progress.status,
        "status_label": progress.label,
        "escalation_level": progress.level,
        "stalled": progress.stalled,
        "acknowledgement_due_at": None if due is None else utc_rfc3339(due),
    }
