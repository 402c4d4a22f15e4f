"""`incidents audit verify` checks the log against every head it can find, not only the
heads the service still lists, and trusts only the key it pinned.

The logs are the in-memory ones of `test_verify` (64 real leaves, a head every 10),
served over a mock HTTP transport so the command itself runs, with a state file of its
own per test. Each story is one an insider could try: cut the ledger back together with
its heads and sign a smaller tree, fork the log, re-sign it with another key, trim an
evidence bundle, or damage leaves so they no longer parse.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from services.audit import merkle
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.cli import incidents_as_of
from services.audit.trust import VerifierState, file_heads, verify_service
from services.audit.verify import (
    KnownHead,
    MemorySource,
    SourceError,
    export_bundle,
    verify_ledger,
)
from services.cli import app
from tests.unit.test_verify import (
    ORIGIN,
    SIGNER,
    T0,
    TOKEN,
    a_log,
    event_leaf,
    incident_of,
    with_columns,
)

URL = "http://audit.test"


def serve(log: MemorySource) -> httpx.MockTransport:
    """The audit API's ledger routes over `log` (what `verify` and `export` call)."""

    def handle(request: httpx.Request) -> httpx.Response:
        path, query = request.url.path, request.url.params
        assert log.tree is not None
        if path == "/v1/ledger/public-key":
            return httpx.Response(200, json=log.key)
        if path == "/v1/ledger/heads":
            return httpx.Response(200, json={"heads": log.head_docs})
        if path == "/v1/ledger/proofs/consistency":
            proof = log.tree.consistency_proof(int(query["first"]), int(query["second"]))
            return httpx.Response(200, json={"proof": [p.hex() for p in proof]})
        if path == "/v1/ledger/proofs/inclusion":
            proof = log.tree.inclusion_proof(int(query["index"]), int(query["tree_size"]))
            return httpx.Response(200, json={"proof": [p.hex() for p in proof]})
        if path == "/v1/ledger/entries":
            start, end = int(query["start"]), int(query["end"])
            rows = [with_columns(row) for row in log.rows[start:end]]  # as audit serves them
            return httpx.Response(200, json={"entries": rows})
        if path.startswith("/v1/incidents/") and path.endswith("/timeline"):
            incident = path.split("/")[3]
            events = [{"index": i} for i in range(len(log.rows)) if incident_of(i) == incident]
            return httpx.Response(200, json={"incident_id": incident, "events": events})
        return httpx.Response(404, json={"title": "Not found"})

    return httpx.MockTransport(handle)


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[MemorySource], None]]:
    """Make the command's HTTP client talk to a log held in memory."""
    real = httpx.AsyncClient

    def use(log: MemorySource) -> None:
        def client(*args: Any, transport: Any = None, **kwargs: Any) -> httpx.AsyncClient:
            return real(*args, transport=serve(log), **kwargs)

        monkeypatch.setattr(httpx, "AsyncClient", client)

    yield use


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["audit", *args])


def check(state: Path, *extra: str) -> Result:
    return run("verify", "--url", URL, "--token", TOKEN, "--state", str(state), *extra)


def cut_back_and_resigned(keep: int, grow: int = 3) -> MemorySource:
    """The log cut back to `keep` entries with every head above it, then grown by `grow`
    new entries and signed again at its new, smaller size (same key, same origin)."""
    leaves = [event_leaf(i, incident_of(i)) for i in range(keep)]
    leaves += [event_leaf(i, "inc-after") for i in range(keep, keep + grow)]
    return MemorySource.build(SIGNER, leaves, [*range(10, keep + 1, 10), keep + grow])


# ------------------------------------------------------------- the state file


def test_the_state_keeps_the_largest_verified_head_and_catches_a_cut_tail_signed_again(
    tmp_path: Path, serving: Callable[[MemorySource], None]
) -> None:
    state = tmp_path / "state.json"
    serving(a_log())
    first = check(state)
    assert first.exit_code == 0, first.output
    assert "NOT PINNED" in first.output
    kept = json.loads(state.read_text())["logs"][ORIGIN]
    assert kept["verifier_key"] == SIGNER.verifier_key
    assert kept["head"]["tree_size"] == 60

    serving(cut_back_and_resigned(keep=45))  # its own heads say nothing of 50 and 60
    second = check(state)
    assert second.exit_code == 1, second.output
    assert "first bad index: 48" in second.output
    assert "cut off" in second.output
    assert "NOT PINNED" not in second.output
    assert f"size 60, root {kept['head']['root_hash']} (the state file {state}" in second.output
    assert "size 48, root" in second.output and f"served by {URL}" in second.output
    # a failed run keeps what it knew
    assert json.loads(state.read_text())["logs"][ORIGIN]["head"]["tree_size"] == 60


def test_a_log_cut_back_and_grown_past_the_kept_head_is_not_consistent_with_it(
    tmp_path: Path, serving: Callable[[MemorySource], None]
) -> None:
    state = tmp_path / "state.json"
    serving(a_log(heads=range(10, 41, 10)))
    assert check(state).exit_code == 0
    serving(cut_back_and_resigned(keep=35, grow=30))  # 65 entries again, heads 10-30, 65
    result = check(state)
    assert result.exit_code == 1, result.output
    assert "signed head of size 40 from the state file" in result.output
    assert "not consistent with the tree" in result.output
    assert "between 30 and 39" in result.output


def test_two_different_trees_of_the_same_size_are_a_fork(
    tmp_path: Path, serving: Callable[[MemorySource], None]
) -> None:
    state = tmp_path / "state.json"
    serving(a_log())
    assert check(state).exit_code == 0
    other = MemorySource.build(SIGNER, [event_leaf(i, "inc-other") for i in range(64)], [60])
    serving(other)
    result = check(state)
    assert result.exit_code == 1, result.output
    assert "two signed heads of size 60 have different roots" in result.output
    assert "heads that disagree:" in result.output
    assert result.output.count("size 60, root") == 2


def test_a_head_given_on_the_command_line_counts_like_any_other(
    tmp_path: Path, serving: Callable[[MemorySource], None]
) -> None:
    note = tmp_path / "head-60.note"
    note.write_text(a_log().head_docs[-1]["checkpoint"])
    serving(cut_back_and_resigned(keep=45))
    result = check(tmp_path / "fresh.json", "--head", str(note))
    assert result.exit_code == 1, result.output
    assert f"the head file {note}" in result.output and "cut off" in result.output


async def test_topic_heads_of_another_log_are_skipped_but_one_not_signed_by_the_key_fails() -> None:
    log = a_log()
    mine = log.head_docs[-1]["checkpoint"]
    stranger = NoteSigner.generate("elsewhere.example/log")
    theirs = MemorySource.build(stranger, [event_leaf(0, "inc-0")], [1]).head_docs[0]
    report = await verify_ledger(
        log,
        known_heads=[KnownHead(mine, "topic", True), KnownHead(theirs["checkpoint"], "t", True)],
    )
    assert report.ok and report.heads_ignored == 1
    impostor = NoteSigner.generate(ORIGIN)  # the same origin, another key
    forged = MemorySource.build(impostor, [event_leaf(0, "inc-0")], [1]).head_docs[0]
    report = await verify_ledger(log, known_heads=[KnownHead(forged["checkpoint"], "topic", True)])
    assert not report.ok and "does not verify with the log's key" in (report.reason or "")


# ---------------------------------------------------------------- key pinning


def test_a_history_re_signed_with_another_key_fails_once_the_key_is_pinned(
    tmp_path: Path, serving: Callable[[MemorySource], None]
) -> None:
    state = tmp_path / "state.json"
    serving(a_log())
    assert check(state).exit_code == 0
    impostor = NoteSigner.generate(ORIGIN)
    serving(MemorySource.build(impostor, [event_leaf(i, incident_of(i)) for i in range(64)], [60]))
    result = check(state)
    assert result.exit_code == 1, result.output
    assert "not the trusted key" in result.output
    conflicting = check(state, "--key", impostor.verifier_key)
    assert conflicting.exit_code == 2
    assert "pins" in conflicting.output


def test_a_history_re_signed_under_a_new_origin_name_still_needs_the_pinned_key(
    tmp_path: Path, serving: Callable[[MemorySource], None]
) -> None:
    state = tmp_path / "state.json"
    serving(a_log())
    assert check(state).exit_code == 0
    renamed = NoteSigner.generate("renamed.example/ledger")
    serving(MemorySource.build(renamed, [event_leaf(i, incident_of(i)) for i in range(64)], [60]))
    result = check(state)
    assert result.exit_code == 1, result.output
    assert f"{URL} served log {ORIGIN} before" in result.output
    assert "not the trusted key" in result.output


# -------------------------------------------------------------------- bundles


async def bundle_file(
    tmp_path: Path, change: Callable[[dict[str, Any]], None] | None = None
) -> Path:
    bundle = await export_bundle(a_log(), "inc-1")
    if change is not None:
        change(bundle)
    path = tmp_path / "inc-1.json"
    path.write_text(json.dumps(bundle))
    return path


def offline(path: Path, state: Path, *extra: str) -> Result:
    return run("verify", "--bundle", str(path), "--state", str(state), *extra)


async def test_a_bundle_states_its_tree_size_and_lists_the_incidents_indexes(
    tmp_path: Path,
) -> None:
    bundle = await export_bundle(a_log(), "inc-1")
    assert bundle["tree_size"] == bundle["head"]["tree_size"] == 60
    assert bundle["incident_indexes"] == [e["index"] for e in bundle["entries"]]
    result = offline(await bundle_file(tmp_path), tmp_path / "state.json")
    assert result.exit_code == 0, result.output
    assert "NOT PINNED" in result.output


def delete_entry(bundle: dict[str, Any]) -> None:
    del bundle["entries"][3]


def cut_short(bundle: dict[str, Any]) -> None:
    del bundle["entries"][-4:]


def restate_size(bundle: dict[str, Any]) -> None:
    bundle["tree_size"] = 40


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (delete_entry, "first bad index: 13 (the bundle lists 1 entries"),
        (cut_short, "first bad index: 45 (the bundle lists 4 entries"),
        (restate_size, "says it was cut at tree size 40"),
    ],
    ids=["entry-deleted", "cut-short", "size-restated"],
)
async def test_a_trimmed_bundle_fails(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], words: str
) -> None:
    result = offline(await bundle_file(tmp_path, change), tmp_path / "state.json")
    assert result.exit_code == 1, result.output
    assert words in result.output


async def test_a_bundle_file_cut_short_mid_json_fails(tmp_path: Path) -> None:
    path = await bundle_file(tmp_path)
    path.write_text(path.read_text()[:-200])
    result = offline(path, tmp_path / "state.json")
    assert result.exit_code == 1 and "not valid JSON (cut short" in result.output


async def test_a_bundle_re_signed_with_another_key_fails_against_the_pin_or_the_key(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.json"
    assert offline(await bundle_file(tmp_path), state).exit_code == 0  # pins SIGNER
    impostor = NoteSigner.generate(ORIGIN)
    leaves = [event_leaf(i, incident_of(i)) for i in range(64)]
    forged = await export_bundle(MemorySource.build(impostor, leaves, [60]), "inc-1")
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    pinned = offline(path, state)
    assert pinned.exit_code == 1 and "not the trusted key" in pinned.output
    keyed = offline(path, tmp_path / "fresh.json", "--key", SIGNER.verifier_key)
    assert keyed.exit_code == 1 and "not the trusted key" in keyed.output
    key_file = tmp_path / "log.vkey"
    key_file.write_text(SIGNER.verifier_key + "\n")
    from_file = offline(path, tmp_path / "fresh.json", "--key", str(key_file))
    assert from_file.exit_code == 1 and "not the trusted key" in from_file.output


def test_export_prints_the_verify_command_with_the_key(
    tmp_path: Path, serving: Callable[[MemorySource], None]
) -> None:
    serving(a_log())
    out = tmp_path / "inc-1.json"
    result = run("export", "--incident", "inc-1", "--out", str(out), "--url", URL, "--token", TOKEN)
    assert result.exit_code == 0, result.output
    command = f"incidents audit verify --bundle {out} --key {SIGNER.verifier_key}"
    assert command in result.output.replace("\n", "")
    assert file_heads(out)[0].where == f"the bundle {out}"


# ------------------------------------------------------------- corrupt leaves


def not_json(log: MemorySource, k: int) -> None:
    """One byte of a leaf changed so it is no JSON any more; its stored hash left alone."""
    leaf = bytearray(base64.b64decode(log.rows[k]["leaf"]))
    leaf[0] = ord("[")
    log.rows[k]["leaf"] = base64.b64encode(bytes(leaf)).decode()


def test_verify_reads_past_corrupt_leaves_and_names_every_one(
    tmp_path: Path, serving: Callable[[MemorySource], None]
) -> None:
    log = a_log()
    for k in (13, 37, 62):
        not_json(log, k)
    serving(log)
    result = check(tmp_path / "state.json")
    assert result.exit_code == 1, result.output
    assert "first bad index: 13 (the leaf of entry 13 does not hash" in result.output
    assert "bad indexes (3): 13, 37, 62" in result.output
    assert not (tmp_path / "state.json").exists()  # nothing is remembered from a bad run


async def test_a_corrupt_leaf_whose_hash_was_recomputed_is_named_and_its_head_fails() -> None:
    log = a_log()
    not_json(log, 25)
    log.rows[25]["leaf_hash"] = merkle.leaf_hash(base64.b64decode(log.rows[25]["leaf"])).hex()
    report = await verify_ledger(log)
    assert report.first_bad_index == 25 and "not JSON" in (report.reason or "")
    assert report.bad_head == 30 and report.bad_indexes == [25]


async def test_the_state_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    state = VerifierState.load(tmp_path / "deep" / "state.json")
    report, notes = await verify_service(a_log(), state)
    assert report.ok and any("pinned" in n for n in notes)
    state.save()
    again = VerifierState.load(tmp_path / "deep" / "state.json")
    assert again.pinned_key(ORIGIN) == SIGNER.verifier_key
    assert [h.where.split(" (")[0] for h in again.known_heads(ORIGIN)] == [
        f"the state file {tmp_path / 'deep' / 'state.json'}"
    ]
    assert list((tmp_path / "deep").iterdir()) == [tmp_path / "deep" / "state.json"]


async def test_replay_names_a_damaged_entry_instead_of_failing_to_parse_it() -> None:
    log = a_log()
    not_json(log, 5)
    log.rows[5].update(event=None, error="the stored leaf is not a ledger leaf")
    with pytest.raises(SourceError, match=r"entry 5 cannot be read \(the stored leaf"):
        await incidents_as_of(log, T0 + timedelta(hours=1))


async def test_each_head_from_elsewhere_is_proven_consistent_with_the_latest_one() -> None:
    log = a_log()
    assert log.tree is not None
    after = sign_checkpoint(SIGNER, Checkpoint(ORIGIN, 62, log.tree.root(62)))
    served_30 = next(h["checkpoint"] for h in log.head_docs if h["tree_size"] == 30)
    plain = await verify_ledger(log)
    report = await verify_ledger(
        log, known_heads=[KnownHead(served_30, "a file"), KnownHead(after, "the topic", True)]
    )
    assert report.ok, report.reason
    assert report.heads_checked == plain.heads_checked + 1  # 30 is one of the served heads
    # 60 to 62 twice: the source's proof, and one built from the recomputed leaves
    assert report.proofs_checked == plain.proofs_checked + 2
    assert report.verified_head is not None and report.verified_head["tree_size"] == 62
