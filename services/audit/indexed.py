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


def columns_document(
    indexed: Indexed, recorded_at: str | None, people: Iterable[tuple[str, Any]] = ()
) -> dict[str, Any]:
    """The ``indexed`` field of the entries route: the columns `indexed` and
    `recorded_at`, and ``people`` (person id, record) when there are any."""
    columns: dict[str, Any] = {
        "valid": indexed.valid,
        "incident_id": indexed.incident_id,
        "event_type": indexed.event_type,
        "event_id": indexed.event_id,
        "recorded_at": recorded_at,
    }
    listed = [{"person_id": person, "record": record} for person, record in people]
    if listed:
        columns["people"] = listed
    return columns


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


def index_problems(served: dict[str, Any], body: dict[str, Any], position: int) -> list[str]:
    """How the index columns of entry `position` as stored (`served`: the ``indexed`` of
    the entries route) differ from what its leaf's JSON (`body`) says by the append's
    rule; [] when they agree. A leaf whose event this version cannot read as a
    CloudEvent has only its ``valid`` and ``recorded_at`` compared (the reads cannot
    read it either). The verifier runs it on each entry it reads; the entries route on
    each entry it withholds, serving only the verdict (``indexed_ok``)."""
    derived = indexed_of_leaf(body)
    expected: dict[str, Any] = {"valid": "event" in body, "recorded_at": body["recorded_at"]}
    if derived is not None:
        expected |= {
            "incident_id": derived.incident_id,
            "event_type": derived.event_type,
            "event_id": derived.event_id,
        }
    problems = [
        f"entry {position}'s {name} column says {served.get(name)!r}, its leaf says {value!r}"
        for name, value in expected.items()
        if served.get(name) != value or type(served.get(name)) is not type(value)
    ]
    problems += people_problems(served.get("people", []), people_of_leaf(body), position)
    return problems


def people_problems(served: Any, carried: dict[str, Any], position: int) -> list[str]:
    """How the ``ledger_people`` rows served at an entry differ from the people its leaf
    carries (`people_of_leaf`): a person left out, one added, a record changed (a row
    without a record is one the database could not copy; the reads then use the leaf)."""
    rows: dict[str, Any] = {}
    if not isinstance(served, list):
        return [f"entry {position}'s people index is served as no list"]
    for row in served:
        if not isinstance(row, dict) or not isinstance(row.get("person_id"), str):
            return [f"entry {position}'s people index holds a row without a person id"]
        rows[row["person_id"]] = row.get("record")
    problems = []
    missing = sorted(carried.keys() - rows.keys())
    if missing:
        problems.append(
            f"entry {position}'s people index leaves out {names(missing)}, whom its leaf carries"
        )
    extra = sorted(rows.keys() - carried.keys())
    if extra:
        problems.append(
            f"entry {position}'s people index lists {names(extra)}, whom its leaf does not carry"
        )
    changed = sorted(
        p for p in rows.keys() & carried.keys() if rows[p] is not None and rows[p] != carried[p]
    )
    if changed:
        problems.append(
            f"entry {position}'s people index keeps for {names(changed)} a record its leaf"
            " does not hold"
        )
    return problems


def names(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if ids[5:] else "")
