"""Intake's HTTP routes. Thin: parse, call one service method, answer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.domain.reports import ReportInput, UnknownCategory
from services.infra.http import Problem
from services.intake.principals import OptionalPrincipal
from services.intake.service import IntakeService

router = APIRouter(prefix="/v1")


def _service(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


@router.post("/reports", status_code=202, summary="Submit a report")
async def post_report(
    report: ReportInput, request: Request, caller: OptionalPrincipal
) -> JSONResponse:
    """Take a report in. Anonymous without `Authorization`; 202 once it is durable."""
    principal = caller.id if caller else None
    is_system = caller is not None and caller.is_system
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
