"""The audit ledger's RFC 9162 Merkle tree: hashing, frontier, proofs and verification.

Three independent sources of truth are used:

* the reference tree of transparency-dev/merkle (8 leaves and the root of every size,
  copied below so these checks never depend on the shared folder),
* a literal, recursive transcription of the RFC 9162 definitions (MTH, PATH, PROOF),
* the transparency-dev/merkle proof probes committed in ``tests/data/rfc9162`` (Apache-2.0,
  see its NOTICE; ``INCIDENTS_RFC9162_VECTORS`` names another folder): the verifier must
  accept exactly the probes marked ``wantErr: false``. A missing folder fails the tests:
  a clone that silently skipped them would not be checking the verifier at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.audit.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    MerkleFrontier,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_consistency_proof,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    subtree_root,
    verify_consistency,
    verify_inclusion,
)

# --------------------------------------------------------------------------- constants

# transparency-dev/merkle testdata reference tree: leaf inputs and MTH for sizes 0..8.
REFERENCE_LEAVES_HEX = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
REFERENCE_ROOTS_HEX = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
REFERENCE_LEAF_HASHES = [leaf_hash(bytes.fromhex(h)) for h in REFERENCE_LEAVES_HEX]
REFERENCE_ROOTS = [bytes.fromhex(h) for h in REFERENCE_ROOTS_HEX]

# A bigger tree for the property tests. Perfect subtrees never change once complete,
# so one tree of MAX_SIZE leaves answers get_node for every smaller size as well.
MAX_SIZE = 200
LEAF_HASHES = [leaf_hash(b"event-%d" % i) for i in range(MAX_SIZE)]
TREE = MemoryTree(LEAF_HASHES)

# Hashing is fast, but a busy CI box must not turn a slow example into a failure.
NO_DEADLINE = settings(deadline=None)


# -------------------------------------------------- RFC 9162 definitions, transcribed


def rfc_mth(d: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 2.1.1, over leaf *hashes*, by recursive slicing."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return d[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(rfc_mth(d[:k]), rfc_mth(d[k:]))


def rfc_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1."""
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*rfc_path(m, d[:k]), rfc_mth(d[k:])]
    return [*rfc_path(m - k, d[k:]), rfc_mth(d[:k])]


def rfc_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 2.1.4.1."""
    n = len(d)
    if m == n:
        return [] if b else [rfc_mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*rfc_subproof(m, d[:k], b), rfc_mth(d[k:])]
    return [*rfc_subproof(m - k, d[k:], False), rfc_mth(d[:k])]


def flip_bit(proof: list[bytes], which: int, bit: int) -> list[bytes]:
    """A copy of ``proof`` with one bit of hash ``which`` flipped."""
    damaged = bytearray(proof[which])
    damaged[bit // 8] ^= 1 << (bit % 8)
    return [*proof[:which], bytes(damaged), *proof[which + 1 :]]


# ------------------------------------------------------------------- hashing basics


def test_leaf_and_node_hashes_are_domain_separated_sha256() -> None:
    left, right = b"L" * 32, b"R" * 32
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert leaf_hash(left + right) != node_hash(left, right)


def test_the_empty_tree_has_the_sha256_of_the_empty_string_as_root() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert MerkleFrontier().root() == EMPTY_ROOT
    assert MemoryTree().root() == EMPTY_ROOT


def test_proof_error_is_a_value_error() -> None:
    assert issubclass(ProofError, ValueError)


# ------------------------------------------------------------ the reference tree


@pytest.mark.parametrize("size", range(9))
def test_root_from_leaf_hashes_matches_the_reference_root_of_every_size(size: int) -> None:
    assert root_from_leaf_hashes(REFERENCE_LEAF_HASHES[:size]) == REFERENCE_ROOTS[size]


def test_frontier_reaches_every_reference_root_as_leaves_are_appended() -> None:
    frontier = MerkleFrontier()
    assert (frontier.size, frontier.root()) == (0, REFERENCE_ROOTS[0])
    for size, h in enumerate(REFERENCE_LEAF_HASHES, start=1):
        frontier.append(h)
        assert frontier.size == size
        assert len(frontier.nodes) == size.bit_count()  # O(log n) state
        assert frontier.root() == REFERENCE_ROOTS[size]


def test_memory_tree_gives_every_reference_root_including_earlier_sizes() -> None:
    tree = MemoryTree.from_leaves(bytes.fromhex(h) for h in REFERENCE_LEAVES_HEX)
    assert tree.size == 8
    assert [tree.root(size) for size in range(9)] == REFERENCE_ROOTS
    assert tree.root() == REFERENCE_ROOTS[8]


def test_every_reference_leaf_proves_its_inclusion_in_every_reference_tree() -> None:
    tree = MemoryTree(REFERENCE_LEAF_HASHES)
    for size in range(1, 9):
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            verify_inclusion(
                REFERENCE_LEAF_HASHES[index], index, size, proof, REFERENCE_ROOTS[size]
            )


def test_every_pair_of_reference_trees_is_provably_consistent() -> None:
    tree = MemoryTree(REFERENCE_LEAF_HASHES)
    for size2 in range(1, 9):
        for size1 in range(1, size2 + 1):
            proof = tree.consistency_proof(size1, size2)
            verify_consistency(size1, size2, proof, REFERENCE_ROOTS[size1], REFERENCE_ROOTS[size2])


# --------------------------------------------- agreement with the RFC's definitions


def test_roots_agree_with_the_recursive_rfc_definition_for_sizes_up_to_200() -> None:
    frontier = MerkleFrontier()
    for size in range(MAX_SIZE + 1):
        expected = rfc_mth(LEAF_HASHES[:size])
        assert root_from_leaf_hashes(LEAF_HASHES[:size]) == expected
        assert frontier.root() == expected
        assert TREE.root(size) == expected
        if size < MAX_SIZE:
            frontier.append(LEAF_HASHES[size])


def test_inclusion_proofs_are_exactly_the_rfc_audit_paths() -> None:
    for size in range(1, 40):
        for index in range(size):
            expected = rfc_path(index, LEAF_HASHES[:size])
            assert inclusion_proof(index, size, TREE.get_node) == expected


def test_consistency_proofs_are_exactly_the_rfc_subproofs() -> None:
    for size2 in range(1, 40):
        for size1 in range(1, size2 + 1):
            expected = rfc_subproof(size1, LEAF_HASHES[:size2], True)
            assert consistency_proof(size1, size2, TREE.get_node) == expected


@NO_DEADLINE
@given(st.integers(0, MAX_SIZE), st.integers(0, MAX_SIZE))
def test_subtree_root_of_any_range_is_the_mth_of_that_slice(a: int, b: int) -> None:
    begin, end = min(a, b), max(a, b)
    assert subtree_root(begin, end, TREE.get_node) == rfc_mth(LEAF_HASHES[begin:end])


def test_a_large_tree_gets_the_same_root_from_all_three_builders() -> None:
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(20_011)]
    root = root_from_leaf_hashes(hashes)
    assert MerkleFrontier.from_leaf_hashes(hashes).root() == root
    assert MemoryTree(hashes).root() == root


# ------------------------------------------------------ round-trip property tests


@st.composite
def size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX_SIZE))
    return size, draw(st.integers(0, size - 1))


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    size2 = draw(st.integers(1, MAX_SIZE))
    return draw(st.integers(1, size2)), size2


@NO_DEADLINE
@given(size_and_index())
def test_a_generated_inclusion_proof_verifies_against_the_root(case: tuple[int, int]) -> None:
    size, index = case
    proof = TREE.inclusion_proof(index, size)
    verify_inclusion(LEAF_HASHES[index], index, size, proof, TREE.root(size))
    assert root_from_inclusion_proof(LEAF_HASHES[index], index, size, proof) == TREE.root(size)


@NO_DEADLINE
@given(size_and_index(), st.data())
def test_flipping_any_bit_of_an_inclusion_proof_breaks_it(
    case: tuple[int, int], data: st.DataObject
) -> None:
    size, index = case
    proof = TREE.inclusion_proof(index, size)
    if not proof:  # a one-leaf tree has an empty proof: damage the leaf instead
        with pytest.raises(ProofError):
            verify_inclusion(flip_bit([LEAF_HASHES[0]], 0, 0)[0], 0, 1, [], TREE.root(1))
        return
    which = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    with pytest.raises(ProofError):
        verify_inclusion(
            LEAF_HASHES[index], index, size, flip_bit(proof, which, bit), TREE.root(size)
        )


@NO_DEADLINE
@given(size_and_index(), st.data())
def test_an_inclusion_proof_does_not_verify_for_another_index(
    case: tuple[int, int], data: st.DataObject
) -> None:
    size, index = case
    proof = TREE.inclusion_proof(index, size)
    other = data.draw(st.integers(0, size + 3).filter(lambda i: i != index))
    with pytest.raises(ProofError):
        verify_inclusion(LEAF_HASHES[index], other, size, proof, TREE.root(size))
    if other < size:  # nor does the other leaf verify with this leaf's proof
        with pytest.raises(ProofError):
            verify_inclusion(LEAF_HASHES[other], other, size, proof, TREE.root(size))


@NO_DEADLINE
@given(size_and_index())
def test_an_inclusion_proof_with_a_hash_added_or_removed_is_rejected(
    case: tuple[int, int],
) -> None:
    size, index = case
    proof = TREE.inclusion_proof(index, size)
    root = TREE.root(size)
    with pytest.raises(ProofError):
        verify_inclusion(LEAF_HASHES[index], index, size, [*proof, root], root)
    with pytest.raises(ProofError):
        verify_inclusion(LEAF_HASHES[index], index, size, [root, *proof], root)
    if proof:
        with pytest.raises(ProofError):
            verify_inclusion(LEAF_HASHES[index], index, size, proof[:-1], root)


@NO_DEADLINE
@given(two_sizes())
def test_a_generated_consistency_proof_verifies_between_the_two_roots(
    sizes: tuple[int, int],
) -> None:
    size1, size2 = sizes
    proof = TREE.consistency_proof(size1, size2)
    root1, root2 = TREE.root(size1), TREE.root(size2)
    verify_consistency(size1, size2, proof, root1, root2)
    assert root_from_consistency_proof(size1, size2, proof, root1) == root2


@NO_DEADLINE
@given(two_sizes().filter(lambda s: s[0] < s[1]), st.data())
def test_flipping_any_bit_of_a_consistency_proof_breaks_it(
    sizes: tuple[int, int], data: st.DataObject
) -> None:
    size1, size2 = sizes
    proof = TREE.consistency_proof(size1, size2)
    which = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    with pytest.raises(ProofError):
        verify_consistency(
            size1, size2, flip_bit(proof, which, bit), TREE.root(size1), TREE.root(size2)
        )


@NO_DEADLINE
@given(two_sizes().filter(lambda s: s[0] < s[1]))
def test_a_consistency_proof_fails_with_swapped_roots_or_a_wrong_length(
    sizes: tuple[int, int],
) -> None:
    size1, size2 = sizes
    proof = TREE.consistency_proof(size1, size2)
    root1, root2 = TREE.root(size1), TREE.root(size2)
    for bad in ([*proof, root2], [root1, *proof], proof[:-1], []):
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, bad, root1, root2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof, root2, root1)


@NO_DEADLINE
@given(two_sizes().filter(lambda s: s[0] < s[1]), st.integers(0, 255))
def test_a_consistency_proof_binds_both_roots(sizes: tuple[int, int], bit: int) -> None:
    # A well-formed 32-byte but different first root must fail too: the proof has to
    # rebuild root1 itself, not only root2 (the probes' wrong roots have bad lengths).
    size1, size2 = sizes
    proof = TREE.consistency_proof(size1, size2)
    root1, root2 = TREE.root(size1), TREE.root(size2)
    [other1] = flip_bit([root1], 0, bit)
    [other2] = flip_bit([root2], 0, bit)
    with pytest.raises(ProofError):  # "first root", or "second root" if size1 is 2**k
        verify_consistency(size1, size2, proof, other1, root2)
    with pytest.raises(ProofError, match="second root"):
        verify_consistency(size1, size2, proof, root1, other2)


@pytest.mark.parametrize(("index", "size"), [(2, 7), (6, 7), (0, 5)])
def test_an_inclusion_proof_of_the_wrong_length_is_named_too_long_or_too_short(
    index: int, size: int
) -> None:
    proof = TREE.inclusion_proof(index, size)
    root = TREE.root(size)
    with pytest.raises(ProofError, match=r"^inclusion proof is too long$"):
        verify_inclusion(LEAF_HASHES[index], index, size, [*proof, root], root)
    with pytest.raises(ProofError, match=r"^inclusion proof is too short$"):
        verify_inclusion(LEAF_HASHES[index], index, size, proof[:-1], root)


@pytest.mark.parametrize(("size1", "size2"), [(3, 7), (1, 8), (5, 8)])
def test_a_consistency_proof_of_the_wrong_length_is_named_too_long_or_too_short(
    size1: int, size2: int
) -> None:
    proof = TREE.consistency_proof(size1, size2)
    root1, root2 = TREE.root(size1), TREE.root(size2)
    with pytest.raises(ProofError, match=r"^consistency proof is too long$"):
        verify_consistency(size1, size2, [*proof, root2], root1, root2)
    with pytest.raises(ProofError, match=r"^consistency proof is too short$"):
        verify_consistency(size1, size2, proof[:-1], root1, root2)


@NO_DEADLINE
@given(st.integers(0, 300), st.integers(0, 40))
def test_a_persisted_frontier_resumes_exactly_where_it_left_off(saved: int, more: int) -> None:
    hashes = [leaf_hash(b"%d" % i) for i in range(saved + more)]
    frontier = MerkleFrontier.from_leaf_hashes(hashes[:saved])
    stored = frontier.to_hex_list()
    assert all(isinstance(h, str) and len(h) == 64 for h in stored)
    restored = MerkleFrontier.from_hex_list(frontier.size, stored)
    assert restored == frontier
    assert restored.root() == frontier.root()
    restored.extend(hashes[saved:])
    assert restored.size == saved + more
    assert restored.root() == root_from_leaf_hashes(hashes)


@NO_DEADLINE
@given(st.lists(st.integers(0, 70), max_size=12), st.integers(0, 69))
def test_extend_in_any_runs_gives_the_frontier_of_appends_one_by_one(
    runs: list[int], bad: int
) -> None:
    """`extend` hashes whole subtrees a level at a time; wherever the runs start and end,
    the frontier is the one `append` builds. A hash of the wrong size is refused after
    the ones before it were appended, as `append` would."""
    hashes = [leaf_hash(b"%d" % i) for i in range(sum(runs))]
    one_by_one, in_runs = MerkleFrontier(), MerkleFrontier()
    for h in hashes:
        one_by_one.append(h)
    at = 0
    for run in runs:
        in_runs.extend(hashes[at : at + run])
        at += run
        assert in_runs.nodes == MerkleFrontier.from_leaf_hashes(hashes[:at]).nodes
    assert in_runs == one_by_one
    assert in_runs.root() == root_from_leaf_hashes(hashes)
    broken = [*hashes[:bad], b"short", *hashes[bad:]]
    frontier = MerkleFrontier()
    with pytest.raises(ValueError):
        frontier.extend(iter(broken))
    assert frontier == MerkleFrontier.from_leaf_hashes(hashes[:bad])


# ------------------------------------------------------------------ edge cases


def test_frontier_restore_rejects_a_count_that_does_not_match_the_size() -> None:
    frontier = MerkleFrontier.from_leaf_hashes(LEAF_HASHES[:5])  # 5 = 0b101: two hashes
    with pytest.raises(ValueError, match="2 hashes"):
        MerkleFrontier.from_hex_list(6, frontier.to_hex_list()[:1])
    with pytest.raises(ValueError):
        MerkleFrontier.from_hex_list(4, frontier.to_hex_list())
    with pytest.raises(ValueError):
        MerkleFrontier.from_hex_list(-1, [])


def test_frontier_restore_rejects_hashes_that_are_not_32_bytes_of_hex() -> None:
    with pytest.raises(ValueError, match="not hex"):
        MerkleFrontier.from_hex_list(1, ["zz" * 32])
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleFrontier.from_hex_list(1, ["ab" * 31])


def test_frontier_copy_is_independent_and_appends_check_hash_length() -> None:
    frontier = MerkleFrontier.from_leaf_hashes(LEAF_HASHES[:3])
    clone = frontier.copy()
    clone.append(LEAF_HASHES[3])
    assert (frontier.size, clone.size) == (3, 4)
    assert frontier.root() == TREE.root(3)
    with pytest.raises(ValueError):
        frontier.append(b"short")


def test_memory_tree_refuses_nodes_that_are_not_complete_yet() -> None:
    tree = MemoryTree(LEAF_HASHES[:5])
    assert tree.get_node(2, 0) == TREE.get_node(2, 0)
    for level, index in [(2, 1), (3, 0), (0, 5), (0, -1), (-1, 0)]:
        with pytest.raises(IndexError):
            tree.get_node(level, index)
    with pytest.raises(ValueError):
        tree.root(6)


def test_proof_generation_rejects_out_of_range_arguments() -> None:
    for index, size in [(0, 0), (5, 5), (-1, 5)]:
        with pytest.raises(ValueError):
            inclusion_proof(index, size, TREE.get_node)
    for size1, size2 in [(0, 5), (0, 0), (6, 5), (-1, 5)]:
        with pytest.raises(ValueError):
            consistency_proof(size1, size2, TREE.get_node)
    assert consistency_proof(7, 7, TREE.get_node) == []


def test_inclusion_is_rejected_for_an_index_at_or_beyond_the_size() -> None:
    root = TREE.root(4)
    for index, size in [(4, 4), (5, 4), (0, 0), (-1, 4), (2**64 - 1, 4)]:
        with pytest.raises(ProofError, match="out of range"):
            verify_inclusion(LEAF_HASHES[0], index, size, [], root)


def test_inclusion_rejects_hashes_of_the_wrong_length() -> None:
    proof = TREE.inclusion_proof(1, 4)
    with pytest.raises(ProofError):
        verify_inclusion(LEAF_HASHES[1][:31], 1, 4, proof, TREE.root(4))
    with pytest.raises(ProofError):
        verify_inclusion(LEAF_HASHES[1], 1, 4, [proof[0] + b"\x00", proof[1]], TREE.root(4))


def test_consistency_between_equal_sizes_needs_an_empty_proof_and_equal_roots() -> None:
    root = TREE.root(3)
    verify_consistency(3, 3, [], root, root)
    with pytest.raises(ProofError, match="not empty"):
        verify_consistency(3, 3, [root], root, root)
    with pytest.raises(ProofError):
        verify_consistency(3, 3, [], root, TREE.root(2))


def test_consistency_from_the_empty_tree_is_always_rejected() -> None:
    # transparency-dev/merkle: "consistency proof from empty tree is meaningless",
    # even with an empty proof and even towards another empty tree.
    for size2, proof in [(0, []), (1, []), (5, []), (1, [EMPTY_ROOT])]:
        with pytest.raises(ProofError, match="empty tree"):
            verify_consistency(0, size2, proof, EMPTY_ROOT, TREE.root(size2))


def test_consistency_is_rejected_when_the_tree_shrinks() -> None:
    with pytest.raises(ProofError, match="size2"):
        verify_consistency(5, 4, [], TREE.root(5), TREE.root(4))


def test_consistency_rejects_a_first_root_of_the_wrong_length() -> None:
    proof = TREE.consistency_proof(4, 8)
    with pytest.raises(ProofError):
        verify_consistency(4, 8, proof, TREE.root(4)[:16], TREE.root(8))


# ------------------------------------------- transparency-dev/merkle proof probes


def vectors_dir() -> Path:
    override = os.environ.get("INCIDENTS_RFC9162_VECTORS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "data" / "rfc9162"


VECTORS = vectors_dir()
PROBES = sorted(
    p.relative_to(VECTORS).as_posix()
    for kind in ("inclusion", "consistency")
    for p in (VECTORS / kind).rglob("*.json")
)
# No probes found: one parameter that fails below, so the absence is a failure, not a skip.
PROBE_PARAMS: list[Any] = [*PROBES] or ["(no probes)"]


def b64(value: str | None) -> bytes:
    return base64.b64decode(value or "", validate=True)


def check_probe(probe: dict[str, Any], kind: str) -> None:
    proof = [b64(h) for h in probe["proof"] or []]
    if kind == "inclusion":
        verify_inclusion(
            b64(probe["leafHash"]), probe["leafIdx"], probe["treeSize"], proof, b64(probe["root"])
        )
    else:
        verify_consistency(
            probe["size1"], probe["size2"], proof, b64(probe["root1"]), b64(probe["root2"])
        )


def test_the_probe_folder_holds_all_the_probes_we_expect() -> None:
    assert VECTORS.is_dir(), f"no RFC 9162 vectors in {VECTORS}"
    assert (VECTORS / "LICENSE").is_file() and (VECTORS / "NOTICE").is_file()
    kinds = {p.split("/")[0] for p in PROBES}
    assert kinds == {"inclusion", "consistency"}
    assert len(PROBES) >= 190
    wanted = [json.loads((VECTORS / p).read_text())["wantErr"] for p in PROBES]
    assert wanted.count(False) >= 10  # happy paths exist, the verifier is not just "no"
    assert wanted.count(True) >= 150


@pytest.mark.parametrize("probe_path", PROBE_PARAMS, ids=str)
def test_the_verifier_accepts_exactly_the_good_probes(probe_path: str) -> None:
    assert PROBES, f"no RFC 9162 proof probes in {VECTORS}"
    probe = json.loads((VECTORS / probe_path).read_text())
    kind = probe_path.split("/")[0]
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            check_probe(probe, kind)
    else:
        check_probe(probe, kind)


def test_the_reference_tree_file_agrees_with_our_copy_of_it() -> None:
    path = VECTORS / "reference-tree.json"
    assert path.is_file(), f"no {path}"
    reference = json.loads(path.read_text())
    assert reference["hash"] == "sha256"
    assert reference["leaf_inputs_hex"] == REFERENCE_LEAVES_HEX
    assert reference["root_hash_hex_by_tree_size"] == REFERENCE_ROOTS_HEX
