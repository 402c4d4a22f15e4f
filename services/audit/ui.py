"""The auditor's console pages under `/ui/`: the incident list and the incident page.

Each page authenticates with the login cookie through `require_auditor`, the API's own
check, and reads the incident through the API's `incident_read` (the use case
`read_incident`: the auditor and conflict checks, the ledger entries, 404 when there
are none, the read recorded). Knowledge and state come from `knowledge_as_of` and
`state_as_of`, exactly what `/knowledge` and `/state` answer. The timeline shows types,
actors, times, digests and trace ids, never report content (see
`services.console.describe`). The list reads the console index (`ui_index`) through
the use case `list_incidents`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from services.audit.api import MAX_INDEX, incident_read, require_auditor, unit_of_work
from services.audit.ui_evidence import EvidenceDesk
from services.audit.ui_index import STATUSES, Filters
from services.audit.usecases import ListIncidents, list_incidents
from services.console.chart import axis_span, layout, time_lines
from services.console.describe import describe
from services.console.web import (
    ConsoleError,
    LoginNeeded,
    fragment,
    language,
    render,
    secured,
    session_authorization,
    signed_in_as,
)
from services.domain.knowledge import (
    LedgerEvent,
    deliveries_as_of,
    knowledge_as_of,
    progress_as_of,
    state_as_of,
)
from services.infra.http import Problem
from services.infra.telemetry import trace_id_of

router = APIRouter(prefix="/ui", include_in_schema=False)
MAX_T = 100 * 365 * 86_400_000
"""The as-of offset `t` (ms after the first entry) is at most a century."""


async def auditor(request: Request) -> tuple[str, str]:
    """(principal, authorization) of a logged-in auditor; the login page, or 403, otherwise."""
    authorization = session_authorization(request)
    if authorization is None:
        raise LoginNeeded
    try:
        principal = await require_auditor(request, authorization)
    except Problem as exc:
        if exc.status == 401:
            raise LoginNeeded from None
        raise ConsoleError(exc.status, exc.title, exc.detail) from None
    return signed_in_as(request, principal), authorization


async def entries_of(request: Request, authorization: str, incident_id: str) -> list[LedgerEvent]:
    try:
        return await incident_read(request, authorization, incident_id)
    except Problem as exc:
        raise ConsoleError(exc.status, exc.title, exc.detail) from None


def _safe(name: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)[:80]


def _flag(value: str | None) -> bool:
    return value in ("1", "on", "true", "yes")


@router.get("/")
async def incidents(
    request: Request,
    category: str | None = None,
    severity: str | None = None,
    status: str | None = None,
    overdue: str | None = None,
    breached: str | None = None,
    before: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
) -> Response:
    """Incidents, newest first, filtered, fifty a page (keyset on the ledger index)."""
    principal, _ = await auditor(request)
    filters = Filters(
        category=category or None,
        severity=severity or None,
        status=status or None,
        overdue=_flag(overdue),
        breached=_flag(breached),
    )
    query = ListIncidents(principal, filters, before=before, after=after)
    listed = await list_incidents(query, unit_of_work(request))
    kept = {
        "category": filters.category,
        "severity": filters.severity,
        "status": filters.status,
        "overdue": "1" if filters.overdue else None,
        "breached": "1" if filters.breached else None,
    }
    return render(
        request,
        "audit_list.html",
        principal=principal,
        page=listed.page,
        filters=filters,
        kept=kept,
        options=listed.options,
        statuses=STATUSES,
        behind=listed.behind,
        now=datetime.now(UTC),
    )


def instant(as_of: str | None, t: int | None, start: datetime) -> datetime:
    """The as-of instant: an RFC 3339 `as_of` (UTC when it has no zone), or `t` ms after start."""
    if as_of:
        try:
            moment = datetime.fromisoformat(as_of.strip().replace(" ", "T"))
        except ValueError:
            raise ConsoleError(
                422, "Invalid as-of instant", "Give it as 2026-11-25T10:00:00Z."
            ) from None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if t is not None:
        try:
            return start + timedelta(milliseconds=t)
        except OverflowError:
            raise ConsoleError(422, "Invalid as-of instant", "t is past any date.") from None
    return datetime.now(UTC)


def as_of_view(incident_id: str, entries: list[LedgerEvent], moment: datetime) -> dict[str, Any]:
    """The chart, the state and the knowledge at `moment`: what the as-of control redraws."""
    knowledge = knowledge_as_of(incident_id, entries, moment)
    state = state_as_of(incident_id, entries, moment)
    progress = progress_as_of(incident_id, entries, moment)
    start, end = axis_span(entries)
    chart = layout(knowledge, time_lines(entries, moment), start, end)
    span_ms = int((end - start).total_seconds() * 1000)
    position = int(min(max((moment - start).total_seconds() * 1000, 0), span_ms))
    return {
        "incident_id": incident_id,
        "knowledge": knowledge,
        "deliveries": deliveries_as_of(incident_id, entries, moment),
        "state": state,
        "progress": progress,
        "chart": chart,
        "as_of": moment,
        "span_ms": span_ms,
        "position": position,
        "step_ms": max(1, span_ms // 1000),
        # the script counts in whole ms: rounded up, position 0 still includes the first entry
        "start_ms": math.ceil(start.timestamp() * 1000),
        "counted": sum(1 for e in entries if e.recorded_at <= moment),
        "total": len(entries),
    }


def timeline_rows(entries: list[LedgerEvent], moment: datetime) -> list[dict[str, Any]]:
    """The timeline's rows: who, what, when, trace id, and only content-free details."""
    return [
        {
            "index": e.index,
            "recorded_at": e.recorded_at,
            "type": e.envelope.type,
            "actor": e.envelope.actor,
            "trace_id": trace_id_of(e.envelope.traceparent),
            "details": describe(e.envelope.type, e.envelope.data),
            "later": e.recorded_at > moment,
        }
        for e in entries
    ]


@dataclass(frozen=True)
class IncidentAsOf:
    """What an incident page shows: the auditor, the incident's entries (the read
    recorded) and the instant asked."""

    principal: str
    incident_id: str
    entries: list[LedgerEvent]
    moment: datetime

    def view(self) -> dict[str, Any]:
        """The part the as-of control redraws (`as_of_view`)."""
        return as_of_view(self.incident_id, self.entries, self.moment)


async def incident_as_of_page(
    incident_id: str,
    request: Request,
    as_of: str | None = None,
    t: Annotated[int | None, Query(ge=0, le=MAX_T)] = None,
) -> IncidentAsOf:
    principal, authorization = await auditor(request)
    entries = await entries_of(request, authorization, incident_id)
    return IncidentAsOf(principal, incident_id, entries, instant(as_of, t, axis_span(entries)[0]))


IncidentPage = Annotated[IncidentAsOf, Depends(incident_as_of_page)]
"""An incident page's parameters (the incident, `as_of` or `t`), read for an auditor."""


@router.get("/incidents/{incident_id}")
async def incident(request: Request, page: IncidentPage) -> Response:
    """Timeline (ledger order), who-knew chart and state as of an instant, verified badge."""
    desk: EvidenceDesk = request.app.state.evidence
    evidence = await desk.badge(page.incident_id)
    trace_url: str | None = getattr(request.app.state, "trace_url", None)
    return render(
        request,
        "audit_incident.html",
        principal=page.principal,
        timeline=timeline_rows(page.entries, page.moment),
        evidence=evidence,
        trace_url=trace_url,
        **page.view(),
    )


@router.get("/incidents/{incident_id}/as-of")
async def incident_as_of(request: Request, page: IncidentPage) -> Response:
    """The as-of part of the incident page alone, for the script that redraws it."""
    body = fragment("audit_asof.html", **language(request), **page.view())
    return secured(HTMLResponse(body), request)


@router.get("/incidents/{incident_id}/evidence.json")
async def evidence_bundle(incident_id: str, request: Request) -> Response:
    """The evidence bundle of `incidents audit export`, checked before it is served."""
    _, authorization = await auditor(request)
    await entries_of(request, authorization, incident_id)  # 404 as the API
    desk: EvidenceDesk = request.app.state.evidence
    evidence, bundle = await desk.bundle(incident_id)
    if bundle is None or not evidence.downloadable:
        detail = evidence.reason or (
            f"{evidence.unsigned} of the incident's entries are newer than the latest signed"
            " head; a new head is signed within seconds: try again."
        )
        raise ConsoleError(409, "Not all of it is signed yet", detail)
    response = Response(
        json.dumps(bundle, indent=2) + "\n",
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="evidence-{_safe(incident_id)}.json"'
        },
    )
    return secured(response, request)
