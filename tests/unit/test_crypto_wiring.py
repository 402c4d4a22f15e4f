"""How the sealing primitives are wired: keys from settings, pseudonyms, opening, retention."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from services.domain.events import (
    CUSTODIAN_FIELDS,
    READER_FIELDS,
    UNREADABLE,
    make_event,
    open_data,
    open_envelope,
)
from services.domain.knowledge import LedgerEvent, knowledge_as_of
from services.domain.policy import Policy, parse_duration
from services.infra.crypto import (
    DEVELOPMENT_MASTER_KEY,
    DEVELOPMENT_PSEUDONYM_KEY,
    IncidentKey,
    Pseudonyms,
    new_data_key,
    new_salt,
)
from services.infra.keystore import master_key_of, pseudonyms_of
from services.infra.settings import AuditSettings, IntakeSettings, TriageSettings

PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "database_url": "postgresql://intake@db.example/incidents",
    "kafka_idempotence": True,
    "tokens_file": "/dev/null",
    "oidc_jwks_url": "https://idp.example/jwks.json",
    "oidc_issuer": "https://idp.example/",
    "oidc_audience": "incidents",
    "kafka_security_protocol": "SSL",
    "kafka_ssl_cafile": "/nonexistent/ca.pem",
    "kafka_ssl_certfile": "/nonexistent/cert.pem",
    "kafka_ssl_keyfile": "/nonexistent/key.pem",
    "systems_file": "/etc/incidents/systems.yaml",
}
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def a_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def test_production_refuses_the_development_master_and_pseudonym_keys() -> None:
    with pytest.raises(ValidationError, match="MASTER_KEY"):
        AuditSettings(**PRODUCTION)
    with pytest.raises(ValidationError, match="MASTER_KEY"):
        AuditSettings(**PRODUCTION, master_key=DEVELOPMENT_MASTER_KEY)
    with pytest.raises(ValidationError, match="PSEUDONYM_KEY"):
        TriageSettings(**PRODUCTION)
    with pytest.raises(ValidationError, match="PSEUDONYM_KEY"):
        TriageSettings(**PRODUCTION, pseudonym_key=DEVELOPMENT_PSEUDONYM_KEY)
    with pytest.raises(ValidationError):
        IntakeSettings(**PRODUCTION, master_key=a_key())  # still the dev pseudonym key
    IntakeSettings(**PRODUCTION, master_key=a_key(), pseudonym_key=a_key())
    IntakeSettings(**PRODUCTION, master_key_file="/m", pseudonym_key_file="/p")


def test_only_intake_and_audit_settings_hold_a_master_key_and_triage_none() -> None:
    assert "master_key" in IntakeSettings.model_fields
    assert "master_key" in AuditSettings.model_fields
    assert "master_key" not in TriageSettings.model_fields
    assert "pseudonym_key" not in AuditSettings.model_fields


def test_keys_come_from_a_file_before_a_setting(tmp_path: Path) -> None:
    given, other = a_key(), a_key()
    (tmp_path / "master").write_text(given + "\n")
    from_file = master_key_of(SecretStr(other), tmp_path / "master")
    assert from_file.key_id == master_key_of(SecretStr(given), None).key_id
    assert from_file.key_id != master_key_of(None, None).key_id  # the dev key
    (tmp_path / "pn").write_text(given)
    assert pseudonyms_of(None, tmp_path / "pn").of("i", "p") == pseudonyms_of(
        SecretStr(given), None
    ).of("i", "p")


def test_a_pseudonym_differs_per_incident_and_is_matched_against_the_directory() -> None:
    pseudonyms = Pseudonyms(new_data_key())
    one, two = pseudonyms.of("inc-1", "p-liu"), pseudonyms.of("inc-2", "p-liu")
    assert one != two and "p-liu" not in one
    people = ["p-chen", "p-liu", "p-wang"]
    assert pseudonyms.match("inc-1", one, people) == "p-liu"
    assert pseudonyms.match("inc-2", one, people) is None  # not linkable across incidents
    assert pseudonyms.match("inc-1", None, people) is None
    assert Pseudonyms(new_data_key()).match("inc-1", one, people) is None


def test_sealed_values_open_for_their_key_and_read_erased_without_it() -> None:
    key = IncidentKey("inc-1", new_data_key(), new_salt())
    data = {"text": key.seal("text", "hello"), "accused": ["p-wang", key.seal("accused", "x")]}
    opened = open_data(data, lambda field, value: key.open(field, value), READER_FIELDS)
    assert opened == {"text": "hello", "accused": ["p-wang", "x"]}
    erased = open_data(data, lambda _field, _value: None, READER_FIELDS)
    assert erased == {"text": UNREADABLE, "accused": ["p-wang", UNREADABLE]}
    # an allow-list: a field not on it stays sealed
    assert open_data(data, key.open, frozenset({"text"}))["accused"] == data["accused"]


def test_retention_is_per_category_with_a_five_year_default() -> None:
    assert parse_duration("5y") == 5 * 365 * 86400
    base: dict[str, Any] = {
        "version": "v",
        "categories": {"fraud": "normal", "harassment": "normal"},
        "severities": {
            "normal": {
                "chain": [{"role": "hr", "acknowledge_within": "1h"}],
                "repeat_last_every": "1h",
                "feedback_within": "90d",
            }
        },
        "reporter_acknowledgement_within": "7d",
    }
    assert Policy.model_validate(base).retention_of("fraud") == 5 * 365 * 86400
    kept = Policy.model_validate(
        {**base, "retention": {"after_closure": "2y", "categories": {"fraud": "10y"}}}
    )
    assert kept.retention_of("fraud") == 10 * 365 * 86400
    assert kept.retention_of("harassment") == 2 * 365 * 86400
    with pytest.raises(ValidationError):
        Policy.model_validate({**base, "retention": {"after_closure": "soon"}})


def test_knowledge_names_the_reporter_only_when_revealed_and_opened() -> None:
    key = IncidentKey("inc-1", new_data_key(), new_salt(), Pseudonyms(new_data_key()))

    def entry(index: int, type_: str, data: dict[str, Any]) -> LedgerEvent:
        event = make_event(type_, subject="inc-1", data=data, source="/t", time=NOW)
        return LedgerEvent(index=index, recorded_at=NOW, envelope=event)

    submitted = entry(
        0,
        "incident.report.submitted.v1",
        {
            "category": "harassment",
            "summary": key.seal("summary", "s"),
            "description": key.seal("description", "d"),
            "reporter": key.pseudonym("p-liu"),
            "reporter_identity": key.seal("reporter_identity", "p-liu"),
            "report_digest": key.digest(b"{}"),
        },
    )
    disclosed = entry(
        1,
        "incident.identity.disclosed.v1",
        {"principal": "p-custos", "reason": key.seal("reason", "why")},
    )
    sealed = [submitted, disclosed]
    opened = [
        LedgerEvent(e.index, e.recorded_at, open_envelope(e.envelope, key.open, CUSTODIAN_FIELDS))
        for e in sealed
    ]
    # a reader is never shown who reported, nor why a custodian asked
    for e in sealed:
        read = open_envelope(e.envelope, key.open)
        assert read.data.get("reporter_identity") == e.envelope.data.get("reporter_identity")
        assert read.data.get("reason") == e.envelope.data.get("reason")
    assert (
        open_envelope(disclosed.envelope, key.open, CUSTODIAN_FIELDS).data["reason"]
        == (disclosed.envelope.data["reason"])
    )
    plain = knowledge_as_of("inc-1", opened, NOW)
    assert plain.names() == ("p-custos", "reporter")
    assert plain.get("p-custos").via == ("identity_disclosed",)  # type: ignore[union-attr]
    assert "p-liu" in knowledge_as_of("inc-1", opened, NOW, reveal_reporter=True).names()
    # a sealed value or a pseudonym never names anyone, even when revealing
    assert "reporter" in knowledge_as_of("inc-1", sealed, NOW, reveal_reporter=True).names()
