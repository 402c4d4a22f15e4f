"""Escalation on the real broker and database, with a policy of seconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.domain.events import parse_event
from services.escalation.app import create_app as create_escalation
from services.infra.settings import (
    CommonSettings,
    EscalationSettings,
    IntakeSettings,
    TriageSettings,
)
from services.intake.app import create_app as create_intake
from services.triage.app import create_app as create_triage
from tests.helpers import SEED_CASE, critical_policy, eventually, read_all, serving

pytestmark = pytest.mark.integration
SECONDS_POLICY = critical_policy("seconds-1", "2s")


@pytest.fixture
def common(settings: CommonSettings, tmp_path: Path) -> dict[str, Any]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(SECONDS_POLICY)
    return {**settings.model_dump(), "policy_file": policy}


@pytest.fixture
async def intake_and_triage(
    common: dict[str, Any],
) -> AsyncIterator[httpx.AsyncClient]:
    triage = create_triage(TriageSettings(**common))
    async with (
        serving(create_intake(IntakeSettings(**common)), "http://intake") as intake,
        serving(triage, "http://triage"),
    ):

        async def loaded() -> bool:
            async with triage.state.triage.runtime.db.acquire() as conn:
                return bool(await conn.fetchval("SELECT count(*) >= 12 FROM directory_log"))

        await eventually(loaded, timeout=20)
        yield intake


async def escalations(settings: CommonSettings, incident: str) -> list[Any]:
    got = await read_all(settings.kafka_bootstrap, settings.topic("incident.escalations"))
    events = [parse_event(r.value)[0] for r in got]
    return [e for e in events if e.subject == incident]


async def test_an_unacknowledged_report_climbs_the_chain_on_time_and_stops_at_acknowledgement(
    intake_and_triage: httpx.AsyncClient, common: dict[str, Any], settings: CommonSettings
) -> None:
    intake = intake_and_triage
    async with serving(create_escalation(EscalationSettings(**common)), "http://escalation"):
        incident = (await intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]

        async def at_level(n: int) -> list[Any] | None:
            events = [
                e for e in await escalations(settings, incident) if e.type.endswith("escalated.v1")
            ]
            return events if any(e.data["level"] == n for e in events) else None

        events = await eventually(lambda: at_level(3), timeout=20)
        level2 = next(e for e in events if e.data["level"] == 2)
        level3 = next(e for e in events if e.data["level"] == 3)
        assert level2.data["recipients"] == ["p-zhou"]
        assert level2.data["reason"] == "not_acknowledged"
        assert level3.data["recipients"] == ["p-sun"]
        for event in (level2, level3):  # fired within a second of the missed deadline
            late = event.time - datetime.fromisoformat(event.data["deadline"])
            assert late.total_seconds() < 1.0, late

        async def ethics_officer_may_act() -> bool:
            answer = await intake.post(
                f"/v1/incidents/{incident}/acknowledge",
                headers={"authorization": "Bearer dev-sun-token"},
            )
            return answer.status_code in (200, 202)

        await eventually(ethics_officer_may_act, timeout=10)

        async def cleared() -> list[Any] | None:
            events = await escalations(settings, incident)
            return events if any(e.type.endswith("cleared.v1") for e in events) else None

        events = await eventually(cleared, timeout=10)
        settled = len([e for e in events if e.type.endswith("escalated.v1")])
        await asyncio.sleep(3)  # past level 3's and 4's deadlines: nothing more happens
        after = [
            e for e in await escalations(settings, incident) if e.type.endswith("escalated.v1")
        ]
        assert len(after) == settled
        assert {e.data["level"] for e in after} <= {2, 3, 4}
        for event in after:
            assert not {"p-wang", "p-li", "p-zhang"} & set(event.data["recipients"])


async def test_deadlines_that_pass_while_escalation_is_down_fire_once_after_restart(
    intake_and_triage: httpx.AsyncClient, common: dict[str, Any], settings: CommonSettings
) -> None:
    intake = intake_and_triage
    first = create_escalation(EscalationSettings(**common))
    async with serving(first, "http://escalation"):
        incident = (await intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]

        async def started() -> bool:
            async with first.state.escalation.runtime.db.acquire() as conn:
                return bool(
                    await conn.fetchval(
                        "SELECT 1 FROM escalation_state WHERE incident_id = $1", incident
                    )
                )

        await eventually(started, timeout=15)
    await asyncio.sleep(3)  # level 1's deadline passes while nothing runs
    async with serving(create_escalation(EscalationSettings(**common)), "http://escalation"):

        async def escalated() -> list[Any] | None:
            events = [
                e for e in await escalations(settings, incident) if e.type.endswith("escalated.v1")
            ]
            return events or None

        await eventually(escalated, timeout=10)
        await asyncio.sleep(0.5)
    events = [e for e in await escalations(settings, incident) if e.type.endswith("escalated.v1")]
    level2 = [e for e in events if e.data["level"] == 2]
    assert len(level2) == 1
