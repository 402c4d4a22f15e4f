"""Bearer tokens to principals: the development tokens file and OIDC JWTs.

The JWTs are signed with keys generated here (RSA, Ed25519, P-256), and the JWKS the
authenticator sees is built from them; no network (tests/integration/test_oidc.py
serves a JWKS over HTTP).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from services.infra.auth import (
    REQUIRED_CLAIMS,
    OidcAuthenticator,
    Principal,
    TokenAuthenticator,
    _result_now,
    make_authenticator,
)
from services.infra.config import ConfigError
from services.infra.settings import CommonSettings


@pytest.fixture
def auth(tmp_path: Path) -> TokenAuthenticator:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "tokens:\n"
        "  - {token: chen-secret-token, principal: p-chen}\n"
        '  - {token: hris-secret-token, principal: "system:hris"}\n'
    )
    return TokenAuthenticator.from_file(path)


def test_a_known_bearer_token_gives_its_principal(auth: TokenAuthenticator) -> None:
    assert auth.principal_id("Bearer chen-secret-token") == "p-chen"
    assert auth.principal_id("Bearer hris-secret-token") == "system:hris"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_scheme_is_case_insensitive(auth: TokenAuthenticator, scheme: str) -> None:
    assert auth.principal_id(f"{scheme} chen-secret-token") == "p-chen"


def test_surrounding_spaces_around_the_token_are_tolerated(auth: TokenAuthenticator) -> None:
    assert auth.principal_id("Bearer   chen-secret-token  ") == "p-chen"


def test_an_unknown_token_gives_nobody(auth: TokenAuthenticator) -> None:
    assert auth.principal_id("Bearer chen-secret-tokeN") is None
    assert auth.principal_id("Bearer chen-secret") is None


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer    ", "chen-secret-token", "Basic chen-secret-token"],
)
def test_a_missing_or_malformed_header_gives_nobody(
    auth: TokenAuthenticator, header: str | None
) -> None:
    assert auth.principal_id(header) is None


def test_the_shipped_development_tokens_load() -> None:
    auth = TokenAuthenticator.from_file(CommonSettings().tokens_file)
    assert auth.principal_id("Bearer dev-liu-token") == "p-liu"
    assert auth.principal_id("Bearer dev-hris-token") == "system:hris"


def test_a_short_token_in_the_file_is_refused_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "tokens:\n  - {token: good-long-token, principal: p-a}\n  - {token: x, principal: p-b}\n"
    )
    with pytest.raises(ConfigError, match=r"tokens.yaml:3: field tokens.1.token"):
        TokenAuthenticator.from_file(path)


def test_a_system_principal_is_recognised() -> None:
    assert Principal("system:hris", frozenset()).is_system
    assert not Principal("p-chen", frozenset({"hr_case_handler"})).is_system


# --- OIDC JWTs ---------------------------------------------------------------------------

ISSUER = "https://idp.example/realms/corp"
AUDIENCE = "incidents"
JWKS_URL = "https://idp.example/realms/corp/protocol/openid-connect/certs"


@dataclass(frozen=True)
class SigningKey:
    """A locally generated key pair, its JWK (public) and the algorithm it signs with."""

    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]


def _signing_key(kid: str, alg: str, private: Any) -> SigningKey:
    converter: Any = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[alg]
    jwk = converter.to_jwk(private.public_key(), as_dict=True)
    return SigningKey(kid, alg, private, {**jwk, "kid": kid, "use": "sig", "alg": alg})


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return _signing_key("rsa-1", "RS256", rsa.generate_private_key(65537, 2048))


@pytest.fixture(scope="module")
def ed_key() -> SigningKey:
    return _signing_key("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return _signing_key("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def other_rsa() -> SigningKey:
    """A key the provider never published."""
    return _signing_key("rsa-1", "RS256", rsa.generate_private_key(65537, 2048))


class FakeJwks:
    """Stands in for the provider's JWKS endpoint at the HTTP layer: counts fetches, can fail."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.fetches = 0
        self.down = False

    def open(self, request: urllib.request.Request, timeout: float) -> io.BytesIO:
        assert request.full_url == JWKS_URL
        self.fetches += 1
        if self.down:
            raise urllib.error.URLError("connection refused")
        return io.BytesIO(json.dumps({"keys": self.keys}).encode())


@pytest.fixture
def jwks(
    rsa_key: SigningKey, ed_key: SigningKey, ec_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> FakeJwks:
    fake = FakeJwks([rsa_key.jwk, ed_key.jwk, ec_key.jwk])
    monkeypatch.setattr(urllib.request, "build_opener", lambda *handlers: fake)
    return fake


@pytest.fixture
def oidc(jwks: FakeJwks) -> OidcAuthenticator:
    return OidcAuthenticator(
        JWKS_URL, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=30, refetch_cooldown=30
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "p-chen",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    return {k: v for k, v in {**base, **overrides}.items() if v is not _DROP}


_DROP = object()


def sign(key: SigningKey, body: dict[str, Any], **header: Any) -> str:
    return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid, **header})


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], body: dict[str, Any], signature: bytes = b"") -> str:
    """A token built by hand, as an attacker would (no library checks on the way)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(signature)}"


async def both(authenticator: OidcAuthenticator, token: str) -> str | None:
    """The sync and the async path agree; returns their answer."""
    sync = authenticator.principal_id(f"Bearer {token}")
    asynchronous = await authenticator.principal_id_async(f"Bearer {token}")
    assert sync == asynchronous
    return sync


@pytest.mark.parametrize("which", ["rsa_key", "ed_key", "ec_key"])
async def test_a_valid_jwt_gives_its_sub(
    oidc: OidcAuthenticator, which: str, request: pytest.FixtureRequest
) -> None:
    key: SigningKey = request.getfixturevalue(which)
    assert await both(oidc, sign(key, claims())) == "p-chen"


async def test_a_machine_client_is_a_system_principal(
    oidc: OidcAuthenticator, rsa_key: SigningKey
) -> None:
    assert await both(oidc, sign(rsa_key, claims(sub="system:hris"))) == "system:hris"


async def test_the_audience_may_be_one_of_several(
    oidc: OidcAuthenticator, rsa_key: SigningKey
) -> None:
    token = sign(rsa_key, claims(aud=["account", AUDIENCE]))
    assert await both(oidc, token) == "p-chen"


def test_the_sync_path_runs_without_an_event_loop(
    oidc: OidcAuthenticator, jwks: FakeJwks, rsa_key: SigningKey
) -> None:
    """`principal_id` fetches the keys itself, in this thread, with no loop running."""
    assert oidc.principal_id(f"Bearer {sign(rsa_key, claims())}") == "p-chen"
    assert jwks.fetches == 1
    jwks.down = True
    assert oidc.principal_id(f"Bearer {sign(rsa_key, claims(sub='p-liu'))}") == "p-liu"
    assert oidc.principal_id("Bearer not-a-jwt") is None


def test_a_coroutine_that_waits_is_refused_on_the_sync_path() -> None:
    async def waits() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="waited"):
        _result_now(waits())


async def test_the_keys_are_fetched_once_and_cached(
    oidc: OidcAuthenticator, jwks: FakeJwks, rsa_key: SigningKey, ed_key: SigningKey
) -> None:
    for _ in range(5):
        assert await both(oidc, sign(rsa_key, claims())) == "p-chen"
        assert await both(oidc, sign(ed_key, claims())) == "p-chen"
    assert jwks.fetches == 1


async def test_clock_skew_within_the_leeway_is_tolerated(
    oidc: OidcAuthenticator, rsa_key: SigningKey
) -> None:
    now = int(time.time())
    token = sign(rsa_key, claims(exp=now - 10, nbf=now + 10, iat=now + 10))
    assert await both(oidc, token) == "p-chen"


def _at(offset: int) -> Any:
    """A time `offset` seconds from when the test runs (not from collection)."""
    return lambda now: now + offset


def _refusals() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("expired", {"exp": _at(-120), "iat": _at(-600), "nbf": _at(-600)}),
        ("not-yet-valid", {"nbf": _at(120)}),
        ("issued-in-the-future", {"iat": _at(120)}),
        ("wrong-audience", {"aud": "another-app"}),
        ("wrong-audience-list", {"aud": ["account", "another-app"]}),
        ("wrong-issuer", {"iss": "https://evil.example/realms/corp"}),
        ("issuer-prefix", {"iss": ISSUER + "/x"}),
        ("sub-not-a-principal-id", {"sub": "p chen"}),
        ("sub-with-newline", {"sub": "p-chen\n"}),
        ("sub-too-long", {"sub": "p" * 101}),
        ("sub-not-a-string", {"sub": 42}),
        ("exp-not-a-number", {"exp": "tomorrow"}),
    ]
    cases += [(f"missing-{claim}", {claim: _DROP}) for claim in REQUIRED_CLAIMS]
    return cases


@pytest.mark.parametrize(("case", "overrides"), _refusals(), ids=[c for c, _ in _refusals()])
async def test_a_jwt_with_bad_claims_gives_nobody(
    oidc: OidcAuthenticator, rsa_key: SigningKey, case: str, overrides: dict[str, Any]
) -> None:
    now = int(time.time())
    resolved = {k: v(now) if callable(v) else v for k, v in overrides.items()}
    assert await both(oidc, sign(rsa_key, claims(**resolved))) is None


async def test_a_jwt_signed_by_another_key_under_a_known_kid_gives_nobody(
    oidc: OidcAuthenticator, other_rsa: SigningKey
) -> None:
    assert await both(oidc, sign(other_rsa, claims())) is None


async def test_a_tampered_payload_gives_nobody(
    oidc: OidcAuthenticator, rsa_key: SigningKey
) -> None:
    header, _, signature = sign(rsa_key, claims()).split(".")
    payload = _b64(json.dumps(claims(sub="p-admin")).encode())
    assert await both(oidc, f"{header}.{payload}.{signature}") is None


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_gives_nobody(
    oidc: OidcAuthenticator, rsa_key: SigningKey, alg: str
) -> None:
    assert await both(oidc, forge({"alg": alg, "kid": rsa_key.kid}, claims())) is None
    assert await both(oidc, forge({"alg": alg}, claims())) is None


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_signed_with_the_public_key_gives_nobody(
    oidc: OidcAuthenticator, rsa_key: SigningKey, alg: str
) -> None:
    """The key confusion attack: the public key (PEM, or its JWK) used as an HMAC secret."""
    public = rsa_key.private.public_key()
    secrets_tried = [
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        json.dumps(rsa_key.jwk).encode(),
    ]
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header = {"alg": alg, "typ": "JWT", "kid": rsa_key.kid}
    for secret in secrets_tried:
        unsigned = forge(header, claims()).rsplit(".", 1)[0]
        mac = hmac.new(secret, unsigned.encode(), digest).digest()
        assert await both(oidc, f"{unsigned}.{_b64(mac)}") is None


async def test_a_symmetric_key_in_the_jwks_is_never_used(jwks: FakeJwks) -> None:
    secret = b"a-shared-secret-a-shared-secret!"
    jwks.keys.append({"kty": "oct", "kid": "hmac-1", "k": _b64(secret), "alg": "HS256"})
    authenticator = OidcAuthenticator(JWKS_URL, issuer=ISSUER, audience=AUDIENCE)
    token = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "hmac-1"})
    assert await both(authenticator, token) is None


async def test_a_kid_of_another_key_type_gives_nobody(
    oidc: OidcAuthenticator, ed_key: SigningKey, rsa_key: SigningKey
) -> None:
    """An EdDSA-signed token naming the RSA key's kid."""
    token = jwt.encode(claims(), ed_key.private, algorithm="EdDSA", headers={"kid": rsa_key.kid})
    assert await both(oidc, token) is None


async def test_a_jwt_without_a_kid_gives_nobody_and_fetches_nothing(
    oidc: OidcAuthenticator, jwks: FakeJwks, rsa_key: SigningKey
) -> None:
    token = jwt.encode(claims(), rsa_key.private, algorithm="RS256")
    assert await both(oidc, token) is None
    assert jwks.fetches == 0


async def test_unknown_kids_refetch_the_keys_at_most_once_per_cooldown(
    oidc: OidcAuthenticator, jwks: FakeJwks, rsa_key: SigningKey
) -> None:
    assert await both(oidc, sign(rsa_key, claims())) == "p-chen"
    for n in range(20):
        made_up = _signing_key(f"made-up-{n}", "RS256", rsa_key.private)
        assert await both(oidc, sign(made_up, claims())) is None
    assert jwks.fetches == 1  # the first fetch started the cooldown


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
        "\u00e9\u00e9.\u00e9.\u00e9",
        "x" * 20_000,
        forge({"alg": "RS256", "kid": "rsa-1"}, {}) + "x" * 20_000,
        _b64(b"[1, 2]") + "." + _b64(b"{}") + ".c2ln",
        _b64(b"\xff\xfe") + "." + _b64(b"{}") + ".c2ln",
    ],
    ids=[
        "word",
        "three-words",
        "two-parts",
        "dots",
        "empty-payload",
        "non-ascii",
        "huge",
        "huge-signature",
        "header-not-object",
        "header-not-utf8",
    ],
)
async def test_garbage_gives_nobody(oidc: OidcAuthenticator, token: str) -> None:
    assert await both(oidc, token) is None


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "Token x.y.z"])
async def test_a_missing_or_non_bearer_header_gives_nobody_with_oidc(
    oidc: OidcAuthenticator, header: str | None
) -> None:
    assert oidc.principal_id(header) is None
    assert await oidc.principal_id_async(header) is None


async def test_an_unreachable_jwks_gives_nobody_and_a_warning(
    oidc: OidcAuthenticator, jwks: FakeJwks, rsa_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    jwks.down = True
    with caplog.at_level(logging.INFO, logger="services.infra.auth"):
        assert await both(oidc, sign(rsa_key, claims())) is None
    assert any(r.levelno == logging.WARNING and "unreachable" in r.message for r in caplog.records)


async def test_a_refused_token_is_never_logged_only_the_reason_and_kid(
    oidc: OidcAuthenticator,
    jwks: FakeJwks,
    rsa_key: SigningKey,
    other_rsa: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = int(time.time())
    tokens = [
        sign(rsa_key, claims(exp=now - 600, iat=now - 900, nbf=now - 900)),
        sign(rsa_key, claims(aud="other")),
        sign(other_rsa, claims()),
        sign(_signing_key("nope", "RS256", rsa_key.private), claims()),
        forge({"alg": "none", "kid": "rsa-1"}, claims()),
        "not.a.jwt",
    ]
    with caplog.at_level(logging.DEBUG):
        for token in tokens:
            assert await both(oidc, token) is None
        jwks.down = True
        oidc.client.jwk_set_cache.put(None)  # type: ignore[union-attr]
        assert await both(oidc, sign(rsa_key, claims())) is None
    text = caplog.text
    for token in tokens:
        for part in token.split("."):
            if len(part) > 8:
                assert part not in text
    reasons = [r.getMessage() for r in caplog.records if r.name == "services.infra.auth"]
    assert any("expired" in r and "'rsa-1'" in r for r in reasons)
    assert any("wrong audience" in r for r in reasons)
    assert any("bad signature" in r for r in reasons)
    assert any("unknown kid" in r and "'nope'" in r for r in reasons)


async def test_the_token_file_authenticator_has_the_async_method_too(
    auth: TokenAuthenticator,
) -> None:
    assert await auth.principal_id_async("Bearer chen-secret-token") == "p-chen"
    assert await auth.principal_id_async("Bearer nope-nope-nope") is None


# --- choosing the authenticator; the OIDC settings ----------------------------------------


@pytest.fixture
def no_incidents_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("INCIDENTS_"):
            monkeypatch.delenv(name)


def test_without_a_jwks_url_the_tokens_file_is_used(no_incidents_env: None) -> None:
    assert isinstance(make_authenticator(CommonSettings()), TokenAuthenticator)


def test_with_a_jwks_url_oidc_is_used(no_incidents_env: None) -> None:
    settings = CommonSettings(
        oidc_jwks_url=JWKS_URL, oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_leeway_seconds=5
    )
    authenticator = make_authenticator(settings)
    assert isinstance(authenticator, OidcAuthenticator)
    assert authenticator.algorithms == ["RS256", "ES256", "EdDSA"]
    assert (authenticator.issuer, authenticator.audience, authenticator.leeway) == (
        ISSUER,
        AUDIENCE,
        5,
    )


def test_the_oidc_variables_are_read(
    no_incidents_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INCIDENTS_OIDC_JWKS_URL", JWKS_URL)
    monkeypatch.setenv("INCIDENTS_OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("INCIDENTS_OIDC_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("INCIDENTS_OIDC_ALGORITHMS", "ES256, EdDSA")
    monkeypatch.setenv("INCIDENTS_OIDC_LEEWAY_SECONDS", "10")
    settings = CommonSettings()
    assert settings.oidc_algorithms == ("ES256", "EdDSA")
    assert settings.oidc_leeway_seconds == 10
    monkeypatch.setenv("INCIDENTS_OIDC_ALGORITHMS", '["PS256"]')
    assert CommonSettings().oidc_algorithms == ("PS256",)


@pytest.mark.parametrize("algorithms", ["none", "HS256", "RS256,HS256", ""])
def test_none_and_hmac_algorithms_are_refused_in_settings(
    no_incidents_env: None, algorithms: str
) -> None:
    with pytest.raises(ValidationError, match="oidc_algorithms"):
        CommonSettings(oidc_algorithms=algorithms)


def test_none_and_hmac_algorithms_are_refused_by_the_authenticator() -> None:
    for algorithms in (["none"], ["HS256"], ["RS256", "HS512"], []):
        with pytest.raises(ValueError, match="algorithms"):
            OidcAuthenticator(JWKS_URL, issuer=ISSUER, audience=AUDIENCE, algorithms=algorithms)


def test_a_jwks_url_needs_an_issuer_and_an_audience(no_incidents_env: None) -> None:
    with pytest.raises(ValidationError, match="INCIDENTS_OIDC_ISSUER"):
        CommonSettings(oidc_jwks_url=JWKS_URL, oidc_audience=AUDIENCE)
    with pytest.raises(ValidationError, match="INCIDENTS_OIDC_AUDIENCE"):
        CommonSettings(oidc_jwks_url=JWKS_URL, oidc_issuer=ISSUER)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://idp/jwks", "not a url"])
def test_a_jwks_url_must_be_http(no_incidents_env: None, url: str) -> None:
    with pytest.raises(ValidationError, match="oidc_jwks_url"):
        CommonSettings(oidc_jwks_url=url, oidc_issuer=ISSUER, oidc_audience=AUDIENCE)


def _production(**overrides: Any) -> CommonSettings:
    safe: dict[str, Any] = {
        "environment": "production",
        "database_url": "postgresql://incidents:secret@db.internal:5432/incidents",
        "kafka_idempotence": True,
        "tokens_file": Path("/nonexistent/tokens.yaml"),
        "oidc_jwks_url": JWKS_URL,
        "oidc_issuer": ISSUER,
        "oidc_audience": AUDIENCE,
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": Path("/nonexistent/ca.pem"),
        "kafka_ssl_certfile": Path("/nonexistent/cert.pem"),
        "kafka_ssl_keyfile": Path("/nonexistent/key.pem"),
    }
    return CommonSettings(**{**safe, **overrides})


def test_production_authenticates_with_oidc(no_incidents_env: None) -> None:
    assert isinstance(make_authenticator(_production()), OidcAuthenticator)


def test_production_refuses_to_run_without_oidc(no_incidents_env: None) -> None:
    with pytest.raises(ValidationError, match="INCIDENTS_OIDC_JWKS_URL"):
        _production(oidc_jwks_url=None)
    with pytest.raises(ValidationError, match="https"):
        _production(oidc_jwks_url="http://idp.example/jwks")
