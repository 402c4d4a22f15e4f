"""`incidents bench` at toy sizes: every figure runs and reports a value beside its baseline.

Timing is never asserted here (the machines are shared and noisy): only that each figure
measured something, measured its baseline in the same run, and computed the ratio and
the verdict, and that the results are written as JSON and markdown.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tooling.bench import figures as fig
from tooling.bench.attachments import attachment_figures
from tooling.bench.ledgerdata import LedgerData, check
from tooling.bench.report import Figure, write
from tooling.bench.stack import BenchStack

pytestmark = pytest.mark.integration


def assert_complete(figure: Figure, *, has_target: bool = True) -> None:
    """A number, a baseline, their ratio, and a verdict when the issue sets a target."""
    assert figure.error is None, figure.error
    assert figure.value is not None and math.isfinite(figure.value), figure
    assert figure.baseline is not None and math.isfinite(figure.baseline), figure
    assert figure.baseline > 0, figure
    assert figure.ratio is not None and figure.ratio > 0, figure
    assert figure.limit, f"{figure.key} says nothing about what limits it"
    if has_target:
        assert isinstance(figure.met, bool), figure
        assert figure.target != "-"
    assert json.dumps(figure.to_json())  # JSON-ready, details included


async def test_figures_that_need_only_postgresql(
    make_database: Callable[[str], str], tmp_path: Path
) -> None:
    for entry in LedgerData(20).entries():  # generated leaves are what audit would write
        check(entry)
    verify = await fig.verify_figure(300, head_every=100, sha_seconds=0.05)
    append = await fig.ledger_append_figure(make_database("bench_append"), events=300, batch=100)
    queries = await fig.ledger_query_figures(
        make_database("bench_ledger"), entries=1200, samples=10
    )

    for figure in [verify, append, *queries]:
        assert_complete(figure)
    assert verify.details["leaves"] == 300 and verify.details["heads"] == 3
    assert append.details["events"] == 300
    assert [f.key for f in queries] == [
        "proof.inclusion",
        "proof.consistency",
        "knowledge",
        "replay",
    ]
    assert queries[-1].details["events"] == 1200

    json_path, md_path = write(
        tmp_path, "stamp", [verify, append, *queries], {"quick": True, "notes": ["a note"]}
    )
    document = json.loads(json_path.read_text())
    assert [f["key"] for f in document["figures"]][:2] == ["verify", "ledger.append"]
    assert all(f["ratio"] is not None for f in document["figures"])
    summary = md_path.read_text()
    assert "| figure | value | baseline (same run) | ratio | target | met? |" in summary
    assert "What limits each figure" in summary and "a note" in summary


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str,
    make_database: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BenchStack, fig.Target]]:
    """The four services as processes on the session's broker, with topics of their own."""
    database = make_database("bench_stack")
    stack = BenchStack(
        tmp_path_factory.mktemp("bench"),
        database,
        bootstrap=kafka_bootstrap,
        topic_prefix=f"b{secrets.token_hex(4)}.",
    )
    try:
        stack.start()
        yield (
            stack,
            fig.Target(
                stack.url("intake"),
                stack.url("audit"),
                kafka_bootstrap,
                database,
                topic_prefix=stack.topic_prefix,
                pids={name: proc.pid for name, proc in stack.procs.items()},
            ),
        )
    finally:
        stack.stop()


async def test_figures_that_need_the_services(
    stack: tuple[BenchStack, fig.Target], make_database: Callable[[str], str]
) -> None:
    _, target = stack

    # the ledger followed over HTTP, as against running services without their database
    e2e, e2e_cpu = await fig.e2e_figure(
        replace(target, database_url=None), rate=10, seconds=1, drain=30, rtt_samples=10
    )
    escalation = await fig.escalation_figure(
        target, pending=200, due=5, lead=1.0, spread=0.5, wait=30
    )
    intake = await fig.intake_figures(
        target,
        make_database("bench_raw"),
        concurrency=2,
        seconds=1,
        open_seconds=1,
        warmup=0.2,
    )
    anonymous = await fig.anonymous_figure(target, concurrency=1, seconds=1, hash_seconds=0.1)
    upload, download = await attachment_figures(target, size=1024 * 1024, rounds=1)

    assert_complete(e2e)
    assert e2e.details["accepted"] == 10 and e2e.details["incomplete"] == 0
    assert set(e2e.details["stages"]) == {fig.SUBMITTED, fig.TRIAGED, fig.NOTIFIED}
    assert_complete(e2e_cpu)
    assert {"intake", "triage", "escalation", "audit", "client"} <= set(
        e2e_cpu.details["cpu_ms_per_report"]
    )
    assert e2e_cpu.details["reports"] == 10 and e2e_cpu.baseline is not None
    assert_complete(escalation)
    assert escalation.details["fired"] == 5
    assert [f.key for f in intake] == ["intake.rate", "intake.latency", "intake.p99_at_70"]
    assert_complete(intake[0])
    assert_complete(intake[1], has_target=False)
    assert_complete(intake[2])
    assert intake[0].details["accepted"] > 0
    assert {"intake", "triage", "escalation", "audit", "client"} <= set(
        intake[0].details["cpu_ms_per_report"]
    )
    assert anonymous.baseline is not None and anonymous.baseline > 0
    assert anonymous.met is None and anonymous.ratio is not None
    for files in (upload, download):
        assert files.error is None and files.ratio is not None and files.baseline
