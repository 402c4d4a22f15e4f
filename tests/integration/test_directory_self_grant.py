"""Nobody gives themselves a role through the directory API, not only the privileged ones.

Every role decides whose reports a person reads: a chain role routes a unit's reports to
her, and a reassign role (`conflicts.reassign_roles`, chief_ethics_officer in the shipped
policy) lets her reassign any incident she is not conflicted on to herself and read it.
So one admin alone could read any such report by granting herself one; another admin
grants it instead (and the privileged roles still wait for a second admin's approval).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration import test_reports
from tests.integration.test_reports import REPORT, Intake

pytestmark = pytest.mark.integration
intake = test_reports.intake  # a running intake of this module's own
ADMIN = {"authorization": "Bearer dev-admin-token"}
ADMIN2 = {"authorization": "Bearer dev-admin2-token"}


async def _record(intake: Intake, person: str) -> dict[str, Any]:
    answer = await intake.client.get(f"/v1/directory/people/{person}", headers=ADMIN2)
    assert answer.status_code == 200, answer.text
    return {k: v for k, v in answer.json().items() if k != "person_id"}


async def test_an_admin_cannot_give_herself_a_role_to_read_reports(intake: Intake) -> None:
    incident = (await intake.client.post("/v1/reports", json=REPORT)).json()["incident_id"]
    own = await _record(intake, "p-admin")
    for role in ("chief_ethics_officer", "hr_case_handler"):
        granted = await intake.client.put(
            "/v1/directory/people/p-admin",
            json={**own, "roles": [*own["roles"], role]},
            headers=ADMIN,
        )
        assert granted.status_code == 403, (role, granted.text)
        assert granted.json()["title"] == "Self-grant refused"
    assert await _record(intake, "p-admin") == own
    # so she cannot reassign the report to herself, nor read it
    taken = await intake.client.post(
        f"/v1/incidents/{incident}/reassign",
        json={"to": ["p-admin"], "reason": "mine"},
        headers=ADMIN,
    )
    assert taken.status_code == 404, taken.text
    assert (await intake.client.get(f"/v1/incidents/{incident}", headers=ADMIN)).status_code == 404

    # the rest of her own record is hers to change
    renamed = await intake.client.put(
        "/v1/directory/people/p-admin", json={**own, "email": "sam@example.com"}, headers=ADMIN
    )
    assert renamed.status_code == 200, renamed.text
    # another admin may grant it (a chain role takes effect at once)
    given = await intake.client.put(
        "/v1/directory/people/p-admin",
        json={**own, "roles": [*own["roles"], "hr_case_handler"]},
        headers=ADMIN2,
    )
    assert given.status_code == 200, given.text
    assert "hr_case_handler" in given.json()["roles"]
    # and dropping a role takes nobody else
    dropped = await intake.client.put("/v1/directory/people/p-admin", json=own, headers=ADMIN)
    assert dropped.status_code == 200, dropped.text
    assert (await _record(intake, "p-admin"))["roles"] == own["roles"]
