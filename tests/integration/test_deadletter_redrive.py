"""`incidents deadletter list | redrive` against a real broker and PostgreSQL.

The case of docs/operations.md, "A report nobody decided": triage runs with an event
key set that lacks intake's key (a rotation done out of order), so it refuses intake's
report as signed by an unknown key and dead-letters it. Triage is restarted with the
right key set; its consumer group has moved past the report, so nothing decides it until
operations re-drive the dead letter. Then triage decides it, once, however many times
it is re-driven.

"Triage has read past record X" is never a matter of waiting: a barrier report, posted
until one lands on X's partition after X, is decided only once everything before it on
that partition was handled.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.domain.events import (
    InputRejected,
    PersonUpserted,
    Topic,
    Viewed,
    b64,
    make_event,
    parse_envelope,
)
from services.infra import signing
from services.infra.settings import CommonSettings, IntakeSettings, TriageSettings
from services.intake.app import create_app as create_intake
from services.triage.app import create_app as create_triage
from tests.helpers import SEED_CASE, critical_policy, eventually, fetch_rows, read_all, serving

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def incidents(settings: CommonSettings, *args: str) -> tuple[int, str, str]:
    """Run the `incidents` command as operations would, with the services' settings."""
    env = {
        **os.environ,
        "INCIDENTS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "INCIDENTS_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "INCIDENTS_ENVIRONMENT": "test",
        "COLUMNS": "400",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


# ----------------------------------------------------------------------------- list


async def test_list_shows_who_refused_what_and_why_never_the_originals_data(
    settings: CommonSettings, producer: AIOKafkaProducer
) -> None:
    secret = "the words of the report"
    original = {  # a report as a producer would send it (the dead letter keeps it whole)
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": "incident.report.submitted.v1",
        "source": "/services/intake",
        "subject": "inc-1",
        "time": "2026-12-07T10:00:00Z",
        "data": {"category": "fraud", "summary": secret, "description": secret},
    }
    now = datetime.now(UTC)

    def dead_letter(reason: str, topic: str, offset: int, when: datetime, value: bytes) -> Any:
        return make_event(
            InputRejected.TYPE,
            subject="deadletter",
            data=InputRejected(
                reason=reason,
                source_topic=settings.topic(topic),
                source_partition=1,
                source_offset=offset,
                original_b64=b64(value),
            ),
            source="/services/triage",
            time=when,
            actor="system:triage",
        )

    refused = dead_letter(
        "not authentic: unknown key", Topic.REPORTS, 7, now, json.dumps(original).encode()
    )
    older = dead_letter(
        "handler failed: KeyError", Topic.ACTIVITY, 3, now - timedelta(days=2), b"{"
    )
    for letter in (refused, older):
        await producer.send_and_wait(
            settings.topic(Topic.DEADLETTER),
            signing.sign_event(letter.to_dict()),
            key=b"deadletter",
        )

    code, out, err = await incidents(settings, "deadletter", "list")
    assert code == 0, err
    for shown in (refused.id, older.id, original["id"], original["type"], "unknown key", "triage"):
        assert shown in out
    assert f"{settings.topic(Topic.REPORTS)}[1]@7" in out
    assert "authentic" in out
    assert secret not in out + err

    code, out, err = await incidents(settings, "deadletter", "list", "--json", "--since", "1d")
    assert code == 0, err
    [listed] = [json.loads(line) for line in out.splitlines()]
    assert listed["id"] == refused.id
    assert listed["original_id"] == original["id"]
    assert listed["incident"] == "inc-1"
    assert listed["reason"] == "not authentic: unknown key"
    assert secret not in out

    for flags in (
        ["--source-topic", "incident.activity"],
        ["--reason-contains", "KEYERROR"],
    ):
        code, out, err = await incidents(settings, "deadletter", "list", "--json", *flags)
        assert code == 0, err
        assert [json.loads(line)["id"] for line in out.splitlines()] == [older.id]


async def test_list_shows_a_dead_letters_text_as_text_and_whether_it_is_signed(
    settings: CommonSettings, producer: AIOKafkaProducer
) -> None:
    """Review 2, D6: a reason quoting markup or terminal codes is printed as text, and a
    dead letter nobody signed is shown as such (its text is believed of none)."""
    topic = settings.topic(Topic.DEADLETTER)
    hostile = "invalid report: unknown category '[/]' [red]x\x1b[2J"
    for sign in (True, False):
        letter = make_event(
            InputRejected.TYPE,
            subject="deadletter",
            data=InputRejected(
                reason=hostile, source_topic=settings.topic(Topic.INBOUND), original_b64=""
            ),
            source="/services/intake",
            time=datetime.now(UTC),
            actor="system:intake",
        )
        value = signing.sign_event(letter.to_dict()) if sign else letter.to_bytes()
        await producer.send_and_wait(topic, value, key=b"deadletter")

    code, out, err = await incidents(settings, "deadletter", "list")
    assert code == 0, err
    assert "\x1b" not in out + err
    assert out.count("unknown category '[/]' [red]x\\x1b[2J") == 2
    assert "authentic" in out and "unsigned" in out
    code, out, err = await incidents(settings, "deadletter", "list", "--json")
    assert sorted(json.loads(line)["signature"] for line in out.splitlines()) == [
        "authentic",
        "unsigned",
    ]


async def test_redrive_refuses_directory_changes_originals_named_on_another_topic_and_forgeries(
    settings: CommonSettings, producer: AIOKafkaProducer
) -> None:
    """Review 2, D1, L4: nothing of these is sent, and each refusal says why."""
    now = datetime.now(UTC)

    def original(type_: str, data: dict[str, Any], subject: str) -> bytes:
        event = make_event(type_, subject=subject, data=data, source="/services/intake", time=now)
        return signing.sign_event(event.to_dict())

    moved = original(PersonUpserted.TYPE, {"person_id": "p-wang", "manager_id": "p-li"}, "p-wang")
    viewed = original(
        Viewed.TYPE, {"principal": "p-chen", "report_digest": "sha256:" + "ab" * 32}, "inc-9"
    )
    letters = {  # what a dead letter says: (original, the topic it names, signed)
        "directory": (moved, Topic.DIRECTORY, True),
        "elsewhere": (viewed, Topic.REPORTS, True),
        "forged": (viewed, Topic.ACTIVITY, False),
    }
    ids = {}
    for name, (value, topic, sign) in letters.items():
        letter = make_event(
            InputRejected.TYPE,
            subject="deadletter",
            data=InputRejected(
                reason="not authentic: unknown key",
                source_topic=settings.topic(topic),
                source_partition=0,
                source_offset=1,
                original_b64=b64(value),
            ),
            source="/services/triage",
            time=now,
            actor="system:triage",
        )
        ids[name] = letter.id
        record = signing.sign_event(letter.to_dict()) if sign else letter.to_bytes()
        await producer.send_and_wait(settings.topic(Topic.DEADLETTER), record, key=b"deadletter")

    args = [a for name in ids.values() for a in ("--event-id", name)]
    code, out, err = await incidents(settings, "deadletter", "redrive", *args)
    assert code == 1, err
    said = " ".join(err.split())
    assert (
        f"dead letter {ids['directory']}: a directory change is not re-driven: it could undo"
        " a later one; publish the current records instead: incidents directory republish"
        " --person ID (or --all)"
    ) in said
    assert (
        f"dead letter {ids['elsewhere']}: the dead letter says the original was read on"
        f" {settings.topic(Topic.REPORTS)}, but a incident.viewed.v1 belongs on"
        f" {settings.topic(Topic.ACTIVITY)} only: not re-driven"
    ) in said
    assert (
        f"dead letter {ids['forged']}: the dead letter itself is not authentic (unsigned)" in said
    )
    assert "sent: 0 original(s)" in out


async def test_list_says_when_the_topic_does_not_exist(settings: CommonSettings) -> None:
    code, _, err = await incidents(settings, "deadletter", "list")
    assert code == 2
    assert f"{settings.topic(Topic.DEADLETTER)} does not exist" in err


# ------------------------------------------------------------------------- redrive


@dataclass
class Stack:
    settings: CommonSettings
    common: dict[str, Any]
    exits: AsyncExitStack = field(default_factory=AsyncExitStack)
    intake: httpx.AsyncClient | None = None

    async def start_triage(self, keys_file: Path | None) -> AsyncExitStack:
        triage = AsyncExitStack()
        await triage.enter_async_context(
            serving(create_triage(TriageSettings(**{**self.common, "event_keys_file": keys_file})))
        )
        return triage

    async def report(self) -> str:
        assert self.intake is not None
        answer = await self.intake.post("/v1/reports", json=SEED_CASE)
        assert answer.status_code == 202, answer.text
        incident: str = answer.json()["incident_id"]
        return incident

    async def report_record(self, incident: str) -> Any:
        """The incident.reports record of the incident's report, once published."""

        async def found() -> Any:
            records = await read_all(self.settings.kafka_bootstrap, self.reports_topic)
            for record in records:
                event = parse_envelope(record.value)
                if event.subject == incident and event.type == "incident.report.submitted.v1":
                    return record
            return None

        return await eventually(found, timeout=20)

    @property
    def reports_topic(self) -> str:
        return self.settings.topic(Topic.REPORTS)

    async def decisions(self, incident: str) -> int:
        """How many decisions triage kept for the incident (its triaged events)."""
        rows = await fetch_rows(
            self.settings,
            "SELECT count(*) AS n FROM triage.events"
            " WHERE stream_id = $1 AND type = 'incident.triaged.v1'",
            incident,
        )
        return int(rows[0]["n"])

    async def barrier(self, partition: int, after: int) -> None:
        """Post reports until one lands on `partition` past offset `after`, and wait
        until triage decided it: triage then handled everything before it there."""
        for _ in range(60):
            incident = await self.report()
            record = await self.report_record(incident)
            if record.partition == partition and record.offset > after:

                async def decided(incident: str = incident) -> bool:
                    return await self.decisions(incident) == 1

                await eventually(decided, timeout=30)
                return
        raise AssertionError(f"no report landed on partition {partition}")


@pytest.fixture
async def stack(settings: CommonSettings, tmp_path: Path) -> AsyncIterator[Stack]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(critical_policy("deadletter-redrive-test", "1h"))
    common = {**settings.model_dump(), "policy_file": policy}
    stack = Stack(settings, common)
    async with stack.exits:
        stack.intake = await stack.exits.enter_async_context(
            serving(create_intake(IntakeSettings(**common)), "http://intake")
        )
        yield stack


async def test_a_report_triage_refused_is_decided_once_after_the_fix_and_a_redrive(
    stack: Stack, tmp_path: Path
) -> None:
    # Triage's key set lacks intake's key: intake's report is refused and dead-lettered.
    without_intake = tmp_path / "keys-without-intake.yaml"
    entries = signing.development_key_set().entries.values()
    without_intake.write_text(signing.key_set_yaml(e for e in entries if e.service != "intake"))
    triage = await stack.start_triage(without_intake)
    incident = await stack.report()
    record = await stack.report_record(incident)

    async def dead_lettered() -> list[dict[str, Any]]:
        code, out, err = await incidents(
            stack.settings, "deadletter", "list", "--json", "--incident", incident
        )
        assert code == 0, err
        return [json.loads(line) for line in out.splitlines()]

    [letter] = await eventually(dead_lettered, timeout=30)
    assert letter["rejected_by"] == "triage"
    assert letter["reason"] == "not authentic: unknown key"
    assert (letter["source_partition"], letter["source_offset"]) == (
        record.partition,
        record.offset,
    )
    await triage.aclose()

    # Fixed: triage restarted with the right key set. Its group resumes past the report.
    triage = await stack.start_triage(None)
    try:
        await stack.barrier(record.partition, record.offset)
        assert await stack.decisions(incident) == 0

        code, out, err = await incidents(
            stack.settings, "deadletter", "redrive", "--event-id", letter["id"], "--dry-run"
        )
        assert code == 0, err
        assert letter["original_id"] in out and "would send" in out

        async def redrive() -> int:
            """Re-drive the dead letter; the offset its original was sent to."""
            code, out, err = await incidents(
                stack.settings, "deadletter", "redrive", "--event-id", letter["id"]
            )
            assert code == 0, err
            assert letter["original_id"] in out and "sent" in out
            resent = [
                r
                for r in await read_all(stack.settings.kafka_bootstrap, stack.reports_topic)
                if r.value == record.value and r.offset != record.offset
            ]
            latest = max(resent, key=lambda r: r.offset)
            assert latest.key == record.key  # the key derived as intake's relay did
            assert dict(latest.headers)["content-type"] == dict(record.headers)["content-type"]
            return int(latest.offset) if latest.partition == record.partition else -1

        reports = await read_all(stack.settings.kafka_bootstrap, stack.reports_topic)
        assert [r.offset for r in reports if r.value == record.value] == [record.offset]

        first = await redrive()
        assert first > record.offset  # the same key: the same partition, after the report

        async def decided() -> bool:
            return await stack.decisions(incident) == 1

        await eventually(decided, timeout=30)

        # Re-driven again: triage reads it again, tracks it by its event id, decides nothing.
        second = await redrive()
        assert second > first
        await stack.barrier(record.partition, second)
        assert await stack.decisions(incident) == 1
        # Handled once, at the first re-drive's coordinates; the second was skipped as
        # handled (not failed: a second decision would fail and be dead-lettered).
        tracked = await fetch_rows(
            stack.settings,
            'SELECT consumer, event_key, "offset" FROM triage.tracking WHERE topic = $1',
            stack.reports_topic,
        )
        [handled] = [r for r in tracked if r["event_key"] == letter["original_id"]]
        assert handled["offset"] == first
        assert not [r for r in tracked if r["consumer"].endswith("-poison")]
    finally:
        await triage.aclose()
