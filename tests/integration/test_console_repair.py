"""The auditor's list is re-derived from the ledger when its rows were edited (review D5).

A superuser deletes an incident's row from `audit.console_incidents`, edits another's
status, and invents a third. The fold only reads entries past its cursor, so before
`repair_once` the deleted case was never listed again. The indexer's check (at start and
every `REPAIR_SECONDS`) finds and rewrites each, logs it and counts it; an untouched
index is left alone.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.audit.ui_index import catch_up, repair_once
from services.infra.settings import CommonSettings
from tests.integration.test_console_audit import login, rows
from tests.integration.test_withheld_index import audit_with, ledger_record, report_record

pytestmark = pytest.mark.integration
REPAIRS = "incidents_console_index_repairs_total"


async def test_rows_deleted_edited_or_invented_are_re_derived_from_the_ledger(
    settings: CommonSettings, tmp_path: Path
) -> None:
    incidents = [str(uuid.uuid4()) for _ in range(3)]
    records = [report_record(n, i, ["p-wang"]) for n, i in enumerate(incidents)]
    ack = {"principal": "p-chen", "level": 1}
    records.append(ledger_record(3, "incident.acknowledged.v1", incidents[2], ack))
    async with audit_with(settings, tmp_path, records) as (runtime, client):
        await catch_up(runtime)
        async with runtime.db.acquire() as conn, conn.transaction():
            assert await repair_once(conn) == (0, "")  # an intact index is left alone
            before = [dict(r) for r in await conn.fetch("SELECT * FROM console_incidents")]
        assert (await login(client, "dev-auditor-token")).status_code == 303
        assert sorted(rows(await client.get("/ui/"))) == sorted(incidents)

        conn = await asyncpg.connect(runtime.settings.database_url)
        try:
            await conn.execute(
                "DELETE FROM audit.console_incidents WHERE incident_id = $1", incidents[1]
            )
            await conn.execute(
                "UPDATE audit.console_incidents SET status = 'closed' WHERE incident_id = $1",
                incidents[2],
            )
            await conn.execute(
                "INSERT INTO audit.console_incidents SELECT 'invented', 999, first_recorded_at,"
                " 999, last_recorded_at, category, severity, status, escalation_level,"
                " acknowledged_at, ack_due_at, breaches, state FROM audit.console_incidents"
                " WHERE incident_id = $1",
                incidents[0],
            )
        finally:
            await conn.close()
        await catch_up(runtime)  # the fold alone never looks back
        assert incidents[1] not in rows(await client.get("/ui/"))

        counted = REGISTRY.get_sample_value(REPAIRS) or 0.0
        async with runtime.db.acquire() as conn, conn.transaction():
            repaired, _ = await repair_once(conn)
            after = [dict(r) for r in await conn.fetch("SELECT * FROM console_incidents")]
        assert repaired == 3
        assert REGISTRY.get_sample_value(REPAIRS) == counted + 3
        key = lambda r: r["incident_id"]  # noqa: E731
        assert sorted(after, key=key) == sorted(before, key=key)
        assert sorted(rows(await client.get("/ui/"))) == sorted(incidents)
