"""Dead letters read back: what each says, which ones a selection names, and what a
re-drive sends (`incidents deadletter`, docs/operations.md "Dead letters").

A dead letter (`incident.input.rejected.v1` on incident.deadletter) keeps the original
record's value (base64), its topic, partition and offset, and why it was refused; not
the original record's key or headers. A re-drive sends the original value unchanged to
its topic with the key and headers its producer gave it, derived from the value the way
the outbox derives them (`record_key`; the content type and the event's `traceparent`),
so every consumer of that topic reads it as it read it the first time. The value keeps
its producer's signature: a re-drive can only repeat what a service said, never forge.

What is read of the original is its id, type and subject (the incident), and of a status
change its status word, never its data otherwise: a report's data is the report.

A re-drive publishes an original only to the topic its type belongs on (the catalog's,
with the deployment's prefix), never to the topic a dead letter names: a dead letter is
believed only as far as that. And it publishes none whose consumers keep the latest
event of its kind (`ORDER_SENSITIVE`): re-driven after a later one, it would be folded
over it and undo it. Those are made again at their source instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.domain.envelope import Envelope
from services.domain.events import (
    CATALOG,
    InputRejected,
    InvalidEvent,
    LegalHoldPlaced,
    LegalHoldReleased,
    PeopleConfirmed,
    ReassignmentOrdered,
    StatusChanged,
    Topic,
    parse_envelope,
    parse_event,
    record_key,
    unb64,
)


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: who refused what, when and why, and the original's identity."""

    id: str
    time: datetime
    rejected_by: str
    """The refusing service: the dead letter's `source`, e.g. `/services/triage`."""
    reason: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    original: bytes
    """The original record's value; empty when the refusing service withheld it."""
    original_event: Envelope | None
    """The original parsed as a CloudEvent (None if it is not one)."""
    signature: str | None = None
    """The dead letter's own signature: None when it was not checked (no key set), else
    "authentic" or why it is not (a `KeySet.check` reason). Its text is believed only
    when authentic; the original's signature is checked by its consumers either way."""

    @property
    def original_id(self) -> str | None:
        return self.original_event.id if self.original_event else None

    @property
    def original_type(self) -> str | None:
        return self.original_event.type if self.original_event else None

    @property
    def incident(self) -> str | None:
        """The original's subject (the incident, for an incident's event)."""
        return self.original_event.subject if self.original_event else None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.original).hexdigest()


AUTHENTIC = "authentic"


def read_dead_letter(value: bytes | None, *, signature: str | None = None) -> DeadLetter | None:
    """The dead letter in a record of incident.deadletter; None if the record is not one.
    `signature`: what checking the record's signature found (see `DeadLetter.signature`)."""
    try:
        envelope, data = parse_event(value or b"")
        if not isinstance(data, InputRejected):
            return None
        original = unb64(data.original_b64)
    except (InvalidEvent, ValueError):
        return None
    try:
        original_event: Envelope | None = parse_envelope(original) if original else None
    except InvalidEvent:
        original_event = None
    return DeadLetter(
        id=envelope.id,
        time=envelope.time,
        rejected_by=envelope.source,
        reason=data.reason,
        source_topic=data.source_topic,
        source_partition=data.source_partition,
        source_offset=data.source_offset,
        original=original,
        original_event=original_event,
        signature=signature,
    )


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command names: by id (the dead letter's or the original's),
    and the filters; a dead letter is selected when it passes every one given."""

    event_ids: frozenset[str] = frozenset()
    source_topics: frozenset[str] = frozenset()
    """Accepted spellings of one topic (with and without the deployment's prefix)."""
    reason_contains: str | None = None
    since: datetime | None = None
    incident: str | None = None

    @property
    def filtered(self) -> bool:
        """True when some filter other than the ids is given."""
        return bool(self.source_topics or self.reason_contains or self.since or self.incident)

    def matches(self, letter: DeadLetter) -> bool:
        if self.event_ids and not self.event_ids & {letter.id, letter.original_id}:
            return False
        if self.source_topics and letter.source_topic not in self.source_topics:
            return False
        if self.reason_contains and self.reason_contains.lower() not in letter.reason.lower():
            return False
        if self.since is not None and letter.time < self.since:
            return False
        return not (self.incident and letter.incident != self.incident)

    def select(self, letters: Iterable[DeadLetter]) -> list[DeadLetter]:
        return [letter for letter in letters if self.matches(letter)]


@dataclass(frozen=True)
class Resend:
    """One original to publish again: its topic, key and value, and the dead letters it
    answers (every consumer of a topic that refused the same record dead-lettered it)."""

    topic: str
    key: str
    event: Envelope
    value: bytes
    letters: tuple[DeadLetter, ...]


@dataclass(frozen=True)
class Skipped:
    """A selected dead letter that is not re-driven, and why."""

    letter: DeadLetter
    why: str


DIRECTORY_NOT_REDRIVEN = (
    "a directory change is not re-driven: it could undo a later one; publish the"
    " current records instead: incidents directory republish --person ID (or --all)"
)
"""A re-sync from HR sends nothing for a person whose record did not change (intake
records no event then); `incidents directory republish` sends the current record
whether it changed or not, and every consumer folds it after the stale one."""
ORDER_SENSITIVE: dict[str, str] = {
    PeopleConfirmed.TYPE: "a confirmation of the people is not re-driven: it replaces the"
    " lists of any before it, so it could undo a later one; have the holder confirm them again",
    ReassignmentOrdered.TYPE: "a reassignment order is not re-driven: it makes its people"
    " holders, so it could undo a later order or decision; order the reassignment again",
    LegalHoldPlaced.TYPE: "a legal-hold event is not re-driven: the latest one counts, so it"
    " could undo a later one; place or release the hold again",
    LegalHoldReleased.TYPE: "a legal-hold event is not re-driven: the latest one counts, so it"
    " could undo a later one; place or release the hold again",
}
"""Incident events whose consumers keep the latest of their kind (in arrival order), and
why: re-driven, such an event would be folded over any later one. Each is made again at
its source instead (through intake), which is always the latest. Directory events are
state, never re-driven either (`DIRECTORY_NOT_REDRIVEN`). A status change is one of
these but for `closed`, which is final. Every other type is re-driven: its consumers
dedupe it by event id, or add what it carries to what they have (exclusions only grow),
or order it by its own field (a decision's `revision`); docs/operations.md says what a
late one still changes."""
_STATUS_NOT_REDRIVEN = (
    "a status change other than closed is not re-driven: it sets the status of its time,"
    " so it could undo a later one; set the status again"
)


def plan_redrive(
    letters: Sequence[DeadLetter], *, prefix: str
) -> tuple[list[Resend], list[Skipped]]:
    """What a re-drive of `letters` sends: each distinct original once, to the topic of
    its type (`prefix` + the catalog's topic), oldest first (by its event time), and what
    it does not send, with why."""
    groups: dict[tuple[str, str], list[DeadLetter]] = {}
    skipped: list[Skipped] = []
    for letter in letters:
        why = not_redrivable(letter, prefix)
        if why is not None:
            skipped.append(Skipped(letter, why))
            continue
        assert letter.source_topic is not None
        groups.setdefault((letter.source_topic, letter.digest), []).append(letter)
    resends = []
    for (topic, _), same in groups.items():
        event = same[0].original_event
        assert event is not None
        resends.append(Resend(topic, record_key(event), event, same[0].original, tuple(same)))
    resends.sort(key=lambda r: r.event.time)  # an incident's originals in the order made
    return resends, skipped


def not_redrivable(letter: DeadLetter, prefix: str) -> str | None:
    """Why the dead letter's original is not re-driven; None if it may be."""
    if letter.signature not in (None, AUTHENTIC):
        return f"the dead letter itself is not authentic ({letter.signature})"
    if not letter.original:
        return "the original was withheld (intake keeps no inbound report in clear)"
    event = letter.original_event
    if event is None or event.type not in CATALOG:
        return "the original is not an event of the catalog: it would be refused again"
    topic = CATALOG[event.type].topic
    if topic is Topic.DEADLETTER:
        return "the original is itself a dead letter: it is not re-driven"
    if letter.source_topic is None:
        return "the dead letter does not say which topic the original came from"
    if letter.source_topic != prefix + topic:
        return (
            f"the dead letter says the original was read on {letter.source_topic}, but a"
            f" {event.type} belongs on {prefix + topic} only: not re-driven"
        )
    if topic is Topic.DIRECTORY:
        return DIRECTORY_NOT_REDRIVEN
    if event.type in ORDER_SENSITIVE:
        return ORDER_SENSITIVE[event.type]
    if event.type == StatusChanged.TYPE and event.data.get("status") != "closed":
        return _STATUS_NOT_REDRIVEN
    return None
