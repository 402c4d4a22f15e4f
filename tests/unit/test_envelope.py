"""The CloudEvents 1.0 envelope: what it requires, how it serialises, and that it interoperates.

Interoperability is checked against the official CloudEvents Python SDK (structured
content mode of its Kafka binding), in both directions.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cloudevents.core.bindings import kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.domain.envelope import (
    CLOUDEVENTS_CONTENT_TYPE,
    Envelope,
    canonical_json,
    new_event_id,
    utc_rfc3339,
)
from services.domain.events import (
    InvalidEvent,
    ReportSubmitted,
    Viewed,
    make_event,
    parse_envelope,
    parse_event,
)

EVENT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
DIGEST = "sha256:" + "ab" * 32


def attributes(**changes: Any) -> dict[str, Any]:
    """A valid structured-mode event as a dict, with `changes` applied (None removes)."""
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": EVENT_ID,
        "source": "/services/intake",
        "type": "incident.viewed.v1",
        "time": "2026-11-01T09:30:00Z",
        "subject": "inc-0001",
        "datacontenttype": "application/json",
        "data": {"principal": "p-ma", "report_digest": DIGEST},
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def reason_for(**changes: Any) -> str:
    with pytest.raises(InvalidEvent) as refused:
        parse_envelope(attributes(**changes))
    return refused.value.reason


def test_a_complete_event_is_accepted() -> None:
    envelope = parse_envelope(attributes())
    assert envelope.subject == "inc-0001"
    assert envelope.time == datetime(2026, 11, 1, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize("name", ["id", "source", "type", "time", "subject", "data"])
def test_an_event_missing_a_required_attribute_is_refused(name: str) -> None:
    assert name in reason_for(**{name: None})


@pytest.mark.parametrize("name", ["source", "type", "subject"])
def test_an_event_with_an_empty_required_attribute_is_refused(name: str) -> None:
    assert name in reason_for(**{name: ""})


def test_an_event_of_another_specversion_is_refused() -> None:
    assert "specversion" in reason_for(specversion="0.3")


def test_an_event_whose_data_is_not_json_is_refused() -> None:
    assert "datacontenttype" in reason_for(datacontenttype="text/plain")


def test_a_json_datacontenttype_with_parameters_is_accepted() -> None:
    parse_envelope(attributes(datacontenttype="application/json; charset=utf-8"))


@pytest.mark.parametrize("field", ["id", "causationid", "correlationid"])
def test_event_ids_must_be_uuids(field: str) -> None:
    assert "UUID" in reason_for(**{field: "event-1"})


def test_an_uppercase_uuid_is_kept_in_its_canonical_lowercase_form() -> None:
    assert parse_envelope(attributes(id=EVENT_ID.upper())).id == EVENT_ID


def test_new_event_ids_are_fresh_uuids() -> None:
    first, second = new_event_id(), new_event_id()
    assert first != second
    assert parse_envelope(attributes(id=first)).id == first


def test_an_event_without_a_timezone_is_refused() -> None:
    assert "timezone" in reason_for(time="2026-11-01T09:30:00")


def test_an_event_time_is_serialised_as_rfc3339_utc_with_z() -> None:
    envelope = parse_envelope(attributes(time="2026-11-01T11:30:00.25+02:00"))
    assert envelope.to_dict()["time"] == "2026-11-01T09:30:00.250000Z"


def test_utc_rfc3339_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="naive"):
        utc_rfc3339(datetime(2026, 11, 1, 9, 30))


def test_utc_rfc3339_converts_any_offset_to_utc() -> None:
    moment = datetime(2026, 11, 1, 4, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert utc_rfc3339(moment) == "2026-11-01T09:30:00.000000Z"


def test_extensions_of_other_systems_are_kept() -> None:
    envelope = parse_envelope(attributes(tenant="acme", partitionkey="inc-0001"))
    assert envelope.to_dict()["tenant"] == "acme"


@pytest.mark.parametrize("name", ["Tenant", "tenant_id", "tenant-id", "a" * 21])
def test_an_extension_name_outside_the_cloudevents_rule_is_refused(name: str) -> None:
    assert name in reason_for(**{name: "x"})


def test_a_w3c_traceparent_is_accepted() -> None:
    assert parse_envelope(attributes(traceparent=TRACEPARENT)).traceparent == TRACEPARENT


@pytest.mark.parametrize(
    "value",
    ["", "trace-1", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", TRACEPARENT.upper()],
)
def test_a_malformed_traceparent_is_refused(value: str) -> None:
    assert "traceparent" in reason_for(traceparent=value)


def test_absent_optional_attributes_are_left_out_of_the_bytes() -> None:
    sent = json.loads(parse_envelope(attributes()).to_bytes())
    assert not {"actor", "causationid", "correlationid", "traceparent"} & sent.keys()


def test_an_envelope_cannot_be_changed_after_it_is_made() -> None:
    envelope = parse_envelope(attributes())
    with pytest.raises(ValidationError):
        envelope.subject = "inc-0002"  # type: ignore[misc]


def test_the_bytes_parse_back_to_the_same_envelope() -> None:
    envelope = parse_envelope(attributes(actor="p-ma", traceparent=TRACEPARENT))
    again = parse_envelope(envelope.to_bytes())
    assert again == envelope
    assert again.to_bytes() == envelope.to_bytes()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def reversed_order(value: Any) -> Any:
    """The same value with every object's keys inserted in reverse order."""
    if isinstance(value, dict):
        return {key: reversed_order(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_order(item) for item in value]
    return value


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_json_does_not_depend_on_key_insertion_order(value: dict[str, Any]) -> None:
    assert canonical_json(value) == canonical_json(reversed_order(value))
    assert json.loads(canonical_json(value)) == value


def test_canonical_json_is_compact_sorted_utf8() -> None:
    assert canonical_json({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'.encode()


# Interoperability with the official CloudEvents SDK (Kafka binding, structured mode).


def our_submitted_event() -> Envelope:
    return make_event(
        ReportSubmitted.TYPE,
        subject="inc-0001",
        data=ReportSubmitted(
            category="harassment",
            summary="Repeated remarks",
            description="Since March...",
            accused=["p-wang"],
            report_digest=DIGEST,
        ),
        source="/services/intake",
        time=datetime(2026, 11, 1, 9, 30, 0, 123456, tzinfo=UTC),
        actor="system:hris",
        correlationid=EVENT_ID,
        traceparent=TRACEPARENT,
        event_id=EVENT_ID,
    )


def test_our_bytes_parse_with_the_sdk_kafka_structured_binding() -> None:
    ours = our_submitted_event()
    message = kafka.KafkaMessage(
        headers={"content-type": CLOUDEVENTS_CONTENT_TYPE.encode()},
        key=ours.subject.encode(),
        value=ours.to_bytes(),
    )
    theirs = kafka.from_structured(message, JSONFormat(), CloudEvent)
    assert theirs.get_id() == ours.id
    assert theirs.get_type() == ReportSubmitted.TYPE
    assert theirs.get_source() == "/services/intake"
    assert theirs.get_subject() == "inc-0001"
    assert theirs.get_time() == ours.time
    assert theirs.get_datacontenttype() == "application/json"
    assert theirs.get_extension("actor") == "system:hris"
    assert theirs.get_extension("correlationid") == EVENT_ID
    assert theirs.get_extension("traceparent") == TRACEPARENT
    assert theirs.get_extension("partitionkey") == "inc-0001"
    assert theirs.get_data() == ours.data


def test_an_sdk_produced_structured_event_parses_as_ours() -> None:
    theirs = CloudEvent(
        attributes={
            "id": EVENT_ID,
            "source": "/systems/hris",
            "type": "incident.viewed.v1",
            "subject": "inc-0001",
            "time": datetime(2026, 11, 1, 9, 30, tzinfo=UTC),
            "datacontenttype": "application/json",
            "actor": "system:hris",
            "traceparent": TRACEPARENT,
        },
        data={"principal": "p-ma", "report_digest": DIGEST},
    )
    message = kafka.to_structured(theirs, JSONFormat(), key_mapper=lambda e: e.get_subject())
    assert message.headers["content-type"] == CLOUDEVENTS_CONTENT_TYPE.encode()
    assert message.key == "inc-0001"

    envelope, data = parse_event(message.value)
    assert envelope.id == EVENT_ID
    assert envelope.time == datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
    assert envelope.actor == "system:hris"
    assert envelope.traceparent == TRACEPARENT
    assert data == Viewed(principal="p-ma", report_digest=DIGEST)
