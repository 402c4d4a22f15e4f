"""Audit ingestion into the ledger: exactly once, never dropping a record, append-only."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pymerkle
import pytest
from aiokafka import AIOKafkaProducer

from services.audit import merkle
from services.audit.app import create_app
from services.audit.checkpoint import NoteVerifier, verify_checkpoint
from services.audit.merkle import leaf_hash
from services.domain.envelope import CLOUDEVENTS_CONTENT_TYPE
from services.domain.events import CheckpointSigned, ReadRecorded, make_event
from services.infra.settings import AuditSettings, CommonSettings
from tests.helpers import eventually, serving, signed

pytestmark = pytest.mark.integration
AUDITOR = {"authorization": "Bearer dev-auditor-token"}


@pytest.fixture
async def audit(
    settings: CommonSettings, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, AuditSettings]]:
    audit_settings = AuditSettings(
        **settings.model_dump(),
        signing_key_file=tmp_path / "key.pem",
        checkpoint_interval=0.2,
    )
    async with serving(create_app(audit_settings), "http://audit") as client:
        yield client, audit_settings


async def ledger_rows(settings: CommonSettings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetch("SELECT * FROM audit.ledger ORDER BY idx")
    finally:
        await conn.close()


def an_event(incident: str = "inc-a") -> bytes:
    event = make_event(
        "incident.acknowledged.v1",
        subject=incident,
        data={"principal": "p-chen", "level": 1},
        source="/tests",
        time=datetime.now(UTC),
    )
    return signed(event)


async def test_a_record_delivered_twice_makes_one_ledger_entry(
    audit: tuple[httpx.AsyncClient, AuditSettings], producer: AIOKafkaProducer
) -> None:
    client, settings = audit
    topic = settings.topic("incident.activity")
    value = an_event("inc-twice")
    headers = [("content-type", CLOUDEVENTS_CONTENT_TYPE.encode())]
    for _ in range(2):
        await producer.send_and_wait(topic, value, key=b"inc-twice", headers=headers)
    marker = an_event("inc-marker")
    await producer.send_and_wait(topic, marker, key=b"inc-twice")  # same partition, after both
    rows = await eventually(lambda: _rows_with(settings, "inc-marker"))
    entries = [r for r in rows if r["incident_id"] == "inc-twice"]
    assert len(entries) == 1
    assert [r["idx"] for r in rows] == list(range(len(rows)))
    answer = await client.get("/v1/incidents/inc-twice/timeline", headers=AUDITOR)
    assert answer.status_code == 200
    body = answer.json()
    assert [e["event"]["id"] for e in body["events"]] == [json.loads(value)["id"]]


async def _rows_with(settings: CommonSettings, incident: str) -> list[asyncpg.Record] | None:
    rows = await ledger_rows(settings)
    return rows if any(r["incident_id"] == incident for r in rows) else None


async def test_a_record_that_is_not_an_event_is_still_recorded_with_the_reason(
    audit: tuple[httpx.AsyncClient, AuditSettings], producer: AIOKafkaProducer
) -> None:
    _client, settings = audit
    garbage = b"\xff not json at all"
    await producer.send_and_wait(settings.topic("incident.activity"), garbage, key=b"x")
    rows = await eventually(lambda: _invalid_rows(settings))
    leaf = json.loads(bytes(rows[0]["leaf"]))
    assert base64.b64decode(leaf["raw"]) == garbage
    assert "not JSON" in leaf["reason"]
    assert bytes(rows[0]["leaf_hash"]) == leaf_hash(bytes(rows[0]["leaf"]))


async def _invalid_rows(settings: CommonSettings) -> list[asyncpg.Record]:
    return [r for r in await ledger_rows(settings) if not r["valid"]]


async def test_the_ledger_refuses_update_delete_and_truncate(
    audit: tuple[httpx.AsyncClient, AuditSettings], producer: AIOKafkaProducer
) -> None:
    _client, settings = audit
    await producer.send_and_wait(settings.topic("incident.activity"), an_event("inc-ro"))
    await eventually(lambda: _rows_with(settings, "inc-ro"))
    conn = await asyncpg.connect(settings.database_url)
    try:
        for statement in (
            "UPDATE audit.ledger SET topic = 'forged'",
            "DELETE FROM audit.ledger",
            "TRUNCATE audit.ledger",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_the_timeline_is_for_auditors_only(
    audit: tuple[httpx.AsyncClient, AuditSettings],
) -> None:
    client, _settings = audit
    nobody = await client.get("/v1/incidents/x/timeline")
    handler = await client.get(
        "/v1/incidents/x/timeline", headers={"authorization": "Bearer dev-chen-token"}
    )
    assert nobody.status_code == 401
    assert nobody.headers["content-type"] == "application/problem+json"
    assert handler.status_code == 403


async def test_signed_heads_cover_the_ledger_verify_with_the_public_key_and_stop_when_idle(
    audit: tuple[httpx.AsyncClient, AuditSettings], producer: AIOKafkaProducer
) -> None:
    client, settings = audit
    for n in range(5):
        await producer.send_and_wait(settings.topic("incident.activity"), an_event(f"inc-h{n}"))
    await eventually(lambda: _rows_with(settings, "inc-h4"))

    head = await eventually(lambda: _head_at_least(client, 5))
    key = (await client.get("/v1/ledger/public-key")).json()
    verifier = NoteVerifier.from_verifier_key(key["verifier_key"])
    checkpoint = verify_checkpoint(verifier, head["checkpoint"])
    assert checkpoint.tree_size == head["tree_size"]
    assert checkpoint.root_hash.hex() == head["root_hash"]
    assert base64.b64decode(key["public_key"]) == verifier.public_key
    entries = (
        await client.get(f"/v1/ledger/entries?start=0&end={head['tree_size']}", headers=AUDITOR)
    ).json()["entries"]
    hashes = [leaf_hash(base64.b64decode(e["leaf"])) for e in entries]
    assert merkle.root_from_leaf_hashes(hashes).hex() == head["root_hash"]

    # The auditor's read above is recorded too (one more entry, which calls for a head).
    # Once a head covers every other entry and its own event is recorded, that event does
    # not by itself call for another head: the heads stay as they are.
    async def heads() -> list[int]:
        answer = await client.get("/v1/ledger/heads")
        return [h["tree_size"] for h in answer.json()["heads"]]

    async def settled() -> list[int] | None:
        rows = await ledger_rows(settings)
        own = [r for r in rows if r["event_type"] == CheckpointSigned.TYPE]
        other = [r["idx"] for r in rows if r["event_type"] != CheckpointSigned.TYPE]
        read = [r for r in rows if r["event_type"] == ReadRecorded.TYPE]
        sizes = await heads()
        covered = bool(read) and sizes[-1] > max(other) and len(own) == len(sizes)
        return sizes if covered else None

    sizes = await eventually(settled)
    await asyncio.sleep(2.0)  # several signing rounds (checkpoint_interval=0.2)
    assert await heads() == sizes
    # the gauges come from the signer's own reads: the latest head's size, the entries
    # (the last head's own event included)
    metrics = (await client.get("/metrics")).text
    entries_now = len(await ledger_rows(settings))
    assert f"incidents_ledger_signed_tree_size {float(sizes[-1])}" in metrics, metrics
    assert f"incidents_ledger_entries {float(entries_now)}" in metrics, metrics


async def _head_at_least(client: httpx.AsyncClient, size: int) -> dict[str, Any] | None:
    answer = await client.get("/v1/ledger/head")
    if answer.status_code != 200:
        return None
    body: dict[str, Any] = answer.json()
    return body if body["tree_size"] >= size else None


async def test_proofs_served_by_the_api_verify_against_the_signed_head(
    audit: tuple[httpx.AsyncClient, AuditSettings], producer: AIOKafkaProducer
) -> None:
    client, settings = audit
    for n in range(9):
        await producer.send_and_wait(settings.topic("incident.activity"), an_event(f"inc-p{n}"))
    await eventually(lambda: _rows_with(settings, "inc-p8"))
    head = await eventually(lambda: _head_at_least(client, 9))
    size, root = head["tree_size"], bytes.fromhex(head["root_hash"])
    for index in range(size):
        answer = await client.get(f"/v1/ledger/proofs/inclusion?index={index}&tree_size={size}")
        body = answer.json()
        proof = [bytes.fromhex(p) for p in body["proof"]]
        merkle.verify_inclusion(bytes.fromhex(body["leaf_hash"]), index, size, proof, root)
    entries = (await client.get(f"/v1/ledger/entries?end={size}", headers=AUDITOR)).json()
    hashes = [bytes.fromhex(e["leaf_hash"]) for e in entries["entries"]]
    for first in range(1, size + 1):
        body = (
            await client.get(f"/v1/ledger/proofs/consistency?first={first}&second={size}")
        ).json()
        proof = [bytes.fromhex(p) for p in body["proof"]]
        merkle.verify_consistency(
            first, size, proof, merkle.root_from_leaf_hashes(hashes[:first]), root
        )
    too_far = await client.get(f"/v1/ledger/proofs/inclusion?index=0&tree_size={size + 1000}")
    assert too_far.status_code == 422


async def test_proofs_served_by_the_api_verify_with_an_independent_implementation(
    audit: tuple[httpx.AsyncClient, AuditSettings], producer: AIOKafkaProducer
) -> None:
    """pymerkle (not our code) builds the same tree from the served leaves, and its
    inclusion proofs are the API's, hash for hash, accepted by its verifier."""
    client, settings = audit
    for n in range(13):
        await producer.send_and_wait(settings.topic("incident.activity"), an_event(f"inc-i{n}"))
    await eventually(lambda: _rows_with(settings, "inc-i12"))
    head = await eventually(lambda: _head_at_least(client, 13))
    size, root = head["tree_size"], bytes.fromhex(head["root_hash"])
    entries = (await client.get(f"/v1/ledger/entries?end={size}", headers=AUDITOR)).json()
    theirs = pymerkle.InmemoryTree(algorithm="sha256")
    for entry in entries["entries"]:
        theirs.append_entry(base64.b64decode(entry["leaf"]))
    assert theirs.get_root(size) == root
    for index in range(size):
        ours = (
            await client.get(f"/v1/ledger/proofs/inclusion?index={index}&tree_size={size}")
        ).json()
        reference = theirs.prove_inclusion(index + 1, size).serialize()  # 1-based there
        leaf = bytes.fromhex(ours["leaf_hash"])
        assert reference["path"] == [leaf.hex(), *ours["proof"]]
        forged = pymerkle.MerkleProof.deserialize(
            {**reference, "path": [leaf.hex(), *ours["proof"]]}
        )
        pymerkle.verify_inclusion(leaf, root, forged)
    for first in range(1, size):
        ours = (
            await client.get(f"/v1/ledger/proofs/consistency?first={first}&second={size}")
        ).json()
        # pymerkle's consistency proofs are full paths, not RFC 9162's minimal form, so
        # here it vouches for the roots (its own proof between them verifies), and our
        # RFC proof must connect exactly those independently computed roots.
        reference = pymerkle.MerkleProof.deserialize(
            theirs.prove_consistency(first, size).serialize()
        )
        pymerkle.verify_consistency(theirs.get_root(first), root, reference)
        merkle.verify_consistency(
            first, size, [bytes.fromhex(h) for h in ours["proof"]], theirs.get_root(first), root
        )


async def test_audit_learns_roles_from_directory_events_in_the_ledger(
    audit: tuple[httpx.AsyncClient, AuditSettings], producer: AIOKafkaProducer
) -> None:
    """A role revoked through the directory API stops counting once its event is recorded."""
    client, settings = audit
    assert (await client.get("/v1/ledger/entries?end=1", headers=AUDITOR)).status_code == 200
    revoked = make_event(
        "directory.person.upserted.v1",
        subject="p-audit",
        data={"person_id": "p-audit", "name": "Ada Auditor", "roles": []},
        source="/services/intake",
        time=datetime.now(UTC),
    )
    await producer.send_and_wait(settings.topic("directory.changes"), signed(revoked))
    await eventually(lambda: _rows_with(settings, "p-audit"))
    assert (await client.get("/v1/ledger/entries?end=1", headers=AUDITOR)).status_code == 403


async def test_an_entry_moved_into_another_incident_by_its_column_stays_out_of_its_timeline(
    audit: tuple[httpx.AsyncClient, AuditSettings], producer: AIOKafkaProducer
) -> None:
    """`incident_id` is an index over the leaves, which verify does not prove: a superuser
    who points another incident's entry at this one (triggers off) must not add it to
    this incident's timeline, nor so to its knowledge and state. The leaf decides."""
    client, settings = audit
    topic = settings.topic("incident.activity")
    own, other = an_event("inc-own"), an_event("inc-other")
    await producer.send_and_wait(topic, own, key=b"inc-own")
    await producer.send_and_wait(topic, other, key=b"inc-own")
    await eventually(lambda: _rows_with(settings, "inc-other"))
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("ALTER TABLE audit.ledger DISABLE TRIGGER ledger_no_update")
        await conn.execute(
            "UPDATE audit.ledger SET incident_id = 'inc-own' WHERE incident_id = 'inc-other'"
        )
        await conn.execute("ALTER TABLE audit.ledger ENABLE TRIGGER ledger_no_update")
    finally:
        await conn.close()
    answer = await client.get("/v1/incidents/inc-own/timeline", headers=AUDITOR)
    assert answer.status_code == 200
    assert [e["event"]["id"] for e in answer.json()["events"]] == [json.loads(own)["id"]]
