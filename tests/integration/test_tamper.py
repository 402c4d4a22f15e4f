"""Invariant 5: a superuser who edits the ledger behind the audit service's back is caught.

Each test runs a real audit service in-process (its own database, broker topics and
signing key), feeds it 40 events through Kafka, and waits until a signed head covers
them and the service has gone quiet. Then, as the database superuser, it switches off
the append-only triggers, forges the ledger the way a careful forger would (renumbering
rows so the indexes stay contiguous, recomputing hashes where that helps), switches the
triggers back on, and runs `incidents audit verify`'s code against the service's HTTP
API: the verifier must name the first bad index.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from services.audit.app import create_app
from services.audit.merkle import leaf_hash
from services.audit.trust import VerifierState, topic_heads, verify_service
from services.audit.verify import (
    HttpSource,
    VerifyReport,
    export_bundle,
    verify_bundle,
    verify_ledger,
)
from services.cli import app as cli
from services.domain.envelope import CLOUDEVENTS_CONTENT_TYPE, canonical_json
from services.domain.events import PeopleImported, Topic, make_event
from services.domain.incident import report_digest
from services.infra.settings import AuditSettings, CommonSettings
from tests.helpers import eventually, serving, signed

pytestmark = pytest.mark.integration
TOKEN = "dev-auditor-token"
EVENTS = 40
CHECKPOINT = "audit.checkpoint.signed.v1"
SHIFT = 1_000_000  # renumbering goes through indexes far above the ledger's


@dataclass
class Audit:
    app: FastAPI
    client: httpx.AsyncClient
    settings: AuditSettings

    def source(self) -> HttpSource:
        return HttpSource("http://audit", TOKEN, client=self.client)


@pytest.fixture
async def audit(settings: CommonSettings, tmp_path: Path) -> AsyncIterator[Audit]:
    audit_settings = AuditSettings(
        **settings.model_dump(), signing_key_file=tmp_path / "key.pem", checkpoint_interval=0.2
    )
    app = create_app(audit_settings)
    # A forged leaf may make the service fail: answer 500 like a server would.
    async with serving(app, "http://audit", raise_app_exceptions=False) as client:
        yield Audit(app, client, audit_settings)


@dataclass
class Ledger:
    """The ledger once the service went quiet: its rows and its signed heads."""

    rows: list[asyncpg.Record]
    heads: list[dict[str, Any]]

    @property
    def head_sizes(self) -> list[int]:
        return [h["tree_size"] for h in self.heads]

    def middle_event(self) -> int:
        """An event's index in the middle, under a head, with no head right after it.

        (An entry inserted at k is seen at k + 1; a head of size k + 1 would see it
        first, and report a range instead of the index.)
        """
        last = self.head_sizes[-1]
        candidates = [
            r["idx"]
            for r in self.rows
            if r["event_type"] != CHECKPOINT
            and 0 < r["idx"] < last - 1
            and r["idx"] + 1 not in self.head_sizes
        ]
        return int(candidates[len(candidates) // 2])


def an_event(n: int) -> bytes:
    incident = f"inc-{n % 4}"
    if n % 2:
        kind, data = "incident.viewed.v1", {"principal": "p-chen", "report_digest": DIGEST}
    else:
        kind, data = "incident.acknowledged.v1", {"principal": "p-chen", "level": 1}
    event = make_event(kind, subject=incident, data=data, source="/tests", time=datetime.now(UTC))
    return signed(event, "intake")


DIGEST = report_digest({"category": "harassment", "summary": "s", "description": "d"})


async def fed(audit: Audit, producer: AIOKafkaProducer) -> Ledger:
    """Feed 40 events in four bursts, each under its own signed head, and wait until quiet."""
    topic = audit.settings.topic("incident.activity")
    headers = [("content-type", CLOUDEVENTS_CONTENT_TYPE.encode())]
    ids: set[str] = set()
    for burst in range(4):
        for n in range(burst * 10, burst * 10 + 10):
            value = an_event(n)
            ids.add(json.loads(value)["id"])
            await producer.send_and_wait(topic, value, key=f"inc-{n % 4}".encode(), headers=headers)
        await eventually(lambda: _signed(audit, ids))
    ledger: Ledger = await eventually(lambda: _quiet(audit))
    # No more heads from here on: one signed in the middle of a forgery would only
    # muddy the picture (and the service is idle anyway).
    heads = audit.app.state.heads
    heads.settings = heads.settings.model_copy(
        update={"checkpoint_every": 10**9, "checkpoint_interval": 1e9}
    )
    return ledger


async def _rows(audit: Audit) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(audit.settings.database_url)
    try:
        return await conn.fetch("SELECT * FROM audit.ledger ORDER BY idx")
    finally:
        await conn.close()


async def _signed(audit: Audit, ids: set[str]) -> bool:
    """Whether every event of `ids` is recorded and under a signed head."""
    where = {str(r["event_id"]): r["idx"] for r in await _rows(audit)}
    if not ids <= where.keys():
        return False
    head = await audit.client.get("/v1/ledger/head")
    return head.status_code == 200 and head.json()["tree_size"] > max(where[i] for i in ids)


async def _quiet(audit: Audit) -> Ledger | None:
    """The ledger if a head covers every event and that head's own event is recorded."""
    heads = (await audit.client.get("/v1/ledger/heads")).json()["heads"]
    rows = await _rows(audit)
    if not heads:
        return None
    last = heads[-1]["tree_size"]
    if any(r["event_type"] != CHECKPOINT for r in rows[last:]):
        return None
    signed = [json.loads(r["leaf"])["event"]["data"] for r in rows if r["event_type"] == CHECKPOINT]
    if not any(data["tree_size"] == last for data in signed):
        return None
    return Ledger(rows, heads)


@contextlib.asynccontextmanager
async def behind_its_back(audit: Audit) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection with the append-only triggers off, in one transaction."""
    conn = await asyncpg.connect(audit.settings.database_url)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit.ledger DISABLE TRIGGER ledger_no_update")
            await conn.execute("ALTER TABLE audit.ledger DISABLE TRIGGER ledger_no_truncate")
            yield conn
            await conn.execute("ALTER TABLE audit.ledger ENABLE TRIGGER ledger_no_update")
            await conn.execute("ALTER TABLE audit.ledger ENABLE TRIGGER ledger_no_truncate")
    finally:
        await conn.close()


Forgery = Callable[[asyncpg.Connection, Ledger, int], Awaitable[None]]


async def rehashed(conn: asyncpg.Connection, k: int, leaf: bytes) -> None:
    """Entry `k` gets `leaf`, with its leaf hash recomputed."""
    await conn.execute(
        "UPDATE audit.ledger SET leaf = $1, leaf_hash = $2 WHERE idx = $3", leaf, leaf_hash(leaf), k
    )


def edit_one_byte(leaf: bytes) -> bytes:
    """One byte of the principal's name changed: still canonical JSON, another fact."""
    at = leaf.index(b'"principal":"') + len(b'"principal":"')
    return leaf[:at] + bytes([leaf[at] ^ 0x01]) + leaf[at + 1 :]


async def verify(audit: Audit) -> VerifyReport:
    return await verify_ledger(audit.source())


# ---------------------------------------------------------------------- intact


async def test_an_untouched_ledger_verifies(audit: Audit, producer: AIOKafkaProducer) -> None:
    ledger = await fed(audit, producer)
    report = await verify(audit)
    assert report.ok, report.reason
    assert report.entries_checked == len(ledger.rows)
    assert report.heads_checked == len(ledger.heads) >= 4
    assert report.proofs_checked == len(ledger.heads) - 1
    assert report.tree_size == ledger.head_sizes[-1]


# ------------------------------------------------------------------ forgeries
# Each forgery works on entry k, an event in the middle of the signed ledger.


async def edit_one_byte_leaving_the_hash(conn: asyncpg.Connection, ledger: Ledger, k: int) -> None:
    leaf = edit_one_byte(bytes(ledger.rows[k]["leaf"]))
    await conn.execute("UPDATE audit.ledger SET leaf = $1 WHERE idx = $2", leaf, k)


async def delete_and_renumber(conn: asyncpg.Connection, ledger: Ledger, k: int) -> None:
    await conn.execute("DELETE FROM audit.ledger WHERE idx = $1", k)
    await conn.execute("UPDATE audit.ledger SET idx = idx + $1 WHERE idx > $2", SHIFT, k)
    await conn.execute("UPDATE audit.ledger SET idx = idx - $1 - 1 WHERE idx >= $1", SHIFT)


async def insert_like(
    conn: asyncpg.Connection, k: int, original: asyncpg.Record, body: dict[str, Any]
) -> None:
    """A row at `k` holding the leaf `body` (hashed properly), its columns those of
    `original` but the event id."""
    forged = canonical_json(body)
    await conn.execute(
        'INSERT INTO audit.ledger (idx, recorded_at, topic, partition, "offset", record_key,'
        " event_id, incident_id, event_type, trace_id, valid, leaf, leaf_hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, true, $10, $11)",
        k,
        original["recorded_at"],
        original["topic"],
        original["partition"],
        original["offset"],
        f"forged:{body['event']['id']}",
        body["event"]["id"],
        original["incident_id"],
        original["event_type"],
        forged,
        leaf_hash(forged),
    )


async def insert_and_renumber(conn: asyncpg.Connection, ledger: Ledger, k: int) -> None:
    """A forged event claiming index k and entry k's recording time, hashed properly."""
    original = ledger.rows[k]
    body = json.loads(bytes(original["leaf"]))
    body["event"]["id"] = str(uuid.uuid4())
    body["event"]["data"]["principal"] = "p-forged"
    await conn.execute("UPDATE audit.ledger SET idx = idx + $1 WHERE idx >= $2", SHIFT, k)
    await conn.execute("UPDATE audit.ledger SET idx = idx - $1 + 1 WHERE idx >= $1", SHIFT)
    await insert_like(conn, k, original, body)


async def swap_with_a_later_entry(conn: asyncpg.Connection, ledger: Ledger, k: int) -> None:
    await conn.execute(
        "UPDATE audit.ledger a SET leaf = b.leaf, leaf_hash = b.leaf_hash,"
        " recorded_at = b.recorded_at, topic = b.topic, partition = b.partition,"
        ' "offset" = b."offset" FROM audit.ledger b'
        " WHERE (a.idx = $1 AND b.idx = $2) OR (a.idx = $2 AND b.idx = $1)",
        k,
        k + 5,
    )


async def break_the_json(conn: asyncpg.Connection, ledger: Ledger, k: int) -> None:
    """A leaf that is no JSON any more (the service serves it as stored, with an error)."""
    leaf = b"\xff" + bytes(ledger.rows[k]["leaf"])[1:]
    await conn.execute("UPDATE audit.ledger SET leaf = $1 WHERE idx = $2", leaf, k)


# The columns the reads select and date an entry by, changed and the leaf left alone:
# the hashes still match, the leaf's own fields do not (services/audit/indexed.py).


async def retype_the_column(conn: asyncpg.Connection, ledger: Ledger, k: int) -> None:
    """Out of every incident read (they take `incident.%` types only)."""
    await conn.execute(
        "UPDATE audit.ledger SET event_type = 'directory.person.upserted.v1' WHERE idx = $1", k
    )


async def invalidate_the_column(conn: asyncpg.Connection, ledger: Ledger, k: int) -> None:
    """Taken for rejected input, which no read folds."""
    await conn.execute("UPDATE audit.ledger SET valid = false WHERE idx = $1", k)


async def backdate_the_column(conn: asyncpg.Connection, ledger: Ledger, k: int) -> None:
    """The knowledge answer dates a principal's first knowledge by this column."""
    await conn.execute(
        "UPDATE audit.ledger SET recorded_at = recorded_at - interval '1 day' WHERE idx = $1", k
    )


async def repoint_the_event_id(conn: asyncpg.Connection, ledger: Ledger, k: int) -> None:
    """A receipt's proof finds the reporter's submission by this column."""
    await conn.execute("UPDATE audit.ledger SET event_id = gen_random_uuid() WHERE idx = $1", k)


@pytest.mark.parametrize(
    "forge",
    [
        edit_one_byte_leaving_the_hash,
        delete_and_renumber,
        insert_and_renumber,
        swap_with_a_later_entry,
        break_the_json,
        retype_the_column,
        invalidate_the_column,
        backdate_the_column,
        repoint_the_event_id,
    ],
    ids=lambda forge: forge.__name__,
)
async def test_a_forged_entry_is_found_at_its_exact_index(
    audit: Audit, producer: AIOKafkaProducer, forge: Forgery
) -> None:
    ledger = await fed(audit, producer)
    k = ledger.middle_event()
    async with behind_its_back(audit) as conn:
        await forge(conn, ledger, k)
    report = await verify(audit)
    assert not report.ok
    assert report.first_bad_index == k, report.reason


async def _timeline(audit: Audit, incident: str) -> list[int]:
    auth = {"authorization": f"Bearer {TOKEN}"}
    answer = await audit.client.get(f"/v1/incidents/{incident}/timeline", headers=auth)
    assert answer.status_code == 200
    return [e["index"] for e in answer.json()["events"]]


@pytest.mark.parametrize("moved_to", ["inc-elsewhere", None], ids=["another-id", "null"])
async def test_an_entry_moved_out_of_its_incident_is_found_at_its_index(
    audit: Audit, producer: AIOKafkaProducer, moved_to: str | None
) -> None:
    """The timeline, knowledge, state and conflict checks find an incident's entries by
    the `incident_id` column: pointed elsewhere (or nowhere) by a superuser, an entry
    leaves its incident's views (who was told, who looked) while every hash still
    matches. verify compares the column, as served, with the leaf's subject."""
    ledger = await fed(audit, producer)
    k = ledger.middle_event()
    incident = ledger.rows[k]["incident_id"]
    assert k in await _timeline(audit, incident)
    async with behind_its_back(audit) as conn:
        await conn.execute("UPDATE audit.ledger SET incident_id = $1 WHERE idx = $2", moved_to, k)
    assert k not in await _timeline(audit, incident)  # what the forgery hides
    report = await verify(audit)
    assert not report.ok
    assert report.first_bad_index == k and report.bad_indexes == [k], report.reason
    assert (
        f"entry {k}'s incident_id column says {moved_to!r}, its leaf says {incident!r}"
        ": the index was changed behind the ledger"
    ) == report.reason


async def _chunk_at(audit: Audit) -> int | None:
    """The index of the bulk import's chunk, once the database indexed its people."""
    conn = await asyncpg.connect(audit.settings.database_url)
    try:
        found = await conn.fetchval("SELECT max(idx) FROM audit.ledger_people")
        return None if found is None else int(found)
    finally:
        await conn.close()


async def test_a_forged_or_removed_person_in_the_people_index_is_found_at_its_entry(
    audit: Audit, producer: AIOKafkaProducer
) -> None:
    """`ledger_people` (person -> bulk import chunk, with the record a lookup reads:
    roles, manager) decides who is an auditor and whose manager a person is. Verify
    proves it against the chunks' leaves: a changed record, a person taken out and a
    person added where no leaf carries them are each named at their entry."""
    ledger = await fed(audit, producer)
    people = [
        {"person_id": "p-top", "name": "Top", "roles": ["hr_head"]},
        {"person_id": "p-mid", "name": "Mid", "manager_id": "p-top"},
        {"person_id": "p-low", "name": "Low\u00e9", "manager_id": "p-mid"},
    ]
    chunk = make_event(
        PeopleImported.TYPE,
        subject="directory-import:1",
        data={"people": people},
        source="/services/intake",
        time=datetime.now(UTC),
    )
    topic = audit.settings.topic("directory.changes")
    await producer.send_and_wait(topic, signed(chunk, "intake"), key=b"directory")
    at = await eventually(lambda: _chunk_at(audit))
    intact = await verify(audit)
    assert intact.ok, intact.reason
    k = ledger.middle_event()
    async with behind_its_back(audit) as conn:
        await conn.execute("ALTER TABLE audit.ledger_people DISABLE TRIGGER USER")
        await conn.execute(
            "UPDATE audit.ledger_people SET record = record - 'manager_id'"
            " WHERE person_id = 'p-mid'"
        )
        await conn.execute("DELETE FROM audit.ledger_people WHERE person_id = 'p-low'")
        await conn.execute(
            "INSERT INTO audit.ledger_people (person_id, idx, record) VALUES ('p-chen', $1, $2)",
            k,
            json.dumps({"person_id": "p-chen", "roles": ["auditor"]}),
        )
        await conn.execute("ALTER TABLE audit.ledger_people ENABLE TRIGGER USER")
    report = await verify(audit)
    assert not report.ok
    assert report.first_bad_index == k and report.bad_indexes == [k, at], report.reason
    assert report.problems == [
        f"entry {k}'s people index lists p-chen, whom its leaf does not carry"
        ": the index was changed behind the ledger",
        f"entry {at}'s people index leaves out p-low, whom its leaf carries; entry {at}'s"
        " people index keeps for p-mid a record its leaf does not hold"
        ": the index was changed behind the ledger",
    ]


async def test_rows_stored_past_a_gap_are_found_at_their_index(
    audit: Audit, producer: AIOKafkaProducer
) -> None:
    """The walk reads from index 0 until a range holds no entry; reads by incident or
    person take rows at any index. An event added to an incident far past the ledger's
    end, and a person indexed where no entry is, are named by what the service says
    lies beyond the walk's last, empty range."""
    ledger = await fed(audit, producer)
    k = ledger.middle_event()
    original = ledger.rows[k]
    far = len(ledger.rows) + 5000
    body = json.loads(bytes(original["leaf"]))
    body["event"]["id"] = str(uuid.uuid4())
    body["index"] = far
    async with behind_its_back(audit) as conn:
        await insert_like(conn, far, original, body)
        await conn.execute("ALTER TABLE audit.ledger_people DISABLE TRIGGER USER")
        await conn.execute(
            "INSERT INTO audit.ledger_people (person_id, idx, record) VALUES ('p-chen', -1, $1)",
            json.dumps({"person_id": "p-chen", "roles": ["auditor"]}),
        )
        await conn.execute("ALTER TABLE audit.ledger_people ENABLE TRIGGER USER")
    assert far in await _timeline(audit, original["incident_id"])  # what it adds
    report = await verify(audit)
    assert not report.ok
    assert report.bad_indexes == [-1, far], report.reason
    walked = report.entries_checked  # the reads above may have added entries
    assert sorted(report.problems) == [
        f"the ledger holds an entry at index {far}, past the end of its entries ({walked};"
        f" none from {-(-walked // 1000) * 1000}): a row was added behind the ledger,"
        " beyond a gap",
        "the people index lists 'p-chen' at index -1, where the ledger holds no entry: the"
        " index was changed behind the ledger",
    ]


async def test_a_changed_byte_with_its_hash_recomputed_is_caught_by_the_signed_root(
    audit: Audit, producer: AIOKafkaProducer
) -> None:
    ledger = await fed(audit, producer)
    k = ledger.middle_event()
    forged = edit_one_byte(bytes(ledger.rows[k]["leaf"]))
    async with behind_its_back(audit) as conn:
        await rehashed(conn, k, forged)
    report = await verify(audit)
    assert not report.ok
    head = min(size for size in ledger.head_sizes if size > k)
    assert report.bad_head == head, report.reason
    assert report.bad_range is not None
    low, high = report.bad_range
    assert low <= k < high == head
    assert f"signed head of size {head}" in (report.reason or "")


async def test_a_truncated_tail_is_found_by_a_head_larger_than_the_ledger(
    audit: Audit, producer: AIOKafkaProducer
) -> None:
    ledger = await fed(audit, producer)
    remaining = len(ledger.rows) - 5
    async with behind_its_back(audit) as conn:
        await conn.execute("DELETE FROM audit.ledger WHERE idx >= $1", remaining)
    report = await verify(audit)
    assert not report.ok
    assert report.first_bad_index == remaining, report.reason
    assert report.bad_head == ledger.head_sizes[-1] > remaining
    assert "cut off" in (report.reason or "")


# -------------------------------------------------------------------- bundles


async def test_an_incidents_bundle_verifies_offline_and_fails_when_altered(
    audit: Audit, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    ledger = await fed(audit, producer)
    bundle = await export_bundle(audit.source(), "inc-1")
    indexes = [e["index"] for e in bundle["entries"]]
    assert indexes == [r["idx"] for r in ledger.rows if r["incident_id"] == "inc-1"]
    assert len(indexes) == EVENTS // 4
    assert bundle["head"]["tree_size"] == ledger.head_sizes[-1]
    assert verify_bundle(bundle).ok

    runner = CliRunner()
    path = tmp_path / "inc-1.json"
    path.write_text(json.dumps(bundle))
    intact = runner.invoke(cli, ["audit", "verify", "--bundle", str(path)])
    assert intact.exit_code == 0, intact.output

    text = path.read_text()
    leaf = bundle["entries"][4]["leaf"]
    edited = base64.b64encode(edit_one_byte(base64.b64decode(leaf))).decode()
    path.write_text(text.replace(leaf, edited))
    one_byte = runner.invoke(cli, ["audit", "verify", "--bundle", str(path)])
    assert one_byte.exit_code == 1
    assert f"first bad index: {indexes[4]} (" in one_byte.output

    altered = json.loads(text)
    note = altered["head"]["checkpoint"]
    signature = note.rstrip("\n").rsplit(" ", 1)[1]
    forged = signature[:-8] + ("AAAA" if signature[-8:-4] != "AAAA" else "BBBB") + signature[-4:]
    altered["head"]["checkpoint"] = note.replace(signature, forged)
    path.write_text(json.dumps(altered))
    resigned = runner.invoke(cli, ["audit", "verify", "--bundle", str(path)])
    assert resigned.exit_code == 1
    assert "does not verify" in resigned.output


# ------------------------------------------------ heads published, then cut away


async def cut_back(audit: Audit, cut: int) -> None:
    """As superuser, triggers off: drop the ledger from `cut` on together with the stored
    subtrees and the signed heads above it, and rewind the counter so audit appends at
    `cut` again (the issue's cut of 799-2005 and the 66 heads after 798)."""
    tables = ("ledger", "ledger_nodes", "ledger_heads")
    conn = await asyncpg.connect(audit.settings.database_url)
    try:
        async with conn.transaction():
            # the counter first, as audit's appends lock it first (else they deadlock)
            await conn.execute("SELECT last FROM audit.counters WHERE name = 'ledger' FOR UPDATE")
            for table in tables:
                await conn.execute(f"ALTER TABLE audit.{table} DISABLE TRIGGER USER")
            await conn.execute("DELETE FROM audit.ledger WHERE idx >= $1", cut)
            await conn.execute(
                "DELETE FROM audit.ledger_nodes WHERE (idx + 1) * (2::bigint ^ level) > $1", cut
            )
            await conn.execute("DELETE FROM audit.ledger_heads WHERE tree_size > $1", cut)
            await conn.execute("UPDATE audit.counters SET last = $1 WHERE name = 'ledger'", cut - 1)
            for table in tables:
                await conn.execute(f"ALTER TABLE audit.{table} ENABLE TRIGGER USER")
    finally:
        await conn.close()


async def test_a_tail_cut_with_its_heads_and_signed_again_is_caught_from_state_and_topic(
    audit: Audit, producer: AIOKafkaProducer, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ledger = await fed(audit, producer)
    state = VerifierState.load(tmp_path / "state.json")
    report, _notes = await verify_service(audit.source(), state)
    assert report.ok, report.reason
    state.save()
    largest = ledger.head_sizes[-1]

    cut = ledger.head_sizes[-2]  # its head stays; every later one goes with the entries
    await cut_back(audit, cut)
    for n in range(2):  # audit carries on and signs a new, smaller tree
        await producer.send_and_wait(audit.settings.topic("incident.activity"), an_event(n))
    await eventually(lambda: _has(audit, cut + 2))
    heads = audit.app.state.heads
    # The process that signed the largest head refuses the smaller tree: its key signs
    # no fork (it remembers the head it signed, whatever the table of heads says now).
    refused = REGISTRY.get_sample_value("incidents_ledger_heads_refused_total") or 0.0
    assert await heads.sign_if_due(force=True) is None
    assert REGISTRY.get_sample_value("incidents_ledger_heads_refused_total") == refused + 1
    heads.last_signed = None  # a restarted audit knows only the table's heads
    signed = await heads.sign_if_due(force=True)
    assert signed is not None and cut < signed.tree_size < largest

    served_only = await verify(audit)
    assert served_only.ok, "its own heads say nothing of the cut"

    state = VerifierState.load(tmp_path / "state.json")
    report, _notes = await verify_service(audit.source(), state)
    assert not report.ok and "cut off" in (report.reason or "")
    assert report.first_bad_index == report.entries_checked < largest
    assert [h["tree_size"] for h in report.conflict] == [largest, signed.tree_size]
    assert "the state file" in report.conflict[0]["where"]

    published, unfinished = await topic_heads(
        kafka_bootstrap, audit.settings.topic(Topic.CHECKPOINTS), within=10.0
    )
    assert unfinished is None
    report, _notes = await verify_service(
        audit.source(), VerifierState(tmp_path / "fresh.json"), heads=published
    )
    assert not report.ok and "cut off" in (report.reason or "")
    assert report.conflict[0]["tree_size"] == largest
    assert "audit.checkpoints topic" in report.conflict[0]["where"]


async def test_the_signer_refuses_a_tree_that_no_longer_extends_its_latest_head(
    audit: Audit, producer: AIOKafkaProducer
) -> None:
    """Someone with the database's rights rewrites an entry under the latest head and
    the stored node above it (so the tree is whole again, with another root): the next
    head would sign that fork. The signer checks the consistency of the new tree with
    the latest head's signed checkpoint first, refuses, and says so."""
    ledger = await fed(audit, producer)
    heads = audit.app.state.heads
    heads.last_signed = None  # only the table's latest head to go by
    last = ledger.head_sizes[-1]
    k = last - 1  # the last entry under it: its leaf is the node (0, k) itself
    forged = (
        edit_one_byte(bytes(ledger.rows[k]["leaf"]))
        if ledger.rows[k]["event_type"] != CHECKPOINT
        else None
    )
    if forged is None:  # a checkpoint's leaf has no principal: take the one before
        k -= 1
        forged = edit_one_byte(bytes(ledger.rows[k]["leaf"]))
    async with behind_its_back(audit) as conn:
        await rehashed(conn, k, forged)
        # every stored inner node above it, recomputed: the forged tree is consistent
        await conn.execute("ALTER TABLE audit.ledger_nodes DISABLE TRIGGER USER")
        nodes = await conn.fetch("SELECT level, idx FROM audit.ledger_nodes ORDER BY level")
        for level, index in nodes:
            if index == k >> level:
                left = await _node(conn, level - 1, 2 * index)
                right = await _node(conn, level - 1, 2 * index + 1)
                await conn.execute(
                    "UPDATE audit.ledger_nodes SET hash = $1 WHERE level = $2 AND idx = $3",
                    hashlib.sha256(b"\x01" + left + right).digest(),
                    level,
                    index,
                )
        await conn.execute("ALTER TABLE audit.ledger_nodes ENABLE TRIGGER USER")
    await _the_next_head_is_refused(audit, producer, ledger)
    after = (await audit.client.get("/v1/ledger/heads")).json()["heads"]
    assert [h["tree_size"] for h in after] == ledger.head_sizes


async def test_the_signer_refuses_to_sign_over_a_latest_head_whose_note_was_edited(
    audit: Audit, producer: AIOKafkaProducer
) -> None:
    """The latest head's note no longer carries the log key's valid signature (one
    character of it edited as superuser, the root column beside it free to say anything):
    the signer does not fall back to the columns, it refuses and says so (a restarted
    audit has nothing else to go by)."""
    ledger = await fed(audit, producer)
    heads = audit.app.state.heads
    heads.last_signed = None
    last = ledger.head_sizes[-1]
    async with behind_its_back(audit) as conn:
        note = await conn.fetchval(
            "SELECT checkpoint FROM audit.ledger_heads WHERE tree_size = $1", last
        )
        lines = note.split("\n")
        at = next(i for i, line in enumerate(lines) if line.startswith("\u2014 "))
        lines[at] = lines[at][:-3] + ("A" if lines[at][-3] != "A" else "B") + lines[at][-2:]
        await conn.execute("ALTER TABLE audit.ledger_heads DISABLE TRIGGER USER")
        await conn.execute(
            "UPDATE audit.ledger_heads SET checkpoint = $1 WHERE tree_size = $2",
            "\n".join(lines),
            last,
        )
        await conn.execute("ALTER TABLE audit.ledger_heads ENABLE TRIGGER USER")
    await _the_next_head_is_refused(audit, producer, ledger)


async def _the_next_head_is_refused(
    audit: Audit, producer: AIOKafkaProducer, ledger: Ledger
) -> None:
    """Two more events reach the ledger; the head signer then refuses to sign (and
    counts it) instead of signing the changed tree."""
    for n in range(2):
        await producer.send_and_wait(audit.settings.topic("incident.activity"), an_event(n))
    await eventually(lambda: _has(audit, len(ledger.rows) + 2))
    refused = REGISTRY.get_sample_value("incidents_ledger_heads_refused_total") or 0.0
    assert await audit.app.state.heads.sign_if_due(force=True) is None
    assert REGISTRY.get_sample_value("incidents_ledger_heads_refused_total") == refused + 1


async def _node(conn: asyncpg.Connection, level: int, index: int) -> bytes:
    if level == 0:
        return bytes(
            await conn.fetchval("SELECT leaf_hash FROM audit.ledger WHERE idx = $1", index)
        )
    return bytes(
        await conn.fetchval(
            "SELECT hash FROM audit.ledger_nodes WHERE level = $1 AND idx = $2", level, index
        )
    )


async def _has(audit: Audit, size: int) -> bool:
    return len(await _rows(audit)) >= size


async def test_leaves_corrupted_into_non_json_are_served_and_every_one_named(
    audit: Audit, producer: AIOKafkaProducer
) -> None:
    ledger = await fed(audit, producer)
    k = ledger.middle_event()
    bad = [k, k + 2]
    async with behind_its_back(audit) as conn:
        for index in bad:
            leaf = b"{" + bytes(ledger.rows[index]["leaf"])[2:]
            await conn.execute("UPDATE audit.ledger SET leaf = $1 WHERE idx = $2", leaf, index)
    auth = {"authorization": f"Bearer {TOKEN}"}
    answer = await audit.client.get(
        "/v1/ledger/entries", params={"start": k, "end": k + 3}, headers=auth
    )
    assert answer.status_code == 200
    served = answer.json()["entries"]
    assert [e["event"] is None for e in served] == [True, False, True]
    assert "error" in served[0] and "error" not in served[1]
    report = await verify(audit)
    assert not report.ok
    assert report.first_bad_index == k and report.bad_indexes == bad, report.reason
    huge = await audit.client.get(
        "/v1/ledger/entries", params={"start": 9223372036854775807}, headers=auth
    )
    too_far = await audit.client.get(
        "/v1/ledger/proofs/inclusion", params={"index": 0, "tree_size": 10**30}
    )
    assert (huge.status_code, too_far.status_code) == (422, 422)
