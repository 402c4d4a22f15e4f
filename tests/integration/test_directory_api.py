"""Directory administration on a real database and broker: one event per real change."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from services.domain.envelope import Envelope
from services.domain.events import PeopleImported, parse_envelope
from services.infra.settings import IntakeSettings
from services.intake.app import create_app
from tests.helpers import serving

pytestmark = pytest.mark.integration
ADMIN = {"authorization": "Bearer dev-admin-token"}
NEWCOMER = {
    "name": "Nia Newcomer",
    "alternative_names": ["\u5c3c\u5a05"],
    "email": "nia@example.com",
    "unit": "city-retail",
    "manager_id": "p-wang",
    "roles": ["employee"],
}


@pytest.fixture(scope="module")
async def intake(
    kafka_bootstrap: str, make_database: Callable[[str], str]
) -> AsyncIterator[tuple[httpx.AsyncClient, IntakeSettings]]:
    settings = IntakeSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=make_database("directory_api"),
        kafka_topic_prefix=f"t{secrets.token_hex(4)}.",
        environment="test",
        outbox_poll_interval=0.1,
        broker_check_interval=0.3,
        kafka_session_timeout_ms=3000,
    )
    async with serving(create_app(settings), "http://intake") as client:
        yield client, settings


async def stored(settings: IntakeSettings, person: str) -> list[Envelope]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT body FROM intake.events WHERE stream_id = $1 ORDER BY version",
            f"directory:{person}",
        )
    finally:
        await conn.close()
    return [Envelope.model_validate_json(bytes(r["body"])) for r in rows]


async def published(settings: IntakeSettings, person: str, want: int) -> list[Envelope]:
    """The directory.changes records about `person` (theirs, or an import's chunk that
    carries them), once `want` arrived (15 s at most)."""
    consumer = AIOKafkaConsumer(
        settings.topic("directory.changes"),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    got: list[Envelope] = []
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while len(got) < want and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got += [e for r in records if _about(e := parse_envelope(r.value), person)]
        # a little longer, to see that no extra record follows
        for records in (await consumer.getmany(timeout_ms=300)).values():
            got += [e for r in records if _about(e := parse_envelope(r.value), person)]
    finally:
        await consumer.stop()
    return got


def _about(event: Envelope, person: str) -> bool:
    people = event.data.get("people") if event.type == PeopleImported.TYPE else None
    return event.subject == person or any(p["person_id"] == person for p in people or ())


async def test_an_admin_creates_then_changes_a_person_with_one_event_per_change(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    url = "/v1/directory/people/p-nia"
    created = await client.put(url, json=NEWCOMER, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json() == {"person_id": "p-nia", **NEWCOMER}
    same = await client.put(url, json=NEWCOMER, headers=ADMIN)
    assert same.status_code == 200 and same.json() == created.json()
    reordered = {**NEWCOMER, "roles": ["employee", "employee"]}  # same set of roles
    assert (await client.put(url, json=reordered, headers=ADMIN)).status_code == 200
    assert len(await stored(settings, "p-nia")) == 1  # nothing changed: no event
    changed = await client.put(
        url, json={**NEWCOMER, "roles": ["hr_case_handler", "employee"]}, headers=ADMIN
    )
    assert changed.status_code == 200
    assert changed.json()["roles"] == ["employee", "hr_case_handler"]
    events = await stored(settings, "p-nia")
    assert [e.type for e in events] == ["directory.person.upserted.v1"] * 2
    assert events[1].data["roles"] == ["employee", "hr_case_handler"]
    assert events[1].actor == "p-admin"
    on_topic = await published(settings, "p-nia", 2)
    assert [e.id for e in on_topic] == [e.id for e in events]
    read = await client.get(url, headers=ADMIN)
    assert read.status_code == 200 and read.json() == changed.json()


async def test_a_privileged_role_takes_effect_once_a_second_admin_approves(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, _ = intake
    # p-liu is an employee; made admin, her token may now administer the directory
    liu = {"authorization": "Bearer dev-liu-token"}
    assert (await client.get("/v1/directory/people/p-liu", headers=liu)).status_code == 403
    current = (await client.get("/v1/directory/people/p-liu", headers=ADMIN)).json()
    body = {k: v for k, v in current.items() if k != "person_id"}
    answer = await client.put(
        "/v1/directory/people/p-liu", json={**body, "roles": ["admin", "employee"]}, headers=ADMIN
    )
    # admin is privileged: pending until a second admin approves (issue 19)
    assert answer.status_code == 202, answer.text
    assert (await client.get("/v1/directory/people/p-liu", headers=liu)).status_code == 403
    (grant,) = answer.json()["pending_grants"]
    pending = await client.get("/v1/directory/grants", headers=ADMIN)
    assert [g["grant_id"] for g in pending.json()["grants"]] == [grant["grant_id"]]
    second = {"authorization": "Bearer dev-admin2-token"}
    approval = f"/v1/directory/grants/{grant['grant_id']}/approval"
    assert (await client.post(approval, headers=second)).status_code == 200
    assert (await client.post(approval, headers=second)).status_code == 409
    assert (await client.get("/v1/directory/people/p-liu", headers=liu)).status_code == 200


@pytest.mark.parametrize(
    ("person", "body", "detail"),
    [
        ("p-nobody", {**NEWCOMER, "manager_id": "p-ghost"}, "not in the directory"),
        ("p-self", {**NEWCOMER, "manager_id": "p-self"}, "own manager"),
        # p-zhang is at the top; under p-liu (p-liu -> p-wang -> p-li -> p-zhang) is a cycle
        ("p-zhang", {**NEWCOMER, "manager_id": "p-liu"}, "cycle"),
        ("p-li", {**NEWCOMER, "manager_id": "p-wang"}, "cycle"),
        ("system:hris", NEWCOMER, "reserved"),
        ("p-x", {**NEWCOMER, "extra": 1}, "extra"),
        ("p-x", {**NEWCOMER, "name": "x" * 201}, "name"),
        ("p-x", {**NEWCOMER, "email": "not an email"}, "email"),
        ("p-x", {**NEWCOMER, "roles": ["Not A Role"]}, "roles"),
        ("p-x", {**NEWCOMER, "roles": ["r"] * 21}, "roles"),
        ("bad id!", NEWCOMER, "person_id"),
    ],
    ids=[
        "unknown-manager",
        "self-managed",
        "cycle-at-top",
        "cycle-below",
        "system-id",
        "unknown-field",
        "long-name",
        "bad-email",
        "bad-role",
        "too-many-roles",
        "bad-id",
    ],
)
async def test_invalid_changes_are_422_and_record_nothing(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
    person: str,
    body: dict[str, Any],
    detail: str,
) -> None:
    client, settings = intake
    before = await stored(settings, person)
    answer = await client.put(f"/v1/directory/people/{person}", json=body, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert detail in answer.text
    assert await stored(settings, person) == before


async def test_only_admins_may_read_or_change_the_directory(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    url = "/v1/directory/people/p-chen"
    for headers, status in [
        ({}, 401),
        ({"authorization": "Bearer not-a-token"}, 401),
        ({"authorization": "Bearer dev-chen-token"}, 403),
        ({"authorization": "Bearer dev-auditor-token"}, 403),
    ]:
        for method, body in [("PUT", {**NEWCOMER, "roles": ["admin"]}), ("GET", None)]:
            answer = await client.request(method, url, json=body, headers=headers)
            assert answer.status_code == status, (method, headers)
            assert answer.headers["content-type"] == "application/problem+json"
    # refused before the body is read: a bad body from a non-admin is still 403
    bad = await client.put(
        url, json={"nope": 1}, headers={"authorization": "Bearer dev-chen-token"}
    )
    assert bad.status_code == 403
    assert await stored(settings, "p-chen") == []  # none: the seed's event is the import's
    unknown = await client.get("/v1/directory/people/p-ghost", headers=ADMIN)
    assert unknown.status_code == 404


async def test_the_seed_is_in_the_directory_and_published(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    answer = await client.get("/v1/directory/people/p-chen", headers=ADMIN)
    assert answer.json()["roles"] == ["hr_case_handler"]
    [event] = await published(settings, "p-chen", 1)
    assert (event.type, event.actor) == (PeopleImported.TYPE, "system:directory-seed")
