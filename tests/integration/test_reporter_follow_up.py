"""Reporters' follow-up on a real database and broker (issue 22, docs/reporters.md).

A named reporter signs in, lists her report, reads the handler's message, writes back,
reads the outcome once closed (her view recorded first), and sees nobody else's report;
an anonymous reporter's receipt shows the outcome too; the handler sees the same status
words and her level's deadline. Routing is driven by publishing triage's events, as in
test_handlers (whose module fixture this reuses).
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.helpers import eventually
from tests.integration.test_console_intake import NAVIGATE, SAME_ORIGIN, csrf_of
from tests.integration.test_handlers import (
    REPORT,
    Env,
    auth,
    env,
    of_type,
    publish,
    triaged,
    until_routed,
)

pytestmark = pytest.mark.integration
__all__ = ["env"]  # the module fixture, shared


async def routed(env: Env, headers: dict[str, str]) -> dict[str, Any]:
    """A report (named with `headers`, else anonymous) triaged and asked of p-chen."""
    answer = await env.client.post("/v1/reports", json=REPORT, headers=headers)
    assert answer.status_code == 202, answer.text
    body: dict[str, Any] = answer.json()
    incident = body["incident_id"]
    await publish(env, "incident.triaged.v1", incident, triaged({"p-wang": "accused"}))
    await publish(env, "incident.assigned.v1", incident, {"level": 1, "principals": ["p-chen"]})
    await until_routed(env, incident, {"p-chen": (True, None)})
    return body


async def handle(env: Env, incident: str, *steps: tuple[str, dict[str, Any]]) -> None:
    for path, body in steps:
        answer = await env.client.post(
            f"/v1/incidents/{incident}/{path}", json=body, headers=auth("p-chen")
        )
        assert answer.status_code in (200, 202), answer.text


async def test_a_named_reporter_follows_up_her_report(env: Env) -> None:
    incident = (await routed(env, auth("p-liu")))["incident_id"]

    async def listed() -> Any:
        answer = await env.client.get("/v1/my/reports", headers=auth("p-liu"))
        mine = [r for r in answer.json()["reports"] if r["incident_id"] == incident]
        return mine and mine[0]["status"] == "triaged" and mine[0]

    row = await eventually(listed)
    assert row["status_label"] == "triaged, level 1 asked" and row["level"] == 1

    handler = (await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))).json()
    assert handler["status_label"] == row["status_label"]
    assert handler["acknowledgement_due_at"] is not None  # level 1's, from the decision

    await handle(env, incident, ("acknowledge", {}), ("messages", {"text": "We are on it."}))
    view = await env.client.get(f"/v1/my/reports/{incident}", headers=auth("p-liu"))
    assert view.status_code == 200, view.text
    seen = view.json()
    assert seen["status_label"] == "acknowledged at level 1" and seen["outcome"] is None
    assert [m["text"] for m in seen["messages"]] == ["We are on it."]
    assert seen["summary"] == REPORT["summary"]
    assert "p-chen" not in view.text and "p-wang" not in view.text  # nobody is named to her
    clocks = {c["clock"]: c for c in seen["clocks"]}
    assert clocks["reporter_acknowledgement"]["met_at"] is not None
    assert clocks["feedback"]["due_at"] is not None
    viewed = await of_type(env.settings, incident, "incident.viewed.v1")
    assert [(e.actor, e.data["principal"]) for e in viewed][-1] == ("reporter:named", "reporter")

    reply = await env.client.post(
        f"/v1/my/reports/{incident}/messages", json={"text": "Thank you."}, headers=auth("p-liu")
    )
    assert reply.status_code == 202, reply.text
    handler = (await env.client.get(f"/v1/incidents/{incident}", headers=auth("p-chen"))).json()
    assert [m["text"] for m in handler["messages"]][-1] == "Thank you."

    await handle(env, incident, ("status", {"status": "closed", "outcome": "Warning issued."}))
    seen = (await env.client.get(f"/v1/my/reports/{incident}", headers=auth("p-liu"))).json()
    assert (seen["status"], seen["status_label"]) == ("closed", "closed with outcome")
    assert seen["outcome"] == "Warning issued."
    late = await env.client.post(
        f"/v1/my/reports/{incident}/messages", json={"text": "One more"}, headers=auth("p-liu")
    )
    assert late.status_code == 409

    for other in ("p-ma", "p-chen"):  # another person, the handler herself: the same 404
        refused = await env.client.get(f"/v1/my/reports/{incident}", headers=auth(other))
        assert refused.status_code == 404 and "p-liu" not in refused.text
        mine = (await env.client.get("/v1/my/reports", headers=auth(other))).json()["reports"]
        assert incident not in {r["incident_id"] for r in mine}
    assert (await env.client.get("/v1/my/reports")).status_code == 401

    page = await console(env, "dev-liu-token")  # her console pages say the same
    mine = await page.get("/ui/my")
    assert incident in mine.text and "closed with outcome" in mine.text
    one = await page.get(f"/ui/my/reports/{incident}")
    assert one.status_code == 200 and "Warning issued." in one.text
    assert re.search(r'id="status">closed</strong> with outcome', one.text)
    assert (await (await console(env, "dev-ma-token")).get(one.url)).status_code == 404


async def console(env: Env, token: str) -> httpx.AsyncClient:
    """A browser signed in to the console with `token`, navigating by itself."""
    transport = env.client._transport
    client = httpx.AsyncClient(transport=transport, base_url="https://intake", headers=NAVIGATE)
    login = await client.get("/ui/login")
    signed = await client.post(
        "/ui/login",
        data={"csrf": csrf_of(login), "token": token, "next": "/ui/my"},
        headers=SAME_ORIGIN,
    )
    assert signed.status_code == 303, signed.text
    return client


async def test_the_receipt_shows_the_outcome(env: Env) -> None:
    body = await routed(env, {})
    incident = body["incident_id"]
    sent = await env.client.post(
        f"/v1/incidents/{incident}/attachments?audience=reporter",
        content=b"Minutes of the meeting.\n",
        headers={**auth("p-chen"), "x-filename": "minutes.txt"},
    )
    assert sent.status_code == 201, sent.text
    await handle(
        env,
        incident,
        ("acknowledge", {}),
        ("status", {"status": "closed", "outcome": "The manager was moved."}),
    )
    answer = await env.client.get(
        f"/v1/receipts/{body['receipt']}", headers={"x-receipt-secret": body["secret"]}
    )
    seen = answer.json()
    assert (seen["status"], seen["outcome"]) == ("closed", "The manager was moved.")
    assert seen["status_label"] == "closed with outcome" and seen["closed_at"] is not None
    assert [f["author"] for f in seen["attachments"]] == ["handlers"]  # never who
    assert "p-chen" not in answer.text
