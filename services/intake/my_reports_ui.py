"""A named reporter's console pages: her reports (`/ui/my`), one report, and her reply.

Each page calls what its JSON route calls (`services.intake.my_reports`), with the
principal of the login cookie: the same 404 for a report that is not hers, her view
recorded (`incident.viewed.v1`, principal `reporter`) before the page is built.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from services.console.i18n import N_
from services.console.web import ConsoleError, read_form, redirect, render
from services.infra.http import Problem
from services.intake import my_reports, ui
from services.intake.receipts import MessageIn
from services.intake.service import IntakeService

router = APIRouter(prefix="/ui/my", include_in_schema=False)
DONE = {"message": N_("Your message is sent."), "attached": N_("Your file is attached.")}


def _service(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


@router.get("")
async def reports(request: Request) -> Response:
    """Her reports, newest first (status only: nothing is recorded)."""
    principal = await ui.handler(request)
    listed = await my_reports.list_reports(_service(request), principal.id)
    return render(request, "intake_my_reports.html", principal=principal.id, reports=listed)


@router.get("/reports/{incident_id}")
async def report(incident_id: str, request: Request, done: str | None = None) -> Response:
    """One of her reports, after her view is recorded."""
    principal = await ui.handler(request)
    view = my_reports.show_report(_service(request), principal.id, incident_id[:100])
    return await ui.view_page(
        request, principal, "intake_my_report.html", view, note=DONE.get(done or "")
    )


@router.post("/reports/{incident_id}/messages")
async def message(incident_id: str, request: Request) -> Response:
    """Her message to the handlers (`my_reports.my_message`), then the report again."""
    principal = await ui.handler(request)
    fields = await read_form(request)
    try:
        body = MessageIn(text=fields.get("text", ""))
    except ValidationError:
        raise ConsoleError(422, "Not accepted", "A message is 1 to 10,000 characters.") from None
    try:
        await my_reports.my_message(incident_id[:100], body, request, principal)
    except Problem as exc:
        raise ConsoleError(exc.status, exc.title, exc.detail) from None
    return redirect(request, f"/ui/my/reports/{incident_id[:100]}?done=message")
