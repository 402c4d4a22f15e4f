"""The anonymous report form: it leaves nothing in the reporter's browser, and a form
someone altered is refused, never a 500.

A browser keeps what was typed into a form's text fields (its form history) and offers
it again in fields of the same name, on that profile, to whoever uses it next: on a
shared or company computer the summary and the accused's name would stay there after
an anonymous report. The form says `autocomplete="off"`, as the receipt form does for
the receipt and the secret, so that browsers keep none of it.

The people picked come back as checkbox values (`accused_id`, `named_id`); the page
shows them again after a search step or a refusal, looked up in the directory. A value
no person id can be (a NUL) is not looked up: the report refuses it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration import test_reports
from tests.integration.test_console_intake import SAME_ORIGIN, csrf_of
from tests.integration.test_reports import Intake

pytestmark = pytest.mark.integration
intake = test_reports.intake  # a running intake of this module's own


async def test_the_report_form_asks_the_browser_to_keep_nothing(intake: Intake) -> None:
    page = await intake.client.get("/ui/report")
    assert page.status_code == 200
    form = re.search(r'<form method="post" action="/ui/report"[^>]*>', page.text)
    assert form is not None, page.text[:500]
    assert 'autocomplete="off"' in form.group(0)
    # no field of it turns the browser's memory back on
    fields = re.findall(r"<(?:input|textarea)[^>]*>", page.text)
    assert fields and not [f for f in fields if 'autocomplete="on"' in f]
    assert {"summary", "accused", "named", "unit", "location"} <= set(
        re.findall(r'<input type="text" id="[^"]+" name="([^"]+)"', page.text)
    )


@pytest.fixture
async def browser(intake: Intake) -> AsyncIterator[httpx.AsyncClient]:
    """An anonymous browser (own cookies; https: they are Secure), the service's
    unexpected errors answered as they would be (500), not raised."""
    transport = httpx.ASGITransport(app=intake.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="https://intake") as client:
        yield client


async def test_an_altered_pick_is_refused_not_a_500(browser: httpx.AsyncClient) -> None:
    csrf = csrf_of(await browser.get("/ui/report"))
    draft = {"csrf": csrf, "category": "fraud", "summary": "s", "description": "d"}
    sent = await browser.post(
        "/ui/report", data={**draft, "accused_id": ["p-wang", "a\x00b"]}, headers=SAME_ORIGIN
    )
    assert sent.status_code == 422, sent.text[:300]
    assert 'value="p-wang" checked' in sent.text  # the real pick is shown again
    searched = await browser.post(
        "/ui/report",
        data={**draft, "step": "search", "named_id": "\x00", "named_q": "chen"},
        headers=SAME_ORIGIN,
    )
    assert searched.status_code == 200, searched.text[:300]
    assert 'value="p-chen"' in searched.text
