"""The CloudEvents 1.0 envelope every fact travels in (structured JSON mode).

The envelope is validated here, in pure code, so that intake, the consumers and the
audit replay agree on what a valid event is. The bytes form (`canonical_json`) is the
one the outbox publishes and the ledger hashes, and `signing_input` is what a service's
Ed25519 signature covers (docs/event-signing.md).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
)

SPECVERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def utc_rfc3339(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with a `Z` and microseconds."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: every time in this system is timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_rfc3339_or_none(moment: datetime | None) -> str | None:
    """`utc_rfc3339`, None for None (a time not known yet)."""
    return None if moment is None else utc_rfc3339(moment)


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, UTF-8.

    The same value always gives the same bytes, which is what hashing needs.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


SIGNATURE_ATTRIBUTE = "signature"
"""Extension attribute: base64 of the 64-byte Ed25519 signature of `signing_input`."""
SIGNING_KEY_ATTRIBUTE = "signingkey"
"""Extension attribute: the id of the key that signed (`<service>:<16 hex>`); it is signed."""
SIGNING_CONTEXT = b"incidents-event-signature/v1\n"
"""The first line of every signing input, so a signature over an event is never valid
for anything else (docs/event-signing.md)."""


def signing_input(event: dict[str, Any]) -> bytes:
    """The bytes an event's signature covers: `SIGNING_CONTEXT` then the canonical JSON of
    the whole structured-mode event object without its `signature` attribute.

    Events hold no floating-point numbers (`Envelope` refuses them), so these bytes are
    also the RFC 8785 (JCS) form of the event: another language can rebuild them.
    """
    unsigned = {k: v for k, v in event.items() if k != SIGNATURE_ATTRIBUTE}
    return SIGNING_CONTEXT + canonical_json(unsigned)


def _has_float(value: Any) -> bool:
    # A loop over a stack, not recursive generators: every event's data passes here,
    # and a bulk import builds hundreds of thousands (a third of each event's cost).
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class Envelope(BaseModel):
    """A CloudEvents 1.0 event with this project's extensions.

    Extensions: `actor` (principal or `system:<name>`), `causationid`,
    `correlationid` (the incident's first event id) and `traceparent` (W3C).
    Unknown extensions from other systems are kept, provided their names follow
    the CloudEvents naming rule.
    """

    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=False)

    specversion: str = Field(SPECVERSION, description="CloudEvents version; always 1.0.")
    id: str = Field(description="Unique event id (a UUID).")
    source: str = Field(min_length=1, description="URI-reference of the producer.")
    type: str = Field(min_length=1, description="Event type, e.g. incident.report.submitted.v1.")
    time: datetime = Field(description="When it happened (RFC 3339, UTC).")
    subject: str = Field(min_length=1, max_length=200, description="The incident id.")
    datacontenttype: str = Field(JSON_CONTENT_TYPE, description="Always application/json.")
    data: dict[str, Any] = Field(description="The event's payload, typed by `type`.")
    actor: str | None = Field(None, max_length=200, description="Principal that caused it.")
    causationid: str | None = Field(None, description="Id of the event that caused this one.")
    correlationid: str | None = Field(None, description="The incident's first event id.")
    traceparent: str | None = Field(None, description="W3C trace context of the producer.")

    @field_validator("specversion")
    @classmethod
    def _spec(cls, value: str) -> str:
        if value != SPECVERSION:
            raise ValueError(f"specversion must be {SPECVERSION!r}")
        return value

    @field_validator("id", "causationid", "correlationid")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(uuid.UUID(value))
        except ValueError as exc:
            raise ValueError("must be a UUID") from exc

    @field_validator("data")
    @classmethod
    def _no_floats(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Python and JCS print some floats differently; integers and strings they agree
        # on, so the signing input stays reproducible in any language.
        if _has_float(value):
            raise ValueError("floating-point numbers are not allowed in events")
        return value

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("time must carry a timezone (RFC 3339)")
        return value.astimezone(UTC)

    @field_validator("datacontenttype")
    @classmethod
    def _json(cls, value: str) -> str:
        if value.split(";")[0].strip() != JSON_CONTENT_TYPE:
            raise ValueError(f"datacontenttype must be {JSON_CONTENT_TYPE}")
        return value

    @field_validator("traceparent")
    @classmethod
    def _traceparent(cls, value: str | None) -> str | None:
        if value is not None and not _TRACEPARENT.match(value):
            raise ValueError("traceparent must be a W3C trace context header value")
        return value

    @field_serializer("time")
    def _time_out(self, value: datetime) -> str:
        return utc_rfc3339(value)

    def model_post_init(self, __context: Any) -> None:
        for name in self.model_extra or {}:
            if not _EXTENSION_NAME.match(name):
                raise ValueError(
                    f"extension attribute {name!r}: names are 1-20 lowercase letters or digits"
                )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict, without absent optional attributes."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_bytes(self) -> bytes:
        """The structured-mode bytes (canonical JSON)."""
        return canonical_json(self.to_dict())


def new_event_id() -> str:
    """A fresh random event id."""
    return str(uuid.uuid4())
