"""The walking skeleton through real processes: a report reaches the ledger, whatever dies."""

from __future__ import annotations

import time

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.e2e.conftest import Stack, submit, timeline, wait_for_timeline

pytestmark = pytest.mark.e2e


def test_every_service_answers_ready(stack: Stack) -> None:
    """Each of the four answered /readyz (how soon: `incidents bench`, `org.restart`,
    target 20 s; printed here, not asserted: no wall-clock assertions in tests)."""
    print("ready after (s):", {k: round(v, 1) for k, v in stack.ready_seconds.items()})
    assert set(stack.ready_seconds) == {"intake", "triage", "escalation", "audit"}
    for name in stack.ready_seconds:
        assert httpx.get(stack.url(name) + "/readyz", timeout=5).status_code == 200, name


def test_a_report_appears_in_the_audit_timeline(stack: Stack) -> None:
    began = time.monotonic()
    incident = submit(stack)
    [entry] = wait_for_timeline(stack, incident, timeout=20)
    print(f"202 -> ledger in {time.monotonic() - began:.3f}s")
    event = entry["event"]
    assert isinstance(event, dict)
    assert event["type"] == "incident.report.submitted.v1" and event["subject"] == incident


def test_a_report_accepted_by_an_intake_killed_before_relaying_is_delivered_once_on_restart(
    stack: Stack,
) -> None:
    """Intake runs without its relay, answers 202, dies by SIGKILL; the event waits in
    its outbox and the restarted intake publishes it: one ledger entry."""
    stack.kill("intake")
    stack.start("intake", INCIDENTS_RELAY_ENABLED="false")
    stack.wait_ready("intake")
    incident = submit(stack)
    stack.kill("intake")
    time.sleep(1)
    assert timeline(stack, incident) == []
    stack.start("intake")
    stack.wait_ready("intake")
    assert len(wait_for_timeline(stack, incident)) == 1
    time.sleep(1)  # a second copy would have arrived by now
    assert len(timeline(stack, incident)) == 1


def test_sigkill_of_intake_right_after_a_202_still_gives_exactly_one_ledger_entry(
    stack: Stack,
) -> None:
    incident = submit(stack)
    stack.kill("intake")
    stack.start("intake")
    stack.wait_ready("intake")
    assert len(wait_for_timeline(stack, incident)) == 1
    time.sleep(1)
    assert len(timeline(stack, incident)) == 1


async def test_republishing_the_same_kafka_record_twice_leaves_one_ledger_entry(
    stack: Stack,
) -> None:
    incident = submit(stack)
    wait_for_timeline(stack, incident)
    bootstrap = stack.broker.bootstrap
    consumer = AIOKafkaConsumer(
        "incident.reports", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    original = None
    try:
        deadline = time.monotonic() + 10
        while original is None and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                original = next((r for r in records if r.key == incident.encode()), original)
    finally:
        await consumer.stop()
    assert original is not None
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for _ in range(2):
            await producer.send_and_wait(
                "incident.reports", original.value, key=original.key, headers=list(original.headers)
            )
    finally:
        await producer.stop()
    marker = submit(stack)  # lands after the copies on audit's side
    wait_for_timeline(stack, marker)
    time.sleep(0.5)
    assert len(timeline(stack, incident)) == 1


def test_after_a_broker_restart_the_stack_recovers_and_loses_nothing(stack: Stack) -> None:
    """The memory broker forgets every topic, message and offset, and acks sends it
    then drops. A report accepted just before still reaches the ledger exactly once."""
    before = submit(stack)
    stack.broker.restart()
    after = submit(stack)
    assert len(wait_for_timeline(stack, before, timeout=30)) == 1
    assert len(wait_for_timeline(stack, after, timeout=30)) == 1
    time.sleep(1.5)
    assert len(timeline(stack, before)) == 1
    for name in ("intake", "triage", "escalation", "audit"):
        assert stack.procs[name].poll() is None, f"{name} died:\n{stack.tail(name)}"
    began = time.monotonic()
    while time.monotonic() - began < 30:  # every service reports ready again on its own
        if all(
            httpx.get(stack.url(n) + "/readyz", timeout=2).status_code == 200
            for n in ("intake", "triage", "escalation", "audit")
        ):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("not every service became ready again after the broker restart")


def test_a_two_megabyte_body_is_refused_with_413_problem_json(stack: Stack) -> None:
    answer = httpx.post(
        stack.url("intake") + "/v1/reports",
        content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 413
    assert answer.headers["content-type"] == "application/problem+json"


def test_a_broker_restart_while_the_consumers_and_intake_are_down_loses_nothing(
    stack: Stack,
) -> None:
    """Intake publishes a report nobody consumes yet, then dies; the broker restarts
    empty; intake comes back and must notice the broker forgot what it published."""
    for name in ("triage", "audit"):
        stack.kill(name)
    incident = submit(stack)
    time.sleep(1.5)  # the relay has published it to a broker nobody reads
    stack.kill("intake")
    stack.broker.restart()
    for name in ("intake", "triage", "audit"):
        stack.start(name)
    for name in ("intake", "triage", "audit"):
        stack.wait_ready(name)
    assert len(wait_for_timeline(stack, incident, timeout=30)) == 1
    time.sleep(1.5)
    assert len(timeline(stack, incident)) == 1
