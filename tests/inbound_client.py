"""A sending system as docs/inbound.md describes it, written from the docs alone.

It imports nothing of the product: it builds an `incident.report.inbound.v1` event,
signs it (Ed25519 over `incidents-event-signature/v1\\n` + the canonical JSON of the
structured event without `signature`) with a demo system's PUBLIC development key, and
encodes it for Kafka or HTTP in structured or binary mode. It is the Python equivalent
of the kcat and curl commands in docs/inbound.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CONTEXT = b"incidents-event-signature/v1\n"
REPORT = {"category": "harassment", "summary": "Comments in meetings", "description": "..."}


def demo_key(system: str) -> Ed25519PrivateKey:
    """The demo system's PUBLIC development key (services/data/systems.yaml)."""
    seed = hashlib.sha256(b"incidents-insecure-development-event-key/v1:system:" + system.encode())
    return Ed25519PrivateKey.from_private_bytes(seed.digest())


def key_id(system: str, key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"system:{system}:{hashlib.sha256(raw).hexdigest()[:16]}"


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event(event_id: str | None = None, **data: Any) -> dict[str, Any]:
    """An unsigned inbound event (structured form, every attribute a string)."""
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": "/systems/hris",
        "type": "incident.report.inbound.v1",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "datacontenttype": "application/json",
        "data": {**REPORT, **data},
    }


def sign(
    ev: dict[str, Any], system: str = "hris", key: Ed25519PrivateKey | None = None
) -> dict[str, Any]:
    """The event signed by `system` (with `key`, by default its demo key)."""
    key = key or demo_key(system)
    unsigned = {k: v for k, v in ev.items() if k != "signature"}
    unsigned["signingkey"] = key_id(system, key)
    signature = key.sign(CONTEXT + canonical(unsigned))
    return {**unsigned, "signature": base64.b64encode(signature).decode()}


def structured(ev: dict[str, Any]) -> tuple[list[tuple[str, bytes]], bytes]:
    """Kafka structured mode: (headers, value)."""
    return [("content-type", b"application/cloudevents+json")], canonical(ev)


def binary(ev: dict[str, Any], prefix: str = "ce_") -> tuple[list[tuple[str, bytes]], bytes]:
    """Binary mode (`ce_` for Kafka, `ce-` for HTTP): every attribute a header, the
    content type in `content-type`, `data` the value."""
    headers = [("content-type", ev["datacontenttype"].encode())]
    headers += [
        (prefix + name, str(value).encode())
        for name, value in ev.items()
        if name not in ("data", "datacontenttype")
    ]
    return headers, json.dumps(ev["data"]).encode()
