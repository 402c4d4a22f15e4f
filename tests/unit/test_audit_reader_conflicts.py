"""Audit's conflict check judges the reader too: an auditor who answers to the accused
(directly or through his management line) is excluded where the policy's category turns
`accused_reports` on, as intake and triage exclude him (issue 18, issue 19 item 6)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from services.audit import conflicts
from services.domain.directory import DirectoryFile, Person
from services.domain.events import make_event
from services.domain.knowledge import LedgerEvent
from services.domain.policy import CONFLICT_RULES, Policy
from services.infra.keystore import KeyStore

PEOPLE = {
    "p-li": Person(id="p-li", unit="retail", manager=None, roles=["unit_president"]),
    "p-wang": Person(id="p-wang", unit="retail", manager="p-li", roles=["store_manager"]),
    "p-liu": Person(id="p-liu", unit="retail", manager="p-wang", roles=["auditor"]),
    "p-deep": Person(id="p-deep", unit="retail", manager="p-liu", roles=["auditor"]),
    "p-audit": Person(id="p-audit", unit="group", manager=None, roles=["auditor"]),
}


def _policy(category_rules: bool) -> Policy:
    """`accused_reports` on for every category (as every policy must now have it), and
    also turned on for harassment alone when `category_rules`."""
    conflicts_doc: dict[str, Any] = {
        "exclude": list(CONFLICT_RULES),
        "independent_roles": ["chief_ethics_officer"],
    }
    if category_rules:
        conflicts_doc["categories"] = {"harassment": {"exclude": ["accused_reports"]}}
    return Policy.model_validate(
        {
            "version": "t",
            "categories": {"harassment": "high"},
            "severities": {
                "high": {
                    "chain": [{"role": "hr_case_handler", "acknowledge_within": "1h"}],
                    "repeat_last_every": "1h",
                    "feedback_within": "90d",
                }
            },
            "reporter_acknowledgement_within": "7d",
            "conflicts": conflicts_doc,
        }
    )


class _Keys:
    async def reporter_of(self, conn: object, incident_id: str, events: object) -> None:
        return None


def _entries(incident: str) -> list[LedgerEvent]:
    event = make_event(
        "incident.report.submitted.v1",
        subject=incident,
        data={
            "category": "harassment",
            "summary": "s",
            "description": "d",
            "accused": ["p-wang"],
            "report_digest": "sha256:" + "0" * 64,
        },
        source="/services/intake",
        time=datetime.now(UTC),
    )
    return [LedgerEvent(index=0, recorded_at=datetime.now(UTC), envelope=event)]


@pytest.fixture(autouse=True)
def _directory(monkeypatch: pytest.MonkeyPatch) -> None:
    async def person(conn: object, directory: object, person_id: str) -> Person | None:
        return PEOPLE.get(person_id)

    async def nobody_in_bulk(conn: object, person_ids: object, most: int) -> dict[str, object]:
        return {}  # so the walk asks the patched lookup for each person

    monkeypatch.setattr(conflicts, "person_in_ledger", person)
    monkeypatch.setattr(conflicts, "line_data", nobody_in_bulk)


@pytest.mark.parametrize("reader", ["p-liu", "p-deep"])
async def test_an_auditor_who_answers_to_the_accused_is_excluded(reader: str) -> None:
    incident = "7f1c1c3e-8a52-4a5e-9d8e-0d6f1f0a2b11"
    found = await conflicts.excluded(
        None,  # the directory comes from the patched lookup
        cast(KeyStore, _Keys()),
        _policy(category_rules=True),
        DirectoryFile(),
        incident,
        _entries(incident),
        reader=reader,
    )
    assert reader in found
    assert {"p-wang", "p-li"} <= found  # the accused and his line, as before


async def test_an_unrelated_auditor_is_not_excluded_and_the_rule_holds_without_categories() -> None:
    incident = "7f1c1c3e-8a52-4a5e-9d8e-0d6f1f0a2b12"
    unrelated = await conflicts.excluded(
        None,
        cast(KeyStore, _Keys()),
        _policy(category_rules=True),
        DirectoryFile(),
        incident,
        _entries(incident),
        reader="p-audit",
    )
    assert "p-audit" not in unrelated
    off = await conflicts.excluded(
        None,
        cast(KeyStore, _Keys()),
        _policy(category_rules=False),
        DirectoryFile(),
        incident,
        _entries(incident),
        reader="p-liu",
    )
    assert "p-liu" in off  # the rule is on for every category: no policy turns it off
