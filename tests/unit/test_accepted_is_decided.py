"""Every report intake accepts is decided by triage (issue 23, Done when).

A report enters by four doors (`POST /v1/reports`, the console's form, `POST /v1/events`
and `incident.inbound`), and each validates it with one model, `ReportRequest` (the
JSON of the body, or of the event's `data` through `report_of`; both are drawn).
Whatever that model accepts, with any unicode (NUL and other controls, lone surrogates
sent as JSON escapes, bidirectional overrides, combining marks, emoji) and any length
within its limits, on any channel, is turned into the submitted event intake
publishes; triage parses that event as it parses a Kafka record and decides it against
a random organisation. The decision must come, never an exception, and what triage
stores of it as JSONB must be storable (PostgreSQL's JSONB refuses `\\u0000`, and
UTF-8 refuses a lone surrogate): before this held, a NUL in `unit` was accepted with
202 and then dead-lettered by triage.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.domain.events import ReportSubmitted, parse_envelope
from services.domain.inbound import INBOUND_TYPE, InboundRefused, report_of
from services.domain.org import OrgSnapshot
from services.domain.policy import Policy
from services.domain.reports import (
    ReportRequest,
    UnknownCategory,
    check_category,
    resolve_people,
    submit_report,
)
from services.domain.triage import decide
from services.infra.crypto import IncidentKey, Pseudonyms
from tests.unit.test_triage import POLICY, SEED, org_charts, policies

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
PSEUDONYMS = Pseudonyms(secrets.token_bytes(32))
NASTY = (
    "\x00",
    "\x01",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9f",
    "\ud800",  # lone surrogates, as a JSON body carries them in escapes
    "\udfff",
)
"""Characters the model refuses (in `description`, all but tab and line breaks)."""
ODD = (
    "\t",
    "\n",
    "\r",
    " ",
    "\u00a0",
    "\u2028",
    "\u2029",
    "\u202e",  # right-to-left override
    "\u200f",
    "\u200b",
    "\ufeff",
    "\u0301",  # a combining acute accent, alone or after a letter
    "\u0308",
    "\U0001f600",
    "\U0010ffff",
    "中",
    "é",
    "a",
)
"""Characters that pass where they may, and that a careless parser trips on."""
ANY = st.characters(codec=None, categories=None)
MOSTLY_CLEAN = st.sampled_from(ODD) | st.characters(exclude_categories=("Cc", "Cs"))


def texts(limit: int) -> st.SearchStrategy[str]:
    """Text of any length up to `limit` (and just over it): a short random piece,
    repeated, so the longest values are drawn without hypothesis building them one
    character at a time. Most pieces hold only characters the model may accept, some
    anything at all (NUL, controls, lone surrogates)."""
    alphabet = st.sampled_from([MOSTLY_CLEAN] * 4 + [st.sampled_from(NASTY) | ANY])
    piece = alphabet.flatmap(lambda chars: st.text(chars, min_size=1, max_size=12))
    lengths = st.sampled_from([1, 2, 3, limit - 1, limit]) | st.integers(0, limit + 1)
    return st.builds(lambda p, n: (p * (n // len(p) + 1))[:n], piece, lengths)


def entries(chart: OrgSnapshot) -> st.SearchStrategy[object]:
    ids = st.sampled_from([*chart.people, "p-outsider"]) if chart.people else st.just("p-x")
    return (
        ids
        | texts(200)
        | st.builds(lambda i: {"id": i}, ids)
        | st.builds(lambda n: {"name": n}, texts(200))
    )


@st.composite
def bodies(draw: st.DrawFn, chart: OrgSnapshot, policy: Policy) -> dict[str, Any]:
    """A request body as a client could send it (fields present or absent)."""
    category = draw(st.sampled_from(sorted(policy.categories)) | texts(64))
    body: dict[str, Any] = {
        "category": category,
        "summary": draw(texts(500)),
        "description": draw(texts(100_000)),
    }
    optional = {
        "location": texts(500),
        "unit": st.sampled_from(["u1", "u2", "city-retail", " u1 "]) | texts(100),
        "channel": st.sampled_from(["web", "api", "kafka", "harassment", "hotline"]) | texts(64),
        "occurred_at": st.sampled_from(["2026-11-02T09:00:00Z", "2026-11-02T09:00:00+08:00"]),
        "accused": st.lists(entries(chart), max_size=4),
        "named": st.lists(entries(chart), max_size=4),
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            body[name] = draw(values | st.none()) if name != "accused" else draw(values)
    return body


def accepted(body: dict[str, Any], door: str = "http") -> ReportRequest | None:
    """The report as intake's validation takes it from the wire (JSON with escapes,
    which is how a lone surrogate reaches a server), or None when refused (422, or a
    dead letter with its reason): a request body, or an inbound event's `data`."""
    wire = json.loads(json.dumps(body, ensure_ascii=True))
    try:
        if door == "inbound":
            event = {**INBOUND_EVENT, "data": wire}
            return report_of(json.loads(json.dumps(event, ensure_ascii=True)))[1]
        return ReportRequest.model_validate(wire)
    except (ValidationError, InboundRefused):
        return None


INBOUND_EVENT = {
    "specversion": "1.0",
    "id": "0b6f3c52-5a1e-4d0e-9c43-7e2b1f0a9d11",
    "source": "urn:hris",
    "type": INBOUND_TYPE,
    "time": "2026-12-07T09:00:00Z",
}


def storable(value: object) -> None:
    """What PostgreSQL's JSONB and UTF-8 accept (triage stores reports and decisions so)."""
    encoded = json.dumps(value)
    assert "\\u0000" not in encoded
    encoded.encode()  # a lone surrogate raises here


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_report_intake_accepts_is_decided_by_triage(data: st.DataObject) -> None:
    chart = data.draw(org_charts() | st.just(SEED), label="org")
    policy = data.draw(st.just(POLICY) | policies(), label="policy")
    body = data.draw(bodies(chart, policy), label="body")
    request = accepted(body, data.draw(st.sampled_from(["http", "inbound"]), label="door"))
    if request is None:
        return
    reporter = data.draw(st.sampled_from([None, *sorted(chart.people)[:3], "p-outsider"]))
    incident_id = data.draw(st.uuids()).hex
    key = IncidentKey(incident_id, secrets.token_bytes(32), secrets.token_bytes(16), PSEUDONYMS)
    report = request.report()
    try:  # as the use case does: the category, then the people (usecases.take_report)
        check_category(report, policy)
        people = resolve_people(report, known_ids=set(chart.people), reporter=reporter)
        event = submit_report(
            report,
            policy,
            incident_id=incident_id,
            reporter=reporter,
            channel=data.draw(st.sampled_from(["web", "api", "kafka", "harassment"])),
            actor=reporter or "reporter:anonymous",
            source="urn:incidents:intake",
            now=NOW,
            protect=key,
            people=people,
        )
    except (UnknownCategory, ValueError):  # intake refuses these with 422 (PeopleRefused...)
        return
    # As triage reads it: the record's bytes, the envelope, the submitted report.
    envelope = parse_envelope(event.to_bytes())
    submitted = ReportSubmitted.model_validate(envelope.data)
    reporter_person = PSEUDONYMS.match(incident_id, submitted.reporter, chart.people)
    decision = decide(submitted, chart, policy, NOW, reporter_person=reporter_person)
    assert decision.category == report.category
    assert decision.chain
    storable(submitted.model_dump(mode="json"))
    storable(decision.to_json())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("unit", "city\x00retail"),
        ("unit", "city-retail\u202e"),
        ("location", "\ud800"),
        ("summary", "a\x85b"),
        ("description", "a\x00b"),
        ("category", "harassment\x00"),
        ("channel", "web\x00"),
    ],
)
def test_a_nul_control_or_lone_surrogate_is_refused_where_triage_cannot_carry_it(
    field: str, value: str
) -> None:
    body = {"category": "harassment", "summary": "s", "description": "d", field: value}
    request = accepted(body)
    if field == "unit" and value.endswith("\u202e"):  # a format character, not a control
        assert request is not None
    else:
        assert request is None
