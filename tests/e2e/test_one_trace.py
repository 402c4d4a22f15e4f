"""One report, one trace: every service's spans share its trace id and form one tree.

The four services run as separate processes, each with its own tracer provider writing
its finished spans to the stack's local span files (`INCIDENTS_TRACES_DIR`), which is
what `incidents traces show` reads. A named report (so intake continues no client
trace and the request is the root) climbs one level with a policy of seconds. The
trace that starts at `POST /v1/reports` must hold: intake's request, its relay's
publish, triage's processing and the publish of its decision, escalation's processing
of that decision, the deadline its scheduler fired hours (here: seconds) later and the
publish of the escalation, and audit's ingestion of the escalation. Each span's parent
is in the trace, and there is one root.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Stack, timeline, wait_for_timeline
from tests.helpers import SEED_CASE, critical_policy
from tooling.traces import Span, load_spans

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    policy = tmp_path_factory.mktemp("policy") / "policy.yaml"
    policy.write_text(critical_policy("e2e-trace-seconds", "2s"))
    return {"INCIDENTS_POLICY_FILE": str(policy)}


def _trace(folder: Path, trace_id: str, want: dict[str, list[str]]) -> list[Span]:
    """The trace's spans once each service has written the spans `want` names and the
    parent of every span read (each process writes its own spans when they end, so a
    child in one file can be read before its parent reaches another)."""

    def wanted(spans: list[Span]) -> bool:
        return all(
            any(s.service == service and s.name.startswith(n) for s in spans)
            for service, names in want.items()
            for n in names
        )

    began = time.monotonic()
    spans: list[Span] = []
    while time.monotonic() - began < 20:
        spans = load_spans(folder, [trace_id])
        ids = {s.span_id for s in spans}
        if wanted(spans) and all(s.parent_span_id in (None, *ids) for s in spans):
            return spans
        time.sleep(0.3)  # the exporters write every second
    if wanted(spans):
        return spans  # a parent never came: the test's orphan assertion names it
    found = sorted({(s.service, s.name) for s in spans})
    raise AssertionError(f"trace {trace_id} lacks spans; it has {found}")


def test_a_report_is_one_trace_through_intake_relay_triage_escalation_and_audit(
    stack: Stack,
) -> None:
    answer = httpx.post(
        stack.url("intake") + "/v1/reports",
        json=SEED_CASE,
        headers={"authorization": "Bearer dev-liu-token"},
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    incident = answer.json()["incident_id"]
    [submitted] = wait_for_timeline(stack, incident)
    trace_id = submitted["trace_id"]
    assert isinstance(trace_id, str) and len(trace_id) == 32
    escalated = wait_for_timeline(stack, incident, of_type="incident.escalated.v1")

    prefix = "outbox publish "
    spans = _trace(
        stack.logs / "traces",
        trace_id,
        {
            "intake": ["intake: take report", f"{prefix}incident.reports"],
            "triage": ["process incident.reports", f"{prefix}incident.triage"],
            "escalation": [
                "process incident.triage",
                "escalation: deadline",
                f"{prefix}incident.escalations",
            ],
            "audit": ["process incident.reports", "process incident.escalations"],
        },
    )
    # every ledger entry of the incident so far belongs to this one trace
    entries = timeline(stack, incident, of_type=None)
    assert {e["trace_id"] for e in entries} == {trace_id}, [
        (e["event"]["type"], e["trace_id"])  # type: ignore[index]
        for e in entries
    ]
    assert escalated[0]["trace_id"] == trace_id

    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans)
    roots = [s for s in spans if s.parent_span_id is None]
    assert [(r.service, r.name) for r in roots] == [("intake", "intake: take report")]
    orphans = [(s.service, s.name) for s in spans if s.parent_span_id not in (None, *by_id)]
    assert not orphans, orphans
    # the deadline fired by escalation's scheduler hangs below escalation's own
    # processing of the triage decision, which hangs below triage's publish
    chain = []
    node: Span | None = next(s for s in spans if s.name == "escalation: deadline")
    while node is not None:
        chain.append((node.service, node.name))
        node = by_id.get(node.parent_span_id or "")
    services = [service for service, _ in chain]
    assert services[:2] == ["escalation", "escalation"], chain
    assert "triage" in services and services[-1] == "intake", chain
    assert Counter(s.service for s in spans).keys() == {"intake", "triage", "escalation", "audit"}
