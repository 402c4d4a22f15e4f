"""Set-based directory import: many people at once, one event per chunk of changes.

The seed file at intake start and `incidents directory import FILE` both come here.
People are written in chunks of `CHUNK`, one transaction each: one statement reads the
chunk's current rows; the people added or changed are cut into runs of at most
`EVENT_PEOPLE` (and `MAX_CHUNK_DATA_BYTES` of records, `event_chunks`), each one
`directory.people.imported.v1` on the import's stream `directory-import:<id>`; one
statement stores those events and one queues them on the outbox
(`eventstore.append_streams`, signed there), one multi-row statement upserts `people`
(counting the change in `imports`, for the person's version) and two replace the names
(`person_names`, `person_name_words`). Folding such an event is folding one
`directory.person.upserted.v1` per person in it, in order (what
`services.intake.directory.upsert_person` records for one change), so consumers end
with the same directory; they do one event's work per few hundred people instead of
per person (docs/directory-sync.md). Each chunk takes the directory's write lock, the
one the admin API's writes take, so an import and an API change never interleave a
chunk.

An import is one trace, not sampled: its events carry a `traceparent` whose flags say
"not sampled", so the relay's publish and each consumer's handling of them record no
span (a span per person per service, encoded and written, was a large part of a bulk
import's CPU; one trace per person of an import is of no use to anyone reading traces).
A change through SCIM or the admin API is still traced as its request.

`republish_people` (`incidents directory republish`) sends the current records of
people again the same way, changed or not: the remedy for a consumer that dead-lettered
a directory change (a re-drive of the old record could undo a later change). It writes
no `people` row, so a person's version (the SCIM ETag, `imports`) and `lastModified`
stay as they were: nothing about the person changed.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from services.domain.directory import Person
from services.domain.directory_sync import ImportInvalid, event_chunks, import_problems
from services.domain.events import MAX_PEOPLE_PER_EVENT
from services.infra import eventstore
from services.intake.directory import _person, name_keys, people_event

WRITE_LOCK = "directory:manager-chains"
"""The advisory lock of every directory write (services/intake/directory_api.py)."""
CHUNK = 2000
"""People per transaction: big enough for few round trips, small enough for steady
progress and a short hold of the write lock."""
EVENT_PEOPLE = MAX_PEOPLE_PER_EVENT
"""People per `directory.people.imported.v1` at most (500: about 100 KB of ordinary
records; `event_chunks` cuts sooner for large ones)."""


@dataclass
class ImportResult:
    """What an import did: people added, changed and left as they were."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    events: int = 0
    """`directory.people.imported.v1` events recorded (the import stream's version)."""


async def managers_now(conn: asyncpg.Connection) -> dict[str, str | None]:
    """Every stored person's manager (one statement)."""
    rows = await conn.fetch("SELECT person_id, manager_id FROM people")
    return {r["person_id"]: r["manager_id"] for r in rows}


async def import_people(
    pool: asyncpg.Pool,
    people: Sequence[Person],
    *,
    source: str,
    actor: str,
    topic_prefix: str = "",
    only_new: bool = False,
    check: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Store `people` (whole records): the people added or changed, in the order given,
    in `directory.people.imported.v1` events of up to `EVENT_PEOPLE` people each, on
    the stream `directory-import:<new id>`. `only_new` leaves people already stored as
    they are (the seed: API changes win over the file). `check` refuses the whole
    import first (ImportInvalid) on a duplicate, unknown manager or cycle.
    `progress(n)` is called after each committed chunk with its number of people."""
    result = ImportResult()
    trace = untraced()
    stream = f"directory-import:{uuid.uuid4()}"
    people = [_roles_sorted(p) for p in people]
    if check:
        async with pool.acquire() as conn:
            problems = import_problems(people, await managers_now(conn))
        if problems:
            raise ImportInvalid(problems)
    for start in range(0, len(people), CHUNK):
        chunk = people[start : start + CHUNK]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", WRITE_LOCK)
            await _store_chunk(
                conn, chunk, result, (stream, source, actor, trace), topic_prefix, only_new
            )
        if progress is not None:
            progress(len(chunk))
    return result


@dataclass
class RepublishResult:
    """What a republish sent: people, and the `directory.people.imported.v1` carrying them."""

    people: int = 0
    events: int = 0


class NotInDirectory(ValueError):
    """Person ids asked for that the directory does not hold (nothing was republished)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        shown = ", ".join(repr(i) for i in self.ids[:20])
        more = f" and {len(self.ids) - 20} more" if len(self.ids) > 20 else ""
        super().__init__(f"not in the directory: {shown}{more}")


async def people_count(pool: asyncpg.Pool) -> int:
    """How many people the directory holds (what `republish_people(None)` sends)."""
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM people"))


async def republish_people(
    pool: asyncpg.Pool,
    ids: Sequence[str] | None,
    *,
    source: str,
    actor: str,
    topic_prefix: str = "",
    progress: Callable[[int], None] | None = None,
) -> RepublishResult:
    """Publish again the current records of the people `ids` (None: everyone, by id), in
    `directory.people.imported.v1` events of up to `EVENT_PEOPLE` people, fresh event ids,
    on the stream `directory-republish:<new id>`, queued on the outbox and signed there
    as an import's are. Every consumer folds them as an import's, after whatever it
    folded before: a record it missed or dead-lettered is replaced by the current one; a
    record it has is folded again and nothing changes.

    Any unknown id refuses the whole run first (NotInDirectory), nothing sent. Each
    chunk of `CHUNK` people is read and queued in one transaction under the directory's
    write lock, the lock of every directory write (API, SCIM, import): a change made
    meanwhile is either read here or queued after this chunk, so a republished record is
    never published after a newer one. No `people` row is written: the person's SCIM
    version and `lastModified` stay (they count changes, and this is none).
    `progress(n)` is called after each committed chunk with its number of people."""
    result = RepublishResult()
    trace = untraced()
    stream = f"directory-republish:{uuid.uuid4()}"
    wanted = list(dict.fromkeys(ids)) if ids is not None else None
    if wanted is not None:
        async with pool.acquire() as conn:
            known = {
                r["person_id"]
                for r in await conn.fetch(
                    "SELECT person_id FROM people WHERE person_id = ANY($1::text[])", wanted
                )
            }
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise NotInDirectory(unknown)
    after = ""  # by the primary key's order: a range scan of its index per chunk
    start = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", WRITE_LOCK)
            if wanted is None:
                rows = await conn.fetch(
                    "SELECT * FROM people WHERE person_id > $1 ORDER BY person_id LIMIT $2",
                    after,
                    CHUNK,
                )
            else:
                batch = wanted[start : start + CHUNK]
                rows = await conn.fetch(
                    "SELECT * FROM people WHERE person_id = ANY($1::text[])", batch
                )
                order = {person_id: n for n, person_id in enumerate(batch)}
                rows = sorted(rows, key=lambda r: order[r["person_id"]])
            if not rows:
                return result
            people = [_roles_sorted(_person(r)) for r in rows]
            result.events += await _queue(
                conn, people, (stream, source, actor, trace), result.events, topic_prefix
            )
        result.people += len(people)
        after = rows[-1]["person_id"]
        start += CHUNK
        if progress is not None:
            progress(len(people))
        if wanted is not None and start >= len(wanted):
            return result


def untraced() -> str:
    """A W3C traceparent of a new trace that is not sampled (flags 00): whoever continues
    it (the relay, the consumers: `ParentBased` samplers) records nothing."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"


def _roles_sorted(person: Person) -> Person:
    """The person with roles sorted and unique, as stored; copied only when they are not
    already (a copy per person was a tenth of a bulk import's time)."""
    roles = sorted(set(person.roles))
    return person if roles == list(person.roles) else person.model_copy(update={"roles": roles})


async def _store_chunk(
    conn: asyncpg.Connection,
    chunk: Sequence[Person],
    result: ImportResult,
    origin: tuple[str, str, str, str],
    topic_prefix: str,
    only_new: bool,
) -> None:
    rows = await conn.fetch(
        "SELECT * FROM people WHERE person_id = ANY($1::text[])", [p.id for p in chunk]
    )
    current = {r["person_id"]: _person(r) for r in rows}
    todo: list[Person] = []
    for person in chunk:
        stored = current.get(person.id)
        if stored is not None and (only_new or stored == person):
            result.unchanged += 1
            continue
        todo.append(person)
        if stored is None:
            result.added += 1
        else:
            result.changed += 1
    if not todo:
        return
    result.events += await _queue(conn, todo, origin, result.events, topic_prefix)
    await _upsert_rows(conn, todo)


async def _queue(
    conn: asyncpg.Connection,
    people: Sequence[Person],
    origin: tuple[str, str, str, str],
    version: int,
    topic_prefix: str,
) -> int:
    """Store and queue `people`, in order, as `directory.people.imported.v1` events of up
    to `EVENT_PEOPLE` each on the stream `origin[0]` at `version`: how many events."""
    stream, source, actor, trace = origin
    now = datetime.now(UTC)
    events = [
        people_event(run, stream, source, actor, now, trace)
        for run in event_chunks(people, max_people=EVENT_PEOPLE)
    ]
    await eventstore.append_streams(
        conn, [(stream, version, events)], topic_prefix=topic_prefix, savepoint=False
    )
    return len(events)


async def _upsert_rows(conn: asyncpg.Connection, people: Sequence[Person]) -> None:
    """`people`, `person_names` and `person_name_words` of these people: multi-row
    statements (lists travel as JSON arrays: PostgreSQL arrays cannot be ragged).
    `imports` counts the change: a person's version is their own stream's events plus
    the import events that changed them (the SCIM ETag)."""
    ids = [p.id for p in people]
    await conn.execute(
        "INSERT INTO people (person_id, name, email, unit, manager_id, roles,"
        " alternative_names, imports)"
        " SELECT i, n, e, u, m,"
        "  ARRAY(SELECT jsonb_array_elements_text(r)), ARRAY(SELECT jsonb_array_elements_text(a)),"
        "  1"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
        "  $6::jsonb[], $7::jsonb[]) AS x (i, n, e, u, m, r, a)"
        " ON CONFLICT (person_id) DO UPDATE SET name = excluded.name, email = excluded.email,"
        " unit = excluded.unit, manager_id = excluded.manager_id, roles = excluded.roles,"
        " alternative_names = excluded.alternative_names, imports = people.imports + 1,"
        " updated_at = clock_timestamp()",
        ids,
        [p.name for p in people],
        [p.email for p in people],
        [p.unit for p in people],
        [p.manager for p in people],
        [json.dumps(sorted(p.roles)) for p in people],
        [json.dumps(list(p.alternative_names)) for p in people],
    )
    names: list[tuple[str, str, str, str]] = []
    words: set[tuple[str, str]] = set()
    for person in people:
        for kind, name, norm in name_keys(person):
            names.append((person.id, kind, name, norm))
            words.update((person.id, word) for word in norm.split(" "))
    await conn.execute("DELETE FROM person_names WHERE person_id = ANY($1::text[])", ids)
    await conn.execute("DELETE FROM person_name_words WHERE person_id = ANY($1::text[])", ids)
    await conn.execute(
        "INSERT INTO person_names (person_id, kind, name, norm)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
        " ON CONFLICT DO NOTHING",
        [n[0] for n in names],
        [n[1] for n in names],
        [n[2] for n in names],
        [n[3] for n in names],
    )
    ordered = sorted(words)
    await conn.execute(
        "INSERT INTO person_name_words (person_id, word)"
        " SELECT * FROM unnest($1::text[], $2::text[])",
        [w[0] for w in ordered],
        [w[1] for w in ordered],
    )
