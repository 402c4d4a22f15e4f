"""The console's file upload and download, without JavaScript: plain multipart forms.

A browser sends a file only as `multipart/form-data`; `read_upload` parses it as it
arrives (python-multipart's streaming parser) and hands the file part to the same
functions the JSON routes use (`attachments_api.handler_upload`, `reporter_upload`), so
limits, type checks, sealing, access decisions and recorded refusals are the API's. The
small fields (the CSRF token, the receipt and secret) must come before the file, as the
pages' forms put them; the CSRF checks are the console's (`services.console.web`).

Handlers: the incident page's form posts to `/ui/incidents/{id}/attachments`, its links
are `/ui/incidents/{id}/attachments/{file}` (recorded like the API's downloads).
Reporters: the receipt page posts the file with the receipt and secret to
`/ui/receipt/attachments`, and downloads by POSTing them to `/ui/receipt/download`
(never in a URL).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from services.console.i18n import N_
from services.console.web import MAX_FORM_FIELDS, ConsoleError, console_of, read_form, redirect
from services.domain.events import AttachmentAudience
from services.domain.reports import NAMED_ACTOR
from services.infra.http import Problem
from services.intake import attachments_api, handlers, my_reports, ui
from services.intake.attachments_api import reporter_download, reporter_upload

router = APIRouter(prefix="/ui", include_in_schema=False)

MAX_FIELD = 16 * 1024
"""Bytes of one small field of an upload form (the file is limited by the settings)."""

Event = tuple[str, str, bytes]
"""("field", name, value) | ("file", name, filename) | ("data", "", bytes) | ("end", "", b"")."""


class FormStream:
    """Turns a multipart body, fed piece by piece, into a list of `Event`s."""

    def __init__(self, boundary: bytes) -> None:
        self.events: list[Event] = []
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._name = ""
        self._file = False
        self._buffer = bytearray()
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    def feed(self, piece: bytes) -> list[Event]:
        self.parser.write(piece)
        events, self.events = self.events, []
        return events

    def _begin(self) -> None:
        self._headers, self._buffer, self._file = {}, bytearray(), False

    def _header_end(self) -> None:
        # raw bytes: browsers send a file's name in UTF-8 (证据.pdf), which the header
        # parser would try to encode as latin-1 if handed a str
        self._headers[self._field.decode("latin-1").lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        self._file = filename is not None
        if filename is not None:
            self.events.append(("file", self._name, filename))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._file:
            self.events.append(("data", "", bytes(data[start:end])))
        elif len(self._buffer) + end - start > MAX_FIELD:
            raise ConsoleError(413, "Too large", "A form field is too long.")
        else:
            self._buffer.extend(data[start:end])

    def _end(self) -> None:
        if self._file:
            self.events.append(("end", "", b""))
        else:
            self.events.append(("field", self._name, bytes(self._buffer)))


async def _events(request: Request, form: FormStream) -> AsyncIterator[Event]:
    try:
        async for piece in request.stream():
            for event in form.feed(piece):
                yield event
    except MultipartParseError:
        raise ConsoleError(400, "Bad form", "The form could not be read.") from None


async def read_upload(
    request: Request,
) -> tuple[dict[str, str], str | None, AsyncIterator[bytes]]:
    """The fields before the file (CSRF checked), the file's name and its bytes.

    The bytes' iterator raises ConsoleError 400 when the body ends before the file does.
    """
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise ConsoleError(403, "Forbidden", "A form of another site cannot act here.")
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ConsoleError(415, "Unsupported form", "Files are sent as multipart/form-data.")
    events = _events(request, FormStream(boundary))
    fields: dict[str, str] = {}
    name: str | None = None
    count = 0
    async for kind_, field, value in events:
        if kind_ == "field":
            # The body limit does not apply to these routes and the CSRF token is only
            # checked once the file begins: without a count, any caller could hold
            # every field of an endless form in memory (each distinct name is kept).
            count += 1
            if count > MAX_FORM_FIELDS:
                raise ConsoleError(400, "Bad form", "The form could not be read.")
            fields.setdefault(field, value.decode("utf-8", "replace"))
        elif kind_ == "file":
            name = value.decode("utf-8", "replace")
            break
    expected = request.cookies.get(console_of(request).csrf_cookie) or ""
    if not expected or not hmac.compare_digest(expected.encode(), fields.get("csrf", "").encode()):
        raise ConsoleError(
            403, "Form expired", "The form's security token did not match; reload the page."
        )
    if name is None:
        raise ConsoleError(422, "Not accepted", "Choose a file to attach.")

    async def data() -> AsyncIterator[bytes]:
        async for kind_, _, value in events:
            if kind_ == "data":
                yield value
            elif kind_ == "end":
                return
        raise ConsoleError(400, "Cut off", "The upload ended before the file did.")

    return fields, name, data()


def _page_error(exc: Problem) -> ConsoleError:
    return ConsoleError(exc.status, exc.title, exc.detail)


async def _uploaded(upload: Any) -> Any:
    try:
        return await upload
    except Problem as exc:
        raise _page_error(exc) from None
    except ClientDisconnect:
        raise ConsoleError(400, "Cut off", "The upload ended before the file did.") from None


@router.post("/incidents/{incident_id}/attachments")
async def handler_attach(incident_id: str, request: Request) -> Response:
    principal = await ui.handler(request)
    parsed = ui._incident_id(incident_id)
    fields, name, body = await read_upload(request)
    audience: AttachmentAudience = (
        "reporter" if fields.get("audience") == "reporter" else "handlers"
    )
    await _uploaded(
        attachments_api.handler_upload(request, principal, str(parsed), body, name, audience)
    )
    return redirect(request, f"/ui/incidents/{parsed}?done=attached")


@router.get("/incidents/{incident_id}/attachments/{attachment_id}")
async def handler_get(incident_id: str, attachment_id: str, request: Request) -> Response:
    principal = await ui.handler(request)
    parsed = ui._incident_id(incident_id)
    try:
        return await attachments_api.handler_download(
            request.app.state.runtime,
            request.app.state.keys,
            principal,
            str(parsed),
            attachment_id,
            policy=handlers.policy_of(request),
        )
    except Problem as exc:
        raise _page_error(exc) from None


@router.post("/receipt/attachments")
async def reporter_attach(request: Request) -> Response:
    """The reporter's file (with an optional message), then her page again."""
    fields, name, body = await read_upload(request)
    incident_id = await ui._open(request, fields)
    await _uploaded(reporter_upload(request, incident_id, body, name))
    return await ui._receipt_page(request, incident_id, fields, N_("Your file is attached."))


@router.post("/receipt/download")
async def reporter_get(request: Request) -> Response:
    fields = await read_form(request)
    incident_id = await ui._open(request, fields)
    try:
        return await reporter_download(
            request.app.state.runtime,
            request.app.state.keys,
            incident_id,
            fields.get("attachment_id", "")[:100],
        )
    except Problem as exc:
        raise _page_error(exc) from None


@router.post("/my/reports/{incident_id}/attachments")
async def my_attach(incident_id: str, request: Request) -> Response:
    """A named reporter's file for one of her reports, then the report again."""
    principal = await ui.handler(request)
    parsed = str(ui._incident_id(incident_id))
    _, name, body = await read_upload(request)
    try:
        await my_reports.hers(request.app.state.intake, principal.id, parsed)
    except Problem as exc:
        raise _page_error(exc) from None
    await _uploaded(reporter_upload(request, parsed, body, name, actor=NAMED_ACTOR))
    return redirect(request, f"/ui/my/reports/{parsed}?done=attached")


@router.get("/my/reports/{incident_id}/attachments/{attachment_id}")
async def my_get(incident_id: str, attachment_id: str, request: Request) -> Response:
    principal = await ui.handler(request)
    parsed = str(ui._incident_id(incident_id))
    try:
        await my_reports.hers(request.app.state.intake, principal.id, parsed)
        return await reporter_download(
            request.app.state.runtime,
            request.app.state.keys,
            parsed,
            attachment_id[:100],
            actor=NAMED_ACTOR,
        )
    except Problem as exc:
        raise _page_error(exc) from None
