"""Where the milliseconds of an end-to-end report go: one row per hop of its path.

A named report's path to its first notification in the ledger is intake (the report
and its outbox row, one transaction) → intake's relay → the bus → triage (decision
and notifications and their outbox rows, one transaction) → triage's relay → the bus
→ audit (the ledger entry). Every hop is measured between instants the stack records
anyway, read after the run, so nothing is added to the hot path:

- `accepted`: the submitted event's `time` (intake's clock as it accepted the report);
- `intake_outbox`: `created_at` of its row in intake's outbox (in the transaction);
- `report_sent`: the Kafka timestamp of the submitted record (its producer's clock as
  the relay sent it; milliseconds);
- `triage_took`: `processed_at` of triage's tracking row for that record (the start of
  the transaction that decides);
- `triage_outbox`: `created_at` of the notification's row in triage's outbox;
- `decision_sent`: the Kafka timestamp of the notification's record;
- `recorded`: the ledger's `recorded_at` of the notification (audit's append).

Every clock is this host's (PostgreSQL's clock_timestamp(), Python's time.time()), so
the differences are durations; the Kafka timestamps are whole milliseconds, so a hop
next to one is ±1 ms. The sum of the hops of a report is its latency to the
notification (the figure's end is the latest of the three entries: the same instant,
or the triage decision's, recorded with it).

`breakdown` answers "where do the milliseconds of the p50 go" with the mean of each
hop over the reports around the median (the 40th to the 60th percentile of the total),
whose sum is those reports' mean total, beside each hop's own p50 and p99.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.infra.db import connect
from tooling.bench.report import percentile

INSTANTS = (
    "accepted",
    "intake_outbox",
    "report_sent",
    "triage_took",
    "triage_outbox",
    "decision_sent",
    "recorded",
)
"""The instants of one report's path, in order."""

HOPS: tuple[tuple[str, str, str], ...] = (
    ("intake: accepted → outbox row written", "accepted", "intake_outbox"),
    ("intake: commit → relay sent the report", "intake_outbox", "report_sent"),
    ("bus → triage took it (fetch, verify)", "report_sent", "triage_took"),
    ("triage: took → decision's outbox rows", "triage_took", "triage_outbox"),
    ("triage: commit → relay sent the decision", "triage_outbox", "decision_sent"),
    ("bus → audit recorded it in the ledger", "decision_sent", "recorded"),
)
"""(label, from, to) for each hop, in path order."""

BAND = (40.0, 60.0)
"""Percentiles of the total whose reports the p50 row averages."""


@dataclass(frozen=True)
class HopRow:
    """One hop: its mean over the reports around the median, its own p50 and p99 (ms)."""

    label: str
    at_p50: float
    p50: float
    p99: float


@dataclass(frozen=True)
class Breakdown:
    """The hops of the complete paths of a run, and the total they add up to (ms)."""

    reports: int
    complete: int
    band: int
    """How many reports the `at_p50` column averages."""
    rows: tuple[HopRow, ...]
    total_at_p50: float
    total_p50: float
    total_p99: float

    def to_json(self) -> dict[str, Any]:
        def finite(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "reports": self.reports,
            "complete": self.complete,
            "band": self.band,
            "total_at_p50_ms": finite(self.total_at_p50),
            "total_p50_ms": finite(self.total_p50),
            "total_p99_ms": finite(self.total_p99),
            "hops": [
                {
                    "hop": r.label,
                    "at_p50_ms": finite(r.at_p50),
                    "p50_ms": finite(r.p50),
                    "p99_ms": finite(r.p99),
                }
                for r in self.rows
            ],
        }


def breakdown(paths: Sequence[Mapping[str, float | None]]) -> Breakdown:
    """The hop table of `paths` (instants in POSIX seconds; a path missing one is left
    out of every row, so that the rows of the complete ones add up)."""
    complete = [p for p in paths if all(p.get(name) is not None for name in INSTANTS)]
    hops = [
        [1000 * (float(p[end]) - float(p[start])) for _, start, end in HOPS]  # type: ignore[arg-type]
        for p in complete
    ]
    totals = [sum(h) for h in hops]
    low, high = (percentile(totals, q) for q in BAND)
    middle = [h for h, total in zip(hops, totals, strict=True) if low <= total <= high]
    rows = tuple(
        HopRow(
            label,
            _mean([h[i] for h in middle]),
            percentile([h[i] for h in hops], 50),
            percentile([h[i] for h in hops], 99),
        )
        for i, (label, _, _) in enumerate(HOPS)
    )
    return Breakdown(
        reports=len(paths),
        complete=len(complete),
        band=len(middle),
        rows=rows,
        total_at_p50=_mean([sum(h) for h in middle]),
        total_p50=percentile(totals, 50),
        total_p99=percentile(totals, 99),
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def lines(result: Breakdown, bus_p50: float, bus_p99: float) -> list[str]:
    """The table as text lines, with the bus round trip of the same run beside it."""
    width = max(len(label) for label, _, _ in HOPS) + 2
    out = [
        f"{'hop':<{width}}{'at p50':>9}{'p50':>9}{'p99':>9}   (ms; 'at p50': mean over the"
        f" {result.band} reports from the p{BAND[0]:g} to the p{BAND[1]:g} of the total)"
    ]
    for row in result.rows:
        out.append(f"{row.label:<{width}}{row.at_p50:>9.1f}{row.p50:>9.1f}{row.p99:>9.1f}")
    out.append(
        f"{'total (accepted → notification recorded)':<{width}}{result.total_at_p50:>9.1f}"
        f"{result.total_p50:>9.1f}{result.total_p99:>9.1f}"
    )
    out.append(
        f"{'baseline: one bus round trip (aiokafka)':<{width}}{'':>9}{bus_p50:>9.1f}{bus_p99:>9.1f}"
        f"   ({result.complete} of {result.reports} reports with every instant)"
    )
    return out


# ----------------------------------------------------------- reading the instants


async def collect(
    database_url: str,
    bootstrap: str,
    incidents: Iterable[str],
    *,
    schema_suffix: str = "",
) -> list[dict[str, float | None]]:
    """The instants of each incident's path, read from the stack's database (the ledger,
    intake's and triage's outbox and tracking) and the broker (record timestamps)."""
    wanted = sorted(set(incidents))
    audit = await connect(database_url, schema=f"audit{schema_suffix}")
    try:
        # The first submitted and first notified entry of each incident.
        entries = await audit.fetch(
            "SELECT DISTINCT ON (incident_id, event_type) incident_id, event_type, event_id,"
            ' topic, partition, "offset", recorded_at,'
            " convert_from(leaf, 'UTF8')::jsonb #>> '{event,time}' AS time"
            " FROM ledger WHERE incident_id = ANY($1::text[]) AND event_type = ANY($2::text[])"
            " ORDER BY incident_id, event_type, idx",
            wanted,
            [_SUBMITTED, _NOTIFIED],
        )
        by_incident: dict[str, dict[str, Any]] = {}
        for e in entries:
            by_incident.setdefault(e["incident_id"], {})[e["event_type"]] = e
        report_events = [str(e["event_id"]) for e in entries if e["event_type"] == _SUBMITTED]
        notified_events = [str(e["event_id"]) for e in entries if e["event_type"] == _NOTIFIED]
        intake_outbox = await _created_at(audit, f"intake{schema_suffix}", report_events)
        triage_outbox = await _created_at(audit, f"triage{schema_suffix}", notified_events)
        reports = [e for e in entries if e["event_type"] == _SUBMITTED]
        took = await _processed_at(audit, f"triage{schema_suffix}", reports)
    finally:
        await audit.close()
    sent = await record_timestamps(
        bootstrap, [(e["topic"], e["partition"], e["offset"]) for e in entries]
    )
    paths = []
    for incident in wanted:
        got = by_incident.get(incident, {})
        report, notified = got.get(_SUBMITTED), got.get(_NOTIFIED)
        path: dict[str, float | None] = dict.fromkeys(INSTANTS)
        if report is not None:
            coords = (report["topic"], report["partition"], report["offset"])
            path["accepted"] = _instant(report["time"])
            path["intake_outbox"] = intake_outbox.get(str(report["event_id"]))
            path["report_sent"] = sent.get(coords)
            path["triage_took"] = took.get(coords)
        if notified is not None:
            coords = (notified["topic"], notified["partition"], notified["offset"])
            path["triage_outbox"] = triage_outbox.get(str(notified["event_id"]))
            path["decision_sent"] = sent.get(coords)
            path["recorded"] = notified["recorded_at"].timestamp()
        paths.append(path)
    return paths


_SUBMITTED = "incident.report.submitted.v1"
_NOTIFIED = "incident.notified.v1"


def _instant(text: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp() if text else None


async def _created_at(conn: Any, schema: str, event_ids: Sequence[str]) -> dict[str, float]:
    rows = await conn.fetch(
        f'SELECT event_id::text AS id, created_at FROM "{schema}".outbox'  # noqa: S608 - ours
        " WHERE event_id = ANY($1::uuid[])",
        list(event_ids),
    )
    return {r["id"]: r["created_at"].timestamp() for r in rows}


async def _processed_at(
    conn: Any, schema: str, records: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, int, int], float]:
    rows = await conn.fetch(
        f'SELECT topic, partition, "offset", min(processed_at) AS at FROM "{schema}".tracking'  # noqa: S608
        ' WHERE (topic, partition, "offset") IN (SELECT * FROM unnest($1::text[],'
        ' $2::integer[], $3::bigint[])) GROUP BY topic, partition, "offset"',
        [r["topic"] for r in records],
        [r["partition"] for r in records],
        [r["offset"] for r in records],
    )
    return {(r["topic"], r["partition"], r["offset"]): r["at"].timestamp() for r in rows}


async def record_timestamps(
    bootstrap: str, coords: Sequence[tuple[str, int, int]]
) -> dict[tuple[str, int, int], float]:
    """The timestamp (seconds) of each record at (topic, partition, offset): each
    partition read from the least offset asked to the greatest."""
    spans: dict[TopicPartition, list[int]] = {}
    for topic, partition, offset in coords:
        span = spans.setdefault(TopicPartition(topic, partition), [offset, offset])
        span[0], span[1] = min(span[0], offset), max(span[1], offset)
    if not spans:
        return {}
    wanted = set(coords)
    found: dict[tuple[str, int, int], float] = {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    await consumer.start()
    try:
        consumer.assign(list(spans))
        for tp, (first, _) in spans.items():
            consumer.seek(tp, first)
        left = set(spans)
        empty = 0
        while left and empty < 20:  # 20 empty polls of 0.5 s: the rest is not there
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            empty = 0 if any(batches.values()) else empty + 1
            for tp, records in batches.items():
                for record in records:
                    key = (tp.topic, tp.partition, record.offset)
                    if key in wanted:
                        found[key] = record.timestamp / 1000
                if records and records[-1].offset >= spans[tp][1]:
                    left.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()
    return found


__all__ = ["HOPS", "INSTANTS", "Breakdown", "HopRow", "breakdown", "collect", "lines"]
