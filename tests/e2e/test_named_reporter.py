"""A named reporter follows up her report through the real stack (issue 22).

p-liu, signed in, reports harassment by her store manager (p-wang). Triage routes it to
the unit's HR case handler (p-chen), who writes to her, acknowledges and closes it with
an outcome. p-liu reads the message and the outcome through the API (`/v1/my/reports`)
and through the console's signed-in pages (`/ui/my`); each of her views is in audit's
ledger as the `reporter`'s (actor `reporter:named`), never under her id. The accused
gets the 404 of an unknown report on every way in.

One stack for the module (the default policy); two waits: triage's routing, and the
ledger catching up at the end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, timeline
from tests.integration.test_console_intake import NAVIGATE, csrf_of

pytestmark = pytest.mark.e2e

REPORTER = {"authorization": "Bearer dev-liu-token"}
HANDLER = {"authorization": "Bearer dev-chen-token"}
ACCUSED = {"authorization": "Bearer dev-wang-token"}
REPORT = {
    "category": "harassment",
    "summary": "My store manager keeps commenting on my body",
    "description": "Every shift since March, in front of the team ...",
    "unit": "city-retail",
    "accused": ["p-wang"],
}
MESSAGE = "We have opened a case. Can you tell us who else was there?"
OUTCOME = "A written warning was issued and the manager was moved to another store."
VIEWED = "incident.viewed.v1"


class Browser:
    """A signed-in console session over plain HTTP: the console's cookies are `Secure`
    (a browser keeps them for 127.0.0.1; httpx's jar would not), so they are carried by
    hand."""

    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, timeout=10)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        # the person's own navigation (NAVIGATE): only then is a console view recorded
        headers = {**NAVIGATE, **kwargs.pop("headers", {})}
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        answer = self.client.request(method, path, headers=headers, **kwargs)
        for line in answer.headers.get_list("set-cookie"):
            for name, morsel in SimpleCookie(line).items():
                self.cookies[name] = morsel.value
        return answer

    def sign_in(self, token: str) -> None:
        login = self.request("GET", "/ui/login")
        signed = self.request(
            "POST", "/ui/login", data={"csrf": csrf_of(login), "token": token, "next": "/ui/my"}
        )
        assert signed.status_code == 303, signed.text

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def case(stack: Stack) -> Iterator[str]:
    """p-liu's report, routed to p-chen (the first wait), answered and closed."""
    intake = stack.url("intake")
    filed = httpx.post(f"{intake}/v1/reports", json=REPORT, headers=REPORTER, timeout=10)
    assert filed.status_code == 202, filed.text
    incident: str = filed.json()["incident_id"]
    assert filed.json()["receipt"] is None  # named: she follows up signed in

    began = time.monotonic()
    while True:  # triage's decision reaches intake's routing table
        listed = httpx.get(f"{intake}/v1/incidents", headers=HANDLER, timeout=10).json()
        if incident in {i["incident_id"] for i in listed["incidents"]}:
            break
        assert time.monotonic() - began < 60, f"not routed to p-chen\n{stack.tail('triage')}"
        time.sleep(0.2)

    for path, body in [
        ("acknowledge", None),
        ("messages", {"text": MESSAGE}),
        ("status", {"status": "closed", "outcome": OUTCOME}),
    ]:
        done = httpx.post(
            f"{intake}/v1/incidents/{incident}/{path}", json=body, headers=HANDLER, timeout=10
        )
        assert done.status_code == 202, (path, done.text)
    yield incident


def test_she_reads_the_message_and_the_outcome_through_the_api(stack: Stack, case: str) -> None:
    intake = stack.url("intake")
    listed = httpx.get(f"{intake}/v1/my/reports", headers=REPORTER, timeout=10)
    assert listed.status_code == 200, listed.text
    [mine] = [r for r in listed.json()["reports"] if r["incident_id"] == case]
    assert (mine["status"], mine["status_label"]) == ("closed", "closed with outcome")

    view = httpx.get(f"{intake}/v1/my/reports/{case}", headers=REPORTER, timeout=10)
    assert view.status_code == 200, view.text
    seen = view.json()
    assert seen["summary"] == REPORT["summary"]
    assert [(m["direction"], m["text"]) for m in seen["messages"]] == [("to_reporter", MESSAGE)]
    assert (seen["status"], seen["outcome"]) == ("closed", OUTCOME)
    assert seen["closed_at"] is not None and seen["acknowledged_at"] is not None
    assert "p-chen" not in view.text  # she is never told who handles her report


def test_she_reads_them_on_her_console_pages(stack: Stack, case: str) -> None:
    browser = Browser(stack.url("intake"))
    try:
        browser.sign_in("dev-liu-token")
        mine = browser.request("GET", "/ui/my")
        assert mine.status_code == 200 and case in mine.text
        assert "closed with outcome" in mine.text
        page = browser.request("GET", f"/ui/my/reports/{case}")
        assert page.status_code == 200, page.text
        assert MESSAGE in page.text and OUTCOME in page.text
        assert re.search(r'id="status">closed</strong> with outcome', page.text)
        assert "p-chen" not in page.text
    finally:
        browser.close()


def test_the_accused_gets_the_404_of_an_unknown_report(stack: Stack, case: str) -> None:
    intake = stack.url("intake")
    unknown = "00000000-0000-4000-8000-000000000000"
    for path in (f"/v1/my/reports/{case}", f"/v1/incidents/{case}"):
        refused = httpx.get(intake + path, headers=ACCUSED, timeout=10)
        nothing = httpx.get(intake + path.replace(case, unknown), headers=ACCUSED, timeout=10)
        assert refused.status_code == nothing.status_code == 404, path
        assert refused.json()["detail"] == nothing.json()["detail"]
        assert REPORT["summary"] not in refused.text
    mine = httpx.get(f"{intake}/v1/my/reports", headers=ACCUSED, timeout=10).json()
    assert case not in {r["incident_id"] for r in mine["reports"]}
    browser = Browser(intake)
    try:
        browser.sign_in("dev-wang-token")
        assert browser.request("GET", f"/ui/my/reports/{case}").status_code == 404
    finally:
        browser.close()


def test_her_views_are_in_the_ledger_as_the_reporters(stack: Stack, case: str) -> None:
    """The API view and the console page's (the second wait: audit catching up)."""
    began = time.monotonic()
    while True:
        views = [e["event"] for e in timeline(stack, case, VIEWED)]
        hers = [v for v in views if v["actor"] == "reporter:named"]  # type: ignore[index]
        if len(hers) >= 2:
            break
        assert time.monotonic() - began < 60, f"{len(hers)} of her views in the ledger"
        time.sleep(0.2)
    assert {v["data"]["principal"] for v in hers} == {"reporter"}  # type: ignore[index]
    assert "p-liu" not in str(views)  # never under her id
