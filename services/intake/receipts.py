"""Anonymous reporters' follow-up: the receipt view and messages to the handlers.

`GET /v1/receipts/{receipt}` and `POST /v1/receipts/{receipt}/messages`, both with the
secret in `X-Receipt-Secret`. A wrong receipt and a wrong secret get the same 404 in
the same time (one argon2id verification either way). Repeated attempts on a receipt,
and repeated failures in one process, answer 429 with `Retry-After`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.domain.envelope import utc_rfc3339
from services.infra.http import problem_response
from services.intake.api import NO_STORE, problem
from services.intake.attachments import reporter_files
from services.intake.ledger_proof import ledger_proof
from services.intake.service import (
    PROCESS_FAILURES,
    PROCESS_WINDOW,
    RECEIPT_ATTEMPTS,
    RECEIPT_WINDOW,
    Busy,
    IntakeService,
    ReceiptNotFound,
    ReportClosed,
    TooManyAttempts,
)

router = APIRouter(prefix="/v1", tags=["reporters"])


class MessageOut(BaseModel):
    direction: Literal["from_reporter", "to_reporter"] = Field(
        description="`from_reporter`: the reporter wrote it; `to_reporter`: the handlers did."
    )
    text: str
    sent_at: str = Field(description="RFC 3339 UTC.")


class ReporterViewOut(BaseModel):
    """What an anonymous reporter sees of their report."""

    incident_id: str
    status: str = Field(
        description="submitted, triaged, escalated, acknowledged, investigating, resolved or"
        " closed: the one status every view shows (services/domain/status.py)."
    )
    status_label: str = Field(
        "", description="The status in words, e.g. `escalated to level 2`, `closed with outcome`."
    )
    level: int | None = Field(None, description="The escalation level asked last.")
    stalled: bool = Field(False, description="Escalation found nobody left to ask.")
    outcome: str | None = Field(
        None, description="The outcome the handler recorded, once the report is closed."
    )
    closed_at: str | None = Field(None, description="When it was closed, RFC 3339 UTC.")
    submitted_at: str | None = Field(description="RFC 3339 UTC.")
    acknowledged: bool = Field(description="Whether a handler acknowledged the report.")
    acknowledged_at: str | None = Field(description="When, RFC 3339 UTC; null if not yet.")
    acknowledgement_due_at: str | None = Field(
        description="By when the reporter must get an acknowledgement (the policy's"
        " `reporter_acknowledgement_within` after submission), if known."
    )
    feedback_due_at: str | None = Field(
        None, description="By when the reporter must get feedback (the legal 3 months)."
    )
    clocks: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The legal clocks that concern the reporter: clock"
        " (`reporter_acknowledgement`, `feedback`), due_at, met_at, breached.",
    )
    messages: list[MessageOut] = Field(
        description="Messages to and from the reporter, oldest first."
    )
    attachments: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Files she may download (hers, and those the handlers sent her):"
        " attachment_id, digest, size, media_type, name, author, audience, message_id, at."
        " `GET /v1/receipts/{receipt}/attachments/{attachment_id}` downloads one.",
    )
    ledger_proof: dict[str, Any] | None = Field(
        None,
        description="Once the report is under a signed head: the proof that the audit"
        " ledger holds it (its leaf, inclusion proof and cosigned checkpoint; check it with"
        " `incidents receipt check`, docs/witness.md). Null until then.",
    )


class MessageIn(BaseModel):
    """A follow-up message from the reporter to the handlers."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    text: str = Field(min_length=1, max_length=10_000)


class MessageAccepted(BaseModel):
    incident_id: str
    message_id: str = Field(description="Id of the `incident.reporter.message.v1` event.")
    sent_at: str = Field(description="RFC 3339 UTC.")


ReceiptPath = Annotated[
    str,
    Path(
        max_length=100,
        description="The receipt from the report's answer (`XXXXX-XXXXX-XXXXX-XXXXX`; case,"
        " hyphens and spaces do not matter).",
    ),
]
SecretHeader = Annotated[
    str,
    Header(
        alias="X-Receipt-Secret",
        min_length=1,
        max_length=200,
        description="The one-time secret from the report's answer.",
    ),
]

NOT_FOUND = problem(
    "No report matches this receipt and secret. The same answer, in the same time,"
    " whether the receipt or the secret is wrong."
)
TOO_MANY = problem(
    f"Too many attempts: more than {RECEIPT_ATTEMPTS} on this receipt within"
    f" {int(RECEIPT_WINDOW // 60)} minutes (every intake instance counts; a success"
    f" clears the count), or more than {PROCESS_FAILURES} failed attempts on this"
    f" intake process within {int(PROCESS_WINDOW)} s. Try again after `Retry-After`.",
    **{"Retry-After": "Seconds until an attempt is considered again."},
)
INVALID = problem("A missing or overlong receipt, secret header or field, or an unknown field.")
RECEIPT_ANSWERS: dict[int | str, dict[str, Any]] = {404: NOT_FOUND, 422: INVALID, 429: TOO_MANY}
"""What every receipt route answers when the receipt, its secret or a field is refused."""


def _service(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


def _not_found() -> JSONResponse:
    return problem_response(404, "Not found", "No report matches this receipt and secret.")


def _too_many(exc: TooManyAttempts) -> JSONResponse:
    answer = problem_response(
        429, "Too many attempts", "Too many attempts on this receipt; try again later."
    )
    answer.headers["Retry-After"] = str(exc.retry_after)
    return answer


async def _opened(service: IntakeService, receipt: str, secret: str | None) -> str | JSONResponse:
    """The incident the receipt and secret open, or the answer refusing them (404, 429)."""
    try:
        return await service.open_receipt(receipt, secret)
    except ReceiptNotFound:
        return _not_found()
    except TooManyAttempts as exc:
        return _too_many(exc)


@router.get(
    "/receipts/{receipt}",
    summary="Follow up an anonymous report",
    response_model=ReporterViewOut,
    responses={200: {"description": "The reporter's view of the report."}, **RECEIPT_ANSWERS},
)
async def get_receipt(
    receipt: ReceiptPath, secret: SecretHeader, request: Request
) -> ReporterViewOut | JSONResponse:
    """The reporter's view: status, whether and when it was acknowledged, by when it
    must be, and the messages to and from the reporter (handlers are not named)."""
    service = _service(request)
    incident_id = await _opened(service, receipt, secret)
    if isinstance(incident_id, JSONResponse):
        return incident_id
    view = await service.reporter_view(incident_id)
    audit_url = getattr(service.runtime.settings, "audit_url", "")
    proof = await ledger_proof(service.runtime, audit_url, incident_id)
    files = await reporter_files(service.runtime, service.keys, incident_id)
    attachments = [f.to_json() for f in files]
    return JSONResponse(
        {**view.to_json(), "attachments": attachments, "ledger_proof": proof}, headers=NO_STORE
    )


@router.post(
    "/receipts/{receipt}/messages",
    status_code=202,
    summary="Send the handlers a message about an anonymous report",
    response_model=MessageAccepted,
    responses={
        202: {"description": "The message is durably part of the incident."},
        **RECEIPT_ANSWERS,
        409: problem("The report is closed: the handlers no longer read messages on it."),
        413: problem("The body is over the size limit (INCIDENTS_MAX_BODY_BYTES)."),
        503: problem(
            "The incident kept changing while the message was added; retry.",
            **{"Retry-After": "Seconds to wait before retrying."},
        ),
    },
)
async def post_receipt_message(
    receipt: ReceiptPath, secret: SecretHeader, message: MessageIn, request: Request
) -> MessageAccepted | JSONResponse:
    """Append `incident.reporter.message.v1` (from the reporter) to the incident.

    Not idempotent: a retried request may add the message twice.
    """
    service = _service(request)
    incident_id = await _opened(service, receipt, secret)
    if isinstance(incident_id, JSONResponse):
        return incident_id
    try:
        sent = await service.message_from_reporter(incident_id, message.text)
    except ReportClosed:
        return problem_response(409, "Closed", "The report is closed: nothing can be added.")
    except Busy:
        answer = problem_response(503, "Busy", "The incident kept changing; retry.")
        answer.headers["Retry-After"] = "1"
        return answer
    return MessageAccepted(
        incident_id=sent.incident_id,
        message_id=sent.message_id,
        sent_at=utc_rfc3339(sent.sent_at),
    )
