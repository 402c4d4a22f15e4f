"""`incidents bench`: every figure of issue #9 with its baseline, then a table and files.

Order of work: the figures that need only PostgreSQL (verify, ledger append, proofs,
knowledge, replay) run first, on databases of their own, before any service is
started, so that idle services do not take CPU from them. Then the private stack
starts (or `--url-intake`/`--url-audit` name a running one) for escalation lateness,
intake and end to end, in that order: end to end runs last because at full size it
leaves a backlog behind it. With a private stack, intake's own figures run before it
starts, on an intake alone with its own database and broker.
A figure that fails is reported as an error and the others still run; a missed
target is a result, not an error.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from services.infra.settings import CommonSettings
from tooling.bench import figures as fig
from tooling.bench.attachments import attachment_figures
from tooling.bench.console import console_figures
from tooling.bench.dirsync import sync_figures
from tooling.bench.orgscale import org_figures
from tooling.bench.refusals import refusal_figure
from tooling.bench.report import Figure, machine, print_table, write
from tooling.bench.stack import BenchStack, Databases


@dataclass(frozen=True)
class Sizes:
    """How big each figure's run is."""

    verify_leaves: int
    signing_events: int
    append_events: int
    ledger_entries: int
    query_samples: int
    intake_concurrency: int
    intake_seconds: float
    intake_open_seconds: float
    anonymous_seconds: float
    e2e_rates: tuple[float, ...]
    e2e_seconds: float
    e2e_drain: float
    rtt_samples: int
    escalation_pending: int
    escalation_due: int
    escalation_spread: float


FULL = Sizes(
    verify_leaves=200_000,
    signing_events=10_000,
    append_events=200_000,
    ledger_entries=1_000_000,
    query_samples=2000,
    intake_concurrency=16,
    intake_seconds=20,
    intake_open_seconds=15,
    anonymous_seconds=10,
    e2e_rates=(25, 100, 200),
    e2e_seconds=60,
    e2e_drain=60,
    rtt_samples=1000,
    escalation_pending=100_000,
    escalation_due=1000,
    escalation_spread=20,
)
QUICK = Sizes(
    verify_leaves=20_000,
    signing_events=2_000,
    append_events=20_000,
    ledger_entries=100_000,
    query_samples=200,
    intake_concurrency=16,
    intake_seconds=3,
    intake_open_seconds=2.5,
    anonymous_seconds=3,
    e2e_rates=(25, 100, 200),
    e2e_seconds=10,
    e2e_drain=10,
    rtt_samples=200,
    escalation_pending=10_000,
    escalation_due=200,
    escalation_spread=3,
)

GROUPS = (
    "verify",
    "append",
    "ledger",
    "console",
    "e2e",
    "escalation",
    "intake",
    "refusals",
    "signing",
    "org",
    "attachments",
)
"""Names `--only` accepts."""

ORDER = (
    "intake.rate",
    "intake.latency",
    "intake.p99_at_70",
    "intake.rate_stack",
    "intake.anonymous",
    "intake",
    "refusals",
    "attachments.upload",
    "attachments.download",
    "e2e.idle",
    "e2e.25",
    "e2e.100",
    "e2e.200",
    "e2e.cpu.25",
    "e2e.cpu.100",
    "e2e.cpu.200",
    "e2e",
    "escalation",
    "append",
    "ledger.append",
    "verify",
    "signing.sign",
    "signing.verify",
    "ledger",
    "proof.inclusion",
    "proof.consistency",
    "knowledge",
    "replay",
    "console.index",
    "console.list",
    "console.incident",
    "console.badge",
    "org.triage",
    "org.intake",
    "org.audit",
    "org.memory",
    "org.import",
    "org.restart",
    "org.patch",
    "org",
    "stack",
)
"""Rows in the order of the issue's table (errors are keyed by group)."""


def _notes(sizes: Sizes, stack: str, logs: Path) -> list[str]:
    return [
        "Reports are named (p-liu's development token), so intake's cost is its event and"
        " outbox transaction; an anonymous report adds an argon2id hash of its secret and"
        " is measured on its own row.",
        "Load shapes: 'concurrent' rows run that many clients back to back (a call counts"
        " when it ends inside the window, after a warm-up); 'at N/s' rows start calls on"
        " a fixed schedule and count latency from the instant each was due.",
        "End to end: from the submitted event's time (intake's clock as it accepted the"
        " report, just before the commit the 202 confirms) to the ledger's recorded_at"
        " (PostgreSQL's clock_timestamp() on this host, read when the batch's append"
        " starts) of the latest of the three entries. Each figure on the services starts"
        " once the ledger has grown by nothing for 1 s.",
        f"Escalation setup shortcut: {sizes.escalation_pending:,} escalation_state rows are"
        " written straight into the escalation schema (as escalation writes them after a"
        " triage decision), waking between 1 hour and 30 days ahead, instead of being made"
        f" by as many reports; {sizes.escalation_due} more come due over"
        f" {sizes.escalation_spread:g} s. Lateness is event time minus data.deadline of the"
        " incident.escalated.v1 events escalation appended.",
        "The ledger for proofs, knowledge and replay is generated: valid catalog events"
        " of 8-event incidents, 50 interleaved, canonical leaves and tree nodes"
        " (MerkleFrontier) computed here and written by COPY (fill time in the JSON).",
        "Ratios are value / baseline: rates as a percentage, latencies as a multiple.",
        f"Stack: {stack}. Logs: {logs}.",
    ]


class _Bench:
    def __init__(self, console: Console, logs: Path, only: Sequence[str]) -> None:
        self.console = console
        self.logs = logs
        self.only = set(only)
        self.figures: list[Figure] = []

    def wanted(self, group: str) -> bool:
        return not self.only or group in self.only

    def run(
        self,
        group: str,
        title: str,
        work: Callable[[], Coroutine[Any, Any, Figure | list[Figure]]],
    ) -> None:
        if not self.wanted(group):
            return
        began = time.monotonic()
        with self.console.status(f"{title} ..."):
            try:
                result = asyncio.run(work())
            except Exception as exc:  # one figure failing must not lose the others
                self.fail(group, title, exc)
                return
        got = result if isinstance(result, list) else [result]
        self.console.print(f"{title}: {time.monotonic() - began:.1f}s")
        self.figures.extend(got)
        for figure in got:
            self.console.print(
                f"  {figure.name}: {figure.value_text()}  (baseline {figure.baseline_text()})"
            )
            for line in figure.details.get("hops_table", ()):  # end to end, hop by hop
                self.console.print(f"    {line}", markup=False, highlight=False)

    def fail(self, group: str, title: str, exc: BaseException) -> None:
        with (self.logs / "errors.log").open("a", encoding="utf-8") as log:
            log.write(f"--- {title}\n{''.join(traceback.format_exception(exc))}\n")
        self.figures.append(
            Figure(key=group, name=title, error=f"{type(exc).__name__}: {exc}"[:500])
        )
        self.console.print(f"  [red]{title} failed:[/] {exc!r} (see {self.logs / 'errors.log'})")


def run_bench(
    *,
    quick: bool = False,
    url_intake: str | None = None,
    url_audit: str | None = None,
    database_url: str | None = None,
    out: Path = Path("bench/results"),
    token: str = "dev-auditor-token",  # noqa: S107 - public development token
    only: Sequence[str] = (),
    console: Console | None = None,
    org: int | None = None,
) -> int:
    """Run the bench; 0 when every figure ran (targets met or not), 1 if one failed.

    `org`: the size of the generated organisation of the `org` group, which runs when
    it is given or named in `only` (tooling/bench/orgscale.py)."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or logged: room for the table's columns
            console = Console(width=160)
    sizes = QUICK if quick else FULL
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    external = url_intake is not None or url_audit is not None
    if external and not (url_intake and url_audit):
        console.print("[red]error:[/] give both --url-intake and --url-audit")
        return 2
    unknown = set(only) - set(GROUPS)
    if unknown:
        console.print(f"[red]error:[/] unknown figure group(s) {sorted(unknown)}; use {GROUPS}")
        return 2
    logs = Path(tempfile.mkdtemp(prefix=f"incidents-bench-{stamp}-"))
    load_before = os.getloadavg()
    bench = _Bench(console, logs, only)
    console.print(
        f"incidents bench ({'quick' if quick else 'full'}): logs in {logs}, load average"
        f" {load_before[0]:.1f} on {os.cpu_count()} CPUs"
    )
    dbs = Databases(logs, database_url)
    stack_text = "none"
    try:
        bench.run(
            "verify",
            "verify leaves/s",
            lambda: fig.verify_figure(sizes.verify_leaves),
        )
        bench.run(
            "signing",
            "event signatures",
            lambda: fig.signing_figures(sizes.signing_events),
        )
        bench.run(
            "append",
            "ledger append",
            lambda: fig.ledger_append_figure(
                dbs.create("bench_append"), events=sizes.append_events
            ),
        )
        bench.run(
            "ledger",
            "proofs, knowledge, replay",
            lambda: fig.ledger_query_figures(
                dbs.create("bench_ledger"),
                entries=sizes.ledger_entries,
                samples=sizes.query_samples,
            ),
        )
        bench.run(
            "console",
            "console pages",
            lambda: console_figures(
                dbs.create("bench_console"), incidents=1_000 if quick else 10_000
            ),
        )
        people = org or (20_000 if quick else 254_000)
        if org is not None or "org" in bench.only:
            bench.run(
                "org",
                f"per-report costs at {people:,} people",
                lambda: org_figures(dbs.create, people, 200 if quick else 2000),
            )
            bench.run(
                "org",
                f"directory import, restart and SCIM PATCH at {people:,} people",
                lambda: sync_figures(dbs.create, bench.logs / "sync", people, 20 if quick else 50),
            )
        if bench.wanted("refusals") and not external:
            bench.run(
                "refusals",
                "refusals: real incident vs unknown id",
                _on_intake_alone(
                    bench, dbs, "refusals", token, lambda target: refusal_figure(target)
                ),
            )
        if bench.wanted("attachments") and not external:
            bench.run(
                "attachments",
                "attachments: 20 MB up and down vs plain asyncpg",
                _on_intake_alone(bench, dbs, "attachments", token, attachment_figures),
            )
        if any(bench.wanted(g) for g in ("e2e", "escalation", "intake")):
            stack_text = _stack_figures(
                bench, dbs, sizes, url_intake, url_audit, database_url, token
            )
    finally:
        dbs.close()
    figures = sorted(bench.figures, key=lambda f: ORDER.index(f.key) if f.key in ORDER else 99)
    load_after = os.getloadavg()
    meta = {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "sizes": asdict(sizes),
        "stack": stack_text,
        "machine": {**machine(), "load_average_before": list(load_before)},
        "notes": [
            *_notes(sizes, stack_text, logs),
            f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on"
            f" {os.cpu_count()} CPUs: other work on this machine shares them.",
        ],
    }
    print_table(console, figures, f"incidents bench ({'quick' if quick else 'full'}, {stamp})")
    json_path, md_path = write(out, stamp, figures, meta)
    console.print(f"wrote {json_path} and {md_path}")
    return 1 if any(f.error is not None for f in figures) else 0


def _intake_alone_figures(
    bench: _Bench, dbs: Databases, sizes: Sizes, raw_db: str, token: str
) -> Callable[[], Coroutine[Any, Any, Figure | list[Figure]]]:
    """Intake's own figures, on an intake alone with a database and a Tansu of its own,
    before the stack starts: what intake itself carries, with the cores to itself (the
    four idle services took ~0.25 s of CPU a second between them)."""

    return _on_intake_alone(
        bench,
        dbs,
        "intake",
        token,
        lambda target: _intake_rows(target, raw_db, sizes, settle_first=False),
    )


def _on_intake_alone(
    bench: _Bench,
    dbs: Databases,
    name: str,
    token: str,
    measure: Callable[[fig.Target], Coroutine[Any, Any, Figure | list[Figure]]],
) -> Callable[[], Coroutine[Any, Any, Figure | list[Figure]]]:
    """`measure` on an intake alone (a database `bench_<name>` and a Tansu of its own),
    stopped afterwards."""

    async def work() -> Figure | list[Figure]:
        logs = bench.logs / f"{name}-alone"
        logs.mkdir(exist_ok=True)
        alone = BenchStack(logs, dbs.create(f"bench_{name}"), topic_prefix=f"{name}-alone.")
        try:
            await asyncio.to_thread(alone.start, services=("intake",))
            target = fig.Target(
                alone.url("intake"),
                "",
                alone.bootstrap,
                alone.database_url,
                auditor_token=token,
                topic_prefix=alone.topic_prefix,
                pids={"intake": alone.procs["intake"].pid},
            )
            return await measure(target)
        finally:
            await asyncio.to_thread(alone.stop)

    return work


async def _intake_rows(
    target: fig.Target, raw_db: str, sizes: Sizes, *, settle_first: bool = True
) -> list[Figure]:
    """Intake's figures on `target`: rate, latencies, p99 at 70 %, anonymous reports."""
    rows = await fig.intake_figures(
        target,
        raw_db,
        concurrency=sizes.intake_concurrency,
        seconds=sizes.intake_seconds,
        open_seconds=sizes.intake_open_seconds,
        settle_first=settle_first,
    )
    rows.append(
        await fig.anonymous_figure(
            target, concurrency=4, seconds=sizes.anonymous_seconds, hash_seconds=1.0
        )
    )
    return rows


def _stack_figures(
    bench: _Bench,
    dbs: Databases,
    sizes: Sizes,
    url_intake: str | None,
    url_audit: str | None,
    database_url: str | None,
    token: str,
) -> str:
    """Run the figures that need services; a description of the stack used."""
    stack: BenchStack | None = None
    raw_db = dbs.create("bench_raw") if bench.wanted("intake") else ""  # the raw baseline's
    if url_intake and url_audit:
        settings = CommonSettings()
        target = fig.Target(
            url_intake.rstrip("/"),
            url_audit.rstrip("/"),
            settings.kafka_bootstrap,
            database_url,
            topic_prefix=settings.kafka_topic_prefix,
            schema_suffix=settings.db_schema_suffix,
            auditor_token=token,
        )
        text = f"running services at {url_intake} and {url_audit}"
    else:
        bench.run("intake", "intake alone", _intake_alone_figures(bench, dbs, sizes, raw_db, token))
        stack_db = dbs.create("bench_stack")
        try:
            with bench.console.status("starting the stack (Tansu, four services) ..."):
                stack = BenchStack(bench.logs, stack_db)
                ready = stack.start()
        except Exception as exc:
            bench.fail("stack", "private stack", exc)
            if stack is not None:
                stack.stop()
            return "private stack (failed to start)"
        bench.console.print(f"  stack ready in {ready:.1f}s")
        target = fig.Target(
            stack.url("intake"),
            stack.url("audit"),
            stack.bootstrap,
            stack_db,
            auditor_token=token,
            pids={name: proc.pid for name, proc in stack.procs.items()},
            broker_pid=(
                stack.broker.process.pid
                if stack.broker is not None and stack.broker.process is not None
                else None
            ),
        )
        text = (
            f"private: Tansu on {stack.bootstrap}, the four services on free ports, a fresh"
            " database"
        )
    try:
        if target.database_url is None:
            if bench.wanted("escalation"):
                bench.figures.append(
                    Figure(
                        key="escalation",
                        name="escalation lateness",
                        shown="skipped",
                        limit="Against running services it needs their database"
                        " (--database-url): it writes escalation_state rows there.",
                    )
                )
        else:
            bench.run(
                "escalation",
                "escalation lateness",
                lambda: fig.escalation_figure(
                    target,
                    pending=sizes.escalation_pending,
                    due=sizes.escalation_due,
                    spread=sizes.escalation_spread,
                    lead=1.5,
                ),
            )
        if stack is None:  # running services: intake's figures on the stack's intake
            bench.run("intake", "intake", lambda: _intake_rows(target, raw_db, sizes))
        else:
            alone_rate = next((f for f in bench.figures if f.key == "intake.rate"), None)
            if alone_rate is not None and alone_rate.baseline:
                baseline = alone_rate.baseline
                bench.run(
                    "intake",
                    "intake with the stack",
                    lambda: fig.intake_with_stack_figure(
                        target,
                        baseline,
                        concurrency=sizes.intake_concurrency,
                        seconds=sizes.intake_seconds,
                    ),
                )
        # Last: at full size the stack cannot keep up with 200/s, and the backlog it
        # leaves would load the cores under any figure measured after it. The idle CPU
        # first, then the rates from the lowest (each starts from a still ledger).
        bench.run("e2e", "idle CPU", lambda: fig.idle_cpu_figure(target))
        for rate in sizes.e2e_rates:
            bench.run(
                "e2e",
                f"end to end at {rate:g}/s",
                lambda rate=rate: fig.e2e_figure(  # type: ignore[misc]
                    target,
                    rate=rate,
                    seconds=sizes.e2e_seconds,
                    drain=sizes.e2e_drain,
                    rtt_samples=sizes.rtt_samples,
                ),
            )
    finally:
        if stack is not None:
            with bench.console.status("stopping the stack ..."):
                stack.stop()
    return text
