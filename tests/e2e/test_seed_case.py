"""The seed case through the real stack, with a policy of seconds (issues #5 and #6).

An anonymous report of sexual assault by the City Retail store manager (p-wang) goes to
the unit's HR case handler (p-chen), never to p-wang or his management line (p-li, the
unit president; p-zhang, the CEO). Nobody acknowledges, so it climbs to the HR head
(p-zhou) and the ethics officer (p-sun), each escalation within a second of its deadline,
until p-sun acknowledges. A SIGKILL of the escalation process while a deadline is due
delays that escalation but never loses, repeats or skips one. `incidents demo` plays the
same story against this stack.

Every service runs with a policy of 2 s per level (`stack_env`), and with the demo
tokens plus one for p-zhang, so the CEO can try to read the report too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from tests.e2e.conftest import AUDITOR, ROOT, Stack, submit, timeline
from tooling.localstack import free_port

pytestmark = pytest.mark.e2e

LEVEL = 2
"""Seconds each level of the test policy has to acknowledge, but the ethics officer's."""
ETHICS = 5
"""Seconds of level 3, the one that acts: its acknowledgement never races level 4."""
RETAINED = 2  # seconds an incident of category `other` is kept once closed (erasure test)
POLICY = f"""
version: "e2e-seed-seconds"
categories: {{sexual_misconduct: critical, harassment: high, other: normal}}
severities:
  critical:
    chain:
      - {{role: hr_case_handler, acknowledge_within: {LEVEL}s}}
      - {{role: hr_head, acknowledge_within: {LEVEL}s}}
      - {{role: chief_ethics_officer, acknowledge_within: {ETHICS}s}}
      - {{role: board_audit_committee, acknowledge_within: {LEVEL}s}}
    repeat_last_every: {LEVEL}s
    feedback_within: 10m
  high:
    chain: [{{role: hr_case_handler, acknowledge_within: {LEVEL}s}}]
    repeat_last_every: {LEVEL}s
    feedback_within: 10m
  normal:
    chain: [{{role: hr_case_handler, acknowledge_within: {LEVEL}s}}]
    repeat_last_every: {LEVEL}s
    feedback_within: 10m
reporter_acknowledgement_within: 5m
conflicts:
  exclude: [accused, accused_management_chain, named_in_report, reporter, accused_reports]
  independent_roles: [chief_ethics_officer, board_audit_committee]
retention: {{categories: {{other: {RETAINED}s}}}}
"""
TOKENS = {
    "p-chen": "dev-chen-token",
    "p-zhou": "dev-zhou-token",
    "p-sun": "dev-sun-token",
    "p-wang": "dev-wang-token",
    "p-li": "dev-li-token",
    "p-zhang": "dev-zhang-token",  # not in the shipped file: added by `stack_env`
}
NEVER_TOLD = ("p-wang", "p-li", "p-zhang")
SEED_REPORT = {
    "category": "sexual_misconduct",
    "summary": "Assault by my store manager on a work trip",
    "description": "On the last evening of the trip the store manager came to my room ...",
    "unit": "city-retail",
    "accused": ["p-wang"],
}

TRIAGED = "incident.triaged.v1"
ASSIGNED = "incident.assigned.v1"
NOTIFIED = "incident.notified.v1"
ESCALATED = "incident.escalated.v1"
CLEARED = "incident.escalation.cleared.v1"
DENIED = "incident.access.denied.v1"
ROUTING_TYPES = (NOTIFIED, ASSIGNED, ESCALATED)

Entry = dict[str, Any]


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("seed-config")
    policy = folder / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    shipped = (ROOT / "services" / "data" / "tokens.yaml").read_text(encoding="utf-8")
    tokens = folder / "tokens.yaml"
    tokens.write_text(
        shipped.rstrip("\n") + '\n  - {token: dev-zhang-token, principal: "p-zhang"}\n',
        encoding="utf-8",
    )
    return {
        "INCIDENTS_POLICY_FILE": str(policy),
        "INCIDENTS_TOKENS_FILE": str(tokens),
        "INCIDENTS_ERASURE_INTERVAL": "1",
    }


@dataclass(frozen=True)
class Seed:
    incident: str
    receipt: str
    secret: str


@pytest.fixture(scope="module")
def seed(stack: Stack) -> Seed:
    """The seed case, reported anonymously once for the whole module."""
    answer = httpx.post(stack.url("intake") + "/v1/reports", json=SEED_REPORT, timeout=10)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    return Seed(body["incident_id"], body["receipt"], body["secret"])


# helpers ------------------------------------------------------------------------------


def as_(principal: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[principal]}"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def data(entry: Entry) -> dict[str, Any]:
    payload: dict[str, Any] = entry["event"]["data"]
    return payload


def wait_event(
    stack: Stack,
    incident: str,
    type_: str,
    match: Callable[[dict[str, Any]], bool] = lambda _: True,
    timeout: float = 15.0,
) -> Entry:
    """The first ledger entry of the incident of this type whose data matches."""
    end = time.monotonic() + timeout
    while True:
        for entry in timeline(stack, incident, type_):
            if match(data(entry)):
                return entry
        if time.monotonic() > end:
            raise AssertionError(
                f"no {type_} of {incident} in the ledger after {timeout}s\n"
                f"--- escalation\n{stack.tail('escalation')}\n--- audit\n{stack.tail('audit')}"
            )
        time.sleep(0.05)


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def escalation_levels(stack: Stack, incident: str) -> list[int]:
    return [int(data(e)["level"]) for e in timeline(stack, incident, ESCALATED)]


def acknowledge(stack: Stack, incident: str, principal: str, *, view: bool = False) -> None:
    """`principal` acknowledges, once intake's routing knows the incident is theirs."""
    end = time.monotonic() + 10
    while True:
        listed = httpx.get(stack.url("intake") + "/v1/incidents", headers=as_(principal))
        if any(i["incident_id"] == incident for i in listed.json()["incidents"]):
            break
        assert time.monotonic() < end, f"{incident} never reached {principal}'s list"
        time.sleep(0.05)
    base = f"{stack.url('intake')}/v1/incidents/{incident}"
    if view:
        assert httpx.get(base, headers=as_(principal), timeout=10).status_code == 200
    answer = httpx.post(base + "/acknowledge", headers=as_(principal), timeout=10)
    assert answer.status_code == 202, answer.text


async def topic_events(stack: Stack, topics: list[str] | None = None) -> list[Entry]:
    """Every CloudEvent on the broker's topics (all of them by default), read from the start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[Entry] = []
    try:
        names = topics or sorted(t for t in await consumer.topics() if not t.startswith("__"))
        consumer.subscribe(names)
        quiet, end = 0, time.monotonic() + 20
        while quiet < 3 and time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=300)
            records = [r for rs in batch.values() for r in rs]
            quiet = 0 if records or not consumer.assignment() else quiet + 1
            for record in records:
                try:
                    event = json.loads(record.value or b"")
                except ValueError:
                    continue  # faust's own topics
                if isinstance(event, dict) and isinstance(event.get("type"), str):
                    found.append({"topic": record.topic, "event": event})
    finally:
        await consumer.stop()
    return found


# the seed case ------------------------------------------------------------------------


def test_the_seed_case_goes_to_the_hr_case_handler_and_the_accused_line_gets_audited_404s(
    stack: Stack, seed: Seed
) -> None:
    triaged = data(wait_event(stack, seed.incident, TRIAGED))
    chain = sorted(triaged["chain"], key=lambda lv: lv["level"])
    assert [lv["recipients"] for lv in chain] == [["p-chen"], ["p-zhou"], ["p-sun"], ["p-board"]]
    excluded = {x["principal"]: x["rule"] for x in triaged["excluded"]}
    assert excluded["p-wang"] == "accused"
    assert excluded["p-li"] == excluded["p-zhang"] == "accused_management_chain"
    assert data(wait_event(stack, seed.incident, ASSIGNED))["principals"] == ["p-chen"]
    wait_event(stack, seed.incident, NOTIFIED, lambda d: d["principal"] == "p-chen")

    for principal in NEVER_TOLD:
        answer = httpx.get(
            f"{stack.url('intake')}/v1/incidents/{seed.incident}",
            headers=as_(principal),
            timeout=10,
        )
        assert answer.status_code == 404, (principal, answer.text)
    for principal in NEVER_TOLD:
        denied = data(
            wait_event(stack, seed.incident, DENIED, lambda d, p=principal: d["principal"] == p)
        )
        assert denied["action"] == "view"


def test_unacknowledged_it_climbs_to_p_zhou_then_p_sun_each_within_a_second_of_its_deadline(
    stack: Stack, seed: Seed
) -> None:
    triaged = data(wait_event(stack, seed.incident, TRIAGED))
    missed = at(triaged["deadlines"]["level_1_acknowledge"])
    for level, recipient in ((2, "p-zhou"), (3, "p-sun")):
        entry = wait_event(
            stack, seed.incident, ESCALATED, lambda d, n=level: d["level"] == n, timeout=LEVEL + 5
        )
        escalated, fired = data(entry), at(entry["event"]["time"])
        assert escalated["recipients"] == [recipient]
        assert escalated["reason"] == "not_acknowledged"
        # the level before was asked at (about) its escalation's event time
        assert abs((at(escalated["deadline"]) - missed).total_seconds()) < 0.1
        late = (fired - at(escalated["deadline"])).total_seconds()
        print(f"level {level}: escalated {late:.3f}s after its deadline")
        assert late >= 0  # never early (how late: `incidents bench --only escalation`)
        wait_event(
            stack, seed.incident, NOTIFIED, lambda d, p=recipient: d["principal"] == p, timeout=5
        )
        missed = fired + timedelta(seconds=LEVEL)  # counted from when the level was asked
    assert escalation_levels(stack, seed.incident) == [2, 3]


def test_p_sun_acknowledging_stops_the_chain(stack: Stack, seed: Seed) -> None:
    acknowledge(stack, seed.incident, "p-sun", view=True)
    cleared = data(wait_event(stack, seed.incident, CLEARED, timeout=10))
    assert cleared == {"level": 3, "principal": "p-sun"}
    level_3 = wait_event(stack, seed.incident, ESCALATED, lambda d: d["level"] == 3)
    next_deadline = at(level_3["event"]["time"]) + timedelta(seconds=ETHICS)
    sleep_until(next_deadline + timedelta(seconds=1.5))  # when level 4 would have been asked
    assert escalation_levels(stack, seed.incident) == [2, 3]
    receipt = httpx.get(
        f"{stack.url('intake')}/v1/receipts/{seed.receipt}",
        headers={"X-Receipt-Secret": seed.secret},
        timeout=10,
    ).json()
    assert receipt["acknowledged"] is True
    assert receipt["status_label"] == "acknowledged at level 3"  # as the handler's view says


def test_a_named_reporter_reads_the_handlers_message_and_the_outcome(stack: Stack) -> None:
    """Issue 22: a report under her own name, followed up signed in (docs/reporters.md)."""
    intake, liu = stack.url("intake"), {"authorization": "Bearer dev-liu-token"}
    report = {**SEED_REPORT, "category": "harassment", "accused": [], "summary": "Insults"}
    answer = httpx.post(intake + "/v1/reports", json=report, headers=liu, timeout=10)
    assert answer.status_code == 202 and answer.json()["receipt"] is None, answer.text
    incident = answer.json()["incident_id"]
    acknowledge(stack, incident, "p-chen")
    base = f"{intake}/v1/incidents/{incident}"
    for path, body in (
        ("/messages", {"text": "We have spoken to the team."}),
        ("/status", {"status": "closed", "outcome": "A written warning."}),
    ):
        done = httpx.post(base + path, json=body, headers=as_("p-chen"), timeout=10)
        assert done.status_code == 202, done.text
    mine = httpx.get(intake + "/v1/my/reports", headers=liu, timeout=10).json()["reports"]
    assert incident in {r["incident_id"] for r in mine}
    seen = httpx.get(f"{intake}/v1/my/reports/{incident}", headers=liu, timeout=10).json()
    assert [m["text"] for m in seen["messages"]] == ["We have spoken to the team."]
    assert (seen["status_label"], seen["outcome"]) == ("closed with outcome", "A written warning.")
    other = httpx.get(f"{intake}/v1/my/reports/{incident}", headers=as_("p-chen"), timeout=10)
    assert other.status_code == 404


def test_the_ledger_knows_who_knew_and_never_the_accused_line(stack: Stack, seed: Seed) -> None:
    answer = httpx.get(
        f"{stack.url('audit')}/v1/incidents/{seed.incident}/knowledge", headers=AUDITOR, timeout=10
    )
    assert answer.status_code == 200, answer.text
    knew = {p["principal"]: p for p in answer.json()["principals"]}
    print({name: p["via"] for name, p in knew.items()})
    assert "notified" in knew["p-chen"]["via"]
    assert {"escalated", "notified"} <= set(knew["p-zhou"]["via"])
    assert {"escalated", "viewed", "acknowledged"} <= set(knew["p-sun"]["via"])
    assert knew["p-sun"]["acknowledged_at"] is not None
    assert knew["p-chen"]["acknowledged_at"] is None and knew["p-zhou"]["acknowledged_at"] is None
    assert "reporter" in knew
    assert not set(knew) & {*NEVER_TOLD, "p-board"}


def test_every_notice_carries_the_digest_of_the_report_it_shows(stack: Stack, seed: Seed) -> None:
    [submitted] = timeline(stack, seed.incident)
    digest = data(submitted)["report_digest"]
    wait_event(stack, seed.incident, NOTIFIED, lambda d: d["principal"] == "p-sun", timeout=10)
    shown = {
        data(e)["principal"]: data(e)["report_digest"]
        for e in timeline(stack, seed.incident, NOTIFIED)
    }
    assert shown == dict.fromkeys(["p-chen", "p-zhou", "p-sun"], digest)


# a SIGKILL while a deadline is due ----------------------------------------------------


async def test_a_deadline_due_while_escalation_is_killed_fires_once_on_restart_and_none_is_skipped(
    stack: Stack,
) -> None:
    """SIGKILL half a second before level 1's deadline, restart a second after it."""
    answer = httpx.post(stack.url("intake") + "/v1/reports", json=SEED_REPORT, timeout=10)
    assert answer.status_code == 202, answer.text
    incident = answer.json()["incident_id"]
    triaged = data(wait_event(stack, incident, TRIAGED))
    deadline = at(triaged["deadlines"]["level_1_acknowledge"])
    sleep_until(deadline - timedelta(seconds=0.5))
    stack.kill("escalation")
    assert datetime.now(UTC) < deadline, "killed too late: the deadline had passed"
    sleep_until(deadline + timedelta(seconds=1))
    assert escalation_levels(stack, incident) == [], "it fired while escalation was down"
    started = datetime.now(UTC)
    stack.start("escalation")

    # the overdue deadline fires at once, with the deadline it missed
    level_2 = wait_event(stack, incident, ESCALATED, lambda d: d["level"] == 2, timeout=20)
    fired = at(level_2["event"]["time"])
    print(f"level 2 fired {(fired - started).total_seconds():.2f}s after the restart")
    assert fired >= started  # by the restarted service, not before the kill
    assert at(data(level_2)["deadline"]) == deadline
    assert data(level_2)["recipients"] == ["p-zhou"]
    # level 2 then has its whole time: level 3 is neither skipped nor early
    level_3 = wait_event(stack, incident, ESCALATED, lambda d: d["level"] == 3, timeout=LEVEL + 5)
    missed = at(data(level_3)["deadline"])
    assert abs((missed - (fired + timedelta(seconds=LEVEL))).total_seconds()) < 0.1
    assert at(level_3["event"]["time"]) >= missed
    assert data(level_3)["recipients"] == ["p-sun"]

    print(f"escalation ready again in {stack.wait_ready('escalation'):.1f}s")
    acknowledge(stack, incident, "p-chen")  # level 1 may still acknowledge: it stops
    wait_event(stack, incident, CLEARED, timeout=10)
    on_topic = [
        e["event"]
        for e in await topic_events(stack, ["incident.escalations"])
        if e["event"]["subject"] == incident and e["event"]["type"] == ESCALATED
    ]
    # each due escalation (a level and the deadline it missed) is on the topic once
    due = Counter((e["data"]["level"], at(e["data"]["deadline"])) for e in on_topic)
    print(sorted(due.items()))
    assert set(due.values()) == {1}
    assert len({e["id"] for e in on_topic}) == len(on_topic)
    levels = Counter(level for level, _ in due)
    assert levels[2] == levels[3] == 1
    assert sorted(levels) == list(range(2, max(levels) + 1)), "a level was skipped"


# incidents demo -----------------------------------------------------------------------


def _incidents_command() -> list[str]:
    script = Path(sys.executable).parent / "incidents"
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


def test_incidents_demo_plays_the_case_and_prints_who_knew_what_when(stack: Stack) -> None:
    began = time.monotonic()
    result = subprocess.run(
        [
            *_incidents_command(),
            "demo",
            "--intake",
            stack.url("intake"),
            "--audit",
            stack.url("audit"),
            "--speed",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "COLUMNS": "160", "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        check=False,
    )
    print(f"demo ran {time.monotonic() - began:.1f}s\n{result.stdout}{result.stderr}")
    assert result.returncode == 0
    table = result.stdout.split("Who knew what, when")[1].split("Never told")[0]
    for principal in ("p-chen", "p-zhou", "p-sun", "reporter"):
        assert principal in table
    for principal in NEVER_TOLD:
        assert principal not in table
    assert "acknowledges" in result.stdout and "404" in result.stdout


def test_incidents_demo_says_so_and_exits_non_zero_when_the_stack_is_not_there() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [*_incidents_command(), "demo", "--intake", nowhere, "--audit", nowhere],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert "not reachable" in result.stdout and "INCIDENTS_POLICY_FILE" in result.stdout


# no event ever routes the report to the accused line ------------------------------------


async def test_no_event_on_any_topic_routes_anything_to_the_accused_or_his_line(
    stack: Stack, seed: Seed
) -> None:
    events = await topic_events(stack)
    topics = {e["topic"] for e in events}
    assert {"incident.triage", "incident.activity", "incident.escalations"} <= topics
    routing = [e["event"] for e in events if e["event"]["type"] in ROUTING_TYPES]
    assert any(e["subject"] == seed.incident for e in routing)
    for event in routing:
        named = {event["data"].get("principal"), *event["data"].get("principals", [])}
        named |= set(event["data"].get("recipients", []))
        assert not named & set(NEVER_TOLD), event


# the accused named in words, not by id (issue 18) --------------------------------------

SPELLINGS = ("p-wang", "wang  JUN", "王军", "Ｗａｎｇ　Ｊｕｎ")  # noqa: RUF001
"""The accused by id, by his display name in another case and spacing, by the
alternative name the directory holds (Chinese characters), and in full-width letters."""


def test_the_accused_named_in_words_routes_as_by_id_and_an_unknown_name_only_to_the_independent(
    stack: Stack,
) -> None:
    decided: dict[str, tuple[Any, ...]] = {}
    for spelling in SPELLINGS:
        incident = submit(stack, {**SEED_REPORT, "accused": [spelling]})
        triaged = data(wait_event(stack, incident, TRIAGED))
        accused = data(wait_event(stack, incident, "incident.report.submitted.v1"))["accused"]
        assert accused == ["p-wang"], (spelling, accused)
        excluded = {x["principal"] for x in triaged["excluded"]}
        assert set(NEVER_TOLD) <= excluded, (spelling, excluded)
        levels = sorted(triaged["chain"], key=lambda lv: lv["level"])
        decided[spelling] = (
            triaged["conflict_unresolved"],
            tuple(tuple(lv["recipients"]) for lv in levels),
            tuple(sorted(excluded)),
        )
    assert len(set(decided.values())) == 1, decided
    assert next(iter(decided.values()))[1][0] == ("p-chen",)

    unknown = submit(stack, {**SEED_REPORT, "accused": ["Somebody Nobody Knows"]})
    triaged = data(wait_event(stack, unknown, TRIAGED))
    assert triaged["conflict_unresolved"] is True
    roles = [lv["role"] for lv in sorted(triaged["chain"], key=lambda lv: lv["level"])]
    assert roles == ["chief_ethics_officer", "board_audit_committee"]
    asked = {p for lv in triaged["chain"] for p in lv["recipients"]}
    assert asked <= {"p-sun", "p-board"}, asked
    for principal in ("p-chen", "p-zhou", *NEVER_TOLD):
        answer = httpx.get(
            f"{stack.url('intake')}/v1/incidents/{unknown}", headers=as_(principal), timeout=10
        )
        assert answer.status_code == 404, (principal, answer.text)


# evidence files (issue 22) --------------------------------------------------------------


def test_the_reporters_pdf_reaches_the_handler_recorded_and_never_the_accused(
    stack: Stack, seed: Seed
) -> None:
    """Through the whole stack: the anonymous reporter attaches a 5 MB PDF by her receipt;
    p-chen, routed at level 1, downloads it (recorded in the ledger); the accused gets the
    404 of an unknown file, recorded too. (Erasure: the next test.)"""
    content = b"%PDF-1.7\n" + os.urandom(5 * 1024 * 1024 - 9)
    answer = httpx.post(
        f"{stack.url('intake')}/v1/receipts/{seed.receipt}/attachments",
        content=content,
        headers={"x-receipt-secret": seed.secret, "x-filename": "statement.pdf"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    file_id = answer.json()["attachment_id"]
    path = f"{stack.url('intake')}/v1/incidents/{seed.incident}/attachments/{file_id}"
    got = httpx.get(path, headers=as_("p-chen"), timeout=30)
    assert got.status_code == 200 and got.content == content
    refused = httpx.get(path, headers=as_("p-wang"), timeout=10)
    unknown = httpx.get(
        f"{stack.url('intake')}/v1/incidents/{seed.incident}/attachments/{seed.incident}",
        headers=as_("p-chen"),
        timeout=10,
    )
    assert refused.status_code == unknown.status_code == 404
    assert refused.content == unknown.content
    wait_event(
        stack,
        seed.incident,
        "incident.attachment.downloaded.v1",
        lambda d: d["principal"] == "p-chen" and d["attachment_id"] == file_id,
    )
    wait_event(
        stack,
        seed.incident,
        DENIED,
        lambda d: d["principal"] == "p-wang" and d["action"] == "download",
    )


# every record is authentic and as published (issue 20) ----------------------------------


async def test_every_record_on_every_topic_verifies_and_matches_its_published_schema(
    stack: Stack, seed: Seed
) -> None:
    """After the seed case and `incidents demo` ran on this stack: each record on each topic
    verifies with a verifier written from docs/event-signing.md alone (tests.event_verifier
    imports nothing of the services), under the services' key set, signed by a service the
    catalog lets publish its type; and validates against its JSON Schema in schemas/."""
    from jsonschema import Draft202012Validator

    from services.domain.events import CATALOG
    from services.infra import signing  # only to write the development key set out as YAML
    from tests import event_verifier

    keys = event_verifier.read_key_set(
        signing.key_set_yaml(signing.development_key_set().entries.values())
    )
    events = await topic_events(stack)
    assert len(events) > 100, len(events)
    validators: dict[str, Draft202012Validator] = {}
    for entry in events:
        event = entry["event"]
        ok, service = event_verifier.verify(json.dumps(event).encode(), keys)
        assert ok, (entry["topic"], event["type"], event.get("signingkey"))
        assert service in CATALOG[event["type"]].producers, (service, event["type"])
        if event["type"] not in validators:
            schema = json.loads((ROOT / "schemas" / f"{event['type']}.json").read_text())
            validators[event["type"]] = Draft202012Validator(
                schema, format_checker=Draft202012Validator.FORMAT_CHECKER
            )
        errors = [e.message for e in validators[event["type"]].iter_errors(event)]
        assert not errors, (event["type"], errors[:3])


def test_a_file_is_unreadable_once_its_closed_incident_is_erased(stack: Stack) -> None:
    """Through the whole stack: a report of category `other` (kept 2 s once closed by this
    module's policy; the erasure job runs every second) with a PDF attached by receipt;
    p-chen reads the file, acknowledges and closes; once the job erased the incident
    (`incident.erased.v1`: its key destroyed), the file is refused and nothing of it is
    served, to the handler or by the receipt."""
    intake = stack.url("intake")
    report = {**SEED_REPORT, "category": "other", "accused": [], "summary": "Expense fraud"}
    answer = httpx.post(intake + "/v1/reports", json=report, timeout=10)
    assert answer.status_code == 202, answer.text
    incident, receipt, secret = (answer.json()[k] for k in ("incident_id", "receipt", "secret"))
    content = b"%PDF-1.7\n" + os.urandom(256 * 1024)
    added = httpx.post(
        f"{intake}/v1/receipts/{receipt}/attachments",
        content=content,
        headers={"x-receipt-secret": secret, "x-filename": "ledger-extract.pdf"},
        timeout=30,
    )
    assert added.status_code == 201, added.text
    file_id = added.json()["attachment_id"]
    path = f"{intake}/v1/incidents/{incident}/attachments/{file_id}"
    acknowledge(stack, incident, "p-chen")
    assert httpx.get(path, headers=as_("p-chen"), timeout=30).content == content
    closed = httpx.post(
        f"{intake}/v1/incidents/{incident}/status",
        json={"status": "closed", "outcome": "Unfounded."},
        headers=as_("p-chen"),
        timeout=10,
    )
    assert closed.status_code == 202, closed.text
    wait_event(stack, incident, "incident.erased.v1", timeout=RETAINED + 30)
    after = httpx.get(path, headers=as_("p-chen"), timeout=10)
    assert after.status_code in {404, 409, 410}, after.status_code
    assert content[:64] not in after.content and content[-64:] not in after.content
    hers = httpx.get(
        f"{intake}/v1/receipts/{receipt}/attachments/{file_id}",
        headers={"x-receipt-secret": secret},
        timeout=10,
    )
    assert hers.status_code >= 400 and content[:64] not in hers.content, hers.status_code
