"""People are chosen, not typed: names resolved at intake, the people search, and the
console's report form (search step without JavaScript; the named report), on a real
database and broker. One intake app serves the module."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.domain.events import parse_event
from services.domain.ratelimit import TokenBuckets
from services.domain.reports import MATCH_TEXT_FIELD
from tests.helpers import SEED_CASE
from tests.integration import test_tracing
from tests.integration.test_console_intake import SAME_ORIGIN, csrf_of
from tests.integration.test_reports import Intake, module_settings, running_intake

pytestmark = pytest.mark.integration
spans = test_tracing.spans  # the fixture collecting spans in memory
LIU = {"authorization": "Bearer dev-liu-token"}
ADMIN = {"authorization": "Bearer dev-admin-token"}


@pytest.fixture(scope="module")
async def intake(
    kafka_bootstrap: str, make_database: Callable[[str], str]
) -> AsyncIterator[Intake]:
    settings = module_settings(kafka_bootstrap, make_database("people"))
    async with running_intake(settings) as running:
        yield running


async def submitted(intake: Intake, incident_id: str) -> Any:
    """The submitted event's data as stored, and an opener for its sealed values."""
    [row] = await intake.events_of(incident_id)
    _, data = parse_event(bytes(row["body"]))
    async with intake.app.state.runtime.db.acquire() as conn:
        key = await intake.app.state.keys.get(conn, incident_id)
    return data, key


async def test_the_seed_case_in_three_spellings_accuses_the_same_person(intake: Intake) -> None:
    accused = []
    for spelling in ("p-wang", "wang  JUN", "\u738b\u519b"):  # the id, a spelling, 王军
        answer = await intake.client.post("/v1/reports", json={**SEED_CASE, "accused": [spelling]})
        assert answer.status_code == 202, answer.text
        data, key = await submitted(intake, answer.json()["incident_id"])
        accused.append(data.accused)
        matches = [
            (m.how, m.person_id, key.open(MATCH_TEXT_FIELD, m.text)) for m in data.people_matches
        ]
        expected = {"p-wang": [], "wang  JUN": [("normalised", "p-wang", "wang  JUN")]}
        assert matches == expected.get(spelling, [("exact", "p-wang", spelling)])
    assert accused == [["p-wang"]] * 3

    unknown = await intake.client.post(
        "/v1/reports", json={**SEED_CASE, "accused": ["the client's driver"]}
    )
    data, key = await submitted(intake, unknown.json()["incident_id"])
    [match] = data.people_matches
    assert (match.how, match.person_id, match.candidates) == ("none", None, [])
    assert key.open("accused", data.accused[0]) == "the client's driver"  # sealed, kept


@pytest.mark.parametrize(
    ("headers", "changes", "field"),
    [
        (LIU, {"accused": ["Liu Yang"]}, "accused.0"),  # the reporter, by his name
        ({}, {"named": [{"id": "p-nobody"}]}, "named.0"),
        ({}, {"unit": "city\x00retail"}, "unit"),
        ({}, {"accused": ["Wang\x07Jun"]}, "accused.0"),
    ],
)
async def test_bad_people_and_control_characters_are_refused_and_nothing_is_written(
    intake: Intake, headers: dict[str, str], changes: dict[str, Any], field: str
) -> None:
    before = await intake.counts()
    answer = await intake.client.post("/v1/reports", json={**SEED_CASE, **changes}, headers=headers)
    assert answer.status_code == 422, answer.text
    assert any(e["field"].startswith(field) for e in answer.json()["errors"])
    assert await intake.counts() == before


async def test_the_people_search_shows_only_id_name_and_unit(
    intake: Intake, caplog: pytest.LogCaptureFixture, spans: InMemorySpanExporter
) -> None:
    put = await intake.client.put(
        "/v1/directory/people/p-zoe",
        json={"name": "Zoe Quixley", "alternative_names": ["Zoë Qüixley-Smith"], "unit": "ops"},
        headers=ADMIN,
    )
    assert put.status_code == 201, put.text
    caplog.set_level(logging.DEBUG)
    before = await intake.counts()
    spans.clear()

    async def search(q: str) -> httpx.Response:
        return await intake.client.get("/v1/people/search", params={"q": q})

    found = await search("quix")
    assert found.status_code == 200 and found.headers["cache-control"] == "no-store"
    assert found.json() == {"people": [{"id": "p-zoe", "name": "Zoe Quixley", "unit": "ops"}]}
    assert [p["id"] for p in (await search("SMITH zo")).json()["people"]] == ["p-zoe"]
    assert [p["id"] for p in (await search("\u738b\u519b")).json()["people"]] == ["p-wang"]
    for literal in ("qu%", "q_ix", "' OR 1=1 --", "zo*"):
        assert (await search(literal)).json()["people"] in ([], found.json()["people"])
    assert (await search("' OR 1=1 --")).json()["people"] == []
    for short in ("q", "%%", "\u738b"):
        assert (await search(short)).status_code == 422
    assert (await search("x\x00y")).status_code == 400  # no URL holds a control character
    # the service logs nothing of it (the test's HTTP client logs its URLs, and the
    # broker client the directory change above), and records no event
    served = [m.getMessage() for m in caplog.records if not m.name.startswith(("httpx", "aio"))]
    assert not [m for m in served if "quix" in m.lower() or "p-zoe" in m]
    traced = [f"{s.name} {dict(s.attributes or {})}" for s in spans.get_finished_spans()]
    assert not [t for t in traced if "quix" in t.lower() or "p-zoe" in t or "search" in t]
    assert await intake.counts() == before


async def test_the_language_switch_leaves_no_trace(
    intake: Intake, spans: InMemorySpanExporter
) -> None:
    """An anonymous reporter switching language on her receipt page: the switch's span
    would keep when she did and `next=/ui/receipt`."""
    spans.clear()
    answer = await intake.client.get("/ui/lang/fr", params={"next": "/ui/receipt"})
    assert answer.status_code in (302, 303, 307), answer.text
    traced = [f"{s.name} {dict(s.attributes or {})}" for s in spans.get_finished_spans()]
    assert not [t for t in traced if "lang" in t or "receipt" in t], traced


async def test_the_people_search_is_rate_limited_per_client(intake: Intake) -> None:
    service = intake.app.state.intake
    saved = service.searches
    service.searches = TokenBuckets(capacity=2, rate=0.01)
    try:
        answers = [
            await intake.client.get("/v1/people/search", params={"q": "chen"}) for _ in range(3)
        ]
        signed_in = await intake.client.get("/v1/people/search", params={"q": "chen"}, headers=LIU)
    finally:
        service.searches = saved
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert int(answers[2].headers["retry-after"]) >= 1
    assert signed_in.status_code == 200  # a principal has a bucket of its own


async def test_a_signed_in_reporter_picks_the_accused_without_javascript(intake: Intake) -> None:
    transport = intake.client._transport
    async with httpx.AsyncClient(transport=transport, base_url="https://intake") as browser:
        login = await browser.get("/ui/login")
        signed = await browser.post(
            "/ui/login",
            data={"csrf": csrf_of(login), "token": "dev-liu-token", "next": "/ui/report"},
            headers=SAME_ORIGIN,
        )
        assert signed.status_code == 303
        form = await browser.get("/ui/report")
        draft = {
            "csrf": csrf_of(form),
            "key": str(uuid.uuid4()),
            "category": "sexual_misconduct",
            "summary": "Assault on a work trip",
            "description": "My store manager assaulted me.",
            "accused_q": "wang",
            "named": "the client's driver",
        }
        step = await browser.post(
            "/ui/report", data={**draft, "step": "search"}, headers=SAME_ORIGIN
        )
        assert step.status_code == 200, step.text
        assert 'name="accused_id" value="p-wang"' in step.text
        assert "Assault on a work trip" in step.text  # the draft is carried forward
        sent = await browser.post(
            "/ui/report",
            data={**draft, "accused_id": "p-wang", "step": "send"},
            headers=SAME_ORIGIN,
        )
    assert sent.status_code == 200, sent.text  # was 500: a Principal passed as an id
    incident = re.search(r'id="incident">([^<]+)<', sent.text)
    assert incident is not None, sent.text
    data, key = await submitted(intake, incident.group(1))
    assert data.accused == ["p-wang"]
    assert key.open("reporter_identity", data.reporter_identity) == "p-liu"
    assert key.open("named", data.named[0]) == "the client's driver"
    assert [m.how for m in data.people_matches] == ["none"]
