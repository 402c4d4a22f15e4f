"""Handlers' actions on a real database and broker: view, acknowledge, status, comments.

One intake app for the module; each test opens its own incidents. Routing is driven
the way triage and escalation will drive it: events published on incident.triage and
incident.escalations, which intake's routing consumer projects.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI

from services.domain.envelope import Envelope
from services.domain.events import CATALOG, EventData, is_sealed, make_event, parse_event
from services.infra import eventstore
from services.infra.settings import IntakeSettings
from services.intake import actions, handlers
from services.intake.app import create_app
from tests.helpers import eventually, serving, signed
from tests.integration.test_reports import module_settings
from tooling.localstack import run_sync

pytestmark = pytest.mark.integration

TOKENS = {
    "p-chen": "dev-chen-token",  # hr_case_handler, city-retail
    "p-ma": "dev-ma-token",  # hr_case_handler, group
    "p-zhou": "dev-zhou-token",  # hr_head
    "p-wang": "dev-wang-token",  # store manager: the accused below
    "p-li": "dev-li-token",  # his manager
    "p-liu": "dev-liu-token",  # employee, nobody's handler
    "p-audit": "dev-auditor-token",  # auditor
    "p-sun": "dev-sun-token",  # chief_ethics_officer (independent; may reassign)
}
REPORT: dict[str, Any] = {
    "category": "sexual_misconduct",
    "summary": "Assault by store manager",
    "description": "On Friday evening the store manager ...",
    "unit": "city-retail",
    "location": "Store 12",
    "accused": ["p-wang"],
    "named": ["a client"],
}


def auth(principal: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[principal]}"}


@dataclass
class Env:
    client: httpx.AsyncClient
    settings: IntakeSettings
    producer: AIOKafkaProducer
    app: FastAPI


@pytest.fixture(scope="module")
async def env(kafka_bootstrap: str, make_database: Callable[[str], str]) -> AsyncIterator[Env]:
    settings = module_settings(kafka_bootstrap, make_database("handlers"))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        app = create_app(settings)
        async with serving(app, "http://intake") as client:
            yield Env(client, settings, producer, app)
    finally:
        await producer.stop()


# Helpers --------------------------------------------------------------------------


async def fetch(settings: IntakeSettings, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def stream(settings: IntakeSettings, stream_id: str) -> list[Envelope]:
    rows = await fetch(
        settings, "SELECT body FROM intake.events WHERE stream_id = $1 ORDER BY version", stream_id
    )
    return [Envelope.model_validate_json(bytes(r["body"])) for r in rows]


async def of_type(settings: IntakeSettings, incident: str, type_: str) -> list[Envelope]:
    return [e for e in await stream(settings, incident) if e.type == type_]


async def denials(settings: IntakeSettings, incident: str) -> list[Envelope]:
    """The refusals recorded for an incident id (never on the incident's own stream)."""
    return await stream(settings, f"access-denied:{incident}")


async def opened(env: Env, incident: str, events: list[Envelope]) -> list[dict[str, Any]]:
    """The events' data with sealed values opened by intake's key store."""
    async with env.app.state.runtime.db.acquire() as conn:
        return [e.data for e in await env.app.state.keys.open_events(conn, incident, events)]


async def on_topic(
    settings: IntakeSettings,
    topic: str,
    match: Callable[[Envelope, EventData], bool],
    want: int = 1,
    timeout: float = 15.0,
) -> list[tuple[Envelope, EventData]]:
    """Records of a topic (from the beginning) that `match`, once `want` of them arrived."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    got: list[tuple[Envelope, EventData]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < want and loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    envelope, data = parse_event(record.value)
                    if match(envelope, data):
                        got.append((envelope, data))
    finally:
        await consumer.stop()
    assert len(got) >= want, f"{len(got)} of {want} matching records on {topic}"
    return got


async def submit(env: Env, **overrides: Any) -> str:
    answer = await env.client.post("/v1/reports", json={**REPORT, **overrides})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["incident_id"])


async def publish(
    env: Env, type_: str, incident: str, data: dict[str, Any], event_id: str | None = None
) -> bytes:
    value = signed(
        make_event(
            type_,
            subject=incident,
            data=data,
            source="/services/test-triage",
            time=datetime.now(UTC),
            actor="system:triage",
            event_id=event_id,
        )
    )
    await send(env, CATALOG[type_].topic, value, incident)
    return value


async def send(env: Env, topic: str, value: bytes, key: str) -> None:
    await env.producer.send_and_wait(env.settings.topic(topic), value, key=key.encode())


def triaged(excluded: dict[str, str]) -> dict[str, Any]:
    return {
        "category": "sexual_misconduct",
        "severity": "critical",
        "policy_version": "2026-11-01",
        "chain": [
            {
                "level": 1,
                "role": "hr_case_handler",
                "recipients": ["p-chen"],
                "acknowledge_within": 3600,
            },
            {"level": 2, "role": "hr_head", "recipients": ["p-zhou"], "acknowledge_within": 7200},
        ],
        "excluded": [{"principal": p, "rule": r} for p, r in excluded.items()],
        "deadlines": {"1": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
    }


async def routing_rows(env: Env, incident: str) -> dict[str, asyncpg.Record]:
    rows = await fetch(
        env.settings, "SELECT * FROM intake.routing WHERE incident_id = $1", incident
    )
    return {r["principal"]: r for r in rows}


async def until_routed(
    env: Env, incident: str, expected: dict[str, tuple[bool, str | None]]
) -> None:
    """Wait until each principal's (routed, excluded_rule) is as expected."""

    async def probe() -> bool:
        rows = await routing_rows(env, incident)
        return all(
            p in rows and (rows[p]["routed"], rows[p]["excluded_rule"]) == want
            for p, want in expected.items()
        )

    await eventually(probe)


async def routed_incident(
    env: Env,
    level1: tuple[str, ...] = ("p-chen",),
    excluded: dict[str, str] | None = None,
    **report: Any,
) -> str:
    """A submitted incident, triaged (wang excluded as accused) and assigned at level 1."""
    incident = await submit(env, **report)
    excluded = (
        {"p-wang": "accused", "p-li": "accused_management_chain"} if excluded is None else excluded
    )
    await publish(env, "incident.triaged.v1", incident, triaged(excluded))
    await publish(env, "incident.assigned.v1", incident, {"level": 1, "principals": list(level1)})
    await until_routed(
        env,
        incident,
        {
            **{p: (True, excluded.get(p)) for p in level1},
            **{p: (p in level1, r) for p, r in excluded.items()},
        },
    )
    return incident


def denied(incident: str, principal: str, action: str) -> Callable[[Envelope, EventData], bool]:
    def match(envelope: Envelope, data: EventData) -> bool:
        return (
            envelope.type == "incident.access.denied.v1"
            and envelope.subject == incident
            and getattr(data, "principal", None) == principal
            and getattr(data, "action", None) == action
        )

    return match


# Viewing --------------------------------------------------------------------------


async def test_a_routed_handler_sees_the_report_only_after_the_view_is_committed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident = await routed_incident(env)
    committed_at_build: list[int] = []
    original = handlers.report_view

    def spying(context: actions.Context) -> dict[str, Any]:
        # Another connection sees only committed rows: the event and its outbox row.
        async def count() -> int:
            conn = await asyncpg.connect(env.settings.database_url)
            try:
                return int(
                    await conn.fetchval(
                        "SELECT count(*) FROM intake.events e JOIN intake.outbox o USING (event_id)"
                        " WHERE e.stream_id = $1 AND e.type = 'incident.viewed.v1'",
                        incident,
                    )
                )
            finally:
                await conn.close()

        committed_at_build.append(run_sync(partial(count)))
        return original(context)

    monkeypatch.setattr(handlers, "report_view", spying)
    answer = await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))
    assert answer.status_code == 200, answer.text
    assert committed_at_build == [1]
    view = answer.json()
    assert view["summary"] == REPORT["summary"] and view["description"] == REPORT["description"]
    assert view["accused"] == ["p-wang"] and view["named"] == ["a client"]
    assert (view["level"], view["access"], view["status"]) == (1, "routed", "triaged")
    assert view["status_label"] == "triaged, level 1 asked"  # services/domain/status.py
    assert "reporter" not in json.dumps(view)
    [event] = await of_type(env.settings, incident, "incident.viewed.v1")
    assert event.data == {"principal": "p-chen", "report_digest": view["report_digest"]}
    assert event.actor == "p-chen"
    [(envelope, data)] = await on_topic(
        env.settings,
        "incident.activity",
        lambda e, _: e.subject == incident and e.type == "incident.viewed.v1",
    )
    assert envelope.id == event.id and data.report_digest == view["report_digest"]  # type: ignore[attr-defined]


async def test_no_content_is_returned_when_the_view_cannot_be_recorded(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident = await routed_incident(env)

    async def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("the disk is full")

    # as a real server answers: the error handler's 500, not an exception in the client
    transport = httpx.ASGITransport(app=env.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        monkeypatch.setattr(eventstore, "append_streams", broken)
        answer = await client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))
        monkeypatch.undo()
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert REPORT["summary"] not in answer.text and REPORT["description"] not in answer.text
    assert await of_type(env.settings, incident, "incident.viewed.v1") == []


async def test_concurrent_views_are_each_recorded_once(env: Env) -> None:
    incident = await routed_incident(env, level1=("p-chen", "p-ma"))
    answers = await asyncio.gather(
        *[
            env.client.get(f"/v1/incidents/{incident}", headers=auth(p))
            for p in ["p-chen", "p-ma"] * 3
        ]
    )
    assert [a.status_code for a in answers] == [200] * 6
    viewed = await of_type(env.settings, incident, "incident.viewed.v1")
    assert sorted(e.data["principal"] for e in viewed) == ["p-chen"] * 3 + ["p-ma"] * 3
    assert len({e.id for e in viewed}) == 6


async def test_an_unknown_incident_is_404_and_the_attempt_is_recorded(env: Env) -> None:
    unknown = str(uuid.uuid4())
    answer = await env.client.get(f"/v1/incidents/{unknown}", headers=auth("p-chen"))
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    ack = await env.client.post(f"/v1/incidents/{unknown}/acknowledge", headers=auth("p-chen"))
    assert ack.status_code == 404
    events = await denials(env.settings, unknown)
    # refused on the caller's (absent) routing row: the same work and record as for a
    # real incident not routed to her
    assert [(e.type, e.subject, e.data["action"], e.data["reason"]) for e in events] == [
        ("incident.access.denied.v1", unknown, "view", "not_routed"),
        ("incident.access.denied.v1", unknown, "acknowledge", "not_routed"),
    ]
    await on_topic(env.settings, "incident.activity", denied(unknown, "p-chen", "view"))


async def test_someone_the_incident_is_not_routed_to_gets_the_same_404(env: Env) -> None:
    incident = await routed_incident(env)
    unknown = await env.client.get(f"/v1/incidents/{uuid.uuid4()}", headers=auth("p-liu"))
    answer = await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-liu"))
    assert answer.status_code == 404 and answer.json() == unknown.json()
    [event] = await denials(env.settings, incident)
    assert event.data == {
        "principal": "p-liu",
        "action": "view",
        "reason": "not_routed",
        "rule": None,
    }
    assert await of_type(env.settings, incident, "incident.viewed.v1") == []
    await on_topic(env.settings, "incident.activity", denied(incident, "p-liu", "view"))


async def test_an_excluded_principal_is_refused_even_when_routed(env: Env) -> None:
    # a faulty assignment routes the accused; the exclusion still wins, for every action
    incident = await routed_incident(env, level1=("p-chen", "p-wang"))
    rows = await routing_rows(env, incident)
    assert (rows["p-wang"]["routed"], rows["p-wang"]["excluded_rule"]) == (True, "accused")
    for method, path, body in [
        ("GET", "", None),
        ("POST", "/acknowledge", None),
        ("POST", "/comments", {"text": "nothing happened"}),
        ("POST", "/messages", {"text": "withdraw this"}),
    ]:
        answer = await env.client.request(
            method, f"/v1/incidents/{incident}{path}", headers=auth("p-wang"), json=body
        )
        assert answer.status_code == 404, (path, answer.text)  # he must not learn it exists
        assert REPORT["summary"] not in answer.text
    refused = await denials(env.settings, incident)
    assert [(e.data["principal"], e.data["action"], e.data["reason"]) for e in refused] == [
        ("p-wang", "view", "excluded"),
        ("p-wang", "acknowledge", "excluded"),
        ("p-wang", "comment", "excluded"),
        ("p-wang", "message_reporter", "excluded"),
    ]
    types = {e.type for e in await stream(env.settings, incident)}
    assert types == {"incident.report.submitted.v1"}  # refusals never grow its fold
    await on_topic(env.settings, "incident.activity", denied(incident, "p-wang", "view"))
    # and his manager, excluded but never routed, gets the same answer
    answer = await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-li"))
    assert answer.status_code == 404


async def test_an_auditor_may_view_but_not_act(env: Env) -> None:
    incident = await routed_incident(env)
    answer = await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-audit"))
    assert answer.status_code == 200
    assert (answer.json()["access"], answer.json()["level"]) == ("standing_role", None)
    [viewed] = await of_type(env.settings, incident, "incident.viewed.v1")
    assert viewed.data["principal"] == "p-audit"
    for path, body in [
        ("/acknowledge", None),
        ("/status", {"status": "investigating"}),
        ("/comments", {"text": "looked at it"}),
        ("/messages", {"text": "hello"}),
    ]:
        refused = await env.client.post(
            f"/v1/incidents/{incident}{path}", headers=auth("p-audit"), json=body
        )
        assert refused.status_code == 403, (path, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
    recorded = await denials(env.settings, incident)
    assert [(e.data["action"], e.data["reason"]) for e in recorded] == [
        ("acknowledge", "read_only"),
        ("status", "read_only"),
        ("comment", "read_only"),
        ("message_reporter", "read_only"),
    ]
    assert await of_type(env.settings, incident, "incident.acknowledged.v1") == []
    await on_topic(env.settings, "incident.activity", denied(incident, "p-audit", "acknowledge"))


# Acting ---------------------------------------------------------------------------


async def test_acknowledge_records_the_level_once_per_principal(env: Env) -> None:
    incident = await routed_incident(env)
    first = await env.client.post(f"/v1/incidents/{incident}/acknowledge", headers=auth("p-chen"))
    assert first.status_code == 202
    assert (first.json()["level"], first.json()["new"]) == (1, True)
    again = await env.client.post(f"/v1/incidents/{incident}/acknowledge", headers=auth("p-chen"))
    assert again.status_code == 200
    assert again.json() == {**first.json(), "new": False}
    [ack] = await of_type(env.settings, incident, "incident.acknowledged.v1")
    assert ack.data == {"principal": "p-chen", "level": 1}
    [(envelope, _)] = await on_topic(
        env.settings,
        "incident.activity",
        lambda e, _: e.subject == incident and e.type == "incident.acknowledged.v1",
    )
    assert envelope.id == ack.id
    view = (await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))).json()
    assert (view["status"], view["acknowledged_by"]) == ("acknowledged", "p-chen")


async def test_acknowledging_an_incident_not_routed_to_you_is_404_and_audited(env: Env) -> None:
    incident = await routed_incident(env)
    answer = await env.client.post(f"/v1/incidents/{incident}/acknowledge", headers=auth("p-ma"))
    assert answer.status_code == 404  # as for an unknown id: she may not learn it exists
    [event] = await denials(env.settings, incident)
    assert event.data == {
        "principal": "p-ma",
        "action": "acknowledge",
        "reason": "not_routed",
        "rule": None,
    }
    assert await of_type(env.settings, incident, "incident.acknowledged.v1") == []
    await on_topic(env.settings, "incident.activity", denied(incident, "p-ma", "acknowledge"))


async def test_an_escalation_routes_the_next_level(env: Env) -> None:
    incident = await routed_incident(env)
    before = await env.client.post(f"/v1/incidents/{incident}/acknowledge", headers=auth("p-zhou"))
    assert before.status_code == 404
    await publish(
        env,
        "incident.escalated.v1",
        incident,
        {
            "level": 2,
            "recipients": ["p-zhou"],
            "reason": "not_acknowledged",
            "deadline": (datetime.now(UTC) + timedelta(hours=2)).isoformat(),
        },
    )
    await until_routed(env, incident, {"p-zhou": (True, None)})
    answer = await env.client.post(f"/v1/incidents/{incident}/acknowledge", headers=auth("p-zhou"))
    assert answer.status_code == 202 and answer.json()["level"] == 2
    listed = await env.client.get("/v1/incidents", headers=auth("p-zhou"))
    [mine] = [i for i in listed.json()["incidents"] if i["incident_id"] == incident]
    assert (mine["level"], mine["status"], mine["category"]) == (
        2,
        "acknowledged",
        "sexual_misconduct",
    )


async def test_status_follows_the_workflow(env: Env) -> None:
    incident = await routed_incident(env)
    url = f"/v1/incidents/{incident}/status"
    early = await env.client.post(url, headers=auth("p-chen"), json={"status": "investigating"})
    assert early.status_code == 409 and "acknowledged" in early.json()["detail"]
    await env.client.post(f"/v1/incidents/{incident}/acknowledge", headers=auth("p-chen"))
    steps = [
        ({"status": "investigating"}, 202),
        ({"status": "investigating"}, 409),
        ({"status": "closed"}, 422),  # an outcome is required
        ({"status": "closed", "outcome": "Dismissal; police informed"}, 202),
        ({"status": "investigating"}, 409),  # closed is final
        ({"status": "reopened"}, 422),
        ({"status": "resolved", "extra": 1}, 422),
        ({"status": "closed", "outcome": "x" * 2001}, 422),
    ]
    for body, status in steps:
        answer = await env.client.post(url, headers=auth("p-chen"), json=body)
        assert answer.status_code == status, (body, answer.text)
        if status >= 400:
            assert answer.headers["content-type"] == "application/problem+json"
    changes = await of_type(env.settings, incident, "incident.status.changed.v1")
    assert is_sealed(changes[1].data["outcome"]) and "police" not in changes[1].to_bytes().decode()
    assert await opened(env, incident, changes) == [
        {"principal": "p-chen", "status": "investigating", "outcome": None},
        {"principal": "p-chen", "status": "closed", "outcome": "Dismissal; police informed"},
    ]
    await on_topic(
        env.settings,
        "incident.activity",
        lambda e, _: e.subject == incident and e.type == "incident.status.changed.v1",
        want=2,
    )
    view = (await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))).json()
    assert (view["status"], view["outcome"]) == ("closed", "Dismissal; police informed")
    refused = await env.client.post(url, headers=auth("p-liu"), json={"status": "resolved"})
    assert refused.status_code == 404


async def test_comments_and_messages_to_the_reporter(env: Env) -> None:
    incident = await routed_incident(env)
    comment = await env.client.post(
        f"/v1/incidents/{incident}/comments", headers=auth("p-chen"), json={"text": "Called HR"}
    )
    assert comment.status_code == 202 and comment.json()["type"] == "incident.commented.v1"
    message = await env.client.post(
        f"/v1/incidents/{incident}/messages",
        headers=auth("p-chen"),
        json={"text": "We are on it. Can you tell us the date?"},
    )
    assert message.status_code == 202
    [(_, commented)] = await on_topic(
        env.settings,
        "incident.activity",
        lambda e, _: e.subject == incident and e.type == "incident.commented.v1",
    )
    assert is_sealed(commented.text)  # type: ignore[attr-defined]
    [(envelope, sent)] = await on_topic(
        env.settings,
        "incident.reports",
        lambda e, _: e.subject == incident and e.type == "incident.reporter.message.v1",
    )
    assert is_sealed(sent.text)  # type: ignore[attr-defined]
    comment_event = (await of_type(env.settings, incident, "incident.commented.v1"))[0]
    assert await opened(env, incident, [comment_event]) == [
        {"principal": "p-chen", "text": "Called HR"}
    ]
    [sent_data] = await opened(env, incident, [envelope])
    assert sent_data == {
        "direction": "to_reporter",
        "author": "p-chen",
        "text": "We are on it. Can you tell us the date?",
    }
    assert envelope.id == message.json()["event_id"]
    view = (await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))).json()
    assert [c["text"] for c in view["comments"]] == ["Called HR"]
    assert [(m["direction"], m["author"]) for m in view["messages"]] == [("to_reporter", "p-chen")]
    for principal, body, status in [
        ("p-liu", {"text": "hi"}, 404),
        ("p-chen", {"text": ""}, 422),
        ("p-chen", {"text": "x" * 10_001}, 422),
        ("p-chen", {"text": "hi", "author": "reporter"}, 422),
    ]:
        answer = await env.client.post(
            f"/v1/incidents/{incident}/comments", headers=auth(principal), json=body
        )
        assert answer.status_code == status, (principal, body, answer.text)
    assert len(await of_type(env.settings, incident, "incident.commented.v1")) == 1


async def test_my_incidents_lists_what_is_routed_to_me(env: Env) -> None:
    incident = await routed_incident(env, level1=("p-chen", "p-wang"))
    for principal, listed in [("p-chen", True), ("p-wang", False), ("p-audit", False)]:
        answer = await env.client.get("/v1/incidents", headers=auth(principal))
        assert answer.status_code == 200
        ids = [i["incident_id"] for i in answer.json()["incidents"]]
        assert (incident in ids) is listed, principal
    assert await of_type(env.settings, incident, "incident.viewed.v1") == []


async def test_anonymous_and_bad_tokens_are_401_everywhere(env: Env) -> None:
    incident = await routed_incident(env)
    calls = [
        ("GET", "/v1/incidents", None),
        ("GET", f"/v1/incidents/{incident}", None),
        ("POST", f"/v1/incidents/{incident}/acknowledge", None),
        ("POST", f"/v1/incidents/{incident}/status", {"status": "investigating"}),
        ("POST", f"/v1/incidents/{incident}/comments", {"text": "x"}),
        ("POST", f"/v1/incidents/{incident}/messages", {"text": "x"}),
    ]
    for headers in ({}, {"authorization": "Bearer not-a-token"}):
        for method, path, body in calls:
            answer = await env.client.request(method, path, json=body, headers=headers)
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["content-type"] == "application/problem+json"
    not_uuid = await env.client.get("/v1/incidents/not-a-uuid", headers=auth("p-chen"))
    assert not_uuid.status_code == 422
    assert [e.type for e in await stream(env.settings, incident)] == [
        "incident.report.submitted.v1"
    ]


# The routing projection -----------------------------------------------------------


async def test_reassignment_removes_and_excludes_and_routes_the_replacement(env: Env) -> None:
    incident = await routed_incident(env)
    await publish(
        env,
        "incident.reassigned.v1",
        incident,
        {"removed": [{"principal": "p-chen", "rule": "conflict_disclosed"}], "added": ["p-ma"]},
    )
    await until_routed(
        env, incident, {"p-chen": (False, "conflict_disclosed"), "p-ma": (True, None)}
    )
    assert (await routing_rows(env, incident))["p-ma"]["level"] == 1
    gone = await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))
    assert gone.status_code == 404
    [event] = await denials(env.settings, incident)
    assert event.data["reason"] == "excluded"
    new = await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-ma"))
    assert new.status_code == 200 and new.json()["level"] == 1


async def test_redelivered_routing_records_change_nothing(env: Env) -> None:
    incident = await submit(env)
    assigned = await publish(
        env, "incident.assigned.v1", incident, {"level": 1, "principals": ["p-chen"]}
    )
    await send(env, "incident.triage", assigned, incident)  # delivered twice
    await until_routed(env, incident, {"p-chen": (True, None)})
    await publish(
        env,
        "incident.reassigned.v1",
        incident,
        {"removed": [{"principal": "p-chen", "rule": "on_leave"}], "added": ["p-ma"]},
    )
    await until_routed(env, incident, {"p-chen": (False, "on_leave"), "p-ma": (True, None)})
    # the old assignment, re-delivered after the reassignment, must not route her again
    await send(env, "incident.triage", assigned, incident)
    marker = await publish(
        env, "incident.assigned.v1", incident, {"level": 1, "principals": ["p-sun"]}
    )
    await until_routed(env, incident, {"p-sun": (True, None)})  # processed after the re-send
    rows = await routing_rows(env, incident)
    assert {p: (r["routed"], r["level"], r["excluded_rule"]) for p, r in rows.items()} == {
        "p-chen": (False, 1, "on_leave"),
        "p-ma": (True, 1, None),
        "p-sun": (True, 1, None),
    }
    tracked = await fetch(
        env.settings,
        "SELECT event_key FROM intake.tracking WHERE consumer = 'intake-routing'"
        " AND event_key = $1",
        json.loads(assigned)["id"],
    )
    assert len(tracked) == 1
    assert json.loads(marker)["id"] != json.loads(assigned)["id"]


async def test_bad_routing_records_are_dead_lettered_and_routing_carries_on(env: Env) -> None:
    incident = await submit(env)
    bad_data = json.loads(
        make_event(
            "incident.assigned.v1",
            subject=incident,
            data={"level": 1, "principals": ["p-chen"]},
            source="/s",
            time=datetime.now(UTC),
        ).to_bytes()
    )
    bad_data["data"] = {"level": 0, "principals": "p-chen"}
    for value, topic in [
        (b"{oops", "incident.triage"),
        (signed(bad_data, "triage"), "incident.escalations"),  # authentic, but invalid
    ]:
        await send(env, topic, value, incident)
    rejected = await on_topic(
        env.settings,
        "incident.deadletter",
        lambda _, d: (getattr(d, "source_topic", None) or "").endswith(
            ("incident.triage", "incident.escalations")
        ),
        want=2,
    )
    reasons = sorted(getattr(d, "reason", "") for _, d in rejected)
    assert reasons[0].startswith("invalid data for incident.assigned.v1")
    assert reasons[1].startswith("not JSON")
    await publish(env, "incident.assigned.v1", incident, {"level": 1, "principals": ["p-chen"]})
    await until_routed(env, incident, {"p-chen": (True, None)})
    assert set(await routing_rows(env, incident)) == {"p-chen"}


async def test_openapi_documents_every_answer_as_problem_json(env: Env) -> None:
    spec = (await env.client.get("/openapi.json")).json()
    view = spec["paths"]["/v1/incidents/{incident_id}"]["get"]["responses"]
    assert set(view) == {"200", "400", "401", "404", "422", "500", "503"}  # 400: the URL
    ack = spec["paths"]["/v1/incidents/{incident_id}/acknowledge"]["post"]["responses"]
    assert {"200", "202", "401", "403", "404"} <= set(ack)
    for path, methods in spec["paths"].items():
        if not path.startswith("/v1/incidents"):
            continue
        for operation in methods.values():
            assert operation.get("summary")
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")):
                    assert list(response["content"]) == ["application/problem+json"], (path, code)


# Conflicts: recusal, reassignment, confirmation (issue 18) -------------------------


async def test_a_recused_handler_is_excluded_at_once(env: Env) -> None:
    incident = await routed_incident(env, level1=("p-chen", "p-ma"))
    url = f"/v1/incidents/{incident}/recuse"
    answer = await env.client.post(url, headers=auth("p-chen"), json={"reason": "my cousin"})
    assert answer.status_code == 202, answer.text
    [recused] = await of_type(env.settings, incident, "incident.recused.v1")
    assert answer.json()["event_id"] == recused.id and is_sealed(recused.data["reason"])
    # refused from this commit on, before triage answers; the answer hides the incident
    rows = await routing_rows(env, incident)
    assert (rows["p-chen"]["routed"], rows["p-chen"]["excluded_rule"]) == (False, "recused")
    for principal in ("p-chen", "p-liu"):  # again, and someone not routed
        again = await env.client.post(url, headers=auth(principal), json={})
        assert again.status_code == 404, principal
    view = await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))
    assert view.status_code == 404
    await on_topic(
        env.settings,
        "incident.activity",
        lambda e, _: e.subject == incident and e.type == "incident.recused.v1",
    )
    # a closed incident: nothing to recuse from
    await env.client.post(f"/v1/incidents/{incident}/acknowledge", headers=auth("p-ma"))
    closed = await env.client.post(
        f"/v1/incidents/{incident}/status",
        headers=auth("p-ma"),
        json={"status": "closed", "outcome": "unfounded"},
    )
    assert closed.status_code == 202
    late = await env.client.post(url, headers=auth("p-ma"), json={})
    assert late.status_code == 409 and late.headers["content-type"] == "application/problem+json"


async def test_a_reassignment_by_the_ethics_officer_passes_the_exclusions(env: Env) -> None:
    # the report accuses p-wang; p-liu answers to him, p-li is above him
    incident = await routed_incident(env)
    url = f"/v1/incidents/{incident}/reassign"
    bad = [
        ("p-sun", {"to": [], "reason": "x"}, 422, "to"),  # nobody
        ("p-sun", {"to": ["p-wang"], "reason": "x"}, 422, "to.0"),  # the accused
        ("p-sun", {"to": ["p-ma", "p-liu"], "reason": "x"}, 422, "to.1"),  # answers to him
        ("p-sun", {"to": ["p-nobody"], "reason": "x"}, 422, "to.0"),  # not a person
        ("p-sun", {"to": ["p-ma"], "remove": ["p-ma"], "reason": "x"}, 422, "remove.0"),
        ("p-chen", {"to": ["p-ma"], "reason": "x"}, 403, None),  # routed, without the role
        ("p-liu", {"to": ["p-ma"], "reason": "x"}, 404, None),  # neither
    ]
    for principal, body, status, field in bad:
        answer = await env.client.post(url, headers=auth(principal), json=body)
        assert answer.status_code == status, (principal, body, answer.text)
        if field is not None:
            assert field in [e["field"] for e in answer.json()["errors"]], answer.text
    assert await of_type(env.settings, incident, "incident.reassignment.ordered.v1") == []
    body = {"to": ["p-ma"], "remove": ["p-chen"], "reason": "workload"}
    answer = await env.client.post(url, headers=auth("p-sun"), json=body)
    assert answer.status_code == 202, answer.text
    [ordered] = await of_type(env.settings, incident, "incident.reassignment.ordered.v1")
    assert (ordered.data["to"], ordered.data["remove"]) == (["p-ma"], ["p-chen"])
    assert is_sealed(ordered.data["reason"])
    rows = await routing_rows(env, incident)
    assert (rows["p-chen"]["routed"], rows["p-chen"]["excluded_rule"]) == (False, "reassigned")
    assert (rows["p-ma"]["routed"], rows["p-ma"]["level"]) == (True, 1)
    mine = await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-ma"))
    assert mine.status_code == 200
    assert (
        await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))
    ).status_code == 404
    # the removed are never let back in by hand either
    back = await env.client.post(url, headers=auth("p-sun"), json={"to": ["p-chen"], "reason": "x"})
    assert back.status_code == 422


async def test_an_independent_holder_confirms_the_people_of_an_unresolved_report(
    env: Env,
) -> None:
    # "a client" matched nobody in the directory: only the independent roles see it
    incident = await routed_incident(env, level1=("p-sun", "p-chen"), excluded={})
    url = f"/v1/incidents/{incident}/people"
    body = {"accused": ["p-wang"], "named": [], "outsiders": 1, "note": "the client"}
    refused = await env.client.post(url, headers=auth("p-chen"), json=body)
    assert refused.status_code == 403  # routed, but no independent role
    unknown = await env.client.post(
        url, headers=auth("p-sun"), json={**body, "named": ["p-nobody"]}
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "named.0"
    answer = await env.client.post(url, headers=auth("p-sun"), json=body)
    assert answer.status_code == 202, answer.text
    [confirmed] = await of_type(env.settings, incident, "incident.people.confirmed.v1")
    assert confirmed.data["accused"] == ["p-wang"] and confirmed.data["outsiders"] == 1
    assert is_sealed(confirmed.data["note"])
    await on_topic(
        env.settings,
        "incident.reports",
        lambda e, _: e.subject == incident and e.type == "incident.people.confirmed.v1",
    )
    settled = await env.client.post(url, headers=auth("p-sun"), json=body)
    assert settled.status_code == 409  # nothing is unresolved any more
    # triage decides again: the new chain's level 1 is routed, nobody is unrouted
    decided = {**triaged({"p-li": "accused_management_chain"}), "revision": 2}
    decided["chain"][0]["recipients"] = ["p-ma"]
    await publish(env, "incident.triaged.v1", incident, decided)
    await until_routed(
        env,
        incident,
        {"p-ma": (True, None), "p-sun": (True, None), "p-li": (False, "accused_management_chain")},
    )


async def test_someone_answering_to_the_accused_may_not_act_even_when_routed(env: Env) -> None:
    # a faulty decision routes p-chen, who reports to the accused p-li (harassment turns
    # `accused_reports` on): she is refused at request time, like an unknown id
    incident = await routed_incident(
        env, excluded={}, accused=["p-li"], named=[], category="harassment"
    )
    for method, path, body in [
        ("POST", "/acknowledge", None),
        ("POST", "/status", {"status": "closed", "outcome": "unfounded"}),
    ]:
        answer = await env.client.request(
            method, f"/v1/incidents/{incident}{path}", headers=auth("p-chen"), json=body
        )
        assert answer.status_code == 404, answer.text
    refused = await denials(env.settings, incident)
    assert [(e.data["action"], e.data["reason"]) for e in refused] == [
        ("acknowledge", "excluded"),
        ("status", "excluded"),
    ]
    # the rule is sealed in the first refusal; from then on the access table holds her
    # exclusion, and the next refusal is its indexed lookup (the rule is in that row)
    assert await opened_rules(env, incident, refused) == ["accused_reports", None]
    row = (await routing_rows(env, incident))["p-chen"]
    assert (row["routed"], row["excluded_rule"]) == (True, "accused_reports")
    assert await of_type(env.settings, incident, "incident.acknowledged.v1") == []


async def opened_rules(env: Env, incident: str, events: list[Envelope]) -> list[str | None]:
    """The sealed `rule` of refusals, as an identity custodian's path opens it."""
    from services.domain.events import CUSTODIAN_FIELDS

    async with env.app.state.runtime.db.acquire() as conn:
        opened = await env.app.state.keys.open_events(
            conn, incident, events, fields=CUSTODIAN_FIELDS
        )
    return [e.data.get("rule") for e in opened]


async def test_refusals_are_the_same_for_the_excluded_the_unrelated_and_an_unknown_id(
    env: Env,
) -> None:
    incident = await routed_incident(env)  # p-wang is the accused
    unknown = str(uuid.uuid4())
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "", None),
        ("POST", "/acknowledge", None),
        ("POST", "/status", {"status": "investigating"}),
        ("POST", "/comments", {"text": "x"}),
        ("POST", "/messages", {"text": "x"}),
        ("POST", "/recuse", {}),
        ("POST", "/reassign", {"to": ["p-ma"], "reason": "x"}),
        ("POST", "/people", {"accused": ["p-ma"]}),
        ("POST", "/reporter-identity", {"reason": "x"}),
        ("POST", "/legal-hold", {"reason": "x"}),
        ("POST", "/legal-hold/release", {"reason": "x"}),
    ]
    for method, path, body in routes:
        seen = set()
        for principal, target in [("p-wang", incident), ("p-liu", incident), ("p-liu", unknown)]:
            answer = await env.client.request(
                method, f"/v1/incidents/{target}{path}", headers=auth(principal), json=body
            )
            assert answer.status_code in (403, 404), (path, answer.text)
            headers = tuple(sorted((k, v) for k, v in answer.headers.items() if k != "date"))
            seen.add((answer.status_code, headers, answer.content))
        assert len(seen) == 1, (path, seen)
    # and none of it touched the incident's own stream
    assert {e.type for e in await stream(env.settings, incident)} == {
        "incident.report.submitted.v1"
    }
    assert len(await denials(env.settings, unknown)) == len(routes)
