"""Intake's report routes. Thin: parse, call one service method, answer.

`POST /v1/reports` and its documented alias for the harassment channel,
`POST /v1/channels/harassment/reports`. The shapes of the answers (and of problem
bodies, which `services.infra.http` writes) are declared here for the OpenAPI document;
`receipts.py` uses them too.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import BaseModel, Field

from services.domain.inbound import InboundRefused, authorize
from services.domain.receipts import request_digest
from services.domain.reports import (
    PeopleRefused,
    ReporterRefused,
    ReportRequest,
    UnknownCategory,
    WrongChannel,
    for_harassment_channel,
    reporter_of,
)
from services.infra.auth import is_system_id
from services.infra.http import PROBLEM, Problem, ProblemDoc
from services.infra.systems import Systems
from services.infra.telemetry import current_traceparent, span_after
from services.intake.principals import OptionalCallerId
from services.intake.service import IntakeService
from services.intake.usecases import (
    ANONYMOUS_ACTOR,
    IdempotencyConflict,
    TakeReport,
    UnknownReporter,
    refusal_reason,
)

router = APIRouter(prefix="/v1", tags=["reports"])
NO_STORE = {"Cache-Control": "no-store"}


class ProblemBody(ProblemDoc):
    """An RFC 9457 problem: every error of this API has this shape."""

    errors: list[dict[str, str]] | None = Field(
        None, description="422 on invalid input: one `{field, message}` per problem."
    )
    valid_categories: list[str] | None = Field(
        None, description="422 on an unknown category: the categories of the policy."
    )


def problem(description: str, **headers: str) -> dict[str, Any]:
    """An OpenAPI response entry for a problem+json answer."""
    entry: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM: {"schema": ProblemBody.model_json_schema()}},
    }
    if headers:
        entry["headers"] = {
            name: {
                "description": text,
                "schema": {"type": "integer" if name == "Retry-After" else "string"},
            }
            for name, text in headers.items()
        }
    return entry


class SubmittedAnswer(BaseModel):
    """The answer to an accepted report."""

    incident_id: str = Field(description="The new incident's id.")
    receipt: str | None = Field(
        description="Anonymous reports only (else null): the receipt to follow the report"
        " up with, 4 groups of 5 Crockford base32 symbols (100 bits), e.g."
        " `7K3QZ-M0XRT-4HB9C-PWD2E`. Case, hyphens and spaces do not matter when typed"
        " back; O reads as 0, I and L as 1."
    )
    secret: str | None = Field(
        description="Anonymous reports only (else null): the one-time secret that goes"
        " with the receipt (`X-Receipt-Secret`), 6 groups of 5 symbols (150 bits). It is"
        " shown in this answer only: intake keeps nothing but its argon2id hash. Null"
        " when this answer repeats an earlier one (same Idempotency-Key)."
    )
    note: str | None = Field(
        None,
        description="Present when an anonymous report's answer is repeated for the same"
        " Idempotency-Key: says why `secret` is null.",
    )


IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7e]+$",
        description="Makes the request safe to retry: the same key and body give the same"
        " answer and one incident; the same key with another body is refused (409). Keys"
        " are scoped to the caller (all anonymous callers share one scope, so use a random"
        " key such as a UUID). Only the key's SHA-256 is stored.",
    ),
]

REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "model": SubmittedAnswer,
        "description": "Accepted: the incident, its event and its outbox row are durable."
        " Anonymous reports also get a receipt and a one-time secret. A repeated"
        " Idempotency-Key answers the first answer again, with `Idempotent-Replayed:"
        " true`; for an anonymous report the secret is then null (see `note`).",
        "headers": {
            "Idempotent-Replayed": {
                "description": "`true` when this answer repeats an earlier one.",
                "schema": {"type": "string"},
            }
        },
    },
    401: problem(
        "The bearer token is not valid, or an anonymous caller named a `reporter`"
        " (naming a reporter needs authentication)."
    ),
    403: problem(
        "A person named someone else as `reporter` (a person reports as themselves), or a"
        " system that is not registered for HTTP or lacks the scope (docs/inbound.md)."
    ),
    409: problem("The Idempotency-Key was used before with another body (or endpoint)."),
    413: problem("The body is over the size limit (INCIDENTS_MAX_BODY_BYTES)."),
    422: problem(
        "Invalid body or header: malformed JSON, a missing or overlong field, an unknown"
        " field, an unknown category (`valid_categories` lists the policy's), a reporter"
        " the directory does not know, `reporter: null` from an authenticated person, a"
        " control character in a field (tabs and line breaks only in `description`), an"
        ' empty, overlong or control-character name, an `{"id": ...}` the directory does'
        " not know, or the reporter among the accused (`errors` names the entry, e.g."
        " `accused.0`)."
    ),
}


def _service(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


EVENT_STATUS = {
    "oversized": (413, "Too large"),
    "out_of_scope": (403, "Forbidden"),
    "wrong_type": (422, "Wrong event type"),
    "malformed": (415, "Unsupported event encoding"),
    "unauthenticated": (403, "Forbidden"),
}
"""The status of an inbound event's refusal, by its kind (else 422 `Invalid event`)."""
REFUSED = (InboundRefused, UnknownCategory, UnknownReporter, PeopleRefused, IdempotencyConflict)
"""The report use cases' refusals (`services.intake.usecases`)."""


def report_problem(exc: Exception, *, event: bool = False) -> Problem:
    """The one mapping of a refused report to HTTP, for every route that takes one;
    `event` for `POST /v1/events` (which words an inbound event's refusals)."""
    if isinstance(exc, InboundRefused):
        status, title = EVENT_STATUS.get(exc.kind, (422, "Invalid event"))
        return Problem(status, title, refusal_reason(exc))
    if isinstance(exc, UnknownCategory):
        return Problem(422, "Unknown category", str(exc), valid_categories=exc.known)
    if event and isinstance(exc, UnknownReporter | PeopleRefused):
        return Problem(422, "Invalid report", refusal_reason(exc))
    if isinstance(exc, UnknownReporter):
        return Problem(422, "Unknown reporter", str(exc))
    if isinstance(exc, PeopleRefused):
        return Problem(
            422, "Invalid person", str(exc), errors=[{"field": exc.where, "message": exc.reason}]
        )
    if isinstance(exc, IdempotencyConflict):
        if event:
            return Problem(409, "Event id reused", refusal_reason(exc))
        return Problem(
            409,
            "Idempotency-Key reused",
            "This Idempotency-Key was used with another request body; use a new key.",
        )
    raise TypeError(exc)


def _within_scope(request: Request, caller: str | None, reporter: str | None) -> None:
    """A system reports only as the systems file registers it (docs/inbound.md): on
    HTTP, and naming a person only with the `report_for_person` scope; else 403."""
    systems: Systems = request.app.state.systems
    system = systems.for_principal(caller)
    try:
        if system is None:
            raise InboundRefused("out_of_scope", "not a registered system on HTTP")
        authorize(system.id, system.scopes, reporter)
    except InboundRefused as exc:
        raise Problem(403, "Forbidden", exc.reason) from exc


async def _take(
    route: str,
    report: ReportRequest,
    request: Request,
    caller: str | None,
    idempotency_key: str | None,
) -> JSONResponse:
    is_system = caller is not None and is_system_id(caller)
    try:
        reporter = reporter_of(
            caller,
            caller_is_system=is_system,
            claimed=report.reporter,
            claimed_explicitly="reporter" in report.model_fields_set,
        )
    except ReporterRefused as exc:
        status, title = {
            "anonymous_claim": (401, "Unauthorized"),
            "other_person": (403, "Forbidden"),
            "explicit_null": (422, "Invalid reporter"),
        }[exc.kind]
        raise Problem(status, title, exc.detail) from exc
    if is_system:
        _within_scope(request, caller, reporter)
    key = None
    if idempotency_key is not None:
        key = _service(request).idempotency_key(
            caller,
            idempotency_key,
            request_digest(route, report.model_dump(mode="json")),
        )
    body = report
    if route == "harassment":
        try:
            body = for_harassment_channel(report)
        except WrongChannel as exc:
            raise Problem(422, "Wrong channel", str(exc)) from exc
    # Anonymous reports start a trace of their own: a trace context the client sent
    # could link the report to the client's other traffic. (The HTTP instrumentation
    # is off for these routes for the same reason: it records addresses and agents.)
    parent = None if reporter is None else request.headers.get("traceparent")
    try:
        with span_after("intake: take report", parent, trace.SpanKind.SERVER, route=route):
            submission = await _service(request).take_report(
                TakeReport(
                    body.report(),
                    reporter=reporter,
                    actor=caller or ANONYMOUS_ACTOR,
                    channel="api" if is_system else "web",
                    idempotency=key,
                    check_reporter=is_system,
                    traceparent=current_traceparent(),  # a new root for anonymous reports
                )
            )
    except REFUSED as exc:
        raise report_problem(exc) from exc
    headers = dict(NO_STORE)
    if submission.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(submission.body, status_code=submission.status, headers=headers)


@router.post(
    "/reports",
    status_code=202,
    summary="Submit a report",
    response_model=None,
    responses=REPORT_RESPONSES,
)
async def post_report(
    report: ReportRequest,
    request: Request,
    caller: OptionalCallerId,
    idempotency_key: IdempotencyHeader = None,
) -> JSONResponse:
    """Take a report in; 202 once it is durable.

    Who reports: without `Authorization` the report is anonymous and the answer
    carries a `receipt` and a one-time `secret` for `GET /v1/receipts/{receipt}`.
    A person reports as themselves (`reporter` may be left out or be their own id).
    A system (`system:*`) may name the person it reports for in `reporter`, who must
    be in the directory, or leave it out for an anonymous report (which gets a
    receipt and secret to pass on).

    People: each entry of `accused` and `named` is a person id (as `GET
    /v1/people/search` answers it), `{"id": ...}`, `{"name": ...}` or a plain name.
    A plain string the directory knows as a person id is that person; anything else is
    a name, resolved against the directory's names and alternative names (case,
    spacing, accents, full-width forms and word order do not matter). A name matching
    exactly one person becomes their id; one matching nobody or several people is kept
    (sealed) and the report goes to the policy's independent roles only until they
    confirm the people. Every free-text name's resolution is recorded in the event's
    `people_matches`. See docs/people-and-names.md.

    Idempotency-Key: the same key (per caller) and the same body answer the same
    status and JSON again, with `Idempotent-Replayed: true`, and make no second
    incident. The secret is shown once: for an anonymous report the repeated answer
    has the same `incident_id` and `receipt`, `secret: null`, and a `note` saying so,
    because intake keeps only the secret's argon2id hash. The same key with another
    body answers 409.

    Nothing about an anonymous caller is kept: no address, user agent or other
    header, in events, rows or logs.
    """
    return await _take("reports", report, request, caller, idempotency_key)


@router.post(
    "/channels/harassment/reports",
    status_code=202,
    summary="Submit a report through the harassment channel",
    response_model=None,
    responses={
        **REPORT_RESPONSES,
        422: problem(
            "Invalid body or header (as for POST /v1/reports), a category other than"
            " `sexual_misconduct` or `harassment`, or a `channel` other than `harassment`."
        ),
    },
)
async def post_harassment_report(
    report: ReportRequest,
    request: Request,
    caller: OptionalCallerId,
    idempotency_key: IdempotencyHeader = None,
) -> JSONResponse:
    """The harassment channel: `POST /v1/reports` for `sexual_misconduct` and `harassment`.

    Same body, answers, reporters, receipts and Idempotency-Key rules as
    `POST /v1/reports`; the report's channel is `harassment`. Other categories answer
    422 (use `POST /v1/reports`). Keys are per endpoint: a key used here and on
    `POST /v1/reports` with the same body answers 409.
    """
    return await _take("harassment", report, request, caller, idempotency_key)
