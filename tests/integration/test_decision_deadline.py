"""A report triage never decides is raised on its own (SPEC invariants 1 and 8), on the
real database and broker.

Intake and audit run; triage does not. Two reports are accepted: one gets a decision
(triage's signed `incident.triaged.v1`, produced as triage would), the other never
does. The watcher's clock is held back until the first decision reached intake, so the
test says nothing about how fast the broker is; then the undecided report, and only it,
is raised once: `incident.decision.overdue.v1` in intake's store, on the activity topic
and in the ledger, carrying the incident id and times, no report content. A later
decision stops counting it; the event stays.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import REGISTRY

from services.audit.app import create_app as create_audit
from services.domain.envelope import Envelope
from services.domain.events import (
    DecisionOverdue,
    PeopleImported,
    ReportSubmitted,
    Topic,
    Triaged,
    make_event,
)
from services.infra.db import create_pool, migrate_service
from services.infra.recorder import PostgresUnitOfWork
from services.infra.settings import AuditSettings, CommonSettings, IntakeSettings
from services.intake.app import MIGRATIONS
from services.intake.app import create_app as create_intake
from services.intake.deadlines import DecisionWatch, PostgresDecisionUnitOfWork
from services.intake.routing import keep_progress
from services.intake.usecases import RaiseOverdue, raise_overdue_decisions
from tests.helpers import (
    SEED_CASE,
    critical_policy,
    eventually,
    fetch_rows,
    read_all,
    serving,
    signed,
)

pytestmark = pytest.mark.integration

HELD_BACK = datetime(2000, 1, 1, tzinfo=UTC)
"""The watcher's clock until the test lets it run: no report is due at this time."""


@dataclass
class Stack:
    intake: httpx.AsyncClient
    intake_app: FastAPI
    settings: CommonSettings

    async def sql(self, query: str, *args: Any) -> list[Any]:
        return await fetch_rows(self.settings, query, *args)

    @property
    def watch(self) -> DecisionWatch:
        watch: DecisionWatch = self.intake_app.state.decisions
        return watch

    async def report(self, **changes: Any) -> str:
        answer = await self.intake.post("/v1/reports", json={**SEED_CASE, **changes})
        assert answer.status_code == 202, answer.text
        incident: str = answer.json()["incident_id"]
        return incident

    async def ledger_types(self, incident: str) -> list[str]:
        rows = await self.sql(
            "SELECT event_type FROM audit.ledger WHERE incident_id = $1 ORDER BY idx", incident
        )
        return [r["event_type"] for r in rows]


@pytest.fixture
async def stack(settings: CommonSettings, tmp_path: Path) -> AsyncIterator[Stack]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(critical_policy("decision-deadline-test", "1h"))
    common = {**settings.model_dump(), "policy_file": policy}
    intake_app = create_intake(IntakeSettings(**common, decision_within=1))
    intake_app.state.decisions.clock = lambda: HELD_BACK
    audit_app = create_audit(
        AuditSettings(**common, signing_key_file=tmp_path / "key.pem", checkpoint_interval=0.2)
    )
    async with (
        serving(intake_app, "http://intake") as intake,
        serving(audit_app, "http://audit"),
    ):
        yield Stack(intake, intake_app, settings)


async def decide(producer: AIOKafkaProducer, settings: CommonSettings, incident: str) -> None:
    """Triage's decision of `incident`, signed by triage's key, on incident.triage."""
    event = make_event(
        Triaged.TYPE,
        subject=incident,
        data=Triaged(
            category="sexual_misconduct", severity="critical", policy_version="t", chain=[]
        ),
        source="/services/triage",
        time=datetime.now(UTC),
        actor="system:triage",
    )
    await producer.send_and_wait(settings.topic(Topic.TRIAGE), signed(event), key=incident.encode())


def overdue_gauge() -> float | None:
    return REGISTRY.get_sample_value("incidents_decision_overdue_incidents")


async def test_a_report_triage_never_decides_is_raised_once_without_its_content(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    undecided = await stack.report(summary="Nobody decides this one")
    decided = await stack.report(summary="Triage decides this one")
    await decide(producer, stack.settings, decided)

    async def decision_reached_intake() -> bool:
        rows = await stack.sql(
            "SELECT decided_at FROM intake.decision_clocks WHERE incident_id = $1", decided
        )
        return bool(rows) and rows[0]["decided_at"] is not None

    await eventually(decision_reached_intake)
    stack.watch.clock = lambda: datetime.now(UTC)  # both reports are past 1 s from here on
    stack.watch.nudge()

    async def raised() -> list[str]:
        return [t for t in await stack.ledger_types(undecided) if t == DecisionOverdue.TYPE]

    assert await eventually(raised) == [DecisionOverdue.TYPE]
    await stack.watch.round()  # another round, as a restarted or second instance would
    await DecisionWatch(stack.watch.runtime, 1).round()

    stored = await stack.sql(
        "SELECT stream_id, body FROM intake.events WHERE type = $1", DecisionOverdue.TYPE
    )
    assert [r["stream_id"] for r in stored] == [undecided]  # once, and only the undecided
    event = json.loads(bytes(stored[0]["body"]))
    assert set(event["data"]) == {"submitted_at", "due_at"}
    assert event["subject"] == undecided and event["actor"] == "system:intake"
    records = await read_all(stack.settings.kafka_bootstrap, stack.settings.topic(Topic.ACTIVITY))
    published = [r.value for r in records if DecisionOverdue.TYPE.encode() in (r.value or b"")]
    assert len(published) == 1
    for content in ("sexual_misconduct", "city-retail", "p-wang", "decides", "Assault"):
        assert content.encode() not in published[0]
    assert overdue_gauge() == 1
    assert DecisionOverdue.TYPE not in await stack.ledger_types(decided)

    async def listed_overdue() -> list[str]:  # the auditor's list, its `overdue` filter
        rows = await stack.sql(
            "SELECT incident_id, status FROM audit.console_incidents"
            " WHERE acknowledged_at IS NULL AND ack_due_at < now()"
        )
        return [r["incident_id"] for r in rows if r["status"] == "submitted"]

    assert await eventually(listed_overdue) == [undecided]

    await decide(producer, stack.settings, undecided)  # triage decides at last

    async def gauge_dropped() -> bool:
        return overdue_gauge() == 0

    await eventually(gauge_dropped)
    assert (await raised()) == [DecisionOverdue.TYPE]  # the ledger keeps what happened


async def test_an_upgrade_gives_every_earlier_report_a_clock_and_raises_the_undecided(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """Intake's migration 0012 on a database with reports from before it: decided when
    triage's decision was kept, someone was routed or the report was closed; the report
    with none of these is raised at the first round, and a directory stream gets no clock."""
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0012":
            shutil.copy(path, before / path.name)
    await migrate_service(fresh_database_url, "intake", before)
    pool = await create_pool(fresh_database_url, schema="intake", max_size=2)
    try:
        kept, routed, closed, undecided = (f"inc-{n}" for n in ("kept", "routed", "closed", "none"))
        then = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        async with PostgresUnitOfWork(pool) as uow:
            await uow.recorder.append_streams(
                [(i, 0, [submitted(i, then)]) for i in (kept, routed, closed, undecided)]
                + [("directory-import:x", 0, [directory_event(then)])]
            )
            decision = make_event(
                Triaged.TYPE,
                subject=kept,
                data=Triaged(category="harassment", severity="high", policy_version="t", chain=[]),
                source="/services/triage",
                time=then + timedelta(seconds=1),
            )
            await keep_progress(uow.conn, [decision])
            await uow.conn.execute(
                "INSERT INTO routing (incident_id, principal, level, routed, routed_at,"
                " source_event) VALUES ($1, 'p-chen', 1, true, $2, gen_random_uuid())",
                routed,
                then + timedelta(seconds=2),
            )
            await uow.conn.execute(
                "INSERT INTO retention (incident_id, category, closed_at) VALUES ($1, 'other', $2)",
                closed,
                then + timedelta(days=3),
            )
        await migrate_service(fresh_database_url, "intake", MIGRATIONS)
        rows = {
            r["incident_id"]: r["decided_at"]
            for r in await pool.fetch("SELECT incident_id, decided_at FROM decision_clocks")
        }
        assert rows == {
            kept: then + timedelta(seconds=1),
            routed: then + timedelta(seconds=2),
            closed: then + timedelta(days=3),
            undecided: None,
        }
        result = await raise_overdue_decisions(
            RaiseOverdue(datetime.now(UTC), timedelta(minutes=5), "/services/intake"),
            PostgresDecisionUnitOfWork(pool),
        )
        assert [e.subject for e in result.raised] == [undecided]
    finally:
        await pool.close()


def submitted(incident: str, at: datetime) -> Envelope:
    return make_event(
        ReportSubmitted.TYPE,
        subject=incident,
        data={"category": "other", "summary": "s", "description": "d", "report_digest": "x"},
        source="/services/intake",
        time=at,
    )


def directory_event(at: datetime) -> Envelope:
    return make_event(
        PeopleImported.TYPE,
        subject="directory-import:x",
        data={"people": [{"person_id": "p-x"}]},
        source="/services/intake",
        time=at,
    )
