"""Issue 19, guarded reads: the accused made auditor (by two admins) reads nothing of his
own case through any audit route, and every read, refused or not, is in the ledger.

Also: a privileged role cannot be self-granted or granted by one admin alone; routes
about incidents answer 404 for subjects that are not incidents; integer bounds.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from services.audit.cli import incidents_as_of
from services.audit.verify import HttpSource, verify_ledger
from tests.helpers import eventually
from tests.integration.test_console_audit import login
from tests.integration.test_privacy import auth
from tests.integration.test_privacy_hardening import Services, services  # noqa: F401

pytestmark = pytest.mark.integration


async def _person(stack: Services, person: str) -> dict[str, Any]:
    answer = await stack.intake.get(f"/v1/directory/people/{person}", headers=auth("admin"))
    assert answer.status_code == 200, answer.text
    return {k: v for k, v in answer.json().items() if k != "person_id"}


async def _ledger(stack: Services, event_type: str) -> list[dict[str, Any]]:
    rows = await stack.sql(
        "SELECT leaf FROM audit.ledger WHERE event_type = $1 ORDER BY idx", event_type
    )
    return [json.loads(bytes(r["leaf"]))["event"] for r in rows]


async def test_the_accused_made_auditor_reads_nothing_of_his_case(services: Services) -> None:  # noqa: F811
    incident = await services.report("liu", accused=["p-wang"])
    wang = await _person(services, "p-wang")

    # one admin alone cannot make him auditor, nor can anyone grant themselves
    own = await _person(services, "p-admin")
    selfgrant = await services.intake.put(
        "/v1/directory/people/p-admin",
        headers=auth("admin"),
        json={**own, "roles": ["admin", "auditor"]},
    )
    assert selfgrant.status_code == 403, selfgrant.text
    proposed = await services.intake.put(
        "/v1/directory/people/p-wang",
        headers=auth("admin"),
        json={**wang, "roles": [*wang["roles"], "auditor"]},
    )
    assert proposed.status_code == 202, proposed.text
    assert "auditor" not in proposed.json()["roles"]
    (grant,) = proposed.json()["pending_grants"]
    approval = f"/v1/directory/grants/{grant['grant_id']}/approval"
    alone = await services.intake.post(approval, headers=auth("admin"))
    assert alone.status_code == 403, alone.text
    assert (await _person(services, "p-wang"))["roles"] == wang["roles"]
    approved = await services.intake.post(approval, headers=auth("admin2"))
    assert approved.status_code == 200, approved.text
    assert approved.json()["proposed_by"] == "p-admin"

    async def wang_reads_entries() -> list[dict[str, Any]] | None:
        answer = await services.audit.get("/v1/ledger/entries", headers=auth("wang"))
        entries: list[dict[str, Any]] = answer.json()["entries"] if answer.is_success else []
        withheld = [e for e in entries if e.get("withheld")]
        return entries if withheld else None

    entries = await eventually(wang_reads_entries, timeout=30)
    assert incident not in json.dumps([e for e in entries if "leaf" in e])
    for entry in entries:
        if entry.get("withheld"):
            assert set(entry) == {
                *("index", "leaf_hash", "recorded_at", "withheld"),
                *("leaf_ok", "indexed_ok"),  # the service's verdicts, nothing of the content
            }
            assert entry["leaf_ok"] is True and entry["indexed_ok"] is True

    url = f"/v1/incidents/{incident}"
    for path in ("/timeline", "/knowledge", "/state", "/deliveries", "/timeline?content=true"):
        answer = await services.audit.get(url + path, headers=auth("wang"))
        assert answer.status_code == 404, (path, answer.text)
    source = HttpSource("http://audit", "dev-wang-token", client=services.audit)
    states = await incidents_as_of(source, datetime.now(UTC))
    assert incident not in states
    # the tree still verifies for him: withheld entries keep their leaf hashes
    report = await eventually(lambda: _verified(services, "dev-wang-token"), timeout=30)
    assert report.ok and report.withheld > 0, report
    async with httpx.AsyncClient(
        transport=services.audit._transport, base_url="https://audit"
    ) as browser:  # the console's cookies are Secure
        await login(browser, "dev-wang-token")
        assert (await browser.get(f"/ui/incidents/{incident}")).status_code == 404

    # the attempts are in the ledger: withheld reads and refusals
    async def recorded() -> bool:
        reads = [e["data"] for e in await _ledger(services, "audit.read.recorded.v1")]
        denied = [e["data"] for e in await _ledger(services, "incident.access.denied.v1")]
        # how many entries were withheld from him, never which incident (review D4)
        withheld = [r for r in reads if r["principal"] == "p-wang" and r["withheld_entries"]]
        assert all(not r["withheld"] for r in reads)
        refused = {d["action"] for d in denied if d["principal"] == "p-wang"}
        return bool(withheld) and {"view", "knowledge"} <= refused

    await eventually(recorded, timeout=30)
    assigned = await _ledger(services, "directory.role.assigned.v1")
    assert [(e["actor"], e["data"]["proposed_by"]) for e in assigned] == [("p-admin2", "p-admin")]


async def _verified(stack: Services, token: str) -> Any:
    report = await verify_ledger(HttpSource("http://audit", token, client=stack.audit))
    return report if report.ok and report.heads_checked > 0 else None


async def test_only_incidents_are_incidents_and_integers_are_bounded(services: Services) -> None:  # noqa: F811
    incident = await services.report("liu", accused=["p-zhou"])
    # a person whose id is an incident id: their directory event is not the incident's
    put = await services.intake.put(
        f"/v1/directory/people/{incident}",
        headers=auth("admin"),
        json={"name": "Same Id", "unit": "group", "roles": ["employee"]},
    )
    assert put.status_code == 201, put.text

    async def both_recorded() -> bool:
        rows = await services.sql(
            "SELECT event_type FROM audit.ledger WHERE incident_id = $1", incident
        )
        return {r["event_type"] for r in rows} >= {
            "incident.report.submitted.v1",
            "directory.person.upserted.v1",
        }

    await eventually(both_recorded, timeout=30)
    timeline = await services.audit.get(
        f"/v1/incidents/{incident}/timeline", headers=auth("auditor")
    )
    assert timeline.status_code == 200, timeline.text
    assert {e["event"]["type"].split(".")[0] for e in timeline.json()["events"]} == {"incident"}
    deliveries = await services.audit.get(
        f"/v1/incidents/{incident}/deliveries", headers=auth("auditor")
    )
    assert deliveries.status_code == 200, deliveries.text
    assert deliveries.json()["time_basis"] == "ledger"
    assert all(n["status"] in ("queued", "delivered") for n in deliveries.json()["notices"])
    for path in ("timeline", "knowledge", "state", "deliveries"):
        person = await services.audit.get(f"/v1/incidents/p-chen/{path}", headers=auth("auditor"))
        assert person.status_code == 404, person.text
    huge = 2**63
    for url in (
        f"/v1/ledger/entries?start={huge}",
        f"/v1/ledger/proofs/inclusion?index=0&tree_size={huge}",
        f"/ui/?before={huge}",
        f"/ui/?after={huge}",
        f"/ui/incidents/{incident}?t={huge}",
    ):
        answer = await services.audit.get(url, headers=auth("auditor"))
        assert answer.status_code == 422, (url, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
