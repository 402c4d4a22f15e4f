"""Audit ingestion into the ledger: exactly once, never dropping a record, append-only."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from services.audit.app import create_app
from services.audit.merkle import leaf_hash
from services.domain.envelope import CLOUDEVENTS_CONTENT_TYPE
from services.domain.events import make_event
from services.infra.settings import AuditSettings, CommonSettings
from tests.helpers import eventually

pytestmark = pytest.mark.integration
AUDITOR = {"authorization": "Bearer dev-auditor-token"}


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://audit") as client:
            yield client


@pytest.fixture
async def audit(settings: CommonSettings) -> AsyncIterator[tuple[httpx.AsyncClient, AuditSettings]]:
    audit_settings = AuditSettings(**settings.model_dump())
    async with running(create_app(audit_settings)) as client:
        yield client, audit_settings


async def ledger_rows(settings: CommonSettings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetch("SELECT * FROM audit.ledger ORDER BY idx")
    finally:
        await conn.close()


def an_event(incident: str = "inc-a") -> bytes:
    return make_event(
        "incident.acknowledged.v1",
        subject=incident,
        data={"principal": "p-chen", "level": 1},
        source="/tests",
        time=datetime.now(UTC),
    ).to_bytes()


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
    await producer.send_and_wait(settings.topic("incident.inbound"), garbage, key=b"x")
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
