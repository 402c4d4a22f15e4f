"""Signed tree heads as C2SP ``tlog-checkpoint`` notes, signed as C2SP ``signed-note``.

Pure code: no file or network I/O. The audit ledger publishes the head of its RFC 9162
Merkle tree (see `merkle.py`) in the format existing transparency-log tooling reads
(golang.org/x/mod/sumdb/note, transparency-dev, sigsum), so an auditor can verify our
heads with tools we did not write.

Checkpoint body (c2sp.org/tlog-checkpoint), every line ending in ``"\\n"``::

    <origin>
    <tree size, ASCII decimal, no leading zeroes>
    <base64 root hash>
    [<extension line>...]

Signed note (c2sp.org/signed-note): the text (ending in a newline), a blank line, then
one or more signature lines ``"— <key name> <base64(key ID || signature)>\\n"`` (em dash
U+2014). For Ed25519 (signature type ``0x01``) the 4-byte key ID is::

    SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]

and the verifier key, the string handed to verifiers, is
``"<name>+<hex key ID>+<base64(0x01 || public key)>"``.

Verification follows the spec: signatures from unknown keys (name *and* key ID not both
ours) are ignored; every signature line from our key must verify (one bad signature
rejects the note); at least one must be present. Parsing is strict throughout: malformed
input raises `NoteError` or `CheckpointError` (both `ValueError`) with a reason, never a
partially trusted result.

Our JSON ``key_id`` is different from the note key ID: it is the hex SHA-256 of the raw
32-byte public key (`NoteSigner.key_id`, `NoteVerifier.key_id`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from services.audit.merkle import HASH_SIZE
from services.infra.signing import private_key_from_pem, private_key_pem

__all__ = [
    "ED25519_SIGNATURE_TYPE",
    "MAX_SIGNATURES",
    "MAX_TREE_SIZE",
    "Checkpoint",
    "CheckpointError",
    "Ed25519Key",
    "Ed25519Public",
    "KeyNames",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "b64decode_strict",
    "ed25519_from_pem",
    "is_valid_key_name",
    "note_key_hash",
    "parse_verifier_key",
    "sign_checkpoint",
    "split_note",
    "verify_checkpoint",
]

ED25519_SIGNATURE_TYPE = 0x01
"""Signature type byte assigned to Ed25519 by c2sp.org/signed-note."""

MAX_SIGNATURES = 100
"""Most signature lines accepted in one note (the spec requires at least 16)."""

MAX_TREE_SIZE = 2**64 - 1
"""Largest tree size accepted: transparency-log tooling stores sizes as uint64."""

_KEY_HASH_SIZE = 4
_PUBLIC_KEY_SIZE = 32
_SEED_SIZE = 32
_SIGNATURE_SIZE = 64
_EM_DASH_PREFIX = "\u2014 "
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)", re.ASCII)
_LOWER_HEX8 = re.compile(r"[0-9a-f]{8}", re.ASCII)


class NoteError(ValueError):
    """A signed note, key or signature is malformed or fails verification."""


class CheckpointError(ValueError):
    """A checkpoint body is malformed, or does not match what was expected."""


# --------------------------------------------------------------------------- helpers


def _has_control(text: str) -> bool:
    """Whether ``text`` holds an ASCII control character other than newline."""
    return any(ord(ch) < 0x20 and ch != "\n" for ch in text)


def _text_fault(text: object) -> str | None:
    """Why ``text`` is not note text (a string ending in a newline, without control
    characters other than newline), or None if it is."""
    if not isinstance(text, str):
        return f"must be a string, not {type(text).__name__}"
    if not text.endswith("\n"):
        return "must end with a newline"
    if _has_control(text):
        return "must not contain control characters other than newline"
    return None


def _is_utf8(text: str) -> bool:
    """Whether ``text`` encodes to UTF-8 (false for lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode_strict(text: str) -> bytes | None:
    """Decode standard, padded base64 in its canonical spelling only, else ``None``.

    Canonical means re-encoding gives the same text back, which rules out stray
    characters, missing padding and non-zero unused trailing bits, so every value has
    exactly one accepted spelling.
    """
    if not text.isascii():
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if _b64encode(data) != text:
        return None
    return data


def is_valid_key_name(name: str) -> bool:
    """Whether ``name`` is a legal signed-note key name.

    Non-empty valid UTF-8 with no Unicode space and no ``+`` (U+002B), as the spec
    says; control characters are refused too, since a note may not contain them.
    """
    return (
        isinstance(name, str)
        and name != ""
        and _is_utf8(name)
        and "+" not in name
        and not any(ch.isspace() for ch in name)
        and not _has_control(name)
    )


def _check_key_name(name: str) -> None:
    if not is_valid_key_name(name):
        raise NoteError(
            f"invalid key name {name!r}: must be non-empty UTF-8 without spaces, "
            "'+' or control characters"
        )


def note_key_hash(name: str, public_key: bytes) -> bytes:
    """Return the 4-byte Ed25519 note key ID for ``name`` and a raw public key.

    ``SHA-256(name || "\\n" || 0x01 || public_key)[:4]`` (c2sp.org/signed-note).
    """
    _check_key_name(name)
    if len(public_key) != _PUBLIC_KEY_SIZE:
        raise NoteError(
            f"Ed25519 public key must be {_PUBLIC_KEY_SIZE} bytes, not {len(public_key)}"
        )
    material = name.encode("utf-8") + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + public_key
    return hashlib.sha256(material).digest()[:_KEY_HASH_SIZE]


def _raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _verifier_key_string(name: str, public_key: bytes) -> str:
    key_hash = note_key_hash(name, public_key)
    encoded = _b64encode(bytes([ED25519_SIGNATURE_TYPE]) + public_key)
    return f"{name}+{key_hash.hex()}+{encoded}"


# ------------------------------------------------------------------------ checkpoint


def _check_line(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise CheckpointError(f"{what} must be a string, not {type(value).__name__}")
    if value == "":
        raise CheckpointError(f"{what} must be non-empty")
    if "\n" in value or _has_control(value):
        raise CheckpointError(f"{what} must not contain newlines or control characters")
    if not _is_utf8(value):
        raise CheckpointError(f"{what} must be valid UTF-8")


@dataclass(frozen=True)
class Checkpoint:
    """The signed content of a tree head: c2sp.org/tlog-checkpoint note text.

    Construction validates every field, so `body` always yields a well-formed
    checkpoint; `parse` is its strict inverse (``Checkpoint.parse(cp.body()) == cp``).
    """

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "checkpoint origin")
        if isinstance(self.tree_size, bool) or not isinstance(self.tree_size, int):
            raise CheckpointError(f"tree size must be an int, not {type(self.tree_size).__name__}")
        if not 0 <= self.tree_size <= MAX_TREE_SIZE:
            raise CheckpointError(f"tree size {self.tree_size} is outside [0, 2**64 - 1]")
        if not isinstance(self.root_hash, bytes | bytearray | memoryview):
            raise CheckpointError(f"root hash must be bytes, not {type(self.root_hash).__name__}")
        root_hash = bytes(self.root_hash)
        if len(root_hash) != HASH_SIZE:
            raise CheckpointError(f"root hash must be {HASH_SIZE} bytes, not {len(root_hash)}")
        object.__setattr__(self, "root_hash", root_hash)
        if isinstance(self.extensions, str):
            raise CheckpointError("extensions must be a sequence of lines, not a string")
        extensions = tuple(self.extensions)
        for number, line in enumerate(extensions, start=1):
            _check_line(line, f"extension line {number}")
        object.__setattr__(self, "extensions", extensions)

    def body(self) -> str:
        """Return the checkpoint note text; every line, the last included, ends in "\\n"."""
        lines = [self.origin, str(self.tree_size), _b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse checkpoint note text strictly; raise `CheckpointError` if malformed.

        Refused: text not ending in a newline; fewer than three lines; any empty line
        (empty origin or extension line included); control characters; a size that is
        not plain ASCII decimal, has leading zeroes or exceeds 2**64 - 1; a root hash
        that is not canonical base64 of exactly 32 bytes.
        """
        fault = _text_fault(text)
        if fault is not None:
            raise CheckpointError(f"checkpoint text {fault}")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(
                f"checkpoint needs origin, size and root hash lines; got {len(lines)} line(s)"
            )
        origin, size_line, hash_line, *extensions = lines
        if origin == "":
            raise CheckpointError("checkpoint origin must be non-empty")
        if _DECIMAL.fullmatch(size_line) is None:
            raise CheckpointError(
                f"tree size {size_line!r} is not ASCII decimal without leading zeroes"
            )
        tree_size = int(size_line)
        if tree_size > MAX_TREE_SIZE:
            raise CheckpointError(f"tree size {size_line} exceeds 2**64 - 1")
        if hash_line == "":
            raise CheckpointError("root hash line is empty")
        root_hash = _b64decode_strict(hash_line)
        if root_hash is None:
            raise CheckpointError(f"root hash {hash_line!r} is not canonical base64")
        if len(root_hash) != HASH_SIZE:
            raise CheckpointError(f"root hash must be {HASH_SIZE} bytes, not {len(root_hash)}")
        for number, line in enumerate(extensions, start=1):
            if line == "":
                raise CheckpointError(f"extension line {number} is empty")
        return cls(origin, tree_size, root_hash, tuple(extensions))


# ------------------------------------------------------------------------- signing


def ed25519_from_pem(data: bytes) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 private key; `NoteError` for anything else."""
    try:
        return private_key_from_pem(data)
    except ValueError as exc:
        raise NoteError(f"cannot load the private key: {exc}") from exc


class KeyNames:
    """What a signer and a verifier both tell about their key (name, hashes, strings)."""

    _name: str
    _public_key: bytes
    _key_hash: bytes

    @staticmethod
    def key_hash_of(name: str, public_key: bytes) -> bytes:
        """The 4-byte key ID of this kind of key (checks the name)."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The key name written in (and trusted from) signature lines."""
        return self._name

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def key_hash(self) -> bytes:
        """The 4-byte note key ID that prefixes every signature of this key."""
        return self._key_hash

    @property
    def key_id(self) -> str:
        """Our JSON ``key_id``: hex SHA-256 of the raw public key."""
        return hashlib.sha256(self._public_key).hexdigest()

    @property
    def verifier_key(self) -> str:
        """The verifier key string ``<name>+<hex key ID>+<base64(0x01 || key)>``."""
        return _verifier_key_string(self._name, self._public_key)


class Ed25519Key(KeyNames):
    """One Ed25519 private key under one key name: the key plumbing a note signer and a
    witness's cosigner share. The key ID is the subclass's (`key_hash_of`).

    The private key never appears in ``repr``; export it explicitly with `private_pem`.
    """

    _key: Ed25519PrivateKey

    def __init__(self, private_key: Ed25519PrivateKey, name: str) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise NoteError(f"expected an Ed25519 private key, not {type(private_key).__name__}")
        self._key = private_key
        self._name = name
        self._public_key = _raw_public_key(private_key.public_key())
        self._key_hash = self.key_hash_of(name, self._public_key)

    @classmethod
    def from_seed(cls, seed: bytes, name: str) -> Self:
        """Build a key from a 32-byte RFC 8032 private key seed."""
        if len(seed) != _SEED_SIZE:
            raise NoteError(f"Ed25519 seed must be {_SEED_SIZE} bytes, not {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(seed)), name)

    @classmethod
    def generate(cls, name: str) -> Self:
        """Build a key around a freshly generated one."""
        return cls(Ed25519PrivateKey.generate(), name)

    @classmethod
    def from_pem(cls, data: bytes, name: str) -> Self:
        """Build a key from an unencrypted PKCS#8 PEM Ed25519 private key."""
        return cls(ed25519_from_pem(data), name)

    def private_pem(self) -> bytes:
        """Return the private key as unencrypted PKCS#8 PEM (keep it secret)."""
        return private_key_pem(self._key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, key_hash={self._key_hash.hex()})"


class NoteSigner(Ed25519Key):
    """Signs notes with one Ed25519 key under one key name (our log's origin)."""

    __slots__ = ("_key", "_key_hash", "_name", "_public_key")

    key_hash_of = staticmethod(note_key_hash)

    def verifier(self) -> NoteVerifier:
        """Return the `NoteVerifier` for this signer's public key."""
        return NoteVerifier(self._name, self._public_key)

    def signature_line(self, text: str) -> str:
        """Return this key's signature line over ``text``, ending in a newline."""
        data = _note_text_bytes(text)
        signature = self._key.sign(data)
        return f"{_EM_DASH_PREFIX}{self._name} {_b64encode(self._key_hash + signature)}\n"

    def sign(self, text: str) -> str:
        """Return the complete signed note: ``text``, a blank line, our signature line."""
        return text + "\n" + self.signature_line(text)


def _note_text_bytes(text: str) -> bytes:
    """Validate note text for signing and return its UTF-8 bytes."""
    fault = _text_fault(text)
    if fault is not None:
        raise NoteError(f"note text {fault}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError("note text must be valid UTF-8") from exc


# ---------------------------------------------------------------------- verification


class Ed25519Public(KeyNames):
    """One trusted Ed25519 public key under one key name: what a note verifier and a
    witness's cosignature verifier share. The key ID is the subclass's (`key_hash_of`)."""

    _key: Ed25519PublicKey

    def __init__(self, name: str, public_key: bytes) -> None:
        if not isinstance(public_key, bytes | bytearray | memoryview):
            raise NoteError(f"public key must be bytes, not {type(public_key).__name__}")
        raw = bytes(public_key)
        self._key_hash = self.key_hash_of(name, raw)
        try:
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise NoteError(f"invalid Ed25519 public key: {exc}") from exc
        self._name = name
        self._public_key = raw


class NoteVerifier(Ed25519Public):
    """Verifies notes against one trusted Ed25519 key (name and public key)."""

    __slots__ = ("_key", "_key_hash", "_name", "_public_key")

    key_hash_of = staticmethod(note_key_hash)

    @classmethod
    def from_verifier_key(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex8 key ID>+<base64(0x01 || 32-byte key)>``; see
        `parse_verifier_key`."""
        return parse_verifier_key(vkey)

    def verify(self, note: str | bytes) -> str:
        """Verify a signed note and return its text (final newline included).

        Raises `NoteError` if the note is malformed (invalid UTF-8, control
        characters, no blank line before the signatures, a bad signature line, more
        than `MAX_SIGNATURES` signatures), if any signature line from this key fails
        to verify, or if none is from this key. Lines from other keys are ignored.
        """
        text, signatures = _split_note(note)
        message = text.encode("utf-8")
        verified = False
        for name, key_hash, signature in signatures:
            if name != self._name or key_hash != self._key_hash:
                continue  # an unknown key: the spec says ignore it
            if len(signature) != _SIGNATURE_SIZE:
                raise NoteError(
                    f"signature from {self._describe()} is {len(signature)} bytes, "
                    f"not {_SIGNATURE_SIZE}"
                )
            try:
                self._key.verify(signature, message)
            except InvalidSignature:
                raise NoteError(f"invalid signature from {self._describe()}") from None
            verified = True
        if not verified:
            raise NoteError(f"note has no signature from {self._describe()}")
        return text

    def _describe(self) -> str:
        return f"key {self._name}+{self._key_hash.hex()}"

    def __repr__(self) -> str:
        return f"NoteVerifier({self.verifier_key!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoteVerifier):
            return NotImplemented
        return self._name == other._name and self._public_key == other._public_key

    def __hash__(self) -> int:
        return hash((self._name, self._public_key))


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Parse a verifier key string into a `NoteVerifier`; raise `NoteError` if invalid.

    Checked: three ``+``-separated parts; a valid key name; exactly 8 lowercase hex
    digits of key ID; canonical base64 of the Ed25519 type byte ``0x01`` and 32 key
    bytes; and the key ID equal to the one computed from the name and key.
    """
    if not isinstance(vkey, str):
        raise NoteError(f"verifier key must be a string, not {type(vkey).__name__}")
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise NoteError("verifier key must be <name>+<key hash>+<key>")
    name, hash_hex, key_b64 = parts
    _check_key_name(name)
    if _LOWER_HEX8.fullmatch(hash_hex) is None:
        raise NoteError(f"verifier key hash {hash_hex!r} is not 8 lowercase hex digits")
    key = _b64decode_strict(key_b64)
    if key is None or len(key) == 0:
        raise NoteError("verifier key material is not canonical base64")
    if key[0] != ED25519_SIGNATURE_TYPE:
        raise NoteError(f"unsupported verifier key type 0x{key[0]:02x} (only Ed25519, 0x01)")
    public_key = key[1:]
    if len(public_key) != _PUBLIC_KEY_SIZE:
        raise NoteError(
            f"Ed25519 verifier key must be {_PUBLIC_KEY_SIZE} bytes, not {len(public_key)}"
        )
    verifier = NoteVerifier(name, public_key)
    if verifier.key_hash.hex() != hash_hex:
        raise NoteError(
            f"verifier key hash {hash_hex} does not match the key "
            f"(expected {verifier.key_hash.hex()})"
        )
    return verifier


def split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a signed note strictly into its text and ``(name, key hash, signature)``
    triples, without verifying anything (cosignatures parse their own signatures)."""
    return _split_note(note)


def b64decode_strict(text: str) -> bytes | None:
    """Canonical padded base64 decoded, else ``None`` (see `_b64decode_strict`)."""
    return _b64decode_strict(text)


def _split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a signed note into its text and ``(name, key hash, signature)`` triples."""
    if isinstance(note, bytes | bytearray | memoryview):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError("malformed note: not valid UTF-8") from exc
    elif not isinstance(note, str):
        raise NoteError(f"note must be str or bytes, not {type(note).__name__}")
    elif not _is_utf8(note):
        raise NoteError("malformed note: not valid UTF-8")
    if _has_control(note):
        raise NoteError("malformed note: control characters other than newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if block == "" or not block.endswith("\n"):
        raise NoteError("malformed note: signature block must be non-empty and end in newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    signatures: list[tuple[str, bytes, bytes]] = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_EM_DASH_PREFIX):
            raise NoteError(f"malformed note: signature line {number} does not start with '— '")
        name, space, encoded = line[len(_EM_DASH_PREFIX) :].partition(" ")
        if not space or not is_valid_key_name(name):
            raise NoteError(f"malformed note: signature line {number} has no valid key name")
        raw = _b64decode_strict(encoded)
        if raw is None or len(raw) <= _KEY_HASH_SIZE:
            raise NoteError(f"malformed note: signature line {number} has a malformed signature")
        signatures.append((name, raw[:_KEY_HASH_SIZE], raw[_KEY_HASH_SIZE:]))
    return text, signatures


# ---------------------------------------------------------------------- convenience


def sign_checkpoint(signer: NoteSigner, checkpoint: Checkpoint) -> str:
    """Return ``checkpoint`` as a note signed by ``signer``.

    The key name must equal the checkpoint origin (tlog-checkpoint says it SHOULD; we
    make it a rule so `verify_checkpoint`'s default origin check holds).
    """
    if checkpoint.origin != signer.name:
        raise CheckpointError(
            f"checkpoint origin {checkpoint.origin!r} differs from key name {signer.name!r}"
        )
    return signer.sign(checkpoint.body())


def verify_checkpoint(
    verifier: NoteVerifier, note: str | bytes, *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint note and return the parsed `Checkpoint`.

    Raises `NoteError` if the signature does not verify, `CheckpointError` if the
    verified text is not a well-formed checkpoint or its origin is not the expected
    one: ``origin`` if given (for logs whose key name differs from their origin, such
    as sum.golang.org's ``go.sum database tree``), else the verifier's key name.
    """
    checkpoint = Checkpoint.parse(verifier.verify(note))
    expected = verifier.name if origin is None else origin
    if checkpoint.origin != expected:
        raise CheckpointError(
            f"checkpoint origin {checkpoint.origin!r} is not the expected {expected!r}"
        )
    return checkpoint
