"""Registered systems: who may report incidents from outside, and how each proves it.

The systems file (`INCIDENTS_SYSTEMS_FILE`, YAML; the demo default is
`services/data/systems.yaml`) lists each system with its id, its scopes
(`services.domain.inbound.SCOPES`) and how it authenticates:

- `public_keys`: Ed25519 public keys (base64 of the 32 raw bytes). Its records on
  `incident.inbound` are signed like the services' events (docs/event-signing.md), with
  `signingkey` = `system:<id>:<first 16 hex of SHA-256(raw key)>`; a key may be revoked.
- `http: true`: it may send over HTTP (`POST /v1/events`), authenticated by intake's
  bearer authentication as principal `system:<id>` (a development token, or an OIDC
  client-credentials token with `sub = system:<id>` in production).
- `kafka_principal`: its Kafka principal in production (`User:<name>`), for the broker's
  ACLs (deploy/kafka); the local broker cannot check it.

An invalid file stops start-up with a message naming file, line and field.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.domain.envelope import SIGNATURE_ATTRIBUTE, SIGNING_KEY_ATTRIBUTE, signing_input
from services.domain.inbound import SCOPES, InboundRefused
from services.infra.config import ConfigError, load_yaml_model
from services.infra.signing import key_id

SYSTEM_PREFIX = "system:"


class SystemKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    public_key: str = Field(description="Base64 of the 32-byte raw Ed25519 public key.")
    revoked: bool = False

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str) -> str:
        try:
            Ed25519PublicKey.from_public_bytes(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("not base64 of a 32-byte Ed25519 public key") from exc
        return value


class SystemEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="The system's id.")
    scopes: list[str] = Field(min_length=1, description="What it may do: " + ", ".join(SCOPES))
    public_keys: list[SystemKey] = Field(default_factory=list)
    http: bool = Field(False, description="May send over HTTP as principal system:<id>.")
    kafka_principal: str | None = Field(
        None, pattern=r"^User:\S+$", description="Its Kafka principal in production."
    )

    @field_validator("scopes")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scope {unknown[0]!r} (known: {', '.join(SCOPES)})")
        return value


class SystemsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    systems: list[SystemEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class System:
    """A registered system as the inbound paths use it."""

    id: str
    scopes: frozenset[str]
    keys: dict[str, tuple[Ed25519PublicKey, bool]]
    """Key id -> (public key, revoked)."""
    http: bool
    kafka_principal: str | None

    @property
    def principal(self) -> str:
        return f"{SYSTEM_PREFIX}{self.id}"


class Systems:
    """The registered systems, by id and by key id."""

    def __init__(self, entries: list[SystemEntry]) -> None:
        self.by_id: dict[str, System] = {}
        self.by_key: dict[str, System] = {}
        for entry in entries:
            keys = {}
            for item in entry.public_keys:
                public = Ed25519PublicKey.from_public_bytes(base64.b64decode(item.public_key))
                keys[key_id(f"{SYSTEM_PREFIX}{entry.id}", public)] = (public, item.revoked)
            system = System(
                entry.id, frozenset(entry.scopes), keys, entry.http, entry.kafka_principal
            )
            self.by_id[entry.id] = system
            self.by_key.update(dict.fromkeys(keys, system))

    def for_principal(self, principal: str | None) -> System | None:
        """The system an HTTP caller is, when it is a registered one allowed on HTTP."""
        if principal is None or not principal.startswith(SYSTEM_PREFIX):
            return None
        system = self.by_id.get(principal[len(SYSTEM_PREFIX) :])
        return system if system is not None and system.http else None

    def signer_of(self, event: dict[str, Any]) -> System:
        """The registered system that signed an inbound event, or InboundRefused
        (`unauthenticated`: unsigned, unknown or revoked key, bad signature)."""
        kid, signature = event.get(SIGNING_KEY_ATTRIBUTE), event.get(SIGNATURE_ATTRIBUTE)
        if not isinstance(kid, str) or not isinstance(signature, str):
            raise InboundRefused("unauthenticated", "not authenticated: unsigned")
        system = self.by_key.get(kid)
        if system is None:
            raise InboundRefused("unauthenticated", "not authenticated: unknown key")
        public, revoked = system.keys[kid]
        if revoked:
            raise InboundRefused("unauthenticated", "not authenticated: revoked key")
        try:
            public.verify(base64.b64decode(signature, validate=True), signing_input(event))
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise InboundRefused("unauthenticated", "not authenticated: bad signature") from exc
        return system


def load_systems(path: Path) -> Systems:
    """The systems file, or ConfigError naming file, line and field."""
    parsed = load_yaml_model(path, SystemsFile)
    ids = [s.id for s in parsed.systems]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"{path}: field systems: system {duplicate!r} is listed twice")
    return Systems(list(parsed.systems))
