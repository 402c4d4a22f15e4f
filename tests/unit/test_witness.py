"""The witness (services.witness) in process: it cosigns only consistent extensions.

A log of our own making (a `MemoryTree` and a `NoteSigner`) submits checkpoints through
the C2SP tlog-witness HTTP API of an in-process app with its own temporary state folder.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.cosignature import (
    CosignatureSigner,
    CosignatureVerifier,
    append_signatures,
    cosigned_by,
)
from services.audit.merkle import MemoryTree, leaf_hash
from services.witness.app import create_app
from services.witness.config import WitnessSettings, load_key
from services.witness.witness import Submission, parse_request

ORIGIN = "test.example/log"


class Log:
    """A tiny log: leaves, a key, signed checkpoints and add-checkpoint bodies."""

    def __init__(self, signer: NoteSigner, leaves: list[bytes]) -> None:
        self.signer = signer
        self.tree = MemoryTree(leaf_hash(leaf) for leaf in leaves)

    def note(self, size: int) -> str:
        return sign_checkpoint(self.signer, Checkpoint(ORIGIN, size, self.tree.root(size)))

    def body(self, old: int, size: int) -> bytes:
        proof = self.tree.consistency_proof(old, size) if 0 < old < size else []
        lines = [f"old {old}", *(_b64(p) for p in proof)]
        return ("\n".join(lines) + "\n\n" + self.note(size)).encode()


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


@pytest.fixture
def log_signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "witness"


@pytest.fixture
def witness_app(log_signer: NoteSigner, state: Path) -> FastAPI:
    return create_app(WitnessSettings(state_dir=state, logs=(log_signer.verifier_key,)))


@pytest.fixture
async def client(witness_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=witness_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://witness") as http:
        yield http


async def _witness_key(client: httpx.AsyncClient) -> CosignatureVerifier:
    return CosignatureVerifier.from_verifier_key((await client.get("/key")).text)


async def test_first_checkpoint_and_each_extension_get_a_cosignature_that_verifies(
    client: httpx.AsyncClient, log_signer: NoteSigner
) -> None:
    log = Log(log_signer, [f"leaf {i}".encode() for i in range(20)])
    witness = await _witness_key(client)
    first = await client.post("/add-checkpoint", content=log.body(0, 7))
    assert first.status_code == 200, first.text
    assert first.text.startswith("\u2014 incidents.example/witness ")
    cosigned = append_signatures(log.note(7), [first.text])
    assert witness.verify(cosigned).timestamp > 0
    assert cosigned_by(cosigned, [witness]) != []
    second = await client.post("/add-checkpoint", content=log.body(7, 20))
    assert second.status_code == 200, second.text
    assert witness.verify(log.note(20) + second.text)
    # The same checkpoint again (old size = its size) is cosigned once more.
    assert (await client.post("/add-checkpoint", content=log.body(20, 20))).status_code == 200
    origin_hash = hashlib.sha256(ORIGIN.encode()).hexdigest()
    served = await client.get(f"/{origin_hash}/checkpoint")
    assert served.status_code == 200 and log_signer.verifier().verify(served.text)
    assert witness.verify(served.text)


async def test_a_shorter_tree_is_refused_with_the_latest_size(
    client: httpx.AsyncClient, log_signer: NoteSigner
) -> None:
    log = Log(log_signer, [f"leaf {i}".encode() for i in range(20)])
    assert (await client.post("/add-checkpoint", content=log.body(0, 20))).status_code == 200
    # A log cut back to 12 entries that claims the witness last saw 12: 409 and 20.
    cut = await client.post("/add-checkpoint", content=log.body(12, 12))
    assert cut.status_code == 409
    assert cut.text == "20\n"
    assert cut.headers["content-type"].startswith("text/x.tlog.size")
    # Telling the truth about the old size does not help: old above the new size is 400.
    assert (await client.post("/add-checkpoint", content=log.body(20, 12))).status_code == 400
    # A fresh client with old 0 learns the size rather than getting a cosignature.
    again = await client.post("/add-checkpoint", content=log.body(0, 12))
    assert (again.status_code, again.text) == (409, "20\n")


async def test_a_fork_is_refused_same_size_or_larger_and_kept_as_evidence(
    client: httpx.AsyncClient, log_signer: NoteSigner, witness_app: FastAPI
) -> None:
    honest = Log(log_signer, [f"leaf {i}".encode() for i in range(10)])
    assert (await client.post("/add-checkpoint", content=honest.body(0, 10))).status_code == 200
    forged = Log(log_signer, [f"other {i}".encode() for i in range(16)])
    same_size = await client.post("/add-checkpoint", content=forged.body(10, 10))
    assert same_size.status_code == 422
    assert same_size.headers["content-type"].startswith("application/problem+json")
    larger = await client.post("/add-checkpoint", content=forged.body(10, 16))
    assert larger.status_code == 422
    # The honest log still extends normally afterwards.
    for i in range(10, 16):
        honest.tree.append(leaf_hash(f"leaf {i}".encode()))
    assert (await client.post("/add-checkpoint", content=honest.body(10, 16))).status_code == 200
    witness = witness_app.state.witness
    assert [r[2] for r in witness.store.refusals(ORIGIN)] == [422, 422]


async def test_unknown_logs_bad_signatures_and_malformed_bodies(
    client: httpx.AsyncClient, log_signer: NoteSigner
) -> None:
    stranger = NoteSigner.generate("other.example/log")
    other = sign_checkpoint(stranger, Checkpoint("other.example/log", 1, leaf_hash(b"x")))
    assert (await client.post("/add-checkpoint", content=f"old 0\n\n{other}")).status_code == 404
    impostor = NoteSigner.generate(ORIGIN)  # same origin, another key
    log = Log(impostor, [b"a", b"b"])
    assert (await client.post("/add-checkpoint", content=log.body(0, 2))).status_code == 403
    for body in [b"", b"old 01\n\n", b"new 0\n\nx", b"old 0\nnot-base64\n\nx", b"\xff\n\n"]:
        answer = await client.post("/add-checkpoint", content=body)
        assert answer.status_code == 400, body
    assert (await client.get("/" + "0" * 64 + "/checkpoint")).status_code == 404


def test_a_request_body_parses_into_old_size_proof_and_note() -> None:
    parsed = parse_request(b"old 3\n" + (_b64(b"\x01" * 32) + "\n").encode() + b"\nnote\n")
    assert isinstance(parsed, Submission)
    assert (parsed.old_size, parsed.proof, parsed.note) == (3, [b"\x01" * 32], "note\n")


def test_the_key_is_created_once_in_the_state_folder(tmp_path: Path) -> None:
    first = load_key(tmp_path, "w.example")
    assert (tmp_path / "witness-key.pem").stat().st_mode & 0o777 == 0o600
    again = load_key(tmp_path, "w.example")
    assert isinstance(again, CosignatureSigner)
    assert again.verifier_key == first.verifier_key
