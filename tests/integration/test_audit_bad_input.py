"""Bad input in audit's URLs is a 4xx, never a 500 (SPEC invariant 6; review R7).

A NUL is valid in a percent-encoded URL, but PostgreSQL's text cannot hold it: the
console's list filters, the console's incident pages and the API's timeline and
knowledge routes passed it to a statement and answered 500, with a traceback logged at
ERROR. Every service now refuses a control character in a path or query string before
any route runs (`services.infra.http.ControlCharacters`): one 400, the same bytes for
every URL, signed in or not, existing route or not.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.audit.app import create_app
from services.infra.http import PROBLEM
from services.infra.settings import AuditSettings, CommonSettings
from tests.helpers import serving
from tests.integration.test_console_audit import login

pytestmark = pytest.mark.integration
AUDITOR = {"authorization": "Bearer dev-auditor-token"}
INCIDENT = "7f1c1c3e-8a52-4a5e-9d8e-0d6f1f0a2b21"
CONSOLE_URLS = (  # each answered 500 before
    "/ui/?category=%00",
    "/ui/?severity=a%00b",
    "/ui/?status=%00",
    "/ui/incidents/a%00b",
    f"/ui/incidents/{INCIDENT}%00",
    "/ui/incidents/x%00/as-of",
    "/ui/people/a%00b",
    "/ui/?category=a%1Fb&before=3",
)
API_URLS = (
    "/v1/incidents/a%00b/timeline",  # 500 before
    "/v1/incidents/a%00b/knowledge",  # 500 before
    "/v1/incidents/a%00b",
    "/v1/ledger/proofs/event/a%00b",
    "/v1/people/a%00b",
    f"/v1/incidents/{INCIDENT}/state?as_of=2026-11-25T10:00:00Z%0A",
)


async def test_a_control_character_in_a_url_is_one_400_never_a_500(
    settings: CommonSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(
        AuditSettings(
            **settings.model_dump(), signing_key_file=tmp_path / "k.pem", checkpoint_interval=3600
        )
    )
    async with serving(app, "https://audit", raise_app_exceptions=False) as client:
        assert (await login(client, "dev-auditor-token")).status_code == 303
        assert (await client.get("/ui/?category=harassment")).status_code == 200
        console = [await client.get(url) for url in CONSOLE_URLS]
        api = [await client.get(url, headers=AUDITOR) for url in API_URLS]
        nowhere = await client.get("/no-such-route%00", headers=AUDITOR)
        client.cookies.clear()  # signed out: the same answer, not the login page or a 401
        anonymous = [await client.get(url) for url in (*CONSOLE_URLS, *API_URLS)]
    answers = [*console, *api, nowhere, *anonymous]
    for answer in answers:
        assert answer.status_code == 400, (answer.request.url, answer.text)
        assert answer.headers["content-type"] == PROBLEM
    assert len({answer.content for answer in answers}) == 1  # byte for byte
    assert answers[0].json()["detail"] == "The URL holds a control character."
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
