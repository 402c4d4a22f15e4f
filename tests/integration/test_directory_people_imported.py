"""Audit's PostgreSQL ledger knows the same people whether a bulk import came as one
`directory.people.imported.v1` per chunk or as one `directory.person.upserted.v1` per
person: `person_data` (the roles audit grants, the manager line of its conflict check)
reads the chunk through `ledger_people`, and the leaves stay as they were."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from services.audit.app import MIGRATIONS
from services.audit.conflicts import person_in_ledger
from services.audit.ledger import append_records, decode_leaf, line_data, person_data
from services.domain.directory import DirectoryFile
from services.domain.events import PeopleImported
from services.infra.db import create_pool, migrate_service
from tests.integration.test_ledger_tree import record
from tests.unit.test_people_imported import IDS, _event, histories

pytestmark = pytest.mark.integration


async def known_people(url: str, history: list[Any]) -> tuple[dict[str, Any], list[Any]]:
    await migrate_service(url, "audit", MIGRATIONS)
    pool = await create_pool(url, schema="audit", role="incidents_audit")
    try:
        async with pool.acquire() as conn:
            async with conn.transaction():  # the import's events in one batch, the rest after
                await append_records(
                    conn, [record(n, e.to_bytes()) for n, e in enumerate(history[:3])]
                )
            async with conn.transaction():
                await append_records(
                    conn, [record(n + 3, e.to_bytes()) for n, e in enumerate(history[3:])]
                )
            people = {i: await person_data(conn, i) for i in IDS}
            chains = {i: await person_in_ledger(conn, DirectoryFile(), i) for i in IDS}
            lines = {
                start: await line_data(conn, list(start), 100)
                for start in (("p-low",), ("p-mid", "p-nobody"), ("p-top",), IDS)
            }
            indexed = await conn.fetch(
                "SELECT person_id, idx FROM ledger_people ORDER BY idx, person_id"
            )
            leaves = await conn.fetch("SELECT event_type, leaf FROM ledger ORDER BY idx")
        return {"people": people, "chains": chains, "lines": lines}, [indexed, leaves]
    finally:
        await pool.close()


async def test_audit_knows_the_same_people_from_a_chunk_on_postgresql(
    make_database: Callable[[str], str],
) -> None:
    singles, chunked = histories()
    known, (indexed, _) = await known_people(make_database("people_singles"), singles)
    from_chunk, (chunk_index, leaves) = await known_people(make_database("people_chunk"), chunked)
    assert from_chunk == known
    # whole lines in one statement: each person as person_data has them; p-low's latest
    # record (the upsert after the import) has no manager, so their line ends there
    lines = known["lines"]
    assert lines[("p-low",)] == {"p-low": known["people"]["p-low"]}
    assert lines[("p-mid", "p-nobody")] == {p: known["people"][p] for p in ("p-mid", "p-top")}
    assert lines[("p-top",)] == {"p-top": known["people"]["p-top"]}
    assert lines[IDS] == {p: known["people"][p] for p in ("p-top", "p-mid", "p-low")}
    assert known["people"]["p-top"]["roles"] == ["auditor", "hr_head"]
    assert known["chains"]["p-mid"].manager == "p-top"
    assert known["people"]["p-nobody"] is None
    assert indexed == []  # single upserts are found by subject, as before
    assert [(r["person_id"], r["idx"]) for r in chunk_index] == [
        ("p-low", 2),
        ("p-mid", 2),
        ("p-top", 2),
    ]
    # the chunk's entry is an ordinary leaf: the event as received
    chunk = [
        decode_leaf(bytes(r["leaf"])) for r in leaves if r["event_type"] == PeopleImported.TYPE
    ]
    assert len(chunk) == 1 and chunk[0]["event"]["id"] == chunked[2].id


async def test_a_chunk_entry_without_its_records_is_read_from_its_leaf(
    make_database: Callable[[str], str],
) -> None:
    """`ledger_people.record` (migration 0007) is a copy for lookups: without it, the
    person is read from the entry's leaf, with the same answer."""
    singles, chunked = histories()
    url = make_database("people_no_record")
    known, _ = await known_people(url, chunked)
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit.ledger_people DISABLE TRIGGER USER")
            await conn.execute("UPDATE audit.ledger_people SET record = NULL")
            await conn.execute("ALTER TABLE audit.ledger_people ENABLE TRIGGER USER")
        await conn.execute("SET search_path TO audit")
        assert {i: await person_data(conn, i) for i in IDS} == known["people"]
    finally:
        await conn.close()
    assert known == (await known_people(make_database("people_with_singles"), singles))[0]


async def test_the_people_index_is_append_only(make_database: Callable[[str], str]) -> None:
    url = make_database("people_append_only")
    await known_people(url, histories()[1])
    conn = await asyncpg.connect(url)
    try:
        for statement in ("DELETE FROM audit.ledger_people", "TRUNCATE audit.ledger_people"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_the_service_cannot_forge_a_person_in_the_index(
    make_database: Callable[[str], str],
) -> None:
    """The database derives `ledger_people` from the chunk entries audit appends
    (migration 0008): audit's own role may not insert a row, so it cannot make a person
    an auditor or cut their manager line by a row no leaf holds."""
    url = make_database("people_forged")
    known, (indexed, _) = await known_people(url, histories()[1])
    assert [(r["person_id"], r["idx"]) for r in indexed] == [
        ("p-low", 2),
        ("p-mid", 2),
        ("p-top", 2),
    ]
    pool = await create_pool(url, schema="audit", role="incidents_audit")
    try:
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO ledger_people (person_id, idx, record) VALUES"
                    """ ('p-mid', 99, '{"person_id": "p-mid", "roles": ["auditor"]}')"""
                )
            assert await person_data(conn, "p-mid") == known["people"]["p-mid"]
    finally:
        await pool.close()


async def test_a_chunk_jsonb_cannot_hold_is_indexed_without_records(
    make_database: Callable[[str], str],
) -> None:
    """A name with a NUL character is valid JSON but no jsonb: the database indexes the
    chunk's people without their records, and a lookup reads them from the leaf."""
    people = [
        {"person_id": "p-top", "name": "Top\u0000"},
        {"person_id": "p-mid", "name": "Mid", "manager_id": "p-top"},
    ]
    chunk = _event(PeopleImported.TYPE, "directory-import:2", {"people": people}, 2)
    url = make_database("people_nul")
    known, (indexed, _) = await known_people(url, [chunk])
    assert [(r["person_id"], r["idx"]) for r in indexed] == [("p-mid", 0), ("p-top", 0)]
    mid = known["people"]["p-mid"]
    assert mid is not None and mid["manager_id"] == "p-top"
    top = known["people"]["p-top"]
    assert top is not None and top["name"] == "Top\u0000"
