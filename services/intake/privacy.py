"""Privacy actions on an incident: who reported (identity custodians), legal holds
(auditors), and erasure when retention has passed (a job of intake, which owns keys).

- `POST /v1/incidents/{id}/reporter-identity` (role `identity_custodian`): records
  `incident.identity.disclosed.v1` (the custodian, their reason sealed) and only after
  the commit answers the reporter's person id, opened from `reporter_identity`.
- `POST /v1/incidents/{id}/legal-hold` and `/legal-hold/release` (role `auditor`):
  record `incident.legal_hold.placed.v1` / `.released.v1`. A held incident is never
  erased; releasing the last hold lets the job erase it once its retention passed.
- `Eraser`: every `INCIDENTS_ERASURE_INTERVAL`, it first re-wraps keys still under a
  previous master key (rotation), then each closed incident whose category's
  retention (the policy's `retention`, 5 years by default) has passed since closing,
  and that no hold keeps, loses its data key (`KeyStore.destroy`) and gets
  `incident.erased.v1`, in one transaction; its receipt goes too. Its events stay, so
  the ledger still verifies and still says who knew when; their content never opens
  again, with any key the system holds.

The role is checked first: a caller without it gets 403 whether the incident exists or
not. A role holder excluded from the incident (a conflict) gets 404, as for an unknown
id. Every refusal is recorded as `incident.access.denied.v1` on `access-denied:<id>`,
as for handlers' actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from services.domain.envelope import Envelope, utc_rfc3339
from services.domain.events import (
    Erased,
    Event,
    IdentityDisclosed,
    LegalHoldPlaced,
    LegalHoldReleased,
    ReportSubmitted,
    is_sealed,
    make_event,
)
from services.domain.incident import IncidentState, fold
from services.domain.policy import Policy
from services.infra import eventstore
from services.infra.auth import Principal
from services.infra.crypto import IncidentKey
from services.infra.http import Problem, problem_responses
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime
from services.infra.telemetry import current_traceparent
from services.intake.actions import ATTEMPTS, incident_event, record_refusal
from services.intake.attachments import chunks_for
from services.intake.handlers import (
    BUSY,
    FAILED,
    INVALID,
    NOT_FOUND,
    UNAUTHORIZED,
    IncidentId,
    policy_of,
)
from services.intake.principals import RequiredPrincipal
from services.intake.routing import access_of, caller_routing

router = APIRouter(prefix="/v1", tags=["privacy"])
log = logging.getLogger(__name__)

IDENTITY_CUSTODIAN: Final = "identity_custodian"
AUDITOR: Final = "auditor"
ERASER_ACTOR: Final = "system:intake"

FORBIDDEN = (403, "The caller lacks the role (`incident.access.denied.v1` is recorded).")
GONE = (410, "The incident was erased: its content and reporter can no longer be read.")
HOLD_CONFLICT = (409, "Already held (place), not held (release), or already erased.")


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(
        min_length=1, max_length=2000, description="Why (recorded, sealed with the incident)."
    )


class Disclosure(BaseModel):
    """Who reported, as shown to an identity custodian (the disclosure is recorded)."""

    incident_id: str
    anonymous: bool = Field(description="True when nobody is known: there is no identity.")
    reporter: str | None = Field(description="The reporter's person id; null if anonymous.")
    event_id: str = Field(description="The `incident.identity.disclosed.v1` recorded first.")
    disclosed_at: str


class Hold(BaseModel):
    incident_id: str
    held: bool
    event_id: str
    type: str
    at: str


# One privileged action: role, not routing, decides; exclusions still conceal ----------


Build = Callable[[list[Envelope], IncidentState, IncidentKey | None], tuple[Event, Any]]


async def _excluded(
    conn: asyncpg.Connection,
    keys: KeyStore,
    policy: Policy,
    incident_id: str,
    events: list[Envelope],
    caller: Principal,
) -> bool:
    """Is the caller conflicted (by triage's decision, or already by the report itself,
    or because she answers to an accused)?"""
    category = fold(incident_id, events).category
    access = await access_of(
        conn, incident_id, events, keys, policy, asking=caller.id, category=category
    )
    return caller.id in access.routing.excluded


async def _privileged(
    request: Request,
    caller: Principal,
    incident: uuid.UUID,
    *,
    role: str,
    action: str,
    build: Build,
    after: Callable[[asyncpg.Connection, str, IncidentState, Envelope], Awaitable[None]]
    | None = None,
) -> tuple[Envelope, Any]:
    runtime: Runtime = request.app.state.runtime
    keys: KeyStore = request.app.state.keys
    policy = policy_of(request)
    incident_id = str(incident)
    for _attempt in range(ATTEMPTS):
        refused: int | None = None
        try:
            async with runtime.db.acquire() as conn, conn.transaction():
                # The role first: a caller without it is refused the same way, at the same
                # cost, whether the incident exists or not (nothing is read of it).
                reason = None
                if role not in caller.roles:
                    reason, refused = f"{role}_required", 403
                elif caller.id in (await caller_routing(conn, incident_id, caller.id)).excluded:
                    reason, refused = "excluded", 404  # the access table: nothing read
                else:
                    # The eraser's lock order: the retention row first, then the stream
                    # (and the event counter). Taken in the other order, a hold racing an
                    # erasure deadlocks.
                    await conn.execute(
                        "SELECT 1 FROM retention WHERE incident_id = $1 FOR UPDATE", incident_id
                    )
                    stored = await eventstore.load(conn, incident_id)
                    events = [s.envelope for s in stored]
                    version = stored[-1].version if stored else 0
                    state = fold(incident_id, events)
                    if not events or state.category is None:
                        reason, refused = "no_such_incident", 404
                    elif await _excluded(conn, keys, policy, incident_id, events, caller):
                        reason, refused = "excluded", 404
                if reason is not None:  # recorded, and committed before the answer
                    await record_refusal(runtime, conn, incident_id, caller, action, reason)
                else:
                    data, result = build(events, state, await keys.get(conn, incident_id))
                    event = incident_event(
                        runtime,
                        incident_id,
                        events,
                        data,
                        caller.id,
                        traceparent=current_traceparent(),
                    )
                    await eventstore.append(
                        conn,
                        incident_id,
                        version,
                        [event],
                        topic_prefix=runtime.settings.kafka_topic_prefix,
                    )
                    if after is not None:
                        await after(conn, incident_id, state, event)
        except (eventstore.ConcurrencyError, asyncpg.DeadlockDetectedError):
            continue  # nothing was committed: decide again on what is there now
        if refused == 404:
            raise Problem(404, "Not found", "No such incident.")
        if refused == 403:
            raise Problem(403, "Forbidden", f"The {role} role is required.")
        return event, result
    raise Problem(503, "Busy", "The incident kept changing; retry.")


# Identity -------------------------------------------------------------------------


@router.post(
    "/incidents/{incident_id}/reporter-identity",
    summary="Who reported (identity custodians; recorded before the answer)",
    response_model=Disclosure,
    responses=problem_responses(UNAUTHORIZED, FORBIDDEN, NOT_FOUND, GONE, INVALID, FAILED, BUSY),
)
async def disclose_identity(
    incident_id: IncidentId, body: ReasonBody, request: Request, caller: RequiredPrincipal
) -> dict[str, Any]:
    """The reporter's person id, for the `identity_custodian` role only.

    `incident.identity.disclosed.v1` (the custodian, the reason sealed) is committed
    first, so the custodian appears in the knowledge of the incident; then the sealed
    `reporter_identity` is opened. Anonymous reports answer `reporter: null`.
    """

    def disclosed(
        events: list[Envelope], _state: IncidentState, key: IncidentKey | None
    ) -> tuple[Event, str | None]:
        if key is None:
            raise Problem(410, "Erased", "The incident was erased: its reporter is unknown now.")
        submitted = next(e for e in events if e.type == ReportSubmitted.TYPE)
        sealed = submitted.data.get("reporter_identity")
        reporter = key.open("reporter_identity", sealed) if sealed else None
        return IdentityDisclosed(principal=caller.id, reason=key.seal("reason", body.reason)), (
            reporter
        )

    event, reporter = await _privileged(
        request,
        caller,
        incident_id,
        role=IDENTITY_CUSTODIAN,
        action="disclose_identity",
        build=disclosed,
    )
    return {
        "incident_id": str(incident_id),
        "anonymous": reporter is None,
        "reporter": reporter,
        "event_id": event.id,
        "disclosed_at": utc_rfc3339(event.time),
    }


# Legal holds ----------------------------------------------------------------------


def held(events: list[Envelope]) -> bool:
    """Whether the latest legal-hold event of the stream placed a hold."""
    last = [e.type for e in events if e.type in (LegalHoldPlaced.TYPE, LegalHoldReleased.TYPE)]
    return bool(last) and last[-1] == LegalHoldPlaced.TYPE


async def _set_held(
    conn: asyncpg.Connection, incident_id: str, state: IncidentState, event: Envelope
) -> None:
    await conn.execute(
        "INSERT INTO retention (incident_id, category, held) VALUES ($1, $2, $3)"
        " ON CONFLICT (incident_id) DO UPDATE SET held = EXCLUDED.held",
        incident_id,
        state.category or "",
        event.type == LegalHoldPlaced.TYPE,
    )


async def _hold(
    request: Request, caller: Principal, incident: uuid.UUID, body: ReasonBody, place: bool
) -> dict[str, Any]:
    def build(
        events: list[Envelope], _state: IncidentState, key: IncidentKey | None
    ) -> tuple[Event, None]:
        if key is None:
            raise Problem(409, "Erased", "The incident was already erased.")
        if held(events) == place:
            raise Problem(
                409,
                "Conflict",
                "A legal hold is already placed." if place else "No legal hold is placed.",
            )
        reason = key.seal("reason", body.reason)
        data: Event = (
            LegalHoldPlaced(principal=caller.id, reason=reason)
            if place
            else LegalHoldReleased(principal=caller.id, reason=reason)
        )
        return data, None

    event, _ = await _privileged(
        request,
        caller,
        incident,
        role=AUDITOR,
        action="place_legal_hold" if place else "release_legal_hold",
        build=build,
        after=_set_held,
    )
    return {
        "incident_id": str(incident),
        "held": place,
        "event_id": event.id,
        "type": event.type,
        "at": utc_rfc3339(event.time),
    }


HoldRoute = Callable[..., Awaitable[dict[str, Any]]]
HOLD_ANSWERS = problem_responses(
    UNAUTHORIZED, FORBIDDEN, NOT_FOUND, HOLD_CONFLICT, INVALID, FAILED, BUSY
)


def _hold_route(name: str, path: str, summary: str, description: str, *, place: bool) -> HoldRoute:
    """The route placing (`place`) or releasing a legal hold: 202 with `Hold`, the
    answers of HOLD_ANSWERS."""

    async def route(
        incident_id: IncidentId, body: ReasonBody, request: Request, caller: RequiredPrincipal
    ) -> dict[str, Any]:
        return await _hold(request, caller, incident_id, body, place=place)

    return router.post(
        path,
        name=name,
        status_code=202,
        summary=summary,
        description=description,
        response_model=Hold,
        responses=HOLD_ANSWERS,
    )(route)


place_hold = _hold_route(
    "place_hold",
    "/incidents/{incident_id}/legal-hold",
    "Place a legal hold: the incident is not erased while it holds (auditors)",
    "Record `incident.legal_hold.placed.v1`; erasure is suspended until it is released.",
    place=True,
)
release_hold = _hold_route(
    "release_hold",
    "/incidents/{incident_id}/legal-hold/release",
    "Release the legal hold: erasure proceeds once retention has passed (auditors)",
    "Record `incident.legal_hold.released.v1`.",
    place=False,
)


# Erasure --------------------------------------------------------------------------


def sealed_from_the_start(events: list[Envelope]) -> bool:
    """True when the incident's report was sealed when it was taken (every one since #8).

    An incident from before sealing gets a key on its next action, but its report
    stays in clear in the event store, on Kafka and in the ledger: erasure by key
    destruction cannot reach it, so the eraser refuses it (and logs that).
    """
    first = events[0]
    return first.type != ReportSubmitted.TYPE or is_sealed(first.data.get("summary"))


Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class Eraser:
    """Destroys the keys of incidents whose retention has passed (crypto-shredding)."""

    runtime: Runtime
    keys: KeyStore
    policy: Policy
    _: KW_ONLY
    interval: float
    clock: Clock = _utcnow

    def due_at(self, category: str | None, closed_at: datetime) -> datetime:
        return closed_at + timedelta(seconds=self.policy.retention_of(category))

    async def run(self, stop: asyncio.Event) -> None:
        """The periodic job (a background task of intake's runtime)."""
        while not stop.is_set():
            try:
                rewrapped = await self.rewrap()
                if rewrapped:
                    log.info("re-wrapped %d data keys under the current master key", rewrapped)
                erased = await self.erase_due()
                if erased:
                    log.info("erased %d incidents whose retention had passed", len(erased))
            except Exception as exc:  # the next round tries again
                log.warning("erasure round failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    async def rewrap(self) -> int:
        """Move every live key still under a previous master key to the current one."""
        total = 0
        while len(self.keys.masters) > 1:
            async with self.runtime.db.acquire() as conn, conn.transaction():
                done = await self.keys.rewrap(conn)
            total += done
            if done == 0:
                break
        return total

    async def erase_due(self) -> list[str]:
        """Erase every closed, unheld incident past its retention now; their ids."""
        now = self.clock()
        categories = self.policy.retention.categories if self.policy.retention else {}
        shortest = min([self.policy.retention_of(None), *categories.values()])
        async with self.runtime.db.acquire() as conn:
            rows = await conn.fetch(
                "SELECT incident_id, category, closed_at FROM retention"
                " WHERE erased_at IS NULL AND NOT held AND closed_at <= $1"
                " ORDER BY closed_at",
                now - timedelta(seconds=shortest),
            )
        erased = []
        for row in rows:
            if self.due_at(row["category"], row["closed_at"]) <= now and await self.erase(
                row["incident_id"], now
            ):
                erased.append(row["incident_id"])
        return erased

    async def erase(self, incident_id: str, now: datetime) -> bool:
        """Erase one incident if it is (still) due and not held; True if it was erased."""
        for _attempt in range(ATTEMPTS):
            try:
                async with self.runtime.db.acquire() as conn, conn.transaction():
                    row = await conn.fetchrow(
                        "SELECT category, closed_at, held, erased_at FROM retention"
                        " WHERE incident_id = $1 FOR UPDATE",
                        incident_id,
                    )
                    if (
                        row is None
                        or row["erased_at"] is not None
                        or row["held"]
                        or row["closed_at"] is None
                        or self.due_at(row["category"], row["closed_at"]) > now
                    ):
                        return False
                    stored = await eventstore.load(conn, incident_id)
                    events = [s.envelope for s in stored]
                    if not events or held(events):
                        return False
                    if not sealed_from_the_start(events):
                        # Destroying its key would record an erasure while its report
                        # stays readable in every copy of its events: refuse, and say so.
                        log.warning(
                            "incident %s predates sealing: its report is stored in clear"
                            " and cannot be erased by destroying its key; not erased",
                            incident_id,
                        )
                        return False
                    await self.keys.destroy(conn, incident_id)
                    await chunks_for(self.runtime.settings).delete_incident(conn, incident_id)
                    event = make_event(
                        Erased.TYPE,
                        subject=incident_id,
                        data=Erased(
                            reason="retention_expired",
                            category=row["category"] or None,
                            closed_at=row["closed_at"],
                            retain_until=self.due_at(row["category"], row["closed_at"]),
                        ),
                        source=self.runtime.source,
                        time=datetime.now(UTC),
                        actor=ERASER_ACTOR,
                        correlationid=events[0].correlationid or events[0].id,
                    )
                    await eventstore.append(
                        conn,
                        incident_id,
                        stored[-1].version,
                        [event],
                        topic_prefix=self.runtime.settings.kafka_topic_prefix,
                    )
                    await conn.execute(
                        "UPDATE retention SET erased_at = clock_timestamp() WHERE incident_id = $1",
                        incident_id,
                    )
                    await conn.execute("DELETE FROM receipts WHERE incident_id = $1", incident_id)
                    await conn.execute(  # her list no longer links her tag to it
                        "DELETE FROM reporter_reports WHERE incident_id = $1", incident_id
                    )
                    await conn.execute(
                        "DELETE FROM idempotency WHERE response->>'incident_id' = $1", incident_id
                    )
            except eventstore.ConcurrencyError:
                continue
            return True
        return False
