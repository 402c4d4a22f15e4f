"""Bad input on intake's HTTP routes is a 4xx, never a 500 (docs/api.md, Errors).

A NUL character is valid JSON (`\\u0000`) and valid in a percent-encoded path, but
PostgreSQL's text and jsonb cannot hold it: wherever a value reached a statement
unchecked, the request failed with a 500 and a logged traceback. In a URL, every
service refuses it (and every other control character) before any route runs; in a
body, each route refuses it first, in the words of its own errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration import test_reports
from tests.integration.test_reports import REPORT, Intake

pytestmark = pytest.mark.integration
intake = test_reports.intake  # a running intake of this module's own
LIU = {"authorization": "Bearer dev-liu-token"}
ADMIN = {"authorization": "Bearer dev-admin-token"}
HRIS = {"authorization": "Bearer dev-hris-token"}
SCIM_JSON = {**HRIS, "content-type": "application/scim+json"}
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


@pytest.fixture
async def client(intake: Intake) -> AsyncIterator[httpx.AsyncClient]:
    """The intake, its unexpected errors answered as they would be (500), not raised."""
    transport = httpx.ASGITransport(app=intake.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as http:
        yield http


async def test_a_control_character_in_a_url_is_one_400_on_every_route(
    client: httpx.AsyncClient,
) -> None:
    """A NUL or another control character in a path or a query value is refused before
    any route runs (`services.infra.http.ControlCharacters`): 400 problem+json, the same
    bytes whether the id is her report, someone else's or none, whoever asks, and on
    routes that do not exist: it tells nothing of any report. (A NUL in her report's id
    answered the not-found of the route before; a NUL in a people search, 422.)"""
    mine = await client.post("/v1/reports", json=REPORT, headers=LIU)
    assert mine.status_code == 202, mine.text
    incident = mine.json()["incident_id"]
    assert (await client.get(f"/v1/my/reports/{incident}", headers=LIU)).status_code == 200
    answers = [
        await client.get("/v1/my/reports/%00", headers=LIU),
        await client.get(f"/v1/my/reports/{incident}%00", headers=LIU),
        await client.post("/v1/my/reports/a%00/messages", json={"text": "hi"}, headers=LIU),
        await client.get(f"/v1/incidents/{incident}%00", headers=ADMIN),
        await client.get(f"/v1/incidents/{incident}", params={"x": "\u001b"}, headers=ADMIN),
        await client.get("/v1/people/search", params={"q": "x\u0000y"}),
        await client.get("/v1/receipts/a%00b"),
        await client.post("/v1/reports?channel=%00", json=REPORT),
        await client.get(
            "/scim/v2/Users", params={"filter": 'userName eq "a\u0000"'}, headers=HRIS
        ),
        await client.get("/ui/my/reports/%00"),
        await client.get("/no-such-route%00"),
    ]
    for answer in answers:
        assert answer.status_code == 400, (answer.request.url, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    assert len({answer.content for answer in answers}) == 1  # byte for byte


async def test_the_admin_api_refuses_control_characters_in_unit_and_email(
    client: httpx.AsyncClient,
) -> None:
    for field, value in (("unit", "ops\u0000"), ("unit", "ops\u001b"), ("email", "a\u0000@b.c")):
        answer = await client.put(
            "/v1/directory/people/p-bad-input", json={field: value}, headers=ADMIN
        )
        assert answer.status_code == 422, (field, value, answer.text)
        assert answer.json()["errors"][0]["field"] == field
    fine = await client.put(
        "/v1/directory/people/p-bad-input", json={"unit": "ops", "email": "a@b.c"}, headers=ADMIN
    )
    assert fine.status_code == 201, fine.text


def _user(name: str, **more: Any) -> dict[str, Any]:
    return {"schemas": [USER], "userName": name, **more}


async def test_scim_answers_an_unstorable_value_as_invalid(client: httpx.AsyncClient) -> None:
    group = {"schemas": [GROUP], "displayName": "g", "members": [{"value": "a\u0000"}]}
    writes = (
        ("/scim/v2/Users", _user("p-nul-1", displayName="a\u0000b")),
        ("/scim/v2/Users", _user("p-nul-2", externalId="x\u0000")),
        ("/scim/v2/Groups", group),
    )
    for path, body in writes:
        answer = await client.post(path, json=body, headers=SCIM_JSON)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["scimType"] == "invalidValue"
    for path, params in (
        ("/scim/v2/Users/%00", {}),
        ("/scim/v2/Groups/%00", {}),
        ("/scim/v2/Users", {"filter": 'userName eq "a\\u0000"'}),
        ("/scim/v2/Users", {"filter": 'displayName co "\\u0000"'}),
    ):
        answer = await client.get(path, params=params, headers=HRIS)
        assert answer.status_code == 400, (path, params, answer.text)
    # in a Bulk request only that operation fails; the next one is stored
    bad, fine = _user("p-nul-3", displayName="\u0000"), _user("p-nul-4", displayName="Fine")
    bulk = await client.post(
        "/scim/v2/Bulk",
        headers=SCIM_JSON,
        json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
            "Operations": [
                {"method": "POST", "path": "/Users", "bulkId": "a", "data": bad},
                {"method": "POST", "path": "/Users", "bulkId": "b", "data": fine},
            ],
        },
    )
    assert bulk.status_code == 200, bulk.text
    statuses = [str(op["status"]) for op in bulk.json()["Operations"]]
    assert statuses == ["400", "201"], bulk.text
    assert (await client.get("/scim/v2/Users/p-nul-4", headers=HRIS)).status_code == 200
    assert (await client.get("/scim/v2/Users/p-nul-3", headers=HRIS)).status_code == 404


async def test_a_reassignment_naming_a_malformed_person_is_invalid(
    client: httpx.AsyncClient,
) -> None:
    incident = (await client.post("/v1/reports", json=REPORT)).json()["incident_id"]
    sun = {"authorization": "Bearer dev-sun-token"}  # chief_ethics_officer: may reassign
    url = f"/v1/incidents/{incident}/reassign"
    for body, field in (
        ({"to": ["a\u0000"], "reason": "r"}, "to.0"),
        ({"to": ["p-chen"], "remove": ["a\u0000"], "reason": "r"}, "remove.0"),
        ({"to": ["p-chen", "two words"], "reason": "r"}, "to.1"),
    ):
        answer = await client.post(url, json=body, headers=sun)
        assert answer.status_code == 422, (body, answer.text)
        assert [e["field"] for e in answer.json()["errors"]] == [field]
    unknown = await client.post(url, json={"to": ["p-nobody"], "reason": "r"}, headers=sun)
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "to.0"
