"""HTTP plumbing shared by the services: problem+json errors, body limits, URLs with
control characters refused, health routes.

Errors map to RFC 9457 problem details in one place; a handler never builds an error
response itself. Unexpected exceptions answer 500 without leaking internals.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.domain.parsing import json_error, parse_rfc3339

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


class ProblemDoc(BaseModel):
    """An RFC 9457 problem (`application/problem+json`); more members may be present."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field("about:blank", description="Problem type URI.")
    title: str = Field(description="Short summary of the problem.")
    status: int = Field(description="HTTP status code.")
    detail: str | None = Field(None, description="What went wrong, for this request.")


PROBLEM_SCHEMA = ProblemDoc.model_json_schema()

Instant = Annotated[datetime, BeforeValidator(parse_rfc3339)]
"""A datetime query parameter: RFC 3339 with an offset only (bare numbers, naive times
and dates refused with 422); `Instant | None` for an optional one."""
REALM = "incidents"
"""The `realm` of every `WWW-Authenticate: Bearer` challenge (RFC 6750, section 3)."""
CHALLENGE_DOC: dict[str, Any] = {
    "description": f'`Bearer realm="{REALM}"`, with `error="invalid_token"` when a token'
    " was sent and refused (RFC 6750).",
    "schema": {"type": "string"},
}


def problem_responses(*codes: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for problem+json answers (a 401's challenge header too)."""
    entries: dict[int | str, dict[str, Any]] = {}
    for code, text in codes:
        entries[code] = {"description": text, "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}}}
        if code == 401:
            entries[code]["headers"] = {"WWW-Authenticate": CHALLENGE_DOC}
    return entries


class Problem(Exception):
    """An error answered as problem+json: raise it from anywhere in a request."""

    def __init__(self, status: int, title: str, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra


def problem_response(
    status: int, title: str, detail: str | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _error(error: dict[str, Any], body: Any) -> dict[str, str]:
    """One entry of a 422's `errors`: the field and what is wrong with it.

    A body that is not JSON is named by line and column (FastAPI puts the character
    offset where the field goes); the body itself is never quoted.
    """
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid" and isinstance(body, str) and len(loc) == 2:
        problem = str((error.get("ctx") or {}).get("error", "invalid JSON"))
        return {"field": "body", "message": f"not valid JSON: {json_error(problem, body, loc[1])}"}
    return {"field": _where(loc), "message": str(error.get("msg", "invalid"))}


def challenge(request: Request) -> dict[str, str]:
    """The `WWW-Authenticate` header of a 401 (RFC 6750, section 3): `invalid_token`
    when a credential was sent and refused, no error code when none was sent."""
    value = f'Bearer realm="{REALM}"'
    if request.headers.get("authorization"):
        value += ', error="invalid_token"'
    return {"WWW-Authenticate": value}


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error through problem+json."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        response = problem_response(exc.status, exc.title, exc.detail, **exc.extra)
        if exc.status == 401:
            response.headers.update(challenge(request))
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_error(e, exc.body) for e in exc.errors()[:20]]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body that is not UTF-8: invalid like any non-JSON body
            return problem_response(422, "Invalid request", "The body is not UTF-8 JSON.")
        response = problem_response(exc.status_code, str(exc.detail))
        # Starlette's 405 names the allowed methods in `Allow` (RFC 9110, 15.5.6)
        response.headers.update(exc.headers or {})
        if exc.status_code == 401:
            response.headers.update(challenge(request))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return problem_response(500, "Internal error", "The error was logged.")


STREAMED_UPLOADS = "/attachments"
"""POSTs to a path ending so stream a file to a route that enforces its own limit (the
attachment settings, docs/attachments.md): `BodyLimit` lets their bodies through."""


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, whether or not Content-Length is set.

    Not for streamed uploads (`STREAMED_UPLOADS`): those routes count the bytes as they
    arrive and refuse past their own, larger limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope.get("method") == "POST" and scope.get("path", "").endswith(STREAMED_UPLOADS)
        ):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413, "Request body too large", f"The limit is {self.max_bytes} bytes."
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")


def control_in_url(scope: Scope) -> bool:
    """Whether the request's path or query string holds a control character (U+0000 to
    U+001F, U+007F), sent as is or percent-encoded. The server decoded the path already;
    the query string is decoded here, as the routes' parameters will be."""
    if _CONTROL.search(scope.get("path", "")):
        return True
    query: bytes = scope.get("query_string", b"")
    return bool(query) and _CONTROL_BYTES.search(unquote_to_bytes(query)) is not None


URL_REFUSED = problem_responses(
    (400, "The path or the query string holds a control character (any route).")
)
"""OpenAPI `responses=` of an app whose routes sit behind `ControlCharacters`."""


class ControlCharacters:
    """ASGI middleware: a request whose URL holds a control character (`control_in_url`)
    is answered 400 before any route runs, whatever the route, the method or the caller.

    No identifier, filter or search in a URL holds one, and PostgreSQL's text cannot hold
    a NUL (a route that passed one on failed with a 500). The answer is one and the same
    for every URL, existing route or not and before authentication: it depends on the
    bytes of the URL alone, so it tells the caller nothing they did not send, and never
    quotes them. Bodies are the routes' to check (their errors name the field).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and control_in_url(scope):
            refused = problem_response(400, "Bad request", "The URL holds a control character.")
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


def health_router(readiness: Callable[[], Awaitable[dict[str, str]]]) -> APIRouter:
    """`/healthz` (process up), `/readyz` (dependencies reachable), `/metrics` (Prometheus).

    In every service's OpenAPI document (for triage and escalation they are all it has).
    """
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        """`{"status": "ok"}` while the process serves HTTP; says nothing of its dependencies."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="The database and the broker answer",
        response_model=None,
        responses={
            200: {
                "description": "Ready: every check is `ok`.",
                "content": {"application/json": {}},
            },
            503: {
                "description": "Not ready: `checks` names each dependency and its error.",
                "content": {"application/json": {}},
            },
        },
    )
    async def readyz() -> Response:
        """Each dependency's check (`database`, `broker`, stopped tasks) and the verdict."""
        checks = await readiness()
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text format."}},
    )
    async def metrics() -> Response:
        """The process's metrics in the Prometheus text exposition format."""
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
