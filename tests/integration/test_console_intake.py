"""The handlers' and reporters' console pages on a real database and broker.

The pages call the API's own functions, so what the API guarantees holds here too: the
view is recorded before the report is shown, an excluded principal gets the same 404 as
for an unknown incident, refusals are recorded, and every form needs its CSRF token.
Routing is driven as in `test_handlers`: triage's events on the broker.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.intake.app import create_app
from tests.helpers import serving
from tests.integration.test_handlers import (
    REPORT,
    Env,
    publish,
    routed_incident,
    stream,
    triaged,
    until_routed,
)
from tests.integration.test_reports import module_settings

pytestmark = pytest.mark.integration
SAME_ORIGIN = {"sec-fetch-site": "same-origin"}
NAVIGATE = {
    "sec-fetch-site": "same-origin",
    "sec-fetch-mode": "navigate",
    "sec-fetch-dest": "document",
    "sec-fetch-user": "?1",
}
"""What a browser sends when the person herself opens a page (a click, the address bar)."""


@pytest.fixture(scope="module")
async def env(kafka_bootstrap: str, make_database: Callable[[str], str]) -> AsyncIterator[Env]:
    settings = module_settings(kafka_bootstrap, make_database("console_intake"))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        app = create_app(settings)
        async with serving(app, "https://intake") as client:  # https: the cookies are Secure
            yield Env(client, settings, producer, app)
    finally:
        await producer.stop()


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


async def browser(env: Env, token: str | None = None) -> httpx.AsyncClient:
    """A client of its own (own cookies), signed in with `token` if given, whose GETs
    are the person's own navigation (NAVIGATE)."""
    client = httpx.AsyncClient(
        transport=env.client._transport, base_url="https://intake", headers=NAVIGATE
    )
    if token is not None:
        page = await client.get("/ui/login")
        answer = await client.post(
            "/ui/login",
            data={"csrf": csrf_of(page), "token": token, "next": "/ui/"},
            headers=SAME_ORIGIN,
        )
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/ui/"
        cookie = answer.headers["set-cookie"]
        assert "__Host-incidents-intake-session=" in cookie
        assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    return client


async def types_of(env: Env, incident: str) -> list[str]:
    return [e.type for e in await stream(env.settings, incident)]


async def test_a_page_without_a_login_sends_to_the_login_page(env: Env) -> None:
    client = await browser(env)
    answer = await client.get("/ui/incidents/00000000-0000-4000-8000-000000000000")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/ui/login?next=%2Fui%2Fincidents%2F")
    assert (await client.get("/ui/")).status_code == 200  # the start page is public


async def test_the_handler_page_shows_the_report_after_recording_the_view(env: Env) -> None:
    incident = await routed_incident(env)
    chen = await browser(env, "dev-chen-token")
    mine = await chen.get("/ui/")
    assert incident in mine.text
    assert "viewed" not in " ".join(await types_of(env, incident))  # the list shows no content
    page = await chen.get(f"/ui/incidents/{incident}")
    assert page.status_code == 200
    assert REPORT["summary"] in page.text and REPORT["description"] in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    views = [e for e in await stream(env.settings, incident) if e.type == "incident.viewed.v1"]
    assert [v.data["principal"] for v in views] == ["p-chen"]
    assert views[0].data["report_digest"] in page.text


async def test_a_request_another_page_made_records_no_view_and_no_refusal(env: Env) -> None:
    incident = await routed_incident(env)
    chen, wang = await browser(env, "dev-chen-token"), await browser(env, "dev-wang-token")
    made_by_a_page = [
        {"sec-fetch-mode": "no-cors", "sec-fetch-dest": "image", "sec-fetch-user": "?0"},
        {"sec-fetch-mode": "cors", "sec-fetch-dest": "empty", "sec-fetch-user": "?0"},
        {"sec-fetch-mode": "navigate", "sec-fetch-dest": "iframe", "sec-fetch-user": "?0"},
        {"sec-fetch-user": "?0"},  # a navigation the person did not make (a script's)
    ]
    for headers in made_by_a_page:
        for client in (chen, wang):
            page = await client.get(f"/ui/incidents/{incident}", headers=headers)
            assert page.status_code == 200 and "Open the report" in page.text
            assert REPORT["summary"] not in page.text
    bare = httpx.AsyncClient(transport=env.client._transport, base_url="https://intake")
    bare.cookies = chen.cookies  # no fetch metadata at all
    assert "Open the report" in (await bare.get(f"/ui/incidents/{incident}")).text
    assert "incident.viewed.v1" not in await types_of(env, incident)
    assert "incident.access.denied.v1" not in await types_of(env, f"access-denied:{incident}")
    # the explicit open action (a POST form) records the view, then shows the report
    page = await chen.get(f"/ui/incidents/{incident}", headers=made_by_a_page[0])
    opened = await chen.post(
        f"/ui/incidents/{incident}/open", data={"csrf": csrf_of(page)}, headers=SAME_ORIGIN
    )
    assert opened.status_code == 200 and REPORT["summary"] in opened.text
    views = [e for e in await stream(env.settings, incident) if e.type == "incident.viewed.v1"]
    assert [v.data["principal"] for v in views] == ["p-chen"]


async def test_an_excluded_principal_gets_the_same_404_as_for_an_unknown_incident(
    env: Env,
) -> None:
    incident = await routed_incident(env)
    wang = await browser(env, "dev-wang-token")
    refused = await wang.get(f"/ui/incidents/{incident}")
    unknown = await wang.get(f"/ui/incidents/{uuid.uuid4()}")
    assert refused.status_code == unknown.status_code == 404
    assert REPORT["summary"] not in refused.text
    strip = re.compile(r'value="[^"]+"')
    assert strip.sub("", refused.text) == strip.sub("", unknown.text)
    # recorded on the incident's refusal stream (never its own: see services.intake.actions)
    assert "incident.access.denied.v1" in await types_of(env, f"access-denied:{incident}")
    ack = await wang.post(
        f"/ui/incidents/{incident}/acknowledge",
        data={"csrf": csrf_of(refused)},
        headers=SAME_ORIGIN,
    )
    assert ack.status_code == 404
    assert "incident.acknowledged.v1" not in await types_of(env, incident)


async def test_acknowledging_on_the_page_needs_the_csrf_token(env: Env) -> None:
    incident = await routed_incident(env)
    chen = await browser(env, "dev-chen-token")
    page = await chen.get(f"/ui/incidents/{incident}")
    forged = await chen.post(f"/ui/incidents/{incident}/acknowledge", data={"csrf": "forged"})
    assert forged.status_code == 403
    cross = await chen.post(
        f"/ui/incidents/{incident}/acknowledge",
        data={"csrf": csrf_of(page)},
        headers={"sec-fetch-site": "cross-site"},
    )
    assert cross.status_code == 403
    assert "incident.acknowledged.v1" not in await types_of(env, incident)
    done = await chen.post(
        f"/ui/incidents/{incident}/acknowledge", data={"csrf": csrf_of(page)}, headers=SAME_ORIGIN
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/ui/incidents/{incident}?done=acknowledged"
    after = await chen.get(done.headers["location"])
    assert "Your acknowledgement is recorded." in after.text
    assert '<strong id="acknowledged-by">p-chen</strong>' in after.text
    again = await chen.post(
        f"/ui/incidents/{incident}/acknowledge", data={"csrf": csrf_of(page)}, headers=SAME_ORIGIN
    )
    assert again.headers["location"].endswith("?done=already")
    assert (await types_of(env, incident)).count("incident.acknowledged.v1") == 1


async def test_a_signed_in_reporter_reports_under_her_own_name(env: Env) -> None:
    # issue 23: the console passed a Principal where the route expects a principal id,
    # and a named report from the console answered 500
    client = await browser(env, "dev-liu-token")
    form = await client.get("/ui/report")
    assert form.status_code == 200
    sent = await client.post(
        "/ui/report",
        data={
            "csrf": csrf_of(form),
            "key": str(uuid.uuid4()),
            "category": "harassment",
            "summary": "Remarks at the counter",
            "description": "It happened again on Monday.",
            "unit": "city-retail",
        },
        headers=SAME_ORIGIN,
    )
    assert sent.status_code == 200, sent.text
    assert 'id="receipt"' not in sent.text and 'id="secret"' not in sent.text
    incident = re.search(r'id="incident">([^<]+)<', sent.text)
    assert incident is not None, sent.text
    [submitted] = await stream(env.settings, incident.group(1))
    assert submitted.actor == "reporter:named"
    assert submitted.data["reporter"].startswith("pn:")  # a pseudonym, never her id
    refused = await client.post(
        "/ui/report",
        data={"csrf": csrf_of(form), "category": "gossip", "summary": "s", "description": "d"},
        headers=SAME_ORIGIN,
    )
    assert refused.status_code == 422 and "gossip" in refused.text


async def test_status_comments_and_messages_reach_the_reporter(env: Env) -> None:
    client = await browser(env)
    form = await client.get("/ui/report")
    report = {
        "csrf": csrf_of(form),
        "key": str(uuid.uuid4()),
        "category": "harassment",
        "summary": "Remarks at the counter",
        "description": "It happened again on Monday.",
        "accused": "p-wang",
        "unit": "city-retail",
    }
    sent = await client.post("/ui/report", data=report, headers=SAME_ORIGIN)
    assert sent.status_code == 200, sent.text
    twice = await client.post("/ui/report", data=report, headers=SAME_ORIGIN)
    assert "shown once" in twice.text  # the same form sent again: the same report, no secret
    assert 'id="secret"' not in twice.text
    receipt = re.search(r'id="receipt">([^<]+)<', sent.text)
    secret = re.search(r'id="secret">([^<]+)<', sent.text)
    assert receipt and secret
    wrong = await client.post(
        "/ui/receipt",
        data={"csrf": csrf_of(form), "receipt": receipt.group(1), "secret": "A" * 35},
        headers=SAME_ORIGIN,
    )
    assert wrong.status_code == 404
    opened = await client.post(
        "/ui/receipt",
        data={"csrf": csrf_of(form), "receipt": receipt.group(1), "secret": secret.group(1)},
        headers=SAME_ORIGIN,
    )
    assert opened.status_code == 200
    assert re.search(r'id="status">\s*submitted', opened.text)
    incident = await env.app.state.runtime.db.fetchval(
        "SELECT incident_id FROM receipts WHERE receipt = $1", receipt.group(1)
    )
    await publish(env, "incident.triaged.v1", incident, triaged({"p-wang": "accused"}))
    await publish(env, "incident.assigned.v1", incident, {"level": 1, "principals": ["p-chen"]})
    await until_routed(env, incident, {"p-chen": (True, None)})
    chen = await browser(env, "dev-chen-token")
    page = await chen.get(f"/ui/incidents/{incident}")
    token = csrf_of(page)
    for path, fields in (
        ("acknowledge", {}),
        ("status", {"status": "investigating"}),
        ("comments", {"text": "Called the store."}),
        ("messages", {"text": "We are looking into it."}),
    ):
        answer = await chen.post(
            f"/ui/incidents/{incident}/{path}", data={"csrf": token, **fields}, headers=SAME_ORIGIN
        )
        assert answer.status_code == 303, (path, answer.text)
    closing = await chen.post(
        f"/ui/incidents/{incident}/status",
        data={"csrf": token, "status": "closed"},
        headers=SAME_ORIGIN,
    )
    assert closing.status_code == 422  # an outcome is required to close
    assert "outcome" in closing.text
    shown = await chen.get(f"/ui/incidents/{incident}")
    assert "Called the store." in shown.text and "We are looking into it." in shown.text
    reply = await client.post(
        "/ui/receipt/messages",
        data={
            "csrf": csrf_of(form),
            "receipt": receipt.group(1),
            "secret": secret.group(1),
            "text": "Thank you.",
        },
        headers=SAME_ORIGIN,
    )
    assert reply.status_code == 200
    assert "We are looking into it." in reply.text and "Thank you." in reply.text
    assert "Called the store." not in reply.text  # internal comments never reach the reporter
    assert re.search(r'id="status">\s*investigating', reply.text)
    kinds = await types_of(env, incident)
    for kind in (
        "incident.acknowledged.v1",
        "incident.status.changed.v1",
        "incident.commented.v1",
    ):
        assert kind in kinds
    assert kinds.count("incident.reporter.message.v1") == 2
