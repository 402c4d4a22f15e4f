"""Audit's signed heads get cosigned by a running witness (a real HTTP server).

The witness runs under uvicorn on a free port with its own state folder; audit is told
about it through `witnesses` (INCIDENTS_WITNESSES). Each new head is cosigned, the
cosigned checkpoint is served with the head, published on audit.checkpoints, and a
witness that is down never stops signing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from services.audit import merkle
from services.audit.app import create_app
from services.audit.checkpoint import NoteSigner, parse_verifier_key, verify_checkpoint
from services.audit.cosignature import CosignatureVerifier
from services.audit.trust import VerifierState, verify_service
from services.audit.verify import HttpSource, witness_known_heads
from services.domain.envelope import canonical_json
from services.infra.settings import AuditSettings, CommonSettings
from services.witness.app import create_app as create_witness
from services.witness.config import WitnessSettings, load_key
from tests.helpers import eventually, serving
from tests.integration.test_audit_ledger import an_event, ledger_rows
from tests.integration.test_tamper import cut_back

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _serve(app: Any, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server))
    return server, task


async def _started(server: uvicorn.Server) -> bool:
    return server.started


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


@pytest.fixture
async def witnessed(
    settings: CommonSettings, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, AuditSettings, CosignatureVerifier, Any]]:
    origin = "test.example/witnessed-ledger"
    log = NoteSigner.generate(origin)
    (tmp_path / "key.pem").write_bytes(log.private_pem())
    witness_dir = tmp_path / "witness"
    witness_key = load_key(witness_dir, "test.example/witness").verifier()
    port = _free_port()
    witness_app = create_witness(
        WitnessSettings(
            state_dir=witness_dir, logs=(log.verifier_key,), name="test.example/witness"
        )
    )
    server, task = await _serve(witness_app, port)
    audit_settings = AuditSettings(
        **settings.model_dump(),
        ledger_origin=origin,
        signing_key_file=tmp_path / "key.pem",
        checkpoint_interval=0.2,
        witnesses=((f"http://127.0.0.1:{port}", witness_key.verifier_key),),
    )
    try:
        audit_app = create_app(audit_settings)
        async with serving(audit_app, "http://audit") as client:
            yield client, audit_settings, witness_key, (server, task, witness_app, audit_app)
    finally:
        if not server.should_exit:
            await _stop(server, task)


async def _cosigned_head(client: httpx.AsyncClient, above: int) -> dict[str, Any] | None:
    answer = await client.get("/v1/ledger/head")
    if answer.status_code != 200:
        return None
    head: dict[str, Any] = answer.json()
    return head if head["tree_size"] > above and head["cosignatures"] else None


async def test_each_new_head_is_cosigned_served_and_published(
    witnessed: tuple[httpx.AsyncClient, AuditSettings, CosignatureVerifier, Any],
    producer: AIOKafkaProducer,
) -> None:
    client, settings, witness_key, (server, task, _witness, _audit) = witnessed
    log_key = (await client.get("/v1/ledger/public-key")).json()["verifier_key"]
    first_event = an_event("inc-witnessed")
    await producer.send_and_wait(settings.topic("incident.activity"), first_event)
    first = await eventually(lambda: _cosigned_head(client, 0))
    cosigned = first["cosigned_checkpoint"]
    checkpoint = verify_checkpoint(parse_verifier_key(log_key), cosigned)
    assert checkpoint.tree_size == first["tree_size"]
    assert witness_key.verify(cosigned).timestamp > 0
    assert first["cosignatures"][0]["witness"] == witness_key.verifier_key

    # A second head is proven consistent with the first (old size > 0) and cosigned.
    await producer.send_and_wait(settings.topic("incident.activity"), an_event("inc-later"))
    second = await eventually(lambda: _cosigned_head(client, first["tree_size"]))
    assert witness_key.verify(second["cosigned_checkpoint"])
    heads = (await client.get("/v1/ledger/heads")).json()["heads"]
    assert [h["tree_size"] for h in heads if h["cosignatures"]][-1] == second["tree_size"]

    # Published: the cosigned checkpoint reaches the ledger as audit.checkpoint.cosigned.v1.
    rows = await eventually(lambda: _cosigned_events(settings))
    data = json.loads(bytes(rows[0]["leaf"]))["event"]["data"]
    assert witness_key.verify(data["checkpoint"])

    # The reporter's proof route: the first event's leaf is included under the head.
    event_id = json.loads(first_event)["id"]
    proof = (await client.get(f"/v1/ledger/proofs/event/{event_id}")).json()
    leaf = canonical_json({**proof["entry"], "event": json.loads(first_event)})
    assert merkle.leaf_hash(leaf).hex() == proof["leaf_hash"]
    head = verify_checkpoint(parse_verifier_key(log_key), proof["checkpoint"])
    merkle.verify_inclusion(
        merkle.leaf_hash(leaf),
        proof["index"],
        proof["tree_size"],
        [bytes.fromhex(h) for h in proof["inclusion_proof"]],
        head.root_hash,
    )
    assert (await client.get("/v1/ledger/proofs/event/not-a-uuid")).status_code == 404

    # The witness goes down: heads are still signed, just not cosigned.
    await _stop(server, task)
    signed_size = (await client.get("/v1/ledger/head")).json()["tree_size"]
    await producer.send_and_wait(settings.topic("incident.activity"), an_event("inc-down"))
    later = await eventually(lambda: _head_above(client, signed_size))
    assert later["cosignatures"] == []
    assert base64.b64decode(log_key.split("+", 2)[2])[0] == 1


async def _head_above(client: httpx.AsyncClient, size: int) -> dict[str, Any] | None:
    answer = await client.get("/v1/ledger/head")
    head: dict[str, Any] = answer.json()
    return head if answer.status_code == 200 and head["tree_size"] > size else None


async def _cosigned_events(settings: AuditSettings) -> list[Any]:
    return [
        r for r in await ledger_rows(settings) if r["event_type"] == "audit.checkpoint.cosigned.v1"
    ]


async def test_the_witness_refuses_the_ledger_cut_back_and_signed_again(
    witnessed: tuple[httpx.AsyncClient, AuditSettings, CosignatureVerifier, Any],
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    """The issue's truncation: entries, subtrees, heads and their cosignatures dropped
    as superuser, audit signing on top of the shorter ledger. The witness never cosigns
    the new history: it refuses the forged extension (422, kept as evidence)."""
    client, settings, _witness_key, (_server, _task, witness_app, audit_app) = witnessed
    topic = settings.topic("incident.activity")
    for n in range(6):
        await producer.send_and_wait(topic, an_event(f"inc-cut-{n}"))
    witnessed_head = await eventually(lambda: _cosigned_head(client, 5))
    size = witnessed_head["tree_size"]

    cut = 2
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit.ledger_cosignatures DISABLE TRIGGER USER")
            await conn.execute("DELETE FROM audit.ledger_cosignatures WHERE tree_size > $1", cut)
            await conn.execute("ALTER TABLE audit.ledger_cosignatures ENABLE TRIGGER USER")
    finally:
        await conn.close()
    await cut_back(SimpleNamespace(settings=settings), cut)  # type: ignore[arg-type]
    # The audit that signed the witnessed head would refuse the shorter tree itself
    # (test_tamper). One restarted since knows only the table's heads, now cut; it asks
    # the witness for the latest head it cosigned, and refuses a tree that does not
    # extend it: the log's key signs no fork.
    signer = audit_app.state.heads
    signer.last_signed = None
    await signer.refresh_witnessed(force=True)
    assert [s for s, _ in signer.witnessed.values()] == [size]
    refused = REGISTRY.get_sample_value("incidents_ledger_heads_refused_total") or 0.0
    await producer.send_and_wait(topic, an_event("inc-after-cut"))
    assert await eventually(lambda: _refused_more_than(refused))
    # One that does not ask (a witness down when it looked, an older audit) signs the
    # forged tree; the witness then refuses it on its own.
    signer.witnesses, signer.witnessed = [], {}
    for n in range(size):  # audit carries on and signs a forged tree larger than the witnessed
        await producer.send_and_wait(topic, an_event(f"inc-after-{n}"))
    forged = await eventually(lambda: _head_above(client, size))
    witness = witness_app.state.witness
    # (audit backs off while its forged heads are still smaller than the witnessed one)
    refusals = await eventually(lambda: _refusals(witness, settings.ledger_origin), timeout=60)
    assert refusals[0][2] == 422  # the consistency proof from its size does not verify
    head = (await client.get("/v1/ledger/head")).json()
    assert head["tree_size"] >= forged["tree_size"] and head["cosignatures"] == []
    assert witness.store.latest(settings.ledger_origin).tree_size == size

    # verify, told of the witness, finds the cut: the tree has grown again past the
    # witnessed size, but its root at that size is not the witnessed one. Where audit
    # happened to sign a forged head of exactly the witnessed size, verify meets two heads
    # of one size with different roots first, and names that fork instead: both verdicts
    # name the witness's head.
    heads = await asyncio.to_thread(
        witness_known_heads, [settings.witnesses[0][0]], settings.ledger_origin
    )
    assert len(heads) == 1 and heads[0].where.startswith("the witness")
    report, _notes = await verify_service(
        HttpSource("http://audit", "dev-auditor-token", client=client),
        VerifierState(tmp_path / "fresh.json"),
        heads=heads,
    )
    reason = report.reason or ""
    assert not report.ok and heads[0].where in reason, reason
    assert "cut back" in reason or "the log forked" in reason, reason


async def _refused_more_than(count: float) -> bool | None:
    now = REGISTRY.get_sample_value("incidents_ledger_heads_refused_total") or 0.0
    return True if now > count else None


async def _refusals(witness: Any, origin: str) -> list[tuple[int, int, int, str]]:
    found: list[tuple[int, int, int, str]] = witness.store.refusals(origin)
    return found
