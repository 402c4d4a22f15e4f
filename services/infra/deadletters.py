"""The dead-letter topic read and re-driven over Kafka (`incidents deadletter`).

It connects as the services do (CommonSettings: bootstrap, TLS/SASL, topic prefix),
reads incident.deadletter from the start without a consumer group (`read_from_start`),
checks each dead letter's own signature against the services' key set when it has one
(`dead_letter_keys`), and publishes the originals a re-drive selected
(`services.domain.deadletter`) with acks=all, one at a time, so what it prints as sent
was acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka.structs import RecordMetadata

from services.domain.deadletter import AUTHENTIC, DeadLetter, Resend, read_dead_letter
from services.domain.events import Topic
from services.infra.eventstore import record_headers
from services.infra.kafka import TopicMissing, list_topics, make_producer, read_from_start
from services.infra.settings import CommonSettings
from services.infra.signing import KeySet, SigningError, development_key_set, parse_key_set

Progress = Callable[[int, int], None]
"""`progress(done, total)`."""


def dead_letter_keys(settings: CommonSettings) -> KeySet | None:
    """The key set the services check signatures against: INCIDENTS_EVENT_KEYS_FILE, else
    (outside production) the development keys; None in production without the file.
    SigningError if the file cannot be read."""
    path = settings.event_keys_file
    if path is None:
        return None if settings.environment == "production" else development_key_set()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise SigningError(f"event key set {path}: {exc}") from exc
    return parse_key_set(text)


async def dead_letters(
    settings: CommonSettings,
    *,
    within: float,
    keys: KeySet | None,
    progress: Progress | None = None,
) -> list[DeadLetter]:
    """Every dead letter on the deployment's incident.deadletter now, oldest first, each
    with its own signature checked against `keys` (not checked when None)."""
    records = await read_from_start(
        settings, settings.topic(Topic.DEADLETTER), within=within, progress=progress
    )
    letters = []
    for record in records:
        signature = None
        if keys is not None:
            signature = keys.check_bytes(record.value)[0] or AUTHENTIC
        letters.append(read_dead_letter(record.value, signature=signature))
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


class RedriveFailed(RuntimeError):
    """A send failed; `sent` is what was acknowledged before it."""

    def __init__(self, sent: list[Sent], cause: BaseException) -> None:
        super().__init__(f"a send failed after {len(sent)} were acknowledged: {cause!r}")
        self.sent = sent
        self.cause = cause
