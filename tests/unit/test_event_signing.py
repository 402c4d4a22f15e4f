"""Event signatures (issue 20): the public vectors of docs/event-signing.md, and every
way an event can fail to be authentic."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.audit import ledger
from services.domain.envelope import Envelope, signing_input
from services.domain.events import CATALOG, SERVICES, make_event
from services.infra import signing
from services.infra.signing import (
    BAD_SIGNATURE,
    REVOKED_KEY,
    UNKNOWN_KEY,
    UNSIGNED,
    WRONG_PRODUCER,
    KeyEntry,
    KeySet,
    Signer,
    SigningError,
)

VECTOR_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
"""The vectors' private key: the 32 bytes 00 01 02 ... 1f (public: never use it)."""
VECTOR_PUBLIC = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
VECTOR_KEY_ID = "intake:56475aa75463474c"
VECTOR_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "7f0c4e2a-2b1d-4c3e-9a5f-0123456789ab",
    "source": "/services/intake",
    "type": "incident.acknowledged.v1",
    "time": "2026-12-01T09:00:00.000000Z",
    "subject": "3b9e1c52-8f0a-4d6e-b1a2-c3d4e5f60718",
    "datacontenttype": "application/json",
    "data": {"principal": "p-chen", "level": 1},
    "actor": "p-chen",
    "correlationid": "3b9e1c52-8f0a-4d6e-b1a2-c3d4e5f60718",
}
VECTOR_INPUT = (
    b"incidents-event-signature/v1\n"
    b'{"actor":"p-chen","correlationid":"3b9e1c52-8f0a-4d6e-b1a2-c3d4e5f60718",'
    b'"data":{"level":1,"principal":"p-chen"},"datacontenttype":"application/json",'
    b'"id":"7f0c4e2a-2b1d-4c3e-9a5f-0123456789ab","signingkey":"intake:56475aa75463474c",'
    b'"source":"/services/intake","specversion":"1.0",'
    b'"subject":"3b9e1c52-8f0a-4d6e-b1a2-c3d4e5f60718","time":"2026-12-01T09:00:00.000000Z",'
    b'"type":"incident.acknowledged.v1"}'
)
VECTOR_SIGNATURE = (
    "/zx4jprmH1ldy/fyjMfFAKOJ/zp3EYG/6BWo5Ild4aMp9g0ofw0Auxy5CUjCYIvc7B+mMXruLlXc+p0iUg/kBw=="
)
UNICODE_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "0d9b5a61-2c7e-4f3a-8b19-5e6f7a8b9c0d",
    "source": "/services/intake",
    "type": "directory.person.upserted.v1",
    "time": "2026-12-01T09:00:00.000000Z",
    "subject": "p-agren",
    "datacontenttype": "application/json",
    "data": {"person_id": "p-agren", "name": "Zoë Ågren", "roles": []},
}
UNICODE_SIGNATURE = (
    "BZYoQfrJO+Zpy4LDobe103ijTUm65F5dVGJjpV/zmCw5t85j6c5/YKPzHqQOfbi/uqnlL7AQnCF/hco8BcfWDA=="
)


def vector_keys(*, revoked: bool = False) -> KeySet:
    public = VECTOR_KEY.public_key()
    return KeySet([KeyEntry(VECTOR_KEY_ID, "intake", public, revoked)])


def test_the_vector_key_has_the_documented_public_key_and_id() -> None:
    public = VECTOR_KEY.public_key()
    assert base64.b64encode(signing.raw_public(public)).decode() == VECTOR_PUBLIC
    assert signing.key_id("intake", public) == VECTOR_KEY_ID


def test_the_signing_input_and_signature_of_the_vectors() -> None:
    signed = Signer("intake", VECTOR_KEY).sign(VECTOR_EVENT)
    assert signed["signingkey"] == VECTOR_KEY_ID
    assert signing_input(signed) == VECTOR_INPUT
    assert signed["signature"] == VECTOR_SIGNATURE
    assert Signer("intake", VECTOR_KEY).sign(UNICODE_EVENT)["signature"] == UNICODE_SIGNATURE
    assert "Zoë Ågren".encode() in signing_input(UNICODE_EVENT)  # UTF-8, not \\u escapes
    assert vector_keys().check(signed) is None


def test_libsodium_and_openssl_agree_on_signatures() -> None:
    """Signatures are made and checked by libsodium (faster); Ed25519 is deterministic,
    so they are the bytes OpenSSL (`cryptography`) makes, and each accepts the other's."""
    message = signing_input(VECTOR_EVENT)
    made = Signer("intake", VECTOR_KEY)._signature(message)
    assert made == VECTOR_KEY.sign(message)
    VECTOR_KEY.public_key().verify(made, message)  # raises if OpenSSL disagrees
    entry = KeyEntry(VECTOR_KEY_ID, "intake", VECTOR_KEY.public_key())
    assert entry.verify(made, message)
    flipped = bytes([made[0] ^ 1]) + made[1:]
    assert not entry.verify(flipped, message)
    assert not entry.verify(made, message + b" ")
    assert not entry.verify(made[:-1], message)  # a short signature is refused, not raised
    assert not entry.verify(b"", message)


def test_signing_again_replaces_the_old_signature() -> None:
    once = Signer("intake", VECTOR_KEY).sign(VECTOR_EVENT)
    assert Signer("intake", VECTOR_KEY).sign(once) == once


def test_a_float_in_an_events_data_is_refused() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        Envelope.model_validate({**VECTOR_EVENT, "data": {"level": 1.0, "principal": "p"}})
    with pytest.raises(ValueError, match="floating-point"):
        Envelope.model_validate({**VECTOR_EVENT, "data": {"nested": [{"x": 0.5}]}})


def _signed(**changes: Any) -> dict[str, Any]:
    return {**Signer("intake", VECTOR_KEY).sign(VECTOR_EVENT), **changes}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({k: v for k, v in _signed().items() if k != "signature"}, UNSIGNED),
        ({k: v for k, v in _signed().items() if k != "signingkey"}, UNSIGNED),
        (VECTOR_EVENT, UNSIGNED),
        (_signed(actor="p-board"), BAD_SIGNATURE),  # the forged acknowledgement
        (_signed(data={"principal": "p-board", "level": 1}), BAD_SIGNATURE),
        (_signed(signature="not base64!"), BAD_SIGNATURE),
        (_signed(signature=base64.b64encode(b"\0" * 64).decode()), BAD_SIGNATURE),
        (_signed(signingkey="intake:0000000000000000"), UNKNOWN_KEY),
        (_signed(signingkey=5), UNSIGNED),
    ],
)
def test_an_event_that_is_not_what_its_producer_signed_is_refused(
    event: dict[str, Any], reason: str
) -> None:
    assert vector_keys().check(event) == reason


def test_a_revoked_key_is_refused_even_with_a_good_signature() -> None:
    assert vector_keys(revoked=True).check(_signed()) == REVOKED_KEY


def test_a_service_cannot_sign_another_services_facts() -> None:
    """Escalation's key on an acknowledgement (intake's fact): the issue's forgery by a
    compromised escalation, and triage's key on an escalation."""
    keys = signing.development_key_set()
    by_escalation = Signer("escalation", signing.development_key("escalation"))
    assert keys.check(by_escalation.sign(VECTOR_EVENT)) == WRONG_PRODUCER
    escalated = {**VECTOR_EVENT, "type": "incident.escalated.v1", "source": "/services/triage"}
    assert keys.check(signing.signer_for("triage").sign(escalated)) == WRONG_PRODUCER
    assert keys.check(signing.signer_for("escalation").sign(escalated)) is None


def test_each_catalog_type_has_producers_among_the_services() -> None:
    for entry in CATALOG.values():
        assert entry.producers and entry.producers <= set(SERVICES), entry.name
    assert CATALOG["incident.acknowledged.v1"].producers == {"intake"}
    assert CATALOG["incident.escalated.v1"].producers == {"escalation"}


def test_records_that_are_no_event_are_left_to_the_consumers_validation() -> None:
    keys = signing.development_key_set()
    assert keys.check_bytes(b"{oops") == (None, None)
    assert keys.check_bytes(b"[1, 2]") == (None, None)
    assert keys.check({**VECTOR_EVENT, "type": "no.such.type.v1"}) is None
    unsigned = json.dumps(VECTOR_EVENT).encode()
    assert keys.check_bytes(unsigned) == (UNSIGNED, VECTOR_EVENT["id"])


def test_sign_event_uses_the_service_its_source_names() -> None:
    event = make_event(
        "incident.notified.v1",
        subject="inc",
        data={"principal": "p-chen", "level": 1, "channel": "email", "report_digest": "sha256:00"},
        source="/services/escalation",
        time=datetime.now(UTC),
    )
    signed = json.loads(signing.sign_event(event.to_dict()))
    assert signed["signingkey"].startswith("escalation:")
    assert signing.development_key_set().check(signed) is None
    with pytest.raises(SigningError):  # two producers, and a source naming neither
        signing.sign_event({**event.to_dict(), "source": "/tests"})


def test_the_key_set_file_round_trips_and_is_checked(tmp_path: Path) -> None:
    entries = list(signing.development_key_set().entries.values())
    revoked = KeyEntry(VECTOR_KEY_ID, "intake", VECTOR_KEY.public_key(), revoked=True)
    text = signing.key_set_yaml([*entries, revoked])
    parsed = signing.parse_key_set(text)
    assert set(parsed.entries) == {e.key_id for e in entries} | {VECTOR_KEY_ID}
    assert parsed.entries[VECTOR_KEY_ID].revoked
    dated = text.replace("revoked: true", "revoked: false\n  revoked_at: 2026-12-01T00:00:00Z")
    assert signing.parse_key_set(dated).entries[VECTOR_KEY_ID].revoked
    for bad in (
        text.replace(VECTOR_KEY_ID, "intake:ffffffffffffffff"),  # id not of the key
        text.replace("service: intake", "service: mallory", 1),
        "keys: [{id: x}]",
        "- not a mapping",
    ):
        with pytest.raises(SigningError):
            signing.parse_key_set(bad)


def test_a_private_key_loads_from_pem_or_base64(tmp_path: Path) -> None:
    pem, raw = tmp_path / "k.pem", tmp_path / "k.b64"
    pem.write_bytes(signing.private_key_pem(VECTOR_KEY))
    raw.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    for path in (pem, raw):
        assert signing.key_id("intake", signing.load_private_key(path).public_key()) == (
            VECTOR_KEY_ID
        )
    (tmp_path / "bad").write_text("nonsense")
    for path in (tmp_path / "bad", tmp_path / "missing"):
        with pytest.raises(SigningError):
            signing.load_private_key(path)


def test_production_refuses_to_start_without_a_key_and_a_key_set(tmp_path: Path) -> None:
    key = tmp_path / "intake.pem"
    key.write_bytes(signing.private_key_pem(VECTOR_KEY))
    keys = tmp_path / "keys.yaml"
    keys.write_text(signing.key_set_yaml(vector_keys().entries.values()))
    with pytest.raises(SigningError, match="INCIDENTS_EVENT_SIGNING_KEY"):
        signing.configure("intake", "production", None, keys)
    with pytest.raises(SigningError, match="INCIDENTS_EVENT_KEYS_FILE"):
        signing.configure("intake", "production", key, None)
    with pytest.raises(SigningError, match="no valid entry"):  # its key is not in the set
        signing.configure("triage", "production", key, keys)
    try:
        assert signing.configure("intake", "production", key, keys).entries.keys() == {
            VECTOR_KEY_ID
        }
        assert signing.signer_for("intake").key_id == VECTOR_KEY_ID
        with pytest.raises(SigningError):  # never a public development key in production
            signing.signer_for("escalation")
    finally:
        signing.configure("intake", "test", None, None)  # back to the development key
    assert (
        signing.signer_for("intake").key_id
        == signing.Signer("intake", signing.development_key("intake")).key_id
    )


def _record(value: bytes, offset: int) -> ConsumerRecord:
    return ConsumerRecord(
        "incident.activity", 0, offset, 0, 0, b"k", value, None, 1, len(value), ()
    )


def test_audit_records_a_refused_record_and_a_replay_as_rejected_input() -> None:
    """The ledger's classification (services/audit/ledger.py): a record the signature check
    refused, and one that reuses a recorded event's id with other content, are rejected
    input with the reason; the same record again is the same entry."""
    genuine = Signer("intake", VECTOR_KEY).sign_bytes(VECTOR_EVENT)
    other = Signer("intake", VECTOR_KEY).sign_bytes({**VECTOR_EVENT, "actor": "p-board"})
    refused = ledger.classify(_record(genuine, 1), "revoked key")
    assert refused.event is None and refused.reason == "not authentic: revoked key"
    records = [_record(genuine, 1), _record(genuine, 2), _record(other, 3)]
    candidates = [ledger.classify(r) for r in records]
    kept = ledger._replays(candidates, records, {})
    assert kept[0].event is not None and kept[1].record_key == kept[0].record_key
    assert kept[2].event is None and kept[2].reason == "not authentic: replayed"
    assert kept[2].record_key.startswith("replayed:")
    stored = {kept[0].record_key: ledger.leaf_bytes(0, datetime.now(UTC), kept[0])}
    later = ledger._replays([ledger.classify(records[2])], records[2:], stored)
    assert later[0].reason == "not authentic: replayed"


def test_key_files_are_made_once_and_the_key_set_lists_them(tmp_path: Path) -> None:
    files, keys_file = signing.ensure_key_files(tmp_path / "keys")
    again, _ = signing.ensure_key_files(tmp_path / "keys")
    assert {s: p.read_bytes() for s, p in files.items()} == {
        s: p.read_bytes() for s, p in again.items()
    }
    assert set(files) == set(SERVICES)
    keys = signing.parse_key_set(keys_file.read_text())
    for service, path in files.items():
        assert path.stat().st_mode & 0o077 == 0
        signer = Signer(service, signing.load_private_key(path))
        assert keys.entries[signer.key_id].service == service
    assert (tmp_path / "keys").stat().st_mode & 0o077 == 0


def test_making_the_key_files_again_keeps_a_revocation(tmp_path: Path) -> None:
    files, keys_file = signing.ensure_key_files(tmp_path)
    old = Signer("intake", signing.load_private_key(files["intake"])).key_id
    keys_file.write_text(keys_file.read_text().replace("revoked: false", "revoked: true", 1))
    files["intake"].unlink()  # rotated: a new key is made, the old one stays revoked
    files, keys_file = signing.ensure_key_files(tmp_path)
    keys = signing.parse_key_set(keys_file.read_text())
    new = Signer("intake", signing.load_private_key(files["intake"])).key_id
    assert keys.entries[old].revoked and not keys.entries[new].revoked
    assert len(keys.entries) == len(SERVICES) + 1
