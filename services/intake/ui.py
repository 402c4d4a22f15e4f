"""The handlers' and reporters' console pages under `/ui/`.

Each page calls the function its JSON route is, with the principal the login cookie
resolves to through `optional_principal` (the API's own dependency): the list is
`handlers.my_incidents`, the report is `handlers.view_incident` (which commits
`incident.viewed.v1` before it builds anything to show), and acknowledge, status,
comments and messages are `handlers.acknowledge`, `change_status`, `comment` and
`message_reporter`. So access decisions, the 404 an excluded principal gets, the
recorded refusals and any decryption of content are exactly the API's.

Reporters: a report form (`api.post_report`, anonymous unless signed in; the accused
and named are picked with the people search, a search step that works without
JavaScript, or written as names), and the
receipt page, where the receipt and the secret are POSTed (never in a URL) to
`open_receipt` and `reporter_view`, as `GET /v1/receipts/{receipt}` does. These routes
are untraced (see `app.py`), and nothing about the reporter is stored.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from services.console.i18n import N_
from services.console.web import (
    ConsoleError,
    LoginNeeded,
    own_navigation,
    read_form,
    read_form_lists,
    redirect,
    render,
    session_authorization,
    signed_in_as,
)
from services.domain.reports import PERSON_ID_PATTERN, ReportRequest
from services.infra.auth import Principal
from services.infra.http import Problem
from services.intake import handlers
from services.intake.api import post_report
from services.intake.attachments import reporter_files
from services.intake.people import search_client
from services.intake.principals import optional_principal
from services.intake.service import (
    BadSearch,
    Busy,
    IntakeService,
    PersonFound,
    ReceiptNotFound,
    ReportClosed,
    TooManyAttempts,
)

router = APIRouter(prefix="/ui", include_in_schema=False)

DONE = {
    "acknowledged": N_("Your acknowledgement is recorded."),
    "already": N_("You had already acknowledged this incident."),
    "status": N_("The status change is recorded."),
    "comment": N_("Your comment is recorded."),
    "message": N_("Your message to the reporter is recorded."),
    "attached": N_("The file is attached (sealed; listed by its digest)."),
}


async def signed_in(request: Request) -> Principal | None:
    """The principal of the login cookie, None without one (an invalid one: log in again)."""
    authorization = session_authorization(request)
    if authorization is None:
        return None
    try:
        principal = await optional_principal(request, authorization)
    except Problem:
        raise LoginNeeded from None
    if principal is not None:
        signed_in_as(request, principal.id)
    return principal


async def handler(request: Request) -> Principal:
    principal = await signed_in(request)
    if principal is None:
        raise LoginNeeded
    return principal


def _incident_id(incident_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(incident_id)
    except ValueError:
        raise ConsoleError(404, "Not found", "No such incident.") from None


def _page_error(exc: Problem) -> ConsoleError:
    return ConsoleError(exc.status, exc.title, exc.detail)


def _invalid(exc: ValidationError) -> ConsoleError:
    detail = "; ".join(
        str(e.get("msg", "invalid")).removeprefix("Value error, ") for e in exc.errors()
    )
    return ConsoleError(422, "Not accepted", detail)


@router.get("/")
async def home(request: Request) -> Response:
    """My incidents when signed in; otherwise the ways in."""
    principal = await signed_in(request)
    if principal is None:
        return render(request, "intake_home.html", principal=None, incidents=None)
    listed = await handlers.my_incidents(request, principal)
    return render(
        request, "intake_home.html", principal=principal.id, incidents=listed["incidents"]
    )


@router.get("/incidents/{incident_id}")
async def incident(incident_id: str, request: Request, done: str | None = None) -> Response:
    """The report, shown only after `view_incident` recorded the view, on the person's
    own top-level navigation only (`own_navigation`). Any other GET (a request another
    page made, a client without fetch metadata) records nothing, not even a refusal,
    and gets a page with an explicit open action (`open_incident`)."""
    principal = await handler(request)
    if not own_navigation(request):
        return render(
            request,
            "intake_open.html",
            principal=principal.id,
            incident_id=str(_incident_id(incident_id)),
        )
    return await _shown(incident_id, request, principal, done)


@router.post("/incidents/{incident_id}/open")
async def open_incident(incident_id: str, request: Request) -> Response:
    """The explicit open action: the report, after its view is recorded."""
    principal = await handler(request)
    await read_form(request)
    return await _shown(incident_id, request, principal, None)


async def view_page(
    request: Request,
    principal: Principal,
    template: str,
    view: Awaitable[dict[str, Any]],
    **values: Any,
) -> Response:
    """A page showing one view (a handler's incident, a reporter's report): a refusal
    of the API's (`Problem`) becomes the console's error page with the same status."""
    try:
        shown = await view
    except Problem as exc:
        raise _page_error(exc) from None
    return render(request, template, principal=principal.id, view=shown, **values)


async def _shown(
    incident_id: str, request: Request, principal: Principal, done: str | None
) -> Response:
    view = handlers.view_incident(_incident_id(incident_id), request, principal)
    return await view_page(
        request, principal, "intake_incident.html", view, done=DONE.get(done or "")
    )


@router.post("/incidents/{incident_id}/acknowledge")
async def acknowledge(incident_id: str, request: Request) -> Response:
    principal = await handler(request)
    await read_form(request)
    try:
        answer = await handlers.acknowledge(_incident_id(incident_id), request, principal)
    except Problem as exc:
        raise _page_error(exc) from None
    new = json.loads(bytes(answer.body))["new"]
    return redirect(
        request, f"/ui/incidents/{incident_id}?done={'acknowledged' if new else 'already'}"
    )


@router.post("/incidents/{incident_id}/status")
async def status(incident_id: str, request: Request) -> Response:
    principal = await handler(request)
    fields = await read_form(request)
    try:
        body = handlers.StatusChangeBody(
            status=fields.get("status", ""), outcome=fields.get("outcome") or None
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    try:
        await handlers.change_status(_incident_id(incident_id), body, request, principal)
    except Problem as exc:
        raise _page_error(exc) from None
    return redirect(request, f"/ui/incidents/{incident_id}?done=status")


async def _text_action(incident_id: str, request: Request, kind: str) -> Response:
    principal = await handler(request)
    fields = await read_form(request)
    try:
        body = handlers.TextBody(text=fields.get("text", ""))
    except ValidationError as exc:
        raise _invalid(exc) from None
    act = handlers.comment if kind == "comment" else handlers.message_reporter
    try:
        await act(_incident_id(incident_id), body, request, principal)
    except Problem as exc:
        raise _page_error(exc) from None
    return redirect(request, f"/ui/incidents/{incident_id}?done={kind}")


@router.post("/incidents/{incident_id}/comments")
async def comment(incident_id: str, request: Request) -> Response:
    return await _text_action(incident_id, request, "comment")


@router.post("/incidents/{incident_id}/messages")
async def message(incident_id: str, request: Request) -> Response:
    return await _text_action(incident_id, request, "message")


# Reporters ---------------------------------------------------------------------------


def _service(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


PEOPLE_FIELDS = ("accused", "named")
MAX_PICKED = 50


def _report_page(
    request: Request,
    principal: Principal | None,
    *,
    status: int = 200,
    values: dict[str, str] | None = None,
    picked: dict[str, list[PersonFound]] | None = None,
    found: dict[str, list[PersonFound]] | None = None,
    searched: bool = False,
    error: str | None = None,
) -> Response:
    return render(
        request,
        "intake_report.html",
        status=status,
        principal=principal.id if principal else None,
        categories=sorted(_service(request).policy.categories),
        key=(values or {}).get("key") or str(uuid.uuid4()),
        values=values or {},
        picked=picked or {name: [] for name in PEOPLE_FIELDS},
        found=found or {name: [] for name in PEOPLE_FIELDS},
        searched=searched,
        error=error,
    )


@router.get("/report")
async def report_form(request: Request) -> Response:
    principal = await signed_in(request)
    return _report_page(request, principal)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.replace("\n", ",").split(",") if n.strip()]


def _single(lists: dict[str, list[str]]) -> dict[str, str]:
    return {name: values[0] for name, values in lists.items() if name not in _PICKS}


_PICKS = {f"{name}_id" for name in PEOPLE_FIELDS}


@router.post("/report")
async def report(request: Request) -> Response:
    """Submit through `post_report`; an anonymous reporter sees the receipt and secret once.

    The people search without JavaScript: the form's "Search" button (`step=search`)
    posts the draft here, and the page comes back with the draft as it was, the people
    already picked (checked) and the people found (to check). The draft never goes into
    a URL (history, proxies). Picked people are sent as `{"id": ...}`, the free-text
    fields as names.
    """
    principal = await signed_in(request)
    lists = await read_form_lists(request)
    fields = _single(lists)
    picks = {name: lists.get(f"{name}_id", [])[:MAX_PICKED] for name in PEOPLE_FIELDS}
    if fields.get("step") == "search":
        return await _search_step(request, principal, fields, picks)
    body: dict[str, Any] = {
        name: fields.get(name, "").strip()
        for name in ("category", "summary", "description", "location", "unit")
    }
    body = {k: v for k, v in body.items() if v or k in ("category", "summary", "description")}
    for name in PEOPLE_FIELDS:
        body[name] = [{"id": i} for i in dict.fromkeys(picks[name])] + _names(fields.get(name, ""))
    caller = principal.id if principal else None
    try:
        parsed = ReportRequest.model_validate(body)
        answer = await post_report(parsed, request, caller, fields.get("key") or None)
    except (ValidationError, Problem) as exc:
        error = _invalid(exc).detail if isinstance(exc, ValidationError) else exc.detail
        picked = await _picked(_service(request), picks)
        return _report_page(
            request, principal, status=422, values=fields, picked=picked, error=error
        )
    submitted = json.loads(bytes(answer.body))
    return render(
        request,
        "intake_submitted.html",
        principal=caller,
        submitted=submitted,
    )


async def _picked(
    service: IntakeService, picks: dict[str, list[str]]
) -> dict[str, list[PersonFound]]:
    """What the search showed of the people picked, per field. A value no person id can
    be (a form someone altered, a NUL that PostgreSQL cannot hold) names nobody and is
    not looked up; the report itself refuses it (422)."""
    return {
        name: await service.people_picked(
            [i for i in picks[name] if re.fullmatch(PERSON_ID_PATTERN, i)]
        )
        for name in PEOPLE_FIELDS
    }


async def _search_step(
    request: Request,
    principal: Principal | None,
    fields: dict[str, str],
    picks: dict[str, list[str]],
) -> Response:
    """The report form again with the people found for each field's search words."""
    service = _service(request)
    client = search_client(request, principal.id if principal else None)
    picked = await _picked(service, picks)
    found: dict[str, list[PersonFound]] = {name: [] for name in PEOPLE_FIELDS}
    error = None
    try:
        for name in PEOPLE_FIELDS:
            query = fields.get(f"{name}_q", "").strip()
            if query:
                chosen = {p.id for p in picked[name]}
                hits = await service.search_people(query, client)
                found[name] = [p for p in hits if p.id not in chosen]
    except BadSearch as exc:
        error = f"Search: {exc}."
    except TooManyAttempts as exc:
        error = f"Too many searches; try again in {exc.retry_after} seconds."
    return _report_page(
        request,
        principal,
        values=fields,
        picked=picked,
        found=found,
        searched=error is None,
        error=error,
    )


@router.get("/receipt")
async def receipt_form(request: Request) -> Response:
    return render(request, "intake_receipt.html", view=None, error=None, receipt="", secret="")


async def _open(request: Request, fields: dict[str, str]) -> str:
    try:
        return await _service(request).open_receipt(
            fields.get("receipt", "")[:100], fields.get("secret", "")[:200] or None
        )
    except ReceiptNotFound:
        raise ConsoleError(404, "Not found", "No report matches this receipt and secret.") from None
    except TooManyAttempts as exc:
        raise ConsoleError(
            429, "Too many attempts", f"Try again in {exc.retry_after} seconds."
        ) from None


async def _receipt_page(
    request: Request, incident_id: str, fields: dict[str, str], note: str | None
) -> Response:
    service = _service(request)
    view = (await service.reporter_view(incident_id)).to_json()
    files = await reporter_files(service.runtime, service.keys, incident_id)
    return render(
        request,
        "intake_receipt.html",
        view=view,
        files=files,
        error=None,
        note=note,
        receipt=fields.get("receipt", ""),
        secret=fields.get("secret", ""),
    )


@router.post("/receipt")
async def receipt(request: Request) -> Response:
    """The reporter's view: status, acknowledged-at, messages (as the receipts API)."""
    fields = await read_form(request)
    return await _receipt_page(request, await _open(request, fields), fields, None)


@router.post("/receipt/messages")
async def receipt_message(request: Request) -> Response:
    """The reporter's reply (`message_from_reporter`), then the view again."""
    fields = await read_form(request)
    text = fields.get("text", "").strip()
    if not text or len(text) > 10_000:
        raise ConsoleError(422, "Not accepted", "A message is 1 to 10,000 characters.")
    incident_id = await _open(request, fields)
    try:
        await _service(request).message_from_reporter(incident_id, text)
    except ReportClosed:
        raise ConsoleError(409, "Closed", "The report is closed: nothing can be added.") from None
    except Busy:
        raise ConsoleError(503, "Busy", "The report kept changing; send it again.") from None
    return await _receipt_page(request, incident_id, fields, N_("Your message is sent."))
