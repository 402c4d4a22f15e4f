"""Witness cosignatures of checkpoints: C2SP ``tlog-cosignature``, Ed25519 ``cosignature/v1``.

Pure code: no file or network I/O. A witness (``services/witness``) signs with
`CosignatureSigner`; audit, `incidents audit verify` and the receipt check verify with
`CosignatureVerifier` and count a quorum with `cosigned_by`.

A cosignature is a signed-note signature line on the checkpoint::

    — <witness name> base64(key ID || u64 big-endian timestamp || Ed25519 signature)

where the key ID is ``SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4]`` and the
signed message is ``"cosignature/v1\\ntime <timestamp>\\n"`` followed by the whole
checkpoint text (final newline included, no signature lines). The verifier key string
is ``<name>+<hex key ID>+<base64(0x04 || public key)>``, as c2sp.org/signed-note
describes verifier keys.

A cosignature states that, at its timestamp, the witness had checked this checkpoint
consistent with every earlier one it saw for the origin: it never cosigns a smaller or
a forked tree.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from services.audit.checkpoint import (
    Ed25519Key,
    Ed25519Public,
    KeyNames,
    NoteError,
    b64decode_strict,
    is_valid_key_name,
    split_note,
)

__all__ = [
    "COSIGNATURE_TYPE",
    "Cosignature",
    "CosignatureSigner",
    "CosignatureVerifier",
    "append_signatures",
    "cosignature_key_hash",
    "cosigned_by",
    "cosigned_message",
]

COSIGNATURE_TYPE = 0x04
"""Key ID algorithm byte of Ed25519 ``cosignature/v1`` (c2sp.org/tlog-cosignature)."""

MAX_TIMESTAMP = 2**63 - 1
_KEY_HASH_SIZE = 4
_TIMESTAMP_SIZE = 8
_SIGNATURE_SIZE = 64
_PUBLIC_KEY_SIZE = 32


def cosignature_key_hash(name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID ``SHA-256(name || "\\n" || 0x04 || public key)[:4]``."""
    if not is_valid_key_name(name):
        raise NoteError(f"invalid cosigner name {name!r}")
    if len(public_key) != _PUBLIC_KEY_SIZE:
        raise NoteError(f"Ed25519 public key must be {_PUBLIC_KEY_SIZE} bytes")
    material = name.encode("utf-8") + b"\n" + bytes([COSIGNATURE_TYPE]) + public_key
    return hashlib.sha256(material).digest()[:_KEY_HASH_SIZE]


def cosigned_message(text: str, timestamp: int) -> bytes:
    """The bytes a ``cosignature/v1`` signs: header, time line, then the checkpoint text."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} is outside [0, 2**63 - 1]")
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


@dataclass(frozen=True)
class Cosignature:
    """A verified cosignature: who (verifier key string) and when (POSIX seconds)."""

    verifier_key: str
    name: str
    timestamp: int


class _CosignerKey(KeyNames):
    """Name, key and key ID as for a log key, but with the cosignature type byte 0x04."""

    @property
    def verifier_key(self) -> str:
        """``<name>+<hex key ID>+<base64(0x04 || public key)>``."""
        encoded = base64.b64encode(bytes([COSIGNATURE_TYPE]) + self._public_key).decode()
        return f"{self._name}+{self._key_hash.hex()}+{encoded}"


class CosignatureSigner(_CosignerKey, Ed25519Key):
    """A witness's Ed25519 key: cosigns checkpoint texts with a timestamp."""

    __slots__ = ("_key", "_key_hash", "_name", "_public_key")

    key_hash_of = staticmethod(cosignature_key_hash)

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self._name, self._public_key)

    def cosign(self, text: str, timestamp: int) -> str:
        """The signature line (ending in a newline) cosigning checkpoint ``text``."""
        signature = self._key.sign(cosigned_message(text, timestamp))
        raw = self._key_hash + timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + signature
        return f"\u2014 {self._name} {base64.b64encode(raw).decode()}\n"


class CosignatureVerifier(_CosignerKey, Ed25519Public):
    """Checks one witness's cosignatures on signed notes."""

    __slots__ = ("_key", "_key_hash", "_name", "_public_key")

    key_hash_of = staticmethod(cosignature_key_hash)

    @classmethod
    def from_verifier_key(cls, vkey: str) -> CosignatureVerifier:
        """Parse ``<name>+<hex8>+<base64(0x04 || key)>``; `NoteError` if anything is off."""
        parts = vkey.strip().split("+", 2) if isinstance(vkey, str) else []
        if len(parts) != 3:
            raise NoteError("witness key must be <name>+<key hash>+<key>")
        name, hash_hex, encoded = parts
        key = b64decode_strict(encoded)
        if key is None or len(key) != 1 + _PUBLIC_KEY_SIZE or key[0] != COSIGNATURE_TYPE:
            raise NoteError("witness key is not base64 of 0x04 and a 32-byte Ed25519 key")
        verifier = cls(name, key[1:])
        if verifier.key_hash.hex() != hash_hex:
            raise NoteError("witness key hash does not match the key")
        return verifier

    def verify(self, note: str | bytes) -> Cosignature:
        """This witness's cosignature on ``note``; `NoteError` if absent or invalid.

        Like signed-note verification: lines of other keys are ignored, and a line with
        this name and key ID that does not verify rejects the note.
        """
        text, signatures = split_note(note)
        found: Cosignature | None = None
        for name, key_hash, raw in signatures:
            if name != self._name or key_hash != self._key_hash:
                continue
            if len(raw) != _TIMESTAMP_SIZE + _SIGNATURE_SIZE:
                raise NoteError(f"cosignature from {self._name} has the wrong length")
            timestamp = int.from_bytes(raw[:_TIMESTAMP_SIZE], "big")
            try:
                self._key.verify(raw[_TIMESTAMP_SIZE:], cosigned_message(text, timestamp))
            except InvalidSignature:
                raise NoteError(f"invalid cosignature from {self._name}") from None
            if found is None or timestamp > found.timestamp:
                found = Cosignature(self.verifier_key, self._name, timestamp)
        if found is None:
            raise NoteError(f"note has no cosignature from {self._name}")
        return found

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CosignatureVerifier):
            return NotImplemented
        return self.verifier_key == other.verifier_key

    def __hash__(self) -> int:
        return hash(self.verifier_key)

    def __repr__(self) -> str:
        return f"CosignatureVerifier({self.verifier_key!r})"


def cosigned_by(note: str | bytes, witnesses: Iterable[CosignatureVerifier]) -> list[Cosignature]:
    """The valid cosignatures on ``note`` from distinct ``witnesses`` (others ignored)."""
    found: dict[str, Cosignature] = {}
    for witness in witnesses:
        try:
            found[witness.verifier_key] = witness.verify(note)
        except NoteError:
            continue
    return list(found.values())


def append_signatures(note: str, lines: Iterable[str]) -> str:
    """``note`` with signature ``lines`` appended, each once (a note ends in its signatures)."""
    present = set(note.splitlines(keepends=True))
    extra = [line for line in lines if line not in present]
    return note + "".join(extra)
