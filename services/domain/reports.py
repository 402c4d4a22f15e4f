"""Taking in a report: the command a reporter or system sends, and the event it becomes.

`ReportInput` is the report itself (also the data of an inbound submitted event);
`ReportRequest` is the body of `POST /v1/reports`, which may also name the reporter.
Who the reporter is follows from who is calling (`reporter_of`), never from the body
alone: a person reports as themselves, a system may name the person it reports for,
and an anonymous caller has no reporter.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Final, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.domain.envelope import Envelope, canonical_json, new_event_id
from services.domain.events import SUBMITTED, ReportSubmitted, make_event
from services.domain.incident import REPORT_FIELDS
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


PERSON_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,99}$"


class ReportRequest(ReportInput):
    """The body of `POST /v1/reports`: the report, and optionally who reports it.

    `reporter` may only be given by a system principal (the person it reports for)
    or by a person naming themselves; see `reporter_of`.
    """

    reporter: str | None = Field(
        None,
        max_length=100,
        pattern=PERSON_ID_PATTERN,
        description="Person id of the reporter. Only a system (`system:*`) may name"
        " someone; a person reports as themselves; anonymous callers leave it out.",
    )

    def report(self) -> ReportInput:
        """The report without the reporter (what the submitted event's content is)."""
        return ReportInput.model_validate(self.model_dump(exclude={"reporter"}))


class ReporterRefused(ValueError):
    """The caller may not name this reporter; `kind` says why.

    - `anonymous_claim`: an anonymous caller named a reporter;
    - `other_person`: a person named someone else;
    - `explicit_null`: a person asked for no reporter while authenticated.
    """

    def __init__(
        self, kind: Literal["anonymous_claim", "other_person", "explicit_null"], detail: str
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def reporter_of(
    caller: str | None,
    *,
    caller_is_system: bool,
    claimed: str | None,
    claimed_explicitly: bool,
) -> str | None:
    """Who the reporter of a report is, given the caller and the body's `reporter`.

    - anonymous caller: no reporter; naming one is refused (needs authentication);
    - system caller: the person it names, or anonymous when it names nobody;
    - person: always themselves. Naming someone else is forbidden, and an explicit
      `reporter: null` is refused rather than silently attributed: a person who wants
      to report anonymously must send no credentials at all.
    """
    if caller is None:
        if claimed is not None:
            raise ReporterRefused(
                "anonymous_claim",
                "An anonymous report has no reporter: authenticate to report under a name,"
                " or leave `reporter` out.",
            )
        return None
    if caller_is_system:
        return claimed
    if claimed_explicitly and claimed is None:
        raise ReporterRefused(
            "explicit_null",
            "An authenticated person reports as themselves. To report anonymously, send"
            " the report without an Authorization header.",
        )
    if claimed is not None and claimed != caller:
        raise ReporterRefused("other_person", "A person may only report as themselves.")
    return caller


HARASSMENT_CHANNEL: Final = "harassment"
HARASSMENT_CATEGORIES: Final = frozenset({"sexual_misconduct", "harassment"})


class WrongChannel(ValueError):
    """A report sent to the harassment channel that does not belong there."""


def for_harassment_channel(report: ReportRequest) -> ReportRequest:
    """The report as taken by `POST /v1/channels/harassment/reports` (channel `harassment`).

    Only `sexual_misconduct` and `harassment` reports belong there, and a body naming
    another channel is refused rather than overridden.
    """
    if report.category not in HARASSMENT_CATEGORIES:
        raise WrongChannel(
            f"the harassment channel takes {' or '.join(sorted(HARASSMENT_CATEGORIES))}"
            f" reports, not {report.category!r}; use POST /v1/reports"
        )
    if report.channel not in (None, HARASSMENT_CHANNEL):
        raise WrongChannel(
            f"this endpoint is the {HARASSMENT_CHANNEL!r} channel; leave `channel` out"
            f" instead of {report.channel!r}"
        )
    return report.model_copy(update={"channel": HARASSMENT_CHANNEL})


class UnknownCategory(ValueError):
    """The category is not one of the policy's."""

    def __init__(self, category: str, known: list[str]) -> None:
        super().__init__(f"unknown category {category!r}; valid: {', '.join(known)}")
        self.category = category
        self.known = known


class Protector(Protocol):
    """The incident's keys, as the submitted event needs them (infra's `IncidentKey`)."""

    def seal(self, field_name: str, value: str) -> str:
        """The sealed value of one field's plaintext."""
        ...

    def digest(self, content: bytes) -> str:
        """The salted digest (`sha256:<hex>`) of content a principal is shown."""
        ...

    def pseudonym(self, person_id: str) -> str:
        """The reporter's keyed pseudonym in this incident."""
        ...


NAMED_ACTOR: Final = "reporter:named"
"""The actor of a report a person made under their own name."""
SEALED_REPORT_TEXT: Final = ("summary", "description", "location")
"""Free-text fields of a report that are always sealed."""


def protected_content(
    content: dict[str, object], protect: Protector, known_people: Collection[str]
) -> dict[str, object]:
    """The report content as it is stored and published: free text sealed.

    Entries of `accused` and `named` that are person ids of the directory stay clear
    (triage routes by them); every other entry is a free-text name and is sealed.
    """
    out = dict(content)
    for name in SEALED_REPORT_TEXT:
        value = out.get(name)
        if isinstance(value, str):
            out[name] = protect.seal(name, value)
    for name in ("accused", "named"):
        values = out.get(name)
        if isinstance(values, list):
            out[name] = [v if v in known_people else protect.seal(name, str(v)) for v in values]
    return out


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
    protect: Protector,
    known_people: Collection[str] = (),
    traceparent: str | None = None,
    event_id: str | None = None,
    causationid: str | None = None,
) -> Envelope:
    """The `incident.report.submitted.v1` event that opens an incident, content sealed.

    `protect` holds the incident's keys: free text is sealed, the reporter travels as
    a pseudonym (and sealed in `reporter_identity`), and the digest is salted.
    `known_people` are the directory's person ids among the accused and named. A
    person reporting as themselves is the actor `reporter:named`: their id as the
    actor would name the reporter in clear on every topic and in the ledger.
    """
    if reporter is not None and actor == reporter:
        actor = NAMED_ACTOR
    event_id = event_id or new_event_id()
    if report.category not in policy.categories:
        raise UnknownCategory(report.category, sorted(policy.categories))
    content = report.model_dump(mode="json", exclude={"channel", "reporter"})
    shown = {name: content.get(name) for name in REPORT_FIELDS}
    data = ReportSubmitted.model_validate(
        {
            **protected_content(content, protect, known_people),
            "reporter": None if reporter is None else protect.pseudonym(reporter),
            "reporter_identity": (
                None if reporter is None else protect.seal("reporter_identity", reporter)
            ),
            "channel": report.channel or channel,
            "report_digest": protect.digest(canonical_json(shown)),
        }
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
