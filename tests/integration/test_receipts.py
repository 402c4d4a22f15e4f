"""Anonymous reporters coming back with their receipt, on a real database and broker.

`GET /v1/receipts/{receipt}` and `POST /v1/receipts/{receipt}/messages`: the view,
the messages and their events, the same 404 for a wrong receipt and a wrong secret
(after exactly one argon2 verification), and the limits on repeated attempts. One
intake app serves the module; every test uses its own reports.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.domain.events import ReporterMessage, is_sealed, make_event, parse_event
from services.domain.receipts import FailureBudget, sha256_hex
from services.infra import eventstore
from services.intake.service import IntakeService, TooManyAttempts
from tests.integration.test_reports import REPORT, Intake, module_settings, running_intake

pytestmark = pytest.mark.integration
NOT_FOUND = {
    "type": "about:blank",
    "title": "Not found",
    "status": 404,
    "detail": "No report matches this receipt and secret.",
}


@pytest.fixture(scope="module")
async def intake(
    kafka_bootstrap: str, make_database: Callable[[str], str]
) -> AsyncIterator[Intake]:
    settings = module_settings(kafka_bootstrap, make_database("receipts"))
    async with running_intake(settings) as running:
        yield running


def service(intake: Intake) -> IntakeService:
    found: IntakeService = intake.app.state.intake
    return found


async def report(intake: Intake, **changes: Any) -> dict[str, str]:
    answer = await intake.client.post("/v1/reports", json={**REPORT, **changes})
    assert answer.status_code == 202
    body: dict[str, str] = answer.json()
    return body


async def view(intake: Intake, receipt: str, secret: str) -> Any:
    return await intake.client.get(f"/v1/receipts/{receipt}", headers={"x-receipt-secret": secret})


async def message(intake: Intake, receipt: str, secret: str, text: Any = "More details") -> Any:
    return await intake.client.post(
        f"/v1/receipts/{receipt}/messages",
        json={"text": text},
        headers={"x-receipt-secret": secret},
    )


def other_secret(secret: str) -> str:
    """The same secret with its last symbol changed: a near miss."""
    return secret[:-1] + ("1" if secret[-1] != "1" else "2")


def unknown_receipt() -> str:
    return "-".join(secrets.token_hex(3)[:5].upper() for _ in range(4))


# -- the reporter's view ----------------------------------------------------------


async def test_the_receipt_and_secret_open_the_reporters_view(intake: Intake) -> None:
    body = await report(intake)
    answer = await view(intake, body["receipt"], body["secret"])
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    seen = answer.json()
    assert seen["incident_id"] == body["incident_id"]
    assert seen["status"] == "submitted"
    assert seen["acknowledged"] is False and seen["acknowledged_at"] is None
    assert seen["messages"] == []
    submitted = datetime.fromisoformat(seen["submitted_at"])
    due = datetime.fromisoformat(seen["acknowledgement_due_at"])
    assert due - submitted == timedelta(days=7)  # the policy's reporter_acknowledgement_within


async def test_receipts_and_secrets_may_be_typed_loosely(intake: Intake) -> None:
    body = await report(intake)
    receipt = body["receipt"].replace("-", "").lower().replace("0", "o").replace("1", "l")
    secret = " ".join(body["secret"].split("-")).lower().replace("1", "i")
    answer = await view(intake, receipt, secret)
    assert answer.status_code == 200 and answer.json()["incident_id"] == body["incident_id"]


async def test_acknowledgement_and_handlers_messages_show_without_handler_names(
    intake: Intake,
) -> None:
    body = await report(intake)
    incident = body["incident_id"]
    now = datetime.now(UTC)
    async with intake.app.state.runtime.db.acquire() as conn:
        key = await intake.app.state.keys.get(conn, incident)
    handler_events = [
        make_event(
            "incident.acknowledged.v1",
            subject=incident,
            data={"principal": "p-chen", "level": 1},
            source="/services/intake",
            time=now,
            actor="p-chen",
        ),
        make_event(
            "incident.reporter.message.v1",
            subject=incident,
            data=ReporterMessage(
                direction="to_reporter", author="p-chen", text=key.seal("text", "Thank you.")
            ),
            source="/services/intake",
            time=now + timedelta(seconds=1),
            actor="p-chen",
        ),
    ]
    pool = intake.app.state.runtime.db
    async with pool.acquire() as conn, conn.transaction():
        await eventstore.append(
            conn, incident, 1, handler_events, topic_prefix=intake.settings.kafka_topic_prefix
        )
    assert (await message(intake, body["receipt"], body["secret"], "Any news?")).status_code == 202
    seen = (await view(intake, body["receipt"], body["secret"])).json()
    assert seen["status"] == "acknowledged" and seen["acknowledged"] is True
    assert datetime.fromisoformat(seen["acknowledged_at"]) == now
    assert [(m["direction"], m["text"]) for m in seen["messages"]] == [
        ("to_reporter", "Thank you."),
        ("from_reporter", "Any news?"),
    ]
    assert "p-chen" not in str(seen)


# -- wrong receipt or secret ------------------------------------------------------


async def test_a_wrong_secret_and_an_unknown_receipt_get_the_same_404_after_one_verification(
    intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = await report(intake)
    desk = service(intake)
    verified: list[str] = []
    real_verify = desk._verify

    async def spy(secret_hash: str, secret: str) -> bool:
        verified.append(secret_hash)
        return await real_verify(secret_hash, secret)

    monkeypatch.setattr(desk, "_verify", spy)
    [stored] = await intake.fetch(
        "SELECT secret_hash FROM receipts WHERE receipt = $1", body["receipt"]
    )
    cases = {
        "wrong secret": (body["receipt"], other_secret(body["secret"])),
        "malformed secret": (body["receipt"], "not-a-secret"),
        "unknown receipt": (unknown_receipt(), body["secret"]),
        "malformed receipt": ("hello", body["secret"]),
        "another report's secret": (body["receipt"], (await report(intake))["secret"]),
    }
    answers = {}
    for name, (receipt, secret) in cases.items():
        verified.clear()
        answers[name] = await view(intake, receipt, secret)
        assert len(verified) == 1, name  # argon2 ran once, whatever was wrong
        # only a well-formed secret for an existing receipt is checked against its hash;
        # everything else against the dummy hash, which has the same parameters
        assert (verified[0] == stored["secret_hash"]) == (
            name in ("wrong secret", "another report's secret")
        )
        assert verified[0].split("$")[:4] == stored["secret_hash"].split("$")[:4]
    for name, answer in answers.items():
        assert answer.status_code == 404, name
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json() == NOT_FOUND, name
    assert len({a.content for a in answers.values()}) == 1


async def test_a_wrong_secret_cannot_post_a_message(intake: Intake) -> None:
    body = await report(intake)
    before = await intake.counts()
    for receipt, secret in (
        (body["receipt"], other_secret(body["secret"])),
        (unknown_receipt(), body["secret"]),
    ):
        answer = await message(intake, receipt, secret)
        assert answer.status_code == 404 and answer.json() == NOT_FOUND
    assert await intake.counts() == before


@pytest.mark.parametrize(
    ("headers", "json", "path_extra"),
    [
        ({}, {"text": "hi"}, ""),
        ({"x-receipt-secret": "s" * 201}, {"text": "hi"}, ""),
        (None, {"text": ""}, ""),
        (None, {"text": "   "}, ""),
        (None, {"text": "x" * 10_001}, ""),
        (None, {"text": "hi", "author": "p-chen"}, ""),
        (None, {}, ""),
        (None, {"text": "hi"}, "X" * 101),
    ],
    ids=[
        "no-secret",
        "overlong-secret",
        "empty",
        "blank",
        "overlong",
        "unknown-field",
        "no-text",
        "overlong-receipt",
    ],
)
async def test_invalid_messages_are_refused_with_a_problem(
    intake: Intake, headers: dict[str, str] | None, json: dict[str, Any], path_extra: str
) -> None:
    body = await report(intake)
    before = await intake.counts()
    answer = await intake.client.post(
        f"/v1/receipts/{body['receipt']}{path_extra}/messages",
        json=json,
        headers={"x-receipt-secret": body["secret"]} if headers is None else headers,
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"]
    assert await intake.counts() == before


# -- messages ---------------------------------------------------------------------


async def test_a_message_from_the_reporter_is_an_event_on_the_reports_topic(
    intake: Intake,
) -> None:
    body = await report(intake)
    incident = body["incident_id"]
    answer = await message(intake, body["receipt"], body["secret"], "  The manager again.  ")
    assert answer.status_code == 202
    sent = answer.json()
    assert sent["incident_id"] == incident
    first, second = await intake.records("incident.reports", incident, 2)
    submitted, _ = parse_event(first.value)
    envelope, data = parse_event(second.value)
    assert second.key == incident.encode()
    assert envelope.type == "incident.reporter.message.v1" and envelope.id == sent["message_id"]
    assert isinstance(data, ReporterMessage)
    assert is_sealed(data.text) and "manager" not in second.value.decode()
    async with intake.app.state.runtime.db.acquire() as conn:
        key = await intake.app.state.keys.get(conn, incident)
    assert (data.direction, data.author, key.open("text", data.text)) == (
        "from_reporter",
        "reporter",
        "The manager again.",
    )
    assert envelope.actor == "reporter:anonymous"
    assert envelope.correlationid == submitted.id
    assert [r["version"] for r in await intake.events_of(incident)] == [1, 2]


async def test_concurrent_messages_all_land_in_order_after_retries(
    intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = await report(intake)
    conflicts = 0
    real_append = eventstore.append

    async def counting_append(*args: Any, **kwargs: Any) -> int:
        nonlocal conflicts
        try:
            return await real_append(*args, **kwargs)
        except eventstore.ConcurrencyError:
            conflicts += 1
            raise

    monkeypatch.setattr(eventstore, "append", counting_append)
    over_http = asyncio.gather(
        *(message(intake, body["receipt"], body["secret"], f"message {i}") for i in range(3))
    )
    direct = asyncio.gather(  # no argon2 in front of these: they race for the same version
        *(
            service(intake).message_from_reporter(body["incident_id"], f"direct {i}")
            for i in range(6)
        )
    )
    answers, _ = await asyncio.gather(over_http, direct)
    assert [a.status_code for a in answers] == [202] * 3
    assert conflicts > 0  # the optimistic check did refuse some, and they were retried
    rows = await intake.events_of(body["incident_id"])
    assert [r["version"] for r in rows] == list(range(1, 11))
    async with intake.app.state.runtime.db.acquire() as conn:
        key = await intake.app.state.keys.get(conn, body["incident_id"])
    texts = {
        key.open("text", parse_event(bytes(r["body"]))[1].text)  # type: ignore[attr-defined]
        for r in rows[1:]
    }
    assert texts == {f"message {i}" for i in range(3)} | {f"direct {i}" for i in range(6)}
    records = await intake.records("incident.reports", body["incident_id"], 10)
    assert [parse_event(r.value)[0].id for r in records] == [
        parse_event(bytes(r["body"]))[0].id for r in rows
    ]


# -- limits on attempts -----------------------------------------------------------


async def test_repeated_failures_lock_a_receipt_for_everyone_with_retry_after(
    intake: Intake,
) -> None:
    body, other = await report(intake), await report(intake)
    desk = service(intake)
    for _ in range(desk.receipt_attempts):
        assert (
            await view(intake, body["receipt"], other_secret(body["secret"]))
        ).status_code == 404
    locked = await view(intake, body["receipt"], body["secret"])  # even the right secret
    assert locked.status_code == 429
    assert locked.headers["content-type"] == "application/problem+json"
    assert 1 <= int(locked.headers["retry-after"]) <= 15 * 60
    assert (await message(intake, body["receipt"], body["secret"])).status_code == 429
    # the count is in PostgreSQL, under the receipt's digest: another instance of
    # intake (no shared memory) refuses too
    [row] = await intake.fetch(
        "SELECT * FROM receipt_attempts WHERE receipt_digest = $1", sha256_hex(body["receipt"])
    )
    assert row["attempts"] > desk.receipt_attempts
    other_instance = IntakeService(intake.app.state.runtime, desk.policy, intake.app.state.keys)
    with pytest.raises(TooManyAttempts):
        await other_instance.open_receipt(body["receipt"], body["secret"])
    # other receipts are not affected
    assert (await view(intake, other["receipt"], other["secret"])).status_code == 200


async def test_unknown_receipts_are_limited_exactly_like_real_ones(intake: Intake) -> None:
    receipt = unknown_receipt()
    limit = service(intake).receipt_attempts
    attempts = [await view(intake, receipt, "0" * 30) for _ in range(limit + 1)]
    assert [a.status_code for a in attempts] == [404] * limit + [429]


async def test_a_success_clears_the_count(intake: Intake) -> None:
    body = await report(intake)
    limit = service(intake).receipt_attempts
    for _ in range(limit - 1):
        assert (
            await view(intake, body["receipt"], other_secret(body["secret"]))
        ).status_code == 404
    assert (await view(intake, body["receipt"], body["secret"])).status_code == 200
    for _ in range(limit - 1):
        assert (
            await view(intake, body["receipt"], other_secret(body["secret"]))
        ).status_code == 404
    assert (await view(intake, body["receipt"], body["secret"])).status_code == 200


async def test_too_many_failures_in_one_process_pause_every_receipt(
    intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = await report(intake)
    monkeypatch.setattr(service(intake), "failures", FailureBudget(limit=3, window=60))
    for _ in range(3):
        assert (await view(intake, unknown_receipt(), "0" * 30)).status_code == 404
    paused = await view(intake, body["receipt"], body["secret"])
    assert paused.status_code == 429
    assert 1 <= int(paused.headers["retry-after"]) <= 60


async def test_an_overlarge_message_body_is_refused_before_anything_else(intake: Intake) -> None:
    body = await report(intake)
    before = await intake.counts()
    answer = await intake.client.post(
        f"/v1/receipts/{body['receipt']}/messages",
        content=b'{"text": "' + b"x" * (intake.settings.max_body_bytes + 1) + b'"}',
        headers={"x-receipt-secret": body["secret"], "content-type": "application/json"},
    )
    assert answer.status_code == 413
    assert answer.headers["content-type"] == "application/problem+json"
    assert await intake.counts() == before
