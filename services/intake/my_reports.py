"""Named reporters' follow-up: her reports, listed and read when she is signed in.

`GET /v1/my/reports`, `GET /v1/my/reports/{incident_id}` and
`POST /v1/my/reports/{incident_id}/messages` give a person who reported under her own
name what the receipt gives an anonymous reporter (docs/reporters.md): status, level and
the legal clocks in the words every view uses (services/domain/status.py), messages
both ways, the outcome once closed, her own report text, the ledger's proof of her
submission, and her files (services.intake.attachments_api, docs/attachments.md). Never
who handles it, never the handlers' comments, never the report's people beyond what she wrote.

Which reports are hers: `reporter_reports`, written with the submission, lists them
under a keyed pseudonym of her person id (the table names nobody); reading one also
checks the submission's own sealed `reporter_identity` against the caller. Anyone
else, and any id that is not a report of hers, gets the same 404.

Her reading one is recorded before anything is shown, as a handler's is:
`incident.viewed.v1` with principal `reporter` and actor `reporter:named` (never her
id, which the events do not carry in clear). The list shows no content and records
nothing, like a handler's list.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from services.domain.envelope import Envelope, utc_rfc3339
from services.domain.events import Viewed
from services.domain.incident import fold
from services.domain.reports import NAMED_ACTOR
from services.infra import eventstore
from services.infra.http import Problem, problem_responses
from services.intake.actions import incident_event
from services.intake.attachments import reporter_files
from services.intake.ledger_proof import ledger_proof
from services.intake.principals import RequiredPrincipal
from services.intake.progress import standings
from services.intake.receipts import MessageAccepted, MessageIn, ReporterViewOut
from services.intake.service import (
    Busy,
    IntakeService,
    ReceiptNotFound,
    ReportClosed,
    fresh_traceparent,
)

router = APIRouter(prefix="/v1/my", tags=["reporters"])
MAX_LISTED = 200
REPORTER = "reporter"
"""The principal a reporter's own view is recorded as (never her id)."""

ReportId = Annotated[str, Path(min_length=1, max_length=100, description="The incident id.")]
UNAUTHORIZED = (401, "No bearer token, or one that is not valid.")
NOT_FOUND = (
    404,
    "No report of the caller has this id (another person's report, or none): the same"
    " answer either way.",
)
INVALID = (422, "The request is not valid (path or body).")
BUSY = (503, "The report changed too often meanwhile; retry.")
CLOSED = (409, "The report is closed: nothing can be added to it.")


class MyReport(BaseModel):
    incident_id: str
    category: str | None
    submitted_at: str | None
    status: str = Field(description="services/domain/status.py: submitted ... closed.")
    status_label: str = Field(description="The status in the words every view uses.")
    level: int | None
    stalled: bool
    closed_at: str | None


class MyReports(BaseModel):
    reports: list[MyReport]


class MyReportView(ReporterViewOut):
    """Her view of one report: the receipt's view and her report text."""

    category: str | None = None
    summary: str | None = None
    description: str | None = None


def _service(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


def _not_found() -> Problem:
    return Problem(404, "Not found", "No such report.")


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else utc_rfc3339(moment)


async def list_reports(service: IntakeService, person_id: str) -> list[dict[str, Any]]:
    """Her reports, newest first: status and times only (no content, nothing recorded)."""
    async with service.runtime.db.acquire() as conn:
        ids = [
            r["incident_id"]
            for r in await conn.fetch(
                "SELECT incident_id FROM reporter_reports WHERE owner = $1",
                service.reporter_tag(person_id),
            )
        ]
        found = await standings(conn, ids)
    listed = []
    for incident_id in ids:
        own, progress = found[incident_id]
        state = fold(incident_id, own)
        if state.submitted_at is None:
            continue
        listed.append(
            {
                "incident_id": incident_id,
                "category": state.category,
                "submitted_at": _when(state.submitted_at),
                "status": progress.status,
                "status_label": progress.label,
                "level": progress.level,
                "stalled": progress.stalled,
                "closed_at": _when(progress.closed_at),
            }
        )
    listed.sort(key=lambda r: r["submitted_at"] or "", reverse=True)
    return listed[:MAX_LISTED]


async def _hers(service: IntakeService, person_id: str, incident_id: str) -> list[Envelope]:
    """The report's events if it is hers (listed under her tag, and its sealed identity
    names her); else the refusal, the same for every other case."""
    if "\x00" in incident_id:  # no report's id, and PostgreSQL's text cannot hold it
        raise _not_found()
    async with service.runtime.db.acquire() as conn:
        listed = await conn.fetchval(
            "SELECT 1 FROM reporter_reports WHERE owner = $1 AND incident_id = $2",
            service.reporter_tag(person_id),
            incident_id,
        )
        if not listed:
            raise _not_found()
        events = [s.envelope for s in await eventstore.load(conn, incident_id)]
        if await service.keys.reporter_of(conn, incident_id, events) != person_id:
            raise _not_found()  # erased (nobody can tell whose it was), or not hers
    return events


async def hers(service: IntakeService, person_id: str, incident_id: str) -> None:
    """Nothing when the report is hers; else the 404 every other case gets (the file
    routes, services.intake.attachments_api, ask this)."""
    await _hers(service, person_id, incident_id)


async def show_report(service: IntakeService, person_id: str, incident_id: str) -> dict[str, Any]:
    """Record her view (`incident.viewed.v1`, principal `reporter`), then build it."""
    events = await _hers(service, person_id, incident_id)
    digest = fold(incident_id, events).report_digest or ""
    first = events[0]
    data = Viewed(principal=REPORTER, report_digest=digest)
    viewed = incident_event(
        service.runtime, incident_id, events, data, NAMED_ACTOR, traceparent=fresh_traceparent()
    )
    await service.append_event(incident_id, viewed)
    # only now, after the view committed, is anything opened
    view = (await service.reporter_view(incident_id)).to_json()
    async with service.runtime.db.acquire() as conn:
        (opened,) = await service.keys.open_events(conn, incident_id, [first])
    files = await reporter_files(service.runtime, service.keys, incident_id)
    return {
        **view,
        "attachments": [f.to_json() for f in files],
        "category": opened.data.get("category"),
        "summary": opened.data.get("summary"),
        "description": opened.data.get("description"),
    }


@router.get(
    "/reports",
    summary="My reports: those the caller made under her own name",
    response_model=MyReports,
    responses=problem_responses(UNAUTHORIZED),
)
async def my_reports(request: Request, caller: RequiredPrincipal) -> dict[str, Any]:
    """Her reports, newest first, with their status in the words every view uses."""
    return {"reports": await list_reports(_service(request), caller.id)}


@router.get(
    "/reports/{incident_id}",
    summary="Follow up one of my reports (recorded as incident.viewed.v1 first)",
    response_model=MyReportView,
    responses=problem_responses(UNAUTHORIZED, NOT_FOUND, INVALID, BUSY),
)
async def my_report(
    incident_id: ReportId, request: Request, caller: RequiredPrincipal
) -> dict[str, Any]:
    """What the receipt shows an anonymous reporter, plus her report text."""
    service = _service(request)
    try:
        shown = await show_report(service, caller.id, incident_id)
    except Busy:
        raise Problem(503, "Busy", "The report kept changing; retry.") from None
    audit_url = getattr(service.runtime.settings, "audit_url", "")
    proof = await ledger_proof(service.runtime, audit_url, incident_id)
    return {**shown, "ledger_proof": proof}


@router.post(
    "/reports/{incident_id}/messages",
    status_code=202,
    summary="Write to the handlers of one of my reports",
    response_model=MessageAccepted,
    responses=problem_responses(UNAUTHORIZED, NOT_FOUND, CLOSED, INVALID, BUSY),
)
async def my_message(
    incident_id: ReportId, message: MessageIn, request: Request, caller: RequiredPrincipal
) -> dict[str, Any]:
    """`incident.reporter.message.v1` from the reporter (actor `reporter:named`)."""
    service = _service(request)
    if fold(incident_id, await _hers(service, caller.id, incident_id)).status == "closed":
        raise Problem(409, "Closed", "The report is closed: the handlers no longer read here.")
    try:
        sent = await service.message_from_reporter(incident_id, message.text, actor=NAMED_ACTOR)
    except ReceiptNotFound:  # erased meanwhile
        raise _not_found() from None
    except ReportClosed:  # closed meanwhile
        raise Problem(
            409, "Closed", "The report is closed: the handlers no longer read here."
        ) from None
    except Busy:
        raise Problem(503, "Busy", "The report kept changing; retry.") from None
    return {
        "incident_id": sent.incident_id,
        "message_id": sent.message_id,
        "sent_at": utc_rfc3339(sent.sent_at),
    }
