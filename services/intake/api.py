"""Intake's HTTP routes. Thin: parse, call one service method, answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from services.domain.reports import ReportInput, UnknownCategory
from services.infra.auth import TokenAuthenticator
from services.infra.http import Problem
from services.intake.service import IntakeService

router = APIRouter(prefix="/v1")


def _service(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


def _reporter(request: Request, authorization: str | None) -> str | None:
    """The authenticated principal, None when anonymous; 401 for a bad token."""
    if authorization is None:
        return None
    auth: TokenAuthenticator = request.app.state.auth
    principal = auth.principal_id(authorization)
    if principal is None:
        raise Problem(401, "Unauthorized", "The bearer token is not valid.")
    return principal


@router.post("/reports", status_code=202, summary="Submit a report")
async def post_report(
    report: ReportInput,
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Take a report in. Anonymous without `Authorization`; 202 once it is durable."""
    principal = _reporter(request, authorization)
    is_system = principal is not None and principal.startswith("system:")
    try:
        accepted = await _service(request).submit(
            report,
            reporter=None if is_system else principal,
            actor=principal or "reporter:anonymous",
            channel="api" if is_system else "web",
        )
    except UnknownCategory as exc:
        raise Problem(422, "Unknown category", str(exc), valid_categories=exc.known) from exc
    return JSONResponse({"incident_id": accepted.incident_id}, status_code=202)
