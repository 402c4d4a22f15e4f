"""`POST /v1/events`: the inbound contract over the CloudEvents HTTP binding.

A registered system (`services.infra.systems`, `http: true`), authenticated by its bearer
token as `system:<id>`, sends one `incident.report.inbound.v1` event in structured mode
(`Content-Type: application/cloudevents+json`, the body is the event) or binary mode
(`ce-*` headers, `Content-Type: application/json`, the body is `data`). It is taken by
the same use case and validation model as `POST /v1/reports` and as the Kafka consumer
(`IntakeService.take_inbound`); the answer carries the incident id (docs/inbound.md).
Thin: decode, call the use case, answer.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.domain.inbound import InboundRefused, decode
from services.infra.http import Problem
from services.infra.systems import Systems
from services.intake.api import NO_STORE, REFUSED, problem, report_problem
from services.intake.principals import OptionalCallerId
from services.intake.service import IntakeService

router = APIRouter(prefix="/v1", tags=["inbound"])


class EventAnswer(BaseModel):
    """The answer to an accepted inbound event."""

    incident_id: str = Field(
        description="The incident: UUIDv5 of `<system id>/<event id>` (docs/inbound.md)."
    )
    event_id: str = Field(description="The event id that was sent.")
    receipt: str | None = Field(
        description="Anonymous reports only (no `reporter`): the receipt to pass on."
    )
    secret: str | None = Field(
        description="Anonymous reports only: the one-time secret that goes with the receipt"
        " (null when this answer repeats an earlier one)."
    )


@router.post(
    "/events",
    status_code=202,
    summary="Send an inbound report as a CloudEvent (HTTP binding)",
    response_model=None,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/cloudevents+json": {
                    "schema": {
                        "type": "object",
                        "description": "Structured mode: an incident.report.inbound.v1"
                        " CloudEvent (schemas/incident.report.inbound.v1.json).",
                    }
                },
                "application/json": {
                    "schema": {
                        "type": "object",
                        "description": "Binary mode: the event's data (POST /v1/reports'"
                        " body), its attributes in ce- headers.",
                    }
                },
            },
        }
    },
    responses={
        202: {"model": EventAnswer, "description": "Accepted (or a resend answered again)."},
        401: problem("No or an invalid bearer token."),
        403: problem("Not a registered system on HTTP, or out of its scope."),
        409: problem("The event id was sent before with other data."),
        413: problem("The body is over the size limit."),
        415: problem("Neither structured nor binary mode (content-type, ce- headers)."),
        422: problem("Not a valid incident.report.inbound.v1 event or report."),
    },
)
async def post_event(request: Request, caller: OptionalCallerId) -> JSONResponse:
    """Take one `incident.report.inbound.v1` CloudEvent from a registered system.

    Structured mode: `Content-Type: application/cloudevents+json` and the event as body.
    Binary mode: `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-time` (and
    optional `ce-subject`, extensions) headers, `Content-Type: application/json` and the
    report as body. The report is `POST /v1/reports`' body; `reporter` names the person
    the system reports for (scope `report_for_person`), absent for an anonymous report
    (scope `report`). 202 with the incident id; a resend of the same event id and data
    answers the same again with `Idempotent-Replayed: true`.
    """
    if caller is None:
        raise Problem(401, "Unauthorized", "A registered system's bearer token is required.")
    systems: Systems = request.app.state.systems
    system = systems.for_principal(caller)
    if system is None:
        raise Problem(403, "Forbidden", "Only a registered system may send events here.")
    service: IntakeService = request.app.state.intake
    try:
        inbound = decode(request.headers.items(), await request.body(), prefix="ce-")
        if "signature" in inbound.event and systems.signer_of(inbound.event) != system:
            raise InboundRefused("unauthenticated", "signed by another system")
        submission = await service.take_inbound(
            inbound.event, system, channel="api", issue_receipt=True
        )
    except REFUSED as exc:
        raise report_problem(exc, event=True) from exc
    body = {**submission.body, "event_id": inbound.id}
    body.pop("note", None)
    headers = dict(NO_STORE)
    if submission.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=submission.status, headers=headers)
