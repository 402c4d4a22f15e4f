"""Handlers' actions on incidents routed to them: the HTTP routes (thin adapters).

Every route needs a principal. The use cases are `services.intake.actions` (one unit of
work per action: decide, record, commit, answer); access is decided there by
`services.domain.access` over the routing projection (`services.intake.routing`) and
the caller's directory roles. The routes build a use case's inputs from the request and
map its errors to HTTP in one place (`_answer`).

`incident.viewed.v1` is durable before any report content leaves the service; if it
cannot be stored, nothing is shown. Content is sealed with the incident's key before it
is stored (comments, messages, the closing outcome, reasons), and opened only for the
view, after `incident.viewed.v1` committed (`incident_view`, which the JSON route and
the console pages both call). Closing an incident starts its retention clock.

Refusals reveal nothing: an excluded principal, a principal the incident is not routed
to and any caller on an unknown id get the same answer on every route, read and write
(404 `No such incident.`, byte for byte), at the same cost (see `actions`), recorded as
`incident.access.denied.v1` on `access-denied:<id>`. Only a caller who knows of the
incident anyway gets 403: a read-only reader asking to write, or a routed principal
asking what her role does not allow (reassign, confirm the people).

The conflict routes (issue 18, docs/conflicts.md): `POST .../recuse`, `.../reassign` and
`.../people`.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.domain.access import Action, status_change_refusal
from services.domain.attachments import attachments_of
from services.domain.envelope import Envelope, utc_rfc3339
from services.domain.events import (
    Acknowledged,
    Commented,
    Event,
    PrincipalId,
    ReportAmended,
    ReporterMessage,
    ReportSubmitted,
    StatusChanged,
    Viewed,
)
from services.domain.incident import REPORT_FIELDS, fold
from services.domain.policy import Policy
from services.infra.auth import Principal
from services.infra.http import Problem, problem_responses
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime
from services.intake import actions
from services.intake.actions import ActionError, Build, Context, NotNow, T
from services.intake.principals import RequiredPrincipal
from services.intake.progress import handler_status, progress, standings

router = APIRouter(prefix="/v1", tags=["handlers"])
P = ParamSpec("P")
R = TypeVar("R")

MAX_LISTED = 200


IncidentId = Annotated[uuid.UUID, Path(description="The incident id (a UUID).")]
PersonRef = Annotated[
    PrincipalId, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
]
"""A person id as the directory writes them (services.domain.directory.Person.id): any
other value names nobody, and one with a NUL failed the directory lookup with a 500."""


# OpenAPI: problem+json answers ---------------------------------------------------


UNAUTHORIZED = (401, "No bearer token, or one that is not valid.")
INVALID = (422, "The request is not valid (path or body); `errors` lists the fields.")
TOO_LARGE = (413, "The request body is over the size limit.")
BUSY = (503, "The incident changed too often meanwhile; retry.")
FAILED = (500, "Internal error: nothing was shown and nothing changed.")
NOT_FOUND = (
    404,
    "No such incident, or the caller may not know of it (excluded, or not routed): every "
    "such refusal looks exactly like an unknown incident (`incident.access.denied.v1` is "
    "recorded).",
)
FORBIDDEN = (
    403,
    "The caller knows of the incident but may not do this: read-only access, or a role "
    "the action needs (`incident.access.denied.v1` is recorded).",
)
CLOSED = (409, "The incident is closed (or erased): nothing can change its people now.")
PEOPLE_REFUSED = (
    422,
    "The request is not valid, or names a person who is not in the directory or may not "
    "hold the incident (a conflict); `errors` lists them.",
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


class AttachmentOut(BaseModel):
    """A file of the incident (docs/attachments.md); its content is downloaded apart."""

    attachment_id: str
    digest: str = Field(description="HMAC-SHA256 of the content under the incident's salt.")
    size: int
    media_type: str = Field(description="Found in the content.")
    name: str = Field(description="The base name it was sent with (`[erased]` after erasure).")
    author: str = Field(description="`reporter`, or the handler's principal id.")
    audience: Literal["handlers", "reporter"]
    message_id: str | None
    at: str


class StatusOut(BaseModel):
    """The incident's status as every view shows it (services/domain/status.py)."""

    status: str = Field(
        description="submitted, triaged, escalated, acknowledged, investigating, resolved, closed."
    )
    status_label: str = Field("", description="In words, e.g. `escalated to level 2`.")
    escalation_level: int | None = Field(None, description="The level asked last.")
    stalled: bool = Field(False, description="Escalation found nobody left to ask.")
    acknowledgement_due_at: str | None = Field(
        None,
        description="While nobody acknowledged: the deadline of the level the caller was"
        " asked at (RFC 3339 UTC).",
    )


class IncidentView(StatusOut):
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
    outcome: str | None
    acknowledged_at: str | None
    acknowledged_by: str | None
    level: int | None = Field(description="The caller's routing level; null for standing access.")
    access: Literal["routed", "standing_role"]
    report_digest: str | None = Field(description="Digest of the report version shown.")
    comments: list[Comment]
    messages: list[Message]
    attachments: list[AttachmentOut] = Field(
        default_factory=list, description="The incident's files, oldest first."
    )


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


class MyIncident(StatusOut):
    incident_id: str
    category: str | None
    level: int
    routed_at: str | None
    submitted_at: str | None
    acknowledged_at: str | None


class MyIncidents(BaseModel):
    incidents: list[MyIncident]


# The one way a route runs an action ---------------------------------------------


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


def problem(error: ActionError) -> Problem:
    """The HTTP answer to a use case's error: the one place they are mapped."""
    return Problem(error.status, error.title, error.detail, **error.extra)


def _answered(use_case: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """`use_case` with its `ActionError`s answered as problem+json (`problem`)."""

    @functools.wraps(use_case)
    async def answered(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await use_case(*args, **kwargs)
        except ActionError as error:
            raise problem(error) from None

    return answered


act = _answered(actions.act)
"""`actions.act`, its errors answered as problem+json (`Problem`)."""


async def _act(
    request: Request,
    principal: Principal,
    incident: uuid.UUID,
    action: Action,
    build: Build[T],
    people: Sequence[str] = (),
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
        people=people,
    )


# The view -------------------------------------------------------------------------


def _recording(
    path: str, summary: str, recorded: str, *problems: tuple[int, str]
) -> Callable[[Callable[..., Awaitable[dict[str, Any]]]], Callable[..., Awaitable[dict[str, Any]]]]:
    """A route recording one action: 202 with `Recorded`, the answers every one of them
    has (401, 403, 404, 413, 422, 500, 503) and its own `problems` (a 409; a 422 worded
    for it replaces INVALID)."""
    answers = dict(
        (UNAUTHORIZED, FORBIDDEN, NOT_FOUND, TOO_LARGE, INVALID, FAILED, BUSY, *problems)
    )
    return router.post(
        path,
        status_code=202,
        summary=summary,
        response_model=Recorded,
        responses={
            202: {"description": recorded},
            **problem_responses(*sorted(answers.items())),
        },
    )


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
        if event.type == ReportSubmitted.TYPE:
            report = data
            accused = list(data.get("accused") or [])
            named = list(data.get("named") or [])
        elif event.type == ReportAmended.TYPE:
            accused += data.get("accused_added") or []
            named += data.get("named_added") or []
            if data.get("addendum"):
                addenda.append(data["addendum"])
        elif event.type == Commented.TYPE:
            comments.append(
                {"principal": data["principal"], "text": data["text"], "at": _time(event.time)}
            )
        elif event.type == ReporterMessage.TYPE:
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
        **{name: report.get(name) for name in (*REPORT_FIELDS, "channel")},
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
        "attachments": [a.to_json() for a in attachments_of(context.events)],
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
        found = await standings(conn, [r["incident_id"] for r in rows])
    listed = []
    for row in rows:
        own, shown = found[row["incident_id"]]
        state = fold(row["incident_id"], own)
        if state.category is None:
            continue  # routed, but intake has no report (yet): nothing to show
        listed.append(
            {
                "incident_id": row["incident_id"],
                "category": state.category,
                "level": row["level"],
                "routed_at": _time(row["routed_at"]),
                "submitted_at": _time(state.submitted_at),
                "acknowledged_at": _time(state.acknowledged_at),
                **handler_status(shown, row["level"]),
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
        event = context.event(Viewed(principal=context.principal.id, report_digest=digest))
        return [event], context

    context = await act(runtime, keys, caller, incident_id, "view", viewed, policy=policy)
    # only now, after the viewed event committed, is the content opened
    async with runtime.db.acquire() as conn:
        opened = await keys.open_events(conn, incident_id, context.events)
        shown = await progress(conn, incident_id, opened)
    view = report_view(replace(context, events=opened, state=fold(incident_id, opened)))
    return {**view, **handler_status(shown, context.allowed.level)}


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
            if event.type == Acknowledged.TYPE and event.data.get("principal") == caller.id:
                return [], (False, _ack_body(context, event, new=False))
        event = context.event(Acknowledged(principal=caller.id, level=context.allowed.level or 0))
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


@_recording(
    "/incidents/{incident_id}/status",
    "Change an incident's status (investigating, resolved, closed with outcome)",
    "Changed: `incident.status.changed.v1` is recorded.",
    (
        409,
        "Not possible now: not acknowledged yet, already in that status, or a "
        "transition the workflow forbids (closed is final).",
    ),
    (
        422,
        "Not valid: `status` is not investigating, resolved or closed, `closed`"
        " comes without an `outcome` (1 to 2,000 characters), or another field is"
        " unknown or too long; `errors` lists the fields.",
    ),
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
            raise NotNow(refusal, current_status=state.status)
        outcome = None if body.outcome is None else context.seal("outcome", body.outcome)
        event = context.event(
            StatusChanged(principal=caller.id, status=body.status, outcome=outcome)
        )
        return [event], _recorded(context, event, body.status)

    return await _act(request, caller, incident_id, "status", change)


@_recording(
    "/incidents/{incident_id}/comments",
    "Comment on an incident (handlers only)",
    "Recorded: `incident.commented.v1`.",
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
        lambda context: Commented(principal=caller.id, text=context.seal("text", body.text)),
    )


@_recording(
    "/incidents/{incident_id}/messages",
    "Write to the reporter (also an anonymous one)",
    "Recorded: `incident.reporter.message.v1` to the reporter.",
    (409, "The incident is closed: the reporter reads its outcome instead."),
)
async def message_reporter(
    incident_id: IncidentId, body: TextBody, request: Request, caller: RequiredPrincipal
) -> dict[str, Any]:
    """A message the reporter reads with her receipt or her reports (`direction:
    to_reporter`); 409 once the incident is closed (she reads the outcome instead)."""

    def message(context: Context) -> ReporterMessage:
        if context.state.status == "closed":
            raise NotNow("The incident is closed: write no more to the reporter.")
        return ReporterMessage(
            direction="to_reporter", author=caller.id, text=context.seal("text", body.text)
        )

    return await _simple(request, caller, incident_id, "message_reporter", message)


async def _simple(
    request: Request,
    caller: Principal,
    incident: uuid.UUID,
    action: Action,
    data: Callable[[Context], Event],
) -> dict[str, Any]:
    def record(context: Context) -> tuple[list[Envelope], dict[str, Any]]:
        event = context.event(data(context))
        return [event], _recorded(context, event)

    return await _act(request, caller, incident, action, record)


# Conflicts: recusal, reassignment, confirmation of the people ----------------------


class RecuseBody(_Body):
    reason: str | None = Field(
        None, min_length=1, max_length=2000, description="Why (sealed; optional)."
    )


class ReassignBody(_Body):
    to: list[PersonRef] = Field(
        min_length=1, max_length=20, description="Person ids who hold the incident now."
    )
    remove: list[PersonRef] = Field(
        default_factory=list,
        max_length=20,
        description="Person ids who stop holding it (excluded from it from then on).",
    )
    reason: str = Field(min_length=1, max_length=2000, description="Why (sealed).")


class PeopleBody(_Body):
    accused: list[PersonRef] = Field(
        default_factory=list, max_length=50, description="Every accused, as person ids."
    )
    named: list[PersonRef] = Field(
        default_factory=list, max_length=50, description="Everyone else involved, as ids."
    )
    outsiders: int = Field(
        0, ge=0, le=1000, description="Names found to be nobody in the directory."
    )
    note: str | None = Field(
        None, min_length=1, max_length=2000, description="Why (sealed; optional)."
    )


def _done(incident_id: uuid.UUID, done: actions.Done) -> dict[str, Any]:
    return {
        "incident_id": str(incident_id),
        "event_id": done.event.id,
        "type": done.event.type,
        "status": done.status,
    }


@_recording(
    "/incidents/{incident_id}/recuse",
    "Declare a conflict of interest on an incident routed to the caller",
    "Recorded: `incident.recused.v1`; the caller is excluded now.",
    CLOSED,
)
async def recuse(
    incident_id: IncidentId, body: RecuseBody, request: Request, caller: RequiredPrincipal
) -> dict[str, Any]:
    """The caller is excluded from the incident from this commit on (rule `recused`);
    triage asks the next eligible person (`incident.reassigned.v1`)."""
    done = await _act(request, caller, incident_id, "recuse", actions.recuse(body.reason))
    return _done(incident_id, done)


@_recording(
    "/incidents/{incident_id}/reassign",
    "Order a reassignment (policy `conflicts.reassign_roles`)",
    "Recorded: `incident.reassignment.ordered.v1`.",
    CLOSED,
    PEOPLE_REFUSED,
)
async def reassign(
    incident_id: IncidentId, body: ReassignBody, request: Request, caller: RequiredPrincipal
) -> dict[str, Any]:
    """`to` hold the incident now, `remove` stop holding it (and are excluded).

    Each of `to` must be a person of the directory whom no exclusion of the incident
    keeps out (triage's rules, the reporter, recusals, earlier removals) and who does not
    answer to an accused; else 422 and nothing is recorded.
    """
    build = actions.reassign(body.to, body.remove, body.reason)
    done = await _act(request, caller, incident_id, "reassign", build, (*body.to, *body.remove))
    return _done(incident_id, done)


@_recording(
    "/incidents/{incident_id}/people",
    "Confirm or correct who a conflict-unresolved report concerns (independent roles)",
    "Recorded: `incident.people.confirmed.v1`; triage decides again.",
    (409, "The incident is closed, or its people are not unresolved (nothing to confirm)."),
    PEOPLE_REFUSED,
)
async def confirm_people(
    incident_id: IncidentId, body: PeopleBody, request: Request, caller: RequiredPrincipal
) -> dict[str, Any]:
    """The complete lists of accused and named person ids from now on, by a holder of
    one of the policy's `conflicts.independent_roles` the incident is routed to."""
    build = actions.confirm_people(body.accused, body.named, body.outsiders, body.note)
    done = await _act(
        request, caller, incident_id, "confirm_people", build, (*body.accused, *body.named)
    )
    return _done(incident_id, done)
