"""After a broker restart the stream processors (faust agents) must read every record again.

Tansu keeps everything in memory: a restart loses every topic, record, group and
offset, and the relays publish their outboxes again. Two things differ on the new
broker, and the short chaos run of #9 lost records to one of them:

- the **partition count**: the first client that asks for a topic (a relay's producer,
  a consumer refreshing its metadata) has it auto-created with Tansu's default of 4
  partitions, before `BrokerWatch` creates it with ours (3). A producer started later
  (a service restarted after the broker) writes to all 4. faust's consumer rejoins on
  stale metadata and Tansu keeps giving that member its first assignment, so without
  `GroupRejoin` partition 3 was never read: reports whose only notification comes from
  escalation (level 1 has nobody eligible) got none.
- the **offsets**: the old topic may have run ahead of what is published again (a relay
  killed mid-batch sends the batch twice), so new records get offsets below those an
  agent had read; faust drops records below its read offset unless it starts afresh.

The test sets both traps on purpose and checks every decision is handled exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.domain.events import MAX_PEOPLE_PER_EVENT
from tests.e2e.conftest import SERVICES, Stack, submit, timeline

pytestmark = pytest.mark.e2e

DIRECTORY = Path(__file__).resolve().parents[2] / "services" / "data" / "directory.yaml"
TRIAGE_TOPIC = "incident.triage"
ESCALATION_GROUP = "escalation"  # the faust app id of the escalation service
PARTITIONS = 3  # INCIDENTS_KAFKA_PARTITIONS, the default
AUTO_PARTITIONS = 4  # what Tansu gives a topic it auto-creates
COPIES = 30
"""Copies of one decision re-sent to each partition before the restart, as a relay
killed mid-batch re-sends: the old topic runs ahead of what will be published again."""

NOBODY_AT_LEVEL_1 = {
    "category": "security",
    "summary": "Badge misuse",
    "description": "both handlers of the unit are involved",
    "unit": "city-retail",
    "accused": ["p-chen"],
    "named": ["p-ma"],
}
"""Both HR case handlers of city-retail are excluded: triage notifies nobody, and the
first notification of the incident comes from escalation, which asks level 2 at once."""


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    """BrokerWatch looks every 3 s (2 s by default), so that the test's client surely asks
    for incident.triage first after the restart: the auto-creation the chaos run met by chance."""
    return {"INCIDENTS_BROKER_CHECK_INTERVAL": "3"}


async def _fetch(url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def _wait(probe: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


async def _read_triage(bootstrap: str, partitions: int) -> dict[int, list[Any]]:
    """Every record of incident.triage now, by partition (read until 1 s brings nothing)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(TRIAGE_TOPIC, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: dict[int, list[Any]] = {p: [] for p in range(partitions)}
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 1.0:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                found[tp.partition].extend(records)
                idle_since = time.monotonic()
        return found
    finally:
        await consumer.stop()


async def _committed(bootstrap: str) -> dict[int, int]:
    """Escalation's committed offsets on incident.triage (read without joining its group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=ESCALATION_GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out = {}
        for p in range(PARTITIONS):
            offset = await consumer.committed(TopicPartition(TRIAGE_TOPIC, p))
            out[p] = -1 if offset is None else offset
        return out
    finally:
        await consumer.stop()


def _escalated_all(stack: Stack, incidents: list[str], timeout: float) -> list[str]:
    """Incidents still without an escalation after `timeout` seconds."""
    waiting = list(incidents)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        waiting = [i for i in waiting if not timeline(stack, i, "incident.escalated.v1")]
        time.sleep(0.5)
    return waiting


def _resets(database: str) -> Any:
    query = " UNION ALL ".join(
        f"SELECT '{s}' AS service, resets FROM {s}.relay_state WHERE name = 'kafka'"
        for s in SERVICES
    )

    async def read() -> dict[str, int]:
        return {r["service"]: int(r["resets"]) for r in await _fetch(database, query)}

    return read


async def test_agents_read_every_partition_and_offset_again_after_a_broker_restart(
    stack: Stack,
) -> None:
    bootstrap = stack.broker.bootstrap
    database = stack.env["INCIDENTS_DATABASE_URL"]
    people = len(yaml.safe_load(DIRECTORY.read_text(encoding="utf-8"))["people"])

    async def directory_known() -> bool:  # the seed's people: one import event a chunk
        [row] = await _fetch(database, "SELECT count(*) AS n FROM triage.directory_log")
        return int(row["n"]) >= -(-people // MAX_PEOPLE_PER_EVENT)

    await _wait(directory_known, "triage holds the directory", 60)

    # Decisions on every partition of incident.triage, each handled by escalation.
    before = [submit(stack, NOBODY_AT_LEVEL_1) for _ in range(12)]
    assert _escalated_all(stack, before, 90) == []
    old = await _read_triage(bootstrap, PARTITIONS)
    assert all(old.values()), {p: len(r) for p, r in old.items()}

    # A relay killed mid-batch sends it again: the old topic runs ahead.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, records in old.items():
            for _ in range(COPIES):
                await producer.send(
                    TRIAGE_TOPIC,
                    value=records[0].value,
                    key=records[0].key,
                    headers=list(records[0].headers),
                    partition=partition,
                )
        await producer.flush()
    finally:
        await producer.stop()
    ends = {p: len(r) + COPIES for p, r in old.items()}

    async def read_to_the_end() -> bool:
        committed = await _committed(bootstrap)
        return all(committed[p] >= ends[p] for p in range(PARTITIONS))

    await _wait(read_to_the_end, f"escalation committed {ends} on {TRIAGE_TOPIC}", 60)

    # The broker restarts empty, and a client asks for incident.triage before any
    # service's BrokerWatch creates it: auto-created with 4 partitions.
    resets = _resets(database)
    resets_before = await resets()
    stack.broker.restart()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        partitions = await producer.partitions_for(TRIAGE_TOPIC)
    finally:
        await producer.stop()
    assert len(partitions) == AUTO_PARTITIONS, partitions

    async def every_relay_rewound() -> bool:
        now = await resets()
        return len(now) == len(SERVICES) and all(now[s] > resets_before[s] for s in now)

    await _wait(every_relay_rewound, "every relay rewound", 90)
    # Triage crashes and comes back (as in the chaos run): its new producer sees the 4
    # partitions, so a quarter of its decisions go to the new one.
    stack.kill("triage")
    stack.start("triage")
    stack.wait_ready("triage")

    # New decisions: on the new partition, and below the offsets escalation had read.
    # 32 random keys: all 32 miss the new partition with probability (3/4)^32, 1e-4 (16
    # missed it once in a CI run: 1 %)
    after = [submit(stack, NOBODY_AT_LEVEL_1) for _ in range(32)]
    missing = _escalated_all(stack, after, 90)
    new = await _read_triage(bootstrap, AUTO_PARTITIONS)
    on_new_partition = {r.key.decode() for r in new[AUTO_PARTITIONS - 1]} & set(after)
    counts = {p: len(r) for p, r in new.items()}
    print(
        f"incident.triage before the restart {ends}, after {counts};"
        f" {len(on_new_partition)} of {len(after)} new decisions on partition {AUTO_PARTITIONS - 1}"
    )
    assert not missing, (
        f"{len(missing)} of {len(after)} decisions made after the broker restart were never"
        f" handled by escalation ({len(set(missing) & on_new_partition)} of them on partition"
        f" {AUTO_PARTITIONS - 1})\n--- escalation\n{stack.tail('escalation')}"
    )
    assert on_new_partition, "no new decision landed on the auto-created partition: trap not set"
    assert any(
        r.offset < ends[p] for p in range(PARTITIONS) for r in new[p] if r.key.decode() in after
    ), "no new decision got an offset below the old ones: trap not set"

    # Exactly once, old and new: one decision, one escalation per level, one notice each.
    time.sleep(3)  # a second copy of anything would have arrived by now
    for incident in before + after:
        assert len(timeline(stack, incident, "incident.triaged.v1")) == 1, incident
        levels = Counter(
            e["event"]["data"]["level"]  # type: ignore[index]
            for e in timeline(stack, incident, "incident.escalated.v1")
        )
        assert levels and set(levels.values()) == {1}, (incident, levels)
        notices = Counter(
            (e["event"]["data"]["principal"], e["event"]["data"]["level"])  # type: ignore[index]
            for e in timeline(stack, incident, "incident.notified.v1")
            if e["event"]["data"]["channel"] == "escalation"  # type: ignore[index]
        )
        assert notices and set(notices.values()) == {1}, (incident, notices)
    for name in SERVICES:
        assert stack.procs[name].poll() is None, f"{name} died:\n{stack.tail(name)}"
        assert httpx.get(stack.url(name) + "/readyz", timeout=5).status_code == 200, name
