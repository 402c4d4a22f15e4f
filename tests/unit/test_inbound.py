"""The inbound contract (docs/inbound.md): decoding both content modes, who signed, scopes,
the incident id, the systems file, and the published schema checked by `jsonschema`."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator

from services.domain.events import ReportSubmitted
from services.domain.inbound import (
    INBOUND_TYPE,
    MAX_INBOUND_BYTES,
    InboundRefused,
    authorize,
    decode,
    incident_id_for,
    report_of,
)
from services.domain.schemas import event_schemas, schema_file
from services.infra.config import ConfigError
from services.infra.settings import _DATA
from services.infra.systems import load_systems
from tests import inbound_client as sender

SYSTEMS = load_systems(_DATA / "systems.yaml")


def refused(headers: list[tuple[str, bytes]], value: bytes, prefix: str = "ce_") -> str:
    with pytest.raises(InboundRefused) as caught:
        decode(headers, value, prefix=prefix)
    return caught.value.reason


def test_structured_and_binary_mode_decode_to_the_same_signed_event() -> None:
    event = sender.sign(sender.event(reporter="p-chen"))
    for encode in (sender.structured, sender.binary):
        decoded = decode(*encode(event))
        assert decoded.event == event
        assert SYSTEMS.signer_of(decoded.event).id == "hris"
    http = decode(*sender.binary(event, prefix="ce-"), prefix="ce-")
    assert (http.event, http.mode) == (event, "binary")


def test_the_cloudevents_sdk_binary_mode_is_read_and_a_signature_over_it_holds() -> None:
    # A sender using the CloudEvents SDK: it signs the structured form of what it emits.
    attributes = {
        "id": str(uuid.uuid4()),
        "source": "/systems/hris",
        "type": INBOUND_TYPE,
        "time": datetime(2026, 11, 1, 9, 30, tzinfo=UTC),
        "datacontenttype": "application/json",
        "signingkey": sender.key_id("hris", sender.demo_key("hris")),
    }
    unsigned = CloudEvent(attributes=attributes, data=sender.REPORT)
    message = ce_kafka.to_binary(unsigned, JSONFormat())
    structured = decode(list(message.headers.items()), message.value).event
    signed = sender.sign(structured)
    signed_event = CloudEvent(
        attributes={**attributes, "signature": signed["signature"]}, data=sender.REPORT
    )
    message = ce_kafka.to_binary(signed_event, JSONFormat())
    decoded = decode(list(message.headers.items()), message.value)
    assert SYSTEMS.signer_of(decoded.event).id == "hris"
    assert report_of(decoded.event)[1].summary == sender.REPORT["summary"]
    over_http = ce_http.to_binary(signed_event, JSONFormat())
    assert decode(list(over_http.headers.items()), over_http.body, prefix="ce-").event == (
        decoded.event
    )


@pytest.mark.parametrize(
    ("headers", "value", "reason"),
    [
        ([], b"{}", "content-type must be application/cloudevents+json"),
        ([("content-type", b"text/plain")], b"{}", "not text/plain"),
        (
            [("content-type", b"text/plain"), ("ce_specversion", b"1.0")],
            b"{}",
            "binary mode needs content-type: application/json",
        ),
        ([("content-type", b"application/json"), ("ce_id", b"1")], b"{}", "ce_specversion"),
        ([("ce_specversion", b"1.0"), ("ce_specversion", b"1.0")], b"{}", "repeated"),
        ([("ce_Spec-Version", b"1.0")], b"{}", "attribute names"),
        ([("ce_specversion", b"\xff")], b"{}", "not UTF-8"),
        ([("ce_data", b"x")], b"{}", "content-type"),
        (
            [("content-type", b"application/json"), ("ce_specversion", b"1.0")],
            b"[1]",
            "must be a JSON object",
        ),
        (
            [("content-type", b"application/cloudevents+json")],
            b"x" * (MAX_INBOUND_BYTES + 1),
            "more than 262144",
        ),
    ],
    ids=[
        "no-type",
        "other-type",
        "binary-wrong-type",
        "binary-no-version",
        "repeated",
        "bad-name",
        "not-utf8",
        "data-header",
        "binary-array",
        "oversized",
    ],
)
def test_malformed_records_are_refused_with_a_reason(
    headers: list[tuple[str, bytes]], value: bytes, reason: str
) -> None:
    assert reason in refused(headers, value)


def _signer_reason(event: dict[str, Any]) -> str:
    with pytest.raises(InboundRefused) as caught:
        SYSTEMS.signer_of(event)
    assert caught.value.kind == "unauthenticated"
    return caught.value.reason


def test_only_a_registered_systems_valid_signature_authenticates() -> None:
    event = sender.sign(sender.event())
    assert _signer_reason(sender.event()) == "not authenticated: unsigned"
    stranger = Ed25519PrivateKey.generate()
    assert _signer_reason(sender.sign(sender.event(), "hris", stranger)).endswith("unknown key")
    tampered = {**event, "data": {**event["data"], "summary": "Something else"}}
    assert _signer_reason(tampered).endswith("bad signature")
    helpdesk = sender.sign(sender.event(), "helpdesk")
    posing = {**helpdesk, "signingkey": event["signingkey"]}
    assert _signer_reason(posing).endswith("bad signature")
    assert SYSTEMS.signer_of(helpdesk).id == "helpdesk"


def test_scopes_allow_anonymous_reports_and_reports_for_a_person_separately() -> None:
    authorize("hris", frozenset({"report", "report_for_person"}), "p-chen")
    authorize("helpdesk", frozenset({"report"}), None)
    with pytest.raises(InboundRefused, match="lacks the 'report_for_person' scope"):
        authorize("helpdesk", frozenset({"report"}), "p-chen")
    with pytest.raises(InboundRefused, match="lacks the 'report' scope"):
        authorize("x", frozenset({"report_for_person"}), None)


def test_the_incident_id_is_the_documented_uuid5_of_system_and_event_id() -> None:
    namespace = uuid.UUID("5f0b6a52-8d0e-4c59-9a57-2f4b2c9e1d01")
    event_id = "0b6f8a47-3f0e-4a53-9d0e-1c2a3b4c5d6e"
    expected = str(uuid.uuid5(namespace, f"hris/{event_id}"))
    assert incident_id_for("hris", event_id) == expected
    assert incident_id_for("helpdesk", event_id) != expected


def test_the_report_is_the_body_of_post_reports_and_the_old_type_is_refused_clearly() -> None:
    event = sender.event(reporter="p-chen")
    envelope, report = report_of(event)  # no subject: optional
    assert (envelope.id, report.reporter) == (event["id"], "p-chen")
    with pytest.raises(InboundRefused, match=r"no longer accepted.*send incident\.report\.inbound"):
        report_of({**event, "type": ReportSubmitted.TYPE})
    with pytest.raises(InboundRefused, match="invalid report: report_digest"):
        report_of({**event, "data": {**event["data"], "report_digest": "sha256:00"}})


def test_an_invalid_systems_file_names_its_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "systems.yaml"
    path.write_text("systems:\n  - id: hris\n    scopes: [report, everything]\n")
    with pytest.raises(ConfigError, match=r"systems.yaml:3: field systems.0.scopes"):
        load_systems(path)
    path.write_text("systems:\n  - id: a\n    scopes: [report]\n    public_keys:\n")
    path.write_text(path.read_text() + "      - public_key: bm90IGEga2V5\n")
    with pytest.raises(ConfigError, match=r":5: field systems.0.public_keys.0.public_key"):
        load_systems(path)


def test_the_demo_systems_register_their_development_keys_and_transports() -> None:
    hris, helpdesk = SYSTEMS.by_id["hris"], SYSTEMS.by_id["helpdesk"]
    assert sender.key_id("hris", sender.demo_key("hris")) in hris.keys
    assert SYSTEMS.for_principal("system:hris") is hris
    assert SYSTEMS.for_principal("system:helpdesk") is None  # not on HTTP
    assert SYSTEMS.for_principal("p-chen") is None
    assert helpdesk.scopes == {"report"}


def _validator() -> Draft202012Validator:
    schema = event_schemas()[schema_file(INBOUND_TYPE)]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_the_published_inbound_schema_accepts_what_intake_takes_and_no_more() -> None:
    validator = _validator()
    event = sender.sign(sender.event(reporter="p-chen", accused=["Wang Jun", {"id": "p-wang"}]))
    assert list(validator.iter_errors(event)) == []
    binary = decode(*sender.binary(event)).event  # what a binary record carries
    assert list(validator.iter_errors(binary)) == []
    assert list(validator.iter_errors({**event, "subject": "hris-case-12"})) == []
    digest = {**event, "data": {**event["data"], "report_digest": "sha256:00"}}
    for bad in (
        digest,
        {k: v for k, v in event.items() if k != "signature"},
        {**event, "type": ReportSubmitted.TYPE},
        {**event, "id": "case-12"},
        {**event, "data": {**event["data"], "category": ""}},
    ):
        assert list(validator.iter_errors(bad)), bad


def test_a_signature_is_base64_of_64_bytes() -> None:
    signature = base64.b64decode(sender.sign(sender.event())["signature"])
    assert len(signature) == 64
