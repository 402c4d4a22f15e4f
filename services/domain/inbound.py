"""The inbound contract: what another system sends to report an incident, and how.

A registered system (`services/data/systems.yaml`, docs/inbound.md) sends one
`incident.report.inbound.v1` CloudEvent per report, on Kafka (`incident.inbound`) or
over HTTP (`POST /v1/events`), each in structured or binary content mode. Its `data` is
exactly the body of `POST /v1/reports` (`ReportRequest`): nothing the sender cannot know
(no digest, no pseudonym, no matches), and `subject` is optional (intake derives the
incident id). This module is pure: it turns a Kafka record's or an HTTP request's
headers and bytes into the structured-mode event object (the object a signature
covers), checks a system's scope, and derives the incident id. Every refusal is an
`InvalidEvent` whose reason says where and what kind of error, never the input.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from services.domain.envelope import CLOUDEVENTS_CONTENT_TYPE, JSON_CONTENT_TYPE, Envelope
from services.domain.events import InvalidEvent, ReportSubmitted, explain
from services.domain.parsing import json_error
from services.domain.reports import ReportRequest

INBOUND_TYPE: Final = "incident.report.inbound.v1"
"""The one event type accepted from other systems."""
MAX_INBOUND_BYTES: Final = 256 * 1024
"""Largest inbound record value or HTTP body (the HTTP limit, INCIDENTS_MAX_BODY_BYTES,
is the same by default): larger ones are refused as oversized."""
MAX_HEADER_BYTES: Final = 8 * 1024
"""Largest single `ce_*` header value in binary mode."""
SCOPE_REPORT: Final = "report"
"""May report anonymously (no `reporter`)."""
SCOPE_REPORT_FOR_PERSON: Final = "report_for_person"
"""May name the person it reports for (`reporter`)."""
REPORT_SCOPES: Final = (SCOPE_REPORT, SCOPE_REPORT_FOR_PERSON)
SCOPE_DIRECTORY: Final = "directory"
"""May provision the directory over SCIM (`/scim/v2`, docs/directory-sync.md; needs `http`)."""
SCOPES: Final = (*REPORT_SCOPES, SCOPE_DIRECTORY)
INCIDENT_NAMESPACE: Final = uuid.UUID("5f0b6a52-8d0e-4c59-9a57-2f4b2c9e1d01")
"""UUIDv5 namespace of inbound incident ids (see `incident_id_for`)."""
_REQUIRED = ("specversion", "id", "source", "type")
_ATTRIBUTE = re.compile(r"^[a-z0-9]{1,20}$")


class InboundRefused(InvalidEvent):
    """An inbound event that is authentic but may not be taken: `kind` names the class
    (`unauthenticated`, `out_of_scope`, `invalid`, `oversized`, `unknown_category`...)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class InboundEvent:
    """A decoded inbound event: `event` is the structured-mode object (what its
    signature covers), `mode` how it arrived (`structured` or `binary`)."""

    event: dict[str, Any]
    mode: str

    @property
    def id(self) -> str | None:
        value = self.event.get("id")
        return value if isinstance(value, str) else None


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InboundRefused("malformed", "a header is not UTF-8") from exc


def _media_type(content_type: str | None) -> str | None:
    return None if content_type is None else content_type.split(";")[0].strip().lower()


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:  # where, never what: the event may be a report
        where = json_error(exc.msg, exc.doc, exc.pos)
        raise InboundRefused("malformed", f"{what} is not JSON: {where}") from exc
    except UnicodeDecodeError as exc:
        raise InboundRefused(
            "malformed", f"{what} is not JSON: not UTF-8 at byte {exc.start + 1}"
        ) from exc
    except (RecursionError, ValueError) as exc:
        raise InboundRefused(
            "malformed", f"{what} is not JSON this system accepts: {type(exc).__name__}"
        ) from exc
    if not isinstance(value, dict):
        raise InboundRefused("malformed", f"{what} must be a JSON object")
    return value


def decode(
    headers: Iterable[tuple[str, bytes | str | None]], value: bytes, *, prefix: str = "ce_"
) -> InboundEvent:
    """The event of a Kafka record (`prefix` `ce_`) or an HTTP request (`ce-`).

    Structured mode: `content-type: application/cloudevents+json`, the value is the
    whole event. Binary mode: `ce_specversion` present, each attribute a `<prefix>name`
    header (a string), `content-type: application/json` and the value is `data`. The
    event object is rebuilt as the structured form with every attribute a string
    (`datacontenttype` from `content-type`), which is what a binary-mode signature
    covers. Anything else raises InboundRefused.
    """
    if len(value) > MAX_INBOUND_BYTES:
        raise InboundRefused(
            "oversized", f"the event is {len(value)} bytes, more than {MAX_INBOUND_BYTES}"
        )
    content_type: str | None = None
    attributes: dict[str, str] = {}
    for name, raw in headers:
        lower = name.lower()
        if lower == "content-type":
            content_type = _text(raw)
        elif lower.startswith(prefix):
            text = _text(raw)
            attribute = lower[len(prefix) :]
            if not _ATTRIBUTE.match(attribute):
                raise InboundRefused(
                    "malformed", f"header {name!r}: attribute names are 1-20 a-z or 0-9"
                )
            if text is None or len(text) > MAX_HEADER_BYTES:
                raise InboundRefused("malformed", f"header {name!r}: missing or too long")
            if attribute in attributes:
                raise InboundRefused("malformed", f"header {name!r} is repeated")
            if attribute in ("data", "datacontenttype"):
                raise InboundRefused(
                    "malformed", f"header {name!r}: binary mode carries it in content-type"
                )
            attributes[attribute] = text
    media = _media_type(content_type)
    if "specversion" in attributes:
        if media != JSON_CONTENT_TYPE:
            raise InboundRefused(
                "malformed",
                f"binary mode needs content-type: {JSON_CONTENT_TYPE}, not {media or 'none'}",
            )
        event: dict[str, Any] = {**attributes}
        event["datacontenttype"] = content_type
        event["data"] = _json_object(value, "the value (data)")
        return InboundEvent(event, "binary")
    if attributes:
        raise InboundRefused("malformed", f"binary mode needs a {prefix}specversion header")
    if media != CLOUDEVENTS_CONTENT_TYPE:
        raise InboundRefused(
            "malformed",
            f"content-type must be {CLOUDEVENTS_CONTENT_TYPE} (structured mode) or"
            f" {JSON_CONTENT_TYPE} with {prefix}* headers (binary mode), not {media or 'none'}",
        )
    return InboundEvent(_json_object(value, "the event"), "structured")


def report_of(event: Mapping[str, Any]) -> tuple[Envelope, ReportRequest]:
    """The envelope and the report of an inbound event, validated like
    `POST /v1/reports`' body (`ReportRequest`); InboundRefused if invalid."""
    for name in _REQUIRED:
        if not isinstance(event.get(name), str) or not event[name]:
            raise InboundRefused("invalid", f"not a valid CloudEvent: {name} is required")
    if event["type"] == ReportSubmitted.TYPE:
        raise InboundRefused(
            "wrong_type",
            f"{ReportSubmitted.TYPE} is no longer accepted on incident.inbound (it carried fields a"
            f" sender cannot know): send {INBOUND_TYPE} (docs/inbound.md)",
        )
    if event["type"] != INBOUND_TYPE:
        raise InboundRefused("wrong_type", f"inbound accepts only {INBOUND_TYPE}")
    # `subject` is optional here: the envelope model needs one, intake derives the id.
    structured = {**event, "subject": event.get("subject") or "inbound"}
    if "time" not in structured:
        raise InboundRefused("invalid", "not a valid CloudEvent: time is required")
    try:
        envelope = Envelope.model_validate(structured)
    except ValidationError as exc:
        raise InboundRefused("invalid", f"not a valid CloudEvent: {explain(exc)}") from exc
    except ValueError as exc:
        raise InboundRefused("invalid", f"not a valid CloudEvent: {exc}") from exc
    try:
        report = ReportRequest.model_validate(envelope.data)
    except ValidationError as exc:
        raise InboundRefused("invalid", f"invalid report: {explain(exc)}") from exc
    return envelope, report


def authorize(system_id: str, scopes: frozenset[str], reporter: str | None) -> None:
    """InboundRefused (`out_of_scope`) unless the system may report this way: naming a
    person needs `report_for_person`, an anonymous report needs `report`."""
    needed = SCOPE_REPORT if reporter is None else SCOPE_REPORT_FOR_PERSON
    if needed not in scopes:
        raise InboundRefused(
            "out_of_scope", f"system {system_id!r} lacks the {needed!r} scope for this report"
        )


def incident_id_for(system_id: str, event_id: str) -> str:
    """The incident an inbound event opens: UUIDv5 in `INCIDENT_NAMESPACE` of
    `<system id>/<event id>` (e.g. `hris/0b6f...`), so a resend of the same event, over
    either transport, names the same incident, and two systems never collide."""
    return str(uuid.uuid5(INCIDENT_NAMESPACE, f"{system_id}/{event_id}"))


def result_id_for(system_id: str, event_id: str) -> str:
    """The id of the acceptance or rejection event answering an inbound event (the same
    for a resend, so a sender can drop duplicates)."""
    return str(uuid.uuid5(INCIDENT_NAMESPACE, f"result/{system_id}/{event_id}"))
