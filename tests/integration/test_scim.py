"""SCIM provisioning on a real intake (database and broker): the routes an HR system
uses, the events they record, and an outside conformance tester (scim2-tester)."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from scim2_client.client import BaseSyncSCIMClient
from scim2_models import ScimFilter

from services.domain.directory import Person
from services.domain.directory_sync import ENTERPRISE_SCHEMA, USER_SCHEMA, ImportInvalid
from services.domain.envelope import Envelope
from services.infra.db import create_pool
from services.infra.settings import IntakeSettings
from services.intake.app import create_app
from services.intake.directory_import import import_people
from services.intake.scim_filter import SqlFilter, user_filter_sql
from tests.helpers import serving
from tests.integration.test_directory_api import stored
from tooling.bench.orgchart import generate

pytestmark = pytest.mark.integration
HRIS = {"authorization": "Bearer dev-hris-token"}
SCIM_JSON = {**HRIS, "content-type": "application/scim+json"}
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


def _settings(kafka_bootstrap: str, database_url: str) -> IntakeSettings:
    return IntakeSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        kafka_topic_prefix=f"t{secrets.token_hex(4)}.",
        environment="test",
        outbox_poll_interval=0.1,
        broker_check_interval=0.3,
        kafka_session_timeout_ms=3000,
    )


@pytest.fixture(scope="module")
async def intake(
    kafka_bootstrap: str, make_database: Callable[[str], str]
) -> AsyncIterator[tuple[httpx.AsyncClient, IntakeSettings]]:
    settings = _settings(kafka_bootstrap, make_database("scim"))
    async with serving(create_app(settings), "http://intake") as client:
        yield client, settings


def _user(user_name: str, manager: str | None = "p-wang", **extra: Any) -> dict[str, Any]:
    enterprise: dict[str, Any] = {"department": "city-retail"}
    if manager:
        enterprise["manager"] = {"value": manager}
    return {
        "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
        "userName": user_name,
        "displayName": f"Person {user_name}",
        "emails": [{"value": f"{user_name}@example.com", "primary": True}],
        ENTERPRISE_SCHEMA: enterprise,
        **extra,
    }


async def test_users_patch_filter_etag_bulk(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    # discovery needs no credential; the rest does, and only a SCIM system's
    config = await client.get("/scim/v2/ServiceProviderConfig")
    assert config.status_code == 200 and config.json()["bulk"]["supported"] is True
    refused = await client.get("/scim/v2/Users")
    assert refused.status_code == 401 and ERROR_SCHEMA in refused.json()["schemas"]
    person = await client.get("/scim/v2/Users", headers={"authorization": "Bearer dev-admin-token"})
    assert person.status_code == 403 and person.json()["status"] == "403"

    # create: the person id is the userName; one directory event, the system as actor
    created = await client.post(
        "/scim/v2/Users", headers=SCIM_JSON, json=_user("p-scim-1", externalId="E-1")
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"] == "p-scim-1" and body["externalId"] == "E-1"
    assert body[ENTERPRISE_SCHEMA]["manager"]["value"] == "p-wang"
    etag = created.headers["etag"]
    assert etag == 'W/"1"'

    # PATCH the manager (the enterprise extension's path)
    patch = {
        "schemas": [PATCH_SCHEMA],
        "Operations": [
            {"op": "replace", "path": f"{ENTERPRISE_SCHEMA}:manager.value", "value": "p-liu"}
        ],
    }
    patched = await client.patch(
        "/scim/v2/Users/p-scim-1", headers={**SCIM_JSON, "if-match": etag}, json=patch
    )
    assert patched.status_code == 204, patched.text  # RFC 7644 §3.5.2: no body asked for
    now = await client.get("/scim/v2/Users/p-scim-1", headers=HRIS)
    assert now.json()[ENTERPRISE_SCHEMA]["manager"]["value"] == "p-liu"
    assert now.headers["etag"] == 'W/"2"'
    events = await stored(settings, "p-scim-1")
    assert [e.type for e in events] == ["directory.person.upserted.v1"] * 2
    assert [e.data["manager_id"] for e in events] == ["p-wang", "p-liu"]
    assert {e.actor for e in events} == {"system:hris"}

    # the old ETag no longer matches: 412, nothing recorded
    stale = await client.patch(
        "/scim/v2/Users/p-scim-1", headers={**SCIM_JSON, "if-match": etag}, json=patch
    )
    assert stale.status_code == 412 and ERROR_SCHEMA in stale.json()["schemas"]
    assert len(await stored(settings, "p-scim-1")) == 2

    # a manager that would make a cycle, and an unknown one, are SCIM errors
    cycle = {
        "schemas": [PATCH_SCHEMA],
        "Operations": [
            {
                "op": "add",
                "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
                "value": {"value": "p-scim-1"},
            }
        ],
    }
    own = await client.patch("/scim/v2/Users/p-scim-1", headers=SCIM_JSON, json=cycle)
    assert own.status_code == 400 and own.json()["scimType"] == "invalidValue"

    # Bulk: the second user names the first by bulkId; failOnErrors stops after one error
    bulk = {
        "schemas": [BULK_SCHEMA],
        "failOnErrors": 1,
        "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "boss", "data": _user("p-scim-2")},
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "report",
                "data": _user("p-scim-3", manager="bulkId:boss"),
            },
            {"method": "POST", "path": "/Users", "bulkId": "dup", "data": _user("p-scim-2")},
            {"method": "POST", "path": "/Users", "bulkId": "never", "data": _user("p-scim-4")},
        ],
    }
    done = await client.post("/scim/v2/Bulk", headers=SCIM_JSON, json=bulk)
    assert done.status_code == 200, done.text
    statuses = [op["status"] for op in done.json()["Operations"]]
    assert statuses[:3] == ["201", "201", "409"] and len(statuses) == 3
    three = (await client.get("/scim/v2/Users/p-scim-3", headers=HRIS)).json()
    assert three[ENTERPRISE_SCHEMA]["manager"]["value"] == "p-scim-2"
    assert (await client.get("/scim/v2/Users/p-scim-4", headers=HRIS)).status_code == 404

    # filter and pagination
    found = await client.get(
        "/scim/v2/Users",
        headers=HRIS,
        params={
            "filter": 'userName sw "p-scim" and (emails co "scim-2" or '
            f'{ENTERPRISE_SCHEMA}:manager.value eq "p-scim-2")'
        },
    )
    assert found.status_code == 200, found.text
    assert [u["id"] for u in found.json()["Resources"]] == ["p-scim-2", "p-scim-3"]
    by_external = await client.get(
        "/scim/v2/Users", headers=HRIS, params={"filter": 'externalId eq "E-1"'}
    )
    assert [u["id"] for u in by_external.json()["Resources"]] == ["p-scim-1"]
    page = await client.get(
        "/scim/v2/Users",
        headers=HRIS,
        params={
            "filter": f'{ENTERPRISE_SCHEMA}:department eq "CITY-RETAIL"',
            "startIndex": "2",
            "count": "2",
        },
    )
    listed = page.json()
    assert listed["totalResults"] >= 4 and listed["startIndex"] == 2
    assert listed["itemsPerPage"] == 2 and len(listed["Resources"]) == 2

    # bad input answers SCIM errors, never a 500
    bad_filter = await client.get("/scim/v2/Users", headers=HRIS, params={"filter": "nick eq"})
    assert bad_filter.status_code == 400 and bad_filter.json()["scimType"] == "invalidFilter"
    not_json = await client.post("/scim/v2/Users", headers=SCIM_JSON, content=b"{nope")
    assert not_json.status_code == 400 and ERROR_SCHEMA in not_json.json()["schemas"]
    gone = await client.delete("/scim/v2/Users/p-scim-1", headers=HRIS)
    assert gone.status_code == 405


async def test_groups_are_roles(intake: tuple[httpx.AsyncClient, IntakeSettings]) -> None:
    client, settings = intake
    add = {
        "schemas": [PATCH_SCHEMA],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": "p-li"}]}],
    }
    made = await client.post(
        "/scim/v2/Groups",
        headers=SCIM_JSON,
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "mentor"},
    )
    assert made.status_code == 201, made.text
    joined = await client.patch("/scim/v2/Groups/mentor", headers=SCIM_JSON, json=add)
    assert joined.status_code == 204, joined.text
    group = (await client.get("/scim/v2/Groups/mentor", headers=HRIS)).json()
    assert [m["value"] for m in group["members"]] == ["p-li"]
    assert "mentor" in (await stored(settings, "p-li"))[-1].data["roles"]
    # privileged roles are not granted over SCIM
    privileged = await client.patch("/scim/v2/Groups/auditor", headers=SCIM_JSON, json=add)
    assert privileged.status_code == 403


class _HttpxScimClient(BaseSyncSCIMClient):
    """scim2-client over the project's httpx (its own engine wants the httpx2 fork)."""

    def __init__(self, client: httpx.Client) -> None:
        super().__init__()
        self.client = client

    def _stays_under_base_url(self, endpoint: str) -> bool:
        return not endpoint.startswith(("http://", "https://"))

    def _parse_json(self, response: Any) -> Any:
        return response.json()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, url, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_conformance_scim2_tester(
    kafka_bootstrap: str, make_database: Callable[[str], str]
) -> None:
    """scim2-tester's discovery and CRUD checks pass, but for two refusals by design
    (docs/directory-sync.md): people are never deleted, and userName is the person id,
    which never changes."""
    from scim2_tester import Status, check_server

    port = _free_port()
    app = create_app(_settings(kafka_bootstrap, make_database("scim_conformance")))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)

        def check() -> list[Any]:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}/scim/v2", headers=HRIS, timeout=30
            ) as http:
                scim = _HttpxScimClient(http)
                return check_server(scim, resource_types=["User"])

        results = await asyncio.to_thread(check)
    finally:
        server.should_exit = True
        await task
    failed = [
        (r.title, r.reason)
        for r in results
        if r.status == Status.ERROR
        and "delet" not in (r.title + (r.reason or "")).lower()
        and "userName is the person id" not in (r.reason or "")
    ]
    assert results and not failed, "\n".join(f"{t}: {r}"[:300] for t, r in failed)


async def test_import_of_thousands_one_event_per_chunk_in_order(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    """The set-based import (the seed's path and `incidents directory import`): one
    `directory.people.imported.v1` per 500 people added or changed, in order."""
    client, settings = intake
    people = generate(3_013)  # the seed's 13 (already there: unchanged) and 3,000 more
    pool = await create_pool(settings.database_url, schema="intake", max_size=2)
    seen: list[int] = []
    try:
        result = await import_people(
            pool, people, source="/services/intake", actor="system:hris", progress=seen.append
        )
        # (a seed person an earlier test of this module changed is changed back)
        assert (result.added, result.changed + result.unchanged) == (3_000, 13)
        assert sum(seen) == len(people) and len(seen) == 2  # chunks of 2,000
        moved = [p.model_copy(update={"unit": "hq"}) for p in people[-5:]]
        again = await import_people(pool, moved, source="/services/intake", actor="system:hris")
        assert (again.added, again.changed, again.unchanged, again.events) == (0, 5, 0, 1)
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT stream_id, version, body FROM events"
                " WHERE stream_id LIKE 'directory-import:%' ORDER BY position"
            )
            found = await conn.fetchval(
                "SELECT count(*) FROM person_name_words WHERE person_id = $1", people[-1].id
            )
            own = await conn.fetchval(
                "SELECT count(*) FROM events WHERE stream_id = ANY($1::text[])",
                [f"directory:{p.id}" for p in people[13:]],
            )
        with pytest.raises(ImportInvalid, match="not in the directory"):
            orphan = Person(id="p-orphan", manager="p-nobody")
            await import_people(pool, [orphan], source="/s", actor="system:x")
    finally:
        await pool.close()
    rows = rows[-(result.events + 1) :]  # (the seed file's import at intake's start before)
    events = [Envelope.model_validate_json(bytes(r["body"])) for r in rows]
    carried = [[p["person_id"] for p in e.data["people"]] for e in events]
    first_import = carried[: result.events]
    assert own == 0  # nothing on the people's own streams
    assert len({r["stream_id"] for r in rows}) == 2  # one stream per import
    assert max(len(c) for c in carried) == 500  # at most 500 a chunk event, none empty
    assert sum(len(c) for c in first_import) == result.added + result.changed
    seed = {p.id for p in people[:13]}  # (one changed back is carried too)
    assert [i for c in first_import for i in c if i not in seed] == [p.id for p in people[13:]]
    assert carried[-1] == [p.id for p in moved]
    assert events[-1].data["people"][0]["unit"] == "hq"
    streams = [r["stream_id"] for r in rows]
    assert len(set(streams[: result.events])) == 1 and streams[-1] != streams[0]
    assert [r["version"] for r in rows[: result.events]] == list(range(1, result.events + 1))
    first = events[0]
    assert first.actor == "system:hris" and first.type == "directory.people.imported.v1"
    assert first.subject == streams[0]
    # one trace per import, not sampled (flags 00): nobody records a span for it
    last = events[result.events - 1]
    assert first.traceparent is not None and first.traceparent.endswith("-00")
    assert last.traceparent is not None and last.traceparent[:35] == first.traceparent[:35]
    assert '"signature"' in bytes(rows[0]["body"]).decode()
    assert found > 0
    # a person's version counts the import events that changed them (the SCIM ETag)
    user = await client.get(f"/scim/v2/Users/{moved[0].id}", headers=HRIS)
    assert user.status_code == 200 and user.headers["etag"] == 'W/"2"'
    assert user.json()["meta"]["created"] <= user.json()["meta"]["lastModified"]


async def test_created_of_an_imported_person_stays_after_a_scim_change(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    """RFC 7643 §3.1: `meta.created` never changes. A person first imported has no event
    of their own stream (their created is people.created_at); a later SCIM PATCH writes
    the first one, and created must not move to its time."""
    client, settings = intake
    pool = await create_pool(settings.database_url, schema="intake", max_size=1)
    try:
        person = Person(id="p-created-1", name="Created One")
        await import_people(pool, [person], source="/services/intake", actor="system:hris")
    finally:
        await pool.close()
    before = await client.get("/scim/v2/Users/p-created-1", headers=HRIS)
    assert before.status_code == 200, before.text
    patch = {
        "schemas": [PATCH_SCHEMA],
        "Operations": [{"op": "replace", "path": "displayName", "value": "Created Again"}],
    }
    patched = await client.patch(
        "/scim/v2/Users/p-created-1",
        headers={**SCIM_JSON, "if-match": before.headers["etag"]},
        json=patch,
    )
    assert patched.status_code == 204, patched.text
    after = await client.get("/scim/v2/Users/p-created-1", headers=HRIS)
    assert after.json()["displayName"] == "Created Again"
    assert after.headers["etag"] != before.headers["etag"]  # the change was recorded
    assert len(await stored(settings, "p-created-1")) == 1  # an event of their own stream
    assert after.json()["meta"]["created"] == before.json()["meta"]["created"]


async def test_user_name_is_case_insensitive_and_filters_use_indexes(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    """RFC 7643 §4.1.1: userName is caseExact false, in filters and in uniqueness; the
    filters an HR system looks people up by are served by an index (EXPLAIN, with
    sequential scans disabled so the few rows of a test still show which index can)."""
    client, settings = intake
    made = await client.post("/scim/v2/Users", headers=SCIM_JSON, json=_user("p-case-1"))
    assert made.status_code == 201, made.text
    again = await client.post("/scim/v2/Users", headers=SCIM_JSON, json=_user("P-Case-1"))
    assert again.status_code == 409 and again.json()["scimType"] == "uniqueness"
    found = await client.get(
        "/scim/v2/Users", headers=HRIS, params={"filter": 'userName eq "P-CASE-1"'}
    )
    assert [u["id"] for u in found.json()["Resources"]] == ["p-case-1"]
    # a PUT naming the same userName in other letters keeps the person's id
    put = await client.put(
        "/scim/v2/Users/p-case-1", headers=SCIM_JSON, json=_user("P-CASE-1", displayName="Kay")
    )
    assert put.status_code == 200, put.text
    assert put.json()["userName"] == "p-case-1" and put.json()["displayName"] == "Kay"
    # the id itself is caseExact
    assert (await client.get("/scim/v2/Users/P-CASE-1", headers=HRIS)).status_code == 404

    lookups = {
        'userName eq "P-CASE-1"': "people_lower_id",
        'userName sw "P-CASE"': "people_lower_id",
        'displayName eq "kay"': "people_lower_name",
        'emails eq "P-Case-1@Example.com"': "people_lower_email",
        'emails[value sw "p-case"]': "people_lower_email",
        f'{ENTERPRISE_SCHEMA}:department eq "CITY-RETAIL"': "people_lower_unit",
        f'{ENTERPRISE_SCHEMA}:manager.value eq "p-wang"': "people_manager",
    }
    pool = await create_pool(settings.database_url, schema="intake", max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            for text, index in lookups.items():
                params = SqlFilter()
                where = user_filter_sql(ScimFilter(text).ast, params)
                plan = await conn.fetchval(
                    "EXPLAIN (FORMAT JSON) SELECT p.person_id FROM people p"
                    f" LEFT JOIN scim_users s USING (person_id) WHERE {where}",
                    *params.params,
                )
                assert f'"Index Name": "{index}"' in plan, (text, plan)
    finally:
        await pool.close()
