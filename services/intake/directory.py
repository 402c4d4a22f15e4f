"""The directory, owned by intake: people, managers and roles, as events and a projection.

Every change is a `directory.person.upserted.v1` event (stream `directory:<id>`),
or, from a bulk import, part of a `directory.people.imported.v1` (one per chunk of
people, stream `directory-import:<import id>`), stored with the projection rows in one
transaction and published for triage, escalation and audit. The YAML file seeds the
people the directory does not have yet, so restarts are silent and API changes are
never undone by the file.

Each person's names (display name and alternative names) are also kept, in the same
transaction, as normal forms (`person_names`, for resolving free-text names in reports)
and as the words of those normal forms (`person_name_words`, for the people search):
see `services.domain.names` and docs/people-and-names.md.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.domain.directory import DirectoryFile, Person
from services.domain.envelope import Envelope
from services.domain.events import PeopleImported, PersonRecord, PersonUpserted, make_event
from services.domain.names import normalise
from services.domain.reports import NameRow
from services.infra import eventstore
from services.infra.runtime import Runtime


def _person(row: asyncpg.Record) -> Person:
    return Person(
        id=row["person_id"],
        name=row["name"],
        alternative_names=list(row["alternative_names"]),
        email=row["email"],
        unit=row["unit"],
        manager=row["manager_id"],
        roles=list(row["roles"]),
    )


async def get_person(conn: asyncpg.Connection, person_id: str) -> Person | None:
    row = await conn.fetchrow("SELECT * FROM people WHERE person_id = $1", person_id)
    return _person(row) if row else None


async def roles_of(conn: asyncpg.Connection, principal: str) -> frozenset[str]:
    roles = await conn.fetchval("SELECT roles FROM people WHERE person_id = $1", principal)
    return frozenset(roles or ())


def record_of(person: Person) -> dict[str, Any]:
    """A person's whole record, as the directory events carry it (and the admin API
    answers it)."""
    return {
        "person_id": person.id,
        "name": person.name,
        "alternative_names": list(person.alternative_names),
        "email": person.email,
        "unit": person.unit,
        "manager_id": person.manager,
        "roles": sorted(person.roles),
    }


def person_event(
    person: Person, source: str, actor: str, time: datetime, traceparent: str | None = None
) -> Envelope:
    """The `directory.person.upserted.v1` event of a person's whole new record."""
    data = PersonUpserted(**record_of(person))
    return make_event(
        PersonUpserted.TYPE,
        subject=person.id,
        data=data,
        source=source,
        time=time,
        actor=actor,
        traceparent=traceparent,
    )


def people_event(
    people: Sequence[Person],
    subject: str,
    source: str,
    actor: str,
    time: datetime,
    traceparent: str | None = None,
) -> Envelope:
    """The `directory.people.imported.v1` of a bulk import's chunk: each person's whole
    new record, in order (the same as one `person_event` each)."""
    data = PeopleImported(people=[PersonRecord(**record_of(p)) for p in people])
    return make_event(
        PeopleImported.TYPE,
        subject=subject,
        data=data,
        source=source,
        time=time,
        actor=actor,
        traceparent=traceparent,
    )


async def upsert_person(
    runtime: Runtime, conn: asyncpg.Connection, person: Person, *, actor: str
) -> bool:
    """Record a person's new state (inside the caller's transaction); False if unchanged."""
    stream = f"directory:{person.id}"
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", stream)
    current = await get_person(conn, person.id)
    if current == person:
        return False
    event = person_event(person, runtime.source, actor, datetime.now(UTC))
    version = await eventstore.stream_version(conn, stream)
    await eventstore.append(
        conn, stream, version, [event], topic_prefix=runtime.settings.kafka_topic_prefix
    )
    await conn.execute(
        "INSERT INTO people (person_id, name, email, unit, manager_id, roles, alternative_names)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (person_id) DO UPDATE SET name = $2, email = $3, unit = $4,"
        " manager_id = $5, roles = $6, alternative_names = $7, updated_at = clock_timestamp()",
        person.id,
        person.name,
        person.email,
        person.unit,
        person.manager,
        sorted(person.roles),
        list(person.alternative_names),
    )
    await index_names(conn, person)
    return True


def name_keys(person: Person) -> list[tuple[str, str, str]]:
    """(kind, name, normal form) of each of the person's names that has a normal form."""
    names = [("primary", person.name)] if person.name else []
    names += [("alternative", alt) for alt in person.alternative_names if alt]
    keyed = [(kind, name, normalise(name)) for kind, name in names]
    return [(kind, name, norm) for kind, name, norm in keyed if norm]


async def index_names(conn: asyncpg.Connection, person: Person) -> None:
    """Replace the person's rows in `person_names` and `person_name_words` (inside the
    caller's transaction, beside the `people` row)."""
    keyed = name_keys(person)
    words = sorted({word for _, _, norm in keyed for word in norm.split(" ")})
    await conn.execute("DELETE FROM person_names WHERE person_id = $1", person.id)
    await conn.execute("DELETE FROM person_name_words WHERE person_id = $1", person.id)
    await conn.execute(
        "INSERT INTO person_names (person_id, kind, name, norm)"
        " SELECT $1, k, n, m FROM unnest($2::text[], $3::text[], $4::text[]) AS x (k, n, m)"
        " ON CONFLICT DO NOTHING",
        person.id,
        [kind for kind, _, _ in keyed],
        [name for _, name, _ in keyed],
        [norm for _, _, norm in keyed],
    )
    await conn.execute(
        "INSERT INTO person_name_words (person_id, word) SELECT $1, unnest($2::text[])",
        person.id,
        words,
    )


async def seed(runtime: Runtime, directory: DirectoryFile) -> int:
    """Add the seed file's people the directory does not have yet; returns how many.

    People already present are left as they are: changes made through the directory
    API win over the file, and a restart does not undo them. Set-based, in chunks
    (`services.intake.directory_import`): 20,000 people take seconds, not minutes.
    """
    # Imported here: directory_import builds on this module's row mapping.
    from services.intake.directory_import import import_people

    async with runtime.db.acquire() as conn:
        await _index_unindexed(conn)
    result = await import_people(
        runtime.db,
        directory.people,
        source=runtime.source,
        actor="system:directory-seed",
        topic_prefix=runtime.settings.kafka_topic_prefix,
        only_new=True,
        check=False,
    )
    return result.added


async def _index_unindexed(conn: asyncpg.Connection) -> None:
    """Index the names of people stored before `person_names` existed (migration 0005
    cannot compute the normal form in SQL)."""
    rows = await conn.fetch(
        "SELECT * FROM people p WHERE p.name IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM person_names n WHERE n.person_id = p.person_id)"
    )
    for row in rows:
        async with conn.transaction():
            await index_names(conn, _person(row))


async def lookup_people(
    conn: asyncpg.Connection, entries: Collection[str], norms: Collection[str]
) -> tuple[frozenset[str], list[NameRow]]:
    """The entries that are directory person ids, and the directory's names whose normal
    form is one of `norms`: one statement, by index (primary key and `person_names_norm`)."""
    if not entries and not norms:
        return frozenset(), []
    rows = await conn.fetch(
        "SELECT person_id, NULL AS kind, NULL AS name, NULL AS norm FROM people"
        " WHERE person_id = ANY($1::text[])"
        " UNION ALL SELECT person_id, kind, name, norm FROM person_names"
        " WHERE norm = ANY($2::text[])",
        sorted(set(entries)),
        sorted(set(norms)),
    )
    ids = frozenset(r["person_id"] for r in rows if r["kind"] is None)
    names = [NameRow(r["norm"], r["name"], r["person_id"], r["kind"]) for r in rows if r["kind"]]
    return ids, names


async def search_people(
    conn: asyncpg.Connection, prefixes: Sequence[str], limit: int
) -> list[asyncpg.Record]:
    """People with, for every one of `prefixes`, a word of one of their names starting
    with it: `person_id`, `name`, `unit`, by name. A range scan of `person_name_words`
    per prefix (no LIKE: `%` and `_` are ordinary characters here)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT p.person_id, p.name, p.unit FROM people p JOIN ("
        "  SELECT w.person_id FROM unnest($1::text[]) WITH ORDINALITY AS q (prefix, i)"
        "  JOIN person_name_words w"
        "    ON w.word >= q.prefix AND w.word < q.prefix || chr(1114111)"
        "  GROUP BY w.person_id HAVING count(DISTINCT q.i) = cardinality($1::text[])"
        ") found USING (person_id)"
        ' ORDER BY p.name COLLATE "C", p.person_id LIMIT $2',
        list(prefixes),
        limit,
    )
    return rows


async def people_shown(conn: asyncpg.Connection, ids: Collection[str]) -> list[asyncpg.Record]:
    """`person_id`, `name`, `unit` of these people (those the directory knows), as the
    people search shows them."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT person_id, name, unit FROM people WHERE person_id = ANY($1::text[])",
        sorted(set(ids)),
    )
    return rows
