"""The auditor's list, on PostgreSQL, for an auditor an incident excludes (review L1).

The ledger holds 60 reports and a directory entry that makes p-audit the manager of the
accused of one of them (the conflict rule `accused_management_chain`, which the console
index cannot see: it is judged per reader). That report is the last row of the first
page, were nothing hidden. Each page of p-audit's list holds 50 rows, none of them that
report, and no link (`before=`, `after=`) or filter menu carries anything of it.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from services.audit.app import create_app
from services.audit.ledger import append_records
from services.audit.ui_index import PAGE, catch_up
from services.domain.events import make_event
from services.infra.settings import AuditSettings, CommonSettings
from tests.helpers import event_record, serving
from tests.integration.test_console_audit import login, rows

pytestmark = pytest.mark.integration
REPORTS = 60
HIDDEN = REPORTS - PAGE  # 0-based: the report whose entry would end the first page
DIGEST = "sha256:" + "ab" * 32


def _record(offset: int, kind: str, subject: str, data: dict[str, Any]) -> ConsumerRecord:
    event = make_event(
        kind, subject=subject, data=data, source="/tests", time=datetime.now(UTC), actor="t"
    )
    return event_record("incident.reports", event, offset)


def _report(offset: int, incident: str, category: str, accused: list[str]) -> ConsumerRecord:
    data = {
        "category": category,
        "summary": "s",
        "description": "d",
        "accused": accused,
        "report_digest": DIGEST,
    }
    return _record(offset, "incident.report.submitted.v1", incident, data)


async def test_an_excluded_auditors_list_pages_carry_nothing_of_the_hidden_incident(
    settings: CommonSettings, tmp_path: Path
) -> None:
    incidents = [str(uuid.uuid4()) for _ in range(REPORTS)]
    person = {"person_id": "p-under-audit", "manager_id": "p-audit", "unit": "group"}
    records = [_record(0, "directory.person.upserted.v1", "p-under-audit", person)]
    for n, incident in enumerate(incidents):
        hidden = n == HIDDEN
        accused = ["p-under-audit"] if hidden else []
        records.append(_report(n + 1, incident, "safety" if hidden else "fraud", accused))
    app = create_app(
        AuditSettings(
            **settings.model_dump(), signing_key_file=tmp_path / "k.pem", checkpoint_interval=3600
        )
    )
    async with serving(app, "https://audit") as client:
        runtime = app.state.runtime
        async with runtime.db.acquire() as conn, conn.transaction():
            await append_records(conn, records)
        await catch_up(runtime)
        first_idx = await runtime.db.fetchval(
            "SELECT first_idx FROM console_incidents WHERE incident_id = $1", incidents[HIDDEN]
        )
        assert (await login(client, "dev-auditor-token")).status_code == 303
        pages, links, url = [], [], "/ui/"
        while True:  # down by the "older" links, then up by the "newer" ones
            page = await client.get(url)
            assert page.status_code == 200, page.text
            pages.append(rows(page))
            links += re.findall(r'href="/ui/\?(?:before|after)=(\d+)"', page.text)
            older = re.search(r'href="/ui/\?before=(\d+)" rel="next"', page.text)
            if older is None:
                break
            url = f"/ui/?before={older.group(1)}"
        newer = re.search(r'href="/ui/\?after=(\d+)" rel="prev"', page.text)
        assert newer is not None
        back = await client.get(f"/ui/?after={newer.group(1)}")
        links += re.findall(r'href="/ui/\?(?:before|after)=(\d+)"', back.text)
        menu = (await client.get("/ui/")).text
    assert str(first_idx) not in links, links  # the old code: the first page's older link
    shown = [i for listed in pages for i in listed]
    assert incidents[HIDDEN] not in shown
    assert shown == [i for i in reversed(incidents) if i != incidents[HIDDEN]]
    assert [len(listed) for listed in pages] == [PAGE, REPORTS - 1 - PAGE]
    assert rows(back) == pages[0]
    assert 'value="fraud"' in menu and 'value="safety"' not in menu  # only the hidden one's
