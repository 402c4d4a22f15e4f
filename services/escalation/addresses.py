"""Escalation's address book: who gets a mail notice where, from the directory events.

The SMTP adapter needs each principal's e-mail address. It came from the directory
file, read once at start, so an address changed through the directory API (or SCIM)
was not seen until a restart. Now escalation follows `directory.changes` like triage
and keeps one small projection: `people_addresses` (person id, e-mail, event time),
written from each `directory.person.upserted.v1` and each person of a
`directory.people.imported.v1` (a bulk import's chunk; the seed file reaches it that
way too, as intake seeds the directory as events). A batch is one statement; a record
delivered again, or an older event arriving late, never overwrites a newer address
(the event time decides). The adapter looks an address up when it sends, one indexed
read, so memory does not grow with the organisation.

Role events carry no address and are skipped, and so is anything that is not a valid
directory event: triage dead-letters what it cannot read on this topic. The webhook
adapter sends the principal's id, never an address, so it needs no lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from aiokafka import ConsumerRecord

from services.domain.envelope import Envelope
from services.domain.events import (
    InvalidEvent,
    PeopleImported,
    PersonRecord,
    PersonUpserted,
    parse_envelope,
)
from services.infra.runtime import Runtime


def people_of(envelope: Envelope) -> Sequence[PersonRecord]:
    """The people whose whole record a directory event gives, in order: one for an
    upsert, a chunk's for an import; none for any other event (or invalid data)."""
    try:
        return [PersonUpserted.read(envelope)]
    except InvalidEvent:
        pass
    try:
        return PeopleImported.read(envelope).people
    except InvalidEvent:
        return []


def latest_addresses(
    records: Sequence[ConsumerRecord],
) -> dict[str, tuple[str | None, datetime]]:
    """person id -> (e-mail or None, event time): the latest record per person of a
    batch (of one event, the last it lists)."""
    latest: dict[str, tuple[str | None, datetime]] = {}
    for record in records:
        try:
            envelope = parse_envelope(record.value or b"")
        except InvalidEvent:
            continue
        for data in people_of(envelope):
            known = latest.get(data.person_id)
            if known is None or envelope.time >= known[1]:
                latest[data.person_id] = (data.email or None, envelope.time)
    return latest


class Addresses:
    """The `people_addresses` projection: fed by `on_directory`, read by `lookup`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def on_directory(self, records: Sequence[ConsumerRecord]) -> None:
        latest = latest_addresses(records)
        if not latest:
            return
        async with self.runtime.db.acquire() as conn:
            await conn.execute(
                "INSERT INTO people_addresses (person_id, email, at)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])"
                " ON CONFLICT (person_id) DO UPDATE SET email = excluded.email, at = excluded.at"
                " WHERE people_addresses.at <= excluded.at",
                list(latest),
                [email for email, _ in latest.values()],
                [at for _, at in latest.values()],
            )

    async def lookup(self, principal: str) -> str | None:
        """The principal's e-mail address as the directory events last gave it."""
        async with self.runtime.db.acquire() as conn:
            found: str | None = await conn.fetchval(
                "SELECT email FROM people_addresses WHERE person_id = $1", principal
            )
        return found
