"""1,000 malformed records on incident.inbound: every one is dead-lettered, intake carries on.

Intake runs in-process on the session's broker and PostgreSQL (as in test_intake.py).
Another system floods `incident.inbound` with bad records of every kind the issue
names (bad JSON, binary garbage, a CloudEvent of the wrong type, unsigned, missing fields, an
unknown category, a non-UUID id, a 4 MB value, empty values, null keys, duplicate
headers, and a few nastier ones), then publishes one valid report. Exactly 1,000
`incident.input.rejected.v1` records must land on `incident.deadletter`, one per bad
record, each with a reason, the original's digest (never its bytes: it may be a report
in clear) and the source offset; `/readyz` must still answer 200 and the valid report
must become an incident.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI

from services.domain.events import InputRejected, ReportSubmitted, make_event, parse_event
from services.domain.inbound import incident_id_for
from services.infra.kafka import MAX_MESSAGE_BYTES
from services.infra.settings import CommonSettings, IntakeSettings
from services.intake.app import create_app
from tests import inbound_client as sender
from tests.helpers import eventually, serving

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

FLOOD = 1000
HUGE = 4 * 1024 * 1024
STRUCTURED = (("content-type", b"application/cloudevents+json"),)


@dataclass(frozen=True)
class Bad:
    """One malformed record, and a word its dead-letter reason must contain ("" = any)."""

    kind: str
    value: bytes | None
    reason: str
    key: bytes | None = b"hris"
    headers: tuple[tuple[str, bytes], ...] = STRUCTURED


def event(**data: Any) -> dict[str, Any]:
    """An inbound report CloudEvent as a dict, its data overridden by `data` (unchecked)."""
    return sender.event(**data)


def signed(value: dict[str, Any]) -> bytes:
    """As the registered system hris sends it: signed, so it is refused for what it says."""
    return sender.canonical(sender.sign(value))


def acknowledged() -> dict[str, Any]:
    """A valid CloudEvent of a type inbound does not accept."""
    return _event("incident.acknowledged.v1", {"principal": "p-chen", "level": 1})


def _event(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return make_event(
        type_, subject="hris-case", data=data, source="/systems/hris", time=datetime.now(UTC)
    ).to_dict()


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def without(mapping: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in names}


def kinds(n: int) -> list[Bad]:
    """The n-th record of each kind (values differ from one n to the next)."""
    ev = event()
    return [
        Bad("bad-json", f'{{"specversion": "1.0", "id": {n},'.encode(), "not JSON"),
        Bad("bad-json-quotes", b"{'id': '%d'}" % n, "not JSON"),
        Bad("binary", b"\xff\xfe\x00" + os.urandom(64 + n % 200), "not JSON"),
        Bad("invalid-utf8-in-json", b'{"id": "\xc3\x28%d"}' % n, "not JSON"),
        Bad(
            "wrong-type",
            signed(acknowledged()),
            "accepts only incident.report.inbound.v1",
        ),
        Bad("unsigned", dumps(ev), "not authenticated: unsigned"),
        Bad("missing-source", signed(without(ev, "source")), "not a valid CloudEvent"),
        Bad("missing-data", signed(without(ev, "data")), "not a valid CloudEvent"),
        Bad(
            "missing-summary",
            signed({**ev, "data": without(ev["data"], "summary")}),
            "invalid report",
        ),
        Bad(
            "missing-category",
            signed({**ev, "data": without(ev["data"], "category")}),
            "invalid report",
        ),
        Bad("unknown-category", signed(event(category=f"gossip-{n}")), "unknown category"),
        Bad("non-uuid-id", signed({**ev, "id": f"hris-{n}"}), "not a valid CloudEvent"),
        Bad("bad-specversion", signed({**ev, "specversion": "0.3"}), "not a valid CloudEvent"),
        Bad("bad-time", signed({**ev, "time": "yesterday"}), "not a valid CloudEvent"),
        Bad("data-not-object", signed({**ev, "data": [1, 2]}), "not a valid CloudEvent"),
        Bad("reporter-not-a-string", signed(event(reporter=n)), "invalid report: reporter"),
        Bad("summary-too-long", signed(event(summary="s" * 501)), "invalid report"),
        Bad("no-content-type", signed(ev), "content-type must be", headers=()),
        Bad("json-array", dumps([ev]), "JSON object"),
        Bad("json-null", b"null", "JSON object"),
        Bad("json-number", str(n).encode(), "JSON object"),
        Bad("empty-value", b"", "not JSON"),
        Bad("null-value", None, "not JSON"),
        Bad("null-key", b"<not json %d>" % n, "not JSON", key=None),
        Bad(
            "duplicate-headers",
            dumps(acknowledged()),
            "is repeated",
            headers=(
                ("content-type", b"application/cloudevents+json"),
                ("content-type", b"text/plain"),
                ("ce_type", b"incident.report.submitted.v1"),
                ("ce_type", b"incident.report.submitted.v1"),
                ("traceparent", b"garbage"),
            ),
        ),
        # The nastier ones: the JSON decoder raises something other than a decode error,
        # or the text cannot be stored as UTF-8. Only "some reason" is required here.
        Bad("deeply-nested", b"[" * 100_000, ""),
        Bad("huge-integer", b'{"id": 1' + b"0" * 5000 + b"}", ""),
        Bad("lone-surrogate", dumps(event(summary="\ud800 oops")), ""),
    ]


def flood() -> list[Bad]:
    """FLOOD bad records: two 4 MB ones, the rest cycling through every kind."""
    huge = [
        Bad("huge-garbage", b"x" * HUGE, "more than"),
        Bad("huge-description", signed(event(description="d" * HUGE)), "more than"),
    ]
    records = list(huge)
    n = 0
    while len(records) < FLOOD:
        records.extend(kinds(n))
        n += 1
    # keys from a few source systems, so the records spread over the partitions
    return [
        dataclasses.replace(b, key=b"hris-%d" % (i % 5)) if b.key is not None else b
        for i, b in enumerate(records[:FLOOD])
    ]


@pytest.fixture
async def intake(
    settings: CommonSettings,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, IntakeSettings]]:
    intake_settings = IntakeSettings(**settings.model_dump())
    app = create_app(intake_settings)
    async with serving(app, "http://intake") as client:
        yield app, client, intake_settings


@pytest.fixture
async def big_producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """Another system's producer, allowed to send the 4 MB record."""
    p = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
        max_request_size=MAX_MESSAGE_BYTES,
        linger_ms=5,
    )
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
def quiet_dead_letter_warnings() -> Iterator[None]:
    """1,000 expected warnings would only slow the run; errors still show."""
    loggers = [logging.getLogger(n) for n in ("services.infra.runtime", "services.infra.kafka")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


async def read_all(bootstrap: str, topic: str, want: int, timeout: float) -> list[Any]:
    """Every record of `topic` from the start: until `want` arrived, then until it is quiet
    for a second (so that extra records would be seen too). Big records allowed."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=2 * MAX_MESSAGE_BYTES,
        fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
    )
    await consumer.start()
    got: list[Any] = []
    now = asyncio.get_running_loop().time
    try:
        deadline = now() + timeout
        quiet_since = now()
        while now() < deadline and (len(got) < want or now() - quiet_since < 1.0):
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                if records:
                    got.extend(records)
                    quiet_since = now()
    finally:
        await consumer.stop()
    return got


async def fetch(settings: CommonSettings, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_a_flood_of_malformed_inbound_records_is_dead_lettered_and_intake_carries_on(
    intake: tuple[FastAPI, httpx.AsyncClient, IntakeSettings],
    big_producer: AIOKafkaProducer,
    quiet_dead_letter_warnings: None,
) -> None:
    app, client, settings = intake
    inbound, deadletter = settings.topic("incident.inbound"), settings.topic("incident.deadletter")
    bad = flood()
    assert len(bad) == FLOOD
    assert (await client.get("/readyz")).status_code == 200
    clock = Timer()

    # 1. the flood, then one valid report
    futures = [
        await big_producer.send(inbound, b.value, key=b.key, headers=list(b.headers)) for b in bad
    ]
    sent = {}
    for b, future in zip(bad, futures, strict=True):
        meta = await future
        sent[(meta.partition, meta.offset)] = b
    valid_id = str(uuid.uuid4())
    valid = event(summary="Sent after the flood")
    valid["id"] = valid_id
    valid_meta = await big_producer.send_and_wait(
        inbound, signed(valid), key=b"hris", headers=list(STRUCTURED)
    )
    clock.mark("produced 1,001 records")

    # 2. the valid report became an incident
    incident_id = incident_id_for("hris", valid_id)
    rows = await eventually(
        lambda: fetch(
            settings, "SELECT type, body FROM intake.events WHERE stream_id = $1", incident_id
        ),
        timeout=50,
    )
    clock.mark("valid report stored as an incident")
    [row] = rows
    envelope, data = parse_event(bytes(row["body"]))
    assert envelope.type == "incident.report.submitted.v1" and isinstance(data, ReportSubmitted)
    # the plaintext other systems publish is sealed before intake stores it
    assert envelope.causationid == valid_id and "Sent after" not in bytes(row["body"]).decode()
    async with app.state.runtime.db.acquire() as conn:
        key = await app.state.keys.get(conn, incident_id)
    assert key.open("summary", data.summary) == "Sent after the flood"
    assert (valid_meta.partition, valid_meta.offset) not in sent

    # 3. exactly one dead letter per bad record, each with reason, bytes and offset
    await eventually(lambda: relay_caught_up(settings), timeout=20)
    records = await read_all(settings.kafka_bootstrap, deadletter, FLOOD, timeout=50)
    clock.mark(f"read {len(records)} dead letters")
    assert len({(r.partition, r.offset) for r in records}) == len(records) == FLOOD
    seen: dict[tuple[int, int], str] = {}
    for record in records:
        envelope, rejected = parse_event(record.value)
        assert envelope.type == "incident.input.rejected.v1"
        assert isinstance(rejected, InputRejected)
        assert rejected.source_topic == inbound
        assert rejected.source_partition is not None and rejected.source_offset is not None
        where = (rejected.source_partition, rejected.source_offset)
        assert where in sent, f"a dead letter for {where}, which was not a bad record"
        assert where not in seen, f"two dead letters for {where}"
        expected = sent[where]
        digest = hashlib.sha256(expected.value or b"").hexdigest()
        assert rejected.original_b64 == "" and f"sha256:{digest}" in rejected.reason
        assert rejected.reason.strip(), f"{expected.kind}: empty reason"
        assert expected.reason in rejected.reason, f"{expected.kind}: {rejected.reason[:300]}"
        seen[where] = rejected.reason
    assert seen.keys() == sent.keys()
    assert len({p for p, _ in seen}) > 1  # the flood came over several partitions
    [queued] = await fetch(
        settings, "SELECT count(*) FROM intake.outbox WHERE topic = $1", deadletter
    )
    assert queued["count"] == FLOOD

    # 4. still healthy: ready, the consumer loop alive, nothing else stored
    answer = await client.get("/readyz")
    assert answer.status_code == 200, answer.text
    [stats] = [c.stats for c in app.state.runtime.consumers if c.group.endswith("intake-inbound")]
    assert stats.connected
    stored = await fetch(
        settings, "SELECT stream_id FROM intake.events WHERE stream_id NOT LIKE 'directory%'"
    )
    assert [r["stream_id"] for r in stored] == [incident_id]
    clock.mark("checked")
    via_poison = Counter(sent[w].kind for w, r in seen.items() if r.startswith("handler failed"))
    clock.report(poisoned=stats.poisoned, retries=stats.retries, via_poison=dict(via_poison))
    # no wall-clock bound: the phases' times are printed (issue 23: none in tests)


async def relay_caught_up(settings: CommonSettings) -> bool:
    [row] = await fetch(
        settings,
        "SELECT (SELECT published FROM intake.relay_state WHERE name = 'kafka') AS published,"
        " (SELECT coalesce(max(position), 0) FROM intake.outbox) AS last",
    )
    return row["published"] is not None and row["published"] >= row["last"]


class Timer:
    """Marks the phases of the run, printed with -s (and kept in the test's log)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def mark(self, what: str) -> None:
        self.marks.append((what, time.monotonic() - self.start))

    def total(self) -> float:
        return time.monotonic() - self.start

    def report(self, **extra: Any) -> None:
        lines = [f"  {at:6.2f}s  {what}" for what, at in self.marks]
        text = "inbound flood timings:\n" + "\n".join(lines) + f"\n  {extra}"
        print(text)
        log.info("%s", text)
