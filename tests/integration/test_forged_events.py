"""Forged events through the real services (issue 20): published straight onto Kafka,
they are refused before anything acts on them, dead-lettered with the reason and
recorded in the ledger as rejected.

The two forgeries of the issue: an acknowledgement that would stop an escalation, and
an escalation that would route an incident to an unrelated employee. Each comes
unsigned, signed with a revoked key, replayed under a genuine event's id, or signed
by a service that does not own the fact.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from services.audit.app import create_app as create_audit
from services.domain.events import InputRejected, Topic, make_event, parse_event
from services.escalation.app import create_app as create_escalation
from services.infra import signing
from services.infra.settings import (
    AuditSettings,
    CommonSettings,
    EscalationSettings,
    IntakeSettings,
    TriageSettings,
)
from services.intake.app import create_app as create_intake
from services.triage.app import create_app as create_triage
from tests import event_verifier
from tests.helpers import SEED_CASE, critical_policy, eventually, read_all, serving, signed

pytestmark = pytest.mark.integration

REVOKED = signing.Signer("intake", Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
"""An intake key the key set lists as revoked (a key that leaked and was rotated out)."""


@dataclass
class Stack:
    intake: httpx.AsyncClient
    settings: CommonSettings
    keys_file: Path
    audit: httpx.AsyncClient

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()


@pytest.fixture
async def stack(settings: CommonSettings, tmp_path: Path) -> AsyncIterator[Stack]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(critical_policy("forgery-test", "4s"))
    keys = tmp_path / "event-keys.yaml"
    revoked = signing.KeyEntry(
        REVOKED.key_id, "intake", REVOKED.private_key.public_key(), revoked=True
    )
    keys.write_text(
        signing.key_set_yaml([*signing.development_key_set().entries.values(), revoked])
    )
    common = {**settings.model_dump(), "policy_file": policy, "event_keys_file": keys}
    async with (
        serving(create_intake(IntakeSettings(**common)), "http://intake") as intake,
        serving(create_triage(TriageSettings(**common)), "http://triage"),
        serving(create_escalation(EscalationSettings(**common)), "http://escalation"),
        serving(
            create_audit(AuditSettings(**common, signing_key_file=tmp_path / "audit.pem")),
            "http://audit",
        ) as audit,
    ):
        yield Stack(intake, settings, keys, audit)


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer dev-{name}-token"}


async def dead_letters(stack: Stack, service: str) -> list[tuple[str, str]]:
    """(digest of the record, reason) of each dead letter of `service`."""
    got = await read_all(
        stack.settings.kafka_bootstrap, stack.settings.topic("incident.deadletter")
    )
    found = []
    for record in got:
        envelope, data = parse_event(record.value)
        if envelope.actor == f"system:{service}" and isinstance(data, InputRejected):
            found.append((digest(base64.b64decode(data.original_b64)), data.reason))
    return found


def digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


async def rejected_leaves(stack: Stack) -> dict[str, str]:
    """Audit's rejected entries: the reason, by the digest of the record."""
    rows = await stack.sql("SELECT leaf FROM audit.ledger WHERE NOT valid")
    leaves = [json.loads(bytes(r["leaf"])) for r in rows]
    return {digest(base64.b64decode(leaf["raw"])): leaf["reason"] for leaf in leaves}


def rejected(service: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "incidents_rejected_events_total", {"service": service, "reason": reason}
    )
    return value or 0.0


async def test_forged_acknowledgements_and_escalations_are_refused_recorded_and_change_nothing(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    before = {r: rejected("escalation", r) for r in signing.REASONS}
    incident = (await stack.intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]

    async def opened_by_chen() -> dict[str, Any] | None:
        answer = await stack.intake.get(f"/v1/incidents/{incident}", headers=auth("chen"))
        return answer.json() if answer.status_code == 200 else None

    await eventually(opened_by_chen, timeout=20)  # routed at level 1; the view is recorded
    [viewed] = await eventually(
        lambda: stack.sql(
            "SELECT body FROM intake.events WHERE type = 'incident.viewed.v1' AND stream_id = $1",
            incident,
        )
    )
    viewed_id = json.loads(bytes(viewed["body"]))["id"]
    await eventually(  # escalation has accepted the genuine view
        lambda: stack.sql("SELECT 1 FROM escalation.event_digests WHERE event_id = $1", viewed_id)
    )

    now = datetime.now(UTC)

    def acknowledgement(principal: str, event_id: str | None = None) -> dict[str, Any]:
        return make_event(
            "incident.acknowledged.v1",
            subject=incident,
            data={"principal": principal, "level": 1},
            source="/services/intake",
            time=now,
            actor=principal,
            event_id=event_id,
        ).to_dict()

    def escalation_to(person: str, source: str = "/services/escalation") -> dict[str, Any]:
        data = {
            "level": 2,
            "recipients": [person],
            "reason": "not_acknowledged",
            "deadline": (now + timedelta(hours=1)).isoformat(),
        }
        return make_event(
            "incident.escalated.v1", subject=incident, data=data, source=source, time=now
        ).to_dict()

    forged_by_board = json.dumps(acknowledgement("p-board")).encode()  # the forgery
    forgeries = {
        "incident.activity": {
            forged_by_board: "unsigned",
            REVOKED.sign_bytes(acknowledgement("p-chen")): "revoked key",
            # a genuine signature over an id intake used before: the view's
            signed(acknowledgement("p-chen", viewed_id), "intake"): "replayed",
        },
        "incident.escalations": {
            json.dumps(escalation_to("p-ma")).encode(): "unsigned",
            signed(escalation_to("p-ma", "/services/triage"), "triage"): "wrong producer",
        },
    }
    for topic, values in forgeries.items():
        for value in values:
            for _ in range(2 if value == forged_by_board else 1):  # delivered twice
                await producer.send_and_wait(
                    stack.settings.topic(topic), value, key=incident.encode()
                )

    def refused_all(found: dict[str, str], wanted: dict[bytes, str]) -> bool:
        return all(found.get(digest(v)) == f"not authentic: {r}" for v, r in wanted.items())

    # Each consumer dead-letters what it was sent, with the reason, and acts on none.
    for service, topic in [
        ("escalation", "incident.activity"),
        ("triage", "incident.activity"),
        ("intake", "incident.escalations"),
    ]:

        async def refused_by(service: str = service, topic: str = topic) -> bool:
            return refused_all(dict(await dead_letters(stack, service)), forgeries[topic])

        await eventually(refused_by, timeout=20)
    # once each: the copy delivered again (before the others, on the same partition) is
    # not dead-lettered a second time
    for service in ("escalation", "triage"):
        letters = Counter(d for d, _ in await dead_letters(stack, service))
        assert all(letters[digest(v)] == 1 for v in forgeries["incident.activity"]), service
    assert rejected("escalation", "unsigned") >= before["unsigned"] + 1
    assert rejected("escalation", "replayed") >= before["replayed"] + 1

    # No escalation stopped: level 2 comes on time, and nothing was cleared.
    async def escalated_to_level_2() -> list[Any] | None:
        got = await read_all(
            stack.settings.kafka_bootstrap, stack.settings.topic("incident.escalations")
        )
        genuine = [r.value for r in got if r.value not in forgeries["incident.escalations"]]
        mine = [e for e in (parse_event(v)[0] for v in genuine) if e.subject == incident]
        return mine if any(e.type == "incident.escalated.v1" for e in mine) else None

    events = await eventually(escalated_to_level_2, timeout=30)
    assert not any(e.type == "incident.escalation.cleared.v1" for e in events)
    assert next(e.data["recipients"] for e in events if e.type == "incident.escalated.v1") == [
        "p-zhou"
    ]

    # No report served to the unrelated employee the forged escalation named.
    answer = await stack.intake.get(f"/v1/incidents/{incident}", headers=auth("ma"))
    assert answer.status_code == 404
    routed = await stack.sql(
        "SELECT principal FROM intake.routing WHERE incident_id = $1 AND routed", incident
    )
    assert "p-ma" not in {r["principal"] for r in routed}

    # The ledger keeps every attempt as rejected input, with the reason.
    every = {v: r for values in forgeries.values() for v, r in values.items()}

    async def in_the_ledger() -> bool:
        return refused_all(await rejected_leaves(stack), every)

    await eventually(in_the_ledger, timeout=20)
    valid = await stack.sql(
        "SELECT event_type FROM audit.ledger WHERE incident_id = $1 AND valid", incident
    )
    assert "incident.acknowledged.v1" not in {r["event_type"] for r in valid}

    # Everything the services published verifies with a verifier written from the docs.
    keys = event_verifier.read_key_set(stack.keys_file.read_text())
    checked = 0
    for topic in Topic:
        if topic == Topic.INBOUND:
            continue
        for record in await read_all(stack.settings.kafka_bootstrap, stack.settings.topic(topic)):
            if record.value in every:
                continue
            ok, service = event_verifier.verify(record.value, keys)
            assert ok, (topic, record.value[:200])
            assert json.loads(record.value)["source"] == f"/services/{service}"
            checked += 1
    assert checked > 20

    # Correlation everywhere: every event of the incident, whichever service published
    # it and whatever caused it (a deadline, for the escalation; an auditor's read),
    # carries the incident's first event id.
    read = await stack.audit.get(f"/v1/incidents/{incident}/timeline", headers=auth("auditor"))
    assert read.status_code == 200, read.text

    async def events_of_incident() -> list[dict[str, Any]] | None:
        found = []
        for topic in Topic:
            if topic == Topic.INBOUND:
                continue
            name = stack.settings.topic(topic)
            for record in await read_all(stack.settings.kafka_bootstrap, name):
                event = json.loads(record.value)
                if record.value not in every and event.get("subject") == incident:
                    found.append(event)
        types = {e["type"] for e in found}
        return found if "audit.read.recorded.v1" in types else None

    of_incident = await eventually(events_of_incident, timeout=20)
    [first] = [e for e in of_incident if e["type"] == "incident.report.submitted.v1"]
    types = {e["type"] for e in of_incident}
    assert {"incident.triaged.v1", "incident.viewed.v1", "incident.escalated.v1"} <= types
    missing = [e["type"] for e in of_incident if e.get("correlationid") != first["id"]]
    assert missing == [], missing
