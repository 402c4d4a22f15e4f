"""The reporter holds proof: the receipt view carries the ledger proof, and
`incidents receipt check` verifies it, offline and against the current log.

Intake runs in process; audit and a witness run as real HTTP servers (intake fetches
the proof from audit over HTTP, as it does in the stack).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from services.audit.app import create_app as create_audit
from services.audit.checkpoint import NoteSigner
from services.cli import app as cli
from services.infra.settings import AuditSettings, CommonSettings, IntakeSettings
from services.witness.app import create_app as create_witness
from services.witness.config import WitnessSettings, load_key
from tests.helpers import eventually
from tests.integration import test_tracing
from tests.integration.test_reports import REPORT, Intake, running_intake
from tests.integration.test_witness_cosigning import _free_port, _serve, _stop

pytestmark = pytest.mark.integration
spans = test_tracing.spans  # the fixture collecting spans in memory


@pytest.fixture
async def stack(
    settings: CommonSettings, tmp_path: Path
) -> AsyncIterator[tuple[Intake, str, str, str]]:
    log = NoteSigner.generate("test.example/receipts-ledger")
    (tmp_path / "key.pem").write_bytes(log.private_pem())
    witness_key = load_key(tmp_path / "w", "incidents.example/witness").verifier_key
    witness_port, audit_port = _free_port(), _free_port()
    witness = await _serve(
        create_witness(WitnessSettings(state_dir=tmp_path / "w", logs=(log.verifier_key,))),
        witness_port,
    )
    audit_url = f"http://127.0.0.1:{audit_port}"
    audit_settings = AuditSettings(
        **settings.model_dump(),
        ledger_origin=log.name,
        signing_key_file=tmp_path / "key.pem",
        checkpoint_interval=0.2,
        witnesses=((f"http://127.0.0.1:{witness_port}", witness_key),),
    )
    audit = await _serve(create_audit(audit_settings), audit_port)
    intake_settings = IntakeSettings(
        **{**settings.model_dump(), "outbox_poll_interval": 0.1}, audit_url=audit_url
    )
    try:
        async with running_intake(intake_settings) as intake:
            yield intake, audit_url, log.verifier_key, witness_key
    finally:
        await _stop(*audit)
        await _stop(*witness)


async def _proof(intake: Intake, receipt: str, secret: str) -> dict[str, Any] | None:
    answer = await intake.client.get(
        f"/v1/receipts/{receipt}", headers={"x-receipt-secret": secret}
    )
    assert answer.status_code == 200
    proof: dict[str, Any] | None = answer.json()["ledger_proof"]
    return proof if proof and proof["checkpoint"].count("\u2014") >= 2 else None


def _check(*args: str) -> Any:
    return CliRunner().invoke(cli, ["receipt", "check", *args])


async def test_the_receipt_proof_shows_the_log_held_and_still_holds_the_report(
    stack: tuple[Intake, str, str, str], tmp_path: Path
) -> None:
    intake, audit_url, log_key, witness_key = stack
    answer = await intake.client.post("/v1/reports", json=REPORT)
    assert answer.status_code == 202
    receipt, secret = answer.json()["receipt"], answer.json()["secret"]
    proof = await eventually(lambda: _proof(intake, receipt, secret), timeout=30)
    saved = tmp_path / "proof.json"
    saved.write_text(json.dumps(proof))

    # Later: the log has grown (another report, another head); the proof still checks.
    size = proof["tree_size"]
    assert (await intake.client.post("/v1/reports", json=REPORT)).status_code == 202
    await eventually(lambda: _grown(intake, receipt, secret, size), timeout=30)
    online = await asyncio.to_thread(
        _check, "--proof", str(saved), "--audit", audit_url, "--key", log_key,
        "--witness", witness_key,
    )  # fmt: skip
    assert online.exit_code == 0, online.output
    assert "consistency proof" in online.output and "still does" in online.output

    offline = await asyncio.to_thread(_check, "--proof", str(saved), "--offline", "--key", log_key)
    assert offline.exit_code == 0, offline.output

    # Someone else's log key, or a leaf that is not this report: the check fails.
    stranger = NoteSigner.generate("test.example/receipts-ledger").verifier_key
    other_key = await asyncio.to_thread(
        _check, "--proof", str(saved), "--offline", "--key", stranger
    )
    assert other_key.exit_code == 1 and "not signed" in other_key.output
    leaf = json.loads(base64.b64decode(proof["leaf"]))
    leaf["event"]["subject"] = "someone-else"
    forged = {**proof, "leaf": base64.b64encode(json.dumps(leaf).encode()).decode()}
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    bad = await asyncio.to_thread(
        _check, "--proof", str(tmp_path / "forged.json"), "--offline", "--key", log_key
    )
    assert bad.exit_code == 1 and "FAILED" in bad.output


async def _grown(intake: Intake, receipt: str, secret: str, size: int) -> bool:
    proof = await _proof(intake, receipt, secret)
    return proof is not None and proof["tree_size"] > size


async def test_a_receipt_view_leaves_no_trace_in_audit_either(
    stack: tuple[Intake, str, str, str], spans: InMemorySpanExporter
) -> None:
    """The reporter's receipt views are not recorded (docs/reporters.md): intake's route
    is untraced, and so is the proof route of audit it calls, whose span would keep the
    submission's event id (so the incident) and the instant she looked."""
    intake, *_ = stack
    answer = await intake.client.post("/v1/reports", json=REPORT)
    assert answer.status_code == 202
    receipt, secret = answer.json()["receipt"], answer.json()["secret"]
    proof = await eventually(lambda: _proof(intake, receipt, secret), timeout=30)
    spans.clear()
    assert await _proof(intake, receipt, secret) == proof
    for span in spans.get_finished_spans():
        seen = f"{span.name} {dict(span.attributes or {})}"
        assert "proofs" not in seen and proof["event_id"] not in seen, seen
        assert receipt not in seen, seen
