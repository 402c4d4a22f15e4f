"""What the ledger's index columns say about an entry, derived from its leaf.

The reads select an entry by columns beside its leaf (`incident_id`, `event_type`,
`valid`, `event_id`, `recorded_at`) and a person by the `ledger_people` index; the
hashes cover only the leaf. The append derives the columns from the event it records
(`services.audit.ledger`), and the verifier (`services.audit.verify`) proves that each
stored column still says what its leaf says, by this same rule. Pure: no database.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from services.domain.envelope import Envelope
from services.domain.events import InvalidEvent, PeopleImported, parse_envelope


class Indexed(NamedTuple):
    """The columns an entry is selected by, as its leaf determines them."""

    valid: bool
    """Whether the leaf records an event (else rejected input: `raw` and `reason`)."""
    event_id: str | None
    incident_id: str | None
    """The event's subject: an incident, a person, or a log."""
    event_type: str | None

    @classmethod
    def of(cls, envelope: Envelope | None) -> Indexed:
        """The columns of an entry that records `envelope` (None: rejected input)."""
        if envelope is None:
            return cls(False, None, None, None)
        return cls(True, envelope.id, envelope.subject, envelope.type)


def indexed_of_leaf(body: dict[str, Any]) -> Indexed | None:
    """`Indexed.of` a leaf's JSON (its ``event``, read as the append read it), or None
    when the leaf holds an event this version cannot read as a CloudEvent."""
    if "event" not in body:
        return Indexed.of(None)
    event = body["event"]
    if not isinstance(event, dict):  # null, a list, a number: no event (a forged leaf)
        return None
    try:
        return Indexed.of(parse_envelope(event))
    except InvalidEvent:
        return None


def chunk_records(people: Iterable[Any]) -> dict[str, Any]:
    """Person id -> record of each person a bulk import's chunk carries (the last record it
    lists for them): the rows `ledger_people` holds for the chunk's entry (audit migration
    0008 derives them in the database; `services.audit.ledger.chunk_people` in memory)."""
    return {
        p["person_id"]: p
        for p in people
        if isinstance(p, dict) and isinstance(p.get("person_id"), str)
    }


def people_of_leaf(body: dict[str, Any]) -> dict[str, Any]:
    """`chunk_records` of a leaf that records a bulk import's chunk; {} for any other."""
    event = body.get("event")
    if not isinstance(event, dict) or event.get("type") != PeopleImported.TYPE:
        return {}
    data = event.get("data")
    people = data.get("people") if isinstance(data, dict) else None
    return chunk_records(people) if isinstance(people, list) else {}
