"""`incidents bench` figures of the console (#10): the auditor's pages at size.

A ledger of `incidents` synthetic incidents (8 events each, by COPY) and one incident of
`views` views, appended the way audit ingests records. Measured, each beside a raw
baseline from the same run:

- `console.index`: folding the ledger into the console index (entries/s), beside reading
  the same entries' leaves;
- `console.list`: the first list page (keyset query, filter menus, rendered HTML), beside
  the bare keyset query;
- `console.incident`: the page of the big incident (its entries, knowledge, state, chart,
  timeline, rendered HTML) with the verified badge cached, beside fetching its leaves;
- `console.badge`: the verified badge of the big incident (`export_bundle` over the
  database: every leaf and inclusion proof checked against the signed head), beside
  fetching its leaves.

The work is the pages' own functions, called in this process on one connection, so the
figures leave out HTTP and the login check (one indexed query each).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord

from services.audit import tree
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.ledger import append_records, incident_entries
from services.audit.ui import as_of_view, timeline_rows
from services.audit.ui_evidence import Evidence, evidence_of
from services.audit.ui_index import BATCH, STATUSES, Filters, facets, index_once, list_page
from services.console.web import Console, templates
from services.domain.events import make_event
from services.infra.db import connect
from tooling.bench.figures import fill_ledger
from tooling.bench.report import Figure, Latency

BIG = "bench-console-big-0001"
PER_INCIDENT = 8
"""Events per synthetic incident (the bench generator's life of an incident)."""
DIGEST = "sha256:" + "cd" * 32


def _record(index: int, kind: str, data: dict[str, Any], actor: str) -> ConsumerRecord:
    value = make_event(
        kind,
        subject=BIG,
        data=data,
        source="/tooling/bench",
        time=datetime.now(UTC),
        actor=actor,
        traceparent=f"00-{index + 1:032x}-{index + 1:016x}-01",
    ).to_bytes()
    return ConsumerRecord(
        topic="incident.activity",
        partition=0,
        offset=index,
        timestamp=0,
        timestamp_type=0,
        key=BIG.encode(),
        value=value,
        checksum=None,
        serialized_key_size=len(BIG),
        serialized_value_size=len(value),
        headers=(),
    )


def big_incident(views: int) -> list[ConsumerRecord]:
    """A report seen `views` times, never acknowledged, whose reporter clock was breached.

    Its summary and description contain `SECRET-`, which no auditor page may show.
    """
    past = datetime.now(UTC) - timedelta(hours=2)
    records = [
        _record(
            0,
            "incident.report.submitted.v1",
            {
                "category": "fraud",
                "summary": "SECRET-SUMMARY do not show",
                "description": "SECRET-DESCRIPTION do not show",
                "report_digest": DIGEST,
            },
            "reporter:anonymous",
        ),
        _record(
            1,
            "incident.triaged.v1",
            {
                "category": "fraud",
                "severity": "critical",
                "policy_version": "bench",
                "chain": [
                    {
                        "level": 1,
                        "role": "hr_case_handler",
                        "recipients": ["p-chen"],
                        "acknowledge_within": 60,
                    }
                ],
                "deadlines": {"level_1_acknowledge": (past + timedelta(minutes=1)).isoformat()},
            },
            "system:triage",
        ),
        _record(
            2,
            "incident.notified.v1",
            {"principal": "p-chen", "channel": "log", "level": 1, "report_digest": DIGEST},
            "system:triage",
        ),
    ]
    for i in range(views):
        who = "p-chen" if i % 2 else "p-zhou"
        records.append(
            _record(3 + i, "incident.viewed.v1", {"principal": who, "report_digest": DIGEST}, who)
        )
    records.append(
        _record(
            3 + views,
            "incident.deadline.breached.v1",
            {"clock": "reporter_acknowledgement", "due_at": past.isoformat()},
            "system:escalation",
        )
    )
    return records


async def _sign_head(conn: asyncpg.Connection, signer: NoteSigner) -> None:
    """A signed head over the whole ledger, as audit's signer would store it."""
    size = int(await conn.fetchval("SELECT last + 1 FROM counters WHERE name = 'ledger'"))
    root = await tree.root_at(conn, size)
    note = sign_checkpoint(signer, Checkpoint(signer.name, size, root))
    await conn.execute(
        "INSERT INTO ledger_heads (tree_size, root_hash, signed_at, key_id, checkpoint)"
        " VALUES ($1, $2, $3, $4, $5)",
        size,
        root,
        datetime.now(UTC),
        signer.key_id,
        note,
    )


async def _samples(work: Callable[[], Awaitable[Any]], samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        began = time.perf_counter()
        await work()
        out.append(time.perf_counter() - began)
    return out


def _latency_figure(
    key: str, name: str, served: list[float], raw: list[float], raw_name: str, limit: str
) -> Figure:
    lat, base = Latency.of_seconds(served), Latency.of_seconds(raw)
    return Figure(
        key=key,
        name=name,
        value=lat.p99,
        unit="ms",
        shown=lat.shown(),
        baseline_name=raw_name,
        baseline=base.p99,
        baseline_shown=base.shown(),
        limit=limit,
        details={"samples": len(served), "served": lat, "baseline": base},
    )


async def console_figures(
    database_url: str, *, incidents: int = 10_000, views: int = 2_000, samples: int = 20
) -> list[Figure]:
    """The console's figures over a fresh ledger in `database_url`."""
    await fill_ledger(database_url, incidents * PER_INCIDENT)
    conn = await connect(database_url, schema="audit", role="incidents_audit")
    try:
        records = big_incident(views)
        for at in range(0, len(records), 500):
            async with conn.transaction():
                await append_records(conn, records[at : at + 500])
        total = int(await conn.fetchval("SELECT last + 1 FROM counters WHERE name = 'ledger'"))
        began = time.perf_counter()
        while True:
            async with conn.transaction():
                if await index_once(conn) < BATCH:
                    break
        fold = time.perf_counter() - began
        began = time.perf_counter()
        for start in range(0, total, 1000):
            for row in await conn.fetch(
                "SELECT leaf FROM ledger WHERE idx >= $1 AND idx < $2", start, start + 1000
            ):
                bytes(row["leaf"]).decode()
        read = time.perf_counter() - began
        signer = NoteSigner.generate("bench.example/ledger")
        await _sign_head(conn, signer)
        figures = [
            Figure(
                key="console.index",
                name=f"console index: fold {total:,} ledger entries",
                value=total / fold,
                unit="entries/s",
                shown=f"{total / fold:,.0f} entries/s",
                baseline_name="read the same leaves",
                baseline=total / read,
                baseline_shown=f"{total / read:,.0f} entries/s",
                limit="Each entry is parsed and validated (pydantic) and folded with the"
                " domain's apply; one upsert per incident and batch.",
                details={"entries": total, "fold_seconds": fold, "read_seconds": read},
            )
        ]
        console = Console(title="Incidents audit", secure=True)
        filters = Filters()

        async def list_page_html() -> None:
            page = await list_page(conn, filters)
            options = await facets(conn)
            templates.get_template("audit_list.html").render(
                console=console,
                csrf="-",
                principal="bench",
                page=page,
                filters=filters,
                kept={},
                options=options,
                statuses=STATUSES,
                behind=0,
            )

        async def keyset() -> None:
            await conn.fetch(
                "SELECT incident_id FROM console_incidents ORDER BY first_idx DESC LIMIT 51"
            )

        figures.append(
            _latency_figure(
                "console.list",
                f"console: first list page of {incidents + 1:,} incidents",
                await _samples(list_page_html, samples),
                await _samples(keyset, samples),
                "bare keyset query",
                "Two indexed queries (the page, the filter menus) and the template.",
            )
        )
        badge: Evidence = (await evidence_of(conn, signer, BIG))[0]
        if not badge.ok:
            raise RuntimeError(f"the big incident does not verify: {badge.reason}")

        async def incident_page_html() -> None:
            entries = await incident_entries(conn, BIG)
            moment = datetime.now(UTC)
            templates.get_template("audit_incident.html").render(
                console=console,
                csrf="-",
                principal="bench",
                timeline=timeline_rows(entries, moment),
                evidence=badge,
                trace_url=None,
                **as_of_view(BIG, entries, moment),
            )

        async def leaves() -> None:
            await conn.fetch(
                "SELECT idx, recorded_at, leaf FROM ledger WHERE incident_id = $1 AND valid"
                " ORDER BY idx",
                BIG,
            )

        raw = await _samples(leaves, samples)
        figures.append(
            _latency_figure(
                "console.incident",
                f"console: page of an incident of {len(records):,} events (badge cached)",
                await _samples(incident_page_html, samples),
                raw,
                "fetch its leaves",
                "Every entry is parsed (pydantic), folded twice (knowledge, state) and"
                " rendered as a table row; the chart collapses marks to one per pixel.",
            )
        )

        async def verified() -> None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await evidence_of(conn, signer, BIG)

        figures.append(
            _latency_figure(
                "console.badge",
                f"console: verified badge of {len(records):,} entries (uncached)",
                await _samples(verified, max(3, samples // 4)),
                raw,
                "fetch its leaves",
                "export_bundle: one inclusion proof per entry (tree nodes fetched in one"
                " query), every leaf hashed and proven against the signed root.",
            )
        )
        return figures
    finally:
        await conn.close()
