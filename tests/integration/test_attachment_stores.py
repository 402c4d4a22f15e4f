"""The attachment chunk stores' contract, and uploads that hold no pooled connection.

The same tests run on `PostgresChunks` and on `S3Chunks` against a real S3-compatible
server (moto's server mode, over HTTP on a local port): a file stored reads back
whole; one that fails after its chunks were put leaves neither a row nor an object;
erasure deletes its chunks; a missing chunk reads as gone.

A slow client holds no connection while it sends: with a pool of one connection,
another upload and a handler's view succeed while the first is still sending, and a
cut-off upload stores nothing. The intake app is test_handlers' (its fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from services.infra.crypto import IncidentKey
from services.infra.db import create_pool
from services.infra.settings import IntakeSettings
from services.intake import attachments
from services.intake.actions import Rejected
from services.intake.attachments import (
    ChunkStore,
    Limits,
    NoSuchAttachment,
    PostgresChunks,
    Upload,
    chunks_for,
)
from services.intake.attachments_s3 import S3Chunks, S3Place
from tests.integration.test_handlers import (
    Env,
    auth,
    env,
    fetch,
    publish,
    submit,
    triaged,
    until_routed,
)
from tooling.localstack import free_port

pytestmark = pytest.mark.integration
__all__ = ["env"]  # the module's intake app (a fixture of test_handlers)

BUCKET = "evidence"
LIMITS = Limits(file=4 * 1024 * 1024, incident=64 * 1024 * 1024)


def pdf(size: int) -> bytes:
    return b"%PDF-1.7\n" + os.urandom(size - 9)


async def pieces(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto), with the bucket made."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
async def s3(s3_server: str, tmp_path: Path) -> AsyncIterator[S3Chunks]:
    secret = tmp_path / "s3-secret"
    secret.write_text("testing-secret\n")
    place = S3Place(s3_server, "us-east-1", BUCKET, "t/", "testing", secret)
    store = S3Chunks(place)
    client = await store.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        await client.create_bucket(Bucket=BUCKET)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture(params=["postgres", "s3"])
def chunks(request: pytest.FixtureRequest) -> ChunkStore:
    if request.param == "postgres":
        return PostgresChunks()
    store: ChunkStore = request.getfixturevalue("s3")
    return store


async def objects(store: ChunkStore) -> list[str]:
    """The keys of the S3 store's objects (none for PostgreSQL)."""
    if not isinstance(store, S3Chunks):
        return []
    client = await store.client()
    listed = await client.list_objects_v2(Bucket=BUCKET, Prefix=store.place.prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


async def key_of(env: Env, incident: str) -> IncidentKey:
    async with env.app.state.runtime.db.acquire() as conn:
        key: IncidentKey | None = await env.app.state.keys.get(conn, incident)
    assert key is not None
    return key


async def files_of(env: Env, incident: str) -> list[Any]:
    return await fetch(
        env.settings, "SELECT * FROM intake.attachments WHERE incident_id = $1", incident
    )


async def test_a_store_keeps_files_whole_discards_failed_ones_and_erases(
    env: Env, chunks: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attachments, "CHUNK_BYTES", 256 * 1024)
    runtime = env.app.state.runtime
    incident = await submit(env)
    key = await key_of(env, incident)
    before = await objects(chunks)

    content = pdf(1024 * 1024 + 5)  # 4 full chunks and a short last one
    upload = Upload(incident, "reporter", "reporter:anonymous", "a.pdf")
    added = await attachments.store(runtime, key, upload, pieces(content), LIMITS, chunks)
    assert (added.size, added.media_type) == (len(content), "application/pdf")
    [row] = await files_of(env, incident)
    assert row["chunks"] == 5
    read = [c async for c in attachments.read(runtime, key, added.attachment_id, chunks)]
    assert b"".join(read) == content
    stored = await objects(chunks)
    if isinstance(chunks, S3Chunks):  # the bytes are in the bucket, sealed, not in PostgreSQL
        assert len(stored) == len(before) + 5
        held = "SELECT count(*) AS n FROM intake.attachment_chunks WHERE attachment_id = $1"
        assert (await fetch(env.settings, held, added.attachment_id))[0]["n"] == 0
        client = await chunks.client()
        got = await client.get_object(Bucket=BUCKET, Key=chunks.key(added.attachment_id, 0))
        async with got["Body"] as body:
            assert content[9:1024] not in await body.read()

    # fails after its chunks were put (not a message of the incident): nothing stays
    wrong = Upload(incident, "reporter", "reporter:anonymous", "b.pdf", message_id=incident)
    with pytest.raises(Rejected):
        await attachments.store(runtime, key, wrong, pieces(pdf(600 * 1024)), LIMITS, chunks)
    assert len(await files_of(env, incident)) == 1
    assert await objects(chunks) == stored

    # a chunk that is gone reads as gone
    assert await chunks.get(runtime.db, added.attachment_id, 99) is None

    # erasure: rows and chunks go
    async with runtime.db.acquire() as conn, conn.transaction():
        assert await chunks.delete_incident(conn, incident) == 1
    assert await files_of(env, incident) == []
    assert await objects(chunks) == before
    with pytest.raises(NoSuchAttachment):
        await anext(attachments.read(runtime, key, added.attachment_id, chunks))


def test_the_settings_pick_the_store(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    s3 = IntakeSettings(
        attachment_store="s3",
        attachment_s3_endpoint="http://minio:9000",
        attachment_s3_bucket="evidence",
        attachment_s3_access_key_id="incidents",
        attachment_s3_secret_access_key_file=secret,
    )
    store = chunks_for(s3)
    assert isinstance(store, S3Chunks) and store is chunks_for(s3)
    assert store.place.secret_access_key() == "s3cret"
    assert store.key("f", 3) == "attachments/f/3"
    assert isinstance(chunks_for(IntakeSettings()), PostgresChunks)
    with pytest.raises(ValueError, match="BUCKET"):
        IntakeSettings(attachment_store="s3")
    with pytest.raises(ValueError, match="go together"):
        IntakeSettings(attachment_s3_access_key_id="incidents")


async def test_a_slow_upload_holds_no_connection_and_a_cut_off_one_stores_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = env.app.state.runtime
    one = await create_pool(
        env.settings.database_url, schema=runtime.schema, max_size=1, role=runtime.db_role
    )
    answer = await env.client.post(
        "/v1/reports",
        json={"category": "harassment", "summary": "s", "description": "d", "accused": ["p-wang"]},
    )
    incident, receipt = answer.json()["incident_id"], answer.json()
    await publish(env, "incident.triaged.v1", incident, triaged({"p-wang": "accused"}))
    await publish(env, "incident.assigned.v1", incident, {"level": 1, "principals": ["p-chen"]})
    await until_routed(env, incident, {"p-chen": (True, None)})
    url = f"/v1/receipts/{receipt['receipt']}/attachments"
    headers = {"x-receipt-secret": receipt["secret"]}
    monkeypatch.setattr(runtime, "pool", one)  # every request now shares one connection
    sending, go_on = asyncio.Event(), asyncio.Event()
    content = pdf(600 * 1024)

    async def slow(cut_off: bool) -> AsyncIterator[bytes]:
        yield content[: 300 * 1024]
        sending.set()
        await go_on.wait()
        if cut_off:
            raise ConnectionResetError("the client went away")
        yield content[300 * 1024 :]

    try:
        for cut_off in (False, True):
            sending.clear()
            go_on.clear()
            sent = env.client.post(url, content=slow(cut_off), headers=headers)
            first = asyncio.create_task(sent)
            await sending.wait()
            # the pool's one connection is free: others are served meanwhile (the guard
            # only keeps a regression from hanging the run; it times nothing)
            other = await asyncio.wait_for(
                env.client.post(url, content=b"%PDF-1.7\nsmall", headers=headers), 60
            )
            assert other.status_code == 201, other.text
            view = await asyncio.wait_for(
                env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen")), 60
            )
            assert view.status_code == 200, view.text
            go_on.set()
            if cut_off:
                with pytest.raises(ConnectionResetError):
                    await first
            else:
                assert (await first).status_code == 201
        sizes = sorted(r["size"] for r in await files_of(env, incident))
        assert sizes == sorted([len(content), 14, 14])  # the cut-off one stored nothing
    finally:  # a failing run leaves no request waiting, nor a pool to drain
        go_on.set()
        monkeypatch.undo()
        one.terminate()
