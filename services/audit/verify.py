"""Checking the audit ledger from the outside: signed heads, every entry, evidence bundles.

An auditor trusts one thing, the log's Ed25519 key (pin it with ``trusted_key``; without
a pin the key the source serves is used, and its id is reported so it can be compared).
Everything else is recomputed here from what a `LedgerSource` serves: the audit service
over HTTP (`HttpSource`), an evidence bundle (`BundleSource`), or entries held in memory
(`MemorySource`, for tests and benchmarks). Nothing here touches the database.

`verify_ledger` checks the whole log:

1. every signed head verifies with the key, and its JSON fields equal its signed note;
2. the entries are streamed from index 0 to the end of what the source has. For each,
   in this order: the source serves it at its position; its leaf hashes
   (``SHA-256(0x00 || leaf)``) to the served ``leaf_hash`` (an edited byte whose hash
   column was left alone); the leaf is canonical JSON of version 1 whose own ``index``
   is its position (deleted, inserted or swapped entries, even when the rows were
   renumbered to stay contiguous); ``recorded_at`` never goes backwards; the fields
   served next to the leaf say what the leaf says, and so do the index columns served
   as stored (``indexed``: the ``incident_id``, ``event_type``, ``valid``, ``event_id``
   and ``recorded_at`` columns the reads select and date an entry by, and the
   ``ledger_people`` rows at its index), each derived from the leaf by the rule the
   append uses (`services.audit.indexed`): an entry pointed away from its incident, or
   a person's index row forged or removed, is named at its index. An entry served
   without ``indexed`` is counted (`VerifyReport.unindexed`) and, unless the source may
   omit them, fails the run: leaving the field out must not pass for intact. The
   service's answer to the empty range that ends the walk says what lies beyond it
   (`_strays`): an entry stored past a gap, or a ``ledger_people`` row where no entry
   is, is named too;
3. whenever the tree reaches a head's size, the recomputed Merkle root equals the signed
   root. A mismatch means an edit whose leaf hash was recomputed too: the first bad
   index then lies in ``[previous head size, this head size)``. When the source serves
   consistency proofs, the proof between each head and the one before it must verify;
4. a head larger than the number of entries means the tail was cut off: the first bad
   index is the first missing one, the number of entries.

A checkpoint event inside the ledger that verifies with the key must be among the served
heads with the same root, so a head cannot be dropped from the list to hide a rewrite.

Heads from elsewhere (`KnownHead`: the verifier's own state file, the
``audit.checkpoints`` topic, a checkpoint note or bundle given on the command line; see
`services.audit.trust`) are checked the same way: each must verify with the key, and the
entries must hash to its root at its size. Two heads of one size with different roots
are a fork; a head larger than the tree means the tail was cut off, even when the
service's own list of heads was cut with it and a new, smaller head signed since. The
report then names both heads (`VerifyReport.conflict`). Once every head is reached,
each head from elsewhere is also proven consistent with the source's latest head by an
RFC 9162 consistency proof built from the recomputed entries (the walk keeps the few
subtrees each proof needs); the service's own consistency proofs between consecutive
heads are checked as well.

A damaged entry does not stop the walk: the verifier records it, carries the tree on
with the entry's stored leaf hash, and reads on, so the report names every bad index
(`VerifyReport.bad_indexes`). Only a problem after which positions no longer line up (a
missing, inserted or reordered entry, a signed root that does not match) ends the walk.

"First bad index" is the first position whose entry fails a check of step 2. When the
leaf at position ``p`` claims index ``p - 1``, the leaf before it claims that index too:
an entry was inserted at ``p - 1``, which is reported (unless a signed head already
vouches for it, then ``p``).

`export_bundle` writes the evidence for one incident: the key, the tree size it was cut
at and the signed head of that size, the list of the incident's leaf indexes below it,
the incident's leaves and an inclusion proof of each against that head.
`verify_bundle` checks such a bundle offline (no database, no network): the head's
signature, that the stated tree size is the head's, each leaf against its inclusion
proof and the signed root, that every leaf is an event of the incident, and that the
entries are exactly the listed indexes (an entry deleted, or a bundle cut short,
fails). The index list itself is not signed: a forger who deletes an entry *and* its
index is caught only against the live ledger (its timeline lists the index).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import msgspec
import pybase64

from services.audit import merkle
from services.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteError,
    NoteSigner,
    NoteVerifier,
    parse_verifier_key,
    sign_checkpoint,
    verify_checkpoint,
)
from services.audit.indexed import (
    columns_document,
    index_problems,
    indexed_of_leaf,
    people_of_leaf,
)
from services.domain.envelope import canonical_json, utc_rfc3339
from services.domain.events import CheckpointSigned, PeopleImported

__all__ = [
    "BUNDLE_FORMAT",
    "PAGE_SIZE",
    "AuthError",
    "BundleSource",
    "ExportError",
    "HttpSource",
    "KnownHead",
    "LedgerSource",
    "MemorySource",
    "ProofSource",
    "SourceError",
    "VerifyReport",
    "export_bundle",
    "key_document",
    "verify_bundle",
    "verify_ledger",
]

BUNDLE_FORMAT = "incidents.audit.bundle/v2"
"""The ``format`` field of evidence bundles this module writes and reads (v2 states its
tree size and lists the incident's indexes; v1 could not show an entry was deleted)."""
MAX_PROBLEMS = 100
"""Most problems a report spells out; every bad index is still listed."""

PAGE_SIZE = 1000
"""Entries per request: the most the audit API serves at once."""

LEAF_VERSION = 1
CHECKPOINT_EVENT = CheckpointSigned.TYPE
CHUNK_EVENT = PeopleImported.TYPE
_INDEXED = 5
"""The columns ``indexed`` holds when it carries no ``people`` (see `_indexed_differs`)."""
_RECORDED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", re.ASCII)
_SERVED_FIELDS = ("recorded_at", "topic", "partition", "offset")
INDEX_UNCHECKED = "index columns not checked: the source did not serve them"
"""How a report says entries came without their index columns (`VerifyReport.unindexed`)."""
_GAP = 64  # an export fetches indexes this close together in one request

Entry = dict[str, Any]
"""One served entry: ``index``, ``leaf`` (base64) and optionally ``leaf_hash`` (hex),
``recorded_at``, ``topic``, ``partition``, ``offset``, ``event``, ``indexed``."""

Progress = Callable[[int, int], None]
"""``progress(entries_done, entries_expected)``, called after every page."""


class SourceError(Exception):
    """The source could not answer: unreachable, an HTTP error, or a malformed reply."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(SourceError):
    """The source refused the credentials (HTTP 401) or the role (HTTP 403)."""


class ExportError(Exception):
    """An evidence bundle cannot be made (nothing to export, or no head covers it yet)."""


@dataclass(frozen=True)
class KnownHead:
    """A signed checkpoint note from outside the source, and where it came from.

    ``optional`` heads (read from a shared topic anyone may write to) are skipped when
    they name another log; any other head must verify with the log's key.
    """

    note: str
    where: str
    optional: bool = False


# ----------------------------------------------------------------------- sources


class LedgerSource(Protocol):
    """Where a verifier reads the ledger from."""

    async def public_key(self) -> dict[str, Any]:
        """``{origin, public_key (base64), verifier_key, key_id}``."""
        ...

    async def heads(self) -> list[dict[str, Any]]:
        """Every signed head: ``{tree_size, root_hash (hex), timestamp, key_id, checkpoint}``."""
        ...

    def entries(self, start: int = 0, end: int | None = None) -> AsyncIterator[list[Entry]]:
        """Pages of entries with index in ``[start, end)`` (``None``: to the end), in order."""
        ...

    async def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        """RFC 9162 consistency proof between two tree sizes, or None if not offered."""
        ...


class ProofSource(LedgerSource, Protocol):
    """A source that can also serve what an evidence bundle needs."""

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``tree_size``."""
        ...

    async def incident_indexes(self, incident_id: str) -> list[int]:
        """Ledger indexes of the incident's events, ascending (empty if none)."""
        ...


def key_document(verifier: NoteVerifier) -> dict[str, Any]:
    """The public-key document the audit API serves, for a key."""
    return {
        "origin": verifier.name,
        "public_key": base64.b64encode(verifier.public_key).decode("ascii"),
        "verifier_key": verifier.verifier_key,
        "key_id": verifier.key_id,
    }


class HttpSource:
    """The audit service's HTTP API (``/v1/ledger/...``), read with httpx.

    ``token`` is an auditor's bearer token (entries and incident queries need it; heads,
    the key and proofs are public). Tests pass ``client`` or ``transport`` (for example
    ``httpx.ASGITransport``) to talk to an app in-process. Use as an async context
    manager, or call `aclose`, to close a client it made itself.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        page_size: int = PAGE_SIZE,
        require_indexed: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.page_size = page_size
        self.require_indexed = require_indexed
        """Whether an entry served without its index columns fails `verify_ledger` (the
        audit service serves them; false for an older one, `--allow-unindexed`)."""
        self._owned = client is None
        self._client = client or httpx.AsyncClient(transport=transport, timeout=timeout)
        self.beyond: tuple[int, Any] | None = None
        """The empty range that ended the last walk and what the service says lies
        beyond it (``beyond``: ``next_index``, ``stray_people``); see `_strays`."""

    async def __aenter__(self) -> HttpSource:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this source made it."""
        if self._owned:
            await self._client.aclose()

    async def get_json(
        self, path: str, params: dict[str, Any] | None = None, *, auth: bool = True
    ) -> Any:
        """GET ``path`` and return the JSON body; `SourceError`/`AuthError` otherwise."""
        where = f"{self.url}{path}"
        headers = {"authorization": f"Bearer {self.token}"} if auth and self.token else {}
        try:
            answer = await self._client.get(where, params=params, headers=headers)
        except httpx.ConnectError as exc:
            reason = str(exc) or "connection refused"
            raise SourceError(
                f"cannot connect to {self.url} ({reason}): is the audit service running?"
            ) from exc
        except httpx.TimeoutException as exc:
            raise SourceError(f"{where} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise SourceError(f"{where}: {exc!r}") from exc
        if answer.status_code != 200:
            detail = _problem_detail(answer)
            status = answer.status_code
            if status in (401, 403):
                raise AuthError(f"{where} answered {status}: {detail}", status=status)
            raise SourceError(f"{where} answered {status}: {detail}", status=status)
        try:
            return answer.json()
        except ValueError as exc:
            raise SourceError(f"{where} did not answer JSON") from exc

    async def public_key(self) -> dict[str, Any]:
        return _object(await self.get_json("/v1/ledger/public-key", auth=False), "public key")

    async def heads(self) -> list[dict[str, Any]]:
        body = _object(await self.get_json("/v1/ledger/heads", auth=False), "heads")
        return _list(body.get("heads"), "heads")

    async def entries(self, start: int = 0, end: int | None = None) -> AsyncIterator[list[Entry]]:
        position = start
        self.beyond = None
        while end is None or position < end:
            stop = position + self.page_size if end is None else min(end, position + self.page_size)
            page = await self._page(position, stop)
            if not page:
                return
            yield page
            position = stop

    async def _page(self, start: int, end: int) -> list[Entry]:
        try:
            return await self._window(start, end)
        except SourceError as exc:
            if exc.status is None or exc.status < 500 or end - start == 1:
                raise
        # The service fails on a whole page when one stored leaf cannot be decoded any
        # more: fetch one by one so the verifier learns exactly which entry it is.
        page: list[Entry] = []
        readable = False
        for index in range(start, end):
            try:
                page.extend(await self._window(index, index + 1))
                readable = True
            except SourceError as exc:
                if exc.status is None or exc.status < 500:
                    raise
                page.append({"index": index, "unreadable": str(exc)})
        if not readable:
            raise SourceError(f"{self.url} fails on every entry in [{start}, {end})", status=500)
        return page

    async def _window(self, start: int, end: int) -> list[Entry]:
        body = _object(
            await self.get_json("/v1/ledger/entries", {"start": start, "end": end}), "entries"
        )
        entries = _list(body.get("entries"), "entries")
        if not entries:
            self.beyond = (start, body.get("beyond"))
        return entries

    async def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        body = await self.get_json(
            "/v1/ledger/proofs/consistency", {"first": first, "second": second}, auth=False
        )
        return _hashes(_object(body, "consistency proof").get("proof"))

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        body = await self.get_json(
            "/v1/ledger/proofs/inclusion", {"index": index, "tree_size": tree_size}, auth=False
        )
        return _hashes(_object(body, "inclusion proof").get("proof"))

    async def incident_indexes(self, incident_id: str) -> list[int]:
        try:
            body = await self.get_json(f"/v1/incidents/{quote(incident_id, safe='')}/timeline")
        except SourceError as exc:
            if exc.status == 404:
                return []
            raise
        events = _list(_object(body, "timeline").get("events"), "timeline events")
        return sorted(int(e["index"]) for e in events)


class BundleSource:
    """An evidence bundle (see `export_bundle`) read as a sparse ledger.

    It serves the bundle's key, its one head, its entries and their inclusion proofs, so
    a bundle can be checked (`verify_ledger` hands it to `verify_bundle`) or re-exported.
    """

    def __init__(
        self, path: str | Path | None = None, *, bundle: dict[str, Any] | None = None
    ) -> None:
        if bundle is None:
            if path is None:
                raise ValueError("give a path or a bundle")
            try:
                bundle = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise SourceError(f"cannot read the bundle {path}: {exc}") from exc
        self.bundle: dict[str, Any] = _object(bundle, "bundle")
        items = self.bundle.get("entries")
        self._entries: list[Entry] = (
            [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []
        )

    async def public_key(self) -> dict[str, Any]:
        return {k: self.bundle.get(k) for k in ("origin", "public_key", "verifier_key", "key_id")}

    async def heads(self) -> list[dict[str, Any]]:
        return [self.bundle["head"]] if isinstance(self.bundle.get("head"), dict) else []

    async def entries(self, start: int = 0, end: int | None = None) -> AsyncIterator[list[Entry]]:
        page = [
            e
            for e in self._entries
            if isinstance(e.get("index"), int)
            and start <= e["index"]
            and (end is None or e["index"] < end)
        ]
        if page:
            yield page

    async def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        return None

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        head = self.bundle.get("head") or {}
        for entry in self._entries:
            if entry.get("index") == index and head.get("tree_size") == tree_size:
                return _hashes(entry.get("inclusion_proof"))
        raise SourceError(f"the bundle has no proof of entry {index} in tree size {tree_size}")

    async def incident_indexes(self, incident_id: str) -> list[int]:
        if self.bundle.get("incident_id") != incident_id:
            return []
        return sorted(e["index"] for e in self._entries if isinstance(e.get("index"), int))


def _indexed_as_served(leaf: bytes) -> dict[str, Any]:
    """The ``indexed`` field the entries route would serve beside ``leaf`` (its columns
    as the append derives them), so a `MemorySource` is verified as the service is; {}
    for a leaf that is no JSON object or no event this version reads."""
    try:
        body = json.loads(leaf)
    except ValueError:
        return {}
    columns = indexed_of_leaf(body) if isinstance(body, dict) else None
    if columns is None:
        return {}
    people = people_of_leaf(body).items()
    return {"indexed": columns_document(columns, body.get("recorded_at"), people)}


class MemorySource:
    """Entries, heads and a key held in memory, with proofs from a `merkle.MemoryTree`.

    The tree is the log as signed; editing `rows` afterwards (as a test forging entries
    does) leaves it alone, just as a forger editing ledger rows leaves the stored
    subtree hashes alone.
    """

    def __init__(
        self,
        key: dict[str, Any],
        head_docs: list[dict[str, Any]],
        rows: list[Entry],
        *,
        tree: merkle.MemoryTree | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.key = key
        self.head_docs = head_docs
        self.rows = rows
        self.tree = tree
        self.page_size = page_size

    @classmethod
    def build(
        cls, signer: NoteSigner, leaves: Sequence[bytes], head_sizes: Iterable[int]
    ) -> MemorySource:
        """A log of ``leaves`` with a head signed by ``signer`` at each of ``head_sizes``."""
        from services.audit.heads import Head  # only for its JSON form; pulls in asyncpg

        hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
        tree = merkle.MemoryTree(hashes)
        now = datetime.now(UTC)
        heads = []
        for size in sorted(set(head_sizes)):
            root = tree.root(size)
            note = sign_checkpoint(signer, Checkpoint(signer.name, size, root))
            heads.append(Head(size, root, now, signer.key_id, note).to_json())
        rows: list[Entry] = [
            {
                "index": i,
                "leaf": base64.b64encode(leaf).decode("ascii"),
                "leaf_hash": hashed.hex(),
                **_indexed_as_served(leaf),
            }
            for i, (leaf, hashed) in enumerate(zip(leaves, hashes, strict=True))
        ]
        return cls(key_document(signer.verifier()), heads, rows, tree=tree)

    async def public_key(self) -> dict[str, Any]:
        return self.key

    async def heads(self) -> list[dict[str, Any]]:
        return self.head_docs

    async def entries(self, start: int = 0, end: int | None = None) -> AsyncIterator[list[Entry]]:
        stop = len(self.rows) if end is None else min(end, len(self.rows))
        for at in range(start, stop, self.page_size):
            yield self.rows[at : min(stop, at + self.page_size)]

    async def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        return None if self.tree is None else self.tree.consistency_proof(first, second)

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        if self.tree is None:
            raise SourceError("this source keeps no tree")
        return self.tree.inclusion_proof(index, tree_size)

    async def incident_indexes(self, incident_id: str) -> list[int]:
        found = []
        for row in self.rows:
            event = json.loads(base64.b64decode(row["leaf"])).get("event")
            if isinstance(event, dict) and event.get("subject") == incident_id:
                found.append(row["index"])
        return found


# ------------------------------------------------------------------------ report


@dataclass
class VerifyReport:
    """What a verification found.

    ``first_bad_index`` is exact when a check of a single entry failed; when only a
    signed root disagrees, it is None and ``bad_range`` is the index range
    ``[low, high)`` where the first bad entry lies. ``bad_head`` is the tree size of the
    signed head that exposed the problem, if one did.
    """

    ok: bool = False
    entries_checked: int = 0
    heads_checked: int = 0
    proofs_checked: int = 0
    first_bad_index: int | None = None
    reason: str | None = None
    rate: float = 0.0
    elapsed: float = 0.0
    tree_size: int = 0
    bad_head: int | None = None
    bad_range: tuple[int, int] | None = None
    origin: str | None = None
    key_id: str | None = None
    verifier_key: str | None = None
    bad_indexes: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    conflict: list[dict[str, Any]] = field(default_factory=list)
    """The two heads that disagree (``tree_size``, ``root_hash``, ``where``), if any."""
    verified_head: dict[str, Any] | None = None
    """The largest head the entries were proven against (``tree_size``, ``root_hash``,
    ``checkpoint``, ``where``): what a verifier keeps in its state."""
    heads_ignored: int = 0
    withheld: int = 0
    """Entries served withheld (incidents that exclude the reader): leaf hashes only, so
    the tree and heads are proven but those leaves themselves are not checked."""
    unindexed: int = 0
    """Entries served with their leaf but without the index columns (``indexed``): an
    audit service older than that field, or one made to leave it out. Their columns are
    not checked; unless the source may omit them (`verify_ledger`'s
    ``require_indexed``), that is a failure."""
    first_unindexed: int | None = None
    """The first of those entries."""

    def unindexed_note(self) -> str | None:
        """What the report says of the entries whose index columns were not checked."""
        if not self.unindexed:
            return None
        return (
            f"{INDEX_UNCHECKED} for {self.unindexed:,} entries (the first at index"
            f" {self.first_unindexed}): what the reads select those entries by is not proven"
        )

    @property
    def unsigned_entries(self) -> int:
        """Entries after the largest signed head (checked one by one, vouched by no root)."""
        return max(0, self.entries_checked - self.tree_size)

    def where(self) -> str | None:
        """Where the first bad entry is, in words, or None if no entry is blamed."""
        if self.first_bad_index is not None:
            return str(self.first_bad_index)
        if self.bad_range is not None:
            low, high = self.bad_range
            return f"between {low} and {high - 1}"
        return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (for scripts and logs)."""
        out = dict(self.__dict__)
        out["bad_range"] = list(self.bad_range) if self.bad_range else None
        out["unsigned_entries"] = self.unsigned_entries
        return out


class _Bad(Exception):
    """A failed check, carried to the report."""

    def __init__(
        self,
        reason: str,
        *,
        index: int | None = None,
        head: int | None = None,
        span: tuple[int, int] | None = None,
        heads: Sequence[_Head] = (),
        fatal: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index
        self.head = head
        self.span = span
        self.heads = tuple(heads)
        self.fatal = fatal  # True: positions no longer line up, the walk cannot read on

    def fill(self, report: VerifyReport) -> None:
        report.ok = False
        report.reason = self.reason
        report.first_bad_index = self.index
        report.bad_head = self.head
        report.bad_range = self.span
        if self.index is None and self.span is not None and self.span[1] - self.span[0] == 1:
            report.first_bad_index = self.span[0]
        if self.heads:
            report.conflict = [h.shown() for h in self.heads]


def _fill_all(report: VerifyReport, failures: list[_Bad], fatal: _Bad | None) -> None:
    """The report of a walk: the first failure leads, every bad index is listed."""
    every = [*failures, *([fatal] if fatal is not None else [])]
    if not every:
        report.ok = True
        return
    every[0].fill(report)
    if fatal is not None and fatal is not every[0]:
        report.bad_head = report.bad_head if report.bad_head is not None else fatal.head
        if fatal.heads and not report.conflict:
            report.conflict = [h.shown() for h in fatal.heads]
    report.bad_indexes = sorted({b.index for b in every if b.index is not None})
    report.problems = [b.reason for b in every[:MAX_PROBLEMS]]


def _unindexed(report: VerifyReport, required: bool) -> None:
    """Entries whose index columns were not served fail the report when ``required``
    (listed after any other problem); else the note stays for the caller to show."""
    note = report.unindexed_note()
    if note is None or not required:
        return
    if report.ok:
        report.ok, report.reason = False, note
    report.problems.append(note)


# -------------------------------------------------------------- keys and heads


@dataclass(frozen=True)
class _Head:
    tree_size: int
    root_hash: bytes
    timestamp: str
    doc: dict[str, Any]  # holds the signed note as ``checkpoint``
    where: str = "the source's heads"

    def shown(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root_hash": self.root_hash.hex(), "where": self.where}

    def kept(self) -> dict[str, Any]:
        """What a verifier keeps of a head it proved the entries against."""
        return {**self.shown(), "checkpoint": self.doc.get("checkpoint")}


def _verifier(doc: Any, trusted_key: str | None) -> NoteVerifier:
    """The log's key from a public-key document, checked for self-consistency and pin."""
    if not isinstance(doc, dict):
        raise _Bad("the public key document is not a JSON object")
    try:
        verifier = parse_verifier_key(doc.get("verifier_key"))  # type: ignore[arg-type]
    except NoteError as exc:
        raise _Bad(f"the served verifier key is unusable: {exc}") from None
    served = key_document(verifier)
    for name in ("origin", "public_key", "key_id"):
        if doc.get(name) is not None and doc[name] != served[name]:
            raise _Bad(
                f"the served {name} does not belong to the verifier key {served['verifier_key']}"
            )
    if trusted_key is not None:
        try:
            pinned = parse_verifier_key(trusted_key)
        except NoteError as exc:
            raise _Bad(f"the trusted key is not a verifier key: {exc}") from None
        if pinned != verifier:
            raise _Bad(f"the log signs with {verifier.verifier_key}, not the trusted key")
    return verifier


def _signed_head(verifier: NoteVerifier, doc: Any, where: str = "the source's heads") -> _Head:
    """One served head: its note verifies and its JSON fields say what the note says."""
    if not isinstance(doc, dict):
        raise _Bad("a signed head is not a JSON object")
    size, root, note = doc.get("tree_size"), doc.get("root_hash"), doc.get("checkpoint")
    if type(size) is not int or not isinstance(root, str) or not isinstance(note, str):
        raise _Bad(f"a signed head is malformed: tree_size={size!r}, root_hash={root!r}")
    try:
        checkpoint = verify_checkpoint(verifier, note)
    except (NoteError, CheckpointError) as exc:
        raise _Bad(f"the signed head of size {size} does not verify: {exc}", head=size) from None
    if checkpoint.tree_size != size or checkpoint.root_hash.hex() != root.lower():
        raise _Bad(
            f"the head of size {size} says root {root} but its signed checkpoint says size "
            f"{checkpoint.tree_size}, root {checkpoint.root_hash.hex()}",
            head=size,
        )
    if doc.get("key_id") not in (None, verifier.key_id):
        raise _Bad(f"the head of size {size} names key {doc['key_id']}, not ours", head=size)
    return _Head(size, checkpoint.root_hash, str(doc.get("timestamp", "")), doc, where)


def _signed_heads(
    verifier: NoteVerifier, docs: Any, where: str = "the source's heads"
) -> list[_Head]:
    """Every served head verified, one per size, by size; two roots for a size is a fork."""
    if not isinstance(docs, list):
        raise _Bad("the list of signed heads is malformed")
    return _merge([], [_signed_head(verifier, doc, where) for doc in docs])


def _merge(first: list[_Head], more: Iterable[_Head]) -> list[_Head]:
    """One head per size (the first seen kept), by size; two roots for a size is a fork."""
    by_size = {h.tree_size: h for h in first}
    for head in more:
        seen = by_size.setdefault(head.tree_size, head)
        if seen.root_hash != head.root_hash:
            raise _Bad(
                f"two signed heads of size {head.tree_size} have different roots:"
                f" {seen.root_hash.hex()} ({seen.where}) and {head.root_hash.hex()}"
                f" ({head.where}): the log forked",
                head=head.tree_size,
                heads=(seen, head),
            )
    return [by_size[size] for size in sorted(by_size)]


def _known_heads(verifier: NoteVerifier, known: Iterable[KnownHead]) -> tuple[list[_Head], int]:
    """Heads from outside the source, verified with the log's key; and how many were
    optional heads of another log (skipped)."""
    heads: list[_Head] = []
    ignored = 0
    for item in known:
        origin = item.note.split("\n", 1)[0] if isinstance(item.note, str) else None
        if item.optional and origin != verifier.name:
            ignored += 1
            continue
        try:
            checkpoint = verify_checkpoint(verifier, item.note)
        except (NoteError, CheckpointError) as exc:
            raise _Bad(
                f"a signed head of log {origin!r} from {item.where} does not verify with the"
                f" log's key {verifier.verifier_key} ({exc}): the log's key was replaced, or"
                " the head is not this log's"
            ) from None
        doc = {
            "tree_size": checkpoint.tree_size,
            "root_hash": checkpoint.root_hash.hex(),
            "checkpoint": item.note,
        }
        heads.append(_Head(checkpoint.tree_size, checkpoint.root_hash, "", doc, item.where))
    return heads, ignored


# -------------------------------------------------------------------- leaves


def _stored_hash(entry: Entry) -> bytes | None:
    """The leaf hash stored with an entry (or, without one, the hash of its leaf bytes)."""
    served = entry.get("leaf_hash")
    if isinstance(served, str) and len(served) == 2 * merkle.HASH_SIZE:
        try:
            return bytes.fromhex(served)
        except ValueError:
            return None
    text = entry.get("leaf")
    if served is None and isinstance(text, str):
        try:
            return merkle.leaf_hash(binascii.a2b_base64(text, strict_mode=True))
        except (binascii.Error, ValueError):
            return None
    return None


def _leaf_bytes(entry: Entry, position: int) -> bytes:
    text = entry.get("leaf")
    if "unreadable" in entry:
        raise _Bad(
            f"the source cannot serve entry {position} ({entry['unreadable']}): its stored"
            " leaf is probably not valid JSON any more",
            index=position,
        )
    if not isinstance(text, str):
        raise _Bad(f"entry {position} has no leaf", index=position)
    try:
        return binascii.a2b_base64(text, strict_mode=True)  # b64decode(validate=True)
    except (binascii.Error, ValueError):
        raise _Bad(f"the leaf of entry {position} is not base64", index=position) from None


def _leaf_body(leaf: bytes, position: int) -> dict[str, Any]:
    """The JSON inside a leaf, which must be canonical version-1 leaf JSON."""
    body = _canonical_body(leaf)
    if body is None:  # not proven canonical the fast way: the exact, slow way decides
        try:
            body = json.loads(leaf.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _Bad(f"the leaf of entry {position} is not JSON", index=position) from None
        if not isinstance(body, dict) or body.get("v") != LEAF_VERSION:
            raise _Bad(f"the leaf of entry {position} is not a version-1 leaf", index=position)
        if canonical_json(body) != leaf:
            raise _Bad(f"the leaf of entry {position} is not canonical JSON", index=position)
    if body.get("v") != LEAF_VERSION:
        raise _Bad(f"the leaf of entry {position} is not a version-1 leaf", index=position)
    recorded_at = body.get("recorded_at")
    if not isinstance(recorded_at, str) or not _RECORDED_AT.fullmatch(recorded_at):
        raise _Bad(f"the leaf of entry {position} has no valid recorded_at", index=position)
    return body


class _FloatSeen(Exception):
    """A leaf holds a number with a fraction or an exponent (see `_canonical_body`)."""


def _no_float(text: str) -> float:
    raise _FloatSeen(text)


_DECODE = msgspec.json.Decoder(float_hook=_no_float).decode
_ENCODE = msgspec.json.Encoder(order="sorted").encode
_NOT_PROVEN = (msgspec.MsgspecError, _FloatSeen, TypeError, ValueError, RecursionError)
"""What reading or writing back a leaf raises when it is not proven canonical the fast
way."""


def _canonical_body(leaf: bytes) -> dict[str, Any] | None:
    """The leaf's JSON object if it is proven canonical, the fast way; else None.

    ``canonical_json`` is the standard library's encoder (sorted keys, no whitespace,
    UTF-8), which msgspec's encoder with sorted keys matches byte for byte on every
    string (all of Unicode), integer (of any size), literal and container (tests hold it
    to that, every code point included); floats are written differently (``1e-05``
    against ``1e-5``). So: a leaf that holds no float (msgspec reads it and calls
    `_no_float` on the first number with a fraction or an exponent) and that msgspec
    writes back identically from what was read is canonical JSON: ``json.loads`` reads
    that text back to the same value and ``canonical_json`` writes it as msgspec did.
    Any other leaf (a float, invalid JSON, a non-canonical one) goes to the exact check.
    (orjson writes the same bytes, but each call faults in a fresh page of memory on
    glibc: 1.5 µs a leaf against msgspec's 0.9.)
    """
    try:
        body = _DECODE(leaf)
        if type(body) is not dict or _ENCODE(body) != leaf:
            return None
    except _NOT_PROVEN:
        return None
    return body


class _Event(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """A recorded CloudEvent as `_canonical_leaf` reads it: every attribute the services
    write (an event with any other is not read this way)."""

    actor: Any = msgspec.UNSET
    causationid: Any = msgspec.UNSET
    correlationid: Any = msgspec.UNSET
    data: Any = msgspec.UNSET
    datacontenttype: Any = msgspec.UNSET
    id: Any = msgspec.UNSET
    signature: Any = msgspec.UNSET
    signingkey: Any = msgspec.UNSET
    source: Any = msgspec.UNSET
    specversion: Any = msgspec.UNSET
    subject: Any = msgspec.UNSET
    time: Any = msgspec.UNSET
    traceparent: Any = msgspec.UNSET
    type: Any = msgspec.UNSET


class _Leaf(msgspec.Struct, gc=False):
    """A version-1 leaf as `_canonical_leaf` reads it (see services/audit/ledger.py)."""

    index: int  # a leaf without them, or with another type, is never read this way
    recorded_at: str
    event: _Event | msgspec.UnsetType = msgspec.UNSET
    offset: Any = msgspec.UNSET
    partition: Any = msgspec.UNSET
    raw: Any = msgspec.UNSET
    reason: Any = msgspec.UNSET
    topic: Any = msgspec.UNSET
    v: Any = msgspec.UNSET


_DECODE_LEAF = msgspec.json.Decoder(_Leaf, float_hook=_no_float).decode
_LEAF_HASHER = hashlib.sha256(b"\0")
"""SHA-256 fed the leaf prefix 0x00: a copy fed a leaf gives its leaf hash (RFC 9162)."""
_ENCODE_INTO = msgspec.json.Encoder(order="sorted").encode_into


def _canonical_leaf(leaf: bytes, buffer: bytearray) -> _Leaf | None:
    """The leaf read into a `_Leaf` if that proves it canonical; else None.

    As `_canonical_body`, with structs for the leaf and its event: msgspec writes a
    struct as the object of its fields that are set, with sorted keys (`order="sorted"`),
    so a leaf that it writes back identically is canonical JSON. A key the leaf's struct
    does not know is dropped, one the event's refused, and a repeated key is written
    once, so such a leaf is never proven this way. Cheaper than dicts (no key objects,
    the fields of a struct are already in order), written into ``buffer``, reused from
    leaf to leaf."""
    try:
        body = _DECODE_LEAF(leaf)
        _ENCODE_INTO(body, buffer)
    except _NOT_PROVEN:
        return None
    return body if buffer == leaf else None


def _served_differs(entry: Entry, body: _Leaf) -> bool:
    """Whether a field served next to the leaf says something the leaf does not."""
    indexed = entry.get("indexed")
    if indexed is not None and _indexed_differs(indexed, body):
        return True
    for name in _SERVED_FIELDS:
        if name in entry:
            value = getattr(body, name)
            value = None if value is msgspec.UNSET else value
            if entry[name] != value or type(entry[name]) is not type(value):
                return True
    if "event" not in entry:
        return False
    if body.event is msgspec.UNSET:
        return entry["event"] is not None
    try:  # the served event as the leaf's is read (an attribute it lacks is refused)
        served = msgspec.convert(entry["event"], _Event)
    except msgspec.ValidationError:
        return True
    return served != body.event or not _same_json(served, body.event)


def _indexed_differs(indexed: Any, body: _Leaf) -> bool:
    """False when the served index columns plainly say what the leaf says (an event's
    id, subject and type as written, its recording time, no ``people``): the common
    case, decided without reading the event again. True sends the entry to
    `_Walk.check`, which derives the columns by the append's rule (`_check_indexed`)
    and names what differs, or finds nothing (an id written in another UUID form, a
    bulk import's chunk and its ``people``)."""
    if type(indexed) is not dict or len(indexed) != _INDEXED:
        return True
    event = body.event
    if event is msgspec.UNSET:
        return (
            indexed.get("valid") is not False
            or indexed.get("incident_id") is not None
            or indexed.get("event_type") is not None
            or indexed.get("event_id") is not None
            or indexed.get("recorded_at") != body.recorded_at
        )
    return (
        indexed.get("valid") is not True
        or indexed.get("incident_id") != event.subject
        or indexed.get("event_type") != event.type
        or indexed.get("event_id") != event.id
        or indexed.get("recorded_at") != body.recorded_at
        or event.type == CHUNK_EVENT
    )


def _check_indexed(served: Any, body: dict[str, Any], position: int) -> None:
    """The index columns served as stored (``indexed``) say what the leaf says, by the
    rule the append derived them with (`services.audit.indexed.index_problems`); `_Bad`
    naming each column that differs."""
    if not isinstance(served, dict):
        raise _Bad(
            f"entry {position} is served with index columns that are no object", index=position
        )
    problems = index_problems(served, body, position)
    if problems:
        raise _Bad(
            "; ".join(problems) + ": the index was changed behind the ledger", index=position
        )


def _same_json(served: Any, recorded: Any) -> bool:
    """Whether two equal values are also the same JSON: Python's == takes true for 1 and
    1.0 for 1, a served event must say what its leaf says, type for type."""
    try:
        return _ENCODE_SORTED(served) == _ENCODE_SORTED(recorded)
    except (TypeError, ValueError, OverflowError):  # not JSON at all: it differs
        return False


_ENCODE_SORTED = msgspec.json.Encoder(order="sorted").encode


def _strays(beyond: Any, size: int) -> list[_Bad]:
    """What the source says it holds beyond the empty range that ended the walk (an
    `HttpSource`'s ``beyond``): an entry stored past a gap, which the walk never reaches
    but a read by incident or person finds, and ``ledger_people`` rows at an index where
    no entry is; each named at its index. A source that says nothing adds nothing."""
    if beyond is None or not isinstance(beyond[1], dict):
        return []
    start, said = beyond
    found = []
    after = said.get("next_index")
    if after is not None:
        found.append(
            _Bad(
                f"the ledger holds an entry at index {after!r}, past the end of its entries"
                f" ({size}; none from {start}): a row was added behind the ledger, beyond a"
                " gap",
                index=after if type(after) is int else size,
            )
        )
    strays = said.get("stray_people")
    for row in strays if isinstance(strays, list) else []:
        at = row.get("index") if isinstance(row, dict) else None
        who = row.get("person_id") if isinstance(row, dict) else None
        found.append(
            _Bad(
                f"the people index lists {who!r} at index {at!r}, where the ledger holds no"
                " entry: the index was changed behind the ledger",
                index=at if type(at) is int else size,
            )
        )
    return found


def _check_order(recorded_at: str, previous: str, position: int, before: int) -> None:
    # Fixed-width RFC 3339 UTC (checked in _leaf_body) sorts as text.
    if recorded_at < previous:
        raise _Bad(
            f"entry {position} says it was recorded at {recorded_at}, before entry"
            f" {before} ({previous}): ledger time went backwards",
            index=position,
        )


# ----------------------------------------------------------------- the walk


class _Walk:
    """Streams the entries through the per-entry checks and a Merkle frontier."""

    def __init__(
        self, verifier: NoteVerifier, heads: list[_Head], served: list[_Head] | None = None
    ) -> None:
        served = heads if served is None else served
        self.verifier = verifier
        self.heads = heads  # the served heads and every known head, one per size
        self.by_size = {h.tree_size: h for h in served}
        self.served_largest = served[-1].tree_size if served else 0
        self.current = served[-1] if served else None  # the source's latest signed head
        self.largest = heads[-1].tree_size if heads else 0
        self.frontier = merkle.MerkleFrontier()
        self.next = 0  # index in `heads` of the next head to reach
        self.next_size = heads[0].tree_size if heads else -1
        self.vouched = 0  # entries below this are vouched for by a matching signed root
        self.previous_time = ""
        self.matched: list[_Head] = []  # heads whose root matched, awaiting the proof step
        self.proven: _Head | None = None
        self.offers_proofs = True
        self.heads_checked = 0
        self.proofs_checked = 0
        self.withheld = 0  # entries served without their leaf (see `withheld_entry`)
        self.unindexed = 0  # entries served with a leaf, without `indexed` (`not_indexed`)
        self.first_unindexed: int | None = None
        self.failures: list[_Bad] = []  # damaged entries read past, in order
        self.last_matched: _Head | None = None
        self.wanted: set[tuple[int, int]] = set()  # subtrees the known heads' proofs need
        self.kept: dict[tuple[int, int], bytes] = {}
        self.planned = self.plan_proofs()

    def plan_proofs(self) -> list[_Head]:
        """The heads from elsewhere to prove consistent with the source's latest head,
        by consistency proofs built from the recomputed entries; the subtrees those
        proofs need (a few per head) are kept as the walk completes them."""
        if self.current is None:
            return []
        planned = []
        for head in self.heads:
            low, high = sorted((head.tree_size, self.current.tree_size))
            if self.by_size.get(head.tree_size) is head or low == 0 or low == high:
                continue

            def record(level: int, index: int) -> bytes:
                self.wanted.add((level, index))
                return bytes(merkle.HASH_SIZE)

            merkle.consistency_proof(low, high, record)
            planned.append(head)
        return planned

    def add(self, leaf_hash: bytes) -> None:
        """Append a leaf hash to the tree, keeping the subtrees a planned proof needs."""
        position = self.frontier.size
        completed = self.frontier.append(leaf_hash)
        if self.wanted:
            for level, index, node in [(0, position, leaf_hash), *completed]:
                if (level, index) in self.wanted:
                    self.kept[(level, index)] = node

    def prove_known(self) -> None:
        """Check each planned consistency proof (every head is reached by now)."""
        current = self.current
        for head in self.planned:
            assert current is not None  # planned only when there is a latest head
            first, second = sorted((head, current), key=lambda h: h.tree_size)
            proof = merkle.consistency_proof(
                first.tree_size, second.tree_size, lambda level, i: self.kept[(level, i)]
            )
            why = merkle.consistency_failure(
                first.tree_size, second.tree_size, proof, first.root_hash, second.root_hash
            )
            if why is not None:
                raise _Bad(
                    f"the signed head of size {head.tree_size} from {head.where} is not"
                    f" consistent with the source's latest head of size {current.tree_size}:"
                    f" the consistency proof built from the entries does not verify ({why})",
                    head=head.tree_size,
                    heads=(head, current),
                )
            self.proofs_checked += 1

    async def run(self, source: LedgerSource, progress: Progress | None) -> None:
        self.reach()
        async for page in source.entries(0):
            failed: _Bad | None = None
            try:
                self.page(page)
            except _Bad as bad:
                failed = bad
            await self.prove(source)  # heads reached before a failure are checked first
            if failed is not None:
                raise failed
            if progress is not None:
                size = self.frontier.size
                progress(size, max(size, self.largest))
        self.failures.extend(_strays(getattr(source, "beyond", None), self.frontier.size))
        self.reach()
        await self.prove(source)
        if self.next < len(self.heads):
            beyond, count = self.heads[self.next :], self.frontier.size
            head = beyond[-1]
            more = f"; {len(beyond)} signed heads are larger than the tree" if beyond[1:] else ""
            raise _Bad(
                f"the signed head of size {head.tree_size} from {head.where} covers"
                f" {head.tree_size} entries but the source has only {count}: the tail was"
                f" cut off{more}",
                index=count,
                head=head.tree_size,
                heads=self.pair(head),
            )
        self.prove_known()

    def pair(self, head: _Head) -> tuple[_Head, _Head]:
        """``head`` and what it disagrees with: the source's latest signed head, or the
        tree recomputed from the entries when that head is ``head`` itself."""
        if self.current is not None and self.current.tree_size != head.tree_size:
            return head, self.current
        size = self.frontier.size
        tree = _Head(size, self.frontier.root(), "", {}, "the tree recomputed from the entries")
        return head, tree

    def page(self, page: list[Entry]) -> None:
        """Every entry of a page, in order: each one that passes every check of `check`
        and `entry` is taken here in one loop, its leaf hash queued for the tree; any
        other entry (a failed check, a withheld or unreadable one, a leaf not proven
        canonical the fast way by `_canonical_leaf`, a recorded signed head) goes through
        `entry`, which checks it again from the start and names what is wrong. The tree
        catches up (`grow`) before a head is reached, before `entry` runs, and at the end,
        so each of them sees the tree exactly as a walk entry by entry would."""
        pending: list[bytes] = []
        position, next_size = self.frontier.size, self.next_size
        previous = self.previous_time
        matched: str | None = None  # the last recorded_at here that matched the pattern
        hasher, b64decode, read, fullmatch, unset = (
            _LEAF_HASHER.copy,
            pybase64.b64decode,
            _canonical_leaf,
            _RECORDED_AT.fullmatch,
            msgspec.UNSET,
        )
        buffer = bytearray()
        unindexed, first_unindexed = 0, -1  # entries taken here without `indexed`
        try:  # counted even when a check or a head ends the walk in this page
            for entry in page:
                if position == next_size:
                    self.grow(pending)
                    self.reach()
                    next_size = self.next_size
                text = entry.get("leaf")
                body: _Leaf | None = None
                if (
                    type(text) is str
                    and entry.get("index") == position
                    and entry.get("withheld") is not True
                    and "unreadable" not in entry
                ):
                    try:  # pybase64 (SIMD) reads a subset of what the strict decoder reads
                        leaf = b64decode(text, validate=True)
                    except ValueError:  # binascii.Error, or a text that is not ASCII
                        leaf = None
                    if leaf is not None:
                        sha256 = hasher()  # SHA-256 fed 0x00 already: the leaf hash
                        sha256.update(leaf)
                        hashed = sha256.digest()
                        body = read(leaf, buffer)
                if body is not None:
                    served_hash = entry.get("leaf_hash")
                    recorded_at = body.recorded_at
                    event = body.event
                    if (
                        (served_hash is not None and served_hash != hashed.hex())
                        or body.v != LEAF_VERSION
                        or body.index != position
                        or (recorded_at != matched and not fullmatch(recorded_at))
                        or recorded_at < previous
                        or (event is not unset and event.type == CHECKPOINT_EVENT)
                        or (
                            (len(entry) > 3 or "leaf_hash" not in entry)
                            and _served_differs(entry, body)
                        )
                    ):
                        body = None
                    else:
                        matched = recorded_at  # an append gives a batch one recorded_at
                        if "indexed" not in entry:  # counted below, once a page
                            unindexed += 1
                            first_unindexed = position if first_unindexed < 0 else first_unindexed
                if body is None:  # a failed check, or a recorded head: `entry` decides
                    self.grow(pending)
                    self.previous_time = previous
                    self.entry(entry)
                    position, next_size = self.frontier.size, self.next_size
                    previous = self.previous_time
                    continue
                pending.append(hashed)
                previous = recorded_at
                position += 1
        finally:
            if unindexed:
                self.not_indexed(first_unindexed, unindexed)
        self.grow(pending)
        self.previous_time = previous

    def grow(self, pending: list[bytes]) -> None:
        """Append the queued leaf hashes to the tree (and empty the queue)."""
        if not pending:
            return
        if self.wanted:
            for hashed in pending:
                self.add(hashed)
        else:
            self.frontier.extend(pending)
        pending.clear()

    def entry(self, entry: Entry) -> None:
        position = self.frontier.size
        if position == self.next_size:
            self.reach()
        served = entry.get("index")
        if served != position:
            raise _Bad(
                f"the source serves entry {served!r} where entry {position} belongs: an entry"
                " is missing or out of order",
                index=position,
            )
        if entry.get("withheld") is True:
            self.withheld_entry(entry, position)
            return
        try:
            hashed, body = self.check(entry, position)
        except _Bad as bad:
            stored = _stored_hash(entry)
            if bad.fatal or stored is None:
                raise
            # Read on: the stored hash is what the signed tree was built from, so the
            # heads still tell whether anything besides this entry was changed.
            self.failures.append(bad)
            self.add(stored)
            return
        event = body.get("event")
        if isinstance(event, dict) and event.get("type") == CHECKPOINT_EVENT:
            self.recorded_head(event, position)
        self.add(hashed)
        self.previous_time = body["recorded_at"]

    def check(self, entry: Entry, position: int) -> tuple[bytes, dict[str, Any]]:
        """The entry's leaf hash and leaf JSON; `_Bad` (fatal only if positions shifted)."""
        leaf = _leaf_bytes(entry, position)
        hashed = merkle.leaf_hash(leaf)
        served_hash = entry.get("leaf_hash")
        if served_hash is not None and served_hash != hashed.hex():
            raise _Bad(
                f"the leaf of entry {position} does not hash to its stored leaf hash: the"
                " leaf was edited",
                index=position,
            )
        body = _leaf_body(leaf, position)
        claim = body.get("index")
        if claim != position or type(claim) is not int:
            if claim == position - 1 and claim >= self.vouched:
                raise _Bad(
                    f"the entries at positions {claim} and {position} both say they are entry"
                    f" {claim}: an entry was inserted at {claim}",
                    index=claim,
                    fatal=True,
                )
            raise _Bad(
                f"the leaf at position {position} says it is entry {claim!r}: entries were"
                " deleted, inserted or reordered",
                index=position,
                fatal=True,
            )
        _check_order(body["recorded_at"], self.previous_time, position, position - 1)
        for name in _SERVED_FIELDS:
            if name in entry and (
                entry[name] != body.get(name) or type(entry[name]) is not type(body.get(name))
            ):
                raise _Bad(
                    f"entry {position} is served with {name}={entry[name]!r} but its leaf"
                    f" says {body.get(name)!r}",
                    index=position,
                )
        if "event" in entry and (
            entry["event"] != body.get("event") or not _same_json(entry["event"], body.get("event"))
        ):
            raise _Bad(
                f"entry {position} is served with an event its leaf does not hold",
                index=position,
            )
        if "indexed" in entry:
            _check_indexed(entry["indexed"], body, position)
        else:
            self.not_indexed(position)
        return hashed, body

    def not_indexed(self, position: int, count: int = 1) -> None:
        """`count` entries served with their leaf and without their index columns, the
        first at `position`: nothing to compare the columns with, so `verify_ledger`
        reports them (`VerifyReport.unindexed`)."""
        if self.first_unindexed is None or position < self.first_unindexed:
            self.first_unindexed = position
        self.unindexed += count

    def withheld_entry(self, entry: Entry, position: int) -> None:
        """An entry the service withholds from this reader (an incident that excludes
        them): its leaf hash still goes into the tree, so the heads still prove it."""
        try:
            hashed = bytes.fromhex(entry["leaf_hash"])
        except (KeyError, TypeError, ValueError):
            raise _Bad(f"withheld entry {position} has no leaf hash", index=position) from None
        if len(hashed) != 32:
            raise _Bad(f"withheld entry {position} has no leaf hash", index=position)
        recorded_at = entry.get("recorded_at")
        if not isinstance(recorded_at, str):
            raise _Bad(f"withheld entry {position} has no recording time", index=position)
        _check_order(recorded_at, self.previous_time, position, position - 1)
        self.withheld += 1
        self.add(hashed)
        self.previous_time = recorded_at
        self.withheld_verdicts(entry, position)

    def withheld_verdicts(self, entry: Entry, position: int) -> None:
        """The service's verdicts on what this reader cannot check of a withheld entry
        (review D3): its leaf against its leaf hash (`leaf_ok`), its index columns against
        its leaf (`indexed_ok`). False is a failure named at the entry; served without
        them (an older service), the entry counts as unindexed, as a readable one does."""
        leaf_ok, indexed_ok = entry.get("leaf_ok"), entry.get("indexed_ok")
        if leaf_ok is None and indexed_ok is None:
            self.not_indexed(position)
            return
        problems = []
        if leaf_ok is not True:
            problems.append("its stored leaf does not hash to its leaf hash or is not this entry")
        if indexed_ok is not True:
            problems.append("its index columns do not say what its leaf says")
        if problems:
            self.failures.append(
                _Bad(
                    f"withheld entry {position}: the service says "
                    + " and ".join(problems)
                    + ": the database was changed behind the ledger",
                    index=position,
                )
            )

    def reach(self) -> None:
        """Compare the root with every head of the current size."""
        size = self.frontier.size
        while self.next < len(self.heads) and self.heads[self.next].tree_size == size:
            head = self.heads[self.next]
            root = self.frontier.root()
            if root != head.root_hash and self.by_size.get(size) is head:
                raise _Bad(
                    f"the entries do not hash to the root of the signed head of size {size}"
                    f" ({head.timestamp}): an entry in [{self.vouched}, {size}) was changed"
                    " and its leaf hash recomputed",
                    head=size,
                    span=(self.vouched, size),
                )
            if root != head.root_hash:
                raise _Bad(
                    f"the signed head of size {size} from {head.where} is not consistent with"
                    f" the tree: its root is {head.root_hash.hex()}, the entries give"
                    f" {root.hex()} at that size: an entry in [{self.vouched}, {size}) was"
                    " changed, or the log was cut back and has grown again since",
                    head=size,
                    span=(self.vouched, size),
                    heads=self.pair(head),
                )
            self.vouched = size
            self.heads_checked += 1
            self.matched.append(head)
            self.last_matched = head
            self.next += 1
        self.next_size = self.heads[self.next].tree_size if self.next < len(self.heads) else -1

    def recorded_head(self, event: dict[str, Any], position: int) -> None:
        """A head recorded in the ledger must be one of the served heads."""
        data = event.get("data")
        note = data.get("checkpoint") if isinstance(data, dict) else None
        try:
            checkpoint = verify_checkpoint(self.verifier, note)  # type: ignore[arg-type]
        except (NoteError, CheckpointError):
            return  # anyone may publish to the topic; only our key's heads count
        listed = self.by_size.get(checkpoint.tree_size)
        if listed is None and checkpoint.tree_size <= self.served_largest:
            raise _Bad(
                f"entry {position} records a signed head of size {checkpoint.tree_size} that"
                " the source's list of heads leaves out",
                head=checkpoint.tree_size,
            )
        if listed is not None and listed.root_hash != checkpoint.root_hash:
            raise _Bad(
                f"entry {position} records a signed head of size {checkpoint.tree_size} whose"
                " root differs from the served one: the log forked",
                head=checkpoint.tree_size,
            )

    async def prove(self, source: LedgerSource) -> None:
        """Check the consistency proof between each matched head and the one before."""
        for head in self.matched:
            before = self.proven
            self.proven = head
            if before is None or before.tree_size == 0 or not self.offers_proofs:
                continue
            first, second = before.tree_size, head.tree_size
            try:
                proof = await source.consistency_proof(first, second)
            except SourceError as exc:
                raise _Bad(
                    f"the source cannot prove signed heads {first} and {second} consistent: {exc}",
                    head=second,
                ) from None
            if proof is None:
                self.offers_proofs = False
                continue
            why = merkle.consistency_failure(first, second, proof, before.root_hash, head.root_hash)
            if why is not None:
                raise _Bad(
                    f"the served consistency proof between signed heads {first} and {second}"
                    f" does not verify ({why}): the stored tree differs from the entries",
                    head=second,
                )
            self.proofs_checked += 1
        self.matched.clear()


async def verify_ledger(
    source: LedgerSource,
    *,
    progress: Progress | None = None,
    trusted_key: str | None = None,
    known_heads: Iterable[KnownHead] = (),
    require_indexed: bool | None = None,
) -> VerifyReport:
    """Verify everything ``source`` serves (see the module docstring for the checks),
    against its own heads and every one of ``known_heads``.

    An entry served with its leaf but without its index columns (``indexed``) leaves
    them unchecked, and the report says so (`VerifyReport.unindexed_note`). With
    ``require_indexed`` (by default the source's own ``require_indexed``: true for
    `HttpSource`, since the audit service serves them) that fails the report: whoever
    controls the service could otherwise hide a changed column by leaving the field out.

    A `BundleSource` is checked with `verify_bundle`. `SourceError` (an unreachable
    source, refused credentials) propagates: it means "could not verify", not "tampered".
    """
    if isinstance(source, BundleSource):
        return verify_bundle(source.bundle, trusted_key=trusted_key, known_heads=known_heads)
    started = time.perf_counter()
    report = VerifyReport()
    walk: _Walk | None = None
    fatal: _Bad | None = None
    try:
        verifier = _verifier(await source.public_key(), trusted_key)
        report.origin, report.key_id = verifier.name, verifier.key_id
        report.verifier_key = verifier.verifier_key
        where = f"the heads served by {getattr(source, 'url', 'the source')}"
        served = _signed_heads(verifier, await source.heads(), where)
        report.tree_size = served[-1].tree_size if served else 0
        extra, report.heads_ignored = _known_heads(verifier, known_heads)
        walk = _Walk(verifier, _merge(served, extra), served)
        await walk.run(source, progress)
    except _Bad as bad:
        fatal = bad
    finally:
        if walk is not None:
            report.entries_checked = walk.frontier.size
            report.heads_checked = walk.heads_checked
            report.proofs_checked = walk.proofs_checked
            report.withheld = walk.withheld
            report.unindexed, report.first_unindexed = walk.unindexed, walk.first_unindexed
    _fill_all(report, walk.failures if walk is not None else [], fatal)
    if require_indexed is None:
        require_indexed = getattr(source, "require_indexed", False) is True
    _unindexed(report, require_indexed)
    if report.ok and walk is not None and walk.last_matched is not None:
        report.verified_head = walk.last_matched.kept()
    report.elapsed = time.perf_counter() - started
    report.rate = report.entries_checked / report.elapsed if report.elapsed > 0 else 0.0
    return report


# -------------------------------------------------------------------- bundles


async def export_bundle(source: ProofSource, incident_id: str) -> dict[str, Any]:
    """The evidence bundle of one incident, checked with `verify_bundle` before it is returned.

    Holds the format, the log's key, the tree size it was cut at and the signed head of
    that size (the latest), the incident's indexes below it (``incident_indexes``), and
    each of those entries as ``{index, leaf (base64), inclusion_proof (hex list)}``
    against that head.
    Raises `ExportError` when the incident has no entry, when its newest entries are not
    under a signed head yet, or when the source serves evidence that does not verify.
    """
    try:
        key = await source.public_key()
        verifier = _verifier(key, None)
        heads = _signed_heads(verifier, await source.heads())
    except _Bad as bad:
        raise ExportError(f"the ledger's key or heads do not verify: {bad.reason}") from None
    if not heads:
        raise ExportError("the ledger has not signed a tree head yet")
    head = heads[-1]
    indexes = sorted(set(await source.incident_indexes(incident_id)))
    if not indexes:
        raise ExportError(f"the ledger holds no event of incident {incident_id}")
    late = [i for i in indexes if i >= head.tree_size]
    if late:
        raise ExportError(
            f"{len(late)} of the incident's entries (from index {late[0]}) are newer than the"
            f" latest signed head (size {head.tree_size}); export again once the next head"
            " is signed"
        )
    leaves = await _leaves(source, indexes)
    entries = []
    for index in indexes:
        proof = await source.inclusion_proof(index, head.tree_size)
        entries.append(
            {"index": index, "leaf": leaves[index], "inclusion_proof": [p.hex() for p in proof]}
        )
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "incident_id": incident_id,
        "exported_at": utc_rfc3339(datetime.now(UTC)),
        **key_document(verifier),
        "tree_size": head.tree_size,
        "head": head.doc,
        "incident_indexes": indexes,
        "entries": entries,
    }
    report = verify_bundle(bundle)
    if not report.ok:
        raise ExportError(f"the ledger serves evidence that does not verify: {report.reason}")
    return bundle


async def _leaves(source: LedgerSource, indexes: list[int]) -> dict[int, str]:
    """The base64 leaves of ``indexes`` (ascending), nearby ones fetched together."""
    wanted = set(indexes)
    found: dict[int, str] = {}
    start = 0
    while start < len(indexes):
        stop = start + 1
        while (
            stop < len(indexes)
            and indexes[stop] - indexes[stop - 1] <= _GAP
            and indexes[stop] - indexes[start] < PAGE_SIZE
        ):
            stop += 1
        async for page in source.entries(indexes[start], indexes[stop - 1] + 1):
            for entry in page:
                if entry.get("index") in wanted and isinstance(entry.get("leaf"), str):
                    found[entry["index"]] = entry["leaf"]
        start = stop
    missing = wanted - found.keys()
    if missing:
        raise ExportError(f"the ledger did not serve entries {sorted(missing)[:5]}")
    return found


def verify_bundle(
    bundle: Any, *, trusted_key: str | None = None, known_heads: Iterable[KnownHead] = ()
) -> VerifyReport:
    """Check an evidence bundle offline: head signature, completeness, each leaf and proof.

    The stated tree size must be the signed head's. Every entry's leaf must be canonical
    and claim its index, hash (with its inclusion proof) to the signed root, be an event
    of the bundle's incident, and the entries must be in ledger order with ledger time
    never going backwards; they must be exactly the incident's listed indexes. A known
    head of the bundle's size must have the bundle head's root (offline, heads of other
    sizes cannot be compared).
    """
    started = time.perf_counter()
    report = VerifyReport()
    try:
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            raise _Bad(
                f"not an evidence bundle of format {BUNDLE_FORMAT} (an older bundle cannot"
                " show that none of its entries was deleted: export it again)"
            )
        verifier = _verifier(bundle, trusted_key)
        report.origin, report.key_id = verifier.name, verifier.key_id
        report.verifier_key = verifier.verifier_key
        head = _signed_head(verifier, bundle.get("head"), "the bundle")
        report.tree_size, report.heads_checked = head.tree_size, 1
        extra, report.heads_ignored = _known_heads(verifier, known_heads)
        _merge([head], extra)
        if bundle.get("tree_size") != head.tree_size or type(bundle.get("tree_size")) is not int:
            raise _Bad(
                f"the bundle says it was cut at tree size {bundle.get('tree_size')!r} but"
                f" carries the signed head of size {head.tree_size}",
                head=head.tree_size,
            )
        incident = bundle.get("incident_id")
        entries = bundle.get("entries")
        if not isinstance(incident, str) or not isinstance(entries, list) or not entries:
            raise _Bad("the bundle names no incident or holds no entries")
        listed = _listed_indexes(bundle.get("incident_indexes"), head.tree_size)
        previous_index, previous_time = -1, ""
        for item in entries:
            index = item.get("index") if isinstance(item, dict) else None
            if type(index) is not int or index <= previous_index:
                raise _Bad(
                    f"bundle entry {index!r} is out of ledger order", index=previous_index + 1
                )
            if index >= head.tree_size:
                raise _Bad(
                    f"entry {index} is beyond the signed head (size {head.tree_size})", index=index
                )
            leaf = _leaf_bytes(item, index)
            body = _leaf_body(leaf, index)
            if body.get("index") != index:
                raise _Bad(
                    f"the leaf of entry {index} says it is entry {body.get('index')!r}", index=index
                )
            event = body.get("event")
            if not isinstance(event, dict) or event.get("subject") != incident:
                raise _Bad(f"entry {index} is not an event of incident {incident}", index=index)
            try:
                proof = _hashes(item.get("inclusion_proof"))
                merkle.verify_inclusion(
                    merkle.leaf_hash(leaf), index, head.tree_size, proof, head.root_hash
                )
            except (SourceError, merkle.ProofError) as exc:
                raise _Bad(
                    f"entry {index} is not in the signed tree of size {head.tree_size}: {exc}",
                    index=index,
                ) from None
            _check_order(body["recorded_at"], previous_time, index, previous_index)
            previous_index, previous_time = index, body["recorded_at"]
            report.entries_checked += 1
        report.proofs_checked = report.entries_checked
        _check_complete(listed, [item["index"] for item in entries])
        report.ok = True
        report.verified_head = head.kept()
    except _Bad as bad:
        bad.fill(report)
    report.elapsed = time.perf_counter() - started
    report.rate = report.entries_checked / report.elapsed if report.elapsed > 0 else 0.0
    return report


def _listed_indexes(value: Any, tree_size: int) -> list[int]:
    """The bundle's list of the incident's indexes: ascending, below its tree size."""
    if (
        not isinstance(value, list)
        or not all(type(i) is int and 0 <= i < tree_size for i in value)
        or any(a >= b for a, b in pairwise(value))
    ):
        raise _Bad(
            "the bundle's list of the incident's entries (incident_indexes) is missing or"
            f" malformed: it must be ascending indexes below its tree size {tree_size}"
        )
    return value


def _check_complete(listed: list[int], held: list[int]) -> None:
    """The bundle holds exactly the listed entries: none deleted, none cut off."""
    missing = sorted(set(listed) - set(held))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if missing[10:] else "")
        raise _Bad(
            f"the bundle lists {len(missing)} entries of the incident it does not hold"
            f" ({shown}): entries were deleted, or the bundle was cut short",
            index=missing[0],
        )
    extra = sorted(set(held) - set(listed))
    if extra:
        raise _Bad(
            f"entry {extra[0]} is not in the bundle's list of the incident's entries",
            index=extra[0],
        )


# -------------------------------------------------------------------- helpers


def _problem_detail(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.reason_phrase or "error"
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SourceError(f"the {what} answer is not a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise SourceError(f"the {what} answer holds no list")
    return value


def _hashes(value: Any) -> list[bytes]:
    """A proof as served: a list of hex strings."""
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise SourceError("a proof is not a list of hex strings")
    try:
        return [bytes.fromhex(h) for h in value]
    except ValueError as exc:
        raise SourceError(f"a proof hash is not hex: {exc}") from exc


# ------------------------------------------------------------------ witness quorum


@dataclass(frozen=True)
class WitnessQuorum:
    """The outcome of `check_witness_quorum`: the largest head with enough cosignatures."""

    ok: bool
    reason: str
    tree_size: int | None = None
    latest_size: int | None = None
    cosigners: tuple[str, ...] = ()


def check_witness_quorum(
    heads: Sequence[Any], log_key: str, witness_keys: Sequence[str], quorum: int
) -> WitnessQuorum:
    """Whether some signed head carries `quorum` valid cosignatures of `witness_keys`.

    Each head document (as /v1/ledger/head serves it, or a bundle's ``head``) is read
    from its ``cosigned_checkpoint`` (else ``checkpoint``): the log's signature must
    verify with `log_key`, and each witness key counts once if its Ed25519
    ``cosignature/v1`` line verifies (docs/witness.md). The answer names the largest
    witnessed head; heads signed after it wait for their cosignatures. Fails when no
    head has the quorum, or a key or the quorum is unusable.
    """
    from services.audit.cosignature import CosignatureVerifier, cosigned_by

    try:
        log = parse_verifier_key(log_key)
        witnesses = [CosignatureVerifier.from_verifier_key(k) for k in witness_keys]
    except NoteError as exc:
        return WitnessQuorum(False, f"unusable key: {exc}")
    if not 1 <= quorum <= len(set(witnesses)):
        return WitnessQuorum(
            False, f"a quorum of {quorum} needs at least that many distinct --witness keys"
        )
    best: tuple[int, tuple[str, ...]] | None = None
    latest = None
    for doc in heads:
        note = (
            doc.get("cosigned_checkpoint") or doc.get("checkpoint")
            if isinstance(doc, dict)
            else None
        )
        if not isinstance(note, str):
            continue
        try:
            checkpoint = verify_checkpoint(log, note)
        except (NoteError, CheckpointError):
            continue
        latest = max(latest or 0, checkpoint.tree_size)
        cosigners = tuple(c.name for c in cosigned_by(note, witnesses))
        if len(cosigners) >= quorum and (best is None or checkpoint.tree_size > best[0]):
            best = (checkpoint.tree_size, cosigners)
    if best is None:
        return WitnessQuorum(
            False,
            f"no signed head carries {quorum} valid cosignature(s) of the given witnesses",
            latest_size=latest,
        )
    size, cosigners = best
    return WitnessQuorum(
        True,
        f"the head of size {size} is cosigned by {', '.join(cosigners)}",
        tree_size=size,
        latest_size=latest,
        cosigners=cosigners,
    )


def witness_check(
    report: VerifyReport,
    url: str | None,
    bundle: Path | None,
    witness_keys: Sequence[str],
    quorum: int,
) -> WitnessQuorum:
    """``verify --witness ... --quorum N`` after a passed `report`: fail it unless a head
    of the same source (the service's heads, or the bundle's head) carries the quorum.

    The log key is the one the source serves, accepted only if it is the key `report`
    was verified with (same key id). Raises `SourceError` if the source cannot be read.
    """
    if not report.ok:
        return WitnessQuorum(False, "the ledger itself did not verify")
    try:
        if bundle is not None:
            document = json.loads(bundle.read_text(encoding="utf-8"))
            key_doc, head = document, document.get("head")
            heads = [head] if isinstance(head, dict) else []
        else:
            base = (url or "").rstrip("/")
            key_doc = httpx.get(f"{base}/v1/ledger/public-key", timeout=30.0).json()
            answer = httpx.get(f"{base}/v1/ledger/heads", timeout=30.0).json()
            heads = _list(answer.get("heads"), "heads")
        log_key = key_doc.get("verifier_key")
        log_id = parse_verifier_key(log_key).key_id
    except (OSError, httpx.HTTPError, ValueError, AttributeError, TypeError) as exc:
        raise SourceError(f"cannot read the heads for the witness check: {exc}") from exc
    if log_id != report.key_id:
        outcome = WitnessQuorum(False, "the source's key is not the one verified")
    else:
        outcome = check_witness_quorum(heads, log_key, witness_keys, quorum)
    if not outcome.ok:
        report.ok = False
        report.reason = f"witness quorum not met: {outcome.reason}"
    return outcome


def witness_known_heads(urls: Sequence[str], origin: str) -> list[KnownHead]:
    """The latest checkpoint each witness cosigned of `origin` (c2sp.org/tlog-witness's
    ``GET <prefix>/<sha256 hex of origin>/checkpoint``), as heads for verify to check the
    log against: a ledger cut back below what a witness saw fails as a cut tail.
    A witness that never cosigned this log (404) adds nothing; an unreachable one raises
    `SourceError`."""
    import hashlib

    heads = []
    origin_hash = hashlib.sha256(origin.encode("utf-8")).hexdigest()
    for url in urls:
        where = f"{url.rstrip('/')}/{origin_hash}/checkpoint"
        try:
            answer = httpx.get(where, timeout=30.0)
        except httpx.HTTPError as exc:
            raise SourceError(f"cannot reach the witness at {url}: {exc}") from exc
        if answer.status_code == 404:
            continue
        if answer.status_code != 200:
            raise SourceError(f"the witness at {url} answered {answer.status_code}")
        heads.append(KnownHead(answer.text, f"the witness {url}"))
    return heads
