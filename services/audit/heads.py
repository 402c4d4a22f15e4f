"""Signed tree heads: the signing key, and the loop that signs and publishes heads.

A head is signed every `checkpoint_every` entries or `checkpoint_interval` seconds,
whichever comes first, as long as something other than checkpoints was recorded
since the last one (otherwise each head's own ledger entry would call for another
head forever). The head row and its `audit.checkpoint.signed.v1` event are written
in one transaction; the event reaches the ledger like every other record.

`WitnessSubmitter` then has each new head cosigned by the configured witnesses
(`INCIDENTS_WITNESSES`, docs/witness.md) and publishes `audit.checkpoint.cosigned.v1`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from prometheus_client import Counter, Gauge

from services.audit import merkle, tree
from services.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteError,
    NoteSigner,
    sign_checkpoint,
    verify_checkpoint,
)
from services.audit.cosignature import CosignatureVerifier, append_signatures
from services.domain.envelope import utc_rfc3339
from services.domain.events import CheckpointCosigned, CheckpointSigned, Topic, make_event
from services.infra import eventstore
from services.infra.kafka import TRANSIENT_ERRORS
from services.infra.runtime import Runtime, follow
from services.infra.settings import AuditSettings

log = logging.getLogger(__name__)
LEDGER_ENTRIES = Gauge("incidents_ledger_entries", "Entries in the audit ledger.")
HEADS_REFUSED = Counter(
    "incidents_ledger_heads_refused_total",
    "Tree heads the signer refused: the tree no longer extends a head it signed before.",
)
SIGNED_SIZE = Gauge("incidents_ledger_signed_tree_size", "Tree size of the latest signed head.")
SINCE_HEAD = Gauge(
    "incidents_ledger_seconds_since_signed_head", "Seconds since the latest head was signed."
)
WITNESSED_REFRESH_SECONDS = 60.0
"""How often the head signer asks the witnesses for the latest head of the log they
cosigned (its anchors outside the database)."""
IDLE_LOOK_SECONDS = 5.0
"""Longest pause between two looks of an idle head signer or console index (entries
that another audit instance appended, the gauges); this process's appends wake them."""


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
class Cosigned:
    """A witness's cosignature of a head: its verifier key, signature line and time."""

    witness: str
    signature: str
    cosigned_at: datetime


@dataclass(frozen=True)
class Head:
    """A signed tree head as stored and served, with the witnesses' cosignatures."""

    tree_size: int
    root_hash: bytes
    signed_at: datetime
    key_id: str
    checkpoint: str
    cosignatures: tuple[Cosigned, ...] = ()

    @property
    def cosigned_checkpoint(self) -> str:
        """The signed note with every witness cosignature line appended."""
        return append_signatures(self.checkpoint, [c.signature for c in self.cosignatures])

    def to_json(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "timestamp": utc_rfc3339(self.signed_at),
            "key_id": self.key_id,
            "checkpoint": self.checkpoint,
            "cosigned_checkpoint": self.cosigned_checkpoint,
            "cosignatures": [
                {"witness": c.witness, "timestamp": utc_rfc3339(c.cosigned_at)}
                for c in self.cosignatures
            ],
        }


def _head(row: asyncpg.Record, cosignatures: Sequence[Cosigned] = ()) -> Head:
    return Head(
        tree_size=row["tree_size"],
        root_hash=bytes(row["root_hash"]),
        signed_at=row["signed_at"],
        key_id=row["key_id"],
        checkpoint=row["checkpoint"],
        cosignatures=tuple(cosignatures),
    )


async def _with_cosignatures(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[Head]:
    found: dict[int, list[Cosigned]] = {}
    for r in await conn.fetch(
        "SELECT tree_size, witness, signature, cosigned_at FROM ledger_cosignatures"
        " WHERE tree_size = ANY($1::bigint[]) ORDER BY tree_size, witness",
        [row["tree_size"] for row in rows],
    ):
        found.setdefault(r["tree_size"], []).append(
            Cosigned(r["witness"], r["signature"], r["cosigned_at"])
        )
    return [_head(row, found.get(row["tree_size"], ())) for row in rows]


async def latest_head(conn: asyncpg.Connection) -> Head | None:
    row = await conn.fetchrow("SELECT * FROM ledger_heads ORDER BY tree_size DESC LIMIT 1")
    return (await _with_cosignatures(conn, [row]))[0] if row else None


async def all_heads(conn: asyncpg.Connection) -> list[Head]:
    rows = await conn.fetch("SELECT * FROM ledger_heads ORDER BY tree_size")
    return await _with_cosignatures(conn, list(rows))


async def head_at(conn: asyncpg.Connection, tree_size: int) -> Head | None:
    """The head of exactly `tree_size` entries, if one was signed."""
    row = await conn.fetchrow("SELECT * FROM ledger_heads WHERE tree_size = $1", tree_size)
    return (await _with_cosignatures(conn, [row]))[0] if row else None


def _signed_size_root(note: str, signer: NoteSigner) -> tuple[int, bytes] | None:
    """The size and root a checkpoint note says, read through this log key's signature
    check; None for a note this key did not sign (one log, one key: `identity`), that
    is, an edited one: the columns beside it are never taken instead."""
    try:
        signed = verify_checkpoint(signer.verifier(), note)
    except (NoteError, CheckpointError):
        return None
    return signed.tree_size, signed.root_hash


def _gauges(size: int, head: Head | None) -> None:
    """The ledger's size and its latest signed head, as the metrics show them."""
    LEDGER_ENTRIES.set(size)
    if head is not None:
        SINCE_HEAD.set((datetime.now(UTC) - head.signed_at).total_seconds())
        SIGNED_SIZE.set(head.tree_size)


class HeadSigner:
    """Signs new tree heads when due."""

    def __init__(
        self,
        runtime: Runtime,
        settings: AuditSettings,
        signer: NoteSigner,
        witnesses: Sequence[WitnessEndpoint] = (),
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.signer = signer
        self.checkpoints_topic = settings.topic(Topic.CHECKPOINTS)
        self.last_signed_at = 0.0
        self.grew = asyncio.Event()
        """Set by this process's ledger appends: `run` looks for a due head then."""
        self.unsigned = False
        """The last look found entries not yet under a head (not due yet)."""
        self.last_signed: tuple[int, bytes] | None = None
        """(size, root) of the last head this process signed: the tree must extend it
        even if the table of heads was cut or edited since."""
        self.witnesses = list(witnesses)
        self.witnessed: dict[str, tuple[int, bytes]] = {}
        """Witness URL -> (size, root) of the latest head of this log it cosigned, as it
        served it (`refresh_witnessed`): anchors kept outside the database, so a tree
        cut back or rewritten together with the heads above it is refused after a
        restart too, and by an instance that did not sign the head itself."""
        self.witnessed_at: float | None = None
        self.http = http

    async def sign_if_due(self, *, force: bool = False) -> Head | None:
        """Sign the current tree if enough is new (or `force` and anything is new)."""
        async with self.runtime.db.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            size = int(await conn.fetchval("SELECT last + 1 FROM counters WHERE name = 'ledger'"))
            previous = await latest_head(conn)
            _gauges(size, previous)
            since = previous.tree_size if previous else 0
            self.unsigned = False
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
                self.unsigned = fresh > 0
                return None
            root = await tree.root_at(conn, size)
            if not await self._extends(conn, previous, size, root):
                return None
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
                CheckpointSigned.TYPE,
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
        self.last_signed = (size, root)
        _gauges(size, head)
        log.info("signed tree head %d %s", size, root.hex())
        return head

    async def _extends(
        self, conn: asyncpg.Connection, previous: Head | None, size: int, root: bytes
    ) -> bool:
        """Whether the tree of `size` entries (`root`) extends the heads already signed:
        the latest in the table, read from its signed note (the columns beside it can be
        edited; the note must carry this key's valid signature), and the last this
        process signed. A tree rewritten under them (a leaf
        and its nodes changed by someone with the database's rights) is refused and
        said, never signed: the log's key then signs no fork."""
        anchors: list[tuple[int, bytes]] = [*self.witnessed.values()]
        if previous is not None:
            signed = _signed_size_root(previous.checkpoint, self.signer)
            if signed is None:
                HEADS_REFUSED.inc()
                log.critical(
                    "refusing to sign tree head %d: the latest signed head in the table"
                    " (size %d) does not carry this log key's valid signature; the table of"
                    " heads was changed behind audit's back",
                    size,
                    previous.tree_size,
                )
                return False
            anchors.append(signed)
        if self.last_signed is not None:
            anchors.append(self.last_signed)
        for old_size, old_root in anchors:
            if old_size > size:
                why = f"the ledger holds {size} entries, fewer than the signed head's {old_size}"
            elif old_size == 0:
                continue
            elif old_size == size:
                why = "" if old_root == root else "another root at the same size"
            else:
                proof = await tree.consistency_proof(conn, old_size, size)
                why = merkle.consistency_failure(old_size, size, proof, old_root, root) or ""
            if why:
                HEADS_REFUSED.inc()
                log.critical(
                    "refusing to sign tree head %d: it does not extend the signed head of"
                    " size %d (%s); the ledger was changed behind audit's back",
                    size,
                    old_size,
                    why,
                )
                return False
        return True

    async def refresh_witnessed(self, *, force: bool = False) -> None:
        """Ask each witness for the latest head of this log it cosigned (c2sp.org
        tlog-witness, ``GET <prefix>/<sha256 hex of origin>/checkpoint``), at most once
        every `WITNESSED_REFRESH_SECONDS` unless `force`: the heads the tree must extend,
        whatever the database says. One this log key did not sign is ignored (said); a
        witness that is down, or never saw this log, adds nothing this time."""
        now = asyncio.get_running_loop().time()
        if not self.witnesses or (
            not force
            and self.witnessed_at is not None
            and now - self.witnessed_at < WITNESSED_REFRESH_SECONDS
        ):
            return
        self.witnessed_at = now
        origin = hashlib.sha256(self.signer.name.encode("utf-8")).hexdigest()
        for witness in self.witnesses:
            url = f"{witness.url.rstrip('/')}/{origin}/checkpoint"
            try:
                if self.http is not None:
                    answer = await self.http.get(url, timeout=WitnessSubmitter.TIMEOUT)
                else:
                    async with httpx.AsyncClient(timeout=WitnessSubmitter.TIMEOUT) as http:
                        answer = await http.get(url)
            except httpx.HTTPError as exc:
                log.warning("witness %s: its latest head of this log not read: %r", url, exc)
                continue
            if answer.status_code != 200:
                continue  # 404: it never cosigned this log
            signed = _signed_size_root(answer.text, self.signer)
            if signed is None:
                log.error("witness %s serves a head of this log this key did not sign", url)
                continue
            known = self.witnessed.get(witness.url)
            if known is None or signed[0] >= known[0]:
                self.witnessed[witness.url] = signed

    async def _step(self) -> bool:
        """One look: the witnesses' heads when due, then sign a due head (setting the
        gauges from what it read); True while entries wait unsigned."""
        try:
            await self.refresh_witnessed()
            await self.sign_if_due()
        except TRANSIENT_ERRORS as exc:
            log.warning("signing a tree head failed (will retry): %r", exc)
            return True
        return self.unsigned

    async def run(self, stop: asyncio.Event) -> None:
        """Sign due heads until `stop`; never dies on a transient failure.

        Looks every `min(1, checkpoint_interval)` seconds while entries wait unsigned (so
        a head covers them within the interval and a look), otherwise when this
        process appends to the ledger (`grew`) or every `IDLE_LOOK_SECONDS` (another
        instance's entries; the gauges): an idle ledger costs no statement a second.
        """
        await follow(
            stop,
            self.grew,
            self._step,
            spacing=min(1.0, self.settings.checkpoint_interval),
            fallback=IDLE_LOOK_SECONDS,
        )


# ----------------------------------------------------------------------- witnesses


@dataclass(frozen=True)
class WitnessEndpoint:
    """A configured witness: where to submit, and the key its cosignatures must verify with."""

    url: str
    verifier: CosignatureVerifier

    @property
    def key(self) -> str:
        return self.verifier.verifier_key


def load_witnesses(settings: AuditSettings) -> list[WitnessEndpoint]:
    """`INCIDENTS_WITNESSES` parsed; a malformed key stops start-up with the reason."""
    witnesses = []
    for url, vkey in settings.witnesses:
        try:
            witnesses.append(WitnessEndpoint(url, CosignatureVerifier.from_verifier_key(vkey)))
        except NoteError as exc:
            raise ValueError(f"INCIDENTS_WITNESSES: the key of {url}: {exc}") from exc
    return witnesses


class WitnessRefused(Exception):
    """A witness answered something other than a cosignature or a 409 (see the log)."""


_SUBMIT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.HTTPError,
    WitnessRefused,
    *TRANSIENT_ERRORS,
)


class WitnessSubmitter:
    """Gets the latest signed head cosigned by every configured witness (c2sp.org/tlog-witness).

    Runs beside `HeadSigner`, never inside it: a witness that is down or refuses delays
    only its own cosignature, and is retried with a backoff of up to a minute. Each
    submission proves consistency from the size the witness last cosigned (our stored
    cosignatures, or the size a 409 names); a cosignature is checked with the witness's
    configured key before it is stored and published on `audit.checkpoints`.
    """

    MAX_BACKOFF = 60.0
    TIMEOUT = 10.0

    def __init__(
        self,
        runtime: Runtime,
        settings: AuditSettings,
        witnesses: Sequence[WitnessEndpoint],
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.runtime = runtime
        self.checkpoints_topic = settings.topic(Topic.CHECKPOINTS)
        self.witnesses = list(witnesses)
        self.http = http
        self.known: dict[str, int] = {}  # witness key -> size it says it last cosigned
        self.failures: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}

    async def submit_all(self) -> int:
        """One round: each witness not backing off gets the latest head; returns how
        many new cosignatures were stored."""
        now = asyncio.get_running_loop().time()
        stored = 0
        for witness in self.witnesses:
            if self.retry_at.get(witness.key, 0.0) > now:
                continue
            try:
                stored += await self.submit(witness)
            except _SUBMIT_ERRORS as exc:
                failures = self.failures.get(witness.key, 0) + 1
                self.failures[witness.key] = failures
                delay = min(self.MAX_BACKOFF, 2.0**failures)
                self.retry_at[witness.key] = now + delay
                log.warning(
                    "witness %s: no cosignature (retry in %.0f s): %r", witness.url, delay, exc
                )
            else:
                self.failures.pop(witness.key, None)
        return stored

    async def submit(self, witness: WitnessEndpoint) -> int:
        """Submit the latest head to `witness` unless it already cosigned it; 1 if stored."""
        async with self.runtime.db.acquire() as conn:
            head = await latest_head(conn)
            if head is None or any(c.witness == witness.key for c in head.cosignatures):
                return 0
            cosigned = await conn.fetchval(
                "SELECT max(tree_size) FROM ledger_cosignatures WHERE witness = $1", witness.key
            )
        old = self.known.get(witness.key, int(cosigned or 0))
        for _ in range(3):  # a 409 names the size to prove from; resubmit once or twice
            if old > head.tree_size:
                raise WitnessRefused(
                    f"the witness cosigned a tree of {old} entries, larger than our head of"
                    f" {head.tree_size}: the ledger was cut back or forked"
                )
            answer = await self._post(witness, await self._body(old, head))
            if answer.status_code == 409:
                old = _size_of(answer.text)
                self.known[witness.key] = old
                continue
            if answer.status_code != 200:
                raise WitnessRefused(f"answered {answer.status_code}: {answer.text[:300]!r}")
            line = _cosignature_line(witness, head.checkpoint, answer.text)
            self.known[witness.key] = head.tree_size
            return await self._store(witness, head, line)
        raise WitnessRefused("the witness kept answering 409")

    async def _body(self, old: int, head: Head) -> str:
        proof: list[bytes] = []
        if 0 < old < head.tree_size:
            async with self.runtime.db.acquire() as conn:
                proof = await tree.consistency_proof(conn, old, head.tree_size)
        lines = [f"old {old}", *(base64.b64encode(p).decode() for p in proof)]
        return "\n".join(lines) + "\n\n" + head.checkpoint

    async def _post(self, witness: WitnessEndpoint, body: str) -> httpx.Response:
        url = f"{witness.url}/add-checkpoint"
        if self.http is not None:
            return await self.http.post(url, content=body.encode(), timeout=self.TIMEOUT)
        async with httpx.AsyncClient(timeout=self.TIMEOUT) as http:
            return await http.post(url, content=body.encode())

    async def _store(self, witness: WitnessEndpoint, head: Head, line: str) -> int:
        cosignature = witness.verifier.verify(head.checkpoint + line)
        at = datetime.fromtimestamp(cosignature.timestamp, UTC)
        async with self.runtime.db.acquire() as conn, conn.transaction():
            inserted = await conn.execute(
                "INSERT INTO ledger_cosignatures (tree_size, witness, signature, cosigned_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                head.tree_size,
                witness.key,
                line,
                at,
            )
            if not inserted.endswith(" 1"):
                return 0
            now_head = await head_at(conn, head.tree_size)
            note = now_head.cosigned_checkpoint if now_head else head.checkpoint + line
            event = make_event(
                CheckpointCosigned.TYPE,
                subject=head.checkpoint.split("\n", 1)[0],
                data=CheckpointCosigned(
                    tree_size=head.tree_size,
                    root_hash=head.root_hash.hex(),
                    witness=witness.key,
                    timestamp=at,
                    checkpoint=note,
                ),
                source=self.runtime.source,
                time=datetime.now(UTC),
                actor="system:audit",
            )
            await eventstore.enqueue(
                conn,
                [
                    (
                        event.id,
                        self.checkpoints_topic,
                        event.subject,
                        event.to_bytes(),
                        eventstore.record_headers(event),
                    )
                ],
            )
        log.info("witness %s cosigned tree head %d", witness.url, head.tree_size)
        return 1

    async def run(self, stop: asyncio.Event) -> None:
        """Submit until `stop`; a witness's failure is logged and retried, never raised."""
        while not stop.is_set():
            await self.submit_all()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def _size_of(text: str) -> int:
    """The size in a 409 body (``<size>\\n``, text/x.tlog.size)."""
    value = text.strip()
    if not value.isascii() or not value.isdigit():
        raise WitnessRefused(f"a 409 without a size: {text[:100]!r}")
    return int(value)


def _cosignature_line(witness: WitnessEndpoint, checkpoint: str, answer: str) -> str:
    """The answer's signature line that verifies with the witness's key (others ignored)."""
    for line in answer.splitlines(keepends=True):
        try:
            witness.verifier.verify(checkpoint + line)
        except NoteError:
            continue
        return line
    raise WitnessRefused("no line of the answer is a valid cosignature of the head")
