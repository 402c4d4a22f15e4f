"""`POST /v1/reports` and the harassment channel on a real database and broker.

Who the reporter is, receipts for anonymous reporters, Idempotency-Key (also under
concurrency), and the promise that nothing about an anonymous caller is kept. One
intake app serves the whole module; every test makes its own incidents and looks
only at those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from argon2 import PasswordHasher
from fastapi import FastAPI

from services.domain.events import (
    CUSTODIAN_FIELDS,
    ReportSubmitted,
    data_of,
    is_sealed,
    parse_event,
)
from services.infra.settings import IntakeSettings
from services.intake.app import create_app
from tests.helpers import serving

pytestmark = pytest.mark.integration
REPORT: dict[str, Any] = {
    "category": "harassment",
    "summary": "Comments in meetings",
    "description": "Since March, in every team meeting ...",
}
CODE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{5}(-[0-9A-HJKMNP-TV-Z]{5})*$")
LIU = {"authorization": "Bearer dev-liu-token"}
HRIS = {"authorization": "Bearer dev-hris-token"}


@dataclass
class Intake:
    client: httpx.AsyncClient
    settings: IntakeSettings
    app: FastAPI

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.settings.database_url, server_settings={"search_path": "intake"}
        )

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await self.db()
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def events_of(self, incident_id: str) -> list[asyncpg.Record]:
        return await self.fetch(
            "SELECT type, version, body FROM events WHERE stream_id = $1 ORDER BY version",
            incident_id,
        )

    async def counts(self) -> tuple[int, int, int]:
        """(events, outbox rows, receipts): to show that a refusal left nothing."""
        [row] = await self.fetch(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM outbox),"
            " (SELECT count(*) FROM receipts)"
        )
        return (row[0], row[1], row[2])

    async def records(
        self, topic: str, incident_id: str, want: int, timeout: float = 15.0
    ) -> list[Any]:
        """The Kafka records of one incident on a topic, once `want` of them arrived."""
        return await records_of(
            self.settings, topic, lambda r: r.key == incident_id.encode(), want, timeout
        )


async def records_of(
    settings: IntakeSettings,
    topic: str,
    match: Callable[[Any], bool],
    want: int,
    timeout: float = 15.0,
) -> list[Any]:
    """Read a topic from the start; the records that `match`, once `want` arrived."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < want and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                got.extend(r for r in records if match(r))
    finally:
        await consumer.stop()
    return got


def module_settings(kafka_bootstrap: str, database_url: str) -> IntakeSettings:
    return IntakeSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        kafka_topic_prefix=f"t{secrets.token_hex(4)}.",
        environment="test",
        outbox_poll_interval=0.1,
        broker_check_interval=0.3,
        kafka_session_timeout_ms=3000,
    )


@contextlib.asynccontextmanager
async def running_intake(settings: IntakeSettings) -> AsyncIterator[Intake]:
    app = create_app(settings)
    async with serving(app, "http://intake") as client:
        yield Intake(client, settings, app)


@pytest.fixture(scope="module")
async def intake(
    kafka_bootstrap: str, make_database: Callable[[str], str]
) -> AsyncIterator[Intake]:
    settings = module_settings(kafka_bootstrap, make_database("reports"))
    async with running_intake(settings) as running:
        yield running


async def submitted_event(intake: Intake, incident_id: str) -> tuple[Any, Any]:
    """The one submitted event of an incident, from the event store and from Kafka."""
    [row] = await intake.events_of(incident_id)
    [record] = await intake.records("incident.reports", incident_id, 1)
    assert bytes(row["body"]) == record.value
    envelope, sealed = parse_event(record.value)
    assert is_sealed(sealed.summary) and is_sealed(sealed.description)  # type: ignore[attr-defined]
    async with intake.app.state.runtime.db.acquire() as conn:
        [opened] = await intake.app.state.keys.open_events(
            conn, incident_id, [envelope], fields=CUSTODIAN_FIELDS
        )
    return opened, data_of(opened)


def pseudonym_of(intake: Intake, incident_id: str, person: str) -> str:
    return str(intake.app.state.keys.pseudonyms.of(incident_id, person))


# -- who reports ------------------------------------------------------------------


async def test_an_anonymous_report_gets_a_receipt_and_a_secret_and_no_reporter(
    intake: Intake,
) -> None:
    answer = await intake.client.post("/v1/reports", json=REPORT)
    assert answer.status_code == 202
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {"incident_id", "receipt", "secret"}
    receipt, secret = body["receipt"], body["secret"]
    assert CODE.match(receipt) and len(receipt) == 23  # 4 groups of 5: 100 bits
    assert CODE.match(secret) and len(secret) == 35  # 6 groups of 5: 150 bits
    envelope, data = await submitted_event(intake, body["incident_id"])
    assert envelope.type == ReportSubmitted.TYPE
    assert data.reporter is None and data.channel == "web"
    assert envelope.actor == "reporter:anonymous"
    # the receipt is intake's secret too: it travels in no event
    assert receipt not in envelope.to_bytes().decode()
    [row] = await intake.fetch("SELECT * FROM receipts WHERE incident_id = $1", body["incident_id"])
    assert row["receipt"] == receipt
    assert row["secret_hash"].startswith("$argon2id$")
    assert PasswordHasher().verify(row["secret_hash"], secret)
    [dump] = await intake.fetch("SELECT r::text FROM receipts r WHERE receipt = $1", receipt)
    assert secret not in dump[0] and secret.replace("-", "") not in dump[0]


async def test_a_person_reports_as_themselves_without_a_receipt(intake: Intake) -> None:
    for body in (REPORT, {**REPORT, "reporter": "p-liu"}):
        answer = await intake.client.post("/v1/reports", json=body, headers=LIU)
        assert answer.status_code == 202
        assert answer.json()["receipt"] is None and answer.json()["secret"] is None
        incident = answer.json()["incident_id"]
        envelope, data = await submitted_event(intake, incident)
        # the person is named only sealed, and as a pseudonym; never as the actor
        assert (data.reporter_identity, envelope.actor, data.channel) == (
            "p-liu",
            "reporter:named",
            "web",
        )
        assert data.reporter == pseudonym_of(intake, incident, "p-liu")
        assert (
            await intake.fetch(
                "SELECT 1 FROM receipts WHERE incident_id = $1", answer.json()["incident_id"]
            )
            == []
        )


async def test_a_system_may_name_the_person_it_reports_for(intake: Intake) -> None:
    answer = await intake.client.post(
        "/v1/reports", json={**REPORT, "reporter": "p-liu"}, headers=HRIS
    )
    assert answer.status_code == 202
    assert answer.json()["receipt"] is None
    incident = answer.json()["incident_id"]
    envelope, data = await submitted_event(intake, incident)
    assert (data.reporter_identity, envelope.actor, data.channel) == ("p-liu", "system:hris", "api")
    assert data.reporter == pseudonym_of(intake, incident, "p-liu")


async def test_a_system_reporting_for_nobody_makes_an_anonymous_report_with_a_receipt(
    intake: Intake,
) -> None:
    answer = await intake.client.post(
        "/v1/reports", json={**REPORT, "channel": "hotline"}, headers=HRIS
    )
    assert answer.status_code == 202
    assert CODE.match(answer.json()["receipt"]) and CODE.match(answer.json()["secret"])
    envelope, data = await submitted_event(intake, answer.json()["incident_id"])
    assert (data.reporter, envelope.actor, data.channel) == (None, "system:hris", "hotline")


@pytest.mark.parametrize(
    ("headers", "reporter", "status", "detail"),
    [
        ({}, "p-liu", 401, "authenticate"),
        (LIU, "p-wang", 403, "only report as themselves"),
        (LIU, None, 422, "without an Authorization header"),
        (HRIS, "p-nobody", 422, "no person 'p-nobody'"),
        (HRIS, "not a person id", 422, "reporter"),
        (HRIS, "p-" + "x" * 100, 422, "reporter"),
    ],
    ids=[
        "anonymous-names-reporter",
        "person-names-someone-else",
        "person-asks-for-null",
        "system-names-unknown-person",
        "malformed-id",
        "overlong-id",
    ],
)
async def test_a_reporter_the_caller_may_not_name_is_refused_and_leaves_nothing(
    intake: Intake, headers: dict[str, str], reporter: str | None, status: int, detail: str
) -> None:
    before = await intake.counts()
    answer = await intake.client.post(
        "/v1/reports", json={**REPORT, "reporter": reporter}, headers=headers
    )
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["status"] == status and detail in answer.json()["detail"]
    assert await intake.counts() == before


# -- the harassment channel -------------------------------------------------------


async def test_the_harassment_channel_takes_sexual_misconduct_and_harassment(
    intake: Intake,
) -> None:
    for category in ("sexual_misconduct", "harassment"):
        answer = await intake.client.post(
            "/v1/channels/harassment/reports", json={**REPORT, "category": category}
        )
        assert answer.status_code == 202
        assert CODE.match(answer.json()["receipt"])
        _, data = await submitted_event(intake, answer.json()["incident_id"])
        assert (data.category, data.channel, data.reporter) == (category, "harassment", None)
    answer = await intake.client.post("/v1/channels/harassment/reports", json=REPORT, headers=LIU)
    _, data = await submitted_event(intake, answer.json()["incident_id"])
    assert (data.channel, data.reporter_identity) == ("harassment", "p-liu")


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"category": "fraud"}, "not 'fraud'"),
        ({"category": "gossip"}, "not 'gossip'"),
        ({"channel": "hotline"}, "leave `channel` out"),
        ({"unexpected": 1}, "unexpected"),
    ],
    ids=["other-category", "unknown-category", "other-channel", "unknown-field"],
)
async def test_the_harassment_channel_refuses_what_does_not_belong_there(
    intake: Intake, changes: dict[str, Any], detail: str
) -> None:
    before = await intake.counts()
    answer = await intake.client.post("/v1/channels/harassment/reports", json={**REPORT, **changes})
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert detail in answer.json()["detail"]
    assert await intake.counts() == before


@pytest.mark.parametrize(
    ("field", "length"),
    [
        ("summary", 501),
        ("description", 100_001),
        ("location", 501),
        ("unit", 101),
        ("category", 65),
        ("channel", 65),
    ],
)
async def test_overlong_strings_are_refused(intake: Intake, field: str, length: int) -> None:
    before = await intake.counts()
    answer = await intake.client.post("/v1/reports", json={**REPORT, field: "x" * length})
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == field
    assert await intake.counts() == before


# -- Idempotency-Key --------------------------------------------------------------


async def test_the_same_key_and_body_give_the_same_answer_and_one_incident(
    intake: Intake,
) -> None:
    key = {"idempotency-key": secrets.token_hex(8), **LIU}
    first = await intake.client.post("/v1/reports", json=REPORT, headers=key)
    # the same body, written differently, is the same request
    same = {"accused": [], **REPORT, "description": REPORT["description"] + "  "}
    again = await intake.client.post("/v1/reports", json=same, headers=key)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    incident = first.json()["incident_id"]
    assert len(await intake.events_of(incident)) == 1
    assert len(await intake.records("incident.reports", incident, 2, timeout=2)) == 1
    # stored durably, under the digest of the key, never the key itself
    [row] = await intake.fetch(
        "SELECT * FROM idempotency WHERE response->>'incident_id' = $1", incident
    )
    # under a keyed pseudonym of the caller, never their id
    assert row["scope"] == pseudonym_of(intake, "idempotency", "p-liu") and row["status"] == 202
    assert row["key"].startswith("sha256:") and key["idempotency-key"] not in row["key"]


async def test_the_same_key_with_another_body_or_endpoint_is_a_conflict(intake: Intake) -> None:
    key = {"idempotency-key": secrets.token_hex(8), **LIU}
    first = await intake.client.post("/v1/reports", json=REPORT, headers=key)
    assert first.status_code == 202
    before = await intake.counts()
    other = await intake.client.post(
        "/v1/reports", json={**REPORT, "summary": "Something else"}, headers=key
    )
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["title"] == "Idempotency-Key reused"
    alias = await intake.client.post("/v1/channels/harassment/reports", json=REPORT, headers=key)
    assert alias.status_code == 409
    assert await intake.counts() == before


async def test_keys_are_scoped_to_the_caller(intake: Intake) -> None:
    key = secrets.token_hex(8)
    mine = await intake.client.post(
        "/v1/reports", json=REPORT, headers={"idempotency-key": key, **LIU}
    )
    theirs = await intake.client.post(
        "/v1/reports",
        json=REPORT,
        headers={"idempotency-key": key, "authorization": "Bearer dev-chen-token"},
    )
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["incident_id"] != theirs.json()["incident_id"]


async def test_an_anonymous_replay_repeats_the_receipt_but_never_the_secret(
    intake: Intake,
) -> None:
    """The secret is shown once: a replay has `secret: null` and a note saying why."""
    key = {"idempotency-key": secrets.token_hex(16)}
    first = await intake.client.post("/v1/reports", json=REPORT, headers=key)
    again = await intake.client.post("/v1/reports", json=REPORT, headers=key)
    assert first.status_code == again.status_code == 202
    body, replay = first.json(), again.json()
    assert CODE.match(body["secret"]) and "note" not in body
    assert replay["incident_id"] == body["incident_id"]
    assert replay["receipt"] == body["receipt"]
    assert replay["secret"] is None and "shown once" in replay["note"]
    assert again.headers["idempotent-replayed"] == "true"
    # the secret is stored nowhere, not even in the stored answer
    [row] = await intake.fetch(
        "SELECT response::text FROM idempotency WHERE scope = 'anonymous'"
        " AND response->>'incident_id' = $1",
        body["incident_id"],
    )
    assert body["secret"] not in row[0]
    # and the first answer's secret still opens the receipt
    view = await intake.client.get(
        f"/v1/receipts/{body['receipt']}", headers={"x-receipt-secret": body["secret"]}
    )
    assert view.status_code == 200 and view.json()["incident_id"] == body["incident_id"]


@pytest.mark.parametrize("headers", [{}, LIU], ids=["anonymous", "person"])
async def test_concurrent_requests_with_one_key_make_one_incident(
    intake: Intake, headers: dict[str, str]
) -> None:
    key = {"idempotency-key": secrets.token_hex(16), **headers}
    body = {**REPORT, "summary": f"race {secrets.token_hex(4)}"}
    answers = await asyncio.gather(
        *(intake.client.post("/v1/reports", json=body, headers=key) for _ in range(8))
    )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["incident_id"] for a in answers}) == 1
    assert len({a.json()["receipt"] for a in answers}) == 1
    replayed = [a for a in answers if a.headers.get("idempotent-replayed") == "true"]
    assert len(replayed) == 7
    if not headers:  # exactly one answer shows the secret
        assert sum(a.json()["secret"] is not None for a in answers) == 1
    incident = answers[0].json()["incident_id"]
    # the summary is sealed: open every stored report to count those with this body
    async with intake.app.state.runtime.db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT stream_id, body FROM events WHERE type = $1", ReportSubmitted.TYPE
        )
        same = 0
        for row in rows:
            [opened] = await intake.app.state.keys.open_events(
                conn, row["stream_id"], [parse_event(bytes(row["body"]))[0]]
            )
            same += opened.data["summary"] == body["summary"]
    assert same == 1
    assert len(await intake.records("incident.reports", incident, 2, timeout=2)) == 1


@pytest.mark.parametrize(
    "key", ["", "k" * 256, "tab\there", "non-ascii-é"], ids=["empty", "256", "control", "utf8"]
)
async def test_a_malformed_idempotency_key_is_refused(intake: Intake, key: str) -> None:
    before = await intake.counts()
    answer = await intake.client.post(
        "/v1/reports", json=REPORT, headers=[("idempotency-key", key.encode())]
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "header.Idempotency-Key"
    assert await intake.counts() == before


# -- nothing about an anonymous caller is kept ------------------------------------

MARK = "zq7marker41x"
HEX_MARK = "7a71376d61726b65723431780000beef"  # a trace id a client could choose
IPS = ("203.0.113.77", "198.51.100.23", "192.0.2.60")
IDENTIFYING = {
    "user-agent": f"Mozilla/5.0 ({MARK})",
    "x-forwarded-for": f"{IPS[0]}, 10.0.0.1",
    "x-real-ip": IPS[1],
    "forwarded": f"for={IPS[2]};proto=https;by={MARK}",
    "x-client-fingerprint": MARK,
    "cookie": f"session={MARK}",
    "referer": f"https://{MARK}.example/report",
    "accept-language": f"de-CH, {MARK}",
    "traceparent": f"00-{HEX_MARK}-00f067aa0ba902b7-01",
    "tracestate": f"vendor={MARK}",
    "baggage": f"user={MARK}",
}
MARKERS = (MARK, HEX_MARK, *IPS)


def leaks(text: str) -> list[str]:
    return [m for m in MARKERS if m in text]


async def test_nothing_identifying_is_kept_for_an_anonymous_reporter(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {**IDENTIFYING, "idempotency-key": f"key-{MARK}"}
    answer = await intake.client.post("/v1/reports", json=REPORT, headers=headers)
    assert answer.status_code == 202
    body = answer.json()
    incident, receipt, secret = body["incident_id"], body["receipt"], body["secret"]
    replay = await intake.client.post("/v1/reports", json=REPORT, headers=headers)
    assert replay.status_code == 202
    with_secret = {**IDENTIFYING, "x-receipt-secret": secret}
    assert (
        await intake.client.get(f"/v1/receipts/{receipt}", headers=with_secret)
    ).status_code == 200
    wrong = {**IDENTIFYING, "x-receipt-secret": "0" * 30}
    assert (await intake.client.get(f"/v1/receipts/{receipt}", headers=wrong)).status_code == 404
    sent = await intake.client.post(
        f"/v1/receipts/{receipt}/messages", json={"text": "More details"}, headers=with_secret
    )
    assert sent.status_code == 202
    reporter_headers = {**IDENTIFYING, "authorization": "Bearer dev-hris-token"}
    via_system = await intake.client.post("/v1/reports", json=REPORT, headers=reporter_headers)
    assert via_system.status_code == 202

    # Kafka: every record of these incidents (values, keys and headers)
    records = await intake.records("incident.reports", incident, 2)
    records += await intake.records("incident.reports", via_system.json()["incident_id"], 1)
    assert [r.value for r in records if b"reporter.message" in r.value]
    for record in records:
        assert not leaks(record.value.decode()), record.value
        assert not leaks(repr(record.headers)) and not leaks(record.key.decode())
    # PostgreSQL: every row of every table of intake's schema, as text
    conn = await intake.db()
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'intake'"
        )
        assert {"events", "outbox", "idempotency", "receipts", "receipt_attempts"} <= {
            t["table_name"] for t in tables
        }
        for table in tables:
            name = table["table_name"]
            for row in await conn.fetch(f'SELECT t::text AS row FROM intake."{name}" t'):
                assert not leaks(row["row"]), (name, row["row"][:300])
        # bytea columns show as hex above: read them as the text they are
        for text in await conn.fetch(
            "SELECT convert_from(body, 'UTF8') FROM events UNION ALL"
            " SELECT convert_from(value, 'UTF8') || headers::text FROM outbox"
        ):
            assert not leaks(text[0]), text[0][:300]
    finally:
        await conn.close()
    # logs, at DEBUG, of everything that ran meanwhile
    assert caplog.records
    for record in caplog.records:
        assert not leaks(record.getMessage()), record.getMessage()
    assert not leaks(caplog.text)
