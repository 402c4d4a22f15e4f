"""Copies of records in the ledger, on PostgreSQL through the audit API (review L2).

A dead letter carries the record a service could not take (`original_b64`, dead letters
of dead letters nest them). The raw entries route judges such a copy with the incident
it belongs to; when that incident cannot be told (bytes a parser refuses, a report
wrapped in more dead letters than are unwrapped) the copy is withheld from every
auditor, with nothing of the original kept. Dead letters are no incident's events: the
incident routes do not serve them under their subject, `deadletter`.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from services.audit.app import create_app
from services.audit.ledger import append_records
from services.audit.verify import HttpSource, verify_ledger
from services.domain.envelope import Envelope
from services.domain.events import make_event
from services.infra.settings import AuditSettings, CommonSettings
from tests.helpers import event_record, serving

pytestmark = pytest.mark.integration
AUDITOR = {"Authorization": "Bearer dev-auditor-token"}  # p-audit
DIGEST = "sha256:" + "ab" * 32
SECRET = "the store manager took the till money"


def _event(kind: str, subject: str, data: dict[str, Any], source: str = "/tests") -> Envelope:
    return make_event(
        kind, subject=subject, data=data, source=source, time=datetime.now(UTC), actor="t"
    )


def _report(incident: str, accused: list[str], text: str = SECRET) -> Envelope:
    data = {
        "category": "fraud",
        "summary": text,
        "description": text,
        "accused": accused,
        "report_digest": DIGEST,
    }
    return _event("incident.report.submitted.v1", incident, data)


def _dead(original: bytes, layers: int = 1) -> bytes:
    """`original` inside `layers` dead letters, as services.infra.runtime writes them."""
    for _ in range(layers):
        data = {
            "reason": "handler failed: ValueError",
            "source_topic": "incident.reports",
            "source_partition": 0,
            "source_offset": 7,
            "original_b64": base64.b64encode(original).decode(),
        }
        letter = _event("incident.input.rejected.v1", "deadletter", data, "/services/triage")
        original = letter.to_bytes()
    return original


def _raw(topic: str, offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(topic, 0, offset, 0, 0, None, value, None, 0, len(value), ())


async def test_copies_whose_incident_cannot_be_told_are_withheld_from_every_auditor(
    settings: CommonSettings, tmp_path: Path
) -> None:
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    person = {"person_id": "p-under-audit", "manager_id": "p-audit", "unit": "group"}
    mine_report = _report(mine, ["p-under-audit"])  # excludes p-audit: his line
    other_report = _report(other, [], "the fridge is broken")  # p-audit reads this one
    unparseable = f"accused p-under-audit: {SECRET}".encode()
    records = [
        event_record(
            "directory", _event("directory.person.upserted.v1", "p-under-audit", person), 0
        ),
        event_record("incident.reports", mine_report, 1),
        event_record("incident.reports", other_report, 2),
        _raw("incident.deadletter", 3, _dead(unparseable)),  # 3: untold
        _raw("incident.deadletter", 4, _dead(mine_report.to_bytes(), 4)),  # 4: untold
        _raw("incident.deadletter", 5, _dead(other_report.to_bytes(), 4)),  # 5: untold
        _raw("incident.deadletter", 6, _dead(other_report.to_bytes())),  # 6: other's, shown
        _raw("incident.reports", 7, unparseable),  # 7: rejected input, untold
    ]
    app = create_app(
        AuditSettings(
            **settings.model_dump(), signing_key_file=tmp_path / "k.pem", checkpoint_interval=3600
        )
    )
    async with serving(app, "http://audit") as client:
        async with app.state.runtime.db.acquire() as conn, conn.transaction():
            await append_records(conn, records)
        answer = await client.get("/v1/ledger/entries", headers=AUDITOR)
        assert answer.status_code == 200, answer.text
        entries = {e["index"]: e for e in answer.json()["entries"]}
        withheld = sorted(i for i, e in entries.items() if e.get("withheld"))
        assert withheld == [1, 3, 4, 5, 7]  # his incident's report, and the untold copies
        assert SECRET not in answer.text
        assert base64.b64encode(unparseable).decode() not in answer.text
        for index in (3, 4, 5, 7):
            assert entries[index]["untold"] is True
            kept = {"index", "leaf_hash", "recorded_at", "topic", "partition", "offset"}
            assert kept <= set(entries[index])
            assert "leaf" not in entries[index] and "event" not in entries[index]
        assert entries[3]["dead_letter"] == {
            "rejected_by": "/services/triage",
            "source_topic": "incident.reports",
            "source_partition": 0,
            "source_offset": 7,
        }
        assert "dead_letter" not in entries[7] and "reason" not in json.dumps(entries[7])
        assert set(entries[1]) == {
            *("index", "leaf_hash", "recorded_at", "withheld", "leaf_ok", "indexed_ok")
        }
        assert entries[6]["event"]["type"] == "incident.input.rejected.v1"  # told, not his

        # no incident route serves dead letters as the events of an incident `deadletter`
        for path in ("timeline", "timeline?content=true", "state", "knowledge", "deliveries"):
            found = await client.get(f"/v1/incidents/deadletter/{path}", headers=AUDITOR)
            assert found.status_code == 404, (path, found.text)
        nothing = await client.get(f"/v1/incidents/{uuid.uuid4()}/timeline", headers=AUDITOR)
        assert found.json() | {"instance": None} == nothing.json() | {"instance": None}

        # the tree still verifies: withheld entries keep their leaf hash and time
        report = await verify_ledger(HttpSource("http://audit", "dev-auditor-token", client=client))
        assert report.ok and report.withheld == 5, report
