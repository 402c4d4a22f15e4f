"""Directory administration: `PUT/GET /v1/directory/people/{person_id}` for admins.

A PUT replaces the person's whole record. It is checked against the directory as it
is at that moment (the manager exists, nobody manages themselves, the manager chain
has no cycle), under one lock for every directory write so two concurrent changes
cannot build a cycle together, and stored by `services.intake.directory.upsert_person`:
one `directory.person.upserted.v1` event per real change, none when nothing changed.
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.domain.directory import Person
from services.domain.reports import Name
from services.infra.auth import Principal
from services.infra.http import Problem, problem_responses
from services.infra.runtime import Runtime
from services.intake.directory import get_person, record_of, upsert_person
from services.intake.grants import SELF_GRANT, approve, pending, privileged_added, propose
from services.intake.handlers import INVALID, TOO_LARGE, UNAUTHORIZED
from services.intake.principals import RequiredPrincipal, require_role

router = APIRouter(prefix="/v1", tags=["directory"])

ADMIN = "admin"
MAX_CHAIN = 1000
"""Longest manager chain walked when looking for a cycle."""
_WRITE_LOCK = "directory:manager-chains"

PersonId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Stable principal id of the person (not `system:...`).",
    ),
]
FORBIDDEN = (403, "The caller does not hold the admin role.")
SELF_ROLE = "Nobody may give themselves a role: another admin grants it."
_CONTROL = r"\x00-\x1f\x7f"
"""Control characters, which no text of a record holds (PostgreSQL cannot store a NUL:
the write failed with a 500)."""
Email = Annotated[str, Field(max_length=254, pattern=rf"^[^@\s{_CONTROL}]+@[^@\s{_CONTROL}]+$")]
Unit = Annotated[str, Field(min_length=1, max_length=100, pattern=rf"^[^{_CONTROL}]+$")]


async def admin_principal(caller: RequiredPrincipal) -> Principal:
    """The caller if it holds the admin role: 401 anonymous, 403 without the role.

    A dependency, so a caller without the role is refused before its body is read.
    """
    require_role(caller, ADMIN)
    return caller


AdminPrincipal = Annotated[Principal, Depends(admin_principal)]


class PersonBody(BaseModel):
    """The whole record of a person (a PUT replaces it)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Name | None = Field(None, description="Display name (shown by the people search).")
    alternative_names: list[Name] = Field(
        default_factory=list,
        max_length=20,
        description="Other names the person is known by (another script, a former name):"
        " free-text names in reports and the people search match them too.",
    )
    email: Email | None = Field(None, description="E-mail address.")
    unit: Unit | None = Field(None, description="Business unit.")
    manager_id: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="The manager's person id; null at the top.",
    )
    roles: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]] = Field(
        default_factory=list, max_length=20, description="Roles held (e.g. hr_head, auditor)."
    )

    @field_validator("roles")
    @classmethod
    def _unique(cls, roles: list[str]) -> list[str]:
        return sorted(set(roles))


class PersonOut(BaseModel):
    person_id: str
    name: str | None
    alternative_names: list[str]
    email: str | None
    unit: str | None
    manager_id: str | None
    roles: list[str]


_out = record_of


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _manager_refusal(conn: asyncpg.Connection, person_id: str, manager: str) -> str | None:
    """Why `manager` may not manage `person_id` (None: it may)."""
    if manager == person_id:
        return "a person cannot be their own manager"
    if await get_person(conn, manager) is None:
        return f"manager {manager!r} is not in the directory"
    seen = {person_id}
    current: str | None = manager
    for _ in range(MAX_CHAIN):
        if current is None:
            return None
        if current in seen:
            return f"{manager!r} as manager would make a cycle in the manager chain"
        seen.add(current)
        current = await conn.fetchval("SELECT manager_id FROM people WHERE person_id = $1", current)
    return "the manager chain is too long"


@router.put(
    "/directory/people/{person_id}",
    summary="Create or replace a person (admin)",
    response_model=PersonOut,
    responses={
        200: {"description": "Replaced (or unchanged: then no event is recorded)."},
        201: {
            "model": PersonOut,
            "description": "Created: `directory.person.upserted.v1` is recorded.",
        },
        202: {
            "description": "Stored, but a privileged role (auditor, identity_custodian, admin)"
            " is pending (`pending_grants`) until a second admin approves it."
        },
        **problem_responses(
            UNAUTHORIZED,
            (403, "The caller is no admin, or gives themselves a role."),
            TOO_LARGE,
            (
                422,
                "Invalid: a field, an unknown manager, self-management or a cycle in the "
                "manager chain.",
            ),
        ),
    },
)
async def put_person(
    person_id: PersonId, body: PersonBody, request: Request, caller: AdminPrincipal
) -> JSONResponse:
    """Create or replace a person; one `directory.person.upserted.v1` per real change."""
    if person_id.startswith("system:"):
        raise Problem(422, "Invalid person id", "`system:` ids are reserved for systems.")
    person = Person(
        id=person_id, manager=body.manager_id, **body.model_dump(exclude={"manager_id"})
    )
    async with _runtime(request).db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _WRITE_LOCK)
        current = await get_person(conn, person_id)
        held = current.roles if current else ()
        added = privileged_added(held, person.roles)
        if added and person_id == caller.id:
            raise Problem(403, "Self-grant refused", SELF_GRANT)
        if person_id == caller.id and set(person.roles) - set(held):
            # Any role decides whose reports one reads: a handler's role routes them, a
            # reassign role reassigns any incident to oneself. Another admin grants it.
            raise Problem(403, "Self-grant refused", SELF_ROLE)
        if person.manager is not None:
            refusal = await _manager_refusal(conn, person_id, person.manager)
            if refusal:
                raise Problem(422, "Invalid manager", refusal, field="manager_id")
        # A privileged role waits for a second admin (services.intake.grants).
        person = person.model_copy(update={"roles": sorted(set(person.roles) - added)})
        await upsert_person(_runtime(request), conn, person, actor=caller.id)
        grants = [
            {"grant_id": await propose(_runtime(request), conn, person_id, role, caller.id)}
            | {"role": role}
            for role in sorted(added)
        ]
    if grants:
        return JSONResponse({**_out(person), "pending_grants": grants}, status_code=202)
    return JSONResponse(_out(person), status_code=200 if current else 201)


@router.get(
    "/directory/people/{person_id}",
    summary="A person of the directory (admin)",
    response_model=PersonOut,
    responses=problem_responses(UNAUTHORIZED, FORBIDDEN, (404, "No such person."), INVALID),
)
async def get_person_route(
    person_id: PersonId, request: Request, caller: AdminPrincipal
) -> dict[str, Any]:
    """The person's current record."""
    async with _runtime(request).db.acquire() as conn:
        person = await get_person(conn, person_id)
    if person is None:
        raise Problem(404, "Not found", "No such person.")
    return _out(person)


GrantId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^g-[0-9a-f]{1,32}$")]


def _grant(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "grant_id": row["grant_id"],
        "person_id": row["person_id"],
        "role": row["role"],
        "proposed_by": row["proposed_by"],
        "proposed_at": row["proposed_at"].isoformat(),
        "approved_by": row["approved_by"],
    }


@router.get(
    "/directory/grants",
    summary="Privileged role grants waiting for a second admin (admin)",
    responses=problem_responses(UNAUTHORIZED, FORBIDDEN),
)
async def pending_grants(request: Request, caller: AdminPrincipal) -> dict[str, Any]:
    """Proposed grants of auditor, identity_custodian or admin, not yet approved."""
    async with _runtime(request).db.acquire() as conn:
        return {"grants": [_grant(row) for row in await pending(conn)]}


@router.post(
    "/directory/grants/{grant_id}/approval",
    summary="Approve a privileged role grant (a second admin)",
    responses=problem_responses(
        UNAUTHORIZED,
        (403, "No admin, the proposer themselves, or the person the role is for."),
        (404, "No such grant."),
        (409, "Already approved, or the person is gone."),
        INVALID,
    ),
)
async def approve_grant(
    grant_id: GrantId, request: Request, caller: AdminPrincipal
) -> dict[str, Any]:
    """Assign the proposed role: `directory.role.assigned.v1`, with this admin as actor."""
    async with _runtime(request).db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _WRITE_LOCK)
        return _grant(await approve(_runtime(request), conn, grant_id, caller.id))
