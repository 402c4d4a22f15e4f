"""The index columns of entries withheld from the verifier are still checked (review D3).

A superuser (the accused, a DBA) files a report naming the auditor who runs verify, so
that incident J excludes her, then points the `incident_id` column of the report of his
own case at J (triggers off). Before: the entries route chose what to withhold by that
column, so the moved report was served withheld, its columns never compared, and verify
passed while the report had left its case's timeline. Now what is withheld is read from
the leaf (the report is still its own case's, served and compared in full), an entry
of J whose column was pointed away still counts in J's judgement, and each withheld
entry carries the service's verdicts `leaf_ok` and `indexed_ok`, so a column moved out
of J, or a leaf of J edited behind its stored hash, fails her verify too.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import ConsumerRecord

from services.audit.app import create_app
from services.audit.ledger import append_records
from services.audit.verify import HttpSource, VerifyReport, verify_ledger
from services.domain.events import make_event
from services.infra.runtime import Runtime
from services.infra.settings import AuditSettings, CommonSettings
from tests.helpers import event_record, serving

pytestmark = pytest.mark.integration
DIGEST = "sha256:" + "ab" * 32
AUDITOR = {"authorization": "Bearer dev-auditor-token"}  # p-audit


def ledger_record(offset: int, kind: str, subject: str, data: dict[str, Any]) -> ConsumerRecord:
    event = make_event(
        kind, subject=subject, data=data, source="/tests", time=datetime.now(UTC), actor="t"
    )
    return event_record("incident.reports", event, offset)


def report_record(offset: int, incident: str, accused: list[str]) -> ConsumerRecord:
    data = {
        "category": "fraud",
        "summary": "s",
        "description": "d",
        "accused": accused,
        "report_digest": DIGEST,
    }
    return ledger_record(offset, "incident.report.submitted.v1", incident, data)


CASE, TRAP, OTHER = (str(uuid.uuid4()) for _ in range(3))
RECORDS = [
    report_record(0, CASE, ["p-wang"]),
    ledger_record(1, "incident.acknowledged.v1", CASE, {"principal": "p-chen", "level": 1}),
    report_record(2, TRAP, ["p-audit"]),  # anyone may file it: it excludes the verifier
    ledger_record(3, "incident.acknowledged.v1", TRAP, {"principal": "p-chen", "level": 1}),
    report_record(4, OTHER, []),
]


@asynccontextmanager
async def audit_with(
    settings: CommonSettings, tmp_path: Path, records: list[ConsumerRecord]
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    """Audit's app serving in-process over real PostgreSQL, `records` appended to its
    ledger: its runtime and a client."""
    app = create_app(
        AuditSettings(
            **settings.model_dump(), signing_key_file=tmp_path / "k.pem", checkpoint_interval=3600
        )
    )
    async with serving(app, "https://audit") as client:
        runtime: Runtime = app.state.runtime
        async with runtime.db.acquire() as conn, conn.transaction():
            await append_records(conn, records)
        yield runtime, client


async def _tamper(url: str, statement: str, *args: Any) -> None:
    """A superuser's edit of `audit.ledger` with its append-only trigger off."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit.ledger DISABLE TRIGGER ledger_no_update")
            await conn.execute(statement, *args)
            await conn.execute("ALTER TABLE audit.ledger ENABLE TRIGGER ledger_no_update")
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("edit", "index"),
    [
        ("the case's report moved into the incident that excludes her", 0),
        ("an entry of that incident moved out of it", 3),
        ("an entry of that incident pointed at no incident", 2),
        ("a leaf of that incident edited behind its stored hash", 3),
    ],
)
async def test_an_edit_in_or_out_of_an_incident_that_excludes_the_verifier_fails_verify(
    settings: CommonSettings, tmp_path: Path, edit: str, index: int
) -> None:
    async with audit_with(settings, tmp_path, RECORDS) as (runtime, client):

        async def verify() -> VerifyReport:
            return await verify_ledger(
                HttpSource("https://audit", "dev-auditor-token", client=client)
            )

        before = await verify()
        assert before.ok and before.withheld == 2, before  # TRAP's two entries
        assert before.unindexed == 0, before
        url = runtime.settings.database_url
        if "moved into" in edit:
            await _tamper(url, "UPDATE audit.ledger SET incident_id = $1 WHERE idx = 0", TRAP)
            # the report left its case's timeline: the column is what the reads select by
            timeline = await client.get(f"/v1/incidents/{CASE}/timeline", headers=AUDITOR)
            types = [e["event"]["type"] for e in timeline.json()["events"]]
            assert types == ["incident.acknowledged.v1"]
        elif "moved out" in edit:
            await _tamper(url, "UPDATE audit.ledger SET incident_id = $1 WHERE idx = 3", OTHER)
        elif "no incident" in edit:
            await _tamper(url, "UPDATE audit.ledger SET incident_id = NULL WHERE idx = 2")
        else:  # the acknowledgement now names someone else; the leaf_hash column is kept
            await _tamper(
                url,
                "UPDATE audit.ledger SET leaf = convert_to(replace(convert_from(leaf, 'UTF8'),"
                " 'p-chen', 'p-zhou'), 'UTF8') WHERE idx = 3",
            )
        entries = (await client.get("/v1/ledger/entries", headers=AUDITOR)).json()["entries"]
        served = entries[index]
        if index:  # still withheld from her (its leaf is TRAP's), with the verdicts
            assert served["withheld"] is True and "leaf" not in served, served
            assert served["leaf_ok"] is ("edited" not in edit), served
            assert served["indexed_ok"] is False, served
        else:  # its leaf is CASE's: served in full, its columns compared by the verifier
            assert "withheld" not in served and served["indexed"]["incident_id"] == TRAP
        after = await verify()
        assert not after.ok and index in after.bad_indexes, (edit, after)
        assert after.withheld == 2, after  # withheld by the leaf: the edit moved nothing


async def test_withheld_entries_reveal_only_verdicts(
    settings: CommonSettings, tmp_path: Path
) -> None:
    """Untouched, a withheld entry says nothing of its incident: index, leaf hash, time
    and two verdicts, true; the same for every entry withheld, whatever its incident."""
    async with audit_with(settings, tmp_path, RECORDS) as (_, client):
        entries = (await client.get("/v1/ledger/entries", headers=AUDITOR)).json()["entries"]
        withheld = [e for e in entries if e.get("withheld")]
        assert [e["index"] for e in withheld] == [2, 3]
        for entry in withheld:
            assert set(entry) == {
                *("index", "leaf_hash", "recorded_at", "withheld", "leaf_ok", "indexed_ok")
            }
            assert entry["leaf_ok"] is True and entry["indexed_ok"] is True
