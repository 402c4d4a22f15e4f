"""Envelope encryption of personal data: one data key per incident, wrapped by a master key.

Personal content (report text, free-text names, messages, the reporter's identity) is
sealed with AES-256-GCM under the incident's data key before it is stored or hashed,
so the ledger, the event stores and the topics only ever hold ciphertext. The data key
is kept only wrapped (by the master key, or a KMS behind `MasterKey`), in one table
that is not append-only: destroying it ("crypto-shredding") makes the content
unreadable everywhere at once, while every hash and signature stays valid.

Sealed values are text: `enc:v1:<base64(nonce || ciphertext || tag)>`, with the
incident id and the field name as associated data, so a sealed value cannot be moved
to another incident or field. Digests of what a principal was shown are salted with a
per-incident salt kept beside the key: low-entropy values cannot be guessed from them,
and after erasure nobody can test a guess at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.domain.events import SEALED_PREFIX

PREFIX = SEALED_PREFIX
KEY_BYTES = 32
NONCE_BYTES = 12
DEVELOPMENT_MASTER_KEY = base64.b64encode(hashlib.sha256(b"incidents-dev-master").digest()).decode()
"""The master key every development and test process shares (public: production refuses it)."""
DEVELOPMENT_PSEUDONYM_KEY = base64.b64encode(
    hashlib.sha256(b"incidents-dev-pseudonyms").digest()
).decode()
"""The pseudonym key of development and test (public: production refuses it)."""


class CryptoError(ValueError):
    """A value could not be sealed or opened (wrong key, tampered, malformed)."""


class MasterKey(Protocol):
    """Wraps and unwraps data keys (a local key, or a KMS in production)."""

    key_id: str

    def wrap(self, data_key: bytes, context: str) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: str) -> bytes: ...


class LocalMasterKey:
    """A 256-bit master key held by this process (from a file or a setting)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise CryptoError("a master key is 32 bytes")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"incidents-master-key:" + key).hexdigest()[:16]

    @classmethod
    def from_base64(cls, text: str) -> LocalMasterKey:
        """The key from its base64 text (a setting)."""
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except ValueError as exc:
            raise CryptoError("a master key is 32 bytes of base64") from exc

    @classmethod
    def from_file(cls, path: Path, *, create: bool) -> LocalMasterKey:
        """Read the key (base64) from `path`; create it (0600) when allowed and missing."""
        if not path.exists():
            if not create:
                raise CryptoError(f"master key {path} is missing")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return cls.from_file(path, create=False)
            with os.fdopen(fd, "w") as handle:
                handle.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
        try:
            return cls(base64.b64decode(path.read_text().strip(), validate=True))
        except ValueError as exc:
            raise CryptoError(f"master key {path} is not 32 bytes of base64") from exc

    def wrap(self, data_key: bytes, context: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, context.encode())

    def unwrap(self, wrapped: bytes, context: str) -> bytes:
        try:
            return self._aead.decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context.encode()
            )
        except (InvalidTag, ValueError) as exc:
            raise CryptoError("the data key does not unwrap with this master key") from exc


def new_data_key() -> bytes:
    """A fresh random data key for one incident."""
    return AESGCM.generate_key(bit_length=256)


def new_salt() -> bytes:
    return secrets.token_bytes(16)


def _aad(incident_id: str, field: str) -> bytes:
    return f"{incident_id}\x00{field}".encode()


def seal(data_key: bytes, incident_id: str, field: str, plaintext: str) -> str:
    """Encrypt one value for one field of one incident."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(data_key).encrypt(nonce, plaintext.encode(), _aad(incident_id, field))
    return PREFIX + base64.b64encode(nonce + sealed).decode()


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def unseal(data_key: bytes, incident_id: str, field: str, token: str) -> str:
    """Decrypt a value sealed by `seal` for the same incident and field."""
    if not is_sealed(token):
        raise CryptoError("not a sealed value")
    try:
        raw = base64.b64decode(token[len(PREFIX) :], validate=True)
        plain = AESGCM(data_key).decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(incident_id, field)
        )
    except (InvalidTag, ValueError) as exc:
        raise CryptoError("the sealed value does not open with this key") from exc
    return plain.decode()


def _chunk_aad(incident_id: str, attachment_id: str, index: int, last: bool) -> bytes:
    return f"{incident_id}\x00attachment\x00{attachment_id}\x00{index}\x00{int(last)}".encode()


def seal_chunk(
    data_key: bytes, incident_id: str, attachment_id: str, index: int, last: bool, plain: bytes
) -> bytes:
    """One chunk of a file, sealed: `nonce || ciphertext || tag` (AES-256-GCM).

    The associated data binds the chunk to its incident, its file, its place and whether
    it is the file's last: a chunk moved to another place or file, or a file cut short
    (its last chunk dropped), does not open (`open_chunk` raises CryptoError).
    """
    nonce = secrets.token_bytes(NONCE_BYTES)
    aad = _chunk_aad(incident_id, attachment_id, index, last)
    return nonce + AESGCM(data_key).encrypt(nonce, plain, aad)


def open_chunk(
    data_key: bytes, incident_id: str, attachment_id: str, index: int, last: bool, sealed: bytes
) -> bytes:
    """The plaintext of a chunk sealed by `seal_chunk` for the same place; else CryptoError."""
    try:
        aad = _chunk_aad(incident_id, attachment_id, index, last)
        return AESGCM(data_key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError) as exc:
        raise CryptoError("the chunk does not open here with this key") from exc


def salted_digest(salt: bytes, content: bytes) -> str:
    """`sha256:<hex>` of content keyed by the incident's salt (HMAC-SHA256)."""
    return "sha256:" + hmac.new(salt, content, hashlib.sha256).hexdigest()


def pseudonym(key: bytes, person_id: str, context: str = "") -> str:
    """A keyed pseudonym of a person id: matchable by who holds `key`, not reversible.

    With a `context` (the incident id), the same person gets another pseudonym in every
    incident, so pseudonyms do not link one reporter's reports to each other.
    """
    message = f"{context}\x00{person_id}".encode() if context else person_id.encode()
    return "pn:" + hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def decode_key(text: str, what: str) -> bytes:
    """32 bytes from base64 text (a key given in a setting)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise CryptoError(f"the {what} is not base64") from exc
    if len(key) != KEY_BYTES:
        raise CryptoError(f"the {what} is 32 bytes")
    return key


class Pseudonyms:
    """Reporter pseudonyms: intake makes them, triage matches them against the directory.

    Who holds the key can test whether a given person is the reporter of an incident
    (that is what triage needs to exclude them), but cannot read a pseudonym back.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise CryptoError("a pseudonym key is 32 bytes")
        self._key = key

    def of(self, incident_id: str, person_id: str) -> str:
        return pseudonym(self._key, person_id, incident_id)

    def match(self, incident_id: str, value: str | None, people: Iterable[str]) -> str | None:
        """The person among `people` whose pseudonym in this incident is `value`, if any."""
        if not value:
            return None
        for person in people:
            if hmac.compare_digest(self.of(incident_id, person), value):
                return person
        return None


@dataclass(frozen=True)
class IncidentKey:
    """One incident's unwrapped data key and digest salt: seals, opens and digests.

    It is what `services.domain.reports.Protector` asks for (with the pseudonyms), and
    what opens sealed values for the principals allowed to read them.
    """

    incident_id: str
    data_key: bytes = field(repr=False)
    salt: bytes = field(repr=False)
    pseudonyms: Pseudonyms | None = field(default=None, repr=False)

    def seal(self, field_name: str, value: str) -> str:
        return seal(self.data_key, self.incident_id, field_name, value)

    def open(self, field_name: str, value: str) -> str:
        return unseal(self.data_key, self.incident_id, field_name, value)

    def digest(self, content: bytes) -> str:
        return salted_digest(self.salt, content)

    def seal_chunk(self, attachment_id: str, index: int, last: bool, plain: bytes) -> bytes:
        return seal_chunk(self.data_key, self.incident_id, attachment_id, index, last, plain)

    def open_chunk(self, attachment_id: str, index: int, last: bool, sealed: bytes) -> bytes:
        return open_chunk(self.data_key, self.incident_id, attachment_id, index, last, sealed)

    def pseudonym(self, person_id: str) -> str:
        if self.pseudonyms is None:
            raise CryptoError("no pseudonym key: this process cannot name reporters")
        return self.pseudonyms.of(self.incident_id, person_id)
