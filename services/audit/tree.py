"""The ledger's Merkle tree in PostgreSQL: stored subtrees, roots and proofs at any size.

Level 0 is `ledger.leaf_hash`; every perfect subtree of level >= 1 is stored in
`ledger_nodes` when its last leaf is appended. A root or proof for any tree size then
needs O(log n) stored hashes, fetched in one query: the proof algorithm is first run
with a recording getter to learn which nodes it needs (which nodes depend only on the
sizes and index, never on hash values), then with the fetched hashes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import asyncpg

from services.audit import merkle

Coord = tuple[int, int]  # (level, index)


def frontier_coords(size: int) -> list[Coord]:
    """The perfect subtrees whose roots make up the right edge of a tree of `size` leaves."""
    coords: list[Coord] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            coords.append((level, start >> level))
            start += 1 << level
    return coords


async def fetch_nodes(conn: asyncpg.Connection, coords: Iterable[Coord]) -> dict[Coord, bytes]:
    """Hashes of the given subtrees (level 0 from the ledger, others from ledger_nodes),
    in one query (an append reads its frontier so, usually a leaf and inner nodes)."""
    wanted = set(coords)
    if not wanted:
        return {}
    leaves = [i for level, i in wanted if level == 0]
    inner = [(level, i) for level, i in wanted if level > 0]
    rows = await conn.fetch(
        "SELECT 0::smallint AS level, idx, leaf_hash AS hash FROM ledger"
        " WHERE idx = ANY($1::bigint[]) UNION ALL SELECT level, idx, hash FROM ledger_nodes n"
        " JOIN unnest($2::smallint[], $3::bigint[]) AS w(l, i) ON n.level = w.l AND n.idx = w.i",
        leaves,
        [level for level, _ in inner],
        [i for _, i in inner],
    )
    found = {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}
    missing = wanted - found.keys()
    if missing:
        raise LookupError(f"ledger tree nodes missing: {sorted(missing)[:5]}")
    return found


async def frontier_at(conn: asyncpg.Connection, size: int) -> merkle.MerkleFrontier:
    """The incremental tree state after `size` leaves, rebuilt from stored nodes."""
    coords = frontier_coords(size)
    nodes = await fetch_nodes(conn, coords)
    return merkle.MerkleFrontier.from_hex_list(size, [nodes[c].hex() for c in coords])


async def root_at(conn: asyncpg.Connection, size: int) -> bytes:
    """The Merkle tree hash of the first `size` entries."""
    return (await frontier_at(conn, size)).root()


async def _with_nodes(
    conn: asyncpg.Connection, compute: Callable[[merkle.NodeGetter], list[bytes]]
) -> list[bytes]:
    wanted: list[Coord] = []

    def record(level: int, index: int) -> bytes:
        wanted.append((level, index))
        return b"\0" * merkle.HASH_SIZE

    compute(record)
    nodes = await fetch_nodes(conn, wanted)
    return compute(lambda level, index: nodes[(level, index)])


async def inclusion_proof(conn: asyncpg.Connection, index: int, size: int) -> list[bytes]:
    """RFC 9162 inclusion proof of entry `index` in the tree of `size` entries."""
    return await _with_nodes(conn, lambda get: merkle.inclusion_proof(index, size, get))


async def consistency_proof(conn: asyncpg.Connection, first: int, second: int) -> list[bytes]:
    """RFC 9162 consistency proof between tree sizes `first` and `second`."""
    return await _with_nodes(conn, lambda get: merkle.consistency_proof(first, second, get))


async def store_nodes(conn: asyncpg.Connection, nodes: list[tuple[int, int, bytes]]) -> None:
    """Keep completed subtrees (from `MerkleFrontier.append`)."""
    if nodes:
        await conn.copy_records_to_table(
            "ledger_nodes", records=nodes, columns=["level", "idx", "hash"]
        )
