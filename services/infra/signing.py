"""Event signatures: each service signs what it publishes, consumers check the producer.

Every event a service publishes carries two CloudEvents extension attributes:
`signingkey` (the key id, `<service>:<first 16 hex of SHA-256(raw public key)>`) and
`signature` (base64 of the Ed25519 signature of `envelope.signing_input`). A consumer
accepts an event only when its key is in the configured key set, not revoked, belongs
to a service the catalog allows to produce the event's type, and the signature holds.
docs/event-signing.md describes the canonical form and the key set file.

Keys: a service's private key is `INCIDENTS_EVENT_SIGNING_KEY` (a PEM or raw base64
Ed25519 private key file), the key set `INCIDENTS_EVENT_KEYS_FILE` (YAML). Unset, in
development and tests, each service derives a PUBLIC, INSECURE development key from its
name and the key set holds those; production refuses to start without both files.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.domain.envelope import (
    SIGNATURE_ATTRIBUTE,
    SIGNING_CONTEXT,
    SIGNING_KEY_ATTRIBUTE,
    canonical_json,
    signing_input,
)
from services.domain.events import CATALOG, SERVICES

log = logging.getLogger(__name__)

UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad signature"
UNKNOWN_KEY = "unknown key"
REVOKED_KEY = "revoked key"
WRONG_PRODUCER = "wrong producer"
REPLAYED = "replayed"
REASONS = (UNSIGNED, BAD_SIGNATURE, UNKNOWN_KEY, REVOKED_KEY, WRONG_PRODUCER, REPLAYED)
"""Why a record is refused (the `reason` label of incidents_rejected_events_total)."""

_DEVELOPMENT_SEED = b"incidents-insecure-development-event-key/v1:"
SIGNATURE_BYTES = 64


class SigningError(RuntimeError):
    """A key or key set cannot be loaded, or a service has no key to sign with."""


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(service: str, key: Ed25519PublicKey) -> str:
    """The stable id of a service's key: `<service>:<first 16 hex of SHA-256(raw key)>`."""
    return f"{service}:{hashlib.sha256(raw_public(key)).hexdigest()[:16]}"


def development_key(service: str) -> Ed25519PrivateKey:
    """The PUBLIC development key of a service, derived from its name: anyone can sign
    as the service with it, so it only serves development and tests."""
    seed = hashlib.sha256(_DEVELOPMENT_SEED + service.encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


@dataclass(frozen=True)
class Signer:
    """Signs events as one service."""

    service: str
    private_key: Ed25519PrivateKey

    @functools.cached_property
    def key_id(self) -> str:
        return key_id(self.service, self.private_key.public_key())

    @functools.cached_property
    def _secret(self) -> bytes:
        """libsodium's 64-byte secret key (seed and public key) of `private_key`."""
        seed = self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return bytes(nacl.bindings.crypto_sign_seed_keypair(seed)[1])

    def _signature(self, message: bytes) -> bytes:
        """The Ed25519 signature of `message` (RFC 8032: deterministic, the same bytes
        whichever library computes it), by libsodium: 20 µs instead of OpenSSL's 29."""
        return bytes(nacl.bindings.crypto_sign(message, self._secret)[:SIGNATURE_BYTES])

    def sign(self, event: dict[str, Any]) -> dict[str, Any]:
        """A copy of the event with `signingkey` and `signature` (any old ones replaced)."""
        signed = {k: v for k, v in event.items() if k != SIGNATURE_ATTRIBUTE}
        signed[SIGNING_KEY_ATTRIBUTE] = self.key_id
        signature = self._signature(signing_input(signed))
        signed[SIGNATURE_ATTRIBUTE] = base64.b64encode(signature).decode("ascii")
        return signed

    def sign_bytes(self, event: dict[str, Any]) -> bytes:
        """The signed event as the canonical JSON bytes stored, published and hashed:
        `canonical_json(self.sign(event))`, serialised once instead of twice (a bulk
        import signs hundreds of thousands). The members sorting before `signature`
        and those after are serialised apart; the signing input and the signed bytes
        are both joined from these two parts."""
        before = {k: v for k, v in event.items() if k < SIGNATURE_ATTRIBUTE}
        after = {k: v for k, v in event.items() if k > SIGNATURE_ATTRIBUTE}
        after[SIGNING_KEY_ATTRIBUTE] = self.key_id  # `signingkey` sorts after `signature`
        head = canonical_json(before)[1:-1]  # members without their braces
        tail = canonical_json(after)[1:-1]  # never empty: it holds `signingkey`
        unsigned = b"{" + (head + b"," if head else b"") + tail + b"}"
        signature = self._signature(SIGNING_CONTEXT + unsigned)
        member = b'"%s":"%s"' % (SIGNATURE_ATTRIBUTE.encode(), base64.b64encode(signature))
        return b"{" + (head + b"," if head else b"") + member + b"," + tail + b"}"


@dataclass(frozen=True)
class KeyEntry:
    """One key of the key set."""

    key_id: str
    service: str
    public_key: Ed25519PublicKey
    revoked: bool = False

    @functools.cached_property
    def raw(self) -> bytes:
        """The 32 raw bytes of `public_key`, as libsodium takes them."""
        return raw_public(self.public_key)

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature of `message`.

        libsodium (PyNaCl, from the authors of `cryptography`) checks a signature in
        about 47 µs where OpenSSL's Ed25519 takes 96 on the same machine (bench, "event
        signatures"); every consumer checks every event. libsodium is the stricter of
        the two (it refuses non-canonical signatures and small-order keys), which no
        honest signer produces."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            nacl.bindings.crypto_sign_open(signature + message, self.raw)
        except nacl.exceptions.CryptoError:
            return False
        return True


class KeySet:
    """The keys consumers accept, by id; `check` says whether an event is authentic."""

    def __init__(self, entries: Iterable[KeyEntry]) -> None:
        self.entries = {e.key_id: e for e in entries}

    def check(self, event: dict[str, Any]) -> str | None:
        """None when the event is authentic, else the reason (one of `REASONS`).

        An event of a type the catalog does not know passes: it is invalid input, which
        the consumers refuse on their own (and say so in their dead letter).
        """
        entry_type = CATALOG.get(str(event.get("type")))
        if entry_type is None:
            return None
        kid, signature = event.get(SIGNING_KEY_ATTRIBUTE), event.get(SIGNATURE_ATTRIBUTE)
        if not isinstance(kid, str) or not isinstance(signature, str):
            return UNSIGNED
        entry = self.entries.get(kid)
        if entry is None:
            return UNKNOWN_KEY
        if entry.revoked:
            return REVOKED_KEY
        if entry.service not in entry_type.producers:
            return WRONG_PRODUCER
        try:
            authentic = entry.verify(
                base64.b64decode(signature, validate=True), signing_input(event)
            )
        except (binascii.Error, ValueError):
            return BAD_SIGNATURE
        return None if authentic else BAD_SIGNATURE

    def check_bytes(self, value: bytes | None) -> tuple[str | None, str | None]:
        """`check` for a record value, with the event's id: (reason or None, id or None).

        A value that is not a JSON object passes (None, None): the consumer's own
        validation refuses it as invalid input.
        """
        try:
            event = json.loads(value or b"")
        except (UnicodeDecodeError, RecursionError, ValueError):
            return None, None
        if not isinstance(event, dict):
            return None, None
        event_id = event.get("id")
        return self.check(event), event_id if isinstance(event_id, str) else None


def development_key_set() -> KeySet:
    """The key set of the development keys of every service."""
    entries = []
    for service in SERVICES:
        public = development_key(service).public_key()
        entries.append(KeyEntry(key_id(service, public), service, public))
    return KeySet(entries)


class _KeyFileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    service: str
    public_key: str = Field(description="Base64 of the 32-byte raw Ed25519 public key.")
    revoked: bool = False
    revoked_at: datetime | None = None


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[_KeyFileEntry]


def parse_key_set(text: str) -> KeySet:
    """A key set from its YAML text (docs/event-signing.md); SigningError if invalid."""
    try:
        parsed = _KeyFile.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise SigningError(f"event key set: {exc}") from exc
    entries = []
    for item in parsed.keys:
        if item.service not in SERVICES:
            raise SigningError(f"event key set: {item.id}: unknown service {item.service!r}")
        try:
            public = Ed25519PublicKey.from_public_bytes(
                base64.b64decode(item.public_key, validate=True)
            )
        except (binascii.Error, ValueError) as exc:
            raise SigningError(f"event key set: {item.id}: not an Ed25519 public key") from exc
        if item.id != key_id(item.service, public):
            raise SigningError(f"event key set: {item.id}: the id does not match the key")
        revoked = item.revoked or item.revoked_at is not None
        entries.append(KeyEntry(item.id, item.service, public, revoked))
    return KeySet(entries)


def key_set_yaml(entries: Iterable[KeyEntry]) -> str:
    """The YAML text of a key set (what `incidents up` writes)."""
    keys = [
        {
            "id": e.key_id,
            "service": e.service,
            "public_key": base64.b64encode(raw_public(e.public_key)).decode("ascii"),
            "revoked": e.revoked,
        }
        for e in entries
    ]
    return yaml.safe_dump({"keys": keys}, sort_keys=False)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A service's private key from a PEM (PKCS#8) file or one holding the raw 32 bytes
    in base64; SigningError if it is neither."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"event signing key {path}: {exc.strerror}") from exc
    if b"-----BEGIN" in data:
        try:
            return private_key_from_pem(data)
        except ValueError as exc:
            raise SigningError(f"event signing key {path}: {exc}") from exc
    try:
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(data.strip(), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise SigningError(f"event signing key {path}: not an Ed25519 private key") from exc


def private_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    """An unencrypted PEM (PKCS#8) Ed25519 private key; ValueError saying why not."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"a PEM {type(key).__name__}, not an Ed25519 private key")
    return key


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """A private key as unencrypted PEM (PKCS#8), as `incidents up` writes it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- the process's keys ------------------------------------------------------------
# A process signs with the keys its services configured (one in production; a test
# may run several services in one process). Outside production a development key fills
# in for a service this process did not configure; a production process never signs
# with one.

_signers: dict[str, Signer] = {}
_development: dict[str, Signer] = {}
_production = False


def configure(
    service: str, environment: str, key_file: Path | None, keys_file: Path | None
) -> KeySet:
    """Set up signing for a service at start; returns the key set its consumers check.

    Production refuses to start without a key file and a key set, or with a key the set
    does not list for this service (SigningError).
    """
    global _production
    if environment == "production" and (key_file is None or keys_file is None):
        raise SigningError(
            "production needs INCIDENTS_EVENT_SIGNING_KEY and INCIDENTS_EVENT_KEYS_FILE"
        )
    if key_file is not None:
        signer = Signer(service, load_private_key(key_file))
    else:
        signer = Signer(service, development_key(service))
        log.warning(
            "%s signs its events with the PUBLIC development key %s: anyone can forge"
            " them; set INCIDENTS_EVENT_SIGNING_KEY outside development",
            service,
            signer.key_id,
        )
    if keys_file is not None:
        try:
            keys = parse_key_set(keys_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SigningError(f"event key set {keys_file}: {exc.strerror}") from exc
    else:
        keys = development_key_set()
        log.warning("%s accepts events signed with the public development keys", service)
    own = keys.entries.get(signer.key_id)
    if own is None or own.service != service or own.revoked:
        message = f"{service}: the key set has no valid entry for its key {signer.key_id}"
        if environment == "production":
            raise SigningError(message)
        log.error(message)
    _signers[service] = signer
    _production = environment == "production"
    if _production:  # a development signer left from before can never sign here
        _development.clear()
        for name, held in list(_signers.items()):
            if held.key_id == Signer(name, development_key(name)).key_id:
                del _signers[name]
    return keys


def signer_for(service: str) -> Signer:
    """The signer of a service of this process (outside production, its development key
    when this process configured none for it)."""
    signer = _signers.get(service)
    if signer is not None:
        return signer
    if _production or service not in SERVICES:
        raise SigningError(f"no event signing key for {service!r} in this process")
    signer = _development.get(service)
    if signer is None:  # derived once: deriving the key per event cost as much as signing
        signer = _development[service] = Signer(service, development_key(service))
    return signer


def producer_of(event: dict[str, Any]) -> str:
    """The service that publishes an event: the one its `source` names
    (`/services/<name>`), else the only producer of its type."""
    source = str(event.get("source", ""))
    name = source.rsplit("/", 1)[-1]
    if source.startswith("/services/") and name in SERVICES:
        return name
    entry = CATALOG.get(str(event.get("type")))
    if entry is not None and len(entry.producers) == 1:
        return next(iter(entry.producers))
    raise SigningError(f"cannot tell which service publishes {event.get('type')!r} from {source!r}")


def sign_event(event: dict[str, Any]) -> bytes:
    """The signed bytes of an event this process publishes (see `producer_of`)."""
    return signer_for(producer_of(event)).sign_bytes(event)


def ensure_key_files(folder: Path) -> tuple[dict[str, Path], Path]:
    """Real keys (`incidents up`, `incidents event-keys`): one private key file per service
    in `folder` (made once, owner-only), and the key set `keys.yaml`: the entries it had
    (revoked or older keys stay as they were) and the services' current keys (added, not
    revoked, unless it says so). Returns (service -> key file, key set file)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_file = folder / "keys.yaml"
    entries = parse_key_set(keys_file.read_text("utf-8")).entries if keys_file.exists() else {}
    files: dict[str, Path] = {}
    for service in SERVICES:
        path = folder / f"{service}.pem"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
        public = load_private_key(path).public_key()
        entries.setdefault(
            key_id(service, public), KeyEntry(key_id(service, public), service, public)
        )
        files[service] = path
    keys_file.write_text(key_set_yaml(entries.values()), encoding="utf-8")
    return files, keys_file
