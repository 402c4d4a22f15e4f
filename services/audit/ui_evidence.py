"""The console's "verified" badge and evidence download, with the project's own verifier.

`DbSource` serves the ledger straight from the database as a `ProofSource`, so the page
runs `export_bundle` (the code of `incidents audit export`), which checks every leaf of
the incident and its inclusion proof against the latest signed head with
`verify_bundle` before it returns. The badge shows that head; the download is that
bundle. Entries newer than the latest head cannot be proven yet: the badge counts them,
and the download waits for the next head, as the CLI does.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.audit import merkle, tree
from services.audit.checkpoint import NoteSigner
from services.audit.heads import latest_head
from services.audit.ledger import INCIDENT_EVENTS
from services.audit.verify import Entry, ExportError, export_bundle, key_document
from services.infra.runtime import Runtime

CACHED = 256
"""Badges remembered, per (incident, head size, entry count): a page reload costs nothing."""


class DbSource:
    """The ledger as a `ProofSource`: the latest head only, proofs for chosen indexes.

    Meant for one export inside one repeatable-read transaction: the proofs' tree nodes
    are fetched for all the incident's indexes in one query.
    """

    def __init__(self, conn: asyncpg.Connection, signer: NoteSigner, indexes: list[int]) -> None:
        self.conn = conn
        self.signer = signer
        self.indexes = indexes
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._size: int | None = None

    async def public_key(self) -> dict[str, Any]:
        return key_document(self.signer.verifier())

    async def heads(self) -> list[dict[str, Any]]:
        head = await latest_head(self.conn)
        return [] if head is None else [head.to_json()]

    async def entries(self, start: int = 0, end: int | None = None) -> AsyncIterator[list[Entry]]:
        stop = start + 1000 if end is None else end
        rows = await self.conn.fetch(
            "SELECT idx, leaf, leaf_hash FROM ledger WHERE idx >= $1 AND idx < $2 ORDER BY idx",
            start,
            stop,
        )
        yield [
            {
                "index": r["idx"],
                "leaf": base64.b64encode(bytes(r["leaf"])).decode("ascii"),
                "leaf_hash": bytes(r["leaf_hash"]).hex(),
            }
            for r in rows
        ]

    async def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        return None

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        if self._size != tree_size:
            await self._prefetch(tree_size)
        return merkle.inclusion_proof(index, tree_size, lambda lv, i: self._nodes[(lv, i)])

    async def incident_indexes(self, incident_id: str) -> list[int]:
        return list(self.indexes)

    async def _prefetch(self, tree_size: int) -> None:
        wanted: list[tuple[int, int]] = []

        def record(level: int, index: int) -> bytes:
            wanted.append((level, index))
            return b"\0" * merkle.HASH_SIZE

        for index in self.indexes:
            if index < tree_size:
                merkle.inclusion_proof(index, tree_size, record)
        self._nodes = await tree.fetch_nodes(self.conn, wanted)
        self._size = tree_size


@dataclass(frozen=True)
class Evidence:
    """What the badge says: which signed head vouches for how many of the entries."""

    ok: bool
    checked: int
    unsigned: int
    head: dict[str, Any] | None
    reason: str | None = None

    @property
    def downloadable(self) -> bool:
        return self.ok and self.unsigned == 0


Key = tuple[str, int, int]
"""(incident, head size, entry count): an answer stays right while these stay the same."""


async def evidence_of(
    conn: asyncpg.Connection,
    signer: NoteSigner,
    incident_id: str,
    *,
    cache: OrderedDict[Key, Evidence] | None = None,
    want_bundle: bool = False,
) -> tuple[Evidence, dict[str, Any] | None]:
    """Check the incident's signed entries with `export_bundle`, in the caller's transaction.

    A cached answer is used (and no bundle built) unless `want_bundle`; a new answer is
    put in `cache`.
    """
    indexes = [
        r["idx"]
        for r in await conn.fetch(
            f"SELECT idx FROM ledger WHERE incident_id = $1 AND {INCIDENT_EVENTS}"  # noqa: S608
            " ORDER BY idx",  # the timeline's entries
            incident_id,
        )
    ]
    head = await latest_head(conn)
    if head is None:
        return Evidence(False, 0, len(indexes), None, "no tree head is signed yet"), None
    signed = [i for i in indexes if i < head.tree_size]
    unsigned = len(indexes) - len(signed)
    key = (incident_id, head.tree_size, len(indexes))
    if cache is not None and not want_bundle and key in cache:
        cache.move_to_end(key)
        return cache[key], None
    shown = {k: v for k, v in head.to_json().items() if k != "checkpoint"}
    if not signed:
        return Evidence(
            False, 0, unsigned, shown, "none of its entries is under a signed head yet"
        ), None
    bundle: dict[str, Any] | None
    try:
        bundle = await export_bundle(DbSource(conn, signer, signed), incident_id)
    except ExportError as exc:
        evidence, bundle = Evidence(False, 0, unsigned, shown, str(exc)), None
    else:
        evidence = Evidence(True, len(bundle["entries"]), unsigned, shown)
    if cache is not None:
        cache[key] = evidence
        while len(cache) > CACHED:
            cache.popitem(last=False)
    return evidence, bundle


class EvidenceDesk:
    """Checks incidents against the latest signed head; remembers recent answers."""

    def __init__(self, runtime: Runtime, signer: NoteSigner) -> None:
        self.runtime = runtime
        self.signer = signer
        self._cache: OrderedDict[Key, Evidence] = OrderedDict()

    async def badge(self, incident_id: str) -> Evidence:
        """The incident's signed entries checked (cached per head and entry count)."""
        evidence, _bundle = await self._check(incident_id, want_bundle=False)
        return evidence

    async def bundle(self, incident_id: str) -> tuple[Evidence, dict[str, Any] | None]:
        """The evidence bundle, as `incidents audit export` writes it, when all is signed."""
        return await self._check(incident_id, want_bundle=True)

    async def _check(
        self, incident_id: str, *, want_bundle: bool
    ) -> tuple[Evidence, dict[str, Any] | None]:
        async with (
            self.runtime.db.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await evidence_of(
                conn, self.signer, incident_id, cache=self._cache, want_bundle=want_bundle
            )
