"""The ledger verifier catches every kind of forgery, at the right index, with no database.

The log under test is 64 real version-1 leaves (incident events, one second apart) with a
signed head every 10 entries, held in memory. Each test forges it the way a superuser
editing the ledger table would (the Merkle tree that serves proofs stays as signed, like
the stored subtree hashes a forger leaves alone), then asks `verify_ledger` where the
damage starts. Evidence bundles are exported from the same log and checked offline.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from services.audit import merkle
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.cli import incidents_as_of
from services.audit.indexed import indexed_of_leaf
from services.audit.ledger import Candidate, leaf_bytes
from services.audit.verify import (
    INDEX_UNCHECKED,
    AuthError,
    BundleSource,
    ExportError,
    HttpSource,
    MemorySource,
    export_bundle,
    verify_bundle,
    verify_ledger,
)
from services.cli import app
from services.domain.events import CheckpointSigned, make_event

ORIGIN = "test.example/ledger"
SIGNER = NoteSigner.generate(ORIGIN)
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
SIZE = 64
HEADS = range(10, 61, 10)
TOKEN = "auditor-token"


def event_leaf(index: int, incident: str, *, at: datetime | None = None) -> bytes:
    """The canonical leaf the ledger would store for an acknowledgement at `index`."""
    event = make_event(
        "incident.acknowledged.v1",
        subject=incident,
        data={"principal": "p-chen", "level": 1},
        source="/tests",
        time=T0,
    )
    return _leaf(index, at or T0 + timedelta(seconds=index), event.to_dict(), event.subject)


def _leaf(index: int, at: datetime, event: dict[str, Any], subject: str) -> bytes:
    candidate = Candidate(
        record_key=f"incident.activity:{event['id']}",
        topic="incident.activity",
        partition=0,
        offset=index,
        event=event,
        raw=json.dumps(event).encode(),
        reason=None,
        event_id=event["id"],
        incident_id=subject,
        event_type=event["type"],
        trace_id=None,
    )
    return leaf_bytes(index, at, candidate)


def incident_of(index: int) -> str:
    """Four incidents take turns under the heads; the unsigned tail is one late incident."""
    return f"inc-{index % 4}" if index < max(HEADS) else "inc-late"


def a_log(size: int = SIZE, heads: range = HEADS) -> MemorySource:
    return MemorySource.build(SIGNER, [event_leaf(i, incident_of(i)) for i in range(size)], heads)


def edit_one_byte(leaf_b64: str) -> str:
    """One byte of the principal's name changed: still canonical JSON, another fact."""
    leaf = bytearray(base64.b64decode(leaf_b64))
    at = leaf.index(b'"principal":"') + len(b'"principal":"')
    leaf[at] ^= 0x01
    return base64.b64encode(bytes(leaf)).decode()


def rehash(row: dict[str, Any]) -> None:
    row["leaf_hash"] = merkle.leaf_hash(base64.b64decode(row["leaf"])).hex()


# --------------------------------------------------------------------- intact


async def test_an_intact_ledger_verifies_with_every_head_and_consistency_proof() -> None:
    seen: list[tuple[int, int]] = []
    report = await verify_ledger(a_log(), progress=lambda done, total: seen.append((done, total)))
    assert report.ok, report.reason
    assert report.entries_checked == SIZE
    assert report.heads_checked == len(HEADS)
    assert report.proofs_checked == len(HEADS) - 1
    assert report.first_bad_index is None and report.reason is None
    assert report.tree_size == 60 and report.unsigned_entries == 4
    assert report.key_id == SIGNER.key_id
    assert seen[-1] == (SIZE, SIZE)


async def test_an_empty_ledger_without_heads_is_intact_but_vouched_for_by_nothing() -> None:
    report = await verify_ledger(a_log(size=0, heads=range(0)))
    assert report.ok and report.entries_checked == 0 and report.heads_checked == 0


# ------------------------------------------------------------------ forgeries


def edit_leaving_hash(log: MemorySource, k: int) -> None:
    log.rows[k]["leaf"] = edit_one_byte(log.rows[k]["leaf"])


def delete_and_renumber(log: MemorySource, k: int) -> None:
    del log.rows[k]
    for row in log.rows[k:]:
        row["index"] -= 1


def insert_forged(log: MemorySource, k: int) -> None:
    forged = event_leaf(k, "inc-forged", at=T0 + timedelta(seconds=k - 1))
    for row in log.rows[k:]:
        row["index"] += 1
    log.rows.insert(
        k,
        {
            "index": k,
            "leaf": base64.b64encode(forged).decode(),
            "leaf_hash": merkle.leaf_hash(forged).hex(),
        },
    )


def swap(log: MemorySource, i: int, j: int) -> None:
    for name in ("leaf", "leaf_hash"):
        log.rows[i][name], log.rows[j][name] = log.rows[j][name], log.rows[i][name]


def backdate(log: MemorySource, k: int) -> None:
    body = json.loads(base64.b64decode(log.rows[k]["leaf"]))
    body["recorded_at"] = "2026-11-25T08:00:00.000000Z"
    log.rows[k]["leaf"] = base64.b64encode(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).decode()
    rehash(log.rows[k])


@pytest.mark.parametrize(
    ("forge", "k", "words"),
    [
        (edit_leaving_hash, 25, "leaf was edited"),
        (delete_and_renumber, 25, "deleted, inserted or reordered"),
        (insert_forged, 25, "inserted at 25"),
        (lambda log, k: swap(log, k, 41), 17, "deleted, inserted or reordered"),
        (backdate, 33, "went backwards"),
        (edit_leaving_hash, 0, "leaf was edited"),
    ],
    ids=["edit", "delete", "insert", "swap", "backdate", "edit-first"],
)
async def test_a_forged_entry_is_found_at_its_exact_index(forge: Any, k: int, words: str) -> None:
    log = a_log()
    forge(log, k)
    report = await verify_ledger(log)
    assert not report.ok
    assert report.first_bad_index == k, report.reason
    assert words in (report.reason or "")


async def test_deleting_the_last_unsigned_entry_is_not_visible_but_a_signed_one_is() -> None:
    # Entries after the last head are vouched for by nothing yet; the row count of
    # a renumbered ledger simply shrinks. The same delete under a head is caught.
    log = a_log()
    del log.rows[-1]
    assert (await verify_ledger(log)).ok
    log = a_log()
    delete_and_renumber(log, 59)
    report = await verify_ledger(log)
    assert report.first_bad_index == 59


async def test_an_edit_with_its_hash_recomputed_is_caught_by_the_next_signed_root() -> None:
    log = a_log()
    log.rows[25]["leaf"] = edit_one_byte(log.rows[25]["leaf"])
    rehash(log.rows[25])
    report = await verify_ledger(log)
    assert not report.ok
    assert report.bad_head == 30
    assert report.bad_range == (20, 30)
    assert report.first_bad_index is None
    assert report.where() == "between 20 and 29"
    assert "signed head of size 30" in (report.reason or "")


async def test_a_truncated_tail_is_caught_by_a_head_larger_than_the_ledger() -> None:
    log = a_log()
    del log.rows[-5:]
    report = await verify_ledger(log)
    assert not report.ok
    assert report.first_bad_index == SIZE - 5
    assert report.bad_head == 60
    assert "cut off" in (report.reason or "")


async def test_a_head_whose_signature_was_altered_fails() -> None:
    log = a_log()
    note = log.head_docs[2]["checkpoint"]
    log.head_docs[2]["checkpoint"] = note[:-10] + ("A" if note[-10] != "A" else "B") + note[-9:]
    report = await verify_ledger(log)
    assert not report.ok and report.bad_head == 30
    assert "does not verify" in (report.reason or "")


async def test_a_head_whose_json_root_differs_from_its_note_fails() -> None:
    log = a_log()
    log.head_docs[0]["root_hash"] = "00" * 32
    report = await verify_ledger(log)
    assert not report.ok and report.bad_head == 10


async def test_a_log_signed_by_another_key_fails_against_the_trusted_key() -> None:
    other = NoteSigner.generate(ORIGIN)
    log = MemorySource.build(other, [event_leaf(i, "inc-0") for i in range(12)], [10])
    assert (await verify_ledger(log)).ok
    report = await verify_ledger(log, trusted_key=SIGNER.verifier_key)
    assert not report.ok and "not the trusted key" in (report.reason or "")


async def test_a_head_dropped_from_the_list_is_exposed_by_its_record_in_the_ledger() -> None:
    leaves = [event_leaf(i, "inc-0") for i in range(10)]
    root = merkle.MemoryTree.from_leaves(leaves).root()
    note = sign_checkpoint(SIGNER, Checkpoint(ORIGIN, 10, root))
    checkpoint = make_event(
        "audit.checkpoint.signed.v1",
        subject=ORIGIN,
        data=CheckpointSigned(
            tree_size=10, root_hash=root.hex(), timestamp=T0, key_id=SIGNER.key_id, checkpoint=note
        ),
        source="/services/audit",
        time=T0,
    )
    leaves.append(_leaf(10, T0 + timedelta(seconds=10), checkpoint.to_dict(), ORIGIN))
    leaves += [event_leaf(i, "inc-0") for i in range(11, 20)]
    log = MemorySource.build(SIGNER, leaves, [10, 20])
    assert (await verify_ledger(log)).ok
    log.head_docs = [h for h in log.head_docs if h["tree_size"] != 10]
    report = await verify_ledger(log)
    assert not report.ok and report.bad_head == 10
    assert "leaves out" in (report.reason or "")


async def test_a_stored_tree_that_differs_from_the_entries_fails_its_consistency_proofs() -> None:
    log = a_log()
    wrong = [event_leaf(i, incident_of(i)) for i in range(SIZE)]  # new event ids
    log.tree = merkle.MemoryTree.from_leaves(wrong)
    report = await verify_ledger(log)
    assert not report.ok and report.bad_head == 20
    assert "consistency proof" in (report.reason or "")


# ---------------------------------------------------------------------- HTTP


def with_columns(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as the audit service serves it: with its index columns (`indexed`),
    here those an honest append derived from its leaf (none for a leaf a test damaged
    so that it no longer reads: verify names it before it looks at its columns)."""
    try:
        body = json.loads(base64.b64decode(entry["leaf"]))
        derived = indexed_of_leaf(body)
    except (ValueError, TypeError, KeyError):
        return entry
    if not isinstance(body, dict) or derived is None or "recorded_at" not in body:
        return entry
    columns = {
        "valid": derived.valid,
        "incident_id": derived.incident_id,
        "event_type": derived.event_type,
        "event_id": derived.event_id,
        "recorded_at": body["recorded_at"],
    }
    return {**entry, "indexed": columns}


def serve(
    log: MemorySource,
    broken: frozenset[int] = frozenset(),
    unindexed: frozenset[int] | None = frozenset(),
) -> httpx.MockTransport:
    """The audit API's ledger routes over `log`; an entry in `broken` fails with 500.
    Each entry is served with its index columns, but those in `unindexed` (None: every
    entry, as a service older than that field serves them)."""

    def handle(request: httpx.Request) -> httpx.Response:
        path, query = request.url.path, request.url.params
        if path == "/v1/ledger/public-key":
            return httpx.Response(200, json=log.key)
        if path == "/v1/ledger/heads":
            return httpx.Response(200, json={"heads": log.head_docs})
        if path == "/v1/ledger/proofs/consistency":
            assert log.tree is not None
            proof = log.tree.consistency_proof(int(query["first"]), int(query["second"]))
            return httpx.Response(200, json={"proof": [p.hex() for p in proof]})
        if path == "/v1/ledger/entries":
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return httpx.Response(401, json={"title": "Unauthorized", "detail": "no token"})
            start, end = int(query["start"]), int(query["end"])
            if broken & set(range(start, end)):
                return httpx.Response(500, json={"title": "Internal error"})
            # the columns derived here from the leaf as served (a test may have edited it)
            bare = [{k: v for k, v in row.items() if k != "indexed"} for row in log.rows[start:end]]
            rows = [
                row if unindexed is None or row["index"] in unindexed else with_columns(row)
                for row in bare
            ]
            return httpx.Response(200, json={"entries": rows})
        return httpx.Response(404, json={"title": "Not found"})

    return httpx.MockTransport(handle)


async def test_over_http_the_ledger_is_read_in_pages_and_verified() -> None:
    log = a_log(size=2500, heads=range(1000, 2501, 500))
    async with HttpSource("http://audit", TOKEN, transport=serve(log)) as source:
        report = await verify_ledger(source)
    assert report.ok, report.reason
    assert (report.entries_checked, report.heads_checked, report.proofs_checked) == (2500, 4, 3)


async def test_over_http_an_entry_the_service_cannot_serve_is_named() -> None:
    log = a_log()
    async with HttpSource("http://audit", TOKEN, transport=serve(log, frozenset({37}))) as source:
        report = await verify_ledger(source)
    assert report.first_bad_index == 37
    assert "cannot serve entry 37" in (report.reason or "")


async def test_a_service_that_leaves_out_the_index_columns_fails_verify_unless_allowed() -> None:
    """The reads select entries by columns the leaf hashes do not cover; verify proves
    them only when the service serves them. A service that leaves them out (an older
    one, or one whose controller hides a changed column so) fails by default, and the
    report says why; allowed (`require_indexed=False`, `--allow-unindexed`), the log
    verifies and the report still says the columns went unchecked."""
    log = a_log()
    async with HttpSource("http://audit", TOKEN, transport=serve(log, unindexed=None)) as source:
        report = await verify_ledger(source)
    assert not report.ok
    assert report.reason == (
        f"{INDEX_UNCHECKED} for 64 entries (the first at index 0): what the reads select"
        " those entries by is not proven"
    )
    assert (report.unindexed, report.first_unindexed, report.first_bad_index) == (64, 0, None)
    assert report.entries_checked == SIZE and report.heads_checked == len(HEADS)

    older = serve(log, unindexed=None)
    async with HttpSource("http://audit", TOKEN, transport=older, require_indexed=False) as source:
        allowed = await verify_ledger(source)
    assert allowed.ok and allowed.unindexed == 64
    assert (allowed.unindexed_note() or "").startswith(INDEX_UNCHECKED)

    # one entry served without them is enough, named by its index
    async with HttpSource(
        "http://audit", TOKEN, transport=serve(log, unindexed=frozenset({17}))
    ) as source:
        one = await verify_ledger(source)
    assert not one.ok and (one.unindexed, one.first_unindexed) == (1, 17)
    async with HttpSource("http://audit", TOKEN, transport=serve(log)) as source:
        every = await verify_ledger(source)
    assert every.ok and every.unindexed == 0 and every.unindexed_note() is None


def test_the_command_says_the_index_columns_were_not_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`incidents audit verify` against a service that does not serve the columns: exit 1
    and why; with --allow-unindexed, exit 0 and the summary still says so."""
    import services.audit.verify as verify

    log = a_log()

    class Older(HttpSource):
        def __init__(self, url: str, token: str | None, **options: Any) -> None:
            super().__init__(url, TOKEN, transport=serve(log, unindexed=None), **options)

    monkeypatch.setattr(verify, "HttpSource", Older)
    command = ["audit", "verify", "--url", "http://audit", "--state", str(tmp_path / "s.json")]
    failed = CliRunner().invoke(app, command)
    assert failed.exit_code == 1, failed.output
    flat = " ".join(failed.output.split())
    assert f"verification failed: {INDEX_UNCHECKED} for 64 entries" in flat
    assert "pass --allow-unindexed" in flat
    allowed = CliRunner().invoke(app, [*command, "--allow-unindexed"])
    assert allowed.exit_code == 0, allowed.output
    flat = " ".join(allowed.output.split())
    assert INDEX_UNCHECKED in flat and "intact" in flat


async def test_over_http_a_missing_token_is_an_error_not_a_verdict() -> None:
    async with HttpSource("http://audit", None, transport=serve(a_log())) as source:
        with pytest.raises(AuthError, match="401"):
            await verify_ledger(source)


# ------------------------------------------------------------------- bundles


async def test_an_exported_bundle_verifies_offline() -> None:
    log = a_log()
    bundle = await export_bundle(log, "inc-1")
    assert [e["index"] for e in bundle["entries"]] == [i for i in range(60) if i % 4 == 1]
    assert bundle["head"]["tree_size"] == 60
    report = verify_bundle(json.loads(json.dumps(bundle)))
    assert report.ok, report.reason
    assert report.entries_checked == 15 and report.heads_checked == 1


async def test_a_bundle_with_one_edited_byte_fails_at_that_entry() -> None:
    bundle = await export_bundle(a_log(), "inc-1")
    bundle["entries"][3]["leaf"] = edit_one_byte(bundle["entries"][3]["leaf"])
    report = verify_bundle(bundle)
    assert not report.ok and report.first_bad_index == 13
    assert "not in the signed tree" in (report.reason or "")


async def test_a_bundle_whose_head_signature_was_altered_fails() -> None:
    bundle = await export_bundle(a_log(), "inc-1")
    note = bundle["head"]["checkpoint"]
    bundle["head"]["checkpoint"] = note.replace(f"\n\n\u2014 {ORIGIN} ", f"\n\n\u2014 {ORIGIN} A")
    report = verify_bundle(bundle)
    assert not report.ok and "does not verify" in (report.reason or "")


async def test_a_bundle_smuggling_another_incidents_event_fails() -> None:
    log = a_log()
    bundle = await export_bundle(log, "inc-1")
    other = await export_bundle(log, "inc-2")
    bundle["entries"].insert(1, other["entries"][0])  # index 2: genuine, but inc-2's
    report = verify_bundle(bundle)
    assert not report.ok and report.first_bad_index == 2
    assert "not an event of incident inc-1" in (report.reason or "")


async def test_entries_newer_than_the_latest_head_are_not_exported() -> None:
    with pytest.raises(ExportError, match="next head"):
        await export_bundle(a_log(), "inc-late")  # entries 60-63, after head 60
    with pytest.raises(ExportError, match="no event"):
        await export_bundle(a_log(), "inc-none")


async def test_a_bundle_file_is_a_source_that_verifies_and_re_exports(tmp_path: Path) -> None:
    bundle = await export_bundle(a_log(), "inc-1")
    path = tmp_path / "inc-1.json"
    path.write_text(json.dumps(bundle))
    source = BundleSource(path)
    assert (await verify_ledger(source)).ok
    again = await export_bundle(source, "inc-1")
    assert again["entries"] == bundle["entries"] and again["head"] == bundle["head"]


# ----------------------------------------------------------------------- CLI


async def test_the_command_verifies_a_bundle_and_exits_1_at_the_first_bad_index(
    tmp_path: Path,
) -> None:
    bundle = await export_bundle(a_log(), "inc-1")
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(bundle))
    bundle["entries"][2]["leaf"] = edit_one_byte(bundle["entries"][2]["leaf"])
    bad.write_text(json.dumps(bundle))
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--bundle", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "intact" in ok.output
    failed = runner.invoke(app, ["audit", "verify", "--bundle", str(bad)])
    assert failed.exit_code == 1
    assert "first bad index: 9 (" in failed.output


def test_the_command_says_when_the_service_is_unreachable_without_a_traceback() -> None:
    result = CliRunner().invoke(app, ["audit", "verify", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "cannot connect to http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


async def test_replay_folds_every_incident_from_the_leaves_recorded_by_an_instant() -> None:
    states = await incidents_as_of(a_log(), T0 + timedelta(seconds=30))
    # entries 0-30 were recorded by then: eight acknowledgements each, seven for inc-3
    assert {k: v.version for k, v in states.items()} == {
        "inc-0": 8,
        "inc-1": 8,
        "inc-2": 8,
        "inc-3": 7,
    }
    assert all(v.acknowledged_by == "p-chen" for v in states.values())
    assert await incidents_as_of(a_log(), T0 - timedelta(seconds=1)) == {}


def test_replay_refuses_an_instant_without_a_timezone() -> None:
    result = CliRunner().invoke(app, ["audit", "replay", "--as-of", "2026-11-25T10:00:00"])
    assert result.exit_code == 2
    assert "timezone" in result.output


def withhold(log: MemorySource, k: int, **verdicts: bool) -> None:
    """Serve entry `k` as the entries route serves it to a reader it is withheld from."""
    row = log.rows[k]
    recorded_at = json.loads(base64.b64decode(row["leaf"]))["recorded_at"]
    log.rows[k] = {
        "index": k,
        "leaf_hash": row["leaf_hash"],
        "recorded_at": recorded_at,
        **verdicts,
        "withheld": True,
    }


@pytest.mark.parametrize(
    ("verdicts", "words"),
    [
        ({"leaf_ok": True, "indexed_ok": False}, "its index columns do not say what its leaf says"),
        ({"leaf_ok": False, "indexed_ok": False}, "its stored leaf does not hash"),
    ],
)
async def test_a_withheld_entry_the_service_finds_changed_fails_verify(
    verdicts: dict[str, bool], words: str
) -> None:
    """Review D3: what the reader cannot check of a withheld entry, the service checks
    and says; a false verdict fails the run at that entry, the walk reads on."""
    log = a_log()
    withhold(log, 7, leaf_ok=True, indexed_ok=True)
    withhold(log, 9, **verdicts)
    report = await verify_ledger(log)
    assert not report.ok and report.bad_indexes == [9], report
    assert words in (report.reason or "") and report.withheld == 2
    assert report.entries_checked == SIZE


async def test_a_withheld_entry_without_verdicts_counts_as_unindexed() -> None:
    log = a_log()
    withhold(log, 7, leaf_ok=True, indexed_ok=True)
    withhold(log, 9)  # an older service: nothing said of its columns
    report = await verify_ledger(log)
    assert report.unindexed == 1 and report.first_unindexed == 9, report  # said, and over
    assert "the first at index 9" in (report.unindexed_note() or "")  # HTTP, a failure
