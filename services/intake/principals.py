"""Who is calling intake: FastAPI dependencies resolving the bearer token to a principal.

Roles come from the directory projection (`people.roles`); a system principal
(`system:<name>`) holds none. A present but invalid token is refused with 401, never
treated as anonymous.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from services.infra.auth import Authenticator, Principal
from services.infra.http import Problem
from services.infra.runtime import Runtime
from services.intake.directory import roles_of


async def optional_caller_id(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> str | None:
    """The caller's verified id, or None when no Authorization header was sent
    (anonymous). Roles are not looked up: for routes that need none (taking a report)."""
    if authorization is None:
        return None
    auth: Authenticator = request.app.state.auth
    principal_id = await auth.principal_id_async(authorization)
    if principal_id is None:
        raise Problem(401, "Unauthorized", "The bearer token is not valid.")
    return principal_id


async def optional_principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal | None:
    """The caller with their roles, or None when no Authorization header was sent
    (anonymous). The console's pages call it too, with the session's bearer value."""
    principal_id = await optional_caller_id(request, authorization)
    if principal_id is None:
        return None
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn:
        roles = await roles_of(conn, principal_id)
    return Principal(id=principal_id, roles=roles)


async def required_principal(
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    """The caller; 401 when anonymous."""
    if principal is None:
        raise Problem(401, "Unauthorized", "A bearer token is required.")
    return principal


def require_role(principal: Principal, role: str) -> None:
    """403 unless the principal holds `role`."""
    if role not in principal.roles:
        raise Problem(403, "Forbidden", f"The {role} role is required.")


OptionalCallerId = Annotated[str | None, Depends(optional_caller_id)]
OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]
RequiredPrincipal = Annotated[Principal, Depends(required_principal)]
