"""Evidence files, stored and read back: the use cases behind the attachment routes.

`store` takes a file as a stream of bytes after the caller's access was decided (a
handler through `actions.act`, a reporter through her receipt) and works in two steps:

1. `receive`, with no database connection: it sniffs the type from the first bytes
   (`services.domain.attachments.sniff`), seals the content in chunks of `CHUNK_BYTES`
   with the incident's data key (AES-256-GCM; the incident, the file, the chunk's index
   and whether it is the last are the associated data, so chunks cannot be reordered,
   swapped between files or dropped from the end) and spools the sealed chunks (in
   memory up to `SPOOL_MEMORY_BYTES`, then a temporary file: only ciphertext ever
   touches the disk), at most the file limit. A client that sends slowly holds no
   pooled connection: the pool serves everyone else meanwhile.
2. One short transaction once all of it arrived: the incident's limit, the chunks, the
   file's row and `incident.attachment.added.v1`.

Anything that stops the upload (over a limit, a forbidden type, the client gone, the
incident closed meanwhile) stores nothing: the spool is dropped, the transaction rolls
back, and chunks written outside it are discarded.

The chunks go to a `ChunkStore` (`chunks_for` picks it from the settings):
`PostgresChunks` (the `attachment_chunks` table, in the upload's transaction, the
default) or `S3Chunks` (`services.intake.attachments_s3`: objects
`<prefix><file>/<index>` in an S3-compatible bucket, written just before the
transaction commits and deleted when it does not).

`read` yields a file's plaintext chunk by chunk; the routes call it only after
`incident.attachment.downloaded.v1` committed. Once the incident's key is destroyed
(erasure) nothing opens any more, and `delete_incident` removes the chunks too.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from tempfile import SpooledTemporaryFile
from typing import Any, Protocol

import asyncpg

from services.domain.attachments import (
    SNIFF_BYTES,
    Attachment,
    attachments_of,
    safe_name,
    sniff,
    visible_to_reporter,
)
from services.domain.events import (
    AttachmentAdded,
    AttachmentAudience,
    ReporterMessage,
)
from services.domain.incident import fold
from services.infra import eventstore
from services.infra.crypto import IncidentKey
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime
from services.intake.actions import ActionError, Busy, NotNow, Rejected, incident_event

CHUNK_BYTES = 1024 * 1024
"""Plaintext bytes per sealed chunk (the last one may be shorter)."""
SPOOL_MEMORY_BYTES = 4 * CHUNK_BYTES
"""Sealed bytes an upload keeps in memory before its spool moves to a temporary file."""
ATTEMPTS = 10


class TooLarge(ActionError):
    status, title = 413, "Too large"


class Unsupported(ActionError):
    status, title = 415, "Unsupported file type"
    detail = (
        "This type of file is not accepted (found from its content, not its name):"
        " PDF, PNG, JPEG, GIF, WebP, plain text, MP3, M4A, WAV, MP4, DOCX or XLSX."
    )


class Empty(Rejected):
    detail = "The file is empty."


class NoSuchAttachment(ActionError):
    """An unknown file, or one the caller may not have: the two look the same."""

    status, title, detail = 404, "Not found", "No such attachment."


@dataclass(frozen=True)
class Limits:
    """Bytes per file, and bytes of files per incident (the intake settings)."""

    file: int
    incident: int

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(settings.attachment_max_bytes, settings.attachment_incident_max_bytes)


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
    ) -> None:
        """Write a chunk, in the upload's transaction (`conn`) or beside it."""

    async def discard(self, attachment_id: str, count: int) -> None:
        """The upload's transaction did not commit: remove what `put` wrote beside it."""

    async def get(self, db: asyncpg.Pool, attachment_id: str, index: int) -> bytes | None:
        """A sealed chunk, or None when it is gone."""

    async def delete_incident(self, conn: asyncpg.Connection, incident_id: str) -> int:
        """Delete an incident's files (rows and chunks); how many files."""


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

    async def discard(self, attachment_id: str, count: int) -> None:
        """Nothing to do: the rolled-back transaction took the chunks with it."""

    async def get(self, db: asyncpg.Pool, attachment_id: str, index: int) -> bytes | None:
        async with db.acquire() as conn:
            body = await conn.fetchval(
                "SELECT body FROM attachment_chunks WHERE attachment_id = $1 AND idx = $2",
                attachment_id,
                index,
            )
        return None if body is None else bytes(body)

    async def delete_incident(self, conn: asyncpg.Connection, incident_id: str) -> int:
        deleted = await conn.fetch(
            "DELETE FROM attachments WHERE incident_id = $1 RETURNING 1", incident_id
        )
        return len(deleted)


CHUNKS = PostgresChunks()
_S3_STORES: dict[object, ChunkStore] = {}


def chunks_for(settings: object) -> ChunkStore:
    """The chunk store the settings name (`INCIDENTS_ATTACHMENT_STORE`), one per place."""
    if getattr(settings, "attachment_store", "postgres") != "s3":
        return CHUNKS
    from services.intake.attachments_s3 import S3Chunks, S3Place  # the optional client

    place = S3Place.of(settings)
    if place not in _S3_STORES:
        _S3_STORES[place] = S3Chunks(place)
    return _S3_STORES[place]


@dataclass
class Received:
    """A file's sealed chunks, spooled until they are stored (`receive`)."""

    attachment_id: str
    size: int
    media_type: str
    digest: str
    spool: SpooledTemporaryFile[bytes]
    lengths: list[int]

    @property
    def count(self) -> int:
        return len(self.lengths)

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """(index, sealed chunk), in order."""
        self.spool.seek(0)
        for index, length in enumerate(self.lengths):
            yield index, self.spool.read(length)

    def close(self) -> None:
        self.spool.close()


async def store(
    runtime: Runtime,
    key: IncidentKey,
    upload: Upload,
    body: AsyncIterator[bytes],
    limits: Limits,
    chunks: ChunkStore | None = None,
) -> AttachmentAdded:
    """Receive and seal a file, then store it and record `incident.attachment.added.v1`
    in one short transaction; its data.

    Raises TooLarge (the file or the incident over its limit), Unsupported (a type not
    allowed), Empty, NotNow (the incident closed), Rejected (`message_id` is not a
    message of the incident), Busy; and whatever the body's iterator raises (a client
    that went away). In every case nothing is stored.
    """
    chunks = chunks_for(runtime.settings) if chunks is None else chunks
    received = await receive(key, str(uuid.uuid4()), body, limits.file)
    try:
        return await _commit(runtime, key, upload, received, limits, chunks)
    finally:
        received.close()


async def _commit(
    runtime: Runtime,
    key: IncidentKey,
    upload: Upload,
    received: Received,
    limits: Limits,
    chunks: ChunkStore,
) -> AttachmentAdded:
    attachment_id, size = received.attachment_id, received.size
    try:
        async with runtime.db.acquire() as conn, conn.transaction():
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
                    f"This incident's files would exceed {limits.incident} bytes"
                    f" ({held} held already)."
                )
            await conn.execute(
                "INSERT INTO attachments (attachment_id, incident_id, size, chunks)"
                " VALUES ($1, $2, $3, $4)",
                attachment_id,
                upload.incident_id,
                size,
                received.count,
            )
            for index, sealed in received.chunks():
                await chunks.put(conn, attachment_id, index, sealed)
            data = AttachmentAdded(
                attachment_id=attachment_id,
                digest=received.digest,
                size=size,
                media_type=received.media_type,
                name=key.seal("name", safe_name(upload.name, received.media_type)),
                author=upload.author,
                audience=upload.audience,
                message_id=upload.message_id,
            )
            await _record(runtime, conn, upload, data)
    except BaseException:
        await chunks.discard(attachment_id, received.count)
        raise
    return data


async def receive(
    key: IncidentKey, attachment_id: str, body: AsyncIterator[bytes], max_bytes: int
) -> Received:
    """Seal the body's chunks into a spool (no database); raises TooLarge, Unsupported,
    Empty, or what the body raises (the spool is dropped then).

    One chunk is held back until more bytes arrive or the body ends, so the last chunk
    is sealed as the last.
    """
    mac = hmac.new(key.salt, digestmod=hashlib.sha256)
    spool: SpooledTemporaryFile[bytes] = SpooledTemporaryFile(  # noqa: SIM115 (closed by the caller)
        max_size=SPOOL_MEMORY_BYTES
    )
    lengths: list[int] = []
    buffer = bytearray()
    size = 0
    media_type: str | None = None

    def spool_chunk(plain: bytes, last: bool) -> None:
        sealed = key.seal_chunk(attachment_id, len(lengths), last, plain)
        spool.write(sealed)
        lengths.append(len(sealed))

    try:
        async for piece in body:
            size += len(piece)
            if size > max_bytes:
                raise TooLarge(f"A file is at most {max_bytes} bytes.")
            mac.update(piece)
            buffer += piece
            if media_type is None and len(buffer) >= SNIFF_BYTES:
                media_type = _type_of(bytes(buffer[:SNIFF_BYTES]))
            while media_type is not None and len(buffer) > CHUNK_BYTES:
                spool_chunk(bytes(buffer[:CHUNK_BYTES]), False)
                del buffer[:CHUNK_BYTES]
        if size == 0:
            raise Empty()
        if media_type is None:
            media_type = _type_of(bytes(buffer[:SNIFF_BYTES]))
        spool_chunk(bytes(buffer), True)
    except BaseException:
        spool.close()
        raise
    digest = "sha256:" + mac.hexdigest()
    return Received(attachment_id, size, media_type, digest, spool, lengths)


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
            e.id == upload.message_id and e.type == ReporterMessage.TYPE for e in events
        ):
            raise Rejected(
                "message_id: not a message of this incident",
                errors=[{"field": "message_id", "message": "not a message of this incident"}],
            )
        event = incident_event(
            runtime, upload.incident_id, events, data, upload.actor, traceparent=upload.traceparent
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
    chunks: ChunkStore | None = None,
) -> AsyncIterator[bytes]:
    """A file's plaintext, chunk by chunk (call only after the download was recorded).

    Raises NoSuchAttachment when its row is gone (erased), CryptoError when a chunk does
    not open in its place (tampered, or moved).
    """
    chunks = chunks_for(runtime.settings) if chunks is None else chunks
    async with runtime.db.acquire() as conn:
        count = await conn.fetchval(
            "SELECT chunks FROM attachments WHERE attachment_id = $1 AND incident_id = $2",
            attachment_id,
            key.incident_id,
        )
    if count is None:
        raise NoSuchAttachment()
    for index in range(count):
        sealed = await chunks.get(runtime.db, attachment_id, index)
        if sealed is None:
            raise NoSuchAttachment()
        yield key.open_chunk(attachment_id, index, index == count - 1, sealed)
