"""The event catalog: building events with validated data, and refusing what is not an event."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.domain import events
from services.domain.events import (
    CATALOG,
    EVENT_CLASSES,
    Acknowledged,
    Event,
    InvalidEvent,
    ReportSubmitted,
    Topic,
    Triaged,
    Viewed,
    b64,
    make_event,
    parse_event,
    unb64,
)

NOW = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


def viewed(data: Any) -> Any:
    return make_event(
        Viewed.TYPE, subject="inc-0001", data=data, source="/services/intake", time=NOW
    )


def reason_for(raw: bytes | str | dict[str, Any]) -> str:
    with pytest.raises(InvalidEvent) as refused:
        parse_event(raw)
    return refused.value.reason


def test_every_type_is_versioned_and_published_on_a_known_topic() -> None:
    for name, entry in CATALOG.items():
        assert name == entry.name
        assert name.rsplit(".", 1)[1] == "v1"
        assert entry.topic in Topic


def test_make_event_validates_the_data_against_the_type() -> None:
    event = viewed({"principal": "p-ma", "report_digest": DIGEST})
    assert event.type == Viewed.TYPE
    assert event.data == {"principal": "p-ma", "report_digest": DIGEST}


def test_make_event_refuses_an_unknown_data_field() -> None:
    with pytest.raises(ValidationError, match="secret"):
        viewed({"principal": "p-ma", "report_digest": DIGEST, "secret": "x"})


def test_make_event_refuses_a_field_of_the_wrong_type() -> None:
    with pytest.raises(ValidationError, match="principal"):
        viewed({"principal": 42, "report_digest": DIGEST})


def test_make_event_refuses_a_missing_field() -> None:
    with pytest.raises(ValidationError, match="report_digest"):
        viewed({"principal": "p-ma"})


def test_make_event_refuses_the_payload_model_of_another_type() -> None:
    with pytest.raises(TypeError, match="Viewed"):
        viewed(Acknowledged(principal="p-ma", level=1))


def test_an_event_survives_the_trip_through_bytes() -> None:
    event = viewed(Viewed(principal="p-ma", report_digest=DIGEST))
    envelope, data = parse_event(event.to_bytes())
    assert envelope == event
    assert data == Viewed(principal="p-ma", report_digest=DIGEST)


def test_bytes_that_are_not_json_are_refused() -> None:
    assert reason_for(b"{not json").startswith("not JSON")


def test_bytes_that_are_not_utf8_are_refused() -> None:
    assert reason_for(b"\xff\xfe\x00").startswith("not JSON")


@pytest.mark.parametrize("value", ["[]", "42", '"event"', "null"])
def test_json_that_is_not_an_object_is_refused(value: str) -> None:
    assert "JSON object" in reason_for(value)


def valid_dict(**changes: Any) -> dict[str, Any]:
    event = viewed({"principal": "p-ma", "report_digest": DIGEST}).to_dict()
    event.update(changes)
    return event


def test_an_event_of_an_unknown_type_is_refused_by_name() -> None:
    assert "incident.teleported.v1" in reason_for(valid_dict(type="incident.teleported.v1"))


def test_an_event_with_bad_data_is_refused_with_the_field_named() -> None:
    reason = reason_for(valid_dict(data={"principal": "p-ma"}))
    assert Viewed.TYPE in reason
    assert "report_digest" in reason


def test_an_unknown_data_field_is_refused_on_write_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="x\n  Extra inputs are not permitted"):
        viewed({"principal": "p-ma", "report_digest": DIGEST, "x": 1})


def test_an_unknown_data_field_is_ignored_on_read() -> None:
    """A newer producer may write an optional field this reader does not know yet."""
    _, data = parse_event(valid_dict(data={"principal": "p-ma", "report_digest": DIGEST, "x": 1}))
    assert data == Viewed(principal="p-ma", report_digest=DIGEST)


def test_an_unknown_field_inside_a_nested_object_is_ignored_on_read_too() -> None:
    chain = [{"level": 1, "role": "r", "recipients": ["p-a"], "acknowledge_within": 60, "x": 1}]
    event = make_event(
        Triaged.TYPE,
        subject="inc-0001",
        data={"category": "fraud", "severity": "high", "policy_version": "1", "chain": chain[:0]},
        source="/services/triage",
        time=NOW,
    ).to_dict()
    event["data"]["chain"] = chain
    _, data = parse_event(event)
    assert isinstance(data, Triaged)
    assert data.chain[0].recipients == ["p-a"]


def test_an_event_with_a_bad_envelope_is_refused_with_the_attribute_named() -> None:
    event = valid_dict()
    del event["subject"]
    assert "subject" in reason_for(json.dumps(event))


def test_a_submitted_report_needs_its_digest_and_content() -> None:
    reason = reason_for(valid_dict(type=ReportSubmitted.TYPE, data={"category": "fraud"}))
    assert "summary" in reason and "report_digest" in reason


def test_rejected_input_round_trips_through_base64() -> None:
    raw = b"\x00\xffnot an event"
    assert unb64(b64(raw)) == raw


def test_text_that_is_not_base64_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="base64"):
        unb64("not base64!")


def test_every_event_class_is_in_the_catalog_under_its_own_type() -> None:
    defined = [c for c in vars(events).values() if isinstance(c, type) and issubclass(c, Event)]
    assert {c for c in defined if c is not Event} == set(EVENT_CLASSES)
    assert len({c.TYPE for c in EVENT_CLASSES}) == len(EVENT_CLASSES)
    for cls in EVENT_CLASSES:
        entry = CATALOG[cls.TYPE]
        assert (entry.name, entry.topic, entry.data) == (cls.TYPE, cls.TOPIC, cls)
        assert entry.producers == (cls.PRODUCERS or entry.producers)


# Packages already swept: a type string is written once, in its class (`Viewed.TYPE`).
SWEPT = (
    "services/domain",
    "services/infra",
    "services/console",
    "services/triage",
    "services/escalation",
    "services/intake",
    "services/witness",
    "services/cli.py",
)
_TYPE_LITERAL = re.compile(r"""["']((?:incident|directory|audit)\.[a-z_.]+\.v[0-9]+)["']""")


def test_event_types_are_written_only_in_their_classes() -> None:
    root = Path(__file__).resolve().parents[2]
    found = []
    for place in SWEPT:
        path = root / place
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            text = file.read_text(encoding="utf-8")
            for number, line in enumerate(text.splitlines(), 1):
                for name in _TYPE_LITERAL.findall(line):
                    if name in CATALOG and not (
                        file.name == "events.py" and f'type="{name}"' in line
                    ):
                        found.append(f"{file.relative_to(root)}:{number}: {name}")
    assert found == []
