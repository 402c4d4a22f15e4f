"""`incidents bench --org N`, directory sync figures (issue 21): import, restart, PATCH.

On a private stack (intake, triage and audit as processes, their own Tansu, a fresh
database: `tooling.bench.stack`):

- import: N generated people (`tooling.bench.orgchart`) through the import path of
  `incidents directory import` (`services.intake.directory_import`, run here against
  the stack's intake schema, signing as intake), timed until the events are recorded,
  then until triage's directory log and audit's ledger hold every event it recorded
  (one `directory.people.imported.v1` per 500 people).
  Baseline: COPY of the same rows into a bare table by plain asyncpg, same database.
- restart: the three services stopped and started again on that directory, seconds
  until each answers /readyz. Baseline: the same restart of a fresh stack's seed
  directory is not repeated; the figure is the start of the services alone.
- PATCH: SCIM PATCHes of one person's manager (`/scim/v2/Users/<id>`, the HR system's
  credential) while other changes arrive at 1,000 people a second (set-based imports
  from a process of their own, paced by the clock: what is due every 10 ms); per
  PATCH, the time from sending it until triage's directory log and audit's ledger hold
  its event. Baseline: the same PATCH with no other changes.
- CPU: user + system CPU of every part (services, broker, the importing process, the
  PostgreSQL backends of the stack's database) from the import's start until triage
  and audit caught up, per person imported: where the 2 CPUs go.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from services.domain.directory import Person
from services.domain.directory_sync import ENTERPRISE_SCHEMA
from services.domain.events import PeopleImported, PersonUpserted
from services.infra.db import create_pool, migrate_service
from services.intake.app import MIGRATIONS
from services.intake.directory_import import import_people
from tooling.bench.orgchart import generate
from tooling.bench.report import Figure, Latency
from tooling.bench.stack import BenchStack
from tooling.localstack import stop_process

SYNCED = ("intake", "triage", "audit")
IMPORT_TARGET = 5000.0
RESTART_TARGET = 20.0
PATCH_TARGET_MS = 1000.0
PATCH_WAIT = 15.0
"""Seconds a PATCH's event is waited for in triage and audit."""
HRIS = {"authorization": "Bearer dev-hris-token", "content-type": "application/scim+json"}
DIRECTORY_EVENTS = [PersonUpserted.TYPE, PeopleImported.TYPE]


async def _count(conn: asyncpg.Connection) -> tuple[int, int]:
    """Directory events in triage's directory log and in audit's ledger."""
    triage = await conn.fetchval("SELECT count(*) FROM triage.directory_log")
    audit = await conn.fetchval(
        "SELECT count(*) FROM audit.ledger WHERE event_type = ANY($1::text[])", DIRECTORY_EVENTS
    )
    return int(triage), int(audit)


async def _caught_up(conn: asyncpg.Connection, want: int, within: float) -> dict[str, float]:
    """Seconds until triage and audit each hold `want` directory events (NaN: not
    `within` that many seconds)."""
    began = time.perf_counter()
    done: dict[str, float] = {}
    while len(done) < 2 and time.perf_counter() - began < within:
        triage, audit = await _count(conn)
        for name, count in (("triage", triage), ("audit", audit)):
            if count >= want and name not in done:
                done[name] = time.perf_counter() - began
        await asyncio.sleep(0.25)
    return {name: done.get(name, float("nan")) for name in ("triage", "audit")}


async def _copy_baseline(database_url: str, people: Sequence[Person]) -> float:
    """Seconds to COPY the same rows into a bare table by plain asyncpg."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE TABLE bench_people_copy (person_id text PRIMARY KEY, name text,"
            " email text, unit text, manager_id text, roles text[])"
        )
        began = time.perf_counter()
        await conn.copy_records_to_table(
            "bench_people_copy",
            records=[(p.id, p.name, p.email, p.unit, p.manager, p.roles) for p in people],
        )
        return time.perf_counter() - began
    finally:
        await conn.close()


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command: state is field 3, utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cpu_of(conn: asyncpg.Connection, stack: BenchStack) -> dict[str, dict[int, float]]:
    """CPU seconds so far of each part of the import, by process: the services, the
    broker, this process (the import itself), and the PostgreSQL backends serving the
    stack's database (those of other databases on the shared server are left out)."""
    parts: dict[str, list[int]] = {name: [proc.pid] for name, proc in stack.procs.items()}
    if stack.broker is not None and stack.broker.process is not None:
        parts["broker"] = [stack.broker.process.pid]
    parts["import (bench process)"] = [os.getpid()]
    parts["postgresql (backends)"] = [
        int(r["pid"])
        for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        )
    ]
    return {name: {pid: _cpu_seconds(pid) for pid in pids} for name, pids in parts.items()}


def _cpu_per_person(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], people: int
) -> dict[str, float]:
    """CPU µs per person of each part between two `_cpu_of` (a backend seen only after
    started meanwhile: counted from 0; one gone meanwhile is lost: a lower bound)."""
    used: dict[str, float] = {}
    for name, pids in after.items():
        seconds = sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
        used[name] = round(seconds / people * 1e6, 1)
    used["total"] = round(sum(used.values()), 1)
    return used


async def _restart(stack: BenchStack) -> float:
    for name in reversed(list(stack.procs)):
        stop_process(stack.procs[name])
    stack.procs.clear()
    return await asyncio.to_thread(stack.start, 180.0, SYNCED)


async def _patch_latencies(
    stack: BenchStack,
    pool: asyncpg.Pool,
    people: Sequence[Person],
    samples: int,
    background_rate: int,
) -> tuple[Latency, Latency, float, dict[str, int]]:
    """Per PATCH (ms): until triage has its event, until audit has it; the rate of other
    changes that arrived meanwhile (people/s); how many PATCHes each had not recorded
    within PATCH_WAIT (counted as PATCH_WAIT)."""
    subject = people[-1]
    managers = [p.id for p in people if p.unit == subject.unit and p.id != subject.id][:2]
    context = multiprocessing.get_context("spawn")
    stop, ready = context.Event(), context.Event()
    changed = context.Value("q", 0)
    load = None
    if background_rate:
        spec = _Load(
            stack.database_url, stack.topic_prefix, len(people), subject.unit, background_rate
        )
        load = context.Process(
            target=_background_process, args=(spec, stop, ready, changed), daemon=True
        )
        load.start()
        await asyncio.to_thread(ready.wait, 120.0)

    triage_ms: list[float] = []
    audit_ms: list[float] = []
    missed = {"triage": 0, "audit": 0}
    began_all = time.perf_counter()
    changed_before = changed.value
    try:
        async with httpx.AsyncClient(base_url=stack.url("intake"), timeout=30) as http:
            for n in range(samples):
                manager = managers[n % len(managers)]
                patch = {
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [
                        {
                            "op": "replace",
                            "path": f"{ENTERPRISE_SCHEMA}:manager.value",
                            "value": manager,
                        }
                    ],
                }
                sent = time.time()
                answer = await http.patch(f"/scim/v2/Users/{subject.id}", headers=HRIS, json=patch)
                answer.raise_for_status()
                async with pool.acquire() as conn:
                    event_id = await conn.fetchval(
                        "SELECT event_id FROM intake.events WHERE stream_id = $1"
                        " ORDER BY version DESC LIMIT 1",
                        f"directory:{subject.id}",
                    )
                    seen = await _seen_at(conn, event_id, within=PATCH_WAIT)
                for name, into in (("triage", triage_ms), ("audit", audit_ms)):
                    at = seen[name]
                    missed[name] += at != at
                    into.append((at - sent) * 1000 if at == at else PATCH_WAIT * 1000)
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        rate = (changed.value - changed_before) / (time.perf_counter() - began_all)
        if load is not None:
            await asyncio.to_thread(load.join, 60.0)
            if load.is_alive():
                load.kill()
    return (
        Latency.of_seconds([ms / 1000 for ms in triage_ms]),
        Latency.of_seconds([ms / 1000 for ms in audit_ms]),
        rate,
        missed,
    )


@dataclass(frozen=True)
class _Load:
    """The other changes of the PATCH figure: `rate` people/s of a generated org of
    `n` people, outside `spared_unit`, into the stack's database."""

    database_url: str
    topic_prefix: str
    n: int
    spared_unit: str | None
    rate: int


def _background_process(load: _Load, stop: Any, ready: Any, changed: Any) -> None:
    """The other changes, in a process of their own (so their signing and statements
    neither share this process's CPU with the PATCHes nor delay their sending)."""
    asyncio.run(_background_load(load, stop, ready, changed))


async def _background_load(load: _Load, stop: Any, ready: Any, changed: Any) -> None:
    """Set-based imports of people outside the spared unit (a new name each time),
    paced by the clock: each round imports what is due at the rate since the start (at
    most a second's worth), so a slow round is made up by the next instead of lowering
    the rate. One import at a time: they queue on the directory's write lock anyway."""
    rate = load.rate
    people = generate(load.n)
    others = [p for p in people[-20_000:] if p.unit != load.spared_unit] or people
    pool = await create_pool(load.database_url, schema="intake", max_size=2)
    try:
        ready.set()
        began, done, step, round_ = time.perf_counter(), 0, 0, 0
        while not stop.is_set():
            due = min(int(rate * (time.perf_counter() - began)) - done, rate)
            if due < rate // 100:
                await asyncio.sleep(0.01)
                continue
            round_ += 1
            chunk = [others[(step + i) % len(others)] for i in range(due)]
            step = (step + due) % len(others)
            moved = [p.model_copy(update={"name": f"{p.name} ({round_})"}) for p in chunk]
            result = await import_people(
                pool,
                moved,
                source="/services/intake",
                actor="system:hris",
                topic_prefix=load.topic_prefix,
                check=False,
            )
            done += due
            with changed.get_lock():
                changed.value += result.changed + result.added
    finally:
        await pool.close()


async def _seen_at(conn: asyncpg.Connection, event_id: Any, within: float) -> dict[str, float]:
    """Epoch seconds at which triage and audit recorded the event (their own clocks:
    the database's, on this machine)."""
    began = time.perf_counter()
    seen: dict[str, float] = {}
    while len(seen) < 2 and time.perf_counter() - began < within:
        for name, sql in (
            ("triage", "SELECT recorded_at FROM triage.directory_log WHERE event_id = $1"),
            ("audit", "SELECT recorded_at FROM audit.ledger WHERE event_id = $1"),
        ):
            if name not in seen:
                at = await conn.fetchval(sql, event_id)
                if at is not None:
                    seen[name] = at.timestamp()
        if len(seen) < 2:
            await asyncio.sleep(0.005)
    # not seen in time: counted as `within` (a lower bound), and as missed
    return {name: seen.get(name, float("nan")) for name in ("triage", "audit")}


async def sync_figures(
    create_db: Callable[[str], str], logs: Path, n: int, samples: int = 50
) -> list[Figure]:
    """The import, restart and PATCH figures at `n` people."""
    await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
    stack = BenchStack(logs, create_db("bench_sync"), topic_prefix="sync.")
    people = generate(n)
    try:
        await asyncio.to_thread(stack.start, 120.0, SYNCED)
        await migrate_service(stack.database_url, "intake", MIGRATIONS)
        pool = await create_pool(stack.database_url, schema="intake", max_size=4)
        try:
            async with pool.acquire() as conn:
                before = await _count(conn)
                cpu_before = await _cpu_of(conn, stack)
            began = time.perf_counter()
            result = await import_people(
                pool,
                people,
                source="/services/intake",
                actor="system:directory-import",
                topic_prefix=stack.topic_prefix,
            )
            recorded = time.perf_counter() - began
            async with pool.acquire() as conn:
                caught = await _caught_up(conn, before[0] + result.events, 900)
                cpu = _cpu_per_person(cpu_before, await _cpu_of(conn, stack), n)
            total = recorded + max(caught.values())
            load = os.getloadavg()
            copy_seconds = await _copy_baseline(stack.database_url, people)
            restart = await _restart(stack)
            quiet = await _patch_latencies(stack, pool, people, max(samples // 5, 5), 0)
            busy = await _patch_latencies(stack, pool, people, samples, 1000)
        finally:
            await pool.close()
    finally:
        await asyncio.to_thread(stack.stop)
    end_to_end = n / total if total == total else float("nan")  # NaN: not caught up
    worst = max(busy[0].p99, busy[1].p99)
    return [
        Figure(
            key="org.import",
            name=f"directory import of {n:,} people, end to end (triage and audit caught up)",
            value=end_to_end,
            unit="people/s",
            shown=f"{end_to_end:,.0f} people/s (recorded {n / recorded:,.0f}/s)",
            baseline_name="COPY of the same rows, plain asyncpg",
            baseline=n / copy_seconds,
            baseline_shown=f"{n / copy_seconds:,.0f} rows/s",
            target=f"≥ {IMPORT_TARGET:,.0f} people/s",
            met=end_to_end >= IMPORT_TARGET,
            limit="import_people (2,000 people a transaction: one event per 500 people"
            " signed, outbox, people and names),"
            " then triage's directory_log and audit's ledger polled until they hold every"
            " event; the baseline writes rows only (no events, no signatures, no consumers).",
            details={
                "people": n,
                "added": result.added,
                "changed": result.changed,
                "recorded_s": recorded,
                "caught_up_s": caught,
                "copy_s": copy_seconds,
                "cpu_us_per_person": cpu,
                "load_average_1m": load[0],
            },
        ),
        Figure(
            key="org.import_cpu",
            name=f"CPU per imported person, every part, import of {n:,} (µs/person)",
            value=cpu["total"],
            unit="µs",
            shown=", ".join(f"{k} {v:,.0f}" for k, v in cpu.items()),
            baseline_name="2 CPUs' ceiling: people/s if nothing else ran",
            baseline_shown=(
                f"{(os.cpu_count() or 1) * 1e6 / cpu['total']:,.0f} people/s"
                if cpu["total"]
                else "-"
            ),
            target=f"≤ {(os.cpu_count() or 1) * 1e6 / IMPORT_TARGET:,.0f} µs for"
            f" {IMPORT_TARGET:,.0f}/s on {os.cpu_count()} CPUs",
            met=cpu["total"] * IMPORT_TARGET <= (os.cpu_count() or 1) * 1e6,
            limit="user + system CPU of each process from the import's start until triage and"
            " audit caught up (/proc/<pid>/stat), divided by the people imported; postgresql:"
            " the backends of the stack's database (WAL writer and checkpointer left out).",
            details={"cpu_us_per_person": cpu, "load_average_1m": load[0]},
        ),
        Figure(
            key="org.restart",
            name=f"restart of intake, triage and audit with {n:,} people (until /readyz)",
            value=restart,
            unit="s",
            target=f"≤ {RESTART_TARGET:.0f} s",
            met=restart <= RESTART_TARGET,
            limit="processes stopped and started again over the imported directory.",
        ),
        Figure(
            key="org.patch",
            name=f"SCIM PATCH of a manager to triage and audit at {n:,} people, with"
            f" {busy[2]:,.0f} other changes/s (p50 / p99)",
            value=worst,
            unit="ms",
            shown=f"triage {busy[0].shown()}, audit {busy[1].shown()}",
            baseline_name="the same PATCH with no other changes",
            baseline=max(quiet[0].p99, quiet[1].p99),
            baseline_shown=f"triage {quiet[0].shown()}, audit {quiet[1].shown()}",
            target=f"p99 ≤ {PATCH_TARGET_MS:,.0f} ms",
            met=worst <= PATCH_TARGET_MS,
            limit="sent -> recorded_at in triage's directory_log and audit's ledger (the"
            " database clock); other changes are set-based imports of what is due at the"
            " rate, from a process of their own.",
            details={
                "background_rate": busy[2],
                "samples": samples,
                "missed_busy": busy[3],
                "missed_quiet": quiet[3],
            },
        ),
    ]
