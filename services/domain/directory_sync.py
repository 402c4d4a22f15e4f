"""The directory as an HR system sends it: SCIM 2.0 Users (RFC 7643), CSV rows, and the
checks a whole import must pass before anything is written. Pure: no I/O.

The mapping (docs/directory-sync.md):

- `id` and `userName` are the person id (`p-...`): the HR system provisions people
  under the id the incident workflow names them by. `externalId` is kept beside it.
- `displayName` is the person's name (else `name.formatted`, else given and family
  name). `name.formatted`, when it differs from `displayName` (the name in another
  script, a former name), is the first alternative name, `nickName` the second.
- The first `primary` e-mail (else the first e-mail) is the e-mail address.
- The enterprise extension's `manager.value` is the manager's person id; `department`
  (else `organization`) is the unit.
- Roles are Groups, not User attributes: a User write never changes roles.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from services.domain.directory import Person

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
BULK_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
CSV_COLUMNS = ("id", "name", "email", "unit", "manager", "roles", "alternative_names")
"""Columns of an import CSV (header row required); lists are separated by `;`."""


class ImportInvalid(ValueError):
    """A directory to import is refused as a whole; `problems` say where and why."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
        self.problems = list(problems)


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def person_from_user(user: Mapping[str, Any], *, roles: Iterable[str] = ()) -> Person:
    """The person a SCIM User describes (its `id`, else its `userName`, is the person
    id); `roles` are kept as they are (Groups carry roles). ValueError if it has no id."""
    person_id = _text(user.get("id")) or _text(user.get("userName"))
    if person_id is None:
        raise ValueError("a User needs a userName (the person id)")
    raw_name = user.get("name")
    name_part: Mapping[str, Any] = raw_name if isinstance(raw_name, Mapping) else {}
    formatted = _text(name_part.get("formatted"))
    given_family = " ".join(
        p for p in (_text(name_part.get("givenName")), _text(name_part.get("familyName"))) if p
    )
    display = _text(user.get("displayName")) or formatted or given_family or None
    alternatives = [n for n in (formatted, _text(user.get("nickName"))) if n and n != display]
    enterprise = user.get(ENTERPRISE_SCHEMA)
    enterprise = enterprise if isinstance(enterprise, Mapping) else {}
    manager = enterprise.get("manager")
    manager_id = _text(manager.get("value")) if isinstance(manager, Mapping) else None
    return Person(
        id=person_id,
        name=display,
        alternative_names=list(dict.fromkeys(alternatives)),
        email=_email(user.get("emails")),
        unit=_text(enterprise.get("department")) or _text(enterprise.get("organization")),
        manager=manager_id,
        roles=sorted(set(roles)),
    )


def _email(emails: Any) -> str | None:
    if not isinstance(emails, list):
        return None
    values = [e for e in emails if isinstance(e, Mapping) and _text(e.get("value"))]
    primary = [e for e in values if e.get("primary") is True]
    chosen = primary or values
    return _text(chosen[0].get("value")) if chosen else None


def user_from_person(
    person: Person, *, external_id: str | None = None, kept: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The SCIM User of a person (without `meta`: the store adds it).

    `kept` is the User as the HR system last wrote it: attributes the directory does not
    use (title, phone numbers, `active`, ...) come back as they were sent, and those it
    does use come back as sent while they still describe the person (a change through
    the directory API replaces them with the directory's values).
    """
    user: dict[str, Any] = {
        k: v for k, v in (kept or {}).items() if k not in ("id", "meta", "schemas", "groups")
    }
    if not kept:
        user["active"] = True  # a person the HR system never sent is an active one
    enterprise = dict(user.get(ENTERPRISE_SCHEMA) or {})
    sent = person_from_user({**user, "id": person.id})
    if (sent.name, sent.alternative_names) != (person.name, list(person.alternative_names)):
        for key in ("displayName", "name", "nickName"):
            user.pop(key, None)
        if person.name is not None:
            user["displayName"] = person.name
        alternatives = list(person.alternative_names)
        formatted = alternatives[0] if alternatives else person.name
        if formatted is not None:
            user["name"] = {"formatted": formatted}
        if len(alternatives) > 1:
            user["nickName"] = alternatives[1]
    if sent.email != person.email:
        user.pop("emails", None)
        if person.email is not None:
            user["emails"] = [{"value": person.email, "type": "work", "primary": True}]
    if sent.unit != person.unit:
        enterprise.pop("organization", None)
        enterprise.pop("department", None)
        if person.unit is not None:
            enterprise["department"] = person.unit
    if sent.manager != person.manager:
        enterprise.pop("manager", None)
        if person.manager is not None:
            enterprise["manager"] = {"value": person.manager}
    user.update(
        {"schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA], "id": person.id, "userName": person.id}
    )
    user[ENTERPRISE_SCHEMA] = enterprise
    if external_id is not None:
        user["externalId"] = external_id
    else:
        user.pop("externalId", None)
    if person.roles:
        user["groups"] = [{"value": role, "display": role} for role in sorted(person.roles)]
    return user


def people_from_scim_json(document: Any) -> list[Person]:
    """The Users of a SCIM JSON document: a ListResponse, a BulkRequest (its POST and
    PUT operations on /Users), a list of Users, or one User."""
    if isinstance(document, Mapping) and "Resources" in document:
        users = document["Resources"]
    elif isinstance(document, Mapping) and "Operations" in document:
        users = [
            op.get("data")
            for op in document["Operations"]
            if isinstance(op, Mapping)
            and str(op.get("method", "")).upper() in ("POST", "PUT")
            and str(op.get("path", "")).startswith("/Users")
        ]
    elif isinstance(document, list):
        users = document
    else:
        users = [document]
    people: list[Person] = []
    problems: list[str] = []
    for n, user in enumerate(users):
        if not isinstance(user, Mapping):
            problems.append(f"user {n}: not an object")
            continue
        try:
            people.append(person_from_user(user))
        except ValueError as exc:
            problems.append(f"user {n}: {_first_line(exc)}")
    if problems:
        raise ImportInvalid(problems)
    return people


def people_from_csv(text: str) -> list[Person]:
    """The people of an import CSV (`CSV_COLUMNS`, header row first; `id` required)."""
    reader = csv.DictReader(io.StringIO(text))
    unknown = sorted(set(reader.fieldnames or ()) - set(CSV_COLUMNS))
    if "id" not in (reader.fieldnames or ()) or unknown:
        raise ImportInvalid(
            [f"CSV header: needs 'id', may have {', '.join(CSV_COLUMNS)} (unknown: {unknown})"]
        )
    people: list[Person] = []
    problems: list[str] = []
    for line, row in enumerate(reader, start=2):
        try:
            people.append(
                Person(
                    id=(row.get("id") or "").strip(),
                    name=_text(row.get("name")),
                    email=_text(row.get("email")),
                    unit=_text(row.get("unit")),
                    manager=_text(row.get("manager")),
                    roles=sorted(set(_split(row.get("roles")))),
                    alternative_names=_split(row.get("alternative_names")),
                )
            )
        except ValueError as exc:
            problems.append(f"line {line}: {_first_line(exc)}")
    if problems:
        raise ImportInvalid(problems)
    return people


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(";") if part.strip()]


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def import_problems(
    people: Sequence[Person], managers_now: Mapping[str, str | None], *, max_chain: int = 1000
) -> list[str]:
    """Why a directory import cannot be taken: a person twice, a person whose record is
    larger than a chunk event's budget (`MAX_CHUNK_DATA_BYTES`: alone they would be an
    event the broker refuses, and the relay would retry it forever), an unknown manager,
    a person managing themselves, a cycle in a manager chain or one too long.
    `managers_now` is the stored directory (person id -> manager id); the import's
    people replace their entries."""
    problems: list[str] = []
    managers = dict(managers_now)
    seen: set[str] = set()
    for person in people:
        if person.id in seen:
            problems.append(f"{person.id}: listed twice")
        seen.add(person.id)
        size = record_bytes(person)
        if size > MAX_CHUNK_DATA_BYTES:
            problems.append(
                f"{person.id}: the record takes {size:,} bytes, more than the"
                f" {MAX_CHUNK_DATA_BYTES:,} bytes an import event may carry"
            )
        managers[person.id] = person.manager
    for person in people:
        if person.manager is None:
            continue
        if person.manager == person.id:
            problems.append(f"{person.id}: a person cannot be their own manager")
        elif person.manager not in managers:
            problems.append(f"{person.id}: manager {person.manager!r} is not in the directory")
    if problems:
        return problems
    # Each chain is walked once: a person whose chain ends at the top is settled.
    settled: set[str] = set()
    for person in people:
        chain: list[str] = []
        on_chain: set[str] = set()
        current: str | None = person.id
        while current is not None and current not in settled:
            if current in on_chain:
                problems.append(f"{person.id}: the manager chain has a cycle through {current}")
                break
            if len(chain) >= max_chain:
                problems.append(f"{person.id}: the manager chain is too long")
                break
            chain.append(current)
            on_chain.add(current)
            current = managers.get(current)
        else:
            settled.update(chain)
            continue
        break  # one cycle is reported once, not by everyone below it
    return problems


MAX_CHUNK_DATA_BYTES = 512 * 1024
"""The people of one `directory.people.imported.v1` take at most this much JSON (an
import refuses a person who alone takes more, `import_problems`): with the envelope and
signature (under 1 KiB) a record stays well under Kafka's usual limit of 1 MiB per
message."""


def record_bytes(person: Person) -> int:
    """An upper bound of the person's size in an event's canonical JSON: their fields
    encoded with every non-ASCII character escaped (`\\uXXXX`, 6 bytes for at most 3 of
    UTF-8, 12 for 4), plus the field names."""
    fields = (
        person.id,
        person.name,
        person.alternative_names,
        person.email,
        person.unit,
        person.manager,
        person.roles,
    )
    return len(json.dumps(fields)) + _RECORD_NAMES


_RECORD_NAMES = len(
    '{"person_id":,"name":,"alternative_names":,"email":,"unit":,"manager_id":,"roles":}'
)


def event_chunks(
    people: Sequence[Person], *, max_people: int, max_bytes: int = MAX_CHUNK_DATA_BYTES
) -> list[Sequence[Person]]:
    """`people` cut, in order, into runs of at most `max_people` whose records take at
    most `max_bytes` (`record_bytes`); a person larger than that alone is a run of one."""
    chunks: list[Sequence[Person]] = []
    start, size = 0, 0
    for i, person in enumerate(people):
        grown = size + record_bytes(person) + 1
        if i > start and (i - start >= max_people or grown > max_bytes):
            chunks.append(people[start:i])
            start, grown = i, record_bytes(person) + 1
        size = grown
    if start < len(people):
        chunks.append(people[start:])
    return chunks
