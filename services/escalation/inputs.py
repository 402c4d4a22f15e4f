"""Kafka records as escalation's inputs: the adapters' shared parsing.

`input_of` makes a use-case `Input` of a record (its span continues the record's trace
while the use case processes it); `parsed_as` reads a record that must be of one event
type, or None for anything else (invalid records included: on the shared topics
another service dead-letters what it cannot read).
"""

from __future__ import annotations

from typing import TypeVar

from aiokafka import ConsumerRecord

from services.domain.envelope import Envelope
from services.domain.events import Event, InvalidEvent, parse_envelope
from services.escalation.usecases import Input
from services.infra.kafka import record_span

E = TypeVar("E", bound=Event)


def input_of(record: ConsumerRecord, envelope: Envelope) -> Input:
    """The use-case input of a record already parsed into `envelope`."""
    return Input(
        envelope, record.topic, record.partition, record.offset, lambda: record_span(record)
    )


def parsed_as(record: ConsumerRecord, kind: type[E]) -> tuple[Envelope, E] | None:
    """The record's envelope and data if it is a valid event read as `kind` (its type or
    an older version upcast), else None."""
    try:
        envelope = parse_envelope(record.value or b"")
        return envelope, kind.read(envelope)
    except InvalidEvent:
        return None
