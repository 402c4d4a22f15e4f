"""The dead-letter topic read and re-driven over Kafka (`incidents deadletter`).

It connects as the services do (CommonSettings: bootstrap, TLS/SASL, topic prefix),
reads incident.deadletter from the start without a consumer group (`read_from_start`),
and publishes the originals a re-drive selected (`services.domain.deadletter`) with
acks=all, one at a time, so what it prints as sent was acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka.structs import RecordMetadata

from services.domain.deadletter import DeadLetter, Resend, read_dead_letter
from services.domain.events import Topic
from services.infra.eventstore import record_headers
from services.infra.kafka import (
    TopicMissing,
    all_topics,
    list_topics,
    make_producer,
    read_from_start,
)
from services.infra.settings import CommonSettings

Progress = Callable[[int, int], None]
"""`progress(done, total)`."""


async def dead_letters(
    settings: CommonSettings, *, within: float, progress: Progress | None = None
) -> list[DeadLetter]:
    """Every dead letter on the deployment's incident.deadletter now, oldest first."""
    records = await read_from_start(
        settings, settings.topic(Topic.DEADLETTER), within=within, progress=progress
    )
    letters = [read_dead_letter(record.value) for record in records]
    return sorted((x for x in letters if x is not None), key=lambda x: x.time)


@dataclass(frozen=True)
class Sent:
    """A re-driven original and where the broker put it."""

    resend: Resend
    partition: int
    offset: int


async def redrive(
    settings: CommonSettings, resends: Sequence[Resend], *, progress: Progress | None = None
) -> list[Sent]:
    """Publish each original again, unchanged, with its derived key and headers; stops
    at the first failure (what was sent before it is returned by the exception's
    `sent`). TopicMissing if a topic is gone (nothing is sent then)."""
    missing = sorted({r.topic for r in resends} - await list_topics(settings))
    if missing:
        raise TopicMissing(missing[0])
    producer = make_producer(settings, client_id="incidents-deadletter-redrive")
    await producer.start()
    sent: list[Sent] = []
    try:
        for resend in resends:
            headers = [(k, v.encode()) for k, v in record_headers(resend.event)]
            try:
                meta: RecordMetadata = await producer.send_and_wait(
                    resend.topic, resend.value, key=resend.key.encode(), headers=headers
                )
            except Exception as exc:
                raise RedriveFailed(sent, exc) from exc
            sent.append(Sent(resend, meta.partition, meta.offset))
            if progress is not None:
                progress(len(sent), len(resends))
    finally:
        await producer.stop()
    return sent


def redrive_topics(settings: CommonSettings) -> list[str]:
    """The topics a re-drive may publish to: the deployment's own, bar incident.deadletter."""
    dead = settings.topic(Topic.DEADLETTER)
    return [t for t in all_topics(settings) if t != dead]


class RedriveFailed(RuntimeError):
    """A send failed; `sent` is what was acknowledged before it."""

    def __init__(self, sent: list[Sent], cause: BaseException) -> None:
        super().__init__(f"a send failed after {len(sent)} were acknowledged: {cause!r}")
        self.sent = sent
        self.cause = cause
