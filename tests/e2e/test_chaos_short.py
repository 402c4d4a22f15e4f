"""A short `incidents chaos` run: every service SIGKILLed once and the broker restarted
empty while 600 reports come in; every invariant must hold (about two minutes).

The checker is tested first, on a made-up ledger: a verdict that cannot fail proves
nothing.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from services.domain.envelope import utc_rfc3339
from tooling.chaos import (
    Accepted,
    ChaosConfig,
    RunRecord,
    evaluate,
    run_chaos,
)

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
INCIDENT = "inc-1"


def at(seconds: float) -> str:
    return utc_rfc3339(T0 + timedelta(seconds=seconds))


def event(kind: str, time: float, **data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": kind,
        "subject": INCIDENT,
        "time": at(time),
        "data": data,
    }


def escalated(level: int, who: list[str], deadline: float, time: float) -> list[dict[str, Any]]:
    return [
        event(
            "incident.escalated.v1",
            time,
            level=level,
            recipients=who,
            reason="not_acknowledged",
            deadline=at(deadline),
        ),
        *(
            event(
                "incident.notified.v1",
                time,
                principal=p,
                channel="escalation",
                level=level,
                report_digest="sha256:0",
            )
            for p in who
        ),
    ]


def seed_case_ledger() -> list[dict[str, Any]]:
    """The ledger of the seed case with the chaos policy, nobody acknowledging."""
    chain = [
        ("hr_case_handler", ["p-chen"], 4),
        ("hr_head", ["p-zhou"], 4),
        ("chief_ethics_officer", ["p-sun"], 6),
        ("board_audit_committee", ["p-board"], 8),
    ]
    triaged = event(
        "incident.triaged.v1",
        0.1,
        category="sexual_misconduct",
        severity="critical",
        policy_version="chaos-seconds-1",
        chain=[
            {"level": i, "role": role, "recipients": who, "acknowledge_within": within}
            for i, (role, who, within) in enumerate(chain, start=1)
        ],
        excluded=[
            {"principal": "p-wang", "rule": "accused"},
            {"principal": "p-li", "rule": "accused_management_chain"},
            {"principal": "p-zhang", "rule": "accused_management_chain"},
        ],
        deadlines={
            "level_1_acknowledge": at(4.1),
            "reporter_acknowledgement": at(20.1),
            "feedback": at(3600.1),
        },
        repeat_last_every=3600,
    )
    return [
        event("incident.report.submitted.v1", 0.0, category="sexual_misconduct"),
        triaged,
        event("incident.notified.v1", 0.1, principal="p-chen", channel="triage", level=1),
        *escalated(2, ["p-zhou"], 4.1, 4.15),
        *escalated(3, ["p-sun"], 8.14, 8.2),
        *escalated(4, ["p-board"], 14.19, 14.25),
        event("incident.reminder.due.v1", 18.1, clock="reporter_acknowledgement", due_at=at(20.1)),
        event("incident.notified.v1", 18.1, principal="p-board", channel="reminder", level=4),
        event(
            "incident.deadline.breached.v1", 20.1, clock="reporter_acknowledgement", due_at=at(20.1)
        ),
        event("incident.notified.v1", 20.1, principal="p-board", channel="breach", level=4),
        *escalated(4, ["p-board"], 22.24, 22.3),
    ]


def verdict(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    record = RunRecord(accepted={INCIDENT: Accepted(INCIDENT, "seed case", T0, False, 1)})
    topics = {"incident.report": "incident.reports", "incident.triaged": "incident.triage"}
    leaves = [
        (i, next((t for p, t in topics.items() if e["type"].startswith(p)), "other"), e)
        for i, e in enumerate(events)
    ]

    class Intact:
        ok = True
        entries_checked = len(leaves)
        heads_checked = 1

    checks, _facts = evaluate(record, leaves, T0 + timedelta(seconds=60), Intact(), None)
    return {c.name: c.violations for c in checks if c.violations}


def test_the_checker_passes_a_sound_ledger() -> None:
    assert verdict(seed_case_ledger()) == {}


def test_the_checker_catches_an_escalation_fired_twice() -> None:
    events = seed_case_ledger()
    twice = copy.deepcopy(next(e for e in events if e["type"] == "incident.escalated.v1"))
    twice["id"] = str(uuid.uuid4())
    broken = verdict([*events, twice])
    assert any("2 escalations of level 2" in v for vs in broken.values() for v in vs), broken


def test_the_checker_catches_a_deadline_that_never_fired() -> None:
    events = [e for e in seed_case_ledger() if e["data"].get("level") != 3]
    broken = verdict(events)
    assert any("nothing escalated" in v for vs in broken.values() for v in vs), broken


def test_the_checker_catches_an_excluded_principal_told() -> None:
    told = event("incident.notified.v1", 5, principal="p-li", channel="triage", level=1)
    broken = verdict([*seed_case_ledger(), told])
    assert any("p-li" in v and "excluded" in v for vs in broken.values() for v in vs), broken


def test_the_checker_catches_a_ledger_entry_recorded_twice() -> None:
    events = seed_case_ledger()
    broken = verdict([*events, events[0]])
    assert "no ledger entry twice (topic + event id)" in broken
    assert any("2 submission entries" in v for vs in broken.values() for v in vs)


@pytest.mark.e2e
@pytest.mark.serial
def test_a_short_chaos_run_keeps_every_invariant(pg_server_url: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "chaos"
    config = ChaosConfig(
        reports=600,
        rate=10,
        kills=1,
        broker_restart=True,
        seed=20261125,
        run_dir=run_dir,
        database_url=pg_server_url,
    )
    console = Console(width=140, force_terminal=False, record=True)
    code = run_chaos(config, console)
    verdict_file = run_dir / "verdict.json"
    if not verdict_file.exists():
        pytest.fail(f"the chaos run failed (exit {code}):\n{console.export_text()[-6000:]}")
    document = json.loads(verdict_file.read_text(encoding="utf-8"))
    failed = {c["invariant"]: c["examples"][:5] for c in document["checks"] if not c["ok"]}
    assert code == 0 and document["ok"], json.dumps(failed, indent=1)
    assert sum(f["target"] != "broker" for f in document["faults"]) == 4
    assert sum(f["target"] == "broker" for f in document["faults"]) == 1
