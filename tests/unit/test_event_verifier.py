"""The verifier written from docs/event-signing.md alone (tests/event_verifier.py) checks
the document's public vectors: it imports no signing code of the services."""

from __future__ import annotations

import json

from tests import event_verifier

KEY_SET = """
keys:
  - id: intake:56475aa75463474c
    service: intake
    public_key: A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=
    revoked: false
"""
SIGNED = (
    '{"actor":"p-chen","correlationid":"3b9e1c52-8f0a-4d6e-b1a2-c3d4e5f60718",'
    '"data":{"level":1,"principal":"p-chen"},"datacontenttype":"application/json",'
    '"id":"7f0c4e2a-2b1d-4c3e-9a5f-0123456789ab",'
    '"signature":"/zx4jprmH1ldy/fyjMfFAKOJ/zp3EYG/6BWo5Ild4aMp9g0ofw0Auxy5CUjCYIvc7B+mMXruLl'
    'Xc+p0iUg/kBw==","signingkey":"intake:56475aa75463474c","source":"/services/intake",'
    '"specversion":"1.0","subject":"3b9e1c52-8f0a-4d6e-b1a2-c3d4e5f60718",'
    '"time":"2026-12-01T09:00:00.000000Z","type":"incident.acknowledged.v1"}'
)
UNICODE = {
    "specversion": "1.0",
    "id": "0d9b5a61-2c7e-4f3a-8b19-5e6f7a8b9c0d",
    "source": "/services/intake",
    "type": "directory.person.upserted.v1",
    "time": "2026-12-01T09:00:00.000000Z",
    "subject": "p-agren",
    "datacontenttype": "application/json",
    "data": {"person_id": "p-agren", "name": "Zoë Ågren", "roles": []},
    "signingkey": "intake:56475aa75463474c",
    "signature": "BZYoQfrJO+Zpy4LDobe103ijTUm65F5dVGJjpV/zmCw5t85j6c5/YKPzHqQOfbi/uqnlL7AQnCF/hco8"
    "BcfWDA==",
}


def test_the_documented_vectors_verify_and_a_change_does_not() -> None:
    keys = event_verifier.read_key_set(KEY_SET)
    assert event_verifier.verify(SIGNED.encode(), keys) == (True, "intake")
    assert event_verifier.verify(json.dumps(UNICODE).encode(), keys) == (True, "intake")
    forged = SIGNED.replace('"actor":"p-chen"', '"actor":"p-board"').encode()
    assert event_verifier.verify(forged, keys) == (False, "intake")
    revoked = event_verifier.read_key_set(KEY_SET.replace("revoked: false", "revoked: true"))
    assert event_verifier.verify(SIGNED.encode(), revoked)[0] is False
