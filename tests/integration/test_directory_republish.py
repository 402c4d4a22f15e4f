"""`incidents directory republish` against a real broker and PostgreSQL.

The case of docs/operations.md, Dead letters: triage dead-lettered a directory change
(a key rotated out of order), so it keeps the person's older record; the change is
never re-driven (it could undo a later one), and a re-sync from HR sends nothing while
the record is unchanged. Here intake holds a record triage never folded (written
without an event, as if its event had been dead-lettered): triage routes by the stale
manager until the republish, then folds the current record. Intake's record, its SCIM
version and lastModified do not move.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from services.domain.directory import Person
from services.domain.events import PeopleImported, Topic, parse_envelope
from services.domain.org import OrgSnapshot, fold_directory
from services.infra.db import create_pool, migrate_service
from services.infra.settings import CommonSettings, IntakeSettings, TriageSettings
from services.intake.app import MIGRATIONS
from services.intake.app import create_app as create_intake
from services.intake.directory_import import WRITE_LOCK, import_people, republish_people
from services.triage.app import create_app as create_triage
from tests.helpers import critical_policy, eventually, fetch_rows, read_all, serving
from tests.integration.test_deadletter_redrive import incidents

pytestmark = pytest.mark.integration

PERSON = "p-wang"
SEEDED_MANAGER = "p-li"
CURRENT_MANAGER = "p-zhou"


async def triage_org(settings: CommonSettings) -> OrgSnapshot:
    """The directory as triage folds it: its `directory_log`, in order."""
    rows = await fetch_rows(settings, "SELECT body FROM triage.directory_log ORDER BY seq")
    return fold_directory(parse_envelope(bytes(r["body"])) for r in rows)


async def intake_person(settings: CommonSettings) -> dict[str, Any]:
    """What a SCIM read's version and lastModified come from: the row's `imports` and
    `updated_at`, and the events of the person's own stream."""
    [row] = await fetch_rows(
        settings,
        "SELECT manager_id, imports, updated_at,"
        " (SELECT count(*) FROM intake.events WHERE stream_id = 'directory:' || person_id)"
        " AS own FROM intake.people WHERE person_id = $1",
        PERSON,
    )
    return dict(row)


async def republished(settings: CommonSettings) -> list[Any]:
    """The republish's events on directory.changes: (record key, event)."""
    records = await read_all(settings.kafka_bootstrap, settings.topic(Topic.DIRECTORY))
    events = [(r.key, parse_envelope(r.value)) for r in records]
    return [(k, e) for k, e in events if e.subject.startswith("directory-republish:")]


@pytest.fixture
async def stale(
    settings: CommonSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[CommonSettings]:
    """Intake and triage running; intake holds a manager for p-wang triage never got.
    The `incidents` command reaches intake's database as operations' would."""
    monkeypatch.setenv("INCIDENTS_DATABASE_URL", settings.database_url)
    policy = tmp_path / "policy.yaml"
    policy.write_text(critical_policy("directory-republish-test", "1h"))
    common = {**settings.model_dump(), "policy_file": policy}
    async with (
        serving(create_intake(IntakeSettings(**common)), "http://intake"),
        serving(create_triage(TriageSettings(**common))),
    ):

        async def seeded() -> bool:
            person = (await triage_org(settings)).person(PERSON)
            return person is not None and person.manager == SEEDED_MANAGER

        await eventually(seeded, timeout=30)
        await fetch_rows(
            settings,
            "UPDATE intake.people SET manager_id = $2 WHERE person_id = $1",
            PERSON,
            CURRENT_MANAGER,
        )
        yield settings


async def test_republish_makes_triage_fold_the_current_record_and_changes_nothing_in_intake(
    stale: CommonSettings,
) -> None:
    settings = stale
    before = await intake_person(settings)
    assert before["manager_id"] == CURRENT_MANAGER
    person = (await triage_org(settings)).person(PERSON)
    assert person is not None and person.manager == SEEDED_MANAGER  # stale

    for _ in range(2):  # twice: the second folds the same record, nothing changes
        code, out, err = await incidents(settings, "directory", "republish", "--person", PERSON)
        assert code == 0, err
        assert "1 republished in 1 event(s)" in out

    async def folded() -> OrgSnapshot | None:
        org = await triage_org(settings)
        person = org.person(PERSON)
        return org if person is not None and person.manager == CURRENT_MANAGER else None

    await eventually(folded, timeout=30)

    sent = await eventually(lambda: _at_least(settings, 2), timeout=20)
    assert len({e.id for _, e in sent}) == 2  # fresh event ids each run
    for key, event in sent:
        assert key == b"directory"
        assert event.type == PeopleImported.TYPE
        assert event.actor == "system:directory-republish"
        assert event.source == "/services/intake"
        [record] = event.data["people"]
        assert record["person_id"] == PERSON and record["manager_id"] == CURRENT_MANAGER
    # triage kept both (it keeps only what it accepted as signed by intake)
    kept = await fetch_rows(
        settings,
        "SELECT count(*) AS n FROM triage.directory_log WHERE event_id = ANY($1::uuid[])",
        [e.id for _, e in sent],
    )
    assert kept[0]["n"] == 2
    # intake: same record, same SCIM version (own events + imports), same lastModified
    assert await intake_person(settings) == before

    # --all: everyone, one event for the seed's few people
    code, out, err = await incidents(settings, "directory", "republish", "--all")
    assert code == 0, err
    [count] = await fetch_rows(settings, "SELECT count(*) AS n FROM intake.people")
    assert f"{count['n']} republished in 1 event(s)" in out
    assert await intake_person(settings) == before


async def _at_least(settings: CommonSettings, n: int) -> list[Any]:
    sent = await republished(settings)
    return sent if len(sent) >= n else []


async def test_an_unknown_person_refuses_the_whole_republish(stale: CommonSettings) -> None:
    settings = stale
    code, _, err = await incidents(
        settings,
        "directory",
        "republish",
        "--person",
        PERSON,
        "--person",
        "p-nobody",
    )
    assert code == 1
    said = " ".join(err.split())
    assert "refused, nothing republished: not in the directory: 'p-nobody'" in said
    assert PERSON not in said  # only what the admin asked and the directory lacks
    queued = await fetch_rows(
        settings, "SELECT count(*) AS n FROM intake.events WHERE stream_id LIKE 'directory-rep%'"
    )
    assert queued[0]["n"] == 0
    person = (await triage_org(settings)).person(PERSON)
    assert person is not None and person.manager == SEEDED_MANAGER

    code, _, err = await incidents(settings, "directory", "republish")
    assert code == 2 and "--person ID" in err


async def test_a_change_made_while_a_republish_waits_is_what_it_publishes(
    make_database: Callable[[str], str],
) -> None:
    """A directory write holds the write lock (SCIM, admin API, import) from reading to
    queuing; a republish waits for it and then reads the changed record, so what it
    queues after that write is never the record the write replaced."""
    url = make_database("republish_lock")
    await migrate_service(url, "intake", MIGRATIONS)
    pool = await create_pool(url, schema="intake")
    try:
        people = [Person(id="p-boss"), Person(id=PERSON, manager="p-boss"), Person(id="p-new")]
        await import_people(pool, people, source="/services/intake", actor="system:test")
        async with pool.acquire() as writer, writer.transaction():
            await writer.execute("SELECT pg_advisory_xact_lock(hashtext($1))", WRITE_LOCK)
            await writer.execute(
                "UPDATE people SET manager_id = 'p-new' WHERE person_id = $1", PERSON
            )
            republish = asyncio.create_task(
                republish_people(pool, [PERSON], source="/services/intake", actor="system:t")
            )

            async def waiting() -> bool:
                rows = await writer.fetch(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
                return bool(rows)

            await eventually(waiting)
        assert (await republish).people == 1
        async with pool.acquire() as conn:
            [body] = await conn.fetch(
                "SELECT body FROM events WHERE stream_id LIKE 'directory-republish:%'"
            )
        [record] = parse_envelope(bytes(body["body"])).data["people"]
        assert record["manager_id"] == "p-new"
    finally:
        await pool.close()
