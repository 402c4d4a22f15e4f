"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing, proofs and verification.

Pure code: no I/O, no asyncio. The audit ledger appends event hashes to an append-only
log; this module gives it

* the hashing rules (`leaf_hash`, `node_hash`, `EMPTY_ROOT`, `root_from_leaf_hashes`),
* `MerkleFrontier`, an O(log n) incremental accumulator holding only the roots of the
  perfect subtrees on the right edge of the tree, so an append never rehashes the log
  and the state persists as a short list of hex strings,
* proof generation (`inclusion_proof`, `consistency_proof`, `subtree_root`) on top of a
  *node getter* ``get_node(level, index)`` that returns the hash of the perfect subtree
  covering leaves ``[index * 2**level, (index + 1) * 2**level)`` (level 0 = leaf
  hashes). Perfect subtrees never change once complete in an append-only log, so a
  getter does not depend on the tree size; non-perfect subtrees on the ragged right edge
  are folded from perfect ones here.
* `MemoryTree`, an in-memory getter for tests and the offline verifier,
* verification exactly as RFC 9162 sections 2.1.3.2 (inclusion) and 2.1.4.2
  (consistency), raising `ProofError` on any failure.

Edge cases follow transparency-dev/merkle (the source of the shared test vectors): an
index must be below the tree size; a consistency proof between equal sizes must be empty
and the two roots equal; a consistency proof *from* the empty tree (``size1 == 0``) is
meaningless and is always rejected, and never generated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "MemoryTree",
    "MerkleFrontier",
    "NodeGetter",
    "ProofError",
    "consistency_failure",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Size in bytes of every hash (SHA-256)."""

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256 of the empty string: the root of a tree with no leaves."""

NodeGetter = Callable[[int, int], bytes]
"""``get_node(level, index)``: hash of the perfect subtree of ``2**level`` leaves
starting at leaf ``index * 2**level``."""


class ProofError(ValueError):
    """A Merkle proof failed verification (malformed inputs included)."""


# --------------------------------------------------------------------------- hashing


def leaf_hash(leaf: bytes) -> bytes:
    """Return the RFC 9162 leaf hash ``SHA-256(0x00 || leaf)``."""
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162 2.1.1: the largest power of two strictly smaller than n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def _fold_right(nodes: Sequence[bytes]) -> bytes:
    """Combine perfect-subtree roots, largest (leftmost) first, into one tree hash.

    With roots of decreasing sizes ``s1 > s2 > ... > sk`` (the binary digits of the
    leaf count), ``s1`` is the RFC's split point of the whole range, ``s2`` that of the
    rest, and so on, so the MTH is ``H(r1, H(r2, ... H(r(k-1), rk)))``.
    """
    if not nodes:
        return EMPTY_ROOT
    acc = nodes[-1]
    for node in reversed(nodes[:-1]):
        acc = node_hash(node, acc)
    return acc


# ------------------------------------------------------------------------- frontier


class MerkleFrontier:
    """Incremental Merkle tree state: the roots of the perfect subtrees on the right edge.

    After ``n`` appends the frontier holds one hash per set bit of ``n``, leftmost
    (largest subtree) first, so memory is O(log n) and an append costs amortised O(1)
    hashes. `root` folds the frontier in O(log n). Persist it with `to_hex_list` plus
    `size`, and restore it with `from_hex_list`.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        """Start from the empty tree."""
        self._size = 0
        self._nodes: list[bytes] = []

    @classmethod
    def from_leaf_hashes(cls, hashes: Iterable[bytes]) -> MerkleFrontier:
        """Build a frontier by appending every hash of ``hashes`` in order."""
        frontier = cls()
        frontier.extend(hashes)
        return frontier

    @classmethod
    def from_hex_list(cls, size: int, nodes: Sequence[str]) -> MerkleFrontier:
        """Restore a frontier saved with `to_hex_list` for a tree of ``size`` leaves.

        Raises `ValueError` if the number of hashes does not match ``size`` (one per set
        bit) or a hash is not 64 hex digits.
        """
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if len(nodes) != size.bit_count():
            raise ValueError(
                f"a frontier of size {size} has {size.bit_count()} hashes, got {len(nodes)}"
            )
        decoded: list[bytes] = []
        for i, text in enumerate(nodes):
            try:
                node = bytes.fromhex(text)
            except ValueError as exc:
                raise ValueError(f"frontier hash {i} is not hex: {text!r}") from exc
            _check_hash(node, f"frontier hash {i}")
            decoded.append(node)
        frontier = cls()
        frontier._size = size
        frontier._nodes = decoded
        return frontier

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def nodes(self) -> tuple[bytes, ...]:
        """The right-edge perfect-subtree roots, leftmost (largest) first."""
        return tuple(self._nodes)

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf *hash* (see `leaf_hash`), merging completed subtrees.

        Returns the perfect subtrees this leaf completed, as ``(level, index, hash)``
        with level >= 1 (a store keeps them to serve proofs without rehashing).
        """
        _check_hash(leaf_hash, "leaf hash")
        nodes = self._nodes
        node = leaf_hash
        size = self._size
        completed: list[tuple[int, int, bytes]] = []
        level, index = 0, self._size
        # Each trailing 1 bit of the old size is a subtree the new leaf completes.
        while size & 1:
            node = node_hash(nodes.pop(), node)
            size >>= 1
            level, index = level + 1, index >> 1
            completed.append((level, index, node))
        nodes.append(node)
        self._size += 1
        return completed

    def extend(self, hashes: Iterable[bytes]) -> None:
        """Append every leaf hash of ``hashes`` in order, as `append` does, without
        listing the completed subtrees (the verifier's hot path). The leaves are taken in
        runs that each fill a whole subtree where they land, hashed a level at a time."""
        hashes = hashes if isinstance(hashes, list) else list(hashes)
        if set(map(len, hashes)) - {HASH_SIZE}:  # append up to the bad one, then refuse it
            bad = next(i for i, h in enumerate(hashes) if len(h) != HASH_SIZE)
            self.extend(hashes[:bad])
            _check_hash(hashes[bad], "leaf hash")
        nodes = self._nodes
        pop, push = nodes.pop, nodes.append
        sha256 = hashlib.sha256
        size, at, end = self._size, 0, len(hashes)
        while at < end:
            span = 1 << ((end - at).bit_length() - 1)  # the most leaves left, a power of 2
            if size:
                span = min(span, size & -size)  # a subtree of `span` leaves starts at `size`
            level = hashes[at : at + span]
            while len(level) > 1:
                pairs = iter(level)
                level = [
                    sha256(NODE_PREFIX + a + b).digest() for a, b in zip(pairs, pairs, strict=True)
                ]
            node, count = level[0], size // span
            # Each trailing 1 bit of the old size (in subtrees of `span`) is one it completes.
            while count & 1:
                node = sha256(NODE_PREFIX + pop() + node).digest()
                count >>= 1
            push(node)
            size += span
            at += span
        self._size = size

    def root(self) -> bytes:
        """The Merkle tree hash (MTH) of the leaves appended so far."""
        return _fold_right(self._nodes)

    def to_hex_list(self) -> list[str]:
        """The frontier hashes as lowercase hex, leftmost first (persist with `size`)."""
        return [node.hex() for node in self._nodes]

    def copy(self) -> MerkleFrontier:
        """An independent copy (appending to one does not change the other)."""
        clone = MerkleFrontier()
        clone._size = self._size
        clone._nodes = list(self._nodes)
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MerkleFrontier):
            return NotImplemented
        return self._size == other._size and self._nodes == other._nodes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"MerkleFrontier(size={self._size}, root={self.root().hex()})"


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes (RFC 9162 2.1.1), in one O(n) pass, O(log n) memory.

    The empty list gives `EMPTY_ROOT`. Leaf hashes are not length-checked here (it is
    the hot path for large trees); `MerkleFrontier.append` checks them.
    """
    stack: list[bytes] = []
    push = stack.append
    pop = stack.pop
    sha256 = hashlib.sha256
    for count, h in enumerate(hashes):
        node = h
        # ``count`` leaves are already on the stack; merge the subtrees it completes.
        while count & 1:
            node = sha256(NODE_PREFIX + pop() + node).digest()
            count >>= 1
        push(node)
    return _fold_right(stack)


# ------------------------------------------------------------------ proof generation


def _perfect_root(start: int, level: int, get_node: NodeGetter) -> bytes:
    """Hash of the perfect subtree of ``2**level`` leaves starting at leaf ``start``.

    Aligned subtrees come straight from ``get_node``; an unaligned one (only possible
    for `subtree_root` ranges that are not subtrees of the log) is split in halves.
    """
    if start % (1 << level) == 0:
        return get_node(level, start >> level)
    half = 1 << (level - 1)
    return node_hash(
        _perfect_root(start, level - 1, get_node),
        _perfect_root(start + half, level - 1, get_node),
    )


def subtree_root(begin: int, end: int, get_node: NodeGetter) -> bytes:
    """MTH of the leaves ``[begin, end)``, i.e. ``MTH(D[begin:end])`` of RFC 9162.

    The range is decomposed into perfect subtrees (sizes = binary digits of
    ``end - begin``, largest first) which are folded right to left. Every range a proof
    needs is aligned, so this costs O(log n) ``get_node`` calls; an arbitrary unaligned
    range is still correct but may descend towards the leaves.
    """
    if not 0 <= begin <= end:
        raise ValueError(f"invalid range [{begin}, {end})")
    n = end - begin
    roots: list[bytes] = []
    pos = begin
    for level in range(n.bit_length() - 1, -1, -1):
        if (n >> level) & 1:
            roots.append(_perfect_root(pos, level, get_node))
            pos += 1 << level
    return _fold_right(roots)


def inclusion_proof(index: int, size: int, get_node: NodeGetter) -> list[bytes]:
    """Audit path PATH(index, D[size]) of RFC 9162 2.1.3.1, ordered from the leaf up.

    Raises `ValueError` unless ``0 <= index < size``.
    """
    if not 0 <= index < size:
        raise ValueError(f"index {index} out of range for tree size {size}")
    siblings: list[bytes] = []  # collected top-down, returned bottom-up
    begin, end = 0, size
    while end - begin > 1:
        k = _largest_power_of_two_below(end - begin)
        split = begin + k
        if index < split:
            siblings.append(subtree_root(split, end, get_node))
            end = split
        else:
            siblings.append(_perfect_root(begin, k.bit_length() - 1, get_node))
            begin = split
    siblings.reverse()
    return siblings


def consistency_proof(size1: int, size2: int, get_node: NodeGetter) -> list[bytes]:
    """Consistency proof PROOF(size1, D[size2]) of RFC 9162 2.1.4.1, bottom-up.

    Empty when ``size1 == size2``. Raises `ValueError` unless ``0 < size1 <= size2``:
    a proof from the empty tree is meaningless (and `verify_consistency` rejects it).
    """
    if size1 > size2 or size1 < 0:
        raise ValueError(f"need size1 <= size2, got {size1} > {size2}")
    if size1 == 0:
        raise ValueError("a consistency proof from the empty tree is meaningless")
    nodes: list[bytes] = []  # collected top-down, returned bottom-up
    begin, end = 0, size2
    whole = True  # the RFC's ``b``: still on the path of the whole old tree
    while size1 < end:
        k = _largest_power_of_two_below(end - begin)
        split = begin + k
        if size1 <= split:
            nodes.append(subtree_root(split, end, get_node))
            end = split
        else:
            nodes.append(_perfect_root(begin, k.bit_length() - 1, get_node))
            begin = split
            whole = False
    if not whole:
        nodes.append(subtree_root(begin, end, get_node))
    nodes.reverse()
    return nodes


# ------------------------------------------------------------------ in-memory tree


class MemoryTree:
    """An append-only in-memory Merkle tree implementing the `NodeGetter` protocol.

    Keeps the leaf hashes plus lazily filled per-level caches of perfect-subtree hashes.
    Since a complete perfect subtree never changes, caches stay valid across appends
    and `get_node` serves every earlier tree size too.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Create a tree holding ``leaf_hashes`` (already hashed with `leaf_hash`)."""
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MemoryTree:
        """Create a tree from raw leaf data, hashing each with `leaf_hash`."""
        return cls(leaf_hash(leaf) for leaf in leaves)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash."""
        _check_hash(leaf_hash, "leaf hash")
        self._levels[0].append(leaf_hash)

    def leaf_hash_at(self, index: int) -> bytes:
        """The hash of leaf ``index``."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} out of range for tree size {self.size}")
        return self._levels[0][index]

    def get_node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree at ``level`` covering leaves of block ``index``.

        Raises `IndexError` if that subtree is not complete in the current tree.
        """
        if level < 0 or index < 0 or (index + 1) << level > self.size:
            raise IndexError(f"node ({level}, {index}) is not complete in tree size {self.size}")
        levels = self._levels
        while len(levels) <= level:
            levels.append([])
        for lvl in range(1, level + 1):
            want = (index + 1) << (level - lvl)
            below, row = levels[lvl - 1], levels[lvl]
            for j in range(len(row), want):
                row.append(node_hash(below[2 * j], below[2 * j + 1]))
        return levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} out of range for tree size {self.size}")
        return subtree_root(0, size, self.get_node)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the tree of ``size`` (default: all)."""
        size = self.size if size is None else size
        if size > self.size:
            raise ValueError(f"size {size} beyond tree size {self.size}")
        return inclusion_proof(index, size, self.get_node)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Consistency proof from ``size1`` to ``size2`` (default: all)."""
        size2 = self.size if size2 is None else size2
        if size2 > self.size:
            raise ValueError(f"size {size2} beyond tree size {self.size}")
        return consistency_proof(size1, size2, self.get_node)


# ------------------------------------------------------------------- verification


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"proof hash {i} is {len(h)} bytes, want {HASH_SIZE}")


def _climb(
    kind: str,
    fn: int,
    sn: int,
    node: bytes,
    path: Sequence[bytes],
    *,
    first: bytes | None = None,
) -> tuple[bytes, bytes | None]:
    """The walk up the tree that inclusion and consistency proofs share (RFC 9162
    2.1.3.2 step 4 and 2.1.4.2 step 6, each with its check that ``sn`` ends at 0).

    ``fn`` and ``sn`` are the indexes of the node and of the tree's last node; ``node``
    grows into the root the path implies. ``first`` (consistency proofs only) grows
    into the first tree's root, from the path's left siblings alone. Returns both.
    Raises `ProofError` ("<kind> proof is too long" or "... too short").
    """
    for c in path:
        if sn == 0:
            raise ProofError(f"{kind} proof is too long")
        if fn & 1 or fn == sn:
            node = node_hash(c, node)
            if first is not None:
                first = node_hash(c, first)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            node = node_hash(node, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"{kind} proof is too short")
    return node, first


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """Root implied by an inclusion proof (RFC 9162 2.1.3.2 steps 1-4 plus ``sn == 0``).

    Raises `ProofError` for an index outside ``[0, size)``, malformed hashes, or a proof
    of the wrong length; the caller still has to compare the result with the root.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} out of range for tree size {size}")
    if len(leaf_hash) != HASH_SIZE:
        raise ProofError(f"leaf hash is {len(leaf_hash)} bytes, want {HASH_SIZE}")
    _check_proof_hashes(proof)
    root, _ = _climb("inclusion", index, size - 1, leaf_hash, proof)
    return root


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    Implements RFC 9162 section 2.1.3.2; raises `ProofError` on any failure.
    """
    calculated = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if calculated != root:
        raise ProofError("inclusion proof does not lead to the expected root")


def root_from_consistency_proof(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> bytes:
    """Check ``proof`` against ``root1`` and return the ``size2`` root it implies.

    Implements RFC 9162 section 2.1.4.2 steps 1-7 except the final comparison with the
    second root. Raises `ProofError` for ``size1 > size2``, ``size1 == 0`` (consistency
    from the empty tree is meaningless), a non-empty proof between equal sizes, an empty
    or wrongly sized proof, malformed hashes, or a proof that does not match ``root1``.
    """
    if size1 < 0 or size2 < 0:
        raise ProofError(f"tree sizes must be >= 0, got {size1} and {size2}")
    if size2 < size1:
        raise ProofError(f"size2 ({size2}) < size1 ({size1})")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree is meaningless")
    if size1 == size2:
        if proof:
            raise ProofError("size1 == size2 but the consistency proof is not empty")
        return root1
    # RFC step 1: an empty path fails.
    if not proof:
        raise ProofError("empty consistency proof")
    if len(root1) != HASH_SIZE:
        raise ProofError(f"first root is {len(root1)} bytes, want {HASH_SIZE}")
    _check_proof_hashes(proof)
    # Step 2: if size1 is an exact power of two, prepend root1 to the path.
    path: list[bytes] = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # Steps 3-4.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Steps 5-6, and the first half of step 7 (``sn == 0``).
    sr, fr = _climb("consistency", fn, sn, path[0], path[1:], first=path[0])
    if fr != root1:
        raise ProofError("consistency proof does not lead to the first root")
    return sr


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2``/``root2`` extends the tree of ``size1``/``root1``.

    Implements RFC 9162 section 2.1.4.2; raises `ProofError` on any failure (see
    `root_from_consistency_proof` for the rejected edge cases).
    """
    calculated = root_from_consistency_proof(size1, size2, proof, root1)
    if calculated != root2:
        raise ProofError("consistency proof does not lead to the second root")


def consistency_failure(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> str | None:
    """Why `verify_consistency` refuses the proof, or None when it shows that the tree of
    ``size2``/``root2`` extends the tree of ``size1``/``root1``."""
    try:
        verify_consistency(size1, size2, proof, root1, root2)
    except ProofError as exc:
        return str(exc)
    return None
