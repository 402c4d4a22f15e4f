"""Everyone reads the current directory: escalation's mail addresses follow the
directory events, so a change made through intake's directory API counts at once
(issue 21), without a restart and without the directory file."""

from __future__ import annotations

from typing import Any

import pytest

from services.escalation.addresses import Addresses
from services.escalation.app import create_app as create_escalation
from services.infra.settings import CommonSettings, EscalationSettings, IntakeSettings
from services.intake.app import create_app as create_intake
from tests.helpers import eventually, serving

pytestmark = pytest.mark.integration
ADMIN = {"authorization": "Bearer dev-admin-token"}


async def test_escalation_s_address_of_a_person_follows_the_directory_api(
    settings: CommonSettings,
) -> None:
    common: dict[str, Any] = settings.model_dump()
    escalation = create_escalation(EscalationSettings(**common))
    addresses: Addresses = escalation.state.addresses
    async with (
        serving(create_intake(IntakeSettings(**common)), "http://intake") as intake,
        serving(escalation, "http://escalation"),
    ):

        async def address_is(want: str) -> bool:
            return await addresses.lookup("p-chen") == want

        await eventually(lambda: address_is("chen@example.com"), timeout=20)  # the seed
        changed = await intake.put(
            "/v1/directory/people/p-chen",
            json={
                "name": "Chen Mei",
                "alternative_names": ["\u9648\u6885"],
                "email": "mei.chen@example.com",
                "unit": "city-retail",
                "manager_id": "p-li",
                "roles": ["hr_case_handler"],
            },
            headers=ADMIN,
        )
        assert changed.status_code == 200, changed.text
        await eventually(lambda: address_is("mei.chen@example.com"), timeout=20)
        assert await addresses.lookup("p-nobody") is None
