"""Upgrading past a policy change that made a conflict rule mandatory.

Triage learns every policy version recorded before (an incident keeps the version it
started under). Versions recorded before `accused_reports` became mandatory in every
category lack it; triage must still start, and read them with it on."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from services.domain.policy import MANDATORY_EXCLUDE, Policy
from services.triage.usecases import RecordPolicy
from tests.unit.test_triage_usecases import POLICY, Triage

OLD = "2026-12-07"


def old_body() -> dict[str, Any]:
    """The shipped policy as version 2026-12-07 recorded it: accused_reports for two
    categories only (services/data/policy.yaml before it became mandatory)."""
    body = copy.deepcopy(POLICY.model_dump(mode="json", exclude_none=True))
    body["version"] = OLD
    body["conflicts"]["exclude"] = [
        "accused",
        "accused_management_chain",
        "named_in_report",
        "reporter",
    ]
    body["conflicts"]["categories"] = {
        "sexual_misconduct": {"exclude": ["accused_reports"]},
        "harassment": {"exclude": ["accused_reports"]},
    }
    return body


def test_a_file_without_a_mandatory_rule_is_still_refused() -> None:
    with pytest.raises(ValidationError, match="accused_reports"):
        Policy.model_validate(old_body())


def test_a_recorded_version_without_a_mandatory_rule_is_read_with_it_on() -> None:
    policy = Policy.recorded(old_body())
    assert policy.version == OLD
    for category in ("fraud", "safety", "harassment", None):
        assert set(MANDATORY_EXCLUDE) <= set(policy.conflicts.rules_for(category))
    assert "named_in_report" in policy.conflicts.rules_for("fraud")  # the version's own rules kept


async def test_triage_starts_after_the_upgrade_and_reads_the_old_version_with_them() -> None:
    triage = Triage()
    uow = triage.uow()
    async with uow:
        await uow.policies.record(OLD, old_body())
    await triage.usecases.record_policy(RecordPolicy(POLICY), triage.uow())
    old = triage.usecases.policies[OLD]
    assert set(MANDATORY_EXCLUDE) <= set(old.conflicts.rules_for("fraud"))
    uow = triage.uow()
    async with uow:  # the stored body is unchanged: it records what was decided under it
        assert await uow.policies.body_of(OLD) == old_body()
