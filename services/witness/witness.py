"""The witness's one use case: `add-checkpoint` (c2sp.org/tlog-witness), checked then cosigned.

A request body is ``old <size>\\n``, up to 63 base64 consistency-proof lines, an empty
line, then the log's signed checkpoint note. The witness cosigns only a checkpoint that
is validly signed by the log's configured key and proven consistent with the latest
checkpoint it cosigned for that origin, so it never cosigns a smaller or forked tree.
Answers, as the spec fixes them: 200 with the cosignature line; 400 malformed or old
size above the checkpoint's; 403 no valid signature of the log; 404 unknown origin;
409 with ``<latest size>\\n`` (``text/x.tlog.size``) when the old size is not the size
it last cosigned; 422 when the proof or the roots do not match.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteError,
    NoteVerifier,
    b64decode_strict,
    split_note,
)
from services.audit.cosignature import CosignatureSigner, append_signatures
from services.audit.merkle import EMPTY_ROOT, HASH_SIZE, ProofError, verify_consistency
from services.witness.store import Store

MAX_PROOF_LINES = 63
MAX_BODY_BYTES = 64 * 1024
SIZE_CONTENT_TYPE = "text/x.tlog.size"


@dataclass(frozen=True)
class Answer:
    """What to answer: a status, a short reason (for logs and problem details), a body."""

    status: int
    reason: str
    body: str = ""
    latest_size: int | None = None


@dataclass(frozen=True)
class Submission:
    old_size: int
    proof: list[bytes]
    note: str


def parse_request(body: bytes) -> Submission | Answer:
    """The parts of an add-checkpoint body, or a 400 `Answer` saying what is wrong."""
    if len(body) > MAX_BODY_BYTES:
        return Answer(400, "the body is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Answer(400, "the body is not UTF-8")
    head, blank, note = text.partition("\n\n")
    if not blank:
        return Answer(400, "no empty line before the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    size_text = first[4:] if first.startswith("old ") else ""
    if not size_text.isascii() or not size_text.isdigit() or size_text != str(int(size_text)):
        return Answer(400, "the first line must be `old <size>` in plain decimal")
    proof_lines = lines[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        return Answer(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for line in proof_lines:
        value = b64decode_strict(line)
        if value is None or len(value) != HASH_SIZE:
            return Answer(400, "a consistency proof line is not base64 of a 32-byte hash")
        proof.append(value)
    return Submission(int(size_text), proof, note)


class Witness:
    """Checks and cosigns checkpoints of the configured logs; its state lives in `store`."""

    def __init__(
        self, signer: CosignatureSigner, logs: dict[str, NoteVerifier], store: Store
    ) -> None:
        self.signer = signer
        self.logs = logs
        self.store = store

    def add_checkpoint(self, body: bytes, now: int) -> Answer:
        """Handle one add-checkpoint request at POSIX time `now` (seconds, > 0)."""
        parsed = parse_request(body)
        if isinstance(parsed, Answer):
            return parsed
        try:
            text, _signatures = split_note(parsed.note)
            origin = Checkpoint.parse(text).origin
        except (NoteError, CheckpointError):
            return Answer(400, "the checkpoint is not a well-formed signed note")
        verifier = self.logs.get(origin)
        if verifier is None:
            return Answer(404, "unknown log origin")
        try:
            checkpoint = Checkpoint.parse(verifier.verify(parsed.note))
        except (NoteError, CheckpointError):
            return Answer(403, "no valid signature of the log's key")
        if parsed.old_size > checkpoint.tree_size:
            return Answer(400, "the old size exceeds the checkpoint's size")
        if checkpoint.tree_size == 0 and checkpoint.root_hash != EMPTY_ROOT:
            return Answer(422, "a checkpoint of size 0 must have the empty tree's root")
        with self.store.transaction() as tx:
            latest = tx.latest(origin)
            known = latest.tree_size if latest is not None else 0
            answer = self._check(parsed, checkpoint, known, latest.root_hash if latest else None)
            if answer is not None:
                if answer.status == 422:  # validly signed but inconsistent: keep as evidence
                    tx.refuse(
                        origin,
                        parsed.old_size,
                        checkpoint.tree_size,
                        answer.status,
                        answer.reason,
                        parsed.note,
                        now,
                    )
                return answer
            line = self.signer.cosign(checkpoint.body(), now)
            tx.save(
                origin,
                checkpoint.tree_size,
                checkpoint.root_hash,
                append_signatures(parsed.note, [line]),
                now,
            )
        return Answer(200, "cosigned", line)

    @staticmethod
    def _check(
        parsed: Submission, checkpoint: Checkpoint, known: int, known_root: bytes | None
    ) -> Answer | None:
        """None when `checkpoint` extends what was cosigned; else the refusal."""
        if parsed.old_size != known:
            return Answer(409, "the old size is not the latest cosigned size", f"{known}\n", known)
        if known == 0 or known_root is None:
            if parsed.proof:
                return Answer(422, "a proof from size 0 must be empty")
            return None
        if checkpoint.tree_size == known:
            if parsed.proof or checkpoint.root_hash != known_root:
                return Answer(422, "same size, different root: a fork")
            return None
        try:
            verify_consistency(
                known, checkpoint.tree_size, parsed.proof, known_root, checkpoint.root_hash
            )
        except ProofError:
            return Answer(422, "the consistency proof does not verify: not an extension")
        return None
