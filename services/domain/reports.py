"""Taking in a report: the command a reporter or system sends, and the event it becomes.

`ReportInput` is the report itself (also the data of an inbound submitted event);
`ReportRequest` is the body of `POST /v1/reports`, which may also name the reporter.
Who the reporter is follows from who is calling (`reporter_of`), never from the body
alone: a person reports as themselves, a system may name the person it reports for,
and an anonymous caller has no reporter.

One validation model wherever a report enters (HTTP, the console, `incident.inbound`):
`ReportInput` refuses what the rest of the system cannot carry, so a report intake
accepts is always decided. No text may hold a NUL, another control character (a
description may hold tabs and line breaks) or a lone surrogate: triage stores the
report as JSONB, which refuses `\\u0000`, and a surrogate cannot be encoded at all.

People: each entry of `accused` / `named` is a person id the directory knows, or a
free-text name (`resolve_people`, see docs/people-and-names.md). A plain string that
is a known person id is that person; any other string is a name. `{"id": ...}` insists
on an id (an unknown one is refused) and `{"name": ...}` on a name.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Final, Literal, NamedTuple, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
)

from services.domain.envelope import Envelope, canonical_json, new_event_id
from services.domain.events import PersonMatch, ReportSubmitted, make_event
from services.domain.incident import REPORT_FIELDS
from services.domain.names import MAX_NAME_LENGTH, NameMatch, is_valid_name, normalise, resolve
from services.domain.parsing import parse_rfc3339
from services.domain.policy import Policy

_NOT_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def one_line(value: str) -> str:
    """`value` if it has no control character and no lone surrogate, else ValueError."""
    if _NOT_ONE_LINE.search(value):
        raise ValueError("control characters are not accepted here")
    return value


def text(value: str) -> str:
    """`value` if its only control characters are tabs and line breaks, else ValueError."""
    if _NOT_TEXT.search(value):
        raise ValueError("control characters other than tabs and line breaks are not accepted")
    return value


OneLine = Annotated[str, AfterValidator(one_line)]
Text = Annotated[str, AfterValidator(text)]
NAME_RULE: Final = (
    f"each name is 1 to {MAX_NAME_LENGTH} characters, with no control characters,"
    " and has a letter or digit"
)


def _name(value: str) -> str:
    value = value.strip()
    if not is_valid_name(value):
        raise ValueError(NAME_RULE)
    return value


Name = Annotated[str, AfterValidator(_name)]
PERSON_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,99}$"


class PersonById(BaseModel):
    """A person picked from the directory (the people search): an unknown id is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(max_length=100, pattern=PERSON_ID_PATTERN, description="A person id.")


class PersonByName(BaseModel):
    """A name as the reporter writes it: always resolved as a name, never taken as an id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(description="A free-text name (" + NAME_RULE + ").")


def _kind_of_entry(value: object) -> str | None:
    if isinstance(value, str):
        return "name"
    if isinstance(value, PersonById) or (isinstance(value, dict) and "id" in value):
        return "id"
    if isinstance(value, PersonByName | dict):
        return "by_name"
    return None


PersonEntry = Annotated[
    Annotated[Name, Tag("name")]
    | Annotated[PersonById, Tag("id")]
    | Annotated[PersonByName, Tag("by_name")],
    Discriminator(
        _kind_of_entry,
        custom_error_type="person_entry",
        custom_error_message='a person is a string, {"id": ...} or {"name": ...}',
    ),
]
_PEOPLE_DOC = (
    " Each entry is a string (a person id the directory knows is that person; anything"
    " else is a free-text name, resolved against the directory's names and alternative"
    ' names), `{"id": ...}` (a person picked with `GET /v1/people/search`; an id the'
    ' directory does not know is refused with 422) or `{"name": ...}` (always a name).'
    " A name that matches exactly one person is replaced by their id; one that matches"
    " nobody or several people is kept (sealed) and makes the report conflict-unresolved."
    " A reporter may not name themselves as accused (422). "
    + NAME_RULE[0].upper()
    + NAME_RULE[1:]
    + "."
)


class ReportInput(BaseModel):
    """The body of `POST /v1/reports` (and the data of an inbound submitted event)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    category: OneLine = Field(
        min_length=1,
        max_length=64,
        description="One of the policy's categories (INCIDENTS_POLICY_FILE, `categories`):"
        " another answers 422 `Unknown category` with `valid_categories`. The harassment"
        " channel takes `sexual_misconduct` and `harassment` only.",
    )
    summary: OneLine = Field(
        min_length=1, max_length=500, description="One line: no control characters."
    )
    description: Text = Field(
        min_length=1,
        max_length=100_000,
        description="What happened; tabs and line breaks are the only control characters.",
    )
    occurred_at: Annotated[datetime, BeforeValidator(parse_rfc3339)] | None = Field(
        None,
        description="When it happened: an RFC 3339 date-time with an offset (`Z` or"
        " `±hh:mm`); a number, a date alone or a time without an offset answers 422.",
    )
    location: OneLine | None = Field(None, max_length=500, description="One line.")
    unit: OneLine | None = Field(None, max_length=100, description="One line.")
    accused: list[PersonEntry] = Field(
        default_factory=list, max_length=50, description="Who is accused." + _PEOPLE_DOC
    )
    named: list[PersonEntry] = Field(
        default_factory=list, max_length=100, description="Others involved." + _PEOPLE_DOC
    )
    channel: OneLine | None = Field(
        None,
        max_length=64,
        description="The intake channel, one line. On `POST /v1/channels/harassment/reports`"
        " leave it out (or `harassment`): another value answers 422.",
    )


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


def check_category(report: ReportInput, policy: Policy) -> None:
    """UnknownCategory unless the policy knows the report's category. Intake's report use
    case checks it once, before anything is hashed or written (`submit_report` trusts
    it); triage checks it again only against a policy swapped underneath."""
    if report.category not in policy.categories:
        raise UnknownCategory(report.category, sorted(policy.categories))


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
MATCH_TEXT_FIELD: Final = "people_matches.text"
"""The field name a `PersonMatch.text` is sealed under (associated data `<incident id>
NUL people_matches.text`): `services.domain.events.open_data` opens it by that name."""


class NameRow(NamedTuple):
    """One name of the directory: its normal form, its spelling, whose, which kind."""

    norm: str
    name: str
    person_id: str
    kind: str  # primary | alternative


@dataclass(frozen=True)
class Entry:
    """One entry of `accused` / `named` once resolved: a person id, or a free-text name."""

    value: str
    is_id: bool


@dataclass(frozen=True)
class People:
    """The accused and named of a report, resolved against the directory.

    A free-text name that matched exactly one person is replaced by their id; others
    stay names. `matches` has one `(field, text, match)` per free-text entry given.
    """

    accused: tuple[Entry, ...] = ()
    named: tuple[Entry, ...] = ()
    matches: tuple[tuple[Literal["accused", "named"], str, NameMatch], ...] = field(
        default_factory=tuple
    )


class PeopleRefused(ValueError):
    """An entry of `accused` / `named` cannot be taken: `where` is e.g. `accused.1`,
    `reason` says why without quoting the input (dead letters keep it)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class HasPeople(Protocol):
    """Something naming people: a report, or an amendment's added people."""

    @property
    def accused(self) -> Sequence[str | PersonById | PersonByName]: ...

    @property
    def named(self) -> Sequence[str | PersonById | PersonByName]: ...


def to_look_up(report: HasPeople) -> tuple[list[str], list[str]]:
    """What resolving the report's people needs from the directory: the entries that may
    be person ids, and the normal forms of the entries that may be names."""
    ids: list[str] = []
    norms: list[str] = []
    for entry in (*report.accused, *report.named):
        if isinstance(entry, PersonById):
            ids.append(entry.id)
        elif isinstance(entry, PersonByName):
            norms.append(normalise(entry.name))
        else:
            ids.append(entry)
            norms.append(normalise(entry))
    return ids, norms


def resolve_people(
    report: HasPeople,
    *,
    known_ids: Collection[str],
    names: Iterable[NameRow] = (),
    reporter: str | None = None,
) -> People:
    """Resolve the report's accused and named, given which of its entries are directory
    ids (`known_ids`) and the directory's names with the normal forms of its other
    entries (`names`, see `to_look_up`).

    Raises PeopleRefused for `{"id": ...}` unknown to the directory, and when the
    reporter is among the accused (by id, or by a name that can only mean them).
    A person given twice in one list is kept once.
    """
    exact: dict[str, set[str]] = {}
    primary: dict[str, set[str]] = {}
    alternative: dict[str, set[str]] = {}
    for row in names:
        exact.setdefault(row.name, set()).add(row.person_id)
        (primary if row.kind == "primary" else alternative).setdefault(row.norm, set()).add(
            row.person_id
        )
    matches: list[tuple[Literal["accused", "named"], str, NameMatch]] = []

    def one(
        name: Literal["accused", "named"], entries: Sequence[str | PersonById | PersonByName]
    ) -> tuple[Entry, ...]:
        out: list[Entry] = []
        for index, entry in enumerate(entries):
            if isinstance(entry, PersonById) or (isinstance(entry, str) and entry in known_ids):
                person = entry.id if isinstance(entry, PersonById) else entry
                if person not in known_ids:
                    raise PeopleRefused(f"{name}.{index}", "the directory has no such person id")
                resolved = Entry(person, is_id=True)
            else:
                written = entry.name if isinstance(entry, PersonByName) else entry
                match = resolve(written, exact, primary, alternative)
                matches.append((name, written, match))
                if match.person_id is not None:
                    resolved = Entry(match.person_id, is_id=True)
                else:
                    resolved = Entry(written, is_id=False)
            if name == "accused" and resolved.is_id and resolved.value == reporter:
                raise PeopleRefused(f"{name}.{index}", "the reporter cannot be among the accused")
            if resolved not in out:
                out.append(resolved)
        return tuple(out)

    return People(one("accused", report.accused), one("named", report.named), tuple(matches))


def protected_content(
    content: dict[str, object], protect: Protector, people: People
) -> dict[str, object]:
    """The report content as it is stored and published: free text sealed.

    Entries of `accused` and `named` that are person ids of the directory stay clear
    (triage routes by them); every other entry is a free-text name and is sealed, as
    is the text of each `people_matches` entry.
    """
    out = dict(content)
    for name in SEALED_REPORT_TEXT:
        value = out.get(name)
        if isinstance(value, str):
            out[name] = protect.seal(name, value)
    return {**out, **sealed_people(people, protect)}


def sealed_people(
    people: People, protect: Protector, fields: tuple[str, str] = ("accused", "named")
) -> dict[str, object]:
    """The accused, the named and `people_matches` as an event carries them: directory
    ids clear, names and the matches' texts sealed. `fields` names the first two (an
    amendment's are `("accused_added", "named_added")`); each name is sealed under the
    field it is carried in, as `open_data` opens it."""
    accused, named = fields
    out: dict[str, object] = {
        name: [e.value if e.is_id else protect.seal(name, e.value) for e in entries]
        for name, entries in ((accused, people.accused), (named, people.named))
    }
    out["people_matches"] = [
        PersonMatch(
            field=name,
            text=protect.seal(MATCH_TEXT_FIELD, written),
            how=match.how,
            person_id=match.person_id,
            candidates=list(match.candidates),
        ).model_dump(mode="json")
        for name, written, match in people.matches
    ]
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
    people: People | None = None,
    known_people: Collection[str] = (),
    traceparent: str | None = None,
    event_id: str | None = None,
    causationid: str | None = None,
) -> Envelope:
    """The `incident.report.submitted.v1` event that opens an incident, content sealed.

    The category is the caller's to check first (`check_category`). `protect` holds
    the incident's keys: free text is sealed, the reporter travels as
    a pseudonym (and sealed in `reporter_identity`), and the digest is salted.
    `people` are the accused and named as `resolve_people` resolved them (without it,
    they are resolved here against `known_people`, the directory's person ids among
    the entries, and no names). A person reporting as themselves is the actor
    `reporter:named`: their id as the actor would name the reporter in clear on every
    topic and in the ledger.
    """
    if reporter is not None and actor == reporter:
        actor = NAMED_ACTOR
    event_id = event_id or new_event_id()
    if people is None:
        people = resolve_people(report, known_ids=known_people, reporter=reporter)
    content = report.model_dump(mode="json", exclude={"channel", "reporter"})
    content["accused"] = [e.value for e in people.accused]
    content["named"] = [e.value for e in people.named]
    shown = {name: content.get(name) for name in REPORT_FIELDS}
    data = ReportSubmitted.model_validate(
        {
            **protected_content(content, protect, people),
            "reporter": None if reporter is None else protect.pseudonym(reporter),
            "reporter_identity": (
                None if reporter is None else protect.seal("reporter_identity", reporter)
            ),
            "channel": report.channel or channel,
            "report_digest": protect.digest(canonical_json(shown)),
        }
    )
    return make_event(
        ReportSubmitted.TYPE,
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
