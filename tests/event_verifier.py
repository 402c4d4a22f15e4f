"""An event signature verifier written from docs/event-signing.md alone.

It imports nothing of the services: only `json`, `yaml` and `cryptography`, as a
verifier in another system (or language) would, so a test that uses it shows the
documented canonical form is the one the services sign.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

CONTEXT = b"incidents-event-signature/v1\n"


def canonical(event: dict[str, Any]) -> bytes:
    """The documented signing input: the context line, then the event without
    `signature` as JSON with sorted keys, no whitespace, UTF-8 (RFC 8785 for these values)."""
    unsigned = {k: v for k, v in event.items() if k != "signature"}
    text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return CONTEXT + text.encode("utf-8")


def read_key_set(text: str) -> dict[str, tuple[str, Ed25519PublicKey, bool]]:
    """Key id -> (service, public key, revoked) from the documented YAML key set."""
    keys = {}
    for entry in yaml.safe_load(text)["keys"]:
        raw = base64.b64decode(entry["public_key"])
        assert entry["id"] == f"{entry['service']}:{hashlib.sha256(raw).hexdigest()[:16]}"
        revoked = bool(entry.get("revoked")) or entry.get("revoked_at") is not None
        keys[entry["id"]] = (entry["service"], Ed25519PublicKey.from_public_bytes(raw), revoked)
    return keys


def verify(value: bytes, keys: dict[str, tuple[str, Ed25519PublicKey, bool]]) -> tuple[bool, str]:
    """(True, the signing service) when the record is signed by a valid key of the set."""
    event = json.loads(value)
    entry = keys.get(event.get("signingkey", ""))
    if entry is None or entry[2] or "signature" not in event:
        return False, ""
    try:
        entry[1].verify(base64.b64decode(event["signature"]), canonical(event))
    except InvalidSignature:
        return False, entry[0]
    return True, entry[0]
