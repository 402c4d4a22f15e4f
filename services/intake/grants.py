"""Two admins for a privileged role: proposed by one, approved by another (issue 19).

Granting `auditor`, `identity_custodian` or `admin` through the directory API never
takes effect on one admin's word. The grant becomes a pending proposal
(`directory.role.proposed.v1`, actor: the proposer); a different admin approves it,
and only then is the role assigned (`directory.role.assigned.v1`, actor: the approver,
with `proposed_by` and `grant_id`). Nobody proposes or approves a privileged role for
themselves, and the proposer cannot approve their own proposal. The YAML seed at start
is the bootstrap and is exempt. Revoking a role needs no second admin.

Every function runs inside the caller's transaction, with the directory's write lock.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

import asyncpg

from services.domain.events import RoleAssigned, RoleProposed
from services.infra import eventstore
from services.infra.http import Problem
from services.infra.runtime import Runtime
from services.intake.actions import new_event
from services.intake.directory import get_person

PRIVILEGED = frozenset({"auditor", "identity_custodian", "admin"})
SELF_GRANT = "Nobody may grant themselves the auditor, identity_custodian or admin role."


def privileged_added(held: Iterable[str], wanted: Iterable[str]) -> frozenset[str]:
    """The privileged roles in `wanted` that are not in `held` (these need approval)."""
    return (frozenset(wanted) - frozenset(held)) & PRIVILEGED


async def _append(
    runtime: Runtime,
    conn: asyncpg.Connection,
    person_id: str,
    data: RoleProposed | RoleAssigned,
    actor: str,
) -> None:
    stream = f"directory:{person_id}"
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", stream)
    event = new_event(runtime, person_id, data, actor)
    version = await eventstore.stream_version(conn, stream)
    await eventstore.append(
        conn, stream, version, [event], topic_prefix=runtime.settings.kafka_topic_prefix
    )


async def propose(
    runtime: Runtime, conn: asyncpg.Connection, person_id: str, role: str, proposer: str
) -> str:
    """A pending grant of `role` to `person_id` (its id); the same one if already pending."""
    if proposer == person_id:
        raise Problem(403, "Self-grant refused", SELF_GRANT)
    pending = await conn.fetchval(
        "SELECT grant_id FROM role_grants WHERE person_id = $1 AND role = $2"
        " AND approved_by IS NULL",
        person_id,
        role,
    )
    if pending is not None:
        return str(pending)
    grant_id = f"g-{secrets.token_hex(8)}"
    data = RoleProposed(grant_id=grant_id, person_id=person_id, role=role, proposed_by=proposer)
    await _append(runtime, conn, person_id, data, proposer)
    await conn.execute(
        "INSERT INTO role_grants (grant_id, person_id, role, proposed_by) VALUES ($1, $2, $3, $4)",
        grant_id,
        person_id,
        role,
        proposer,
    )
    return grant_id


async def approve(
    runtime: Runtime, conn: asyncpg.Connection, grant_id: str, approver: str
) -> asyncpg.Record:
    """Assign the role of a pending grant, approved by a second admin; 403/404/409 if not."""
    grant = await conn.fetchrow(
        "SELECT * FROM role_grants WHERE grant_id = $1 FOR UPDATE", grant_id
    )
    if grant is None:
        raise Problem(404, "Not found", "No such grant.")
    if grant["approved_by"] is not None:
        raise Problem(409, "Already approved", f"Approved by {grant['approved_by']}.")
    if approver == grant["person_id"]:
        raise Problem(403, "Self-grant refused", SELF_GRANT)
    if approver == grant["proposed_by"]:
        raise Problem(
            403, "Second admin required", "The admin who proposed a grant cannot approve it."
        )
    person = await get_person(conn, grant["person_id"])
    if person is None:
        raise Problem(409, "Person gone", "The person is no longer in the directory.")
    data = RoleAssigned(
        person_id=person.id,
        role=grant["role"],
        proposed_by=grant["proposed_by"],
        grant_id=grant_id,
    )
    await _append(runtime, conn, person.id, data, approver)
    await conn.execute(
        "UPDATE people SET roles = $2, updated_at = clock_timestamp() WHERE person_id = $1",
        person.id,
        sorted({*person.roles, grant["role"]}),
    )
    return await conn.fetchrow(
        "UPDATE role_grants SET approved_by = $2, approved_at = clock_timestamp()"
        " WHERE grant_id = $1 RETURNING *",
        grant_id,
        approver,
    )


async def pending(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The grants waiting for a second admin, oldest first."""
    return list(
        await conn.fetch(
            "SELECT * FROM role_grants WHERE approved_by IS NULL ORDER BY proposed_at LIMIT 1000"
        )
    )
