"""`incidents bench --org N`: the per-report costs at a company's size beside 12 people.

Issue 21: triage's decision, intake's access check and audit's knowledge query must
not grow with the organisation. Each figure runs the services' own code on a
generated organisation (`tooling.bench.orgchart`: units with a president, an HR
head and HR case handlers, six management levels) of N people and, in the same run,
on the seed directory (13 people: the issue's "12"), for the seed case: a report
naming a team lead deep in the first unit, by one of his employees (named), so his
whole line (five managers up to the CEO) must be excluded.

- triage: `Triage._decision` (the named reporter matched among the candidates, then
  the pure `decide`) on the `DirectoryProjection` folded from the
  `directory.people.imported.v1` events of N people (500 each, as an import or the
  seed records them); without the database round trips of the
  service, which do not depend on the organisation. The decision is checked: the
  accused and his line excluded, nobody of them asked.
- intake: `facts_of` + `conflicted`, the directory part of every access decision
  (one recursive query for the implicated people's chains, then the conflict rules),
  on intake's schema with N people written by COPY (the bulk import path of
  `incidents directory import` is another part of the issue).
- audit: the knowledge query's work: the auditor's roles from the ledger, the
  incident's entries, the conflict check (`services.audit.conflicts.excluded`, chains
  from the directory events in the ledger) and the knowledge fold, on a ledger that
  holds the directory events of N people (written by COPY; the database derives
  `ledger_people` from them as when audit appends them).
- memory: the resident size of a process that holds triage's projection of N people
  (folded from the stored event bodies, as triage does from `directory_log`), against
  the same with 13. Intake, escalation and audit keep the directory in PostgreSQL (the
  people table, `people_addresses`, the ledger), none in memory.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg

import services
from services.audit.conflicts import excluded
from services.audit.ledger import (
    LEDGER_COLUMNS,
    incident_entries,
    roles_in_ledger,
)
from services.domain.access import conflicted
from services.domain.directory import DirectoryFile, Person
from services.domain.directory_sync import event_chunks
from services.domain.envelope import Envelope, canonical_json, utc_rfc3339
from services.domain.events import (
    MAX_PEOPLE_PER_EVENT,
    ReportSubmitted,
    make_event,
    parse_envelope,
)
from services.domain.knowledge import knowledge_as_of
from services.domain.org import DirectoryProjection
from services.domain.policy import Policy
from services.domain.triage import TriageDecision
from services.infra.config import load_yaml_model
from services.infra.crypto import Pseudonyms
from services.infra.db import connect, migrate_service
from services.intake.directory import people_event
from services.intake.routing import facts_of
from services.triage.handlers import Triage
from tooling.bench.orgchart import SeedCase, generate, seed_case
from tooling.bench.report import Figure, Latency

DATA = Path(services.__file__).parent / "data"
SERVICES = Path(services.__file__).parent
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
BASELINE = 13
"""The seed directory's size: the issue's "12 people" (the seed has one more admin)."""
CATEGORY = "sexual_misconduct"
TARGET = 1.5
ONE_UNIT = 1013
"""The seed core and one full unit: the seed case as deep as at N, in a small org."""


def policy() -> Policy:
    return load_yaml_model(DATA / "policy.yaml", Policy)


def directory_events(people: Sequence[Person]) -> list[Envelope]:
    """The people's `directory.people.imported.v1` events, as intake's import (and its
    seed) records them: one per run of at most 500."""
    runs = event_chunks(people, max_people=MAX_PEOPLE_PER_EVENT)
    return [
        people_event(
            run,
            "directory-import:bench",
            "/services/intake",
            "system:directory-seed",
            T0 + timedelta(microseconds=i),
        )
        for i, run in enumerate(runs)
    ]


def submitted(case: SeedCase, incident: str, pseudonyms: Pseudonyms | None = None) -> Envelope:
    """The seed case's report: the accused by id, a named reporter (a pseudonym)."""
    data = ReportSubmitted.model_validate(
        {
            "category": CATEGORY,
            "summary": "My team lead assaulted me",
            "description": "On the work trip, after dinner...",
            "accused": [case.accused],
            "reporter": pseudonyms.of(incident, case.reporter) if pseudonyms else None,
            "report_digest": "sha256:" + "0" * 64,
        }
    )
    return make_event(
        "incident.report.submitted.v1",
        subject=incident,
        data=data,
        source="/services/intake",
        time=T0,
        actor="system:bench",
    )


async def _timed(work: Callable[[], Awaitable[Any]]) -> float:
    began = time.perf_counter()
    await work()
    return time.perf_counter() - began


def _figure(
    key: str, name: str, at_n: Latency, at_12: Latency, n: int, limit: str, **details: Any
) -> Figure:
    ratio = at_n.p99 / at_12.p99 if at_12.p99 else float("inf")
    return Figure(
        key=key,
        name=f"{name} at {n:,} people (p50 / p99)",
        value=at_n.p99,
        unit="ms",
        shown=at_n.shown(),
        baseline_name=f"{BASELINE} people, same run",
        baseline=at_12.p99,
        baseline_shown=at_12.shown(),
        target=f"p99 ≤ {TARGET}x the {BASELINE}-people p99",
        met=ratio <= TARGET,
        limit=limit,
        details={
            "people": n,
            "at_n": at_n,
            "baseline": at_12,
            "ratio": ratio,
            "one_unit_people": ONE_UNIT,
            **details,
        },
    )


# -- triage ------------------------------------------------------------------------------


Probe = Callable[[], Awaitable[Any]]
"""One sample of a figure's work (a decision, an access check, a knowledge query)."""


async def interleaved(probes: Sequence[Probe], samples: int) -> list[Latency]:
    """Each probe's latency, the probes taking turns sample after sample, so a burst
    of load from elsewhere on the machine lands on every size alike."""
    for _ in range(20):  # warm plans, caches and code paths
        for probe in probes:
            await probe()
    times: list[list[float]] = [[] for _ in probes]
    for _ in range(samples):
        for probe, spent in zip(probes, times, strict=True):
            spent.append(await _timed(probe))
    return [Latency.of_seconds(spent) for spent in times]


class TriageProbe:
    """Decides on the seed case, a new incident each call; `spent` is the decision's
    own time (the report is made beforehand), `detail()` what it decided."""

    def __init__(self, people: Sequence[Person]) -> None:
        self.case = seed_case(list(people))
        self.projection = DirectoryProjection()
        events = directory_events(people)
        began = time.perf_counter()
        for seq, envelope in enumerate(events, start=1):
            self.projection.apply(envelope, seq)
        seconds = time.perf_counter() - began
        self.fold_rate = len(events) / seconds if seconds else None
        self.rules = policy()
        self.triage = Triage(cast(Any, None), self.rules, Pseudonyms(os.urandom(32)))
        self.triage.directory = self.projection
        self.decision: TriageDecision | None = None
        self.spent = 0.0

    async def __call__(self) -> None:
        incident = str(uuid.uuid4())
        report = submitted(self.case, incident, self.triage.pseudonyms)
        data = ReportSubmitted.model_validate(report.data)
        began = time.perf_counter()
        self.decision = self.triage._decision(incident, data, self.triage.org, self.rules, T0)
        self.spent = time.perf_counter() - began

    def detail(self) -> dict[str, Any]:
        made = self.decision
        assert made is not None
        line = {self.case.accused, *self.case.line}
        return {
            "accused": self.case.accused,
            "line_excluded": sorted(line & made.excluded_ids),
            "first_recipients": list(made.first_recipients),
            "routes_correctly": line <= made.excluded_ids and not (made.recipients & line),
            "fold_events_per_s": self.fold_rate,
        }


def triage_figure(n: int, samples: int) -> Figure:
    probes = [TriageProbe(generate(size)) for size in (BASELINE, ONE_UNIT, n)]
    spent: list[list[float]] = [[] for _ in probes]

    async def run() -> None:
        for _ in range(20):
            for probe in probes:
                await probe()
        for _ in range(samples):
            for probe, times in zip(probes, spent, strict=True):
                await probe()
                times.append(probe.spent)

    gc.freeze()  # as triage does after folding a large directory
    try:
        asyncio.run(run())
    finally:
        gc.unfreeze()
    at_12, one_unit, at_n = (Latency.of_seconds(times) for times in spent)
    detail = probes[2].detail()
    figure = _figure(
        "org.triage",
        "triage decision, named seed-case report",
        at_n,
        at_12,
        n,
        "In process: Triage._decision (reporter among the candidates, then decide) on the"
        " projection, the three sizes taking turns; the service's database round trips"
        " (the same at any size) are left out. The seed case must route correctly: the"
        " accused and his line excluded.",
        decision=detail,
        baseline_decision=probes[0].detail(),
        one_unit=one_unit,
    )
    if not detail["routes_correctly"]:
        figure.met = False
    return figure


# -- intake --------------------------------------------------------------------------------


class _Reporter:
    """The key store's `reporter_of`, answering the seed case's reporter."""

    def __init__(self, reporter: str) -> None:
        self.reporter = reporter

    async def reporter_of(self, conn: Any, incident_id: str, events: Any) -> str | None:
        return self.reporter


async def intake_probe(conn: asyncpg.Connection, people: Sequence[Person]) -> Probe:
    """Intake's schema with `people` in it (COPY); an access check of the seed case."""
    case = seed_case(list(people))
    await conn.copy_records_to_table(
        "people",
        records=[(p.id, p.name, p.email, p.unit, p.manager, p.roles) for p in people],
        columns=["person_id", "name", "email", "unit", "manager_id", "roles"],
    )
    await conn.execute("ANALYZE people")
    rules = policy()
    asking = [p.id for p in people if p.unit == case.unit and "hr_case_handler" in p.roles][:1]
    keys = cast(Any, _Reporter(case.reporter))
    incident = str(uuid.uuid4())
    events = [submitted(case, incident)]

    async def check() -> None:
        facts = await facts_of(conn, incident, events, keys, people=asking)
        conflicted(
            facts.found, facts.reporter, facts.org, rules, category=CATEGORY, candidates=asking
        )

    return check


async def _on_databases(
    create_db: Callable[[str], str],
    prefix: str,
    schema: str,
    n: int,
    samples: int,
    make: Callable[[asyncpg.Connection, Sequence[Person]], Awaitable[Probe]],
) -> list[Latency]:
    """A database each for 13, 1,013 and n people, probed in turns."""
    conns: list[asyncpg.Connection] = []
    try:
        probes = []
        for size in (BASELINE, ONE_UNIT, n):
            url = create_db(prefix)
            await migrate_service(url, schema, SERVICES / schema / "migrations")
            conns.append(await connect(url, schema=schema))
            probes.append(await make(conns[-1], generate(size)))
        return await interleaved(probes, samples)
    finally:
        for conn in conns:
            await conn.close()


async def intake_figure(create_db: Callable[[str], str], n: int, samples: int) -> Figure:
    at_12, one_unit, at_n = await _on_databases(
        create_db, "bench_org_intake", "intake", n, samples, intake_probe
    )
    return _figure(
        "org.intake",
        "intake access check (directory part)",
        at_n,
        at_12,
        n,
        "facts_of (one recursive query over the people table for the implicated and the"
        " asking person's chains) and the conflict rules, for an HR case handler of the"
        " accused's unit, the three sizes taking turns; the routing-table read and the key"
        " store are left out.",
        one_unit=one_unit,
    )


# -- audit ---------------------------------------------------------------------------------


def _ledger_rows(envelopes: Sequence[Envelope], topic_of: Callable[[Envelope], str]) -> list[Any]:
    rows = []
    recorded = T0
    for index, envelope in enumerate(envelopes):
        event = json.loads(envelope.to_bytes())
        leaf = canonical_json(
            {
                "v": 1,
                "index": index,
                "recorded_at": utc_rfc3339(recorded),
                "topic": topic_of(envelope),
                "partition": 0,
                "offset": index,
                "event": event,
            }
        )
        rows.append(
            (
                index,
                recorded,
                topic_of(envelope),
                0,
                index,
                f"{topic_of(envelope)}:{envelope.id}",
                uuid.UUID(envelope.id),
                envelope.subject,
                envelope.type,
                None,
                True,
                leaf,
                hashlib.sha256(b"\x00" + leaf).digest(),
            )
        )
    return rows


async def audit_probe(conn: asyncpg.Connection, people: Sequence[Person]) -> Probe:
    """A ledger of the people's directory events and the seed case's report (COPY);
    the knowledge query's work on it."""
    case = seed_case(list(people))
    incident = str(uuid.uuid4())
    report = submitted(case, incident)
    envelopes = [*directory_events(people), report]
    rows = _ledger_rows(
        envelopes, lambda e: "incident.reports" if e.subject == incident else "directory.changes"
    )
    # the database fills ledger_people from these rows, as when audit appends them
    await conn.copy_records_to_table("ledger", records=rows, columns=LEDGER_COLUMNS)
    await conn.execute("ANALYZE ledger")
    await conn.execute("ANALYZE ledger_people")
    rules = policy()
    seed = load_yaml_model(DATA / "directory.yaml", DirectoryFile)
    keys = cast(Any, _Reporter(case.reporter))

    async def knowledge() -> None:
        roles = await roles_in_ledger(conn, "p-audit")
        assert roles is not None and "auditor" in roles
        entries = await incident_entries(conn, incident)
        out = await excluded(conn, keys, rules, seed, incident, entries)
        assert case.accused in out
        knowledge_as_of(incident, entries, T0 + timedelta(days=1))

    return knowledge


async def audit_figure(create_db: Callable[[str], str], n: int, samples: int) -> Figure:
    at_12, one_unit, at_n = await _on_databases(
        create_db, "bench_org_audit", "audit", n, samples, audit_probe
    )
    return _figure(
        "org.audit",
        "audit knowledge query",
        at_n,
        at_12,
        n,
        "The auditor's roles from the ledger (person_data), the incident's entries, the"
        " conflict check (the accused's chain from the directory events in the ledger)"
        " and the knowledge fold, the three sizes taking turns; HTTP and the recorded"
        " read are left out. The conflict check reads the accused's whole line in one"
        " statement (ledger.line_data), each person still read and folded: 2 managers"
        " in the seed case at 13 people, 5 in the generated one (see one_unit: as deep,"
        " 1,013 people).",
        one_unit=one_unit,
    )


# -- memory --------------------------------------------------------------------------------


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def projection_rss(bodies: Path) -> dict[str, float]:
    """In this process: MiB resident before and after folding the event bodies of
    `bodies` (one JSON event a line), read one at a time as from `directory_log`."""
    before = _rss_kib()
    projection = DirectoryProjection()
    with bodies.open("rb") as lines:
        for seq, body in enumerate(lines, start=1):
            projection.apply(parse_envelope(body.rstrip(b"\n")), seq)
    return {"before_mib": before / 1024, "after_mib": _rss_kib() / 1024, "people": len(projection)}


def _rss_in_child(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="incidents-bench-org-") as folder:
        bodies = Path(folder) / "directory.jsonl"
        with bodies.open("wb") as out:
            for envelope in directory_events(generate(n)):
                out.write(envelope.to_bytes() + b"\n")
        done = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "tooling.bench.orgscale", str(bodies)],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
    return cast(dict[str, float], json.loads(done.stdout.strip().splitlines()[-1]))


def memory_figure(n: int) -> Figure:
    small, large = _rss_in_child(BASELINE), _rss_in_child(n)
    limit_mib = 2 * small["after_mib"] + 150
    return Figure(
        key="org.memory",
        name=f"triage's resident size with its directory of {n:,} people",
        value=large["after_mib"],
        unit="MiB",
        baseline_name=f"{BASELINE} people",
        baseline=small["after_mib"],
        target="≤ 2x the 12-people size + 150 MB",
        met=large["after_mib"] <= limit_mib,
        limit=(
            "A process with triage's imports holding the projection (folded from the stored"
            " event bodies, which are then dropped), not the running service. Intake,"
            " escalation and audit hold no directory in memory (PostgreSQL does)."
        ),
        details={"at_n": large, "baseline": small, "limit_mib": limit_mib},
    )


async def org_figures(create_db: Callable[[str], str], n: int, samples: int) -> list[Figure]:
    """Every figure of `--org N` (each with its 13-people baseline)."""
    figures = [await asyncio.to_thread(triage_figure, n, samples)]
    figures.append(await intake_figure(create_db, n, samples))
    figures.append(await audit_figure(create_db, n, samples))
    figures.append(await asyncio.to_thread(memory_figure, n))
    return figures


if __name__ == "__main__":  # the memory figure's child: `python -m tooling.bench.orgscale N`
    print(json.dumps(projection_rss(Path(sys.argv[1]))))
