"""Triage on the real broker and database: routing that never reaches the conflicted."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from services.domain.events import make_event, parse_event
from services.infra.settings import CommonSettings, IntakeSettings, TriageSettings
from services.intake.app import create_app as create_intake
from services.triage.app import create_app as create_triage
from services.triage.handlers import PolicyConflict, Triage
from tests.helpers import eventually, read_all, serving, signed

pytestmark = pytest.mark.integration
SEED_CASE = {
    "category": "sexual_misconduct",
    "summary": "Assault on a work trip",
    "description": "My store manager assaulted me in the hotel on the Shenzhen trip.",
    "unit": "city-retail",
    "accused": ["p-wang"],
}


@pytest.fixture
async def stack(settings: CommonSettings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """Intake (which seeds the directory) and triage, in this process."""
    common = settings.model_dump()
    triage_app = create_triage(TriageSettings(**common))
    async with (
        serving(create_intake(IntakeSettings(**common)), "http://intake") as intake,
        serving(triage_app, "http://triage"),
    ):
        await eventually(lambda: _directory_loaded(triage_app), timeout=20)
        yield intake, triage_app


async def _directory_loaded(app: FastAPI) -> bool:
    triage = app.state.triage
    async with triage.runtime.db.acquire() as conn:
        count = await conn.fetchval("SELECT count(*) FROM directory_log")
    return bool(count >= 1)  # the seed's people: one import event


async def decisions_for(settings: CommonSettings, incident: str) -> list[Any]:
    records: list[Any] = []
    for topic in ("incident.triage", "incident.activity"):
        got = await read_all(settings.kafka_bootstrap, settings.topic(topic))
        records.extend(parse_event(r.value)[0] for r in got)
    return [e for e in records if e.subject == incident]


async def test_the_seed_case_goes_to_the_units_hr_handler_and_never_to_the_accused_or_his_line(
    stack: tuple[httpx.AsyncClient, FastAPI], settings: CommonSettings
) -> None:
    intake, _ = stack
    answer = await intake.post("/v1/reports", json=SEED_CASE)
    incident = answer.json()["incident_id"]
    events = await eventually(lambda: _at_least(settings, incident, 3))
    by_type = {e.type: e for e in events}
    triaged = by_type["incident.triaged.v1"].data
    assert triaged["severity"] == "critical"
    assert triaged["chain"][0]["recipients"] == ["p-chen"]
    excluded = {x["principal"]: x["rule"] for x in triaged["excluded"]}
    assert excluded["p-wang"] == "accused"
    assert excluded["p-li"] == excluded["p-zhang"] == "accused_management_chain"
    assert by_type["incident.assigned.v1"].data["principals"] == ["p-chen"]
    notified = [e.data["principal"] for e in events if e.type == "incident.notified.v1"]
    assert notified == ["p-chen"]
    for level in triaged["chain"]:
        assert not {"p-wang", "p-li", "p-zhang"} & set(level["recipients"])
    assert by_type["incident.triaged.v1"].causationid is not None


async def _at_least(settings: CommonSettings, incident: str, n: int) -> list[Any] | None:
    events = await decisions_for(settings, incident)
    return events if len(events) >= n else None


async def test_a_redelivered_report_makes_no_second_decision_or_notification(
    stack: tuple[httpx.AsyncClient, FastAPI], settings: CommonSettings, producer: AIOKafkaProducer
) -> None:
    intake, _ = stack
    incident = (await intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]
    await eventually(lambda: _at_least(settings, incident, 3))
    [original] = [
        r
        for r in await read_all(settings.kafka_bootstrap, settings.topic("incident.reports"))
        if r.key == incident.encode()
    ]
    for _ in range(2):
        await producer.send_and_wait(
            original.topic, original.value, key=original.key, headers=list(original.headers)
        )
    marker = (await intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]
    await eventually(lambda: _at_least(settings, marker, 3))
    events = await decisions_for(settings, incident)
    assert [e.type for e in events].count("incident.triaged.v1") == 1
    assert [e.type for e in events].count("incident.notified.v1") == 1


async def test_a_changed_policy_under_an_old_version_is_refused_at_start(
    settings: CommonSettings, tmp_path: Path
) -> None:
    common = settings.model_dump()
    async with serving(create_triage(TriageSettings(**common)), "http://triage"):
        pass
    changed = tmp_path / "policy.yaml"
    original = Path(TriageSettings().policy_file).read_text()
    changed.write_text(original.replace("acknowledge_within: 1h", "acknowledge_within: 3h"))
    app = create_triage(TriageSettings(**{**common, "policy_file": changed}))
    with pytest.raises(PolicyConflict, match="give the changed policy a new version"):
        async with serving(app, "http://triage"):
            pass


async def test_a_new_policy_version_applies_to_new_incidents_only(
    settings: CommonSettings, tmp_path: Path
) -> None:
    common = settings.model_dump()
    newer = tmp_path / "policy.yaml"
    original = Path(TriageSettings().policy_file).read_text()
    newer.write_text(
        original.replace('version: "2026-12-08"', 'version: "2026-12-31"').replace(
            "acknowledge_within: 1h", "acknowledge_within: 30m"
        )
    )
    versions = []
    for policy_file in (TriageSettings().policy_file, newer):
        triage_app = create_triage(TriageSettings(**{**common, "policy_file": policy_file}))
        async with (
            serving(create_intake(IntakeSettings(**common)), "http://intake") as intake,
            serving(triage_app, "http://triage"),
        ):
            await eventually(partial(_directory_loaded, triage_app), timeout=20)
            incident = (await intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]
            events = await eventually(partial(_at_least, settings, incident, 3))
            triaged = next(e for e in events if e.type == "incident.triaged.v1").data
            versions.append((triaged["policy_version"], triaged["chain"][0]["acknowledge_within"]))
    assert versions == [("2026-12-08", 3600), ("2026-12-31", 1800)]
    assert json.dumps(versions)


async def test_an_amendment_accusing_the_routed_handler_removes_her_and_asks_another(
    stack: tuple[httpx.AsyncClient, FastAPI], settings: CommonSettings, producer: AIOKafkaProducer
) -> None:
    """The record must show she had been routed before she was excluded."""
    intake, _ = stack
    incident = (await intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]
    await eventually(lambda: _at_least(settings, incident, 3))
    amended = make_event(
        "incident.report.amended.v1",
        subject=incident,
        data={"accused_added": ["p-chen"], "report_digest": "sha256:" + "ab" * 32},
        source="/services/intake",
        time=datetime.now(UTC),
        actor="reporter:anonymous",
    )
    await producer.send_and_wait(
        settings.topic("incident.reports"), signed(amended), key=incident.encode()
    )

    async def reassigned() -> list[Any] | None:
        events = await decisions_for(settings, incident)
        return events if any(e.type == "incident.reassigned.v1" for e in events) else None

    events = await eventually(reassigned, timeout=20)
    change = next(e for e in events if e.type == "incident.reassigned.v1").data
    assert {"principal": "p-chen", "rule": "accused"} in change["removed"]
    assert change["added"] == ["p-ma"]  # the group's HR handler, not conflicted
    told = [e.data["principal"] for e in events if e.type == "incident.notified.v1"]
    assert told == ["p-chen", "p-ma"]  # she had been told before; the record keeps it


async def test_a_batch_of_reports_is_decided_once_each_in_one_go(
    settings: CommonSettings,
) -> None:
    """Triage's batch path, handed records directly: a batch with two records delivered
    twice and one that is not an event makes one decision per report, and a second
    delivery of the whole batch makes none."""
    common = settings.model_dump()
    async with serving(create_intake(IntakeSettings(**common)), "http://intake") as intake:
        incidents = [
            (await intake.post("/v1/reports", json={**SEED_CASE, "summary": f"r{i}"})).json()[
                "incident_id"
            ]
            for i in range(6)
        ]
        wanted = {i.encode() for i in incidents}

        async def submitted() -> list[Any] | None:
            got = await read_all(settings.kafka_bootstrap, settings.topic("incident.reports"))
            records = [r for r in got if r.key in wanted]
            return records if len(records) == 6 else None

        records = await eventually(submitted)
    # Triage on topics of its own: its agents never see these records, only this call.
    alone = TriageSettings(**{**common, "kafka_topic_prefix": f"{settings.kafka_topic_prefix}x."})
    app = create_triage(alone)
    garbage = dataclasses.replace(records[0], value=b"not an event", offset=10_000)
    async with serving(app, "http://triage"):
        triage = app.state.triage
        await triage.on_report([*records, records[1], records[4], garbage])
        await triage.on_report(records)  # delivered again: nothing new
        async with triage.runtime.db.acquire() as conn:
            decided = await conn.fetch("SELECT incident_id FROM decisions")
            triaged = await conn.fetch(
                "SELECT stream_id FROM events WHERE type = 'incident.triaged.v1'"
            )
            dead = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE topic LIKE '%incident.deadletter'"
            )
    assert sorted(r["incident_id"] for r in decided) == sorted(incidents)
    assert sorted(r["stream_id"] for r in triaged) == sorted(incidents)
    assert dead == 1


async def test_an_unresolved_name_asks_the_independent_until_confirmed_then_recusal_reroutes(
    stack: tuple[httpx.AsyncClient, FastAPI], settings: CommonSettings, producer: AIOKafkaProducer
) -> None:
    """A name that is nobody in the directory: only the chief ethics officer is asked.
    A confirmation by a handler is ignored; hers (the accused is p-wang) decides again
    (revision 2: the unit's HR case handler). Then p-chen declares a conflict: excluded
    from then on, p-ma (group HR) asked at once; the recusal delivered twice is handled
    once; when p-ma recuses too nobody is left, and the removal is published all the same."""
    intake, _ = stack
    report = {**SEED_CASE, "accused": ["the night manager at store 12"]}
    incident = (await intake.post("/v1/reports", json=report)).json()["incident_id"]
    events = await eventually(lambda: _at_least(settings, incident, 3))
    first = next(e for e in events if e.type == "incident.triaged.v1").data
    assert first["conflict_unresolved"] and first["revision"] == 1
    assert [lv["recipients"] for lv in first["chain"]] == [["p-sun"], ["p-board"]]

    async def send(topic: str, type_: str, data: dict[str, Any], times: int = 1) -> None:
        event = make_event(
            type_,
            subject=incident,
            data=data,
            source="/services/intake",
            time=datetime.now(UTC),
            actor=data["principal"],
        )
        for _ in range(times):
            await producer.send_and_wait(
                settings.topic(topic), signed(event), key=incident.encode()
            )

    def of_type(events: list[Any], type_: str) -> list[dict[str, Any]]:
        return [e.data for e in events if e.type == type_]

    async def at_least(type_: str, n: int) -> list[Any] | None:
        events = await decisions_for(settings, incident)
        return events if len(of_type(events, type_)) >= n else None

    confirmed = "incident.people.confirmed.v1"
    await send("incident.reports", confirmed, {"principal": "p-chen", "accused": ["p-ma"]})
    await send("incident.reports", confirmed, {"principal": "p-sun", "accused": ["p-wang"]})
    events = await eventually(lambda: at_least("incident.triaged.v1", 2), timeout=20)
    [_, again] = of_type(events, "incident.triaged.v1")  # p-chen's was ignored
    assert again["revision"] == 2 and not again["conflict_unresolved"]
    assert again["chain"][0]["recipients"] == ["p-chen"]
    assert {"principal": "p-wang", "rule": "accused"} in again["excluded"]

    await send("incident.activity", "incident.recused.v1", {"principal": "p-chen"}, times=2)
    await send("incident.activity", "incident.recused.v1", {"principal": "p-ma"})
    events = await eventually(lambda: at_least("incident.reassigned.v1", 2), timeout=20)
    assert of_type(events, "incident.reassigned.v1") == [
        {"removed": [{"principal": "p-chen", "rule": "recused"}], "added": ["p-ma"]},
        {"removed": [{"principal": "p-ma", "rule": "recused"}], "added": []},
    ]
    told = [(d["principal"], d["level"]) for d in of_type(events, "incident.notified.v1")]
    assert told == [("p-sun", 1), ("p-chen", 1), ("p-ma", 1)]


async def test_a_reorganisation_that_puts_level_2_above_the_accused_takes_her_off(
    stack: tuple[httpx.AsyncClient, FastAPI], settings: CommonSettings
) -> None:
    """The seed case routes level 2 to p-zhou (hr_head). HR then moves the accused under
    her: she now manages him, so triage removes her before escalation ever asks her."""
    intake, _ = stack
    incident = (await intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]
    await eventually(lambda: _at_least(settings, incident, 3))
    await _move_the_accused_under_level_2(intake)
    await _level_2_taken_off(settings, incident)


async def _move_the_accused_under_level_2(intake: httpx.AsyncClient) -> None:
    """HR moves p-wang (the seed case's accused) under p-zhou (its level 2)."""
    admin = {"authorization": "Bearer dev-admin-token"}
    wang = (await intake.get("/v1/directory/people/p-wang", headers=admin)).json()
    record = {k: v for k, v in wang.items() if k not in ("person_id", "pending_grants")}
    moved = await intake.put(
        "/v1/directory/people/p-wang", headers=admin, json={**record, "manager_id": "p-zhou"}
    )
    assert moved.status_code == 200, moved.text


async def _level_2_taken_off(settings: CommonSettings, incident: str) -> None:
    """Triage publishes p-zhou's removal (she manages the accused now)."""

    async def reassigned() -> list[Any] | None:
        events = await decisions_for(settings, incident)
        return events if any(e.type == "incident.reassigned.v1" for e in events) else None

    events = await eventually(reassigned, timeout=20)
    change = next(e for e in events if e.type == "incident.reassigned.v1").data
    assert change["removed"] == [{"principal": "p-zhou", "rule": "accused_management_chain"}]


async def test_a_recheck_lost_to_a_stop_is_done_when_triage_starts_again(
    settings: CommonSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triage keeps HR's move of the accused under level 2 (p-zhou), then stops before
    its re-check (here the re-check does nothing, as if it never ran). The restarted
    triage re-checks at start-up, before it consumes: when its start returns, the mark
    is at the log's end and p-zhou is excluded, although no other directory change came
    (review R5)."""
    common = settings.model_dump()
    at_start: list[tuple[int, int, list[str]]] = []
    start = Triage.start

    async def start_then_look(self: Triage) -> None:
        await start(self)
        async with self.runtime.db.acquire() as conn:
            marked = await conn.fetchval("SELECT seq FROM directory_rechecked")
            last = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM directory_log")
            state = await conn.fetchval(
                "SELECT state FROM decisions WHERE incident_id = $1", incident
            )
        excluded = [x["principal"] for x in json.loads(state)["decision"]["excluded"]]
        at_start.append((int(marked), int(last), excluded))

    async def lost(*_: object, **__: object) -> int:
        return 0

    incident = ""
    async with serving(create_intake(IntakeSettings(**common)), "http://intake") as intake:
        first = create_triage(TriageSettings(**common))
        async with serving(first, "http://triage"):
            await eventually(lambda: _directory_loaded(first), timeout=20)
            incident = (await intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]
            await eventually(lambda: _at_least(settings, incident, 3))
            monkeypatch.setattr(first.state.triage.usecases, "recheck", lost)
            async with first.state.triage.runtime.db.acquire() as conn:
                kept = await conn.fetchval("SELECT max(seq) FROM directory_log")
            await _move_the_accused_under_level_2(intake)

            async def move_kept() -> bool:
                async with first.state.triage.runtime.db.acquire() as conn:
                    return bool(await conn.fetchval("SELECT max(seq) FROM directory_log") > kept)

            await eventually(move_kept, timeout=20)
        monkeypatch.setattr(Triage, "start", start_then_look)
        async with serving(create_triage(TriageSettings(**common)), "http://triage"):
            ((marked, last, excluded),) = at_start
            assert marked == last
            assert "p-zhou" in excluded
            await _level_2_taken_off(settings, incident)
