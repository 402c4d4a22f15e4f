"""Intake on a real database and broker: reports over HTTP and Kafka, bad input refused."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.domain.events import make_event, parse_event
from services.infra.settings import CommonSettings, IntakeSettings
from services.intake.app import create_app
from tests.helpers import drain, eventually, serving

pytestmark = pytest.mark.integration
REPORT = {"category": "harassment", "summary": "Comments in meetings", "description": "..."}


@pytest.fixture
async def intake(
    settings: CommonSettings,
) -> AsyncIterator[tuple[httpx.AsyncClient, IntakeSettings]]:
    intake_settings = IntakeSettings(**settings.model_dump())
    async with serving(create_app(intake_settings), "http://intake") as client:
        yield client, intake_settings


async def stored_events(settings: CommonSettings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetch(
            "SELECT stream_id, type, body FROM intake.events"
            " WHERE stream_id NOT LIKE 'directory:%' ORDER BY position"
        )
    finally:
        await conn.close()


async def test_a_report_is_durable_and_published_when_intake_answers_202(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    answer = await client.post("/v1/reports", json=REPORT)
    assert answer.status_code == 202
    incident = answer.json()["incident_id"]
    [row] = await stored_events(settings)
    assert row["stream_id"] == incident
    [record] = await drain(settings.kafka_bootstrap, settings.topic("incident.reports"), 1)
    envelope, data = parse_event(record.value)
    assert record.key == incident.encode()
    assert (envelope.subject, envelope.type) == (incident, "incident.report.submitted.v1")
    assert dict(record.headers)["content-type"] == b"application/cloudevents+json"
    assert data.reporter is None and envelope.correlationid == envelope.id


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {"content-type": "application/json"}, 422),
        (
            json.dumps({"summary": "no category"}).encode(),
            {"content-type": "application/json"},
            422,
        ),
        (
            json.dumps({**REPORT, "category": "gossip"}).encode(),
            {"content-type": "application/json"},
            422,
        ),
        (json.dumps({**REPORT, "extra": 1}).encode(), {"content-type": "application/json"}, 422),
        (b"[]", {"content-type": "application/json"}, 422),
        (b"x" * (2 * 1024 * 1024), {"content-type": "application/json"}, 413),
    ],
    ids=[
        "malformed-json",
        "missing-fields",
        "unknown-category",
        "unknown-field",
        "not-an-object",
        "2MB",
    ],
)
async def test_bad_input_gets_a_problem_answer_and_leaves_no_incident(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    client, settings = intake
    answer = await client.post("/v1/reports", content=body, headers=headers)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == status and problem["title"]
    assert await stored_events(settings) == []


async def test_an_unknown_category_lists_the_valid_ones(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, _ = intake
    answer = await client.post("/v1/reports", json={**REPORT, "category": "gossip"})
    assert "harassment" in answer.json()["valid_categories"]


async def test_a_bad_token_is_refused_rather_than_treated_as_anonymous(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    answer = await client.post(
        "/v1/reports", json=REPORT, headers={"authorization": "Bearer wrong-token"}
    )
    assert answer.status_code == 401
    assert await stored_events(settings) == []


def inbound_event(event_id: str | None = None, **overrides: object) -> bytes:
    data = {**REPORT, "report_digest": "sha256:00", "reporter": None, **overrides}
    return make_event(
        "incident.report.submitted.v1",
        subject="hris-case-1",
        data=data,
        source="/systems/hris",
        time=datetime.now(UTC),
        actor="system:hris",
        event_id=event_id,
    ).to_bytes()


async def test_a_valid_inbound_event_becomes_one_incident_even_if_delivered_twice(
    intake: tuple[httpx.AsyncClient, IntakeSettings], producer: AIOKafkaProducer
) -> None:
    _, settings = intake
    value = inbound_event()
    for _ in range(2):
        await producer.send_and_wait(settings.topic("incident.inbound"), value, key=b"hris-case-1")
    rows = await eventually(lambda: stored_events(settings))
    await producer.send_and_wait(
        settings.topic("incident.inbound"), inbound_event(), key=b"hris-case-1"
    )
    rows = await eventually(lambda: _at_least(settings, 2))
    assert len(rows) == 2  # the duplicate made nothing; the second distinct event did
    envelope, _ = parse_event(bytes(rows[0]["body"]))
    assert envelope.causationid == json.loads(value)["id"]
    assert envelope.actor == "system:hris"


async def _at_least(settings: CommonSettings, n: int) -> list[asyncpg.Record] | None:
    rows = await stored_events(settings)
    return rows if len(rows) >= n else None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{oops", "not JSON"),
        (json.dumps({"hello": "world"}).encode(), "not a valid CloudEvent"),
        (inbound_event(category="gossip"), "unknown category"),
        (
            make_event(
                "incident.acknowledged.v1",
                subject="x",
                data={"principal": "p", "level": 1},
                source="/s",
                time=datetime.now(UTC),
            ).to_bytes(),
            "accepts only incident.report.submitted.v1",
        ),
        (
            inbound_event(summary="Bob Smith groped me " * 40),
            "invalid report: summary: String should have at most",
        ),
        (inbound_event(unit="city\x00retail"), "invalid report: unit: Value error, control"),
        (
            inbound_event(reporter="p-wang", accused=["Wang Jun"]),
            "invalid report: accused.0: the reporter cannot be among the accused",
        ),
    ],
    ids=[
        "not-json",
        "not-cloudevent",
        "unknown-category",
        "wrong-type",
        "report-text",
        "nul-in-unit",
        "reporter-accused",
    ],
)
async def test_bad_inbound_records_are_dead_lettered_with_digest_reason_and_offset(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
    producer: AIOKafkaProducer,
    value: bytes,
    reason: str,
) -> None:
    _, settings = intake
    sent = await producer.send_and_wait(settings.topic("incident.inbound"), value, key=b"k")
    [record] = await drain(settings.kafka_bootstrap, settings.topic("incident.deadletter"), 1)
    _, data = parse_event(record.value)
    assert reason in data.reason
    assert data.source_offset == sent.offset and data.source_partition == sent.partition
    # the original may be a report in clear: only its digest, never its bytes or text
    assert data.original_b64 == ""
    assert f"sha256:{hashlib.sha256(value).hexdigest()}" in data.reason
    assert "Bob Smith" not in data.reason and b"Bob Smith" not in record.value
    # and the consumer carries on: a good report after the bad one still gets in
    await producer.send_and_wait(settings.topic("incident.inbound"), inbound_event(), key=b"k")
    await eventually(lambda: stored_events(settings))
