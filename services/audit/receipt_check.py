"""`incidents receipt check`: a reporter checks that the ledger held, and still holds, the report.

The proof comes from the receipt view (``ledger_proof``, fetched with the receipt and
secret) or from a file saved earlier (``--save``, then ``--proof``). Checked offline:
the checkpoint is signed by the log's key and, with ``--witness``, cosigned by a quorum
of witnesses; the leaf is the report's submission (its type, incident and event id);
the inclusion proof leads from the leaf to the checkpoint's root. Then, against the
current log (``--audit``, skipped with ``--offline``): the current signed head is at
least as large and an RFC 9162 consistency proof shows it extends the checkpoint, so
the report is still in the log. Exit codes: 0 all good, 1 a check failed, 2 the
command could not do its job. docs/witness.md tells the whole story.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import typer

from services.audit import merkle
from services.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteError,
    NoteVerifier,
    parse_verifier_key,
    verify_checkpoint,
)
from services.audit.cosignature import CosignatureVerifier, cosigned_by
from services.domain.events import ReportSubmitted

PROOF_FORMAT = "incidents.receipt.proof/v1"
_EXIT_FAILED = 1
_EXIT_ERROR = 2

receipt_app = typer.Typer(
    name="receipt",
    help="Check the proof that the audit ledger holds an anonymous report.",
    no_args_is_help=True,
    add_completion=False,
)


class ProofFailed(Exception):
    """The proof does not hold (the message says which check failed)."""


def check_proof(
    proof: Any, log: NoteVerifier, witnesses: Sequence[str] = (), quorum: int = 1
) -> tuple[Checkpoint, list[str]]:
    """Check a receipt proof offline; the checkpoint and what was checked, or `ProofFailed`."""
    if not isinstance(proof, dict) or proof.get("format") != PROOF_FORMAT:
        raise ProofFailed(f"not a receipt proof ({PROOF_FORMAT})")
    try:
        checkpoint = verify_checkpoint(log, proof["checkpoint"])
    except (NoteError, CheckpointError, KeyError) as exc:
        raise ProofFailed(f"the checkpoint is not signed by the log's key: {exc}") from None
    done = [f"checkpoint of {checkpoint.origin} at size {checkpoint.tree_size}: signed by the log"]
    if witnesses:
        try:
            keys = {CosignatureVerifier.from_verifier_key(k) for k in witnesses}
        except NoteError as exc:
            raise ProofFailed(f"unusable --witness key: {exc}") from None
        found = cosigned_by(proof["checkpoint"], keys)
        if len(found) < quorum:
            raise ProofFailed(
                f"{len(found)} valid witness cosignature(s) of the given keys, {quorum} required"
            )
        done.append(f"cosigned by {', '.join(c.name for c in found)}")
    try:
        leaf = base64.b64decode(proof["leaf"], validate=True)
        body = json.loads(leaf)
        index, size = proof["index"], proof["tree_size"]
        hashes = [bytes.fromhex(h) for h in proof["inclusion_proof"]]
        event = body["event"]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProofFailed(f"the proof is malformed: {exc!r}") from None
    if size != checkpoint.tree_size or body.get("index") != index:
        raise ProofFailed("the proof's sizes or index do not match its checkpoint and leaf")
    if (event.get("type"), event.get("subject"), event.get("id")) != (
        ReportSubmitted.TYPE,
        proof.get("incident_id"),
        proof.get("event_id"),
    ):
        raise ProofFailed("the leaf is not this report's submission")
    try:
        merkle.verify_inclusion(merkle.leaf_hash(leaf), index, size, hashes, checkpoint.root_hash)
    except merkle.ProofError as exc:
        raise ProofFailed(f"the inclusion proof does not verify: {exc}") from None
    done.append(f"the report's submission is entry {index} of that tree (inclusion proof)")
    return checkpoint, done


def check_still_contained(audit_url: str, log: NoteVerifier, then: Checkpoint) -> str:
    """Prove the current signed head extends `then`; `ProofFailed` if it does not."""
    base = audit_url.rstrip("/")
    with httpx.Client(timeout=30.0) as http:
        head = http.get(f"{base}/v1/ledger/head").raise_for_status().json()
        try:
            now = verify_checkpoint(log, head["checkpoint"])
        except (NoteError, CheckpointError, KeyError) as exc:
            raise ProofFailed(f"the current head is not signed by the log's key: {exc}") from None
        if now.tree_size < then.tree_size:
            raise ProofFailed(
                f"the log now has {now.tree_size} entries, fewer than the {then.tree_size} of"
                " the checkpoint that held the report: it was cut back"
            )
        proof: list[bytes] = []
        if now.tree_size > then.tree_size:
            answer = http.get(
                f"{base}/v1/ledger/proofs/consistency",
                params={"first": then.tree_size, "second": now.tree_size},
            ).raise_for_status()
            proof = [bytes.fromhex(h) for h in answer.json()["proof"]]
    why = merkle.consistency_failure(
        then.tree_size, now.tree_size, proof, then.root_hash, now.root_hash
    )
    if why is not None:
        raise ProofFailed(
            f"the current head of size {now.tree_size} does not extend the checkpoint of"
            f" size {then.tree_size}: the log was rewritten ({why})"
        )
    return f"the current head of size {now.tree_size} extends it (consistency proof)"


def _fetch_proof(intake: str, receipt: str, secret: str) -> Any:
    url = f"{intake.rstrip('/')}/v1/receipts/{receipt}"
    answer = httpx.get(url, headers={"X-Receipt-Secret": secret}, timeout=30.0)
    if answer.status_code != 200:
        raise typer.BadParameter(f"the receipt view answered {answer.status_code}")
    return answer.json().get("ledger_proof")


@receipt_app.command()
def check(
    receipt: str | None = typer.Option(None, "--receipt", help="The receipt of the report."),
    secret: str | None = typer.Option(
        None, "--secret", envvar="INCIDENTS_RECEIPT_SECRET", help="The receipt's secret."
    ),
    intake: str = typer.Option("http://127.0.0.1:8001", "--intake", help="Intake's base URL."),
    proof_file: Path | None = typer.Option(
        None, "--proof", help="Check a proof saved earlier instead of fetching it."
    ),
    save: Path | None = typer.Option(None, "--save", help="Save the fetched proof here."),
    audit: str = typer.Option("http://127.0.0.1:8004", "--audit", help="Audit's base URL."),
    key: str | None = typer.Option(
        None,
        "--key",
        help="The log's verifier key. Without it, the key audit serves is used (and shown).",
    ),
    witness: list[str] = typer.Option(
        [], "--witness", help="A witness verifier key whose cosignature counts (repeatable)."
    ),
    quorum: int = typer.Option(1, "--quorum", min=1, help="Cosignatures required."),
    offline: bool = typer.Option(
        False, "--offline", help="Only the proof itself; do not ask the current log."
    ),
) -> None:
    """Check that the ledger held the report (inclusion under a signed, witnessed
    checkpoint) and, unless --offline, still holds it (consistency to the current head)."""
    try:
        if proof_file is not None:
            proof = json.loads(proof_file.read_text(encoding="utf-8"))
            proof = proof.get("ledger_proof", proof) if isinstance(proof, dict) else proof
        elif receipt and secret:
            proof = _fetch_proof(intake, receipt, secret)
            if proof is None:
                typer.echo("no proof yet: the report is not under a signed head (try later)")
                raise typer.Exit(_EXIT_FAILED)
            if save is not None:
                save.write_text(json.dumps(proof, indent=2) + "\n", encoding="utf-8")
                typer.echo(f"proof saved to {save}")
        else:
            raise typer.BadParameter("give --receipt and --secret, or --proof")
        if key is None:
            if offline:
                raise typer.BadParameter("--offline needs the log's --key")
            key = httpx.get(f"{audit.rstrip('/')}/v1/ledger/public-key", timeout=30.0).json()[
                "verifier_key"
            ]
            typer.echo(f"log key (served by audit, compare it with one you trust): {key}")
        log = parse_verifier_key(key or "")
    except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(_EXIT_ERROR) from None
    try:
        then, done = check_proof(proof, log, witness, quorum)
        for line in done:
            typer.echo(f"ok: {line}")
        if not offline:
            typer.echo(f"ok: {check_still_contained(audit, log, then)}")
    except ProofFailed as exc:
        typer.echo(f"FAILED: {exc}")
        raise typer.Exit(_EXIT_FAILED) from None
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        typer.echo(f"error: cannot read the current log at {audit}: {exc!r}", err=True)
        raise typer.Exit(_EXIT_ERROR) from None
    typer.echo("the ledger held the report" + ("" if offline else ", and still does"))
