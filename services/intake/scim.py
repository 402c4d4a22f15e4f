"""SCIM 2.0 provisioning on intake (RFC 7643/7644): `/scim/v2/...` for the HR system.

The protocol (routing, validation, PATCH, If-Match, Bulk with bulkId references and
failOnErrors, discovery, error responses) is `scim2-server`'s; this module is its
storage on intake's directory and its FastAPI route. Users are the people of the
directory (`services.domain.directory_sync` maps them), Groups are roles. Every change
goes through `services.intake.directory.upsert_person`: one
`directory.person.upserted.v1` per real change, the calling system as actor, stored
with the `people` row in the request's transaction (each Bulk operation in a
savepoint), under the directory's write lock.

Only a registered system (services/infra/systems.py) with `http` and the `directory`
scope may call, with its bearer credential (resolving to `system:<id>`); people and
other systems get 403, no credential 401.
Privileged roles (auditor, identity_custodian, admin) are never changed over SCIM: a
Group write that would is refused with 403 (two admins grant them through
`/v1/directory`), and a User write keeps whatever roles the person holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import asyncpg
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import ValidationError
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    ETag,
    ForbiddenException,
    Group,
    InvalidFilterException,
    InvalidValueException,
    MutabilityException,
    NotFoundException,
    NotImplementedException,
    PreconditionFailedException,
    Resource,
    ResourceType,
    ResponseParameters,
    SCIMException,
    ScimFilter,
    ScimProvider,
    SearchRequest,
    Sort,
    UnauthorizedException,
    UniquenessException,
)
from scim2_models import Filter as FilterConfig
from scim2_server.errors import MethodNotAllowedException
from scim2_server.handler import AsyncScimHandler
from scim2_server.requests import ScimRequest
from scim2_server.routing import Operation
from scim2_server.service import ScimService
from scim2_server.storage import AsyncScimStorage, SearchPage
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

from services.domain.directory import Person
from services.domain.directory_sync import person_from_user, user_from_person
from services.domain.inbound import SCOPE_DIRECTORY
from services.infra.auth import Authenticator
from services.infra.runtime import Runtime
from services.infra.systems import Systems
from services.intake.directory import _person, get_person, upsert_person
from services.intake.directory_api import _manager_refusal
from services.intake.directory_import import WRITE_LOCK
from services.intake.grants import PRIVILEGED
from services.intake.scim_filter import SqlFilter, user_filter_sql

log = logging.getLogger(__name__)
router = APIRouter(tags=["scim"])
PREFIX = "/scim/v2"
MAX_RESULTS = 1000
ROLE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


def scim_service(max_payload: int = 256 * 1024) -> ScimService:
    """The SCIM service intake announces: PATCH, Bulk (1,000 operations, `max_payload`
    bytes: intake's body limit), filter (1,000 results a page), ETags; no sorting, no
    password change; bearer tokens."""
    config = load_default_service_provider_config()
    config.sort = Sort(supported=False)
    config.change_password = ChangePassword(supported=False)
    config.etag = ETag(supported=True)
    config.filter = FilterConfig(supported=True, max_results=MAX_RESULTS)
    config.bulk = Bulk(supported=True, max_operations=1000, max_payload_size=max_payload)
    config.authentication_schemes = [
        AuthenticationScheme(
            type=AuthenticationScheme.Type.oauthbearertoken,
            name="Bearer token",
            description="The registered system's bearer credential (docs/directory-sync.md).",
            primary=True,
        )
    ]
    provider = ScimProvider.from_discovery(
        load_default_schemas().values(), load_default_resource_types().values(), config=config
    )
    return ScimService(provider)


def _version(person_version: int) -> str:
    return f'W/"{person_version}"'


def _roles_version(members: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()[:16]
    return f'W/"{digest}"'


class DirectoryStorage(AsyncScimStorage):
    """Users and Groups on intake's directory, inside one request's transaction."""

    def __init__(
        self, runtime: Runtime, conn: asyncpg.Connection, actor: str, service: ScimService
    ) -> None:
        self.runtime = runtime
        self.conn = conn
        self.actor = actor
        self.service = service

    @contextlib.asynccontextmanager
    async def operation(self) -> AsyncIterator[None]:
        """A savepoint: a failed Bulk operation leaves the others standing. A value
        PostgreSQL cannot store (a NUL character) is the client's invalid value."""
        try:
            async with self.conn.transaction():
                yield
        except asyncpg.DataError as exc:
            raise _unstorable(exc) from exc

    # -- reading --------------------------------------------------------------------

    def _model(self, resource_type: ResourceType, data: dict[str, Any]) -> Resource[Any]:
        return self.service.get_model(resource_type).model_validate(data)

    async def _users(
        self, resource_type: ResourceType, rows: Sequence[asyncpg.Record]
    ) -> list[Resource[Any]]:
        streams = [f"directory:{r['person_id']}" for r in rows]
        history = {
            h["stream_id"]: h
            for h in await self.conn.fetch(
                "SELECT stream_id, max(version) AS version, min(time) AS created FROM events"
                " WHERE stream_id = ANY($1::text[]) GROUP BY stream_id",
                streams,
            )
        }
        users = []
        for row, stream in zip(rows, streams, strict=True):
            kept = row["attributes"]
            user = user_from_person(
                _person(row),
                external_id=row["external_id"],
                kept=json.loads(kept) if isinstance(kept, str) else kept,
            )
            seen = history.get(stream)
            modified = row["updated_at"]
            # RFC 7643 §3.1: `created` never moves. A person first imported has no event of
            # their own stream until a later change; a row from before migration 0011 has
            # the migration's time as created_at, later than their first own event.
            created = row["created_at"] if seen is None else min(seen["created"], row["created_at"])
            # a change from a bulk import is in an event of the import's stream, counted
            # in `imports` (services/intake/directory_import.py)
            user["meta"] = {
                "resourceType": "User",
                "created": created.isoformat(),
                "lastModified": modified.isoformat(),
                "version": _version((seen["version"] if seen else 0) + row["imports"]),
            }
            users.append(self._model(resource_type, user))
        return users

    async def _group(self, resource_type: ResourceType, role: str) -> Resource[Any] | None:
        members = [
            r["person_id"]
            for r in await self.conn.fetch(
                "SELECT person_id FROM people WHERE $1 = ANY(roles) ORDER BY person_id", role
            )
        ]
        created = await self.conn.fetchval(
            "SELECT created_at FROM scim_groups WHERE name = $1", role
        )
        if not members and created is None:
            return None
        group: dict[str, Any] = {
            "schemas": [Group.__schema__],
            "id": role,
            "displayName": role,
            "meta": {"resourceType": "Group", "version": _roles_version(members)},
        }
        if members:
            group["members"] = [{"value": m, "type": "User", "$ref": f"Users/{m}"} for m in members]
        return self._model(resource_type, group)

    async def get(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        response_parameters: ResponseParameters[Any] | None = None,
    ) -> Resource[Any]:
        if resource_type.id == "Group":
            group = await self._group(resource_type, resource_id)
            if group is None:
                raise NotFoundException(detail=f"No Group {resource_id!r}")
            return group
        rows = await self.conn.fetch(
            "SELECT p.*, s.external_id, s.attributes FROM people p"
            " LEFT JOIN scim_users s USING (person_id) WHERE p.person_id = $1",
            resource_id,
        )
        if not rows:
            raise NotFoundException(detail=f"No User {resource_id!r}")
        return (await self._users(resource_type, rows))[0]

    async def search(
        self,
        resource_types: list[ResourceType],
        search_request: SearchRequest[Any],
        *,
        position: Any = None,
    ) -> SearchPage:
        if len(resource_types) != 1:
            raise NotImplementedException(detail="Search Users or Groups, not the root")
        resource_type = resource_types[0]
        start = max((search_request.start_index or 1) - 1, 0)
        count = MAX_RESULTS if search_request.count is None else search_request.count
        scim_filter = search_request.filter
        if resource_type.id == "Group":
            return await self._search_groups(resource_type, scim_filter, start, count)
        params = SqlFilter()
        where = user_filter_sql(scim_filter.ast if scim_filter is not None else None, params)
        base = "FROM people p LEFT JOIN scim_users s USING (person_id) WHERE " + where
        total = await self.conn.fetchval(f"SELECT count(*) {base}", *params.params)
        rows = await self.conn.fetch(
            f"SELECT p.*, s.external_id, s.attributes {base} ORDER BY p.person_id"
            f" OFFSET {start} LIMIT {count}",
            *params.params,
        )
        return SearchPage(total=int(total), resources=await self._users(resource_type, rows))

    async def _search_groups(
        self,
        resource_type: ResourceType,
        scim_filter: ScimFilter[Any] | None,
        start: int,
        count: int,
    ) -> SearchPage:
        names = [
            r["name"]
            for r in await self.conn.fetch(
                "SELECT name FROM scim_groups UNION"
                " SELECT DISTINCT unnest(roles) FROM people ORDER BY 1"
            )
        ]
        groups = [g for n in names if (g := await self._group(resource_type, n)) is not None]
        if scim_filter is not None:
            try:
                groups = [g for g in groups if scim_filter.match(g)]
            except (ValueError, TypeError) as exc:
                raise InvalidFilterException(detail="The filter does not apply to Groups") from exc
        return SearchPage(total=len(groups), resources=groups[start : start + count])

    # -- writing --------------------------------------------------------------------

    async def _store(self, person: Person) -> None:
        if person.manager is not None:
            refusal = await _manager_refusal(self.conn, person.id, person.manager)
            if refusal:
                raise InvalidValueException(detail=refusal)
        await upsert_person(self.runtime, self.conn, person, actor=self.actor)

    async def _keep(self, person_id: str, resource: Resource[Any]) -> None:
        """Keep the User as sent (its externalId, and what the directory does not use)."""
        sent = resource.model_dump(mode="json")
        external_id = sent.pop("externalId", None)
        try:
            async with self.conn.transaction():
                await self.conn.execute(
                    "INSERT INTO scim_users (person_id, external_id, attributes)"
                    " VALUES ($1, $2, $3::jsonb) ON CONFLICT (person_id) DO UPDATE"
                    " SET external_id = excluded.external_id, attributes = excluded.attributes",
                    person_id,
                    external_id,
                    json.dumps({k: v for k, v in sent.items() if k not in ("id", "meta")}),
                )
        except asyncpg.UniqueViolationError as exc:
            raise UniquenessException(detail="externalId is already taken") from exc

    def _person(self, resource: Resource[Any], roles: Sequence[str]) -> Person:
        data = resource.model_dump(mode="json")
        try:
            person = person_from_user(data, roles=roles)
        except (ValueError, ValidationError) as exc:
            raise InvalidValueException(detail=_first_line(exc)) from exc
        if person.id.startswith("system:"):
            raise InvalidValueException(detail="system: ids are reserved for systems")
        return person

    async def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        if resource_type.id == "Group":
            return await self._create_group(resource_type, resource)
        person = self._person(resource.model_copy(update={"id": None}), ())
        if await _user_name_taken(self.conn, person.id):
            raise UniquenessException(detail=f"userName {person.id!r} is already taken")
        await self._store(person)
        await self._keep(person.id, resource)
        return await self.get(resource_type, person.id)

    async def update(
        self,
        resource_type: ResourceType,
        resource: Resource[Any],
        *,
        expected_version: str | None = None,
    ) -> Resource[Any]:
        resource_id = cast(str, resource.id)
        current = await self.get(resource_type, resource_id)
        meta = current.meta
        if expected_version is not None and meta is not None and meta.version != expected_version:
            raise PreconditionFailedException(detail="The resource changed meanwhile")
        if resource_type.id == "Group":
            return await self._update_group(resource_type, resource_id, resource)
        stored = await get_person(self.conn, resource_id)
        assert stored is not None  # get() found it, under the write lock
        user_name = getattr(resource, "user_name", None) or resource_id
        if user_name.lower() != resource_id.lower():
            raise MutabilityException(detail="userName is the person id and cannot change")
        if user_name != resource_id:  # the same userName (caseExact false): the id stays
            resource = resource.model_copy(update={"user_name": resource_id})
        person = self._person(resource, stored.roles)
        await self._store(person)
        await self._keep(person.id, resource)
        return await self.get(resource_type, resource_id)

    async def delete(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        expected_version: str | None = None,
    ) -> None:
        if resource_type.id != "Group":
            # People stay in the directory: past incidents name them (docs/directory-sync.md).
            raise MethodNotAllowedException(
                allowed=["GET", "PUT", "PATCH"],
                detail="People are never deleted: the directory keeps them for past incidents.",
            )
        self._not_privileged(resource_id)
        await self._set_members(resource_id, [])
        await self.conn.execute("DELETE FROM scim_groups WHERE name = $1", resource_id)

    # -- groups are roles -----------------------------------------------------------

    @staticmethod
    def _not_privileged(role: str) -> None:
        if role in PRIVILEGED:
            raise ForbiddenException(
                detail="Privileged roles are granted by two admins, not over SCIM."
            )

    async def _create_group(
        self, resource_type: ResourceType, resource: Resource[Any]
    ) -> Resource[Any]:
        role = str(getattr(resource, "display_name", None) or "")
        if not re.fullmatch(ROLE_PATTERN, role):
            raise InvalidValueException(detail=f"displayName is a role name ({ROLE_PATTERN})")
        self._not_privileged(role)
        if await self._group(resource_type, role) is not None:
            raise UniquenessException(detail=f"Group {role!r} exists")
        await self.conn.execute("INSERT INTO scim_groups (name) VALUES ($1)", role)
        await self._set_members(role, _member_ids(resource))
        return cast(Resource[Any], await self._group(resource_type, role))

    async def _update_group(
        self, resource_type: ResourceType, role: str, resource: Resource[Any]
    ) -> Resource[Any]:
        if getattr(resource, "display_name", role) not in (None, role):
            raise InvalidValueException(detail="displayName is the role and cannot change")
        members = _member_ids(resource)
        held = {
            r["person_id"]
            for r in await self.conn.fetch(
                "SELECT person_id FROM people WHERE $1 = ANY(roles)", role
            )
        }
        if set(members) != held:
            self._not_privileged(role)
        await self.conn.execute(
            "INSERT INTO scim_groups (name) VALUES ($1) ON CONFLICT DO NOTHING", role
        )
        await self._set_members(role, members)
        return cast(Resource[Any], await self._group(resource_type, role))

    async def _set_members(self, role: str, members: Sequence[str]) -> None:
        """Give `role` to exactly `members`: one upsert per person whose roles change."""
        wanted = set(members)
        rows = await self.conn.fetch(
            "SELECT * FROM people WHERE $1 = ANY(roles) OR person_id = ANY($2::text[])",
            role,
            sorted(wanted),
        )
        found = {r["person_id"]: _person(r) for r in rows}
        unknown = sorted(wanted - set(found))
        if unknown:
            raise InvalidValueException(detail=f"member {unknown[0]!r} is not a User")
        for person_id in sorted(found):
            person = found[person_id]
            held = set(person.roles)
            roles = held | {role} if person_id in wanted else held - {role}
            if roles != held:
                changed = person.model_copy(update={"roles": sorted(roles)})
                await upsert_person(self.runtime, self.conn, changed, actor=self.actor)


async def _user_name_taken(conn: asyncpg.Connection, user_name: str) -> bool:
    """Whether a person holds this userName, compared as RFC 7643 says (caseExact false:
    "P-Chen" is taken by p-chen), by the index on lower(person_id)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM people WHERE lower(person_id) = lower($1))",
            user_name,
        )
    )


def _member_ids(resource: Resource[Any]) -> list[str]:
    members = getattr(resource, "members", None) or []
    return sorted({str(m.value) for m in members if getattr(m, "value", None)})


def _unstorable(exc: asyncpg.DataError) -> InvalidValueException:
    """A value the database refused (a NUL character, which text and jsonb cannot hold)
    as the SCIM error of an invalid value: a 400, never a 500."""
    return InvalidValueException(detail=f"A value cannot be stored: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        text = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return text.splitlines()[0] if text else type(exc).__name__


# -- the route ----------------------------------------------------------------------

ScimSystems = Callable[[str], bool]
"""Whether a verified principal id is a system allowed to provision over SCIM."""


async def _caller(request: Request) -> str:
    """The calling system: 401 without a valid bearer credential, 403 for anyone who is
    not a SCIM system (the same answer whoever it is)."""
    auth: Authenticator = request.app.state.auth
    authorization = request.headers.get("authorization")
    principal = await auth.principal_id_async(authorization) if authorization else None
    if principal is None:
        raise UnauthorizedException(detail="A bearer credential is required.")
    allowed: ScimSystems = request.app.state.scim_systems
    if not allowed(principal):
        raise ForbiddenException(detail="This credential may not provision the directory.")
    return principal


def _response(body: dict[str, Any] | None, status: int, headers: dict[str, str]) -> Response:
    content = json.dumps(body).encode() if body is not None else b""
    return Response(content=content, status_code=status, headers=headers)


@router.api_route(
    PREFIX + "/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,  # SCIM describes itself: /scim/v2/Schemas, /ResourceTypes
)
async def scim(path: str, request: Request) -> Response:
    """Serve one SCIM request with scim2-server over the directory."""
    service: ScimService = request.app.state.scim
    runtime: Runtime = request.app.state.runtime
    scim_request = ScimRequest(
        method=request.method,
        base_url=str(request.base_url).rstrip("/") + PREFIX,
        path="/" + path,
        query=dict(request.query_params),
        headers=list(request.headers.items()),
        body=await request.body(),
    )
    try:
        with service.provider:
            operation = service.match(scim_request).operation
        actor = "" if operation is Operation.service_provider_config else await _caller(request)
        async with runtime.db.acquire() as conn, conn.transaction():
            if request.method != "GET" and operation is not Operation.search_with_body:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", WRITE_LOCK)
            storage = DirectoryStorage(runtime, conn, actor, service)
            answer = await AsyncScimHandler(service, storage).handle(scim_request)
    except asyncpg.DataError as exc:  # a read outside `operation` (an id, a filter value)
        answer = service.error_response(_unstorable(exc))
    except SCIMException as exc:
        answer = service.error_response(exc)
    answer.headers.setdefault("Cache-Control", "no-cache")
    return _response(answer.body, int(answer.status), answer.headers)


def mount(app: FastAPI, systems: Systems) -> None:
    """Serve SCIM on `app` for the registered systems with the `directory` scope."""

    def allowed(principal: str) -> bool:
        system = systems.for_principal(principal)
        return system is not None and SCOPE_DIRECTORY in system.scopes

    runtime: Runtime = app.state.runtime
    app.state.scim = scim_service(runtime.settings.max_body_bytes)
    app.state.scim_systems = allowed
    app.include_router(router)
