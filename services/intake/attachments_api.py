"""Evidence files over HTTP: upload and download for handlers and anonymous reporters.

Uploads are the raw file as the request body (any `Content-Type`; the type is found in
the content), its name in `X-Filename` (percent-encoded UTF-8, optional), streamed into
`attachments.store` chunk by chunk: the service's body limit does not apply to these
routes (`services.infra.http.BodyLimit`), `INCIDENTS_ATTACHMENT_MAX_BYTES` does, while
the body arrives. The console sends the same files as a multipart form
(`services.intake.attachments_ui`) into the same functions.

Handlers: `POST /v1/incidents/{id}/attachments` (the `attach` action: routed handlers)
and `GET /v1/incidents/{id}/attachments/{attachment}` (the `download` action: routed
handlers, and standing readers the conflict rules do not exclude), both decided by
`actions.act` like every handler action. A download records
`incident.attachment.downloaded.v1` and commits before the first byte is sent. Any
refusal, and an unknown file, answer the same 404 `No such attachment.` (refusals are
recorded as `incident.access.denied.v1`).

Reporters: `POST /v1/receipts/{receipt}/attachments` and `GET
/v1/receipts/{receipt}/attachments/{attachment}` with `X-Receipt-Secret`; she may
download the files she added and those a handler sent her (`audience=reporter`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote, unquote

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.domain.attachments import (
    Attachment,
    attachments_of,
    find,
    visible_to_reporter,
)
from services.domain.events import AttachmentAudience, AttachmentDownloaded
from services.domain.policy import Policy
from services.domain.reports import NAMED_ACTOR
from services.infra import eventstore
from services.infra.auth import Principal
from services.infra.crypto import CryptoError, IncidentKey
from services.infra.http import Problem, problem_responses
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent
from services.intake import actions, handlers, my_reports
from services.intake.actions import ActionError, Context, Erased, NotNow, incident_event
from services.intake.attachments import (
    Limits,
    NoSuchAttachment,
    TooLarge,
    Upload,
    read,
    store,
)
from services.intake.principals import RequiredPrincipal
from services.intake.receipts import ReceiptPath, SecretHeader
from services.intake.service import (
    ANONYMOUS_ACTOR,
    IntakeService,
    ReceiptNotFound,
    TooManyAttempts,
    fresh_traceparent,
)

router = APIRouter(prefix="/v1", tags=["attachments"])
REPORTER = "reporter"
ATTEMPTS = 10

FilenameHeader = Annotated[
    str | None,
    Header(
        alias="X-Filename",
        max_length=1000,
        description="The file's name, percent-encoded UTF-8 (reduced to a base name, sealed).",
    ),
]
AttachmentId = Annotated[uuid.UUID, Path(description="The attachment id (a UUID).")]
MessageId = Annotated[
    uuid.UUID | None,
    Query(description="The id of a message event of the incident the file goes with."),
]
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The file's bytes (its type is found in the content).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
UPLOAD_ANSWERS = problem_responses(
    (401, "No bearer token, or one that is not valid."),
    (403, "Read-only access: a reader may not attach files."),
    (404, "No such incident, or the caller may not know of it (recorded)."),
    (409, "The incident is closed or erased: nothing can be added."),
    (413, "The file is over INCIDENTS_ATTACHMENT_MAX_BYTES, or the incident's files over"),
    (415, "The content is not of an accepted type (PDF, PNG, JPEG, GIF, WebP, text, ...)."),
    (422, "The file is empty, or a parameter is not valid."),
    (503, "The incident kept changing; retry."),
)
DOWNLOAD_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file (always `Content-Disposition: attachment`).",
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    },
    **problem_responses(
        (401, "No bearer token, or one that is not valid."),
        (404, "No such attachment, or the caller may not have it: the same answer (recorded)."),
        (409, "The incident was erased: its files cannot be read any more."),
        (422, "A path parameter or header is not valid."),
        (503, "The incident kept changing; retry."),
    ),
}


def reporter_upload_answers(*own: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """A reporter's upload route's answers: those of her way in (`own`), and the rest."""
    common = [
        (409, "The report is closed or erased: nothing can be added."),
        (413, "The file is over INCIDENTS_ATTACHMENT_MAX_BYTES, or the report's files over"),
        (415, "The content is not of an accepted type."),
        (422, "The file is empty, or a header or parameter is not valid."),
        (503, "The report kept changing; retry."),
    ]
    return {
        201: {"description": "Stored: `incident.attachment.added.v1`."},
        **problem_responses(*sorted([*own, *common])),
    }


UPLOAD_ROUTE: dict[str, Any] = {"status_code": 201, "openapi_extra": UPLOAD_BODY}
"""What every upload route takes and answers first (the raw file as the body; 201)."""
DOWNLOAD_ROUTE: dict[str, Any] = {
    "response_class": StreamingResponse,
    "responses": DOWNLOAD_ANSWERS,
}
"""What every download route answers (a streamed file, or a problem)."""


def limits_of(request: Request) -> Limits:
    return Limits.of(request.app.state.runtime.settings)


def filename(header: str | None) -> str | None:
    return None if header is None else unquote(header, errors="replace")


def _message(message_id: uuid.UUID | None) -> str | None:
    return None if message_id is None else str(message_id)


def check_length(request: Request, limit: int) -> None:
    """413 at once when the declared length is over the limit (nothing is read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise handlers.problem(TooLarge(f"A file is at most {limit} bytes."))


def _answer(incident_id: str, data: Any) -> JSONResponse:
    return JSONResponse(
        {
            "incident_id": incident_id,
            "attachment_id": data.attachment_id,
            "digest": data.digest,
            "size": data.size,
            "media_type": data.media_type,
        },
        status_code=201,
    )


# Handlers ---------------------------------------------------------------------------


async def handler_upload(
    request: Request,
    caller: Principal,
    incident_id: str,
    body: AsyncIterator[bytes],
    name: str | None,
    audience: AttachmentAudience = "handlers",
    message_id: str | None = None,
) -> Any:
    """Decide `attach` (recorded refusals), then store the file; its event's data."""

    def may_attach(context: Context) -> tuple[list[Any], IncidentKey]:
        if context.state.status == "closed":
            raise NotNow("The incident is closed: nothing can be added.", current_status="closed")
        if context.key is None:
            raise Erased("This incident's content was erased: nothing can be added.")
        return [], context.key

    key = await handlers.act(
        request.app.state.runtime,
        request.app.state.keys,
        caller,
        incident_id,
        "attach",
        may_attach,
        policy=handlers.policy_of(request),
    )
    upload = Upload(
        incident_id, caller.id, caller.id, name, audience, message_id, current_traceparent()
    )
    try:
        return await store(request.app.state.runtime, key, upload, body, limits_of(request))
    except ActionError as error:
        raise handlers.problem(error) from None


async def handler_download(
    runtime: Runtime,
    keys: KeyStore,
    caller: Principal,
    incident_id: str,
    attachment_id: str,
    *,
    policy: Policy,
) -> StreamingResponse:
    """Record the download (committed), then stream the file; 404 for any refusal."""

    def downloaded(context: Context) -> tuple[list[Any], tuple[IncidentKey, Attachment]]:
        found = find(attachments_of(context.events), attachment_id)
        if found is None:
            raise NoSuchAttachment()
        if context.key is None:
            raise Erased("This incident's content was erased: its files cannot be read.")
        event = context.event(
            AttachmentDownloaded(principal=caller.id, attachment_id=attachment_id)
        )
        return [event], (context.key, found)

    try:
        key, found = await actions.act(
            runtime, keys, caller, incident_id, "download", downloaded, policy=policy
        )
    except actions.NotFound:  # a refusal looks exactly like an unknown file
        raise handlers.problem(NoSuchAttachment()) from None
    except ActionError as error:
        raise handlers.problem(error) from None
    return await _stream(runtime, key, found)


async def _stream(runtime: Runtime, key: IncidentKey, found: Attachment) -> StreamingResponse:
    """The file as an attachment download; the first chunk is opened before answering."""
    name = _opened_name(key, found)
    chunks = read(runtime, key, found.attachment_id)
    try:
        first = await anext(chunks)
    except (NoSuchAttachment, CryptoError):
        raise handlers.problem(
            Erased("This file cannot be read any more (the incident was erased).")
        ) from None

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(
        body(),
        media_type=found.media_type,
        headers={
            "Content-Length": str(found.size),
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
            "Cache-Control": "no-store",
        },
    )


def _opened_name(key: IncidentKey, found: Attachment) -> str:
    try:
        return key.open("name", found.name)
    except CryptoError:
        return f"{found.attachment_id}"


@router.post(
    "/incidents/{incident_id}/attachments",
    summary="Attach a file to an incident routed to the caller (raw body, streamed)",
    responses={201: {"description": "Stored: `incident.attachment.added.v1`."}, **UPLOAD_ANSWERS},
    **UPLOAD_ROUTE,
)
async def attach(
    incident_id: handlers.IncidentId,
    request: Request,
    caller: RequiredPrincipal,
    name: FilenameHeader = None,
    audience: Annotated[
        AttachmentAudience,
        Query(description="`reporter`: the reporter may download it too."),
    ] = "handlers",
    message_id: MessageId = None,
) -> JSONResponse:
    """The body is the file. Stored sealed, listed in the incident's events by digest,
    size and type; nothing is stored unless all of it arrived and was accepted."""
    check_length(request, limits_of(request).file)
    data = await handler_upload(
        request,
        caller,
        str(incident_id),
        request.stream(),
        filename(name),
        audience,
        _message(message_id),
    )
    return _answer(str(incident_id), data)


@router.get(
    "/incidents/{incident_id}/attachments/{attachment_id}",
    summary="Download a file of an incident (recorded before any byte is sent)",
    **DOWNLOAD_ROUTE,
)
async def download(
    incident_id: handlers.IncidentId,
    attachment_id: AttachmentId,
    request: Request,
    caller: RequiredPrincipal,
) -> StreamingResponse:
    return await handler_download(
        request.app.state.runtime,
        request.app.state.keys,
        caller,
        str(incident_id),
        str(attachment_id),
        policy=handlers.policy_of(request),
    )


# Reporters -------------------------------------------------------------------------


def _service(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


RECEIPT_REFUSALS = (
    (404, "No report matches this receipt and secret."),
    (429, "Too many attempts on this receipt."),
)
"""The answers of `_receipt_incident` refusing a receipt and its secret."""


async def _receipt_incident(request: Request, receipt: str, secret: str | None) -> str:
    try:
        return await _service(request).open_receipt(receipt, secret)
    except ReceiptNotFound:
        raise Problem(404, "Not found", "No report matches this receipt and secret.") from None
    except TooManyAttempts as exc:
        raise Problem(
            429, "Too many attempts", "Too many attempts on this receipt; try again later."
        ) from exc


async def reporter_upload(
    request: Request,
    incident_id: str,
    body: AsyncIterator[bytes],
    name: str | None,
    message_id: str | None = None,
    actor: str = ANONYMOUS_ACTOR,
) -> Any:
    """Store the reporter's file (her receipt, or her being its named reporter, was
    checked); its event's data."""
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.acquire() as conn:
        key = await _service(request).keys.get(conn, incident_id)
    if key is None:
        raise handlers.problem(Erased("This report was erased: nothing can be added."))
    upload = Upload(incident_id, REPORTER, actor, name, "handlers", message_id, fresh_traceparent())
    try:
        return await store(runtime, key, upload, body, limits_of(request))
    except ActionError as error:
        raise handlers.problem(error) from None


async def _reporter_attach(
    request: Request,
    incident_id: str,
    name: str | None,
    message_id: uuid.UUID | None,
    actor: str = ANONYMOUS_ACTOR,
) -> JSONResponse:
    """The reporter's upload route, once her way in was checked: the body is the file."""
    data = await reporter_upload(
        request, incident_id, request.stream(), filename(name), _message(message_id), actor
    )
    return _answer(incident_id, data)


async def reporter_download(
    runtime: Runtime,
    keys: KeyStore,
    incident_id: str,
    attachment_id: str,
    actor: str = ANONYMOUS_ACTOR,
) -> StreamingResponse:
    """Record the reporter's download (committed), then stream the file."""
    for _attempt in range(ATTEMPTS):
        async with runtime.db.acquire() as conn, conn.transaction():
            stored = await eventstore.load(conn, incident_id)
            events = [s.envelope for s in stored]
            found = find(attachments_of(events), attachment_id)
            if found is None or not visible_to_reporter(found):
                raise handlers.problem(NoSuchAttachment())
            key = await keys.get(conn, incident_id)
            if key is None:
                raise handlers.problem(Erased("This report was erased: its files are gone."))
            data = AttachmentDownloaded(principal=REPORTER, attachment_id=attachment_id)
            event = incident_event(
                runtime, incident_id, events, data, actor, traceparent=fresh_traceparent()
            )
            try:
                await eventstore.append(
                    conn,
                    incident_id,
                    stored[-1].version,
                    [event],
                    topic_prefix=runtime.settings.kafka_topic_prefix,
                )
            except eventstore.ConcurrencyError:
                continue
        return await _stream(runtime, key, found)
    raise handlers.problem(actions.Busy())


@router.post(
    "/receipts/{receipt}/attachments",
    summary="Attach a file to an anonymous report (raw body, streamed)",
    responses=reporter_upload_answers(*RECEIPT_REFUSALS),
    **UPLOAD_ROUTE,
)
async def reporter_attach(
    receipt: ReceiptPath,
    secret: SecretHeader,
    request: Request,
    name: FilenameHeader = None,
    message_id: MessageId = None,
) -> JSONResponse:
    """The body is the file; the handlers see it with the report."""
    check_length(request, limits_of(request).file)
    incident_id = await _receipt_incident(request, receipt, secret)
    return await _reporter_attach(request, incident_id, name, message_id)


@router.get(
    "/receipts/{receipt}/attachments/{attachment_id}",
    summary="Download a file of an anonymous report (hers, or one the handlers sent her)",
    response_class=StreamingResponse,
    responses={
        **DOWNLOAD_ANSWERS,
        429: problem_responses((429, "Too many attempts on this receipt."))[429],
    },
)
async def reporter_get(
    receipt: ReceiptPath, secret: SecretHeader, attachment_id: AttachmentId, request: Request
) -> StreamingResponse:
    incident_id = await _receipt_incident(request, receipt, secret)
    return await reporter_download(
        request.app.state.runtime, request.app.state.keys, incident_id, str(attachment_id)
    )


# Named reporters (signed in; services.intake.my_reports decides which reports are hers) --


async def _hers(request: Request, caller: Principal, incident_id: str) -> None:
    """Nothing when the report is the caller's own; else the same 404 as `my_reports`."""
    await my_reports.hers(_service(request), caller.id, incident_id)


@router.post(
    "/my/reports/{incident_id}/attachments",
    summary="Attach a file to one of my reports (named reporter; raw body, streamed)",
    responses=reporter_upload_answers(
        (401, "No bearer token, or one that is not valid."),
        (404, "No report of the caller has this id: the same answer either way."),
    ),
    **UPLOAD_ROUTE,
)
async def my_attach(
    incident_id: handlers.IncidentId,
    request: Request,
    caller: RequiredPrincipal,
    name: FilenameHeader = None,
    message_id: MessageId = None,
) -> JSONResponse:
    """The body is the file; the handlers see it with the report (actor `reporter:named`)."""
    check_length(request, limits_of(request).file)
    await _hers(request, caller, str(incident_id))
    return await _reporter_attach(request, str(incident_id), name, message_id, NAMED_ACTOR)


@router.get(
    "/my/reports/{incident_id}/attachments/{attachment_id}",
    summary="Download a file of one of my reports (hers, or one the handlers sent her)",
    **DOWNLOAD_ROUTE,
)
async def my_get(
    incident_id: handlers.IncidentId,
    attachment_id: AttachmentId,
    request: Request,
    caller: RequiredPrincipal,
) -> StreamingResponse:
    await _hers(request, caller, str(incident_id))
    return await reporter_download(
        request.app.state.runtime,
        request.app.state.keys,
        str(incident_id),
        str(attachment_id),
        actor=NAMED_ACTOR,
    )
