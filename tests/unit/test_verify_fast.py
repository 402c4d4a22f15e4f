"""verify's fast path says exactly what the entry-by-entry walk says.

`_Walk.page` takes an entry that passes every check in one loop and hands any other to
`_Walk.entry`; its libraries (pybase64 for base64, msgspec to read and write back the
leaf) must agree with the standard library's definitions. Here: both libraries against
the standard library, and whole verifications of forged logs (edits, rehashed edits,
non-canonical and float leaves, deletions, swaps, backdating, withheld, unreadable and
mislabelled entries, a recorded checkpoint) run both ways give the same report.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pybase64
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.audit import merkle
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.verify import _ENCODE, MemorySource, _Walk, verify_ledger
from services.domain.envelope import canonical_json
from services.domain.events import CheckpointSigned, make_event
from tests.unit.test_verify import _leaf

ORIGIN = "test.example/fast"
SIGNER = NoteSigner.generate(ORIGIN)
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
SIZE = 40


# ------------------------------------------------------------------ libraries


@settings(max_examples=500)
@given(st.text(alphabet="AQgwYWJjZGVm+/=\n -_", max_size=12))
def test_what_pybase64_reads_the_strict_decoder_reads_the_same(text: str) -> None:
    """The fast path decodes with pybase64; what it refuses goes to `_Walk.entry`, whose
    strict decoder decides (it reads some padding pybase64 refuses: "AAAAAAAA=")."""
    try:
        got = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return
    assert binascii.a2b_base64(text, strict_mode=True) == got


@settings(max_examples=200)
@given(st.binary(max_size=40))
def test_pybase64_reads_what_the_standard_library_writes(data: bytes) -> None:
    assert pybase64.b64decode(base64.b64encode(data).decode(), validate=True) == data


def test_msgspec_writes_every_code_point_as_canonical_json_does() -> None:
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(chars)
    assert _ENCODE(text) == canonical_json(text)
    keys = {c: i for i, c in enumerate(chars[::31])}
    assert _ENCODE(keys) == canonical_json(keys)  # sorted by code point, as sort_keys
    for value in ([2**64, -(2**63) - 1, 2**200, 0], {"b": {}, "a": [None, True, False]}):
        assert _ENCODE(value) == canonical_json(value)


# ---------------------------------------------------------------- the walk


def _event_leaf(index: int) -> bytes:
    event = make_event(
        "incident.acknowledged.v1",
        subject=f"inc-{index % 3}",
        data={"principal": "p-chen", "level": 1},
        source="/tests",
        time=T0,
    )
    return _leaf(index, T0 + timedelta(seconds=index), event.to_dict(), event.subject)


def _checkpoint_leaf(index: int, leaves: list[bytes], size: int) -> bytes:
    root = merkle.MemoryTree.from_leaves(leaves[:size]).root()
    note = sign_checkpoint(SIGNER, Checkpoint(ORIGIN, size, root))
    event = make_event(
        "audit.checkpoint.signed.v1",
        subject=ORIGIN,
        data=CheckpointSigned(
            tree_size=size,
            root_hash=root.hex(),
            timestamp=T0,
            key_id=SIGNER.key_id,
            checkpoint=note,
        ),
        source="/services/audit",
        time=T0,
    )
    return _leaf(index, T0 + timedelta(seconds=index), event.to_dict(), ORIGIN)


def _log() -> MemorySource:
    leaves = [_event_leaf(i) for i in range(SIZE)]
    leaves[15] = _checkpoint_leaf(15, leaves, 10)
    return MemorySource.build(SIGNER, leaves, range(10, SIZE + 1, 10))


@functools.cache
def _base() -> MemorySource:
    return _log()


def _with_data(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The event with some of its data's fields changed (a copy)."""
    return {**event, "data": {**event["data"], **changes}}


def _body(row: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(base64.b64decode(row["leaf"]))
    return body


def _put(row: dict[str, Any], leaf: bytes, *, rehash: bool = True) -> None:
    row["leaf"] = base64.b64encode(leaf).decode()
    if rehash:
        row["leaf_hash"] = merkle.leaf_hash(leaf).hex()


def _edit(row: dict[str, Any], rehash: bool) -> None:
    leaf = bytearray(base64.b64decode(row["leaf"]))
    at = leaf.index(b'"principal":"') + len(b'"principal":"')
    leaf[at] ^= 0x01
    _put(row, bytes(leaf), rehash=rehash)


def _indexed(row: dict[str, Any]) -> dict[str, Any]:
    """The index columns of a row as the append stores them (`indexed`, served)."""
    body = _body(row)
    event = body.get("event") or {}
    return {
        "valid": "event" in body,
        "incident_id": event.get("subject"),
        "event_type": event.get("type"),
        "event_id": event.get("id"),
        "recorded_at": body["recorded_at"],
    }


def _rewrite(row: dict[str, Any], change: Any, text: Any = canonical_json) -> None:
    body = _body(row)
    change(body)
    _put(row, text(body))


FORGERIES: dict[str, Callable[[list[dict[str, Any]], int], object]] = {
    "edit": lambda rows, k: _edit(rows[k], rehash=False),
    "edit-rehashed": lambda rows, k: _edit(rows[k], rehash=True),
    "spaced": lambda rows, k: _rewrite(rows[k], lambda b: None, lambda b: json.dumps(b).encode()),
    "float": lambda rows, k: _rewrite(rows[k], lambda b: b.update(topic=1e-05)),
    "orjson-float": lambda rows, k: _put(
        rows[k],
        canonical_json({**_body(rows[k]), "topic": 0}).replace(b'"topic":0', b'"topic":1e-5'),
    ),
    "big-int": lambda rows, k: _rewrite(rows[k], lambda b: b.update(offset=2**70)),
    "version": lambda rows, k: _rewrite(rows[k], lambda b: b.update(v=2)),
    "version-true": lambda rows, k: _rewrite(rows[k], lambda b: b.update(v=True)),
    "claim": lambda rows, k: _rewrite(rows[k], lambda b: b.update(index=b["index"] + 1)),
    "claim-before": lambda rows, k: _rewrite(rows[k], lambda b: b.update(index=b["index"] - 1)),
    "backdate": lambda rows, k: _rewrite(
        rows[k], lambda b: b.update(recorded_at="2026-11-25T08:00:00.000000Z")
    ),
    "bad-time": lambda rows, k: _rewrite(rows[k], lambda b: b.update(recorded_at="yesterday")),
    "list": lambda rows, k: _put(rows[k], b"[1,2]"),
    "not-json": lambda rows, k: _put(rows[k], b"{nope"),
    "not-base64": lambda rows, k: rows[k].update(leaf="!!!!"),
    "padded": lambda rows, k: rows[k].update(leaf=rows[k]["leaf"] + "="),
    "hash": lambda rows, k: rows[k].update(leaf_hash="00" * 32),
    "no-hash": lambda rows, k: rows[k].pop("leaf_hash"),
    "no-leaf": lambda rows, k: rows[k].pop("leaf"),
    "delete": lambda rows, k: rows.pop(k),
    "renumber": lambda rows, k: [rows.pop(k), *(r.update(index=r["index"] - 1) for r in rows[k:])],
    "swap": lambda rows, k: (
        rows.__setitem__(
            slice(k, k + 2), [{**rows[k + 1], "index": k}, {**rows[k], "index": k + 1}]
        )
        if k + 1 < len(rows)
        else None
    ),
    "withheld": lambda rows, k: rows.__setitem__(
        k,
        {
            "index": rows[k]["index"],
            "leaf_hash": rows[k]["leaf_hash"],
            "recorded_at": _body(rows[k])["recorded_at"],
            "withheld": True,
        },
    ),
    "withheld-with-leaf": lambda rows, k: rows[k].update(withheld=True),
    "unreadable": lambda rows, k: rows[k].update(unreadable="500"),
    "served-right": lambda rows, k: rows[k].update(
        {name: _body(rows[k])[name] for name in ("recorded_at", "topic", "partition", "offset")},
        event=_body(rows[k])["event"],
    ),
    "served-topic": lambda rows, k: rows[k].update(topic="elsewhere"),
    "served-event": lambda rows, k: rows[k].update(event={"type": "x"}),
    "served-event-extra": lambda rows, k: rows[k].update(
        event={**_body(rows[k])["event"], "zzext": "1"}
    ),
    "served-event-only": lambda rows, k: [rows[k].pop("leaf_hash"), rows[k].update(event=None)],
    "served-event-less": lambda rows, k: rows[k].update(
        event={n: v for n, v in _body(rows[k])["event"].items() if n != "source"}
    ),
    "served-event-null": lambda rows, k: rows[k].update(
        event={**_body(rows[k])["event"], "causationid": None}
    ),
    "served-event-true": lambda rows, k: rows[k].update(
        event={**_body(rows[k])["event"], "specversion": True}
    ),
    "served-partition-float": lambda rows, k: rows[k].update(
        partition=float(_body(rows[k])["partition"])
    ),
    "served-level-true": lambda rows, k: rows[k].update(
        event=_with_data(_body(rows[k])["event"], level=True)
    ),
    "served-level-float": lambda rows, k: rows[k].update(
        event=_with_data(_body(rows[k])["event"], level=1.0)
    ),
    "indexed-right": lambda rows, k: rows[k].update(indexed=_indexed(rows[k])),
    "served-indexed-moved": lambda rows, k: rows[k].update(
        indexed={**_indexed(rows[k]), "incident_id": "inc-elsewhere"}
    ),
    "served-indexed-null": lambda rows, k: rows[k].update(
        indexed={**_indexed(rows[k]), "incident_id": None}
    ),
    "served-indexed-type": lambda rows, k: rows[k].update(
        indexed={**_indexed(rows[k]), "event_type": "directory.person.upserted.v1"}
    ),
    "served-indexed-valid": lambda rows, k: rows[k].update(
        indexed={**_indexed(rows[k]), "valid": 1}
    ),
    "served-indexed-id": lambda rows, k: rows[k].update(
        indexed={**_indexed(rows[k]), "event_id": "00000000-0000-4000-8000-000000000000"}
    ),
    "served-indexed-backdated": lambda rows, k: rows[k].update(
        indexed={**_indexed(rows[k]), "recorded_at": "2026-11-25T08:00:00.000000Z"}
    ),
    "served-indexed-people": lambda rows, k: rows[k].update(
        indexed={**_indexed(rows[k]), "people": [{"person_id": "p-x", "record": None}]}
    ),
    "served-indexed-short": lambda rows, k: rows[k].update(
        indexed={n: v for n, v in _indexed(rows[k]).items() if n != "event_id"}
    ),
    "served-indexed-list": lambda rows, k: rows[k].update(indexed=[]),
    "extension": lambda rows, k: _rewrite(rows[k], lambda b: b["event"].update(zzext="1")),
    "null-event": lambda rows, k: _rewrite(rows[k], lambda b: b.update(event=None)),
}


seen: set[Any] = set()


def _entry_by_entry(self: _Walk, page: list[dict[str, Any]]) -> None:
    for entry in page:
        self.entry(entry)


async def _both_ways(log: MemorySource, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = (await verify_ledger(log)).to_json()
    with monkeypatch.context() as patch:
        patch.setattr(_Walk, "page", _entry_by_entry)
        slow = (await verify_ledger(log)).to_json()
    for report in (fast, slow):
        del report["rate"], report["elapsed"]
    return fast, slow


async def test_an_intact_log_verifies_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = await _both_ways(_log(), monkeypatch)
    assert fast == slow and fast["ok"] and fast["entries_checked"] == SIZE


async def test_events_with_attributes_the_structs_do_not_know_verify_entry_by_entry() -> None:
    """An extension attribute from another system (kept by the envelope) is not read by
    the struct path, so such an entry is proven canonical by `entry`; the log verifies."""
    leaves = []
    for i in range(SIZE):
        body = json.loads(_event_leaf(i))
        body["event"]["zzext"] = "from elsewhere"
        leaves.append(canonical_json(body))
    walked: list[int] = []
    entry = _Walk.entry

    def counted(self: _Walk, row: dict[str, Any]) -> None:
        walked.append(row["index"])
        entry(self, row)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_Walk, "entry", counted)
        report = await verify_ledger(MemorySource.build(SIGNER, leaves, [SIZE]))
    assert report.ok and report.entries_checked == SIZE
    assert walked == list(range(SIZE))


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(FORGERIES)), st.integers(0, SIZE - 1)),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from([7, 10, 1000]),
)
def test_a_forged_log_gets_the_same_report_both_ways(
    monkeypatch: pytest.MonkeyPatch, forgeries: list[tuple[str, int]], page_size: int
) -> None:
    base = _base()
    log = MemorySource(base.key, base.head_docs, copy.deepcopy(base.rows), tree=base.tree)
    log.page_size = page_size
    for name, k in forgeries:
        if k < len(log.rows):
            # an earlier forgery may have left nothing this one can change
            with contextlib.suppress(KeyError, ValueError, TypeError, AttributeError):
                FORGERIES[name](log.rows, k)
    fast, slow = asyncio.run(_both_ways(log, monkeypatch))
    assert fast == slow
    seen.add((fast["ok"], fast["reason"] and fast["reason"].split(" ")[0]))


@pytest.mark.parametrize(
    "name", sorted(n for n in FORGERIES if n.startswith("served-") and n != "served-right")
)
async def test_an_entry_served_unlike_its_leaf_is_reported_both_ways(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Type for type: a served `true` or `1.0` where the leaf holds `1` is a difference
    (Python's == alone would take them as equal)."""
    base = _base()
    log = MemorySource(base.key, base.head_docs, copy.deepcopy(base.rows), tree=base.tree)
    FORGERIES[name](log.rows, 3)
    fast, slow = await _both_ways(log, monkeypatch)
    assert fast == slow
    assert not fast["ok"], name


async def test_served_index_columns_that_say_what_the_leaves_say_verify_both_ways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = _base()
    log = MemorySource(base.key, base.head_docs, copy.deepcopy(base.rows), tree=base.tree)
    for row in log.rows:
        row["indexed"] = _indexed(row)
    fast, slow = await _both_ways(log, monkeypatch)
    assert fast == slow and fast["ok"], fast["reason"]


def _chunk_log(people_served: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Any:
    """A log whose entry 3 is a bulk import's chunk (p-a listed twice: its last record
    counts), served with the `ledger_people` rows `people_served` makes of the right ones."""
    people = [
        {"person_id": "p-a", "name": "A", "manager_id": "p-b"},
        {"person_id": "p-b", "name": "B"},
        {"person_id": "p-a", "name": "A", "manager_id": "p-c"},
    ]
    chunk = make_event(
        "directory.people.imported.v1",
        subject="directory-import:1",
        data={"people": people},
        source="/services/intake",
        time=T0,
    )
    leaves = [_event_leaf(i) for i in range(SIZE)]
    leaves[3] = _leaf(3, T0 + timedelta(seconds=3), chunk.to_dict(), chunk.subject)
    log = MemorySource.build(SIGNER, leaves, [SIZE])
    for row in log.rows:
        row["indexed"] = _indexed(row)
    records = chunk.to_dict()["data"]["people"]  # as recorded (with the defaults)
    right = [{"person_id": "p-a", "record": records[2]}, {"person_id": "p-b", "record": records[1]}]
    log.rows[3]["indexed"]["people"] = people_served(right)
    return log


@pytest.mark.parametrize(
    ("served", "problem"),
    [
        (lambda right: right, None),
        (lambda right: [{**right[0], "record": None}, right[1]], None),  # no jsonb copy
        (lambda right: right[1:], "leaves out p-a, whom its leaf carries"),
        (
            lambda right: [*right, {"person_id": "p-z", "record": {"roles": ["auditor"]}}],
            "lists p-z, whom its leaf does not carry",
        ),
        (
            lambda right: [{"person_id": "p-a", "record": {"person_id": "p-a"}}, right[1]],
            "keeps for p-a a record its leaf does not hold",
        ),
    ],
    ids=["right", "without-record", "removed", "added", "changed"],
)
async def test_a_chunks_people_index_is_proven_against_its_leaf(
    served: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    problem: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, slow = await _both_ways(_chunk_log(served), monkeypatch)
    assert fast == slow
    if problem is None:
        assert fast["ok"], fast["reason"]
    else:
        assert fast["bad_indexes"] == [3]
        assert fast["reason"] == (
            f"entry 3's people index {problem}: the index was changed behind the ledger"
        )
