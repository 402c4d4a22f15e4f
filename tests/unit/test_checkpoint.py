"""C2SP signed-note / tlog-checkpoint signing and verification (services.audit.checkpoint).

Known answers come from published sources, copied here so the tests stay offline:

* golang.org/x/mod ``sumdb/note/note_test.go`` (and the ``note.go`` package doc): the
  PeterNeumann signer/verifier keys and the note they sign (``TestSign``, ``TestOpen``),
  plus the EnochRoot key and its second signature on the same text (``TestOpen``).
* sigsum/sigsum-go ``pkg/checkpoint/checkpoint_test.go``: a checkpoint signed with the
  Ed25519 seed ``{17, 0, ..., 0}`` (``validCheckpointASCII``), and a real
  sum.golang.org checkpoint retrieved 2024-09-23 (``TestGoSumDBCheckpoint``).
* golang/go ``src/cmd/go/internal/modfetch/key.go``: the sum.golang.org verifier key.
* transparency-dev/trillian-tessera ``internal/parse`` test: another real
  sum.golang.org checkpoint (tree size 31700353; its trailing newline restored).
* C2SP ``tlog-checkpoint.md``: the example checkpoint body (its key is not published,
  so only the body is checked).

The key IDs are recomputed here from the spec's formula, independently of the module.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.audit.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    NoteError,
    NoteSigner,
    NoteVerifier,
    is_valid_key_name,
    note_key_hash,
    parse_verifier_key,
    sign_checkpoint,
    verify_checkpoint,
)

EM = "\u2014"

# --- golang.org/x/mod sumdb/note/note_test.go -------------------------------------
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
PETER_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    f"{EM} PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    f"{EM} EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)
PETER_NOTE = PETER_TEXT + "\n" + PETER_SIG

# --- sigsum/sigsum-go pkg/checkpoint/checkpoint_test.go ------------------------------
SIGSUM_SEED = bytes([17]) + bytes(31)
SIGSUM_ORIGIN = (
    "sigsum.org/v1/tree/e796172b92befd62d9dc67e41c2f5bc9d3100a3023b20b1ca40288dd1c679e69"
)
SIGSUM_NOTE = (
    f"{SIGSUM_ORIGIN}\n"
    "10\n"
    "HA5HAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    "\n"
    f"{EM} {SIGSUM_ORIGIN} "
    "gJ2ho0n8F8olcerUF1FFdv235A/5as/coWrpLrtE7ovMeP5whgwouYExowG/lTznxu6OUGjjt5yJQ6bXtTcf718MqAQ=\n"
)

# --- sum.golang.org: key from golang/go modfetch/key.go, real signed tree heads ---------
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_ORIGIN = "go.sum database tree"
SUMDB_NOTES = [
    (  # sigsum-go TestGoSumDBCheckpoint, "Retrieved from https://sum.golang.org/latest"
        30055305,
        "mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=",
        "Az3grpgEild5qw7+5dtV13Kf1C2Xurm8q4fhdxvcsDHnqNTaxL2AFjBY+2TyGKevucFcAAlWFJJYle3EJlDCrQ+y3A8=",
    ),
    (  # trillian-tessera internal/parse BenchmarkCheckpointUnsafe
        31700353,
        "qINS1GRFhWHwdkUeqLEoP4yEMkTBBzxBkGwGQlVlVcs=",
        "Az3grnmrIUEDFqHzAElIQCPNoRFRAAdFo47fooyWKMHb89k11GJh5zHIfNCOBmwn/C3YI8oW9/C8DJ87F61QqspBYwM=",
    ),
]

# --- C2SP tlog-checkpoint.md example body ---------------------------------------------
C2SP_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"

ORIGIN = "audit.incidents.example/ledger"
ROOT = hashlib.sha256(b"root").digest()


def spec_key_hash(name: str, public_key: bytes) -> bytes:
    """The spec formula, written out independently of the module under test."""
    return hashlib.sha256(name.encode() + b"\x0a" + b"\x01" + public_key).digest()[:4]


def parse_go_private_key(skey: str) -> tuple[str, str, bytes]:
    """Parse golang.org/x/mod's ``PRIVATE+KEY+<name>+<hash>+<base64(0x01||seed)>``."""
    private, key, name, hash_hex, encoded = skey.split("+", 4)
    assert (private, key) == ("PRIVATE", "KEY")
    raw = base64.b64decode(encoded, validate=True)
    assert raw[0] == 1 and len(raw) == 33
    return name, hash_hex, raw[1:]


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.from_seed(hashlib.sha256(b"checkpoint test seed").digest(), ORIGIN)


@pytest.fixture(scope="module")
def verifier(signer: NoteSigner) -> NoteVerifier:
    return parse_verifier_key(signer.verifier_key)


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return Checkpoint(ORIGIN, 42, ROOT)


@pytest.fixture(scope="module")
def signed(signer: NoteSigner, checkpoint: Checkpoint) -> str:
    return sign_checkpoint(signer, checkpoint)


# ------------------------------------------------------------------- known answers


def test_known_answer_peter_neumann_sign_is_byte_exact() -> None:
    name, hash_hex, seed = parse_go_private_key(PETER_SKEY)
    signer = NoteSigner.from_seed(seed, name)
    assert signer.key_hash.hex() == hash_hex == "c74f20a3"
    assert signer.key_hash == spec_key_hash(name, signer.public_key)
    assert signer.verifier_key == PETER_VKEY
    assert signer.sign(PETER_TEXT) == PETER_NOTE


def test_known_answer_peter_neumann_verify() -> None:
    verifier = parse_verifier_key(PETER_VKEY)
    assert verifier.name == "PeterNeumann"
    assert verifier.key_hash == bytes.fromhex("c74f20a3")
    assert verifier.key_hash == spec_key_hash("PeterNeumann", verifier.public_key)
    assert verifier.verifier_key == PETER_VKEY
    assert verifier.verify(PETER_NOTE) == PETER_TEXT
    assert verifier.verify(PETER_NOTE.encode()) == PETER_TEXT


def test_known_answer_doubly_signed_note_each_key_alone() -> None:
    note = PETER_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    peter, enoch = parse_verifier_key(PETER_VKEY), parse_verifier_key(ENOCH_VKEY)
    assert enoch.key_hash == spec_key_hash("EnochRoot", enoch.public_key)
    assert peter.verify(note) == PETER_TEXT  # Enoch's line is an unknown key: ignored
    assert enoch.verify(note) == PETER_TEXT
    with pytest.raises(NoteError, match="no signature"):
        enoch.verify(PETER_NOTE)


def test_known_answer_sigsum_checkpoint_sign_is_byte_exact() -> None:
    signer = NoteSigner.from_seed(SIGSUM_SEED, SIGSUM_ORIGIN)
    assert "sigsum.org/v1/tree/" + hashlib.sha256(signer.public_key).hexdigest() == SIGSUM_ORIGIN
    assert SIGSUM_ORIGIN.endswith(signer.key_id)
    cp = Checkpoint(SIGSUM_ORIGIN, 10, base64.b64decode("HA5H" + "A" * 39 + "="))
    assert sign_checkpoint(signer, cp) == SIGSUM_NOTE
    assert verify_checkpoint(signer.verifier(), SIGSUM_NOTE) == cp


@pytest.mark.parametrize(("size", "root_b64", "sig_b64"), SUMDB_NOTES)
def test_known_answer_real_sum_golang_org_checkpoints(
    size: int, root_b64: str, sig_b64: str
) -> None:
    verifier = parse_verifier_key(SUMDB_VKEY)
    assert verifier.key_hash == bytes.fromhex("033de0ae")
    assert verifier.key_hash == spec_key_hash("sum.golang.org", verifier.public_key)
    note = f"{SUMDB_ORIGIN}\n{size}\n{root_b64}\n\n{EM} sum.golang.org {sig_b64}\n"
    cp = verify_checkpoint(verifier, note, origin=SUMDB_ORIGIN)
    assert cp == Checkpoint(SUMDB_ORIGIN, size, base64.b64decode(root_b64))
    assert cp.body() + "\n" + note.split("\n\n")[1] == note
    with pytest.raises(CheckpointError, match="origin"):
        verify_checkpoint(verifier, note)  # key name differs from origin
    with pytest.raises(NoteError, match="invalid signature"):
        verifier.verify(note.replace(str(size), str(size + 1)))


def test_known_answer_c2sp_example_body_parses() -> None:
    cp = Checkpoint.parse(C2SP_BODY)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.tree_size == 20852163
    assert cp.body() == C2SP_BODY


# ------------------------------------------------------------------------ round trips


def test_round_trip(signer: NoteSigner, verifier: NoteVerifier, signed: str) -> None:
    cp = verify_checkpoint(verifier, signed)
    assert cp == Checkpoint(ORIGIN, 42, ROOT)
    text, sig_block = signed.split("\n\n")
    assert text + "\n" == cp.body()
    assert sig_block.startswith(f"{EM} {ORIGIN} ") and sig_block.endswith("\n")
    raw = base64.b64decode(sig_block.split(" ")[2])
    assert len(raw) == 68 and raw[:4] == signer.key_hash


def test_round_trip_with_extensions_and_empty_tree(signer: NoteSigner) -> None:
    from services.audit.merkle import EMPTY_ROOT

    for cp in (
        Checkpoint(ORIGIN, 0, EMPTY_ROOT),
        Checkpoint(ORIGIN, 2**64 - 1, ROOT, ("ext one", "— looks like a signature")),
    ):
        assert Checkpoint.parse(cp.body()) == cp
        assert verify_checkpoint(signer.verifier(), sign_checkpoint(signer, cp)) == cp


def test_body_format(checkpoint: Checkpoint) -> None:
    assert checkpoint.body() == f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n"
    ext = Checkpoint(ORIGIN, 7, ROOT, ("a", "b c"))
    assert ext.body().endswith("\na\nb c\n")


def test_pem_and_generate_round_trip(signer: NoteSigner, checkpoint: Checkpoint) -> None:
    again = NoteSigner.from_pem(signer.private_pem(), ORIGIN)
    assert again.public_key == signer.public_key
    assert again.sign("x\n") == signer.sign("x\n")  # Ed25519 is deterministic
    fresh = NoteSigner.generate(ORIGIN)
    assert fresh.public_key != signer.public_key
    note = sign_checkpoint(fresh, checkpoint)
    assert verify_checkpoint(parse_verifier_key(fresh.verifier_key), note) == checkpoint
    with pytest.raises(NoteError):
        NoteSigner.from_pem(b"not a pem", ORIGIN)
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(NoteError, match="not an Ed25519"):
        NoteSigner.from_pem(ec_pem, ORIGIN)


def test_signer_properties(signer: NoteSigner) -> None:
    assert signer.name == ORIGIN
    assert len(signer.public_key) == 32
    assert signer.key_hash == spec_key_hash(ORIGIN, signer.public_key)
    assert signer.key_hash == note_key_hash(ORIGIN, signer.public_key)
    assert signer.key_id == hashlib.sha256(signer.public_key).hexdigest()
    assert signer.verifier().key_id == signer.key_id
    assert "PRIVATE" not in repr(signer) and signer.key_hash.hex() in repr(signer)
    expected_pub = (
        Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"checkpoint test seed").digest())
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert signer.public_key == expected_pub


def test_verifier_key_format(signer: NoteSigner) -> None:
    name, hash_hex, key_b64 = signer.verifier_key.split("+", 2)
    assert name == ORIGIN
    assert hash_hex == spec_key_hash(ORIGIN, signer.public_key).hex()
    assert len(hash_hex) == 8 and hash_hex == hash_hex.lower()
    assert base64.b64decode(key_b64) == b"\x01" + signer.public_key
    assert parse_verifier_key(signer.verifier_key) == signer.verifier()
    assert NoteVerifier.from_verifier_key(signer.verifier_key).verifier_key == signer.verifier_key


# ------------------------------------------------------------------------- tampering


def test_tampering_any_byte_fails(verifier: NoteVerifier, signed: str) -> None:
    data = signed.encode()
    for index in range(len(data)):
        for flip in (0x01, 0x20):
            mutated = bytearray(data)
            mutated[index] ^= flip
            if bytes(mutated) == data:
                continue
            with pytest.raises((NoteError, CheckpointError)):
                verify_checkpoint(verifier, bytes(mutated))


def test_tampered_text_or_signature_is_reported_as_invalid(
    verifier: NoteVerifier, signed: str
) -> None:
    with pytest.raises(NoteError, match="invalid signature"):
        verifier.verify(signed.replace("\n42\n", "\n43\n"))
    text, line = signed.split("\n\n")
    prefix, b64 = line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    for index in (4, 30, 67):  # inside the Ed25519 signature, key hash intact
        bad = bytearray(raw)
        bad[index] ^= 0x80
        note = f"{text}\n\n{prefix} {base64.b64encode(bytes(bad)).decode()}\n"
        with pytest.raises(NoteError, match="invalid signature"):
            verifier.verify(note)


def test_wrong_key_fails(signed: str) -> None:
    other = NoteSigner.from_seed(bytes(32), ORIGIN)  # same name, other key and key hash
    with pytest.raises(NoteError, match="no signature"):
        other.verifier().verify(signed)
    renamed = NoteSigner.from_seed(hashlib.sha256(b"checkpoint test seed").digest(), "other")
    with pytest.raises(NoteError, match="no signature"):
        renamed.verifier().verify(signed)


def test_colliding_key_hash_with_wrong_key_fails(signer: NoteSigner, signed: str) -> None:
    """A key claiming our name and key hash is verified, and fails: never ignored."""
    text, _ = signed.split("\n\n")
    impostor = NoteSigner.from_seed(bytes(range(32)), ORIGIN)
    forged = base64.b64encode(
        signer.key_hash
        + Ed25519PrivateKey.from_private_bytes(bytes(range(32))).sign((text + "\n").encode())
    ).decode()
    assert impostor.key_hash != signer.key_hash
    with pytest.raises(NoteError, match="invalid signature"):
        signer.verifier().verify(f"{text}\n\n{EM} {ORIGIN} {forged}\n")


def test_unknown_signatures_ignored_but_bad_own_signature_rejects(
    signer: NoteSigner, verifier: NoteVerifier, signed: str
) -> None:
    text = signed.split("\n\n")[0] + "\n"
    stranger = NoteSigner.from_seed(bytes(32), "witness.example/w1")
    same_hash_other_name = (
        f"{EM} someone.else {base64.b64encode(signer.key_hash + bytes(64)).decode()}\n"
    )
    short_unknown = f"{EM} someone.else AAAAAAA=\n"
    sigs = stranger.signature_line(text) + same_hash_other_name + short_unknown
    note = text + "\n" + sigs + signer.signature_line(text)
    assert verifier.verify(note) == text
    note = text + "\n" + signer.signature_line(text) + sigs
    assert verifier.verify(note) == text
    bad_own = f"{EM} {ORIGIN} {base64.b64encode(signer.key_hash + bytes(64)).decode()}\n"
    with pytest.raises(NoteError, match="invalid signature"):
        verifier.verify(text + "\n" + signer.signature_line(text) + bad_own)
    short_own = f"{EM} {ORIGIN} {base64.b64encode(signer.key_hash + bytes(10)).decode()}\n"
    with pytest.raises(NoteError, match="10 bytes"):
        verifier.verify(text + "\n" + signer.signature_line(text) + short_own)
    with pytest.raises(NoteError, match="no signature"):
        verifier.verify(text + "\n" + sigs)


def test_signature_count_limit(signer: NoteSigner, verifier: NoteVerifier) -> None:
    text = "a\n"
    line = signer.signature_line(text)
    assert verifier.verify(text + "\n" + line * 16) == text
    assert verifier.verify(text + "\n" + line * MAX_SIGNATURES) == text
    with pytest.raises(NoteError, match="more than"):
        verifier.verify(text + "\n" + line * (MAX_SIGNATURES + 1))


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        (PETER_TEXT, "blank line"),
        (PETER_TEXT + "\n", "signature block"),
        (PETER_NOTE[:-1], "signature block"),
        ("\x01" + PETER_NOTE, "control"),
        ("\t" + PETER_NOTE, "control"),
        (PETER_NOTE.replace("\n", "\r\n"), "control"),
        (PETER_TEXT + "\n" + PETER_SIG.replace(EM, "-"), "does not start"),
        (PETER_TEXT + "\n" + PETER_SIG.replace(EM + " ", EM), "does not start"),
        (PETER_TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"), "malformed"),
        (PETER_TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter+Neumann"), "key name"),
        (PETER_TEXT + "\n" + PETER_SIG.replace("PeterNeumann ", "PeterNeumann"), "key name"),
        (PETER_TEXT + "\n" + PETER_SIG.replace("=\n", "\n"), "malformed signature"),
        (PETER_TEXT + "\n" + PETER_SIG.replace("=\n", "=\n\n"), "signature block"),
        (PETER_TEXT + "\n" + f"{EM} PeterNeumann AAAA\n", "malformed signature"),
        (PETER_TEXT + "\n" + f"{EM} PeterNeumann \n", "malformed signature"),
        (PETER_NOTE + "Unexpected line.\n", "does not start"),
        ("\ud800" + PETER_NOTE, "UTF-8"),
    ],
)
def test_malformed_notes_rejected(note: str, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        parse_verifier_key(PETER_VKEY).verify(note)


def test_invalid_utf8_bytes_rejected() -> None:
    with pytest.raises(NoteError, match="UTF-8"):
        parse_verifier_key(PETER_VKEY).verify(b"\xff" + PETER_NOTE.encode())


def test_non_canonical_signature_base64_rejected() -> None:
    """68 bytes leave 2 unused bits in the last base64 digit; a set bit is refused."""
    b64 = PETER_SIG.split(" ")[2].strip()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = b64[-2]
    variant = b64[:-2] + alphabet[alphabet.index(last) | 1] + "="
    assert variant != b64 and base64.b64decode(variant) == base64.b64decode(b64)
    with pytest.raises(NoteError, match="malformed signature"):
        parse_verifier_key(PETER_VKEY).verify(PETER_NOTE.replace(b64, variant))


def test_sign_refuses_bad_text(signer: NoteSigner) -> None:
    for text, reason in [
        ("no newline", "end with a newline"),
        ("", "end with a newline"),
        ("a\x00b\n", "control"),
        ("a\rb\n", "control"),
        ("\udc80\n", "UTF-8"),
    ]:
        with pytest.raises(NoteError, match=reason):
            signer.sign(text)


def test_text_with_blank_lines_round_trips(signer: NoteSigner, verifier: NoteVerifier) -> None:
    for text in ("\n", "a\n\nb\n", "a\n\n\n", "é\n— x\n"):
        assert verifier.verify(signer.sign(text)) == text


# ------------------------------------------------------------------ checkpoint parsing

VALID_HASH = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "newline"),
        (f"{ORIGIN}\n42\n{VALID_HASH}", "newline"),
        (f"{ORIGIN}\n42\n", "got 2 line"),
        (f"\n42\n{VALID_HASH}\n", "origin must be non-empty"),
        (f"{ORIGIN}\n\n{VALID_HASH}\n", "decimal"),
        (f"{ORIGIN}\n042\n{VALID_HASH}\n", "decimal"),
        (f"{ORIGIN}\n00\n{VALID_HASH}\n", "decimal"),
        (f"{ORIGIN}\n-1\n{VALID_HASH}\n", "decimal"),
        (f"{ORIGIN}\n+1\n{VALID_HASH}\n", "decimal"),
        (f"{ORIGIN}\n 1\n{VALID_HASH}\n", "decimal"),
        (f"{ORIGIN}\n1 \n{VALID_HASH}\n", "decimal"),
        (f"{ORIGIN}\n1_000\n{VALID_HASH}\n", "decimal"),
        (f"{ORIGIN}\n0x10\n{VALID_HASH}\n", "decimal"),
        (f"{ORIGIN}\n\u0661\u0662\n{VALID_HASH}\n", "decimal"),  # Arabic-Indic digits
        (f"{ORIGIN}\n18446744073709551616\n{VALID_HASH}\n", "exceeds"),
        (f"{ORIGIN}\n42\n\n", "root hash line is empty"),
        (f"{ORIGIN}\n42\nthisisnotright\n", "canonical base64"),
        (f"{ORIGIN}\n42\n{VALID_HASH.rstrip('=')}\n", "canonical base64"),
        (f"{ORIGIN}\n42\n {VALID_HASH}\n", "canonical base64"),
        (f"{ORIGIN}\n42\n{VALID_HASH.replace('+', '-').replace('/', '_')}x\n", "base64"),
        (f"{ORIGIN}\n42\n{base64.b64encode(ROOT[:31]).decode()}\n", "32 bytes, not 31"),
        (f"{ORIGIN}\n42\n{base64.b64encode(ROOT + b'x').decode()}\n", "32 bytes, not 33"),
        (f"{ORIGIN}\n42\n{base64.b64encode(hashlib.sha512().digest()).decode()}\n", "32 bytes"),
        (f"{ORIGIN}\n42\n{VALID_HASH}\n\n", "extension line 1 is empty"),
        (f"{ORIGIN}\n42\n{VALID_HASH}\next\n\n", "extension line 2 is empty"),
        (f"{ORIGIN}\n42\n{VALID_HASH}\next\r\n", "control"),
        (f"{ORIGIN}\t\n42\n{VALID_HASH}\n", "control"),
    ],
)
def test_parse_rejects_malformed(text: str, reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        Checkpoint.parse(text)


def test_parse_accepts_edge_cases() -> None:
    assert Checkpoint.parse(f"o\n0\n{VALID_HASH}\n").tree_size == 0
    big = Checkpoint.parse(f"o\n18446744073709551615\n{VALID_HASH}\n")
    assert big.tree_size == 2**64 - 1
    spaced = Checkpoint.parse(f"go.sum database tree\n1\n{VALID_HASH}\nx y\n")
    assert spaced.origin == "go.sum database tree" and spaced.extensions == ("x y",)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"origin": ""}, "non-empty"),
        ({"origin": "a\nb"}, "newline"),
        ({"tree_size": -1}, "outside"),
        ({"tree_size": 2**64}, "outside"),
        ({"tree_size": True}, "must be an int"),
        ({"tree_size": 1.0}, "must be an int"),
        ({"root_hash": ROOT[:16]}, "32 bytes"),
        ({"root_hash": VALID_HASH}, "must be bytes"),
        ({"extensions": ("",)}, "extension line 1"),
        ({"extensions": ("ok", "a\nb")}, "extension line 2"),
        ({"extensions": "abc"}, "not a string"),
    ],
)
def test_constructor_rejects_invalid_fields(kwargs: dict[str, object], reason: str) -> None:
    fields: dict[str, object] = {"origin": ORIGIN, "tree_size": 1, "root_hash": ROOT}
    fields.update(kwargs)
    with pytest.raises(CheckpointError, match=reason):
        Checkpoint(**fields)  # type: ignore[arg-type]


def test_checkpoint_is_frozen_and_normalised(checkpoint: Checkpoint) -> None:
    with pytest.raises(AttributeError):
        checkpoint.tree_size = 1  # type: ignore[misc]
    cp = Checkpoint(ORIGIN, 1, bytearray(ROOT), ["x"])  # type: ignore[arg-type]
    assert type(cp.root_hash) is bytes and cp.extensions == ("x",)
    assert hash(cp) == hash(Checkpoint(ORIGIN, 1, ROOT, ("x",)))


def test_verify_checkpoint_rejects_non_checkpoint_and_wrong_origin(
    signer: NoteSigner, verifier: NoteVerifier, checkpoint: Checkpoint
) -> None:
    with pytest.raises(CheckpointError, match="decimal"):
        verify_checkpoint(verifier, signer.sign(f"{ORIGIN}\nten\n{VALID_HASH}\n"))
    with pytest.raises(CheckpointError, match="origin"):
        verify_checkpoint(verifier, signer.sign(f"other.example/log\n1\n{VALID_HASH}\n"))
    note = sign_checkpoint(signer, checkpoint)
    with pytest.raises(CheckpointError, match="origin"):
        verify_checkpoint(verifier, note, origin="other.example/log")
    with pytest.raises(CheckpointError, match="differs from key name"):
        sign_checkpoint(signer, Checkpoint("other.example/log", 1, ROOT))


# ------------------------------------------------------------------- verifier keys


def test_key_names() -> None:
    for good in ("a", "example.com/log42", "sum.golang.org", "é/ü"):
        assert is_valid_key_name(good)
    for bad in ("", "a b", "a+b", "a\tb", "a\u00a0b", "a\u2003b", "a\u3000b", "a\nb", "a\x00"):
        assert not is_valid_key_name(bad)
        with pytest.raises(NoteError, match="invalid key name"):
            NoteSigner.from_seed(bytes(32), bad)


def test_verifier_key_manglings_rejected() -> None:
    """As in golang.org/x/mod TestNewVerifier: every substring and byte bump fails."""
    key = PETER_VKEY
    for i in range(len(key) + 1):
        for j in range(i + 1, len(key) + 1):
            if (i, j) != (0, len(key)):
                with pytest.raises(NoteError):
                    parse_verifier_key(key[i:j])
    for i in range(len(key)):
        mangled = key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :]
        with pytest.raises(NoteError):
            parse_verifier_key(mangled)


@pytest.mark.parametrize(
    ("vkey", "reason"),
    [
        # From golang.org/x/mod TestNewVerifier: wrong length and unknown algorithm.
        (
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
            "base64|32 bytes",
        ),
        ("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "type 0x65"),
        ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "lowercase"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeuman+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+c74f20a3", "<name>"),
        ("PeterNeumann+c74f20a3+", "base64"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key name"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key name"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "base64"),
    ],
)
def test_bad_verifier_keys(vkey: str, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        parse_verifier_key(vkey)


def test_key_material_sizes() -> None:
    with pytest.raises(NoteError, match="seed must be 32 bytes"):
        NoteSigner.from_seed(bytes(31), ORIGIN)
    with pytest.raises(NoteError, match="32 bytes"):
        NoteVerifier(ORIGIN, bytes(33))
    with pytest.raises(NoteError, match="32 bytes"):
        note_key_hash(ORIGIN, bytes(31))
