"""Handlers' actions on incidents routed to them: view, acknowledge, status, comments.

Every route needs a principal. Access is decided by `services.domain.access` over the
routing projection (`services.intake.routing`) and the caller's directory roles.

Each action is one transaction on the incident's stream in intake's event store: load
the stream, decide, append (optimistic concurrency on the stream version, retried on
a conflict), commit, and only then answer. So `incident.viewed.v1` is durable before
any report content leaves the service; if it cannot be stored, nothing is shown.

Content is sealed with the incident's key before it is stored (comments, messages,
the closing outcome), and opened only for the view, after `incident.viewed.v1`
committed (`incident_view`, which the JSON route and the console pages both call).
Closing an incident starts its retention clock (`retention.closed_at`, same
transaction).

A refusal is recorded as `incident.access.denied.v1` on the incident's stream, or, for
an incident intake does not know, on the stream `access-denied:<id>` (its subject is
still the id asked for, so the audit timeline of that id shows the attempts). A
refused view, and every refusal of an excluded (conflicted) principal, answers 404
exactly as an unknown incident does; a refused write by a principal who is simply not
routed, or read-only, answers 403.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import asyncpg
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.domain.access import Action, Allowed, Refused, decide, status_change_refusal
from services.domain.envelope import Envelope, utc_rfc3339
from services.domain.events import (
    AccessDenied,
    Acknowledged,
    Commented,
    EventData,
    ReporterMessage,
    StatusChanged,
    Viewed,
    make_event,
)
from services.domain.incident import IncidentState, fold
from services.domain.policy import Policy
from services.infra import eventstore
from services.infra.auth import Principal
from services.infra.crypto import CryptoError, IncidentKey
from services.infra.http import Problem, problem_responses
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent
from services.intake.principals import RequiredPrincipal
from services.intake.routing import access_routing

router = APIRouter(prefix="/v1", tags=["handlers"])

ATTEMPTS = 10
"""Appends retried on a stream version conflict before answering 503."""
MAX_LISTED = 200

SUBMITTED = "incident.report.submitted.v1"
AMENDED = "incident.report.amended.v1"
ACKNOWLEDGED = "incident.acknowledged.v1"
COMMENTED = "incident.commented.v1"
MESSAGE = "incident.reporter.message.v1"
STATUS = "incident.status.changed.v1"

IncidentId = Annotated[uuid.UUID, Path(description="The incident id (a UUID).")]


# OpenAPI: problem+json answers ---------------------------------------------------


UNAUTHORIZED = (401, "No bearer token, or one that is not valid.")
INVALID = (422, "The request is not valid (path or body); `errors` lists the fields.")
TOO_LARGE = (413, "The request body is over the size limit.")
BUSY = (503, "The incident changed too often meanwhile; retry.")
FAILED = (500, "Internal error: nothing was shown and nothing changed.")
NOT_FOUND = (
    404,
    "No such incident, or the caller may not know of it: refusals look exactly like an "
    "unknown incident (`incident.access.denied.v1` is recorded).",
)
FORBIDDEN = (
    403,
    "The incident is not routed to the caller, or the caller's access is read-only "
    "(`incident.access.denied.v1` is recorded).",
)


# Bodies and answers ---------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class StatusChangeBody(_Body):
    status: Literal["investigating", "resolved", "closed"] = Field(description="The new status.")
    outcome: str | None = Field(
        None, min_length=1, max_length=2000, description="The outcome; required when closed."
    )

    @model_validator(mode="after")
    def _outcome_when_closed(self) -> StatusChangeBody:
        if self.status == "closed" and not self.outcome:
            raise ValueError("an outcome is required to close an incident")
        return self


class TextBody(_Body):
    text: str = Field(min_length=1, max_length=10_000)


class Comment(BaseModel):
    principal: str
    text: str
    at: str


class Message(BaseModel):
    direction: Literal["from_reporter", "to_reporter"]
    author: str = Field(description="`reporter`, or the handler's principal id.")
    text: str
    at: str


class IncidentView(BaseModel):
    """A handler's view of the report. The reporter's identity is never part of it."""

    incident_id: str
    category: str | None
    summary: str | None
    description: str | None
    occurred_at: str | None
    location: str | None
    unit: str | None
    accused: list[str]
    named: list[str]
    addenda: list[str] = Field(description="Texts the report gained after submission.")
    channel: str | None
    submitted_at: str | None
    status: str
    outcome: str | None
    acknowledged_at: str | None
    acknowledged_by: str | None
    level: int | None = Field(description="The caller's routing level; null for standing access.")
    access: Literal["routed", "standing_role"]
    report_digest: str | None = Field(description="Digest of the report version shown.")
    comments: list[Comment]
    messages: list[Message]


class Acknowledgement(BaseModel):
    incident_id: str
    principal: str
    level: int
    acknowledged_at: str
    new: bool = Field(description="False when the caller had already acknowledged.")


class Recorded(BaseModel):
    """An action that is now durably recorded (and queued for Kafka)."""

    incident_id: str
    event_id: str
    type: str
    status: str = Field(description="The incident's status after the action.")


class MyIncident(BaseModel):
    incident_id: str
    category: str | None
    status: str
    level: int
    routed_at: str | None
    submitted_at: str | None
    acknowledged_at: str | None


class MyIncidents(BaseModel):
    incidents: list[MyIncident]


# The one way an action runs -------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What an allowed action sees: the stream as loaded, its fold, the decision."""

    runtime: Runtime
    incident_id: str
    principal: Principal
    events: list[Envelope]
    state: IncidentState
    allowed: Allowed
    key: IncidentKey | None = None

    def seal(self, field_name: str, value: str) -> str:
        """A value sealed with the incident's key; 409 once the incident was erased."""
        if self.key is None:
            raise Problem(
                409, "Erased", "This incident's content was erased: nothing can be added."
            )
        return self.key.seal(field_name, value)

    def event(self, type_: str, data: EventData) -> Envelope:
        return make_event(
            type_,
            subject=self.incident_id,
            data=data,
            source=self.runtime.source,
            time=datetime.now(UTC),
            actor=self.principal.id,
            correlationid=self.events[0].correlationid or self.events[0].id,
            traceparent=current_traceparent(),
        )


@dataclass(frozen=True)
class _Denied:
    status: int


T = TypeVar("T")
Build = Callable[[Context], tuple[list[Envelope], T]]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


def policy_of(request: Request) -> Policy:
    """The policy intake runs with (its conflict rules decide exclusions before triage)."""
    policy: Policy = request.app.state.intake.policy
    return policy


async def _act(
    request: Request, principal: Principal, incident: uuid.UUID, action: Action, build: Build[T]
) -> T:
    """Decide and record one action; returns what `build` made, after the commit."""
    return await act(
        _runtime(request),
        _keys(request),
        principal,
        str(incident),
        action,
        build,
        policy=policy_of(request),
    )


async def act(
    runtime: Runtime,
    keys: KeyStore,
    principal: Principal,
    incident_id: str,
    action: Action,
    build: Build[T],
    *,
    policy: Policy,
) -> T:
    """Decide and record one action; returns what `build` made, after the commit."""
    for _attempt in range(ATTEMPTS):
        try:
            async with runtime.db.acquire() as conn, conn.transaction():
                result = await _attempt_once(
                    runtime, keys, policy, conn, incident_id, principal, action, build
                )
        except eventstore.ConcurrencyError:
            continue
        # committed: the recorded events (or the refusal) are durable from here on
        if isinstance(result, _Denied):
            if result.status == 404:
                raise Problem(404, "Not found", "No such incident.")
            raise Problem(403, "Forbidden", "You may not do this on this incident.")
        return result
    raise Problem(503, "Busy", "The incident kept changing; retry.")


async def _attempt_once(
    runtime: Runtime,
    keys: KeyStore,
    policy: Policy,
    conn: asyncpg.Connection,
    incident_id: str,
    principal: Principal,
    action: Action,
    build: Build[T],
) -> T | _Denied:
    stored = await eventstore.load(conn, incident_id)
    events = [s.envelope for s in stored]
    version = stored[-1].version if stored else 0
    state = fold(incident_id, events)
    if not events or state.category is None:
        await deny(runtime, conn, incident_id, principal, action, "no_such_incident", None, 0)
        return _Denied(404)
    routing = await access_routing(conn, incident_id, events, keys, policy)
    verdict = decide(routing, principal.id, principal.roles, action)
    if isinstance(verdict, Refused):
        await deny(runtime, conn, incident_id, principal, action, verdict.detail, events, version)
        return _Denied(404 if verdict.conceals else 403)
    try:  # an incident from before #8 gets its key now; an erased one stays keyless
        key: IncidentKey | None = await keys.create(conn, incident_id)
    except CryptoError:
        key = None
    context = Context(runtime, incident_id, principal, events, state, verdict, key)
    new, result = build(context)
    await eventstore.append(
        conn, incident_id, version, new, topic_prefix=runtime.settings.kafka_topic_prefix
    )
    for event in new:
        if event.type == STATUS and event.data.get("status") == "closed":
            await start_retention(conn, incident_id, state.category, event.time)
    return result


async def start_retention(
    conn: asyncpg.Connection, incident_id: str, category: str | None, closed_at: datetime
) -> None:
    """The incident was closed: its retention runs from now (inside the caller's txn)."""
    await conn.execute(
        "INSERT INTO retention (incident_id, category, closed_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (incident_id) DO UPDATE SET closed_at = EXCLUDED.closed_at",
        incident_id,
        category or "",
        closed_at,
    )


async def deny(
    runtime: Runtime,
    conn: asyncpg.Connection,
    incident_id: str,
    principal: Principal,
    action: Action,
    reason: str,
    events: list[Envelope] | None,
    version: int,
) -> None:
    """Record `incident.access.denied.v1`: on the incident's stream, or `access-denied:<id>`."""
    event = make_event(
        "incident.access.denied.v1",
        subject=incident_id,
        data=AccessDenied(principal=principal.id, action=action, reason=reason),
        source=runtime.source,
        time=datetime.now(UTC),
        actor=principal.id,
        correlationid=(events[0].correlationid or events[0].id) if events else None,
        traceparent=current_traceparent(),
    )
    stream = incident_id
    if not events:
        stream = f"access-denied:{incident_id}"
        version = await eventstore.stream_version(conn, stream)
    await eventstore.append(
        conn, stream, version, [event], topic_prefix=runtime.settings.kafka_topic_prefix
    )


# The view -------------------------------------------------------------------------


def _time(moment: datetime | None) -> str | None:
    return utc_rfc3339(moment) if moment is not None else None


def report_view(context: Context) -> dict[str, Any]:
    """The handler's view of the incident as loaded (the version the digest names)."""
    report: dict[str, Any] = {}
    accused: list[str] = []
    named: list[str] = []
    addenda: list[str] = []
    comments: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for event in context.events:
        data = event.data
        if event.type == SUBMITTED:
            report = data
            accused = list(data.get("accused") or [])
            named = list(data.get("named") or [])
        elif event.type == AMENDED:
            accused += data.get("accused_added") or []
            named += data.get("named_added") or []
            if data.get("addendum"):
                addenda.append(data["addendum"])
        elif event.type == COMMENTED:
            comments.append(
                {"principal": data["principal"], "text": data["text"], "at": _time(event.time)}
            )
        elif event.type == MESSAGE:
            messages.append(
                {
                    "direction": data["direction"],
                    "author": data["author"],
                    "text": data["text"],
                    "at": _time(event.time),
                }
            )
    state = context.state
    return {
        "incident_id": context.incident_id,
        **{
            name: report.get(name)
            for name in (
                "category",
                "summary",
                "description",
                "occurred_at",
                "location",
                "unit",
                "channel",
            )
        },
        "accused": accused,
        "named": named,
        "addenda": addenda,
        "submitted_at": _time(state.submitted_at),
        "status": state.status,
        "outcome": state.outcome,
        "acknowledged_at": _time(state.acknowledged_at),
        "acknowledged_by": state.acknowledged_by,
        "level": context.allowed.level,
        "access": context.allowed.via,
        "report_digest": state.report_digest,
        "comments": comments,
        "messages": messages,
    }


@router.get(
    "/incidents",
    summary="My incidents: those currently routed to the caller",
    response_model=MyIncidents,
    responses=problem_responses(UNAUTHORIZED, INVALID),
)
async def my_incidents(request: Request, caller: RequiredPrincipal) -> dict[str, Any]:
    """The incidents routed to the caller (and not excluded), newest routing first.

    Only category, status and times: no report content, so nothing is recorded.
    """
    async with _runtime(request).db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT incident_id, level, routed_at FROM routing"
            " WHERE principal = $1 AND routed AND excluded_rule IS NULL"
            " ORDER BY routed_at DESC NULLS LAST, incident_id LIMIT $2",
            caller.id,
            MAX_LISTED,
        )
        ids = [r["incident_id"] for r in rows]
        stored = await conn.fetch(
            "SELECT stream_id, body FROM events WHERE stream_id = ANY($1::text[])"
            " ORDER BY stream_id, version",
            ids,
        )
    by_stream: dict[str, list[Envelope]] = {}
    for row in stored:
        by_stream.setdefault(row["stream_id"], []).append(
            Envelope.model_validate_json(bytes(row["body"]))
        )
    listed = []
    for row in rows:
        state = fold(row["incident_id"], by_stream.get(row["incident_id"], []))
        if state.category is None:
            continue  # routed, but intake has no report (yet): nothing to show
        listed.append(
            {
                "incident_id": row["incident_id"],
                "category": state.category,
                "status": state.status,
                "level": row["level"],
                "routed_at": _time(row["routed_at"]),
                "submitted_at": _time(state.submitted_at),
                "acknowledged_at": _time(state.acknowledged_at),
            }
        )
    return {"incidents": listed}


@router.get(
    "/incidents/{incident_id}",
    summary="A handler's view of the report (recorded as incident.viewed.v1 first)",
    response_model=IncidentView,
    responses=problem_responses(UNAUTHORIZED, NOT_FOUND, INVALID, FAILED, BUSY),
)
async def view_incident(
    incident_id: IncidentId, request: Request, caller: RequiredPrincipal
) -> dict[str, Any]:
    """The report, for a principal the incident is routed to or a standing reader.

    `incident.viewed.v1` (principal, report digest) is committed before the content
    is built; the answer names the same digest. Any refusal answers 404.
    """
    return await incident_view(
        _runtime(request), _keys(request), caller, str(incident_id), policy=policy_of(request)
    )


async def incident_view(
    runtime: Runtime, keys: KeyStore, caller: Principal, incident_id: str, *, policy: Policy
) -> dict[str, Any]:
    """Record `incident.viewed.v1`, then (only then) the report, opened with its key.

    The one way to show a handler an incident: the JSON route and the console call it.
    Refusals raise `Problem` (404, 403, 503) like the route answers them.
    """

    def viewed(context: Context) -> tuple[list[Envelope], Context]:
        digest = context.state.report_digest or ""
        event = context.event(
            "incident.viewed.v1", Viewed(principal=context.principal.id, report_digest=digest)
        )
        return [event], context

    context = await act(runtime, keys, caller, incident_id, "view", viewed, policy=policy)
    # only now, after the viewed event committed, is the content opened
    async with runtime.db.acquire() as conn:
        opened = await keys.open_events(conn, incident_id, context.events)
    return report_view(replace(context, events=opened, state=fold(incident_id, opened)))


# Writes -----------------------------------------------------------------------------


@router.post(
    "/incidents/{incident_id}/acknowledge",
    status_code=202,
    summary="Acknowledge an incident routed to the caller",
    response_model=Acknowledgement,
    responses={
        200: {
            "model": Acknowledgement,
            "description": "Already acknowledged by the caller: nothing new recorded.",
        },
        202: {"description": "Acknowledged: `incident.acknowledged.v1` is recorded."},
        **problem_responses(UNAUTHORIZED, FORBIDDEN, NOT_FOUND, INVALID, FAILED, BUSY),
    },
)
async def acknowledge(
    incident_id: IncidentId, request: Request, caller: RequiredPrincipal
) -> JSONResponse:
    """Record `incident.acknowledged.v1` with the caller's routing level.

    Idempotent per principal: a second acknowledgement by the same principal answers
    200 with the first one and records nothing. Another routed principal's
    acknowledgement is recorded too (they know the incident as well).
    """

    def ack(context: Context) -> tuple[list[Envelope], tuple[bool, dict[str, Any]]]:
        for event in context.events:
            if event.type == ACKNOWLEDGED and event.data.get("principal") == caller.id:
                return [], (False, _ack_body(context, event, new=False))
        event = context.event(
            ACKNOWLEDGED, Acknowledged(principal=caller.id, level=context.allowed.level or 0)
        )
        return [event], (True, _ack_body(context, event, new=True))

    new, body = await _act(request, caller, incident_id, "acknowledge", ack)
    return JSONResponse(body, status_code=202 if new else 200)


def _ack_body(context: Context, event: Envelope, *, new: bool) -> dict[str, Any]:
    return {
        "incident_id": context.incident_id,
        "principal": event.data["principal"],
        "level": event.data["level"],
        "acknowledged_at": utc_rfc3339(event.time),
        "new": new,
    }


def _recorded(context: Context, event: Envelope, status: str | None = None) -> dict[str, Any]:
    return {
        "incident_id": context.incident_id,
        "event_id": event.id,
        "type": event.type,
        "status": status or context.state.status,
    }


@router.post(
    "/incidents/{incident_id}/status",
    status_code=202,
    summary="Change an incident's status (investigating, resolved, closed with outcome)",
    response_model=Recorded,
    responses={
        202: {"description": "Changed: `incident.status.changed.v1` is recorded."},
        **problem_responses(
            UNAUTHORIZED,
            FORBIDDEN,
            NOT_FOUND,
            (
                409,
                "Not possible now: not acknowledged yet, already in that status, or a "
                "transition the workflow forbids (closed is final).",
            ),
            TOO_LARGE,
            INVALID,
            FAILED,
            BUSY,
        ),
    },
)
async def change_status(
    incident_id: IncidentId,
    body: StatusChangeBody,
    request: Request,
    caller: RequiredPrincipal,
) -> dict[str, Any]:
    """Move the incident along its workflow; only principals it is routed to."""

    def change(context: Context) -> tuple[list[Envelope], dict[str, Any]]:
        state = context.state
        refusal = status_change_refusal(
            state.status,
            body.status,
            acknowledged=state.acknowledged_at is not None,
            outcome=body.outcome,
        )
        if refusal:
            raise Problem(409, "Conflict", refusal, current_status=state.status)
        outcome = None if body.outcome is None else context.seal("outcome", body.outcome)
        event = context.event(
            STATUS, StatusChanged(principal=caller.id, status=body.status, outcome=outcome)
        )
        return [event], _recorded(context, event, body.status)

    return await _act(request, caller, incident_id, "status", change)


@router.post(
    "/incidents/{incident_id}/comments",
    status_code=202,
    summary="Comment on an incident (handlers only)",
    response_model=Recorded,
    responses={
        202: {"description": "Recorded: `incident.commented.v1`."},
        **problem_responses(UNAUTHORIZED, FORBIDDEN, NOT_FOUND, TOO_LARGE, INVALID, FAILED, BUSY),
    },
)
async def comment(
    incident_id: IncidentId, body: TextBody, request: Request, caller: RequiredPrincipal
) -> dict[str, Any]:
    """An internal note for the incident's handlers; never shown to the reporter."""
    return await _simple(
        request,
        caller,
        incident_id,
        "comment",
        COMMENTED,
        lambda context: Commented(principal=caller.id, text=context.seal("text", body.text)),
    )


@router.post(
    "/incidents/{incident_id}/messages",
    status_code=202,
    summary="Write to the reporter (also an anonymous one)",
    response_model=Recorded,
    responses={
        202: {"description": "Recorded: `incident.reporter.message.v1` to the reporter."},
        **problem_responses(UNAUTHORIZED, FORBIDDEN, NOT_FOUND, TOO_LARGE, INVALID, FAILED, BUSY),
    },
)
async def message_reporter(
    incident_id: IncidentId, body: TextBody, request: Request, caller: RequiredPrincipal
) -> dict[str, Any]:
    """A message the reporter reads with their receipt (`direction: to_reporter`)."""
    return await _simple(
        request,
        caller,
        incident_id,
        "message_reporter",
        MESSAGE,
        lambda context: ReporterMessage(
            direction="to_reporter", author=caller.id, text=context.seal("text", body.text)
        ),
    )


async def _simple(
    request: Request,
    caller: Principal,
    incident: uuid.UUID,
    action: Action,
    type_: str,
    data: Callable[[Context], EventData],
) -> dict[str, Any]:
    def record(context: Context) -> tuple[list[Envelope], dict[str, Any]]:
        event = context.event(type_, data(context))
        return [event], _recorded(context, event)

    return await _act(request, caller, incident, action, record)
