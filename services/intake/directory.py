"""The directory, owned by intake: people, managers and roles, as events and a projection.

Every change is a `directory.person.upserted.v1` event (stream `directory:<id>`),
stored with the projection row in one transaction and published for triage and
audit. The YAML file seeds the people the directory does not have yet, so restarts
are silent and API changes are never undone by the file.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from services.domain.directory import DirectoryFile, Person
from services.domain.events import PersonUpserted, make_event
from services.infra import eventstore
from services.infra.runtime import Runtime


def _person(row: asyncpg.Record) -> Person:
    return Person(
        id=row["person_id"],
        name=row["name"],
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


async def upsert_person(
    runtime: Runtime, conn: asyncpg.Connection, person: Person, *, actor: str
) -> bool:
    """Record a person's new state (inside the caller's transaction); False if unchanged."""
    stream = f"directory:{person.id}"
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", stream)
    current = await get_person(conn, person.id)
    if current == person:
        return False
    event = make_event(
        "directory.person.upserted.v1",
        subject=person.id,
        data=PersonUpserted(
            person_id=person.id,
            name=person.name,
            email=person.email,
            unit=person.unit,
            manager_id=person.manager,
            roles=sorted(person.roles),
        ),
        source=runtime.source,
        time=datetime.now(UTC),
        actor=actor,
    )
    version = await eventstore.stream_version(conn, stream)
    await eventstore.append(
        conn, stream, version, [event], topic_prefix=runtime.settings.kafka_topic_prefix
    )
    await conn.execute(
        "INSERT INTO people (person_id, name, email, unit, manager_id, roles)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (person_id) DO UPDATE SET name = $2, email = $3, unit = $4,"
        " manager_id = $5, roles = $6, updated_at = clock_timestamp()",
        person.id,
        person.name,
        person.email,
        person.unit,
        person.manager,
        sorted(person.roles),
    )
    return True


async def seed(runtime: Runtime, directory: DirectoryFile) -> int:
    """Add the seed file's people the directory does not have yet; returns how many.

    People already present are left as they are: changes made through the directory
    API win over the file, and a restart does not undo them.
    """
    added = 0
    async with runtime.db.acquire() as conn:
        for person in directory.people:
            async with conn.transaction():
                if await get_person(conn, person.id) is not None:
                    continue
                normalised = person.model_copy(update={"roles": sorted(person.roles)})
                if await upsert_person(runtime, conn, normalised, actor="system:directory-seed"):
                    added += 1
    return added
