"""Privacy on the real broker and database: sealed content, erasure, holds, custodians.

Intake, triage and audit run in this process on one database and one topic prefix.
A marker string written into every free-text field of a report (and into the
handler's comment, message and closing outcome) must never be found in plaintext in
any table of any schema, in any Kafka record or in the ledger, while the handler and
the auditor still read it. After erasure (driven by an injected clock), no key the
system still holds opens it, the ledger still verifies and still says who knew when.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from services.audit.app import create_app as create_audit
from services.audit.verify import HttpSource, verify_ledger
from services.domain.events import Topic, is_sealed
from services.domain.inbound import incident_id_for
from services.infra.crypto import CryptoError, unseal
from services.infra.settings import AuditSettings, CommonSettings, IntakeSettings, TriageSettings
from services.intake.app import create_app as create_intake
from services.triage.app import create_app as create_triage
from tests import inbound_client as sender
from tests.helpers import critical_policy, eventually, read_all, serving

pytestmark = pytest.mark.integration

RETENTION = "retention:\n  after_closure: 30d\n  categories: {harassment: 1y}\n"


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer dev-{name}-token"}


@dataclass
class Stack:
    intake: httpx.AsyncClient
    audit: httpx.AsyncClient
    intake_app: FastAPI
    settings: CommonSettings

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    def erase_at(self, moment: datetime) -> None:
        """Inject the erasure job's clock."""
        self.intake_app.state.eraser.clock = lambda: moment

    async def erase_due(self) -> list[str]:
        erased: list[str] = await self.intake_app.state.eraser.erase_due()
        return erased


@pytest.fixture
async def stack(settings: CommonSettings, tmp_path: Path) -> AsyncIterator[Stack]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(critical_policy("privacy-test", "1h") + RETENTION)
    common = {**settings.model_dump(), "policy_file": policy}
    triage_app = create_triage(TriageSettings(**common))
    intake_app = create_intake(IntakeSettings(**common))
    audit_app = create_audit(
        AuditSettings(**common, signing_key_file=tmp_path / "key.pem", checkpoint_interval=0.2)
    )
    async with (
        serving(intake_app, "http://intake") as intake,
        serving(triage_app, "http://triage"),
        serving(audit_app, "http://audit") as audit,
    ):
        yield Stack(intake, audit, intake_app, settings)


async def routed_to_chen(stack: Stack, incident: str, who: str = "chen") -> bool:
    listed = (await stack.intake.get("/v1/incidents", headers=auth(who))).json()
    return any(i["incident_id"] == incident for i in listed["incidents"])


# A name that matches nobody in the directory makes a report conflict-unresolved: it
# goes to the independent roles only (p-sun, chief ethics officer), not to HR.
UNRESOLVED_HANDLER = "sun"


async def ledger_types(stack: Stack, incident: str) -> list[str]:
    rows = await stack.sql(
        "SELECT event_type FROM audit.ledger WHERE incident_id = $1 ORDER BY idx", incident
    )
    return [r["event_type"] for r in rows]


async def every_table_as_text(stack: Stack) -> str:
    """Every row of every table of every schema of the database, as text (bytea as hex)."""
    tables = await stack.sql(
        "SELECT schemaname, tablename FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    )
    dumps = []
    for t in tables:
        rows = await stack.sql(f'SELECT t::text AS row FROM "{t[0]}"."{t[1]}" t')
        dumps.extend(r["row"] for r in rows)
    assert any("audit" in t[0] for t in tables) and any("keys" in t[0] for t in tables)
    return "\n".join(dumps)


async def every_record(stack: Stack) -> list[bytes]:
    values: list[bytes] = []
    for topic in Topic:
        got = await read_all(stack.settings.kafka_bootstrap, stack.settings.topic(topic))
        values.extend(r.value or b"" for r in got)
    return values


def assert_nowhere(marker: str, text: str, records: list[bytes]) -> None:
    for form in (marker, marker.encode().hex(), base64.b64encode(marker.encode()).decode()):
        assert form not in text
        assert not any(form.encode() in r for r in records)


async def until_verified(stack: Stack) -> None:
    """`incidents audit verify`'s code against the audit service, once a head covers all."""

    async def verified() -> bool:
        report = await verify_ledger(
            HttpSource("http://audit", "dev-auditor-token", client=stack.audit)
        )
        return report.ok and report.heads_checked > 0

    await eventually(verified, timeout=30)


async def handled_and_closed(stack: Stack, marker: str, category: str) -> str:
    """A named report full of the marker, viewed, answered, commented on and closed (by
    the independent role: its free-text names match nobody)."""
    answer = await stack.intake.post(
        "/v1/reports",
        headers=auth("liu"),
        json={
            "category": category,
            "summary": f"summary {marker}",
            "description": f"description {marker}",
            "location": f"location {marker}",
            "unit": "city-retail",
            "accused": ["p-wang", f"the driver {marker}"],
            "named": [f"a colleague {marker}"],
        },
    )
    assert answer.status_code == 202, answer.text
    incident: str = answer.json()["incident_id"]
    await eventually(lambda: routed_to_chen(stack, incident, UNRESOLVED_HANDLER), timeout=20)
    url = f"/v1/incidents/{incident}"
    view = (await stack.intake.get(url, headers=auth(UNRESOLVED_HANDLER))).json()
    assert marker in view["summary"] and marker in view["description"]
    assert f"the driver {marker}" in view["accused"] and "p-wang" in view["accused"]
    for path, body in [
        ("/comments", {"text": f"comment {marker}"}),
        ("/messages", {"text": f"message {marker}"}),
        ("/acknowledge", None),
        ("/status", {"status": "closed", "outcome": f"outcome {marker}"}),
    ]:
        done = await stack.intake.post(url + path, headers=auth(UNRESOLVED_HANDLER), json=body)
        assert done.status_code == 202, (path, done.text)
    return incident


async def test_a_marker_is_ciphertext_everywhere_and_unrecoverable_after_erasure(
    stack: Stack,
) -> None:
    marker = f"MARKER-{secrets.token_hex(6)}"
    incident = await handled_and_closed(stack, marker, "sexual_misconduct")
    types = [
        "incident.report.submitted.v1",
        "incident.triaged.v1",
        "incident.viewed.v1",
        "incident.commented.v1",
        "incident.reporter.message.v1",
        "incident.status.changed.v1",
    ]
    await eventually(lambda: _has_all(stack, incident, types), timeout=20)

    # Ciphertext, not plaintext: every table (event stores, outboxes, ledger, keys,
    # triage's decisions), every record of every topic.
    assert_nowhere(marker, await every_table_as_text(stack), await every_record(stack))
    [submitted] = await stack.sql(
        "SELECT leaf FROM audit.ledger WHERE incident_id = $1"
        " AND event_type = 'incident.report.submitted.v1'",
        incident,
    )
    data = json.loads(bytes(submitted["leaf"]))["event"]["data"]
    assert is_sealed(data["summary"]) and is_sealed(data["reporter_identity"])
    assert data["reporter"].startswith("pn:") and data["accused"][0] == "p-wang"
    assert is_sealed(data["accused"][1]) and is_sealed(data["named"][0])

    # The auditor reads it, opened; so does the state.
    timeline = (
        await stack.audit.get(
            f"/v1/incidents/{incident}/timeline?content=true", headers=auth("auditor")
        )
    ).json()
    assert marker in json.dumps(timeline)
    state = (
        await stack.audit.get(
            f"/v1/incidents/{incident}/state?content=true", headers=auth("auditor")
        )
    ).json()
    assert state["state"]["outcome"] == f"outcome {marker}"

    # Nothing is erased before the retention (30 days after closure) has passed.
    [row] = await stack.sql(
        "SELECT closed_at FROM intake.retention WHERE incident_id = $1", incident
    )
    stack.erase_at(row["closed_at"] + timedelta(days=29))
    assert await stack.erase_due() == []
    stack.erase_at(row["closed_at"] + timedelta(days=30, seconds=1))
    assert await stack.erase_due() == [incident]
    assert await stack.erase_due() == []  # once

    await eventually(lambda: _has_all(stack, incident, ["incident.erased.v1"]), timeout=20)
    sealed = _sealed_values(
        await stack.sql("SELECT leaf FROM audit.ledger WHERE incident_id = $1", incident)
    )
    # 3 texts, 2 free names and their 2 matches, the identity, comment, message, outcome
    assert len(sealed) == 11
    # Every key the system still holds: the master key and every data key it unwraps.
    keys = stack.intake_app.state.keys
    holders = await stack.sql("SELECT incident_id, wrapped FROM keys.data_keys")
    assert [h["wrapped"] for h in holders if h["incident_id"] == incident] == [None]
    data_keys = [
        keys.master.unwrap(bytes(h["wrapped"]), f"incidents-data-key\x00{h['incident_id']}")[:32]
        for h in holders
        if h["wrapped"] is not None
    ]
    for field, value in sealed:
        for key in data_keys:
            with pytest.raises(CryptoError):
                unseal(key, incident, field, value)
    assert_nowhere(marker, await every_table_as_text(stack), await every_record(stack))

    # Unreadable everywhere it was shown, while the record of who knew stays.
    timeline = (
        await stack.audit.get(
            f"/v1/incidents/{incident}/timeline?content=true", headers=auth("auditor")
        )
    ).json()
    assert marker not in json.dumps(timeline) and "[erased]" in json.dumps(timeline)
    view = (
        await stack.intake.get(f"/v1/incidents/{incident}", headers=auth(UNRESOLVED_HANDLER))
    ).json()
    assert view["summary"] == "[erased]" and marker not in json.dumps(view)
    knowledge = (
        await stack.audit.get(f"/v1/incidents/{incident}/knowledge", headers=auth("auditor"))
    ).json()
    handler = next(p for p in knowledge["principals"] if p["principal"] == "p-sun")
    assert {"notified", "viewed", "acknowledged"} <= set(handler["via"])
    await until_verified(stack)


async def test_a_report_from_another_system_is_sealed_before_anything_keeps_it(
    stack: Stack,
) -> None:
    marker = f"INBOUND-{secrets.token_hex(6)}"
    inbound = sender.sign(
        sender.event(
            category="harassment",
            summary=f"summary {marker}",
            description=f"description {marker}",
            accused=["p-wang", f"the driver {marker}"],
            reporter="p-liu",
        )
    )
    headers, value = sender.structured(inbound)
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            stack.settings.topic(Topic.INBOUND), value, key=b"hris-case-7", headers=headers
        )
    finally:
        await producer.stop()
    incident = incident_id_for("hris", inbound["id"])
    await eventually(lambda: _has_all(stack, incident, ["incident.triaged.v1"]), timeout=30)
    # The plaintext stays on incident.inbound (the contract; short retention in
    # production) and nowhere else: not in any table, the ledger, or another topic.
    others = []
    for topic in Topic:
        if topic != Topic.INBOUND:
            got = await read_all(stack.settings.kafka_bootstrap, stack.settings.topic(topic))
            others.extend(r.value or b"" for r in got)
    assert_nowhere(marker, await every_table_as_text(stack), others)
    assert "p-liu" not in json.dumps(await _triaged(stack, incident))
    await eventually(lambda: routed_to_chen(stack, incident, UNRESOLVED_HANDLER), timeout=20)
    view = (
        await stack.intake.get(f"/v1/incidents/{incident}", headers=auth(UNRESOLVED_HANDLER))
    ).json()
    assert view["summary"] == f"summary {marker}"


async def test_triage_excludes_a_reporter_it_knows_only_by_pseudonym(stack: Stack) -> None:
    # Chen, the city-retail HR case handler, reports her store manager herself: level 1
    # would be her, so triage must recognise her pseudonym and ask group HR instead.
    answer = await stack.intake.post(
        "/v1/reports",
        headers=auth("chen"),
        json={"category": "harassment", "summary": "s", "description": "d", "accused": ["p-wang"]},
    )
    incident = answer.json()["incident_id"]
    triaged = await eventually(lambda: _triaged(stack, incident), timeout=20)
    # the two topics reach the ledger in either order
    types = ["incident.report.submitted.v1"]
    await eventually(lambda: _has_all(stack, incident, types), timeout=20)
    [submitted] = await stack.sql(
        "SELECT leaf FROM audit.ledger WHERE incident_id = $1"
        " AND event_type = 'incident.report.submitted.v1'",
        incident,
    )
    event = json.loads(bytes(submitted["leaf"]))["event"]
    assert event["actor"] == "reporter:named" and event["data"]["reporter"].startswith("pn:")
    assert triaged["chain"][0]["recipients"] == ["p-ma"]
    assert all("p-chen" not in level["recipients"] for level in triaged["chain"])
    # never named as the reporter on the topic, though she holds a role of the chain
    assert "p-chen" not in {x["principal"] for x in triaged["excluded"]}
    view = await stack.intake.get(f"/v1/incidents/{incident}", headers=auth("chen"))
    assert view.status_code == 404  # a reporter is never routed her own report


async def test_a_legal_hold_blocks_erasure_until_it_is_released(stack: Stack) -> None:
    incident = await handled_and_closed(stack, "held", "harassment")
    url = f"/v1/incidents/{incident}/legal-hold"
    refused = await stack.intake.post(url, headers=auth("chen"), json={"reason": "mine"})
    assert refused.status_code == 403
    placed = await stack.intake.post(url, headers=auth("auditor"), json={"reason": "case 7"})
    assert placed.status_code == 202 and placed.json()["held"] is True
    again = await stack.intake.post(url, headers=auth("auditor"), json={"reason": "case 7"})
    assert again.status_code == 409

    [row] = await stack.sql(
        "SELECT closed_at FROM intake.retention WHERE incident_id = $1", incident
    )
    stack.erase_at(row["closed_at"] + timedelta(days=366))  # harassment: kept 1 year
    assert await stack.erase_due() == []
    [key] = await stack.sql("SELECT wrapped FROM keys.data_keys WHERE incident_id = $1", incident)
    assert key["wrapped"] is not None

    released = await stack.intake.post(
        url + "/release", headers=auth("auditor"), json={"reason": "case 7 closed"}
    )
    assert released.status_code == 202 and released.json()["held"] is False
    assert await stack.erase_due() == [incident]
    late = await stack.intake.post(url, headers=auth("auditor"), json={"reason": "too late"})
    assert late.status_code == 409
    types = [
        "incident.legal_hold.placed.v1",
        "incident.legal_hold.released.v1",
        "incident.erased.v1",
        "incident.access.denied.v1",
    ]
    await eventually(lambda: _has_all(stack, incident, types), timeout=20)
    timeline = (
        await stack.audit.get(
            f"/v1/incidents/{incident}/timeline?content=true", headers=auth("auditor")
        )
    ).json()
    denied = [e["event"] for e in timeline["events"] if e["event"]["type"] == types[3]]
    assert [(d["data"]["principal"], d["data"]["action"]) for d in denied] == [
        ("p-chen", "place_legal_hold")
    ]


async def test_only_an_identity_custodian_learns_the_reporter_and_that_is_recorded(
    stack: Stack,
) -> None:
    answer = await stack.intake.post(
        "/v1/reports",
        headers=auth("hris"),
        json={
            "category": "harassment",
            "summary": "s",
            "description": "d",
            "unit": "city-retail",
            "accused": ["p-wang"],
            "reporter": "p-liu",
        },
    )
    incident = answer.json()["incident_id"]
    await eventually(lambda: routed_to_chen(stack, incident), timeout=20)
    url = f"/v1/incidents/{incident}/reporter-identity"
    reason = {"reason": "retaliation complaint"}
    # without the role, the answer does not depend on the incident (nor on exclusion)
    for name, status in [("chen", 403), ("auditor", 403), ("wang", 403)]:
        refused = await stack.intake.post(url, headers=auth(name), json=reason)
        assert refused.status_code == status, name
        assert "p-liu" not in refused.text
    shown = await stack.intake.post(url, headers=auth("custodian"), json=reason)
    assert shown.status_code == 200
    assert (shown.json()["reporter"], shown.json()["anonymous"]) == ("p-liu", False)
    # recorded before the answer: it is in intake's store with the answer's event id
    [event] = await stack.sql(
        "SELECT body FROM intake.events WHERE event_id = $1", shown.json()["event_id"]
    )
    disclosed = json.loads(bytes(event["body"]))
    assert disclosed["type"] == "incident.identity.disclosed.v1"
    assert disclosed["data"]["principal"] == "p-custos" and is_sealed(disclosed["data"]["reason"])

    # Triage excluded the reporter without reading who it is.
    triaged = await eventually(lambda: _triaged(stack, incident), timeout=20)
    assert "p-liu" not in json.dumps(triaged["chain"])

    await eventually(
        lambda: _has_all(stack, incident, ["incident.identity.disclosed.v1"]), timeout=20
    )

    async def knowledge(name: str) -> dict[str, Any]:
        got = await stack.audit.get(f"/v1/incidents/{incident}/knowledge", headers=auth(name))
        assert got.status_code == 200
        answer: dict[str, Any] = got.json()
        return answer

    names = [p["principal"] for p in (await knowledge("auditor"))["principals"]]
    assert "reporter" in names and "p-liu" not in names and "p-custos" in names
    names = [p["principal"] for p in (await knowledge("custodian"))["principals"]]
    assert "p-liu" in names and "reporter" not in names
    # the custodian's knowledge answer is a disclosure of its own, recorded by audit
    rows = await stack.sql(
        "SELECT body FROM audit.events WHERE stream_id = $1", f"disclosures:{incident}"
    )
    assert [json.loads(bytes(r["body"]))["data"]["principal"] for r in rows] == ["p-custos"]
    refused = await stack.audit.get(f"/v1/incidents/{incident}/knowledge", headers=auth("chen"))
    assert refused.status_code == 403


async def _triaged(stack: Stack, incident: str) -> dict[str, Any] | None:
    rows = await stack.sql(
        "SELECT leaf FROM audit.ledger WHERE incident_id = $1"
        " AND event_type = 'incident.triaged.v1'",
        incident,
    )
    return json.loads(bytes(rows[0]["leaf"]))["event"]["data"] if rows else None


async def _has_all(stack: Stack, incident: str, types: list[str]) -> bool:
    return set(types) <= set(await ledger_types(stack, incident))


def _sealed_values(rows: list[asyncpg.Record]) -> list[tuple[str, str]]:
    found = []
    for row in rows:
        data = json.loads(bytes(row["leaf"]))["event"]["data"]
        for field, value in data.items():
            for item in value if isinstance(value, list) else [value]:
                if is_sealed(item):
                    found.append((field, item))
                elif isinstance(item, dict):  # people_matches[*].text
                    found.extend((f"{field}.{k}", v) for k, v in item.items() if is_sealed(v))
    return found


async def test_a_report_intake_accepts_is_decided_whatever_its_unit_says(stack: Stack) -> None:
    # A NUL in `unit` was accepted (202) and then dead-lettered by triage, whose JSONB
    # refuses it: the report was never routed. Intake refuses it now; the odd but
    # acceptable (a right-to-left override, a combining mark, CJK, a zero-width space)
    # is decided.
    report = {"category": "harassment", "summary": "s", "description": "d"}
    refused = await stack.intake.post("/v1/reports", json={**report, "unit": "city\x00retail"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "unit"
    nasty = "city\u202eretail\u0301 \u4e2d\u200bx"
    answer = await stack.intake.post("/v1/reports", json={**report, "unit": nasty})
    assert answer.status_code == 202, answer.text
    incident = answer.json()["incident_id"]
    triaged = await eventually(lambda: _triaged(stack, incident), timeout=20)
    assert triaged["chain"]  # decided: resolved across the organisation (no such unit)
    [decided] = await stack.sql(
        "SELECT report->>'unit' AS unit FROM triage.decisions WHERE incident_id = $1", incident
    )
    assert decided["unit"] == nasty
