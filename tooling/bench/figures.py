"""The figures of issue #9, one coroutine each, each measuring its raw baseline too.

Sizes are parameters, so `incidents bench`, `--quick` and the integration test run the
same code at different scales. Figures that need the running services take a `Target`
(their URLs, the broker, and the stack's database for the escalation setup); the others
need only a PostgreSQL database of their own. Nothing here asserts a timing: a missed
target is a result (`Figure.met` False), never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import os
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer
from pybase64 import b64encode_as_string

from services.audit import merkle, tree
from services.audit.app import MIGRATIONS as AUDIT_MIGRATIONS
from services.audit.checkpoint import NoteSigner
from services.audit.cli import incidents_as_of
from services.audit.ledger import LEDGER_COLUMNS, append_records, incident_entries
from services.audit.verify import MemorySource, verify_ledger
from services.domain import escalation as esc
from services.domain.envelope import canonical_json, signing_input, utc_rfc3339
from services.domain.events import CATALOG, make_event
from services.domain.knowledge import knowledge_as_of
from services.infra import signing
from services.infra.db import INFRA_MIGRATIONS, connect, create_pool, migrate, migrate_service
from services.infra.kafka import ensure_topics, make_producer
from services.infra.settings import CommonSettings
from tooling.bench import hops
from tooling.bench.ledgerdata import BATCH, LedgerData
from tooling.bench.report import Figure, Latency, percentile

REPORT = {
    "category": "harassment",
    "summary": "Repeated remarks by the store manager",
    "description": (
        "On Friday evening, after the inventory count, the store manager cornered me in"
        " the stock room and made remarks about my body; it has happened three times"
        " since March and two colleagues saw the last one."
    ),
    "unit": "city-retail",
    "accused": ["p-wang"],
}
"""A named report (p-liu, who is an employee of city-retail): triage asks p-chen."""

SUBMITTED = "incident.report.submitted.v1"
TRIAGED = "incident.triaged.v1"
NOTIFIED = "incident.notified.v1"
ESCALATED = "incident.escalated.v1"


@dataclass(frozen=True)
class Target:
    """A running stack: where its services answer, its broker, and its database."""

    intake_url: str
    audit_url: str
    bootstrap: str
    database_url: str | None = None
    topic_prefix: str = ""
    schema_suffix: str = ""
    auditor_token: str = "dev-auditor-token"  # noqa: S105 - public development token
    reporter_token: str = "dev-liu-token"  # noqa: S105 - public development token
    pids: Mapping[str, int] | None = None  # service -> process id, when they run here
    broker_pid: int | None = None  # the Tansu this bench started, when it did


# ---------------------------------------------------------------- load shapes


@dataclass
class Run:
    """What a load run did: successes, failures, latencies (seconds), elapsed time.

    `behind` is how late (seconds) an open-loop run started its latest call: above a
    few milliseconds the client itself could not keep the offered rate.
    """

    ok: int
    failed: int
    latencies: list[float]
    elapsed: float
    behind: float = 0.0

    @property
    def rate(self) -> float:
        """Successes per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0


async def closed_loop(
    call: Callable[[], Awaitable[bool]], concurrency: int, seconds: float, warmup: float = 0.5
) -> Run:
    """`concurrency` workers call back to back; counts the calls that end in the window.

    The window is `seconds` long and opens after `warmup`; a call counts when it ends
    inside it, with its latency, whenever it started. Calls still running when it
    closes are cancelled.
    """
    loop = asyncio.get_running_loop()
    opens = loop.time() + warmup
    closes = opens + seconds
    latencies: list[float] = []
    failures = [0]

    async def worker() -> None:
        while loop.time() < closes:
            began = loop.time()
            ok = await call()
            done = loop.time()
            if opens <= done <= closes:
                if ok:
                    latencies.append(done - began)
                else:
                    failures[0] += 1

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    _, late = await asyncio.wait(workers, timeout=closes - loop.time())
    for task in late:  # calls still running when the window closed would not count
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    return Run(len(latencies), failures[0], latencies, seconds)


async def open_loop(
    call: Callable[[], Awaitable[bool]],
    rate: float,
    seconds: float,
    patience: float | None = None,
) -> Run:
    """Calls started on a fixed schedule, whatever the answers do (no coordinated omission).

    Each latency counts from the instant its call was due, so a client or server that
    falls behind shows up in the latencies instead of lowering the offered rate. Calls
    still unanswered `patience` seconds after the last one was started are cancelled
    and count as failed.
    """
    loop = asyncio.get_running_loop()
    count = max(1, int(rate * seconds))
    start = loop.time() + 0.05
    latencies: list[float] = []
    failures = [0]
    behind = 0.0

    async def one(due: float) -> None:
        ok = await call()
        if ok:
            latencies.append(loop.time() - due)
        else:
            failures[0] += 1

    # Only the calls still running are held: waiting on every task at the end would
    # walk all of them (thousands) while the last calls are in flight, and the client
    # stalling there showed as a tail of ~100 ms on the last ones.
    running: set[asyncio.Task[None]] = set()
    for i in range(count):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        behind = max(behind, loop.time() - due)
        task = asyncio.create_task(one(due))
        running.add(task)
        task.add_done_callback(running.discard)
    late: set[asyncio.Task[None]] = set()
    if running:
        _, late = await asyncio.wait(set(running), timeout=patience)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    return Run(len(latencies), failures[0] + len(late), latencies, count / rate, behind)


def _client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0))


# ------------------------------------------------------------ intake


def _submitted_body() -> bytes:
    """The bytes of a submitted event like those intake stores for `REPORT`."""
    return make_event(
        SUBMITTED,
        subject="bench",
        data={**REPORT, "reporter": "p-liu", "channel": "web", "report_digest": "sha256:00"},
        source="/services/intake",
        time=datetime.now(UTC),
        actor="p-liu",
    ).to_bytes()


async def raw_intake_pool(database_url: str, pool_size: int) -> asyncpg.Pool:
    """A pool on a schema with the event store tables (the shape intake writes to)."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, "bench_raw", [INFRA_MIGRATIONS])
    finally:
        await conn.close()
    return await create_pool(database_url, schema="bench_raw", max_size=pool_size)


def raw_submit(pool: asyncpg.Pool) -> Callable[[], Awaitable[bool]]:
    """One raw transaction as intake's: an event row and an outbox row, gap-free positions."""
    body = _submitted_body()

    async def call() -> bool:
        incident = secrets.token_hex(16)
        event_id = str(uuid.uuid4())
        async with pool.acquire() as conn, conn.transaction():
            position = await conn.fetchval(
                "UPDATE counters SET last = last + 1 WHERE name = 'events' RETURNING last"
            )
            await conn.execute(
                "INSERT INTO events (stream_id, version, position, event_id, type, time, body)"
                " VALUES ($1, 1, $2, $3, $4, $5, $6)",
                incident,
                position,
                event_id,
                SUBMITTED,
                datetime.now(UTC),
                body,
            )
            outbox = await conn.fetchval(
                "UPDATE counters SET last = last + 1 WHERE name = 'outbox' RETURNING last"
            )
            await conn.execute(
                "INSERT INTO outbox (position, event_id, topic, key, value, headers)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
                outbox,
                event_id,
                "incident.reports",
                incident,
                body,
                '[["content-type", "application/cloudevents+json"]]',
            )
        return True

    return call


def _poster(concurrency: int) -> aiohttp.ClientSession:
    """The client that sends the load: aiohttp, which costs the shared cores about half
    the CPU per request that httpx does (the CPU figures below count it)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
    )


def post_report(
    session: aiohttp.ClientSession,
    target: Target,
    *,
    anonymous: bool = False,
    accepted: Callable[[dict[str, Any]], None] | None = None,
) -> Callable[[], Awaitable[bool]]:
    """One `POST /v1/reports`; True on 202 (whose JSON answer goes to `accepted`)."""
    url = f"{target.intake_url}/v1/reports"
    headers = {"content-type": "application/json"}
    if not anonymous:
        headers["authorization"] = f"Bearer {target.reporter_token}"
    body = json.dumps(REPORT).encode()

    async def call() -> bool:
        try:
            async with session.post(url, data=body, headers=headers) as answer:
                raw = await answer.read()
                if answer.status != 202:
                    return False
        except (aiohttp.ClientError, TimeoutError):
            return False
        if accepted is not None:
            accepted(json.loads(raw))
        return True

    return call


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None where /proc is not."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time used by the bench itself and by each service process, between two reads."""

    def __init__(self, pids: Mapping[str, int] | None) -> None:
        self.pids = dict(pids or {})
        self.start: dict[str, float | None] = {}

    def read(self) -> dict[str, float | None]:
        now = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        now["client"] = time.process_time()
        return now

    def begin(self) -> None:
        self.start = self.read()

    def per(self, count: int) -> dict[str, float]:
        """Milliseconds of CPU per unit of work (`count` units) since `begin`."""
        end = self.read()
        return {
            name: (end[name] - began) * 1000 / count  # type: ignore[operator]
            for name, began in self.start.items()
            if began is not None and end.get(name) is not None and count > 0
        }


def _cpu_text(per_report: Mapping[str, float]) -> str:
    if len(per_report) < 2:
        return ""
    total = sum(per_report.values())
    cores = os.cpu_count() or 1
    parts = ", ".join(f"{name} {ms:.1f}" for name, ms in per_report.items())
    return (
        f" CPU per accepted report during the run (ms): {parts}; {total:.0f} ms in all,"
        f" so {cores} cores to itself would carry at most ~{cores * 1000 / total:,.0f}"
        " reports/s through the stack."
    )


async def intake_figures(
    target: Target,
    raw_database_url: str,
    *,
    concurrency: int = 16,
    seconds: float = 5.0,
    open_seconds: float = 4.0,
    warmup: float = 0.5,
    settle_first: bool = True,
) -> list[Figure]:
    """Accepted reports/s and p50/p99 at fixed concurrency; p99 at 70 % of that rate.

    `target` is best an intake by itself, with no audit service (the runner starts
    one, and passes ``settle_first=False``); otherwise the stack must be quiet first.

    Baseline: the same transaction written raw with asyncpg (an event row and an
    outbox row, positions from the counters), over a pool as large as intake's,
    at the same concurrency and then at the same offered rate.
    """
    settled = await settle(target) if settle_first else None  # the stack is quiet first
    pool = await raw_intake_pool(raw_database_url, CommonSettings().db_pool_max)
    try:
        raw_call = raw_submit(pool)
        raw = await closed_loop(raw_call, concurrency, seconds, warmup)
        meter = CpuMeter(target.pids)
        async with _poster(concurrency) as client:
            meter.begin()
            served = await closed_loop(post_report(client, target), concurrency, seconds, warmup)
            cpu = meter.per(served.ok + served.failed)
        rate = 0.7 * served.rate
        async with _poster(max(64, concurrency)) as client:
            served_open = await open_loop(
                post_report(client, target), rate, open_seconds, patience=open_seconds + 10
            )
        raw_open = await open_loop(raw_call, rate, open_seconds, patience=open_seconds + 10)
    finally:
        await pool.close()
    closed_lat, raw_lat = Latency.of_seconds(served.latencies), Latency.of_seconds(raw.latencies)
    open_lat, raw_open_lat = (
        Latency.of_seconds(served_open.latencies),
        Latency.of_seconds(raw_open.latencies),
    )
    ratio = served.rate / raw.rate if raw.rate else 0.0
    return [
        Figure(
            key="intake.rate",
            name=f"intake accepted reports/s ({concurrency} concurrent)",
            value=served.rate,
            unit="reports/s",
            baseline_name="raw asyncpg event + outbox txn",
            baseline=raw.rate,
            baseline_unit="txn/s",
            target="≥ 50 % of baseline",
            met=ratio >= 0.5,
            limit=(
                "CPU. Measured on an intake by itself (its own database and broker, its"
                " relay publishing to topics nobody consumes) before the bench starts the"
                " stack; the client (aiohttp), intake and PostgreSQL share 2 cores, and the raw"
                " baseline runs without HTTP, authentication, validation, sealing or spans."
                " Reports without an Idempotency-Key share transactions (group commit:"
                " one statement per table and one COMMIT for the reports that arrived"
                " meanwhile), so round trips per report fall as the load rises; what is"
                " left is Python per request: uvicorn, FastAPI and pydantic, the span of"
                " the request and of each statement, sealing, the event's JSON." + _cpu_text(cpu)
            ),
            details={
                "settled_before": settled,
                "cpu_ms_per_report": cpu,
                "accepted": served.ok,
                "failed": served.failed,
                "seconds": served.elapsed,
                "baseline_txns": raw.ok,
                "named_reporter": True,
            },
        ),
        Figure(
            key="intake.latency",
            name=f"intake p50 / p99 ({concurrency} concurrent)",
            value=closed_lat.p99,
            unit="ms",
            shown=closed_lat.shown(),
            baseline_name="raw txn",
            baseline=raw_lat.p99,
            baseline_shown=raw_lat.shown(),
            limit="At fixed concurrency latency is concurrency / rate (Little's law): the"
            " same limits as the rate.",
            details={"served": closed_lat, "baseline": raw_lat},
        ),
        Figure(
            key="intake.p99_at_70",
            name=f"intake p99 at 70 % of max rate ({rate:,.0f}/s)",
            value=open_lat.p99,
            unit="ms",
            shown=open_lat.shown(),
            baseline_name="raw txn, same rate",
            baseline=raw_open_lat.p99,
            baseline_shown=raw_open_lat.shown(),
            target="p99 ≤ 50 ms",
            met=open_lat.p99 <= 50 and served_open.failed == 0,
            limit=(
                "Open-loop schedule, latency counted from the instant each request was due;"
                " 70 % of the closed-loop rate, where 16 reports always wait and each"
                " shared commit carries many. Paced arrivals make smaller batches, so more"
                " CPU per report (1.6 ms paced at 530/s against 0.9-1.1 in the closed loop):"
                " intake's one core runs at about 85 %, and queueing on its event loop is"
                " what is left of the tail."
                " Two pauses used to dominate it: the span export thread holding the GIL"
                " for a batch, and the collector walking the whole start-up heap (~100 ms"
                " every 3-4 s); spans are now encoded as they end and the heap is frozen"
                " after start-up (p99 at 530/s: 84-119 ms before, 19-21 ms after, by"
                " themselves). The raw baseline has no HTTP and no Python work per report."
            ),
            details={
                "offered_rate": rate,
                "accepted": served_open.ok,
                "failed": served_open.failed,
                "served": open_lat,
                "baseline": raw_open_lat,
            },
        ),
    ]


async def intake_with_stack_figure(
    stack: Target, raw_rate: float, *, concurrency: int, seconds: float, warmup: float = 0.5
) -> Figure:
    """`intake_figures`' closed loop against the whole stack's intake, every service
    consuming behind it; `raw_rate` is the raw baseline measured there."""
    await settle(stack)
    meter = CpuMeter(stack.pids)
    async with _poster(concurrency) as client:
        meter.begin()
        served = await closed_loop(post_report(client, stack), concurrency, seconds, warmup)
        cpu = meter.per(served.ok + served.failed)
    return Figure(
        key="intake.rate_stack",
        name=f"intake reports/s with the stack consuming behind it ({concurrency} concurrent)",
        value=served.rate,
        unit="reports/s",
        baseline_name="raw asyncpg event + outbox txn",
        baseline=raw_rate,
        baseline_unit="txn/s",
        limit=(
            "No target: what 2 cores carry while triage, escalation and audit consume"
            " every report as it comes (the end-to-end figure shows the same limit)."
            + _cpu_text(cpu)
        ),
        details={"cpu_ms_per_report": cpu, "accepted": served.ok, "failed": served.failed},
    )


def argon2_rate(seconds: float) -> float:
    """argon2id hashes per second with intake's parameters, on one core."""
    from argon2 import PasswordHasher

    hasher = PasswordHasher()
    count = 0
    began = time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds or count == 0:
        hasher.hash(secrets.token_hex(16))
        count += 1
    return count / elapsed if elapsed > 0 else math.nan


async def anonymous_figure(
    target: Target, *, concurrency: int = 8, seconds: float = 3.0, hash_seconds: float = 1.0
) -> Figure:
    """Anonymous reports/s (each costs an argon2id hash of its secret); no target."""
    hashes = await asyncio.to_thread(argon2_rate, hash_seconds)
    async with _poster(concurrency) as client:
        served = await closed_loop(
            post_report(client, target, anonymous=True), concurrency, seconds, 0.5
        )
    lat = Latency.of_seconds(served.latencies)
    return Figure(
        key="intake.anonymous",
        name=f"intake accepted anonymous reports/s ({concurrency} concurrent)",
        value=served.rate,
        unit="reports/s",
        baseline_name="argon2id hashes/s, 1 core",
        baseline=hashes,
        baseline_unit="hashes/s",
        limit=(
            "argon2id (RFC 9106 low-memory profile) of each receipt secret: CPU-bound by"
            " design, at most 4 at a time in intake."
        ),
        details={"accepted": served.ok, "failed": served.failed, "latency": lat},
    )


# ------------------------------------------------------------ end to end


Seen = tuple[str, str, float, float | None]
"""One ledger entry: event type, incident id, ledger time, and for a submission the
event's own `time` (intake's clock when it accepted the report), as POSIX timestamps."""


class LedgerFollower:
    """Reads the audit ledger forward, from where it ends now.

    With the stack's database it reads the ledger table's index columns (nothing for
    the services to do); otherwise it pages `GET /v1/ledger/entries` as an auditor.
    """

    def __init__(self, client: httpx.AsyncClient, target: Target) -> None:
        self.client = client
        self.target = target
        self.conn: asyncpg.Connection | None = None
        self.cursor = 0

    async def start(self) -> None:
        """Move the cursor to the end of the ledger as it stands."""
        if self.target.database_url is not None:
            self.conn = await connect(
                self.target.database_url, schema=f"audit{self.target.schema_suffix}"
            )
            self.cursor = int(
                await self.conn.fetchval("SELECT coalesce(max(idx), -1) + 1 FROM ledger")
            )
            return
        answer = await self.client.get(f"{self.target.audit_url}/v1/ledger/head")
        if answer.status_code == 200:
            self.cursor = int(answer.json()["tree_size"])
        await self.poll()  # the entries recorded after the latest signed head

    async def close(self) -> None:
        """Close the database connection, if any."""
        if self.conn is not None:
            await self.conn.close()

    async def poll(self) -> list[Seen]:
        """Every entry recorded since the last poll."""
        if self.conn is not None:
            rows = await self.conn.fetch(
                "SELECT idx, event_type, incident_id, recorded_at, CASE WHEN event_type = $2"
                " THEN convert_from(leaf, 'UTF8')::jsonb #>> '{event,time}' END AS time"
                " FROM ledger WHERE idx >= $1 ORDER BY idx",
                self.cursor,
                SUBMITTED,
            )
            if rows:
                self.cursor = rows[-1]["idx"] + 1
            return [
                (
                    r["event_type"] or "",
                    r["incident_id"] or "",
                    r["recorded_at"].timestamp(),
                    _instant(r["time"]) if r["time"] else None,
                )
                for r in rows
            ]
        got: list[Seen] = []
        while True:
            answer = await self.client.get(
                f"{self.target.audit_url}/v1/ledger/entries",
                params={"start": self.cursor, "end": self.cursor + 1000},
                headers={"authorization": f"Bearer {self.target.auditor_token}"},
            )
            answer.raise_for_status()
            page = answer.json()["entries"]
            for entry in page:
                event = entry.get("event") or {}
                kind = str(event.get("type", ""))
                got.append(
                    (
                        kind,
                        str(event.get("subject", "")),
                        _instant(entry["recorded_at"]),
                        _instant(event["time"]) if kind == SUBMITTED else None,
                    )
                )
            self.cursor += len(page)
            if len(page) < 1000:
                return got


async def settle(target: Target, *, quiet: float = 1.0, limit: float = 20.0) -> bool:
    """Wait until the ledger grew by nothing for `quiet` seconds; False if `limit` passed.

    Each figure on the services starts from a quiet stack, so that the backlog of the
    figure before it does not count against it.
    """
    async with _client(2) as client:
        follower = LedgerFollower(client, target)
        await follower.start()
        try:
            loop = asyncio.get_running_loop()
            give_up = loop.time() + limit
            still_since = loop.time()
            while loop.time() < give_up:
                if await follower.poll():
                    still_since = loop.time()
                elif loop.time() - still_since >= quiet:
                    return True
                await asyncio.sleep(0.2)
            return False
        finally:
            await follower.close()


def _instant(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True)
class RoundTrips:
    """The raw bus baseline: seconds from send to consume of each record, and the CPU
    this process spent per record to produce and consume it (ms)."""

    seconds: list[float]
    cpu_ms: float


async def kafka_round_trip(bootstrap: str, samples: int, prefix: str = "") -> RoundTrips:
    """One record at a time from send to consume, acks=all, the services' fetch wait."""
    settings = CommonSettings(
        kafka_bootstrap=bootstrap, kafka_partitions=1, kafka_topic_prefix=prefix
    )
    topic = settings.topic(f"bench.rtt.{secrets.token_hex(4)}")
    await ensure_topics(settings, [topic])
    producer = make_producer(settings, "bench-rtt")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    await producer.start()
    await consumer.start()
    payload = os.urandom(700)
    out: list[float] = []
    cpu = 0.0
    try:
        for i in range(samples + 10):  # the first ten warm the connections up
            began, began_cpu = time.perf_counter(), time.process_time()
            await producer.send_and_wait(topic, payload, key=b"k")
            await consumer.getone()
            if i >= 10:
                out.append(time.perf_counter() - began)
                cpu += time.process_time() - began_cpu
    finally:
        await consumer.stop()
        await producer.stop()
    return RoundTrips(out, cpu * 1000 / max(samples, 1))


def e2e_target(rate: float) -> tuple[str, float, bool]:
    """Issue #24's target at `rate` reports/s: its text, its bound (ms), and whether it
    bounds the p50 (else the p99)."""
    if rate <= 25:
        return "p50 ≤ 15 ms", 15.0, True
    if rate <= 100:
        return "p99 ≤ 50 ms", 50.0, False
    return "p99 ≤ 100 ms", 100.0, False


async def e2e_figure(
    target: Target,
    *,
    rate: float = 50.0,
    seconds: float = 10.0,
    drain: float = 20.0,
    rtt_samples: int = 200,
) -> list[Figure]:
    """202 → submission, triage decision and first notification all in the ledger, and
    the CPU the four services spent per report meanwhile (`_cpu_figure`).

    Reports go in at a fixed rate (open loop). The end of each is the latest ledger
    time (`recorded_at`, PostgreSQL's clock on this host) of the three entries; the
    start is the submitted event's `time`, intake's clock when it accepted the report,
    just before the transaction whose commit the 202 confirms (the instant the client
    reads its 202 comes later, by as much as the client lags; it is in the details).
    Reports not complete `drain` seconds
    after the last one was sent count as infinitely late; requests still unanswered
    then are cancelled and count as refused. With the stack's database, the details
    carry where the milliseconds go, hop by hop (`tooling.bench.hops`).
    """
    settled = await settle(target)
    processes = {**(target.pids or {})}
    if target.broker_pid is not None:
        processes["tansu"] = target.broker_pid
    meter = CpuMeter(processes if target.pids else None)
    rtt = await kafka_round_trip(target.bootstrap, rtt_samples, target.topic_prefix)
    accepted: dict[str, float] = {}  # incident -> when the client got its 202
    started: dict[str, float] = {}  # incident -> its submitted event's time
    seen: dict[str, dict[str, float]] = {}  # incident -> type -> ledger time
    wanted = (SUBMITTED, TRIAGED, NOTIFIED)
    async with _client(64) as client:
        follower = LedgerFollower(client, target)
        await follower.start()
        sending_done, complete = asyncio.Event(), asyncio.Event()

        async def follow() -> None:
            while not complete.is_set():
                for kind, incident, at, event_time in await follower.poll():
                    if kind in wanted:
                        seen.setdefault(incident, {}).setdefault(kind, at)
                    if event_time is not None:
                        started.setdefault(incident, event_time)
                if sending_done.is_set() and _all_done(accepted, seen, wanted):
                    complete.set()
                await asyncio.sleep(0.1)

        following = asyncio.create_task(follow())
        poster = _poster(64)
        send = post_report(
            poster,
            target,
            accepted=lambda answer: accepted.__setitem__(answer["incident_id"], time.time()),
        )

        try:
            finish_by = time.monotonic() + seconds + drain
            meter.begin()
            window_began = time.monotonic()
            sent = await open_loop(send, rate, seconds, patience=drain)
            sending_done.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(complete.wait(), max(0.0, finish_by - time.monotonic()))
        finally:
            complete.set()
            await following
            await follower.close()
            await poster.close()
    # The work behind the figure's three entries (deliveries, their ledger entries)
    # counts too: the window ends once the ledger has grown by nothing for a second.
    await settle(target)
    cpu = meter.per(len(accepted)) if accepted else {}
    window = time.monotonic() - window_began
    latencies: list[float] = []
    answered: list[float] = []
    stages: dict[str, list[float]] = {kind: [] for kind in wanted}
    for incident, got_202 in accepted.items():
        times = seen.get(incident, {})
        at = started.get(incident)
        if at is None:  # its submission never reached the ledger
            latencies.append(math.inf)
            continue
        answered.append(got_202 - at)
        for kind in wanted:
            if kind in times:
                stages[kind].append(times[kind] - at)
        done = all(kind in times for kind in wanted)
        latencies.append(max(times.values()) - at if done else math.inf)
    lat, base = Latency.of_seconds(latencies), Latency.of_seconds(rtt.seconds)
    missing = sum(1 for v in latencies if math.isinf(v))
    hop_details: dict[str, Any] = {}
    if target.database_url is not None and accepted:
        try:
            paths = await hops.collect(
                target.database_url,
                target.bootstrap,
                accepted,
                schema_suffix=target.schema_suffix,
            )
            result = hops.breakdown(paths)
            hop_details = {
                "hops": result.to_json(),
                "hops_table": hops.lines(result, base.p50, base.p99),
            }
        except Exception as exc:  # the breakdown is a detail: the figure stands without it
            hop_details = {"hops_error": f"{type(exc).__name__}: {exc}"[:300]}
    goal, bound, on_p50 = e2e_target(rate)
    judged = lat.p50 if on_p50 else lat.p99
    by_stage = {kind: Latency.of_seconds(v) for kind, v in stages.items()}
    stage_text = ", ".join(
        f"{label} {by_stage[kind].shown()}"
        for kind, label in (
            (SUBMITTED, "submission"),
            (TRIAGED, "triage decision"),
            (NOTIFIED, "first notification"),
        )
    )
    latency = Figure(
        key=f"e2e.{rate:g}",
        name=f"end to end 202 → ledger + triage + notification ({rate:g}/s for {seconds:g} s)",
        value=judged,
        unit="ms",
        shown=lat.shown()
        + (f", {missing} incomplete" if missing else "")
        + (f", {sent.failed} without a 202" if sent.failed else ""),
        baseline_name="raw aiokafka produce → consume",
        baseline=base.p50 if on_p50 else base.p99,
        baseline_shown=base.shown(),
        target=goal,
        met=judged <= bound and missing == 0 and sent.failed == 0,
        limit=(
            "CPU, not the hops: the client, the four services, Tansu and PostgreSQL"
            " share 2 cores, and at 200 reports/s they need about as much CPU as the"
            " machine has (the row of intake with the stack behind it gives the CPU per"
            " report of each service and the rate the stack carries), so every stage"
            " queues; the tail is the bursts in which it falls behind. While records flow a"
            " hop costs up to half a fetch wait of"
            f" {CommonSettings().kafka_fetch_max_wait_ms} ms (Tansu looks for new records"
            " at about half the wait; intake relay → triage → relay → escalation and audit)"
            " and a PostgreSQL commit per consumer batch; the details give each hop. Under"
            " load (py-spy of each service) the largest share is"
            " sending statements to PostgreSQL (asyncpg's execute path, 20-26 % of intake"
            " and escalation), then spans (15-25 %; with OTEL_SDK_DISABLED=true a run gave"
            " p50 342 / p99 2,917 ms, so they are not what makes the tail), audit's console"
            " index and ledger leaves, JSON and pydantic per event. Consumers work in"
            " batches (one transaction and one statement per table for a batch's"
            " decisions, escalation starts, routing rows and delivered notices); what is"
            " still one transaction per record: acknowledgements and failed deliveries;"
            " deadline steps share a transaction per batch with statements per row."
            " Each stage, from intake's acceptance to its ledger entry:"
            f" {stage_text}; the client got its 202 after"
            f" {Latency.of_seconds(answered).shown()}."
        ),
        details={
            "settled_before": settled,
            "offered_rate": rate,
            "client_behind_ms": sent.behind * 1000,
            "accepted": len(accepted),
            "refused": sent.failed,
            "incomplete": missing,
            "latency": lat,
            "baseline": base,
            "stages": by_stage,
            "client_202_after_acceptance": Latency.of_seconds(answered),
            **hop_details,
        },
    )
    return [latency, _cpu_figure(rate, seconds, cpu, len(accepted), window, rtt.cpu_ms)]


CPU_TARGET_MS = 3.5
"""Issue 24: CPU per report through the four services."""


def _cpu_figure(
    rate: float,
    seconds: float,
    cpu: Mapping[str, float],
    reports: int,
    window: float,
    raw_ms: float,
) -> Figure:
    """The CPU (ms) the four services spent per report of an end-to-end run, from the
    first report sent until the ledger was still again, beside the raw bus's CPU per
    record (produce and consume, one process) measured in the same run."""
    name = f"CPU per report through the four services ({rate:g}/s for {seconds:g} s)"
    services = {k: v for k, v in cpu.items() if k in ("intake", "triage", "escalation", "audit")}
    if len(services) < 4:
        return Figure(
            key=f"e2e.cpu.{rate:g}", name=name, shown="skipped", limit="Needs the stack here."
        )
    total = sum(services.values())
    others = {k: v for k, v in cpu.items() if k not in services}
    return Figure(
        key=f"e2e.cpu.{rate:g}",
        name=name,
        value=total,
        unit="ms",
        shown=f"{total:.1f} ms ("
        + ", ".join(f"{k} {v:.1f}" for k, v in services.items())
        + "; besides them "
        + ", ".join(f"{k} {v:.2f}" for k, v in others.items())
        + ")",
        baseline_name="raw aiokafka produce + consume of one record, CPU of that process",
        baseline=raw_ms,
        baseline_shown=f"{raw_ms:.2f} ms",
        target=f"≤ {CPU_TARGET_MS:g} ms",
        met=total <= CPU_TARGET_MS,
        limit=(
            "Counted from /proc of each process over the whole window (the reports sent,"
            " then until the ledger grew by nothing for a second: the deliveries and"
            f" their entries are in it), {window:.1f} s for {reports:,} reports. A report"
            " crosses the bus about ten times (its submission, the decision, the"
            " notifications and their deliveries, each read by two or three services),"
            " and at a low rate each crossing is a batch of one: a fetch, a transaction"
            " and a relay publish each, with their spans, so the figure falls as the rate"
            " rises (the same stack: see docs/benchmarks.md, CPU by rate). The idle cost"
            " of the window (each service's idle ms/s times its length) is in the figure."
        ),
        details={
            "cpu_ms_per_report": dict(cpu),
            "reports": reports,
            "window_s": window,
            "raw_cpu_ms_per_record": raw_ms,
        },
    )


async def idle_cpu_figure(target: Target, *, quiet: float = 16.0, seconds: float = 30.0) -> Figure:
    """CPU each service takes a second while nothing happens (issue #24: ≤ 10 ms/s).

    Measured once the ledger has been still for a second and `quiet` seconds more have
    passed (the consumers' fetch waits reach their longest 15.5 s after the last record:
    `kafka.FetchPace`), over `seconds`, from /proc of each service process (ticks of
    10 ms: over 30 s a figure is good to a third of a ms/s).
    """
    name = f"idle CPU per service (over {seconds:g} s, {quiet:g} s after the last record)"
    if not target.pids:
        return Figure(key="e2e.idle", name=name, shown="skipped", limit="Needs the stack here.")
    await settle(target)
    await asyncio.sleep(quiet)
    meter = CpuMeter(target.pids)
    meter.begin()
    await asyncio.sleep(seconds)
    per_second = {  # rounded: 100 ticks of 10 ms over 10 s is 10, not 10.000000000000009
        service: round(ms / seconds, 6)
        for service, ms in meter.per(1).items()
        if service != "client"
    }
    worst = max(per_second.values(), default=math.nan)
    return Figure(
        key="e2e.idle",
        name=name,
        value=worst,
        unit="ms/s",
        shown=", ".join(f"{service} {ms:.1f}" for service, ms in per_second.items()) + " ms/s",
        target="≤ 10 ms/s each",
        met=bool(per_second) and worst <= 10,
        limit="What still wakes an idle service: a fetch per consumer every 500 ms (the"
        " longest wait), the group heartbeats (every session timeout / 3), the broker check"
        " (every 2 s over one admin client), the relay's fallback poll (every 5 s),"
        " metadata refreshes and faust's timers.",
        details={"ms_per_s": per_second, "quiet_s": quiet, "seconds": seconds},
    )


def _all_done(
    accepted: dict[str, float], seen: dict[str, dict[str, float]], wanted: Sequence[str]
) -> bool:
    return all(len(seen.get(i, ())) == len(wanted) for i in accepted)


# ------------------------------------------------------------ escalation


def _state_template() -> dict[str, Any]:
    now = datetime.now(UTC)
    state = esc.EscalationState(
        incident_id="bench",
        chain=(
            esc.Level(1, "hr_case_handler", ("p-chen",), 3600),
            esc.Level(2, "hr_head", ("p-zhou",), 7200),
        ),
        report_digest="sha256:" + "ab" * 32,
        current_level=1,
        asked_at=now,
        due_at=now,
        version=1,
    )
    return state.to_json()


def _state_rows(ids: Sequence[str], wakeups: Sequence[datetime]) -> list[tuple[str, str, datetime]]:
    template = _state_template()
    rows = []
    for incident, wakeup in zip(ids, wakeups, strict=True):
        template["incident_id"] = incident
        template["due_at"] = utc_rfc3339(wakeup)
        rows.append((incident, json.dumps(template), wakeup))
    return rows


async def escalation_figure(
    target: Target,
    *,
    pending: int = 10_000,
    due: int = 200,
    lead: float = 2.0,
    spread: float = 4.0,
    wait: float = 20.0,
) -> Figure:
    """Lateness (event time - data.deadline) of escalations, with `pending` deadlines waiting.

    Setup shortcut: the deadlines are written straight into the escalation schema
    (`escalation_state` rows, as escalation itself writes them after a triage
    decision) instead of through a triage decision each. `pending` of them wake between
    1 hour and 30 days from now; `due` more come due evenly over `spread` seconds,
    `lead` seconds after the insert. The escalation service fires them; each firing
    appends `incident.escalated.v1` with the missed deadline in `data.deadline`.
    Baseline: the scheduler's own queries per wake-up (the due rows with SKIP LOCKED,
    the nearest wake-up, the pending count) with the same rows in the table.
    """
    if target.database_url is None:
        raise ValueError("the escalation figure needs the stack's database (--database-url)")
    settled = await settle(target)
    schema = f"escalation{target.schema_suffix}"
    run = secrets.token_hex(3)
    conn = await connect(target.database_url, schema=schema)
    try:
        now = datetime.now(UTC)
        step = timedelta(days=30) / max(1, pending)
        ids = [f"bench-{run}-pending-{i}" for i in range(pending)]
        wakeups = [now + timedelta(hours=1) + step * i for i in range(pending)]
        await conn.copy_records_to_table(
            "escalation_state",
            records=_state_rows(ids, wakeups),
            columns=["incident_id", "state", "wakeup"],
        )
        await conn.execute("ANALYZE escalation_state")
        queries = []
        for _ in range(30):
            began = time.perf_counter()
            async with conn.transaction():
                await conn.fetch(
                    "SELECT incident_id, state FROM escalation_state WHERE wakeup <= $1"
                    " ORDER BY wakeup LIMIT 200 FOR UPDATE SKIP LOCKED",
                    datetime.now(UTC),
                )
                await conn.fetchval(
                    "SELECT min(wakeup) FROM escalation_state WHERE wakeup IS NOT NULL"
                )
                await conn.fetchval(
                    "SELECT count(*) FROM escalation_state WHERE wakeup IS NOT NULL"
                )
            queries.append(time.perf_counter() - began)
        start = datetime.now(UTC) + timedelta(seconds=lead)
        due_ids = [f"bench-{run}-due-{j}" for j in range(due)]
        deadlines = [start + timedelta(seconds=spread * j / max(1, due)) for j in range(due)]
        await conn.copy_records_to_table(
            "escalation_state",
            records=_state_rows(due_ids, deadlines),
            columns=["incident_id", "state", "wakeup"],
        )
        latest = time.monotonic() + lead + spread + wait
        rows: list[asyncpg.Record] = []
        await asyncio.sleep(lead + spread)
        while time.monotonic() < latest:
            rows = await conn.fetch(
                "SELECT stream_id, body FROM events"
                " WHERE type = $1 AND stream_id = ANY($2::text[])",
                ESCALATED,
                due_ids,
            )
            if len({r["stream_id"] for r in rows}) >= due:
                break
            await asyncio.sleep(0.25)
    finally:
        await conn.close()
    lateness: dict[str, float] = {}
    for row in rows:
        event = json.loads(bytes(row["body"]))
        late = _instant(event["time"]) - _instant(event["data"]["deadline"])
        lateness.setdefault(row["stream_id"], late)
    values = [lateness.get(i, math.inf) for i in due_ids]
    lat, base = Latency.of_seconds(values), Latency.of_seconds(queries)
    missing = sum(1 for v in values if math.isinf(v))
    return Figure(
        key="escalation",
        name=f"escalation lateness with {pending:,} pending deadlines",
        value=lat.p99,
        unit="ms",
        shown=lat.shown() + (f", {missing} never fired" if missing else ""),
        baseline_name=f"scheduler queries alone, {pending:,} rows",
        baseline=base.p99,
        baseline_shown=base.shown(),
        target="p99 ≤ 100 ms",
        met=lat.p99 <= 100 and missing == 0,
        limit=(
            "The scheduler sleeps until the nearest wake-up (NOTIFY or its own timer),"
            " reads min(wakeup) from the index, and runs its due-row query, one"
            " transaction per batch, only when a row is due; it counts the pending rows"
            " for its gauge every 5 s, not per wake-up (that count and an empty due-row"
            " transaction on every wake were most of a p99 of 68 ms before). PostgreSQL"
            " commit latency and the event loop it shares with the consumers add the rest."
        ),
        details={
            "settled_before": settled,
            "pending": pending,
            "due": due,
            "spread_seconds": spread,
            "fired": due - missing,
            "lateness": lat,
            "baseline": base,
            "setup": "escalation_state rows written directly (setup shortcut)",
        },
    )


# ------------------------------------------------------------ ledger append


async def _audit_schema(database_url: str) -> None:
    await migrate_service(database_url, "audit", AUDIT_MIGRATIONS)


async def ledger_append_figure(
    database_url: str, *, events: int = 20_000, batch: int = BATCH
) -> Figure:
    """Events/s through `append_records` in batches vs raw COPY of the rows it wrote."""
    await _audit_schema(database_url)
    records = [entry.record() for entry in LedgerData(events).entries()]
    conn = await connect(database_url, schema="audit", role="incidents_audit")
    try:
        began = time.perf_counter()
        appended = 0
        for at in range(0, len(records), batch):
            async with conn.transaction():
                appended += await append_records(conn, records[at : at + batch])
        elapsed = time.perf_counter() - began
    finally:
        await conn.close()
    if appended != events:
        raise RuntimeError(f"append_records appended {appended} of {events} events")
    admin = await connect(database_url, schema="audit")
    try:
        columns = ", ".join(f'"{c}"' for c in LEDGER_COLUMNS)
        rows = [tuple(r) for r in await admin.fetch(f"SELECT {columns} FROM ledger ORDER BY idx")]  # noqa: S608 - fixed column names
        await admin.execute("CREATE TABLE bench_plain (LIKE ledger)")
        began = time.perf_counter()
        for at in range(0, len(rows), batch):
            async with admin.transaction():
                await admin.copy_records_to_table(
                    "bench_plain", records=rows[at : at + batch], columns=LEDGER_COLUMNS
                )
        raw_elapsed = time.perf_counter() - began
    finally:
        await admin.close()
    rate, raw_rate = events / elapsed, len(rows) / raw_elapsed
    return Figure(
        key="ledger.append",
        name=f"ledger append events/s (batches of {batch})",
        value=rate,
        unit="events/s",
        baseline_name="raw COPY of the same rows, plain table",
        baseline=raw_rate,
        baseline_unit="rows/s",
        target="≥ 10,000/s",
        met=rate >= 10_000,
        limit=(
            "Python, one record at a time (cProfile, 10k events): parsing and pydantic"
            " validation of each event ~35 %, the OpenTelemetry span opened per record"
            " (twice, even with no exporter) ~25 %, the canonical leaf JSON ~10 %,"
            " waiting on PostgreSQL ~10 %. The baseline COPY skips all of that and the"
            " ledger's four indexes and tree nodes."
        ),
        details={"events": events, "seconds": elapsed, "baseline_seconds": raw_elapsed},
    )


# ------------------------------------------------------------ verify


def sha256_rate(seconds: float = 1.0) -> float:
    """hashlib SHA-256 digests per second of 64-byte inputs."""
    data = os.urandom(64)
    sha256 = hashlib.sha256
    count = 0
    began = time.perf_counter()
    while True:
        for _ in range(10_000):
            sha256(data).digest()
        count += 10_000
        elapsed = time.perf_counter() - began
        if elapsed >= seconds:
            return count / elapsed


def leaf_hash_rate(leaves: Sequence[bytes], seconds: float = 1.0) -> float:
    """Leaves per second hashed as RFC 9162 leaf hashes (``SHA-256(0x00 || leaf)``, one
    hashlib call per leaf): the floor of any verifier of these leaves."""
    sha256 = hashlib.sha256
    count = 0
    began = time.perf_counter()
    while True:
        for leaf in leaves:
            sha256(b"\0" + leaf).digest()
        count += len(leaves)
        elapsed = time.perf_counter() - began
        if elapsed >= seconds:
            return count / elapsed


def _leaf_hash_cpu(leaves: Sequence[bytes]) -> float:
    """CPU seconds (of this thread) per leaf of `leaf_hash_rate`'s work, one pass."""
    sha256 = hashlib.sha256
    began = time.thread_time()
    for leaf in leaves:
        sha256(b"\0" + leaf).digest()
    return (time.thread_time() - began) / len(leaves)


async def verify_figure(
    leaves: int = 20_000, *, head_every: int = 1000, sha_seconds: float = 1.0, rounds: int = 3
) -> Figure:
    """Leaves/s of `verify_ledger` over an in-memory source, signed heads every `head_every`,
    beside the SHA-256 of the same leaves. The two alternate `rounds` times and the best
    round of each is kept (wall clock and CPU alike), so both are taken under the same
    load and a busy moment on a shared machine lowers neither ratio by itself."""
    data = LedgerData(leaves)
    raw = [entry.leaf for entry in data.entries()]
    sizes = sorted({*range(head_every, leaves + 1, head_every), leaves})
    source = MemorySource.build(NoteSigner.generate("bench.example/ledger"), raw, sizes)
    elapsed, cpu, sha, sha_cpu = math.inf, math.inf, 0.0, math.inf
    for _ in range(rounds):
        began = time.process_time()
        report = await verify_ledger(source)
        cpu = min(cpu, time.process_time() - began)
        if not report.ok:
            raise RuntimeError(f"verify failed on generated leaves: {report.reason}")
        elapsed = min(elapsed, report.elapsed)
        sha = max(sha, await asyncio.to_thread(leaf_hash_rate, raw, sha_seconds))
        sha_cpu = min(sha_cpu, await asyncio.to_thread(_leaf_hash_cpu, raw))
    rate = report.entries_checked / elapsed
    cpu_per_leaf = cpu / report.entries_checked
    floor = 0.3 * sha
    return Figure(
        key="verify",
        name="verify leaves/s (in-memory source)",
        value=rate,
        unit="leaves/s",
        baseline_name="hashlib SHA-256 of the same leaves (RFC 9162 leaf hash)",
        baseline=sha,
        baseline_unit="leaves/s",
        target=f"≥ 30 % of the leaves' sha256 (≥ {floor:,.0f}/s), in CPU time too",
        # both clocks: on a shared machine the wall-clock rates swing with other work,
        # and a low floor is no faster verifier
        met=rate >= floor and sha_cpu / cpu_per_leaf >= 0.3,
        limit=(
            "Per leaf (thread CPU, best of several runs, bench leaves of ~630 bytes): msgspec"
            " reading the leaf into structs 1.15 µs and writing it back 0.55 µs (the"
            " canonical-JSON proof), SHA-256 0.64 µs (0.73 with the 0x00 prefix joined on),"
            " pybase64 0.4-0.5 µs, the Merkle frontier 0.5 µs: ~3.4 µs of library calls"
            " before any Python of the walk, against the floor's ~0.75 µs, so no walk that"
            " proves the leaves by building and writing back Python objects passes ~22 % in"
            " CPU time. Kept (issue 24): the recorded_at pattern skipped for a time just"
            " matched (an append gives its batch one recorded_at; these batches are 500) and"
            " the leaf hash from a copy of a SHA-256 fed 0x00: 5.03 against 4.57 µs a leaf."
            " Measured and not kept: the page read by one msgspec call"
            " (1.18 against 1.15 µs a leaf), every check of a page as one C-level call over"
            " it (5.60 against 5.31 µs a leaf, best of 25 interleaved runs; 2 % more"
            " instructions under callgrind), event data read into typed structs (1.86"
            " against 1.69 µs to read and write back), the proof inlined in the loop (0.6 %"
            " fewer instructions). 30 % needs a native canonical-JSON checker that builds no"
            " objects."
        ),
        details={
            "leaves": report.entries_checked,
            "heads": report.heads_checked,
            "consistency_proofs": report.proofs_checked,
            "rounds": rounds,
            "seconds": elapsed,
            "sha256_64_byte_per_s": await asyncio.to_thread(sha256_rate, sha_seconds / 2),
            # CPU time per leaf, which other work on the machine changes far less
            "cpu_us_per_leaf": cpu_per_leaf * 1e6,
            "sha256_cpu_us_per_leaf": sha_cpu * 1e6,
            "cpu_ratio": sha_cpu / cpu_per_leaf,
        },
    )


def _per_event_us(call: Callable[[Any], object], items: Sequence[Any], rounds: int = 3) -> float:
    """The best of `rounds` passes of `call` over `items`, in microseconds per item."""
    best = math.inf
    for _ in range(rounds):
        began = time.perf_counter()
        for item in items:
            call(item)
        best = min(best, time.perf_counter() - began)
    return best / len(items) * 1e6


async def signing_figures(events: int = 10_000) -> list[Figure]:
    """µs to sign and to verify one event (docs/event-signing.md), over the typical events
    of an incident's life, beside its canonical JSON alone (which both include)."""
    values = [json.loads(entry.event) for entry in LedgerData(events).entries()]
    keys = signing.development_key_set()
    signers = {  # each type signed by (the development key of) a service that publishes it
        name: signing.Signer(owner, signing.development_key(owner))
        for name, entry in CATALOG.items()
        for owner in [min(entry.producers)]
    }

    def sign_one(value: dict[str, Any]) -> bytes:
        return signers[value["type"]].sign_bytes(value)

    signed = [sign_one(v) for v in values]
    if any(keys.check_bytes(b)[0] is not None for b in signed):
        raise RuntimeError("a signed bench event did not verify")
    canonical = await asyncio.to_thread(_per_event_us, canonical_json, values)
    sign = await asyncio.to_thread(_per_event_us, sign_one, values)
    verify = await asyncio.to_thread(_per_event_us, keys.check_bytes, signed)
    size = sum(len(b) for b in signed) / len(signed)
    # The bare curve operations over the same bytes, for what the rest costs.
    key = signing.development_key("intake")
    inputs = [signing_input(v) for v in values[:1000]]
    signatures = [key.sign(m) for m in inputs]
    public = key.public_key()
    bare_sign = await asyncio.to_thread(_per_event_us, key.sign, inputs)
    pairs = list(zip(signatures, inputs, strict=True))
    bare_verify = await asyncio.to_thread(_per_event_us, lambda p: public.verify(*p), pairs)
    common: dict[str, Any] = {
        "unit": "µs/event",
        "baseline_name": "canonical_json alone",
        "baseline": canonical,
        "baseline_unit": "µs/event",
        "details": {
            "events": len(values),
            "mean_signed_bytes": size,
            "bare_ed25519_sign_us": bare_sign,
            "bare_ed25519_verify_us": bare_verify,
        },
    }
    return [
        Figure(
            key="signing.sign",
            name=f"sign one event (Ed25519, {len(values):,} typical events)",
            value=sign,
            limit=(
                "One Ed25519 signature (OpenSSL through `cryptography`) and the canonical"
                " JSON twice (the signing input, then the published bytes)."
            ),
            **common,
        ),
        Figure(
            key="signing.verify",
            name=f"verify one event (Ed25519, {len(values):,} typical events)",
            value=verify,
            limit=(
                "json.loads of the record, its canonical JSON again (the signing input) and"
                " one Ed25519 verification: about three signatures' worth of field work."
            ),
            **common,
        ),
    ]


# ------------------------------------------------------------ tree, knowledge, replay


async def fill_ledger(database_url: str, entries: int, chunk: int = 50_000) -> LedgerData:
    """A ledger of `entries` valid entries and their tree nodes, written by COPY."""
    await _audit_schema(database_url)
    data = LedgerData(entries)
    conn = await connect(database_url, schema="audit")
    try:
        for rows, nodes in data.chunks(chunk):
            async with conn.transaction():
                await conn.copy_records_to_table("ledger", records=rows, columns=LEDGER_COLUMNS)
                await tree.store_nodes(conn, nodes)
        await conn.execute("UPDATE counters SET last = $1 WHERE name = 'ledger'", entries - 1)
        await conn.execute("ANALYZE ledger")
        await conn.execute("ANALYZE ledger_nodes")
    finally:
        await conn.close()
    return data


def _coords(compute: Callable[[merkle.NodeGetter], list[bytes]]) -> list[tuple[int, int]]:
    wanted: list[tuple[int, int]] = []

    def record(level: int, index: int) -> bytes:
        wanted.append((level, index))
        return b"\0" * merkle.HASH_SIZE

    compute(record)
    return wanted


async def _raw_nodes(conn: asyncpg.Connection, coords: Sequence[tuple[int, int]]) -> int:
    """The same hashes a proof needs, read with plain SQL; how many rows came back."""
    leaves = [i for level, i in coords if level == 0]
    inner = [(level, i) for level, i in coords if level > 0]
    found = 0
    if leaves:
        found += len(
            await conn.fetch("SELECT leaf_hash FROM ledger WHERE idx = ANY($1::bigint[])", leaves)
        )
    if inner:
        found += len(
            await conn.fetch(
                "SELECT hash FROM ledger_nodes n JOIN unnest($1::smallint[], $2::bigint[])"
                " AS w(l, i) ON n.level = w.l AND n.idx = w.i",
                [level for level, _ in inner],
                [i for _, i in inner],
            )
        )
    return found


async def _timed(work: Awaitable[Any]) -> float:
    """Seconds `work` (a coroutine not started yet) takes to run."""
    began = time.perf_counter()
    await work
    return time.perf_counter() - began


async def ledger_query_figures(
    database_url: str, *, entries: int = 100_000, samples: int = 300, seed: int = 9
) -> list[Figure]:
    """Proofs, knowledge-as-of and full replay against a ledger of `entries` entries."""
    began = time.perf_counter()
    data = await fill_ledger(database_url, entries)
    fill_seconds = time.perf_counter() - began
    rng = random.Random(seed)
    size_label = _count(entries)
    conn = await connect(database_url, schema="audit", role="incidents_audit")
    try:
        figures = [
            await _inclusion(conn, rng, entries, samples, size_label),
            await _consistency(conn, rng, entries, samples, size_label),
            await _knowledge(conn, rng, data, samples, size_label),
            await _replay(conn, entries, size_label),
        ]
    finally:
        await conn.close()
    for figure in figures:
        figure.details["fill_seconds"] = fill_seconds
    return figures


def _count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


async def _inclusion(
    conn: asyncpg.Connection, rng: random.Random, n: int, samples: int, label: str
) -> Figure:
    served, raw = [], []
    for _ in range(samples):
        size = rng.randint(max(1, n // 2), n)
        index = rng.randrange(size)
        served.append(await _timed(tree.inclusion_proof(conn, index, size)))
        coords = _coords(functools.partial(merkle.inclusion_proof, index, size))
        raw.append(await _timed(_raw_nodes(conn, coords)))
    index, size = rng.randrange(n), n
    proof = await tree.inclusion_proof(conn, index, size)
    leaf = bytes(await conn.fetchval("SELECT leaf_hash FROM ledger WHERE idx = $1", index))
    merkle.verify_inclusion(leaf, index, size, proof, await tree.root_at(conn, size))
    return _proof_figure("proof.inclusion", f"inclusion proof at {label} entries", served, raw)


async def _consistency(
    conn: asyncpg.Connection, rng: random.Random, n: int, samples: int, label: str
) -> Figure:
    served, raw = [], []
    for _ in range(samples):
        second = rng.randint(max(1, n // 2), n)
        first = rng.randint(1, second)
        served.append(await _timed(tree.consistency_proof(conn, first, second)))
        coords = _coords(functools.partial(merkle.consistency_proof, first, second))
        raw.append(await _timed(_raw_nodes(conn, coords)))
    first = rng.randint(1, n)
    proof = await tree.consistency_proof(conn, first, n)
    merkle.verify_consistency(
        first, n, proof, await tree.root_at(conn, first), await tree.root_at(conn, n)
    )
    return _proof_figure("proof.consistency", f"consistency proof at {label} entries", served, raw)


def _proof_figure(key: str, name: str, served: list[float], raw: list[float]) -> Figure:
    lat, base = Latency.of_seconds(served), Latency.of_seconds(raw)
    return Figure(
        key=key,
        name=name + " (p50 / p99)",
        value=lat.p99,
        unit="ms",
        shown=lat.shown(),
        baseline_name="raw SQL fetch of the same nodes",
        baseline=base.p99,
        baseline_shown=base.shown(),
        target="p99 ≤ 5 ms",
        met=lat.p99 <= 5,
        limit=(
            "PostgreSQL round trips (the leaf hashes and the stored subtrees, two"
            " indexed queries of O(log n) rows); the proof algorithm runs twice in Python"
            " (once to learn which nodes, once with them), a small share. In this run the"
            f" raw fetch alone had a p99 of {base.p99:.1f} ms against {lat.p99:.1f} ms."
        ),
        details={"samples": len(served), "served": lat, "baseline": base},
    )


async def _knowledge(
    conn: asyncpg.Connection, rng: random.Random, data: LedgerData, samples: int, label: str
) -> Figure:
    candidates = data.incident_ids[: max(1, len(data.incident_ids) - 50)]
    span = (data.end - data.start).total_seconds() + 1
    served, raw = [], []
    for _ in range(samples):
        incident = rng.choice(candidates)
        as_of = data.start + timedelta(seconds=rng.uniform(0, span))

        async def query(i: str = incident, at: datetime = as_of) -> None:
            knowledge_as_of(i, await incident_entries(conn, i), at)

        async def fetch(i: str = incident) -> None:
            await conn.fetch(
                "SELECT idx, recorded_at, leaf FROM ledger WHERE incident_id = $1 AND valid"
                " ORDER BY idx",
                i,
            )

        served.append(await _timed(query()))
        raw.append(await _timed(fetch()))
    lat, base = Latency.of_seconds(served), Latency.of_seconds(raw)
    return Figure(
        key="knowledge",
        name=f"knowledge-as-of query at {label} entries (p50 / p99)",
        value=lat.p99,
        unit="ms",
        shown=lat.shown(),
        baseline_name="raw SQL fetch of the incident's leaves",
        baseline=base.p99,
        baseline_shown=base.shown(),
        target="p99 ≤ 20 ms",
        met=lat.p99 <= 20,
        limit=(
            "One indexed query (ledger_incident) and, per entry, JSON decoding and"
            " pydantic validation of the event before the pure knowledge fold. In this run"
            f" the raw fetch alone had a p99 of {base.p99:.1f} ms against {lat.p99:.1f} ms."
        ),
        details={"samples": samples, "served": lat, "baseline": base, "entries_per_incident": 8},
    )


class _TableSource:
    """The ledger table read as a `LedgerSource` (only `entries` is used by replay)."""

    def __init__(self, conn: asyncpg.Connection, page: int = 1000) -> None:
        self.conn = conn
        self.page = page

    async def entries(
        self, start: int = 0, end: int | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        position = start
        while end is None or position < end:
            rows = await self.conn.fetch(
                "SELECT idx, leaf FROM ledger WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                position,
                position + self.page,
            )
            if not rows:
                return
            yield [  # the API's base64 text, as pybase64 writes it (the server's work)
                {"index": r["idx"], "leaf": b64encode_as_string(r["leaf"])} for r in rows
            ]
            position += self.page

    async def public_key(self) -> dict[str, Any]:
        raise NotImplementedError

    async def heads(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        return None


async def _replay(conn: asyncpg.Connection, n: int, label: str, rounds: int = 2) -> Figure:
    """Full replay beside the raw read of the same leaves, alternating `rounds` times; the
    best round of each is kept (wall clock and CPU alike)."""
    elapsed = raw_elapsed = cpu = math.inf
    read = incidents = 0
    for _ in range(rounds):
        began, cpu_began = time.perf_counter(), time.process_time()
        states = await incidents_as_of(_TableSource(conn), datetime.now(UTC))
        elapsed = min(elapsed, time.perf_counter() - began)
        cpu = min(cpu, time.process_time() - cpu_began)
        broken = [s for s in states.values() if isinstance(s, str)]
        if broken:
            raise RuntimeError(f"replay could not fold {len(broken)} incidents: {broken[0]}")
        incidents = len(states)
        del states  # the next round folds with only its own states in memory
        began = time.perf_counter()
        read = 0
        for at in range(0, n, 1000):
            read += len(
                await conn.fetch(
                    "SELECT idx, leaf FROM ledger WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                    at,
                    at + 1000,
                )
            )
        raw_elapsed = min(raw_elapsed, time.perf_counter() - began)
    rate, raw_rate = n / elapsed, read / raw_elapsed
    return Figure(
        key="replay",
        name=f"full replay events/s ({label} entries)",
        value=rate,
        unit="events/s",
        baseline_name="raw read of the same leaves, pages of 1,000",
        baseline=raw_rate,
        baseline_unit="rows/s",
        target="≥ 200,000/s (issue 24)",
        met=rate >= 200_000,
        limit=(
            "Process time per event (best of several runs): the fold 3.3 µs over 100k"
            " entries (pybase64 0.4, msgspec reading the few fields the fold needs 0.96, the"
            " event's time 0.12, `incident.data_changes` and the update of the incident's"
            " fields 0.9, the loop ~0.9); asyncpg's fetch ~1 µs, the pages of base64 text"
            " this stand-in for the audit API makes ~0.35 µs. Events are not validated again"
            " (the ledger recorded only valid ones), and the cyclic garbage collector is"
            " paused during the fold. The next page is asked for before one is folded, so"
            " PostgreSQL's own time overlaps the fold. Measured and not kept (issue 24): the"
            " page read by one msgspec call (1.60 against 0.96 µs a leaf), a set of the"
            " foldable types instead of the prefix tests (3 % fewer instructions, 1-2 % of"
            " CPU: noise), the fold in a second process (pages pickled across cost 1.6 µs an"
            " entry, the 125,000 states sent back ~15 µs each). Reading over HTTP adds the"
            " JSON of each page on top."
        ),
        details={
            "events": n,
            "incidents": incidents,
            "rounds": rounds,
            "seconds": elapsed,
            "client_cpu_us_per_event": cpu / n * 1e6,  # the fold, asyncpg, the stand-in
        },
    )


__all__ = [
    "Figure",
    "Run",
    "Target",
    "anonymous_figure",
    "closed_loop",
    "e2e_figure",
    "e2e_target",
    "escalation_figure",
    "idle_cpu_figure",
    "intake_figures",
    "kafka_round_trip",
    "leaf_hash_rate",
    "ledger_append_figure",
    "ledger_query_figures",
    "open_loop",
    "percentile",
    "sha256_rate",
    "verify_figure",
]
