"""Evidence files, stored and read back: the use cases behind the attachment routes.

`store` takes a file as a stream of bytes after the caller's access was decided (a
handler through `actions.act`, a reporter through her receipt): it sniffs the type from
the first bytes (`services.domain.attachments.sniff`), seals the content in chunks of
`CHUNK_BYTES` with the incident's data key (AES-256-GCM; the incident, the file, the
chunk's index and whether it is the last are the associated data, so chunks cannot be
reordered, swapped between files or dropped from the end), and writes the chunks, the
file's row and `incident.attachment.added.v1` in one transaction. Anything that stops
the upload (over a limit, a forbidden type, the client gone, the incident closed
meanwhile) rolls it back: nothing is half-stored.

The chunks go to a `ChunkStore`; `PostgresChunks` (the `attachment_chunks` table, in the
upload's transaction) is the one implemented. An S3-compatible store would implement the
same three methods, writing objects under `<incident>/<file>/<index>` and deleting them
when the transaction does not commit (docs/attachments.md).

`read` yields a file's plaintext chunk by chunk; the routes call it only after
`incident.attachment.downloaded.v1` committed. Once the incident's key is destroyed
(erasure) nothing opens any more, and `delete_incident` removes the chunks too.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

import asyncpg

from services.domain.attachments import (
    ADDED,
    SNIFF_BYTES,
    Attachment,
    attachments_of,
    safe_name,
    sniff,
    visible_to_reporter,
)
from services.domain.events import AttachmentAdded, AttachmentAudience, make_event
from services.domain.incident import fold
from services.infra import eventstore
from services.infra.crypto import IncidentKey
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime
from services.intake.actions import ActionError, Busy, NotNow, Rejected

CHUNK_BYTES = 1024 * 1024
"""Plaintext bytes per sealed chunk (the last one may be shorter)."""
ATTEMPTS = 10
MESSAGE = "incident.reporter.message.v1"


class TooLarge(ActionError):
    status, title = 413, "Too large"


class Unsupported(ActionError):
    status, title = 415, "Unsupported file type"

    def __init__(self) -> None:
        super().__init__(
            "This type of file is not accepted (found from its content, not its name):"
            " PDF, PNG, JPEG, GIF, WebP, plain text, MP3, M4A, WAV, MP4, DOCX or XLSX."
        )


class Empty(Rejected):
    def __init__(self) -> None:
        super().__init__("The file is empty.")


class NoSuchAttachment(ActionError):
    """An unknown file, or one the caller may not have: the two look the same."""

    status, title = 404, "Not found"

    def __init__(self) -> None:
        super().__init__("No such attachment.")


@dataclass(frozen=True)
class Limits:
    """Bytes per file, and bytes of files per incident (the intake settings)."""

    file: int
    incident: int


@dataclass(frozen=True)
class Upload:
    """Who attaches a file to which incident, how it was named, and for whom."""

    incident_id: str
    author: str
    """`reporter`, or the handler's principal id."""
    actor: str
    name: str | None
    audience: AttachmentAudience = "handlers"
    message_id: str | None = None
    traceparent: str | None = None


class ChunkStore(Protocol):
    """Where sealed chunks live (PostgreSQL by default; see the module docstring)."""

    async def put(
        self, conn: asyncpg.Connection, attachment_id: str, index: int, sealed: bytes
    ) -> None: ...

    async def get(
        self, conn: asyncpg.Connection, attachment_id: str, index: int
    ) -> bytes | None: ...

    async def delete_incident(self, conn: asyncpg.Connection, incident_id: str) -> int: ...


class PostgresChunks:
    """Chunks in `attachment_chunks`, written in the caller's transaction."""

    async def put(
        self, conn: asyncpg.Connection, attachment_id: str, index: int, sealed: bytes
    ) -> None:
        await conn.execute(
            "INSERT INTO attachment_chunks (attachment_id, idx, body) VALUES ($1, $2, $3)",
            attachment_id,
            index,
            sealed,
        )

    async def get(self, conn: asyncpg.Connection, attachment_id: str, index: int) -> bytes | None:
        body = await conn.fetchval(
            "SELECT body FROM attachment_chunks WHERE attachment_id = $1 AND idx = $2",
            attachment_id,
            index,
        )
        return None if body is None else bytes(body)

    async def delete_incident(self, conn: asyncpg.Connection, incident_id: str) -> int:
        """Delete an incident's files (rows and chunks); how many files."""
        deleted = await conn.fetch(
            "DELETE FROM attachments WHERE incident_id = $1 RETURNING 1", incident_id
        )
        return len(deleted)


CHUNKS = PostgresChunks()


async def store(
    runtime: Runtime,
    key: IncidentKey,
    upload: Upload,
    body: AsyncIterator[bytes],
    limits: Limits,
    chunks: ChunkStore = CHUNKS,
) -> AttachmentAdded:
    """Seal and store a file, and record `incident.attachment.added.v1`; its data.

    Raises TooLarge (the file or the incident over its limit), Unsupported (a type not
    allowed), Empty, NotNow (the incident closed), Rejected (`message_id` is not a
    message of the incident), Busy; and whatever the body's iterator raises (a client
    that went away). In every case nothing is stored.
    """
    attachment_id = str(uuid.uuid4())
    async with runtime.db.acquire() as conn, conn.transaction():
        size, count, media_type, digest = await _write_chunks(
            conn, key, attachment_id, body, limits.file, chunks
        )
        # one upload at a time per incident from here, so two cannot both pass the limit
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"attachments:{upload.incident_id}",
        )
        held = await conn.fetchval(
            "SELECT coalesce(sum(size), 0) FROM attachments WHERE incident_id = $1",
            upload.incident_id,
        )
        if held + size > limits.incident:
            raise TooLarge(
                f"This incident's files would exceed {limits.incident} bytes ({held} held already)."
            )
        await conn.execute(
            "INSERT INTO attachments (attachment_id, incident_id, size, chunks)"
            " VALUES ($1, $2, $3, $4)",
            attachment_id,
            upload.incident_id,
            size,
            count,
        )
        data = AttachmentAdded(
            attachment_id=attachment_id,
            digest=digest,
            size=size,
            media_type=media_type,
            name=key.seal("name", safe_name(upload.name, media_type)),
            author=upload.author,
            audience=upload.audience,
            message_id=upload.message_id,
        )
        await _record(runtime, conn, upload, data)
    return data


async def _write_chunks(
    conn: asyncpg.Connection,
    key: IncidentKey,
    attachment_id: str,
    body: AsyncIterator[bytes],
    max_bytes: int,
    chunks: ChunkStore,
) -> tuple[int, int, str, str]:
    """Seal and put the body's chunks; (size, chunks, media type, salted digest).

    One chunk is held back until more bytes arrive or the body ends, so the last chunk
    is sealed as the last.
    """
    mac = hmac.new(key.salt, digestmod=hashlib.sha256)
    buffer = bytearray()
    size = index = 0
    media_type: str | None = None
    async for piece in body:
        size += len(piece)
        if size > max_bytes:
            raise TooLarge(f"A file is at most {max_bytes} bytes.")
        mac.update(piece)
        buffer += piece
        if media_type is None and len(buffer) >= SNIFF_BYTES:
            media_type = _type_of(bytes(buffer[:SNIFF_BYTES]))
        while media_type is not None and len(buffer) > CHUNK_BYTES:
            await chunks.put(
                conn,
                attachment_id,
                index,
                key.seal_chunk(attachment_id, index, False, bytes(buffer[:CHUNK_BYTES])),
            )
            del buffer[:CHUNK_BYTES]
            index += 1
    if size == 0:
        raise Empty()
    if media_type is None:
        media_type = _type_of(bytes(buffer[:SNIFF_BYTES]))
    await chunks.put(
        conn, attachment_id, index, key.seal_chunk(attachment_id, index, True, bytes(buffer))
    )
    return size, index + 1, media_type, "sha256:" + mac.hexdigest()


def _type_of(head: bytes) -> str:
    media_type = sniff(head)
    if media_type is None:
        raise Unsupported()
    return media_type


async def _record(
    runtime: Runtime, conn: asyncpg.Connection, upload: Upload, data: AttachmentAdded
) -> None:
    """Append the file's event at the stream's version (in a savepoint per attempt),
    once the incident is still open and `message_id` is one of its messages."""
    for _attempt in range(ATTEMPTS):
        stored = await eventstore.load(conn, upload.incident_id)
        events = [s.envelope for s in stored]
        if not events:
            raise NotNow("This incident has no report.")
        if fold(upload.incident_id, events).status == "closed":
            raise NotNow("The incident is closed: nothing can be added.", current_status="closed")
        if upload.message_id is not None and not any(
            e.id == upload.message_id and e.type == MESSAGE for e in events
        ):
            raise Rejected(
                "message_id: not a message of this incident",
                errors=[{"field": "message_id", "message": "not a message of this incident"}],
            )
        event = make_event(
            ADDED,
            subject=upload.incident_id,
            data=data,
            source=runtime.source,
            time=datetime.now(UTC),
            actor=upload.actor,
            correlationid=events[0].correlationid or events[0].id,
            traceparent=upload.traceparent,
        )
        try:
            await eventstore.append(
                conn,
                upload.incident_id,
                stored[-1].version,
                [event],
                topic_prefix=runtime.settings.kafka_topic_prefix,
            )
        except eventstore.ConcurrencyError:
            continue
        return
    raise Busy()


async def reporter_files(runtime: Runtime, keys: KeyStore, incident_id: str) -> list[Attachment]:
    """The files the reporter may download, names opened (after her receipt matched).

    A handler's file says `handlers` as its author, never who: the reporter is never
    told who handles her report (docs/reporters.md)."""
    async with runtime.db.acquire() as conn:
        stored = await eventstore.load(conn, incident_id)
        events = await keys.open_events(conn, incident_id, [s.envelope for s in stored])
    return [
        a if a.author == "reporter" else replace(a, author="handlers")
        for a in attachments_of(events)
        if visible_to_reporter(a)
    ]


async def read(
    runtime: Runtime,
    key: IncidentKey,
    attachment_id: str,
    chunks: ChunkStore = CHUNKS,
) -> AsyncIterator[bytes]:
    """A file's plaintext, chunk by chunk (call only after the download was recorded).

    Raises NoSuchAttachment when its row is gone (erased), CryptoError when a chunk does
    not open in its place (tampered, or moved).
    """
    async with runtime.db.acquire() as conn:
        count = await conn.fetchval(
            "SELECT chunks FROM attachments WHERE attachment_id = $1 AND incident_id = $2",
            attachment_id,
            key.incident_id,
        )
    if count is None:
        raise NoSuchAttachment()
    for index in range(count):
        async with runtime.db.acquire() as conn:
            sealed = await chunks.get(conn, attachment_id, index)
        if sealed is None:
            raise NoSuchAttachment()
        yield key.open_chunk(attachment_id, index, index == count - 1, sealed)
