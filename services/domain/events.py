"""The event catalog: every event type, its topic and the shape of its `data`.

Each type is one class (an `Event`) that names its type string, topic and signers once:
`ReportSubmitted.TYPE`, `.TOPIC`, `.PRODUCERS`. Everything else is built from the
classes (`EVENT_CLASSES`): the catalog, `make schemas`' JSON Schemas and AsyncAPI
document, the broker's ACLs, the docs table. Write `Viewed.TYPE`, never the string.

Each type is versioned (`.v1`); a change of shape makes `.v2` plus an upcaster
(`services/domain/upcasting.py`), never an edit of `.v1`; an optional field may be added
to a version (docs/events.md, "Changing an event").

Personal content travels sealed (SPEC.md, issue #8). The fields keep their names and
their `.v1` types; their text is a *sealed value* on every topic but
`incident.inbound` (where other systems publish plaintext, which intake seals before
it stores or republishes anything):

    enc:v1:<base64(12-byte nonce || AES-256-GCM ciphertext || 16-byte tag)>

encrypted under the incident's data key with `<incident id> NUL <field name>` as
associated data, so a sealed value opens only for its incident and field. Sealed:
`summary`, `description`, `location`, free-text (non-directory) entries of `accused`
and `named`, `reporter_identity`, reporter and handler message texts, comment texts,
the closing `outcome` and amendments' `addendum` and free-text names. Person ids the
directory knows stay clear in `accused` and `named` (routing needs them), and the
reporter's person id travels only as a keyed pseudonym (`pn:<hex>`). `report_digest`
is an HMAC-SHA256 of the canonical content keyed by a per-incident salt. When an
incident is erased its key and salt are destroyed: its sealed values never open again.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from services.domain.envelope import Envelope, new_event_id
from services.domain.parsing import json_error
from services.domain.upcasting import UPCASTERS, Upcasters


class Topic(StrEnum):
    """Kafka topics, named in SPEC.md."""

    INBOUND = "incident.inbound"
    REPORTS = "incident.reports"
    TRIAGE = "incident.triage"
    ACTIVITY = "incident.activity"
    ESCALATIONS = "incident.escalations"
    DIRECTORY = "directory.changes"
    DEADLETTER = "incident.deadletter"
    CHECKPOINTS = "audit.checkpoints"
    INBOUND_RESULTS = "incident.inbound.results"


_READING: Final = {"reading": True}
"""Validation context of the read path (`data_of`, `Event.read`)."""


class EventData(BaseModel):
    """Base of every payload and of the objects inside one.

    Writing (`make_event`), an unknown field is refused, so a typo never reaches a topic.
    Reading (`data_of`, `Event.read`), unknown fields are ignored: a newer producer may
    already write an optional field this code does not know yet (docs/events.md,
    "Changing an event").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _tolerant_read(cls, value: Any, info: ValidationInfo) -> Any:
        if info.context is _READING and isinstance(value, dict):
            known = cls.model_fields
            if any(name not in known for name in value):
                return {name: v for name, v in value.items() if name in known}
        return value


_INTAKE_OR_AUDIT = frozenset({"intake", "audit"})  # both record views, refusals, disclosures


class Event(EventData):
    """Base of an event's `data`: the class names its type and topic, once, in its
    class line (`class Viewed(Event, type=..., topic=...)`).

    `TYPE` is the versioned type string (`incident.report.submitted.v1`), `TOPIC` the
    topic it is published on, `PRODUCERS` the services whose keys may sign it (empty:
    the owner of the topic). The catalog, the JSON Schemas, the AsyncAPI document, the
    broker's ACLs and the docs table are all built from these (`EVENT_CLASSES`).
    """

    TYPE: ClassVar[str]
    TOPIC: ClassVar[Topic]
    PRODUCERS: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(
        cls,
        *,
        type: str | None = None,
        topic: Topic | None = None,
        producers: frozenset[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """`class Viewed(Event, type="incident.viewed.v1", topic=Topic.ACTIVITY)` sets
        `TYPE` and `TOPIC` (and `PRODUCERS`, given `producers=`); what a subclass does not
        give it inherits."""
        super().__init_subclass__(**kwargs)
        if type is not None:
            cls.TYPE = type
        if topic is not None:
            cls.TOPIC = Topic(topic)  # a ValueError at import for a topic that is not one
        if producers is not None:
            cls.PRODUCERS = producers

    @classmethod
    def read(cls, envelope: Envelope, upcasters: Upcasters = UPCASTERS) -> Self:
        """The envelope's data as this class, upcast from an older version of the type,
        or InvalidEvent (another type; data this class cannot hold)."""
        event_type, data = upcasters.upcast(envelope.type, envelope.data, until=cls.TYPE)
        if event_type != cls.TYPE:
            raise InvalidEvent(f"{envelope.type} is not read as {cls.TYPE}")
        try:
            return cls.model_validate(data, context=_READING)
        except ValidationError as exc:
            raise InvalidEvent(f"invalid data for {envelope.type}: {explain(exc)}") from exc


PrincipalId = str
Digest = str  # "sha256:<hex>"
SEALED_PREFIX = "enc:v1:"
"""Start of a sealed value (see the module docstring)."""
_SEALED = (
    " Sealed (`enc:v1:<base64(nonce || ciphertext || tag)>`, AES-256-GCM under the"
    " incident's data key, associated data `<incident id> NUL <field>`) on every topic"
    " but incident.inbound, where it is plaintext."
)


class PersonMatch(EventData):
    """How intake resolved one free-text name of a report against the directory.

    Recorded for every free-text entry of `accused` / `named` (an entry picked from the
    directory is already a person id and needs no match). `how`:

    - `exact`, `normalised`, `alternative_name`: exactly one person matched; their id
      replaces the text in `accused` / `named` (clear, routing needs it);
    - `none`: nobody matched (an outsider, a typo): the sealed text stays in the list;
    - `ambiguous`: more than one person matched; `candidates` lists them all (each is
      treated as conflicted) and the sealed text stays in the list.

    A report with a `none` or `ambiguous` match is *conflict-unresolved*: triage routes
    it only to the policy's independent roles until one of them confirms or corrects
    the people (`incident.people.confirmed.v1`).
    """

    field: Literal["accused", "named"] = Field(description="Which list the name was given in.")
    text: str = Field(description="The name as the reporter wrote it." + _SEALED)
    how: Literal["exact", "normalised", "alternative_name", "none", "ambiguous"]
    person_id: PrincipalId | None = Field(
        None, description="The one person matched (exact, normalised, alternative_name)."
    )
    candidates: list[PrincipalId] = Field(
        default_factory=list, description="Every person the name matched (ambiguous)."
    )


class ReportSubmitted(Event, type="incident.report.submitted.v1", topic=Topic.REPORTS):
    """A report entered the system (from a person, a system, or anonymously)."""

    category: str = Field(description="Report category, one of the policy's categories.")
    summary: str = Field(description="One-line summary." + _SEALED)
    description: str = Field(description="What happened, in the reporter's words." + _SEALED)
    occurred_at: datetime | None = Field(None, description="When it happened, if known.")
    location: str | None = Field(None, description="Where it happened, if known." + _SEALED)
    unit: str | None = Field(None, description="Business unit concerned, if known.")
    accused: list[str] = Field(
        default_factory=list,
        description="Person ids (clear) or free-text names (each sealed, but on incident.inbound).",
    )
    named: list[str] = Field(
        default_factory=list,
        description="Others involved: person ids (clear) or free-text names (each sealed,"
        " but on incident.inbound).",
    )
    reporter: str | None = Field(
        None,
        description="The reporter: null if anonymous. On incident.inbound, the person id;"
        " everywhere else a keyed pseudonym `pn:<32 hex>` (HMAC-SHA256 of incident id and"
        " person id under a key intake and triage hold) that triage matches against the"
        " directory and nobody can read back.",
    )
    reporter_identity: str | None = Field(
        None,
        description="The reporter's person id, sealed (field `reporter_identity`); only"
        " an identity custodian is shown it. Null if anonymous; absent on incident.inbound.",
    )
    channel: str = Field("web", description="How it arrived: web, api, kafka, hotline...")
    report_digest: Digest = Field(
        description="`sha256:<hex>`: HMAC-SHA256 of the canonical report content (what a"
        " principal is shown) keyed by the incident's salt; comparable across the"
        " incident's events, not guessable from the content."
    )
    people_matches: list[PersonMatch] = Field(
        default_factory=list,
        description="How each free-text name of `accused` and `named` was resolved against"
        " the directory (absent on incident.inbound: intake resolves).",
    )


class ReportAmended(Event, type="incident.report.amended.v1", topic=Topic.REPORTS):
    """The report gained information after submission."""

    accused_added: list[str] = Field(
        default_factory=list, description="Person ids (clear) or free-text names (sealed)."
    )
    named_added: list[str] = Field(
        default_factory=list, description="Person ids (clear) or free-text names (sealed)."
    )
    addendum: str | None = Field(None, description="Text added to the report." + _SEALED)
    report_digest: Digest = Field(description="Digest of the amended report version.")
    people_matches: list[PersonMatch] = Field(
        default_factory=list,
        description="How each free-text name added was resolved against the directory.",
    )


class PeopleConfirmed(Event, type="incident.people.confirmed.v1", topic=Topic.REPORTS):
    """A holder of an independent role confirmed or corrected who a report concerns.

    Published by intake, recorded before the ordinary chain may see anything of a
    conflict-unresolved report. `accused` and `named` are the complete lists of
    directory person ids from now on (they replace every free-text entry; an entry the
    holder found to be nobody in the directory is counted in `outsiders`). Triage then
    decides again (`incident.triaged.v1` with a higher `revision`) with these people.
    """

    principal: PrincipalId = Field(description="Who confirmed (an independent role holder).")
    accused: list[PrincipalId] = Field(default_factory=list)
    named: list[PrincipalId] = Field(default_factory=list)
    outsiders: int = Field(0, ge=0, description="Names found to be nobody in the directory.")
    note: str | None = Field(None, description="Why, in the holder's words." + _SEALED)


class Recused(Event, type="incident.recused.v1", topic=Topic.ACTIVITY):
    """A handler declared a conflict of interest on an incident routed to her.

    Published by intake. She is excluded from then on (rule `recused`); triage asks the
    next eligible person at once (`incident.reassigned.v1`).
    """

    principal: PrincipalId
    reason: str | None = Field(None, description="Why, in her words." + _SEALED)


class ReassignmentOrdered(Event, type="incident.reassignment.ordered.v1", topic=Topic.ACTIVITY):
    """A principal with a reassigning role (policy `conflicts.reassign_roles`) moved the
    incident from some people to others, with a reason.

    Published by intake after checking the caller's role and that every person in `to`
    passes the incident's exclusions; triage checks the exclusions again against the
    directory and publishes the resulting `incident.reassigned.v1` (rule `reassigned`
    for the people removed).
    """

    principal: PrincipalId = Field(description="Who ordered the reassignment.")
    to: list[PrincipalId] = Field(min_length=1, description="Who holds the incident now.")
    remove: list[PrincipalId] = Field(
        default_factory=list, description="Who stops holding it (excluded from then on)."
    )
    reason: str = Field(description="Why." + _SEALED)


class ReporterMessage(Event, type="incident.reporter.message.v1", topic=Topic.REPORTS):
    """A message between the reporter and the handlers."""

    direction: Literal["from_reporter", "to_reporter"]
    author: str = Field(description="`reporter`, or the handler's principal id.")
    text: str = Field(description="The message." + _SEALED)


AttachmentAudience = Literal["handlers", "reporter"]


class AttachmentAdded(Event, type="incident.attachment.added.v1", topic=Topic.REPORTS):
    """A file was attached to the report (docs/attachments.md): listed by its digest,
    size and type; the content is kept sealed in chunks outside the event, the name
    sealed here. Never the content or the name in clear."""

    attachment_id: str = Field(description="The file's id (a UUID).")
    digest: Digest = Field(
        description="`sha256:<hex>`: HMAC-SHA256 of the plaintext under the incident's digest"
        " salt (like `report_digest`: no guess can be tested once the key is destroyed)."
    )
    size: int = Field(ge=1, description="Bytes of the plaintext.")
    media_type: str = Field(description="The type found in the content (never from the name).")
    name: str = Field(description="The file's base name as sent." + _SEALED)
    author: str = Field(description="`reporter`, or the handler's principal id.")
    audience: AttachmentAudience = Field(
        "handlers",
        description="`reporter`: a handler sent it to the reporter (she may download it);"
        " the reporter's own files are always hers.",
    )
    message_id: str | None = Field(
        None, description="The id of the message event it came with, if any."
    )


class AttachmentDownloaded(Event, type="incident.attachment.downloaded.v1", topic=Topic.ACTIVITY):
    """Someone was sent a file's content (recorded before the first byte)."""

    principal: str = Field(description="`reporter`, or the principal's id.")
    attachment_id: str


class ChainLevel(EventData):
    level: int = Field(ge=1)
    role: str
    recipients: list[PrincipalId]
    acknowledge_within: int = Field(ge=1, description="Seconds this level has to acknowledge.")


class Exclusion(EventData):
    principal: PrincipalId
    rule: str = Field(description="The conflict rule that excluded this principal.")


class Triaged(Event, type="incident.triaged.v1", topic=Topic.TRIAGE):
    """Triage's decision: severity, who is asked in which order, who is excluded."""

    category: str
    severity: str
    policy_version: str
    chain: list[ChainLevel]
    excluded: list[Exclusion] = Field(default_factory=list)
    deadlines: dict[str, datetime] = Field(default_factory=dict)
    repeat_last_every: int | None = Field(
        None, ge=1, description="Seconds between repeats to the last level until acknowledged."
    )
    report_digest: Digest | None = Field(
        None, description="Digest of the report version triaged (what the chain is shown)."
    )
    revision: int = Field(
        1,
        ge=1,
        description="1 for the first decision; a later decision of the same incident (after"
        " `incident.people.confirmed.v1`) has a higher one and replaces the chain from its"
        " level 1. Exclusions only ever grow.",
    )
    conflict_unresolved: bool = Field(
        False,
        description="A name in the report matched nobody or several people: the chain holds"
        " only the policy's independent roles until the people are confirmed.",
    )
    independent: list[PrincipalId] = Field(
        default_factory=list,
        description="Eligible holders of the policy's independent roles (after exclusions):"
        " asked when the chain runs out with nobody eligible; when empty too, escalation"
        " raises `incident.escalation.stalled.v1`.",
    )


class Assigned(Event, type="incident.assigned.v1", topic=Topic.TRIAGE):
    level: int = Field(ge=1)
    principals: list[PrincipalId]


class Reassigned(Event, type="incident.reassigned.v1", topic=Topic.TRIAGE):
    removed: list[Exclusion] = Field(default_factory=list)
    added: list[PrincipalId] = Field(default_factory=list)


class Notified(
    Event,
    type="incident.notified.v1",
    topic=Topic.ACTIVITY,
    producers=frozenset({"triage", "escalation"}),
):
    principal: PrincipalId
    channel: str
    level: int = Field(ge=0)
    report_digest: Digest


class Viewed(Event, type="incident.viewed.v1", topic=Topic.ACTIVITY, producers=_INTAKE_OR_AUDIT):
    principal: PrincipalId
    report_digest: Digest


class Acknowledged(Event, type="incident.acknowledged.v1", topic=Topic.ACTIVITY):
    principal: PrincipalId
    level: int = Field(ge=0)


class Commented(Event, type="incident.commented.v1", topic=Topic.ACTIVITY):
    principal: PrincipalId
    text: str = Field(description="The comment." + _SEALED)


class StatusChanged(Event, type="incident.status.changed.v1", topic=Topic.ACTIVITY):
    principal: PrincipalId
    status: Literal["investigating", "resolved", "closed"]
    outcome: str | None = Field(None, description="The outcome (when closed)." + _SEALED)


class AccessDenied(
    Event, type="incident.access.denied.v1", topic=Topic.ACTIVITY, producers=_INTAKE_OR_AUDIT
):
    """A refused action. `reason` is one word for every conflict rule (`excluded`), so
    the record never singles out the reporter; the rule itself is `rule`, sealed."""

    principal: PrincipalId
    action: str
    reason: str | None = None
    rule: str | None = Field(
        None,
        description="The conflict rule that excluded the principal, when intake knew it"
        " from the incident's own events (identity custodian only)." + _SEALED,
    )


class IdentityDisclosed(
    Event, type="incident.identity.disclosed.v1", topic=Topic.ACTIVITY, producers=_INTAKE_OR_AUDIT
):
    """An identity custodian was shown who reported (recorded before the answer)."""

    principal: PrincipalId = Field(description="The identity custodian shown the reporter.")
    reason: str = Field(description="Why the custodian asked (their words, sealed)." + _SEALED)


class LegalHoldPlaced(Event, type="incident.legal_hold.placed.v1", topic=Topic.ACTIVITY):
    """An auditor suspended the incident's erasure (a legal hold)."""

    principal: PrincipalId
    reason: str = Field(description="Why (the matter or case reference)." + _SEALED)


class LegalHoldReleased(Event, type="incident.legal_hold.released.v1", topic=Topic.ACTIVITY):
    """An auditor lifted a legal hold: erasure may proceed when retention has passed."""

    principal: PrincipalId
    reason: str = Field(description="Why." + _SEALED)


class Erased(Event, type="incident.erased.v1", topic=Topic.ACTIVITY):
    """The incident's data key and salt were destroyed: its sealed content is gone for good.

    Everything else stays: the events, their hashes and signatures, who knew and when.
    """

    reason: Literal["retention_expired"]
    category: str | None = Field(description="The category whose retention applied.")
    closed_at: datetime = Field(description="When the incident was closed.")
    retain_until: datetime = Field(description="closed_at plus the category's retention.")


class DecisionOverdue(Event, type="incident.decision.overdue.v1", topic=Topic.ACTIVITY):
    """No triage decision (`incident.triaged.v1`) reached intake within
    `INCIDENTS_DECISION_WITHIN` of the report's acceptance (triage down, or the report
    dead-lettered there): raised once per report by intake, for operations
    (docs/operations.md, "A report nobody decided"). Content-free: the incident id (the
    subject) and times, never the category, unit, people or text; nobody in the
    directory is told (only triage may choose who, without a conflict)."""

    submitted_at: datetime = Field(description="When intake accepted the report.")
    due_at: datetime = Field(
        description="When triage's decision was due (submitted_at plus the limit)."
    )


class Escalated(Event, type="incident.escalated.v1", topic=Topic.ESCALATIONS):
    level: int = Field(ge=1)
    recipients: list[PrincipalId]
    reason: Literal["not_acknowledged", "nobody_eligible", "delivery_failed"]
    deadline: datetime


class EscalationStalled(Event, type="incident.escalation.stalled.v1", topic=Topic.ESCALATIONS):
    """Nobody is left to ask: every level, and the independent roles, are empty or excluded.

    An alert for operations; repeated every `repeat_every` seconds until someone acts
    (a reassignment, a recusal's replacement, a directory change).
    """

    level: int = Field(ge=0, description="The level the chain stopped at.")
    reason: Literal["nobody_eligible"] = "nobody_eligible"
    roles_tried: list[str] = Field(
        default_factory=list, description="The roles asked last (the independent roles)."
    )
    repeat_every: int | None = Field(None, ge=1, description="Seconds until the alert repeats.")


class AcknowledgementIgnored(
    Event, type="incident.acknowledgement.ignored.v1", topic=Topic.ESCALATIONS
):
    """Escalation ignored an acknowledgement: the principal was excluded (a conflict, a
    recusal, a reassignment) or not routed at the moment it was applied."""

    principal: PrincipalId
    level: int = Field(ge=0)
    reason: Literal["excluded", "not_routed"]


class EscalationCleared(Event, type="incident.escalation.cleared.v1", topic=Topic.ESCALATIONS):
    level: int = Field(ge=0)
    principal: PrincipalId


class ReminderDue(Event, type="incident.reminder.due.v1", topic=Topic.ESCALATIONS):
    clock: str = Field(description="Which legal clock: reporter_acknowledgement, feedback...")
    due_at: datetime


class DeadlineBreached(Event, type="incident.deadline.breached.v1", topic=Topic.ESCALATIONS):
    """A legal clock reached its deadline unsatisfied."""

    clock: str = Field(description="Which legal clock: reporter_acknowledgement, feedback...")
    due_at: datetime


NoticeAdapter = Literal["log", "webhook", "smtp"]
NoticeFailure = Literal["refused", "unreachable", "no_address", "gave_up", "error"]


class NoticeDelivered(Event, type="incident.notice.delivered.v1", topic=Topic.ESCALATIONS):
    """The adapter confirmed a queued notice (`incident.notified.v1`): a webhook answered
    2xx, an SMTP server accepted the mail, or the log adapter wrote its line (which tells
    nobody: docs/notifications.md)."""

    notice_id: str = Field(description="The event id of the notice's incident.notified.v1.")
    principal: PrincipalId
    level: int = Field(ge=0)
    channel: str = Field(description="The notice's channel: triage, escalation, reminder, breach.")
    adapter: NoticeAdapter
    attempts: int = Field(ge=0, description="The adapter's attempts, retries included.")


class NoticeFailed(Event, type="incident.notice.failed.v1", topic=Topic.ESCALATIONS):
    """The adapter gave up on a queued notice, after its own retries. `reason` is a class,
    `detail` the HTTP status or SMTP reply code class or error type: never an address, a
    URL, a server's text or a secret."""

    notice_id: str = Field(description="The event id of the notice's incident.notified.v1.")
    principal: PrincipalId
    level: int = Field(ge=0)
    channel: str = Field(description="The notice's channel: triage, escalation, reminder, breach.")
    adapter: NoticeAdapter | None = Field(
        None, description="The adapter that gave up (none when the worker gave up itself)."
    )
    attempts: int = Field(ge=0, description="The adapter's attempts, retries included.")
    reason: NoticeFailure
    detail: str | None = Field(None, max_length=80, description="e.g. HTTP 400, ConnectTimeout.")


class PersonRecord(EventData):
    """One person's whole record, as `directory.person.upserted.v1` carries it."""

    person_id: PrincipalId
    name: str | None = None
    alternative_names: list[str] = Field(
        default_factory=list, description="Other names (another script, a former name)."
    )
    email: str | None = None
    unit: str | None = None
    manager_id: PrincipalId | None = None
    roles: list[str] = Field(default_factory=list)


class PersonUpserted(
    PersonRecord, Event, type="directory.person.upserted.v1", topic=Topic.DIRECTORY
):
    pass


MAX_PEOPLE_PER_EVENT = 500
"""People in one `directory.people.imported.v1` at most (docs/directory-sync.md)."""


class PeopleImported(Event, type="directory.people.imported.v1", topic=Topic.DIRECTORY):
    """A bulk import added or changed these people: the same as one
    `directory.person.upserted.v1` per person, in this order (one event per chunk of an
    import instead of one per person; a change through SCIM or the admin API is still a
    `directory.person.upserted.v1`)."""

    people: list[PersonRecord] = Field(
        min_length=1,
        max_length=MAX_PEOPLE_PER_EVENT,
        description="Each person's whole new record, in the order they apply.",
    )


class RoleAssigned(Event, type="directory.role.assigned.v1", topic=Topic.DIRECTORY):
    person_id: PrincipalId
    role: str
    proposed_by: PrincipalId | None = Field(
        None, description="The admin who proposed a privileged role (the actor approved it)."
    )
    grant_id: str | None = Field(None, description="The approved proposal, if any.")


class RoleProposed(Event, type="directory.role.proposed.v1", topic=Topic.DIRECTORY):
    """An admin proposed a privileged role: assigned only once a second admin approves."""

    grant_id: str
    person_id: PrincipalId
    role: str
    proposed_by: PrincipalId


class RoleRevoked(Event, type="directory.role.revoked.v1", topic=Topic.DIRECTORY):
    person_id: PrincipalId
    role: str


class ReadRecorded(
    Event, type="audit.read.recorded.v1", topic=Topic.ACTIVITY, producers=frozenset({"audit"})
):
    """An auditor read through audit's API (recorded once per request, before the answer)."""

    principal: PrincipalId
    route: str = Field(description="entries, timeline, knowledge, state or console.")
    incident_id: str | None = None
    start: int | None = Field(None, ge=0, description="First index read (entries).")
    end: int | None = Field(None, ge=0, description="End of the range read (entries).")
    withheld: list[str] = Field(
        default_factory=list,
        description="Written empty: a record every auditor reads must not say which incidents"
        " exclude the reader (review D4). Older records named them here; a raw read withholds"
        " such a record from the readers a named incident excludes.",
    )
    withheld_entries: int = Field(
        0, ge=0, description="Entries of the range withheld from the reader (entries)."
    )


class InputRejected(Event, type="incident.input.rejected.v1", topic=Topic.DEADLETTER):
    """Input that could not be accepted: the original bytes and why (dead-letter record)."""

    reason: str
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    original_b64: str = Field(description="The original record value, base64.")


class InboundAccepted(Event, type="incident.inbound.accepted.v1", topic=Topic.INBOUND_RESULTS):
    """Intake took an inbound report (docs/inbound.md): the sender's event opened
    `incident_id`. Keyed by the sender's event id on incident.inbound.results; the same
    answer again for a resend."""

    event_id: str = Field(description="The sender's event id (the record key).")
    system: str = Field(description="The registered system that sent it.")
    incident_id: str = Field(description="UUIDv5 of `<system>/<event id>` (docs/inbound.md).")


class InboundRejected(Event, type="incident.inbound.rejected.v1", topic=Topic.INBOUND_RESULTS):
    """Intake refused an inbound event (also dead-lettered): why, never the input."""

    event_id: str | None = Field(description="The sender's event id, when readable.")
    system: str | None = Field(description="The authenticated system, if it was one.")
    reason: str = Field(description="Where and what kind of error, e.g. `out of scope`.")


class CheckpointSigned(Event, type="audit.checkpoint.signed.v1", topic=Topic.CHECKPOINTS):
    tree_size: int = Field(ge=0)
    root_hash: str
    timestamp: datetime
    key_id: str
    checkpoint: str


class CheckpointCosigned(Event, type="audit.checkpoint.cosigned.v1", topic=Topic.CHECKPOINTS):
    """A witness cosigned a signed head (c2sp.org/tlog-cosignature; docs/witness.md)."""

    tree_size: int = Field(ge=0)
    root_hash: str
    witness: str = Field(description="The witness's verifier key string.")
    timestamp: datetime = Field(description="The cosignature's own timestamp.")
    checkpoint: str = Field(
        description="The signed note with every cosignature held for this size appended."
    )


SERVICES: tuple[str, ...] = ("intake", "triage", "escalation", "audit")
"""The services that publish events, each with its own signing key (docs/event-signing.md)."""
_TOPIC_PRODUCERS: dict[Topic, frozenset[str]] = {
    Topic.INBOUND: frozenset(),  # other systems' records: not signed by a service
    Topic.REPORTS: frozenset({"intake"}),
    Topic.TRIAGE: frozenset({"triage"}),
    Topic.ACTIVITY: frozenset({"intake"}),
    Topic.ESCALATIONS: frozenset({"escalation"}),
    Topic.DIRECTORY: frozenset({"intake"}),
    Topic.DEADLETTER: frozenset(SERVICES),  # every service dead-letters its own input
    Topic.CHECKPOINTS: frozenset({"audit"}),
    Topic.INBOUND_RESULTS: frozenset({"intake"}),
}


@dataclass(frozen=True)
class EventType:
    """One entry of the catalog.

    `producers` are the services that may publish the type: a consumer accepts an event
    only when a key of one of them signed it. By default the owner of its topic.
    """

    name: str
    topic: Topic
    data: type[Event]
    producers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.producers:
            object.__setattr__(self, "producers", _TOPIC_PRODUCERS[self.topic])

    @classmethod
    def of(cls, event: type[Event]) -> EventType:
        """The entry of an event class (what its `TYPE`, `TOPIC`, `PRODUCERS` say)."""
        return cls(event.TYPE, event.TOPIC, event, event.PRODUCERS)


EVENT_CLASSES: tuple[type[Event], ...] = (
    ReportSubmitted,
    ReportAmended,
    PeopleConfirmed,
    ReporterMessage,
    AttachmentAdded,
    Triaged,
    Assigned,
    Reassigned,
    Notified,
    Viewed,
    Acknowledged,
    Commented,
    StatusChanged,
    AccessDenied,
    AttachmentDownloaded,
    Recused,
    ReassignmentOrdered,
    IdentityDisclosed,
    LegalHoldPlaced,
    LegalHoldReleased,
    Erased,
    DecisionOverdue,
    Escalated,
    EscalationCleared,
    EscalationStalled,
    AcknowledgementIgnored,
    ReminderDue,
    DeadlineBreached,
    NoticeDelivered,
    NoticeFailed,
    PersonUpserted,
    PeopleImported,
    RoleAssigned,
    RoleRevoked,
    RoleProposed,
    InputRejected,
    InboundAccepted,
    InboundRejected,
    CheckpointSigned,
    ReadRecorded,
    CheckpointCosigned,
)
"""Every event class, in the order the catalog, the schemas and the docs list them."""
CATALOG: dict[str, EventType] = {c.TYPE: EventType.of(c) for c in EVENT_CLASSES}
"""Type -> its entry, built from the classes (the one place each type is named)."""
DIRECTORY_KEY = "directory"
"""The Kafka record key of every `directory.changes` event (`record_key`)."""


def record_key(envelope: Envelope) -> str:
    """The Kafka record key of an event: its subject, so each incident's events stay in
    order on one partition; but one key for the whole directory, so its events keep
    one order for every consumer (a bulk import's chunk names many people: keyed by
    person, a later change of one of them could be read before the chunk)."""
    if CATALOG[envelope.type].topic is Topic.DIRECTORY:
        return DIRECTORY_KEY
    return envelope.subject


class InvalidEvent(ValueError):
    """The bytes or dict are not a valid event of this catalog; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def explain(exc: ValidationError) -> str:
    """Why input is invalid, by place and message only: never the input itself.

    A reason is stored and logged (dead letters). `str(exc)` quotes each value
    (`input_value=...`, a report's text); the messages of pydantic's checks and of this
    code's validators do not, e.g. `summary: String should have at most 500 characters`.
    """
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(event)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def make_event(
    type_: str,
    *,
    subject: str,
    data: EventData | dict[str, Any],
    source: str,
    time: datetime,
    actor: str | None = None,
    causationid: str | None = None,
    correlationid: str | None = None,
    traceparent: str | None = None,
    event_id: str | None = None,
) -> Envelope:
    """Build a valid event of a catalog type; the data is validated against its model."""
    entry = CATALOG[type_]
    model = data if isinstance(data, EventData) else entry.data.model_validate(data)
    if not isinstance(model, entry.data):
        raise TypeError(f"{type_} carries {entry.data.__name__}, not {type(model).__name__}")
    return Envelope(
        id=event_id or new_event_id(),
        source=source,
        type=type_,
        time=time,
        subject=subject,
        data=model.model_dump(mode="json"),
        actor=actor,
        causationid=causationid,
        correlationid=correlationid,
        traceparent=traceparent,
    )


def parse_envelope(raw: bytes | str | dict[str, Any]) -> Envelope:
    """Parse structured-mode bytes (or a decoded dict) into an envelope, or raise InvalidEvent."""
    if isinstance(raw, dict):
        value: Any = raw
    else:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:  # where, never what: the input may be a report
            raise InvalidEvent(f"not JSON: {json_error(exc.msg, exc.doc, exc.pos)}") from exc
        except UnicodeDecodeError as exc:
            raise InvalidEvent(f"not JSON: not UTF-8 at byte {exc.start + 1}") from exc
        except (RecursionError, ValueError) as exc:  # absurd nesting, 5,000-digit numbers
            raise InvalidEvent(f"not JSON this system accepts: {type(exc).__name__}") from exc
    if not isinstance(value, dict):
        raise InvalidEvent("a CloudEvent in structured mode is a JSON object")
    try:
        return Envelope.model_validate(value)
    except ValidationError as exc:
        raise InvalidEvent(f"not a valid CloudEvent: {explain(exc)}") from exc
    except ValueError as exc:
        raise InvalidEvent(f"not a valid CloudEvent: {exc}") from exc


def parse_event(raw: bytes | str | dict[str, Any]) -> tuple[Envelope, Event]:
    """Parse and validate an event of a known type, data included."""
    envelope = parse_envelope(raw)
    return envelope, data_of(envelope)


def data_of(envelope: Envelope) -> Event:
    """The typed payload of an envelope, as the newest version of its type (upcast on
    read, `UPCASTERS`), or InvalidEvent. Unknown fields are ignored (`EventData`)."""
    entry = CATALOG.get(UPCASTERS.current(envelope.type))
    if entry is None or envelope.type not in CATALOG:
        raise InvalidEvent(f"unknown event type {envelope.type!r}")
    _, data = UPCASTERS.upcast(envelope.type, envelope.data)
    try:
        return entry.data.model_validate(data, context=_READING)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid data for {envelope.type}: {explain(exc)}") from exc


def is_sealed(value: object) -> bool:
    """True for a sealed value (`enc:v1:...`)."""
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


UNREADABLE = "[erased]"
"""What a sealed value reads as when its key is gone (the incident was erased)."""


READER_FIELDS: frozenset[str] = frozenset(
    {
        "summary",
        "description",
        "location",
        "accused",
        "named",
        "accused_added",
        "named_added",
        "addendum",
        "text",
        "outcome",
        "reason",
        "note",
        "people_matches",
        "people_matches.text",
        "name",
    }
)
"""The sealed fields opened for a principal allowed to read the report (a handler, an
auditor): the content. Never `reporter_identity`, and never the `reason` of
`incident.identity.disclosed.v1` (see `openable`). A field inside the objects of a list
is named `<list>.<field>` (`people_matches.text`), as its associated data is."""
CUSTODIAN_FIELDS: frozenset[str] = READER_FIELDS | {"reporter_identity", "rule"}
"""The same, who reported, and the rule of a refusal (which may name the reporter): only
on an identity custodian's recorded path."""


def openable(event_type: str, fields: frozenset[str]) -> frozenset[str]:
    """The fields of `fields` that may be opened in an event of `event_type`.

    A custodian's reason for asking who reported stays sealed for everyone: it may say
    more about the reporter than the answer.
    """
    return fields - {"reason"} if event_type == IdentityDisclosed.TYPE else fields


def open_data(
    data: dict[str, Any],
    open_field: Callable[[str, str], str | None],
    fields: frozenset[str],
) -> dict[str, Any]:
    """A copy of `data` with the sealed values (top level, in a list, or in the objects of
    a list: `<list>.<field>`) of `fields` opened.

    An allow-list: a sealed value of any other field stays sealed. `open_field(field,
    sealed)` returns the plaintext, or None when it cannot (the key is destroyed): the
    value then reads `UNREADABLE`.
    """

    def one(name: str, value: Any) -> Any:
        if name not in fields:
            return value
        if is_sealed(value):
            opened = open_field(name, value)
            return UNREADABLE if opened is None else opened
        if isinstance(value, list):
            return [one(name, v) for v in value]
        if isinstance(value, dict):
            return {k: one(f"{name}.{k}", v) for k, v in value.items()}
        return value

    return {name: one(name, value) for name, value in data.items()}


def open_envelope(
    envelope: Envelope,
    open_field: Callable[[str, str], str | None],
    fields: frozenset[str] = READER_FIELDS,
) -> Envelope:
    """The same event with the sealed values of `fields` opened (see `openable`)."""
    if not any(is_sealed(v) or isinstance(v, list) for v in envelope.data.values()):
        return envelope
    allowed = openable(envelope.type, fields)
    return envelope.model_copy(update={"data": open_data(envelope.data, open_field, allowed)})


def b64(raw: bytes) -> str:
    """Base64 text of raw bytes (for dead-letter records)."""
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    """Bytes from base64 text; InvalidEvent if it is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise InvalidEvent("not base64") from exc
