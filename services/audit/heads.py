"""Signed tree heads: the signing key, and the loop that signs and publishes heads.

A head is signed every `checkpoint_every` entries or `checkpoint_interval` seconds,
whichever comes first, as long as something other than checkpoints was recorded
since the last one (otherwise each head's own ledger entry would call for another
head forever). The head row and its `audit.checkpoint.signed.v1` event are written
in one transaction; the event reaches the ledger like every other record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import Gauge

from services.audit import tree
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.domain.envelope import utc_rfc3339
from services.domain.events import CheckpointSigned, Topic, make_event
from services.infra import eventstore
from services.infra.kafka import TRANSIENT_ERRORS
from services.infra.runtime import Runtime
from services.infra.settings import AuditSettings

log = logging.getLogger(__name__)
LEDGER_ENTRIES = Gauge("incidents_ledger_entries", "Entries in the audit ledger.")
SIGNED_SIZE = Gauge("incidents_ledger_signed_tree_size", "Tree size of the latest signed head.")
SINCE_HEAD = Gauge(
    "incidents_ledger_seconds_since_signed_head", "Seconds since the latest head was signed."
)


def load_signer(settings: AuditSettings) -> NoteSigner:
    """The signing key from its file; created (0600) on first start outside production."""
    path = settings.signing_key_file
    if path.exists():
        return NoteSigner.from_pem(path.read_bytes(), settings.ledger_origin)
    if settings.environment == "production":
        raise RuntimeError(f"signing key {path} is missing; production never generates one")
    signer = NoteSigner.generate(settings.ledger_origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile: use theirs
        return NoteSigner.from_pem(path.read_bytes(), settings.ledger_origin)
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.private_pem())
    log.warning("created a new signing key at %s (key id %s)", path, signer.key_id)
    return signer


@dataclass(frozen=True)
class Head:
    """A signed tree head as stored and served."""

    tree_size: int
    root_hash: bytes
    signed_at: datetime
    key_id: str
    checkpoint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "timestamp": utc_rfc3339(self.signed_at),
            "key_id": self.key_id,
            "checkpoint": self.checkpoint,
        }


def _head(row: asyncpg.Record) -> Head:
    return Head(
        tree_size=row["tree_size"],
        root_hash=bytes(row["root_hash"]),
        signed_at=row["signed_at"],
        key_id=row["key_id"],
        checkpoint=row["checkpoint"],
    )


async def latest_head(conn: asyncpg.Connection) -> Head | None:
    row = await conn.fetchrow("SELECT * FROM ledger_heads ORDER BY tree_size DESC LIMIT 1")
    return _head(row) if row else None


async def all_heads(conn: asyncpg.Connection) -> list[Head]:
    return [_head(r) for r in await conn.fetch("SELECT * FROM ledger_heads ORDER BY tree_size")]


class HeadSigner:
    """Signs new tree heads when due."""

    def __init__(self, runtime: Runtime, settings: AuditSettings, signer: NoteSigner) -> None:
        self.runtime = runtime
        self.settings = settings
        self.signer = signer
        self.checkpoints_topic = settings.topic(Topic.CHECKPOINTS)
        self.last_signed_at = 0.0

    async def sign_if_due(self, *, force: bool = False) -> Head | None:
        """Sign the current tree if enough is new (or `force` and anything is new)."""
        async with self.runtime.db.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            size = int(await conn.fetchval("SELECT last + 1 FROM counters WHERE name = 'ledger'"))
            previous = await latest_head(conn)
            since = previous.tree_size if previous else 0
            if size <= since:
                return None
            fresh = await conn.fetchval(
                "SELECT count(*) FROM ledger WHERE idx >= $1 AND topic <> $2",
                since,
                self.checkpoints_topic,
            )
            elapsed = asyncio.get_running_loop().time() - self.last_signed_at
            due = fresh >= self.settings.checkpoint_every or (
                fresh > 0 and (force or elapsed >= self.settings.checkpoint_interval)
            )
            if not due:
                return None
            root = await tree.root_at(conn, size)
            now = datetime.now(UTC)
            note = sign_checkpoint(self.signer, Checkpoint(self.signer.name, size, root))
            head = Head(size, root, now, self.signer.key_id, note)
            inserted = await conn.execute(
                "INSERT INTO ledger_heads (tree_size, root_hash, signed_at, key_id, checkpoint)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                size,
                root,
                now,
                head.key_id,
                note,
            )
            if not inserted.endswith(" 1"):
                return None  # another audit instance signed this size
            event = make_event(
                "audit.checkpoint.signed.v1",
                subject=self.signer.name,
                data=CheckpointSigned(
                    tree_size=size,
                    root_hash=root.hex(),
                    timestamp=now,
                    key_id=head.key_id,
                    checkpoint=note,
                ),
                source=self.runtime.source,
                time=now,
                actor="system:audit",
            )
            await eventstore.enqueue(
                conn,
                [
                    (
                        event.id,
                        self.checkpoints_topic,
                        self.signer.name,
                        event.to_bytes(),
                        eventstore.record_headers(event),
                    )
                ],
            )
        self.last_signed_at = asyncio.get_running_loop().time()
        log.info("signed tree head %d %s", size, root.hex())
        return head

    async def _measure(self) -> None:
        async with self.runtime.db.acquire() as conn:
            size = await conn.fetchval("SELECT last + 1 FROM counters WHERE name = 'ledger'")
            head = await latest_head(conn)
        LEDGER_ENTRIES.set(size)
        if head is not None:
            SINCE_HEAD.set((datetime.now(UTC) - head.signed_at).total_seconds())
            SIGNED_SIZE.set(head.tree_size)

    async def run(self, stop: asyncio.Event) -> None:
        """Check for due heads until `stop`; never dies on a transient failure."""
        tick = min(1.0, self.settings.checkpoint_interval)
        while not stop.is_set():
            try:
                await self.sign_if_due()
                await self._measure()
            except TRANSIENT_ERRORS as exc:
                log.warning("signing a tree head failed (will retry): %r", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)
