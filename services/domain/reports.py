"""Taking in a report: the command a reporter or system sends, and the event it becomes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.domain.envelope import Envelope, new_event_id
from services.domain.events import SUBMITTED, ReportSubmitted, make_event
from services.domain.incident import report_digest
from services.domain.policy import Policy


class ReportInput(BaseModel):
    """The body of `POST /v1/reports` (and the data of an inbound submitted event)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    category: str = Field(min_length=1, max_length=64, description="A policy category.")
    summary: str = Field(min_length=1, max_length=500)
    description: str = Field(min_length=1, max_length=100_000)
    occurred_at: datetime | None = None
    location: str | None = Field(None, max_length=500)
    unit: str | None = Field(None, max_length=100)
    accused: list[str] = Field(default_factory=list, max_length=50)
    named: list[str] = Field(default_factory=list, max_length=100)
    channel: str | None = Field(None, max_length=64)

    @field_validator("accused", "named")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip() for v in values]
        if any(not v or len(v) > 200 for v in cleaned):
            raise ValueError("each entry is 1 to 200 characters")
        return cleaned

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("occurred_at needs a timezone (RFC 3339)")
        return value


class UnknownCategory(ValueError):
    """The category is not one of the policy's."""

    def __init__(self, category: str, known: list[str]) -> None:
        super().__init__(f"unknown category {category!r}; valid: {', '.join(known)}")
        self.category = category
        self.known = known


def submit_report(
    report: ReportInput,
    policy: Policy,
    *,
    incident_id: str,
    reporter: str | None,
    channel: str,
    actor: str,
    source: str,
    now: datetime,
    traceparent: str | None = None,
    event_id: str | None = None,
    causationid: str | None = None,
) -> Envelope:
    """The `incident.report.submitted.v1` event that opens an incident."""
    event_id = event_id or new_event_id()
    if report.category not in policy.categories:
        raise UnknownCategory(report.category, sorted(policy.categories))
    content = report.model_dump(mode="json", exclude={"channel"})
    data = ReportSubmitted(
        **content,
        reporter=reporter,
        channel=report.channel or channel,
        report_digest=report_digest(content),
    )
    return make_event(
        SUBMITTED,
        subject=incident_id,
        data=data,
        source=source,
        time=now,
        actor=actor,
        causationid=causationid,
        correlationid=event_id,
        traceparent=traceparent,
        event_id=event_id,
    )
