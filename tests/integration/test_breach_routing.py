"""A legal clock's breach lets its extra recipients in (issue 22).

Escalation tells a breach to the current level, the next level and the independent
roles (`incident.notified.v1`, channel `breach`, on incident.activity). Intake's
routing consumer routes each of them at the notice's level, like an escalation's
recipients; an excluded person told of it (which escalation never does, but a faulty
record could) stays excluded, and other notices route nobody.

Runs on the intake app of tests/integration/test_handlers.py (its fixture and helpers).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.domain.events import make_event
from tests.helpers import signed
from tests.integration.test_handlers import (
    REPORT,
    Env,
    auth,
    env,
    routed_incident,
    send,
    until_routed,
)

pytestmark = pytest.mark.integration
__all__ = ["env"]  # the module's intake app (a fixture of test_handlers)


async def notify(env: Env, incident: str, principal: str, channel: str, level: int) -> None:
    """Publish escalation's `incident.notified.v1` (signed with its development key)."""
    data: dict[str, Any] = {
        "principal": principal,
        "channel": channel,
        "level": level,
        "report_digest": "sha256:" + "0" * 64,
    }
    event = make_event(
        "incident.notified.v1",
        subject=incident,
        data=data,
        source="/services/escalation",
        time=datetime.now(UTC),
        actor="system:escalation",
    )
    await send(env, "incident.activity", signed(event), incident)


async def test_a_breach_routes_its_extra_recipients_and_exclusions_still_win(env: Env) -> None:
    incident = await routed_incident(env)  # p-chen at level 1; p-wang, p-li excluded
    for principal in ("p-zhou", "p-sun", "p-ma"):
        refused = await env.client.get(f"/v1/incidents/{incident}", headers=auth(principal))
        assert refused.status_code == 404, principal
    # one partition (keyed by the incident): once the last is applied, all of them are
    for principal, channel, level in [
        ("p-ma", "reminder", 1),  # a reminder lets nobody in
        ("p-ma", "triage", 1),  # nor does an ask (its routing comes from triage's events)
        ("p-li", "breach", 2),  # excluded: told or not, he stays out
        ("p-zhou", "breach", 2),  # the next level
        ("p-sun", "breach", 3),  # the independent roles
    ]:
        await notify(env, incident, principal, channel, level)
    await until_routed(
        env,
        incident,
        {
            "p-zhou": (True, None),
            "p-sun": (True, None),
            "p-li": (True, "accused_management_chain"),
        },
    )
    for principal, level in [("p-zhou", 2), ("p-sun", 3)]:
        view = await env.client.get(f"/v1/incidents/{incident}", headers=auth(principal))
        assert view.status_code == 200, (principal, view.text)
        assert view.json()["summary"] == REPORT["summary"]
        ack = await env.client.post(
            f"/v1/incidents/{incident}/acknowledge", headers=auth(principal)
        )
        assert ack.status_code == 202 and ack.json()["level"] == level, ack.text
    for principal in ("p-li", "p-ma", "p-wang"):
        answer = await env.client.get(f"/v1/incidents/{incident}", headers=auth(principal))
        assert answer.status_code == 404, principal
        assert REPORT["summary"] not in answer.text
