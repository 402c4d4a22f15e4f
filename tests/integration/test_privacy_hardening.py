"""Regression tests for the security review of privacy (#8) and the console (#10).

Intake and audit run without triage here unless a test says otherwise, so triage's
decision never arrives: the conflict rules must hold all the same, from the first
moment (review H2), and audit must apply them too (H1).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.audit.app import create_app as create_audit
from services.domain.events import make_event
from services.infra import eventstore
from services.infra.settings import AuditSettings, CommonSettings, IntakeSettings
from services.intake.app import create_app as create_intake
from tests.helpers import critical_policy, eventually, serving
from tests.integration.test_privacy import Stack, auth

pytestmark = pytest.mark.integration


class Services(Stack):
    """Intake and audit (and triage only when a test starts it)."""

    async def report(self, reporter: str | None, **fields: Any) -> str:
        body = {"category": "harassment", "summary": "s", "description": "d", **fields}
        headers = auth(reporter) if reporter else {}
        answer = await self.intake.post("/v1/reports", headers=headers, json=body)
        assert answer.status_code == 202, answer.text
        incident: str = answer.json()["incident_id"]
        return incident

    async def denials(self, incident: str) -> list[str]:
        rows = await self.sql(  # refusals have their own stream (services.intake.actions)
            "SELECT body FROM intake.events WHERE stream_id = $1 ORDER BY version",
            f"access-denied:{incident}",
        )
        events = [json.loads(bytes(r["body"])) for r in rows]
        return [
            f"{e['data']['principal']}:{e['data']['reason']}"
            for e in events
            if e["type"] == "incident.access.denied.v1"
        ]


@pytest.fixture
async def services(settings: CommonSettings, tmp_path: Path) -> AsyncIterator[Services]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(critical_policy("hardening-test", "1h"))
    common = {**settings.model_dump(), "policy_file": policy}
    intake_app = create_intake(IntakeSettings(**common))
    audit_app = create_audit(
        AuditSettings(**common, signing_key_file=tmp_path / "key.pem", checkpoint_interval=0.5)
    )
    async with (
        serving(intake_app, "http://intake") as intake,
        serving(audit_app, "http://audit") as audit,
    ):
        yield Services(intake, audit, intake_app, settings)


# H2: before (and without) triage's decision -------------------------------------


async def test_the_accused_are_refused_before_triage_decides(services: Services) -> None:
    incident = await services.report("liu", accused=["p-audit", "p-custos"], unit="city-retail")
    url = f"/v1/incidents/{incident}"
    unknown = await services.intake.get(
        "/v1/incidents/00000000-0000-4000-8000-000000000000", headers=auth("auditor")
    )
    view = await services.intake.get(url, headers=auth("auditor"))
    assert view.status_code == 404, view.text
    assert view.json()["detail"] == unknown.json()["detail"]
    hold = await services.intake.post(
        url + "/legal-hold", headers=auth("auditor"), json={"reason": "r"}
    )
    assert hold.status_code == 404, hold.text
    who = await services.intake.post(
        url + "/reporter-identity", headers=auth("custodian"), json={"reason": "curious"}
    )
    assert who.status_code == 404, who.text
    assert "p-liu" not in who.text
    # each refusal is recorded, under one reason for every rule (it names nothing)
    assert await services.denials(incident) == [
        "p-audit:excluded",
        "p-audit:excluded",
        "p-custos:excluded",
    ]


async def test_named_people_and_the_reporter_are_refused_before_triage(
    services: Services,
) -> None:
    named = await services.report("liu", named=["p-audit"])
    assert (
        await services.intake.get(f"/v1/incidents/{named}", headers=auth("auditor"))
    ).status_code == 404
    # an auditor who reports under their own name is the reporter: not a reader
    own = await services.report("auditor", accused=["p-wang"])
    assert (
        await services.intake.get(f"/v1/incidents/{own}", headers=auth("auditor"))
    ).status_code == 404
    assert await services.denials(own) == ["p-audit:excluded"]


async def test_the_accused_managers_are_refused_before_triage(services: Services) -> None:
    minion = f"p-minion-{secrets.token_hex(4)}"
    put = await services.intake.put(
        f"/v1/directory/people/{minion}",
        headers=auth("admin"),
        json={"name": "M", "unit": "group", "manager_id": "p-audit", "roles": ["employee"]},
    )
    assert put.status_code == 201, put.text
    incident = await services.report("liu", accused=[minion])
    view = await services.intake.get(f"/v1/incidents/{incident}", headers=auth("auditor"))
    assert view.status_code == 404, view.text


async def test_an_uninvolved_auditor_still_reads_before_triage(services: Services) -> None:
    marker = f"M-{secrets.token_hex(4)}"
    incident = await services.report("liu", accused=["p-wang"], summary=f"summary {marker}")
    view = await services.intake.get(f"/v1/incidents/{incident}", headers=auth("auditor"))
    assert view.status_code == 200, view.text
    assert marker in view.json()["summary"]
    await eventually(lambda: _in_ledger(services, incident), timeout=30)


async def _in_ledger(services: Services, incident: str) -> bool:
    rows = await services.sql("SELECT 1 FROM audit.ledger WHERE incident_id = $1", incident)
    return bool(rows)


# H1: audit applies the same conflict rule, and never opens who reported ----------


async def console_login(client: httpx.AsyncClient, token: str) -> dict[str, str]:
    csrf = "c" * 40
    answer = await client.post(
        "/ui/login",
        data={"csrf": csrf, "token": token, "next": "/ui/"},
        headers={
            "sec-fetch-site": "same-origin",
            "cookie": f"__Host-incidents-audit-csrf={csrf}",
        },
    )
    assert answer.status_code == 303, answer.text
    return {"cookie": f"__Host-incidents-audit-session={token}"}


async def in_ledger(services: Stack, incident: str, type_: str) -> bool:
    rows = await services.sql(
        "SELECT 1 FROM audit.ledger WHERE incident_id = $1 AND event_type = $2", incident, type_
    )
    return bool(rows)


async def test_audit_refuses_an_implicated_auditor_everywhere(services: Services) -> None:
    marker = f"MARKER-{secrets.token_hex(6)}"
    incident = await services.report(
        "liu", accused=["p-audit", "p-wang"], summary=f"summary {marker}", unit="city-retail"
    )
    other = await services.report("liu", accused=["p-wang"], summary=f"summary {marker}")
    for each in (incident, other):
        await eventually(
            lambda i=each: in_ledger(services, i, "incident.report.submitted.v1"), timeout=30
        )
    unknown = await services.audit.get(
        "/v1/incidents/00000000-0000-4000-8000-000000000000/timeline", headers=auth("auditor")
    )
    assert unknown.status_code == 404
    for path in ("timeline", "state", "knowledge"):
        answer = await services.audit.get(
            f"/v1/incidents/{incident}/{path}", headers=auth("auditor")
        )
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["detail"] == unknown.json()["detail"]
        assert marker not in answer.text and "p-liu" not in answer.text
    cookie = await console_login(services.audit, "dev-auditor-token")
    for path in ("", "/as-of", "/evidence.json"):
        page = await services.audit.get(f"/ui/incidents/{incident}{path}", headers=cookie)
        assert page.status_code == 404, (path, page.text[:200])
        assert marker not in page.text
    # the refusals are recorded, and reach the ledger like audit's other events
    await eventually(lambda: in_ledger(services, incident, "incident.access.denied.v1"), timeout=30)
    rows = await services.sql(
        "SELECT body FROM audit.events WHERE stream_id = $1", f"audit-denied:{incident}"
    )
    assert len(rows) == 6  # three API routes, three console pages
    assert {json.loads(bytes(r["body"]))["data"]["reason"] for r in rows} == {"excluded:conflict"}

    # the uninvolved incident opens for the auditor, but never says who reported
    timeline = await services.audit.get(
        f"/v1/incidents/{other}/timeline?content=true", headers=auth("auditor")
    )
    assert timeline.status_code == 200 and marker in timeline.text
    assert "p-liu" not in timeline.text

    # the console list leaves the incident out (once the index has both)
    async def listed() -> bool:
        page = await services.audit.get("/ui/", headers=cookie)
        return other in page.text

    await eventually(listed, timeout=30)
    assert incident not in (await services.audit.get("/ui/", headers=cookie)).text


async def test_a_custodian_still_learns_who_reported_in_the_knowledge_answer(
    services: Services,
) -> None:
    incident = await services.report("liu", accused=["p-wang"])
    await eventually(
        lambda: in_ledger(services, incident, "incident.report.submitted.v1"), timeout=30
    )
    answer = await services.audit.get(
        f"/v1/incidents/{incident}/knowledge", headers=auth("custodian")
    )
    assert answer.status_code == 200, answer.text
    assert "p-liu" in answer.text
    # L2: two answers at once are both recorded and both answered
    url = f"/v1/incidents/{incident}/knowledge"
    both = await asyncio.gather(
        *(services.audit.get(url, headers=auth("custodian")) for _ in range(4))
    )
    assert [b.status_code for b in both] == [200] * 4
    rows = await services.sql(
        "SELECT 1 FROM audit.events WHERE stream_id = $1", f"disclosures:{incident}"
    )
    assert len(rows) == 5
    accused = await services.report("liu", accused=["p-custos"])
    await eventually(
        lambda: in_ledger(services, accused, "incident.report.submitted.v1"), timeout=30
    )
    refused = await services.audit.get(
        f"/v1/incidents/{accused}/knowledge", headers=auth("custodian")
    )
    assert refused.status_code == 404 and "p-liu" not in refused.text


# M4: a legal hold racing an erasure ---------------------------------------------


async def test_a_legal_hold_waits_for_an_erasure_in_progress_instead_of_deadlocking(
    services: Services,
) -> None:
    incident = await services.report("liu", accused=["p-wang"])
    conn = await asyncpg.connect(services.settings.database_url)
    try:
        # what the eraser does: the retention row first, then (appending) the counter
        async with conn.transaction():
            await conn.execute(
                "SELECT 1 FROM intake.retention WHERE incident_id = $1 FOR UPDATE", incident
            )
            hold = asyncio.create_task(
                services.intake.post(
                    f"/v1/incidents/{incident}/legal-hold",
                    headers=auth("auditor"),
                    json={"reason": "litigation"},
                )
            )
            await asyncio.sleep(1.0)  # the hold request is under way meanwhile
            await asyncio.wait_for(
                conn.execute("UPDATE intake.counters SET last = last WHERE name = 'events'"),
                timeout=10,
            )
        answer = await hold
    finally:
        await conn.close()
    assert answer.status_code == 202, answer.text
    assert answer.json()["held"] is True


# M2: Idempotency-Key rows name nobody, expire, and go with the erasure ------------


async def test_an_idempotency_row_names_nobody_expires_and_is_erased(services: Services) -> None:
    key = {"idempotency-key": secrets.token_hex(8), **auth("liu")}
    body = {"category": "harassment", "summary": "s", "description": "d", "accused": ["p-wang"]}
    first = await services.intake.post("/v1/reports", headers=key, json=body)
    assert first.status_code == 202, first.text
    incident = first.json()["incident_id"]
    [row] = await services.sql(
        "SELECT scope, request_hash, created_at FROM intake.idempotency"
        " WHERE response->>'incident_id' = $1",
        incident,
    )
    assert "p-liu" not in row["scope"] and row["scope"].startswith("pn:")
    # the request's digest is keyed (not sha256 of the report): a guess cannot confirm it
    assert row["request_hash"].startswith("pn:")

    # after 24 h the key is forgotten: another body with it is a new report, not a 409
    await services.sql(
        "UPDATE intake.idempotency SET created_at = now() - interval '25 hours'"
        " WHERE response->>'incident_id' = $1",
        incident,
    )
    again = await services.intake.post(
        "/v1/reports", headers=key, json={**body, "summary": "other"}
    )
    assert again.status_code == 202 and again.json()["incident_id"] != incident
    assert not await services.sql(
        "SELECT 1 FROM intake.idempotency WHERE response->>'incident_id' = $1", incident
    )

    # an erasure takes the row of the erased incident with it
    second = again.json()["incident_id"]
    await services.sql(
        "UPDATE intake.retention SET closed_at = now() - interval '3650 days'"
        " WHERE incident_id = $1",
        second,
    )
    assert await services.intake_app.state.eraser.erase(second, datetime.now(UTC))
    assert not await services.sql(
        "SELECT 1 FROM intake.idempotency WHERE response->>'incident_id' = $1", second
    )


# M1: an auditor who reads content through audit leaves a knowing record -----------


async def test_an_auditor_reading_content_is_recorded_as_knowing_first(
    services: Services,
) -> None:
    marker = f"M-{secrets.token_hex(4)}"
    incident = await services.report("liu", accused=["p-wang"], summary=f"summary {marker}")
    await eventually(
        lambda: in_ledger(services, incident, "incident.report.submitted.v1"), timeout=30
    )
    url = f"/v1/incidents/{incident}"
    # who knew when needs no content: sealed as in the ledger, and no view recorded
    for path in ("/timeline", "/state"):
        sealed = await services.audit.get(url + path, headers=auth("auditor"))
        assert sealed.status_code == 200 and marker not in sealed.text
    assert (
        "enc:v1:" in sealed.text
        or "enc:v1:" in (await services.audit.get(url + "/timeline", headers=auth("auditor"))).text
    )
    assert not await services.sql(
        "SELECT 1 FROM audit.events WHERE stream_id = $1", f"audit-views:{incident}"
    )
    timeline = await services.audit.get(url + "/timeline?content=true", headers=auth("auditor"))
    assert timeline.status_code == 200 and marker in timeline.text
    # committed before the answer: it is in audit's store now, and reaches the ledger
    [row] = await services.sql(
        "SELECT body FROM audit.events WHERE stream_id = $1", f"audit-views:{incident}"
    )
    viewed = json.loads(bytes(row["body"]))
    assert viewed["type"] == "incident.viewed.v1" and viewed["actor"] == "p-audit"
    assert viewed["data"]["principal"] == "p-audit"
    await eventually(lambda: in_ledger(services, incident, "incident.viewed.v1"), timeout=30)
    knowledge = await services.audit.get(url + "/knowledge", headers=auth("auditor"))
    assert "p-audit" in knowledge.text
    # the state holds opened content too: recorded again
    await services.audit.get(url + "/state?content=true", headers=auth("auditor"))
    rows = await services.sql(
        "SELECT 1 FROM audit.events WHERE stream_id = $1", f"audit-views:{incident}"
    )
    assert len(rows) == 2


# L3: an incident from before sealing is never "erased" while its report is in clear


async def test_an_incident_from_before_sealing_is_refused_erasure(services: Services) -> None:
    app = services.intake_app
    incident = str(uuid.uuid4())
    legacy = make_event(
        "incident.report.submitted.v1",
        subject=incident,
        data={
            "category": "harassment",
            "summary": "plaintext summary from before #8",
            "description": "plaintext",
            "reporter": "p-liu",
            "report_digest": "sha256:" + "0" * 64,
        },
        source="/intake",
        time=datetime.now(UTC),
        actor="p-liu",
    )
    async with app.state.runtime.db.acquire() as conn, conn.transaction():
        await eventstore.append(
            conn, incident, 0, [legacy], topic_prefix=services.settings.kafka_topic_prefix
        )
        await conn.execute(
            "INSERT INTO retention (incident_id, category, closed_at)"
            " VALUES ($1, 'harassment', now() - interval '3650 days')",
            incident,
        )
        await app.state.keys.create(conn, incident)  # its next action gave it a key
    assert not await app.state.eraser.erase(incident, datetime.now(UTC))
    async with app.state.runtime.db.acquire() as conn:
        assert await app.state.keys.get(conn, incident) is not None
    types = [
        json.loads(bytes(r["body"]))["type"]
        for r in await services.sql("SELECT body FROM intake.events WHERE stream_id = $1", incident)
    ]
    assert types == ["incident.report.submitted.v1"]  # no incident.erased.v1
