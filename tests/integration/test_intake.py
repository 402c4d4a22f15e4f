"""Intake on a real database and broker: reports over HTTP and Kafka, bad input refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.domain.events import parse_event
from services.infra.settings import CommonSettings, IntakeSettings
from services.intake.app import create_app
from tests import inbound_client as sender
from tests.helpers import drain, read_all, serving

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
            " WHERE stream_id NOT LIKE 'directory%' ORDER BY position"
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


# -- the inbound contract (docs/inbound.md), as a sending system meets it ---------------

INBOUND_NS = uuid.UUID("5f0b6a52-8d0e-4c59-9a57-2f4b2c9e1d01")  # docs/inbound.md


def incident_of(system: str, event_id: str) -> str:
    """The documented derivation, computed here independently of intake's code."""
    return str(uuid.uuid5(INBOUND_NS, f"{system}/{event_id}"))


async def send_inbound(
    producer: AIOKafkaProducer,
    settings: CommonSettings,
    record: tuple[list[tuple[str, bytes]], bytes],
) -> Any:
    headers, value = record
    return await producer.send_and_wait(
        settings.topic("incident.inbound"), value, key=b"hris", headers=headers
    )


async def test_an_inbound_report_in_binary_mode_becomes_one_incident_and_its_id_is_answered(
    intake: tuple[httpx.AsyncClient, IntakeSettings], producer: AIOKafkaProducer
) -> None:
    _, settings = intake
    event = sender.sign(sender.event(reporter="p-chen", accused=["Wang Jun"]))
    for _ in range(2):  # the sender resends: the same incident, answered twice
        await send_inbound(producer, settings, sender.binary(event))
    answers = await drain(settings.kafka_bootstrap, settings.topic("incident.inbound.results"), 2)
    assert [a.key for a in answers] == [event["id"].encode()] * 2
    for answer in answers:
        envelope, data = parse_event(answer.value)
        assert envelope.type == "incident.inbound.accepted.v1"
        assert data.model_dump() == {
            "event_id": event["id"],
            "system": "hris",
            "incident_id": incident_of("hris", event["id"]),
        }
    [row] = await stored_events(settings)
    envelope, submitted = parse_event(bytes(row["body"]))
    assert row["stream_id"] == incident_of("hris", event["id"])
    assert (envelope.actor, envelope.causationid) == ("system:hris", event["id"])
    assert submitted.channel == "kafka" and submitted.reporter is not None  # a pseudonym
    assert submitted.accused == ["p-wang"]  # the same name resolution as POST /v1/reports
    ids = {parse_event(a.value)[0].id for a in answers}
    assert len(ids) == 1  # one answer id: a duplicate, not news


async def test_an_inbound_report_over_the_cloudevents_http_binding_answers_its_incident(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    hris = {"authorization": "Bearer dev-hris-token"}
    # structured mode, anonymous (scope `report`): a receipt to pass on
    event = sender.event()
    headers, body = sender.structured(event)
    answer = await client.post(
        "/v1/events",
        content=body,
        headers={**hris, "content-type": "application/cloudevents+json"},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["incident_id"] == incident_of("hris", event["id"])
    assert answer.json()["receipt"] and answer.json()["secret"]
    # binary mode, for a person (scope `report_for_person`); a resend answers the same
    named = sender.event(reporter="p-chen")
    headers, body = sender.binary(named, prefix="ce-")
    for replay in (False, True):
        answer = await client.post("/v1/events", content=body, headers={**hris, **dict(headers)})
        assert answer.status_code == 202, answer.text
        assert answer.json()["incident_id"] == incident_of("hris", named["id"])
        assert answer.json()["receipt"] is None
        assert (answer.headers.get("idempotent-replayed") == "true") is replay
    assert len(await stored_events(settings)) == 2
    # the same id with other data, no or a person's token, no content type
    other = sender.binary({**named, "data": {**named["data"], "summary": "Else"}}, prefix="ce-")
    gossip = sender.binary(sender.event(category="gossip"), prefix="ce-")
    refusals = [
        ({**hris, **dict(other[0])}, other[1], 409),
        (dict(headers), body, 401),
        ({"authorization": "Bearer dev-chen-token", **dict(headers)}, body, 403),
        (hris, body, 415),
        ({**hris, **dict(gossip[0])}, gossip[1], 422),
    ]
    for sent_headers, sent_body, status in refusals:
        answer = await client.post("/v1/events", content=sent_body, headers=sent_headers)
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
    assert len(await stored_events(settings)) == 2
    # a resend after its stored answer expired still names the same incident, no new one
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("DELETE FROM intake.idempotency")
    finally:
        await conn.close()
    late = await client.post("/v1/events", content=body, headers={**hris, **dict(headers)})
    assert late.status_code == 202 and late.headers["idempotent-replayed"] == "true"
    assert late.json()["incident_id"] == incident_of("hris", named["id"])
    assert len(await stored_events(settings)) == 2


def _bad_inbound() -> list[tuple[str, tuple[list[tuple[str, bytes]], bytes], str]]:
    """(case, record, the reason its dead letter gives) for each kind of bad input."""
    hris_signed_by_helpdesk = sender.sign(sender.event(), "helpdesk")
    hris_signed_by_helpdesk["signingkey"] = sender.key_id("hris", sender.demo_key("hris"))
    old = sender.sign({**sender.event(), "type": "incident.report.submitted.v1"})
    binary_without_type = sender.binary(sender.sign(sender.event()))
    return [
        ("unsigned", sender.structured(sender.event()), "not authenticated: unsigned"),
        ("wrong-key", sender.structured(hris_signed_by_helpdesk), "bad signature"),
        (
            "out-of-scope",
            sender.structured(sender.sign(sender.event(reporter="p-chen"), "helpdesk")),
            "lacks the 'report_for_person' scope",
        ),
        (
            "binary-content-type",
            ([("content-type", b"text/plain"), *binary_without_type[0][1:]], b"{}"),
            "binary mode needs content-type: application/json",
        ),
        (
            "binary-no-specversion",
            ([h for h in binary_without_type[0] if h[0] != "ce_specversion"], b"{}"),
            "binary mode needs a ce_specversion header",
        ),
        ("no-content-type", ([], sender.canonical(sender.sign(sender.event()))), "content-type"),
        (
            "oversized",
            sender.structured(sender.sign(sender.event(description="x" * 300_000))),
            "more than 262144",
        ),
        ("old-type", sender.structured(old), "send incident.report.inbound.v1"),
        ("not-json", ([("content-type", b"application/cloudevents+json")], b"{oops"), "not JSON"),
        (
            "invalid-report",
            sender.structured(sender.sign(sender.event(unit="city\x00retail"))),
            "invalid report: unit: Value error, control",
        ),
        (
            "unknown-category",
            sender.structured(sender.sign(sender.event(category="gossip"))),
            "unknown category",
        ),
    ]


async def test_bad_inbound_records_are_dead_lettered_once_with_their_reason(
    intake: tuple[httpx.AsyncClient, IntakeSettings], producer: AIOKafkaProducer
) -> None:
    _, settings = intake
    bad = _bad_inbound()
    offsets = {}
    for case, record, _ in bad:
        offsets[(await send_inbound(producer, settings, record)).offset] = case
    good = sender.sign(sender.event())
    await send_inbound(producer, settings, sender.structured(good))
    results = settings.topic("incident.inbound.results")
    answers = await drain(settings.kafka_bootstrap, results, 5)
    assert [parse_event(a.value)[0].type for a in answers][-1] == "incident.inbound.accepted.v1"
    letters = await read_all(settings.kafka_bootstrap, settings.topic("incident.deadletter"))
    reasons = {}
    for letter in letters:
        _, data = parse_event(letter.value)
        assert data.original_b64 == ""  # a report in clear: only its digest
        reasons.setdefault(offsets[data.source_offset], []).append(data.reason)
    expected = {case: reason for case, _, reason in bad}
    assert sorted(reasons) == sorted(expected)
    for case, [reason] in reasons.items():  # each exactly once
        assert expected[case] in reason, (case, reason)
    # the authenticated senders are answered too; forgeries and unreadable records not
    rejected = [parse_event(a.value)[1] for a in answers[:-1]]
    assert {r.system for r in rejected} == {"hris", "helpdesk"}
    assert all(r.event_id and "x" * 20 not in r.reason for r in rejected)
    [row] = await stored_events(settings)  # only the good one
    assert row["stream_id"] == incident_of("hris", good["id"])


async def test_a_system_reports_for_a_person_over_http_only_within_its_scope(
    settings: CommonSettings, tmp_path: Path
) -> None:
    systems = tmp_path / "systems.yaml"  # hris, registered for anonymous reports only
    systems.write_text("systems:\n  - {id: hris, scopes: [report], http: true}\n")
    intake_settings = IntakeSettings(**settings.model_dump(), systems_file=systems)
    hris = {"authorization": "Bearer dev-hris-token"}
    async with serving(create_app(intake_settings), "http://intake") as client:
        named = await client.post(
            "/v1/reports", json={**REPORT, "reporter": "p-chen"}, headers=hris
        )
        assert named.status_code == 403, named.text
        assert "lacks the 'report_for_person' scope" in named.json()["detail"]
        headers, body = sender.binary(sender.event(reporter="p-chen"), prefix="ce-")
        event = await client.post("/v1/events", content=body, headers={**hris, **dict(headers)})
        assert event.status_code == 403
        anonymous = await client.post("/v1/reports", json=REPORT, headers=hris)
        assert anonymous.status_code == 202, anonymous.text
    assert len(await stored_events(intake_settings)) == 1
