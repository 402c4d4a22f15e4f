"""Independent check: the witness's cosigned notes verify with Go's sumdb/note package.

golang.org/x/mod/sumdb/note (Debian's golang-golang-x-mod-dev, built in GOPATH mode
with golang-go) parses the note and checks the log's signature; the cosignature is
checked by a 60-line Go verifier written from the C2SP tlog-cosignature text
(tests/data/go/cosigned_note.go). Skipped where Go or the package is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.cosignature import append_signatures
from services.audit.merkle import MemoryTree, leaf_hash
from services.witness.app import create_app
from services.witness.config import WitnessSettings

GOPATH = Path("/usr/share/gocode")
PROGRAM = Path(__file__).resolve().parent.parent / "data" / "go" / "cosigned_note.go"
NOTE_PACKAGE = GOPATH / "src" / "golang.org" / "x" / "mod" / "sumdb" / "note"

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None or not NOTE_PACKAGE.is_dir(),
    reason="needs golang-go and golang-golang-x-mod-dev (apt)",
)


def _go_check(
    tmp_path: Path, log_key: str, witness_key: str, note: str
) -> subprocess.CompletedProcess[str]:
    note_file = tmp_path / "note.txt"
    note_file.write_text(note, encoding="utf-8")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(tmp_path / "gocache"),
        "GOFLAGS": "",
    }
    return subprocess.run(
        ["go", "run", str(PROGRAM), log_key, witness_key, str(note_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_a_cosigned_checkpoint_verifies_with_go_sumdb_note(tmp_path: Path) -> None:
    log = NoteSigner.generate("go.example/log")
    tree = MemoryTree(leaf_hash(f"entry {i}".encode()) for i in range(5))
    note = sign_checkpoint(log, Checkpoint(log.name, 5, tree.root()))
    settings = WitnessSettings(state_dir=tmp_path / "w", logs=(log.verifier_key,))
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://witness") as http:
        answer = await http.post("/add-checkpoint", content=f"old 0\n\n{note}".encode())
        witness_key = (await http.get("/key")).text.strip()
    assert answer.status_code == 200, answer.text
    cosigned = append_signatures(note, [answer.text])

    checked = _go_check(tmp_path, log.verifier_key, witness_key, cosigned)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("ok go.example/log 5 ")

    # One flipped bit in the cosignature: Go refuses the note.
    line = answer.text
    body = line[:-1]
    flipped = body[:-6] + ("A" if body[-6] != "A" else "B") + body[-5:] + "\n"
    refused = _go_check(tmp_path, log.verifier_key, witness_key, note + flipped)
    assert refused.returncode == 1, refused.stdout
