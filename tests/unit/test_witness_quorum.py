"""verify's witness quorum (`check_witness_quorum`): N valid cosignatures of given keys."""

from __future__ import annotations

import json
from pathlib import Path

from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.cosignature import CosignatureSigner, append_signatures
from services.audit.merkle import leaf_hash
from services.audit.verify import VerifyReport, check_witness_quorum, key_document, witness_check

LOG = NoteSigner.generate("q.example/log")
W1 = CosignatureSigner.generate("w1.example")
W2 = CosignatureSigner.generate("w2.example")
STRANGER = CosignatureSigner.generate("w3.example")


def _head(size: int, *witnesses: CosignatureSigner) -> dict[str, object]:
    checkpoint = Checkpoint(LOG.name, size, leaf_hash(str(size).encode()))
    note = sign_checkpoint(LOG, checkpoint)
    lines = [w.cosign(checkpoint.body(), 1_700_000_000 + size) for w in witnesses]
    return {
        "tree_size": size,
        "checkpoint": note,
        "cosigned_checkpoint": append_signatures(note, lines),
    }


KEYS = [W1.verifier_key, W2.verifier_key]


def test_the_largest_head_with_the_quorum_is_named() -> None:
    heads = [_head(5, W1, W2), _head(9, W1), _head(12)]
    two = check_witness_quorum(heads, LOG.verifier_key, KEYS, 2)
    assert (two.ok, two.tree_size, two.latest_size) == (True, 5, 12)
    one = check_witness_quorum(heads, LOG.verifier_key, KEYS, 1)
    assert (one.ok, one.tree_size, one.cosigners) == (True, 9, ("w1.example",))


def test_too_few_cosignatures_unknown_witnesses_or_a_forged_line_fail() -> None:
    assert not check_witness_quorum([_head(5, W1, STRANGER)], LOG.verifier_key, KEYS, 2).ok
    forged = _head(5, W1, W2)
    note = str(forged["cosigned_checkpoint"])
    forged["cosigned_checkpoint"] = note.replace("\n5\n", "\n6\n", 1)  # the log's and ours break
    assert not check_witness_quorum([forged], LOG.verifier_key, KEYS, 1).ok
    other_log = NoteSigner.generate("q.example/log")
    assert not check_witness_quorum([_head(5, W1, W2)], other_log.verifier_key, KEYS, 1).ok


def test_a_quorum_larger_than_the_keys_given_is_refused() -> None:
    outcome = check_witness_quorum([_head(5, W1, W2)], LOG.verifier_key, KEYS, 3)
    assert not outcome.ok and "distinct" in outcome.reason
    assert not check_witness_quorum([], LOG.verifier_key, ["nonsense"], 1).ok


def test_a_bundle_whose_head_carries_the_cosignatures_passes_verify_witness(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({**key_document(LOG.verifier()), "head": _head(5, W1)}))
    passed = VerifyReport(ok=True, key_id=LOG.key_id)
    assert witness_check(passed, None, bundle, KEYS, 1).ok and passed.ok
    failed = VerifyReport(ok=True, key_id=LOG.key_id)
    outcome = witness_check(failed, None, bundle, KEYS, 2)
    assert not outcome.ok and not failed.ok
    assert "witness quorum not met" in (failed.reason or "")
    other = VerifyReport(ok=True, key_id=NoteSigner.generate("q.example/log").key_id)
    assert not witness_check(other, None, bundle, KEYS, 1).ok  # not the key verified
