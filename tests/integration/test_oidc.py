"""OIDC against a JWKS served over real HTTP (127.0.0.1): caching, key rotation, outages.

The provider is a `http.server` in a thread on a free port; its key set can be changed
while the test runs, and it counts the fetches it answers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from services.infra.auth import OidcAuthenticator, make_authenticator
from services.infra.settings import CommonSettings

pytestmark = pytest.mark.integration

ISSUER = "https://idp.example/realms/corp"
AUDIENCE = "incidents"


@dataclass(frozen=True)
class Key:
    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]

    def sign(self, sub: str = "p-chen", **overrides: Any) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            **overrides,
        }
        return jwt.encode(body, self.private, algorithm=self.alg, headers={"kid": self.kid})


def rsa_key(kid: str) -> Key:
    private = rsa.generate_private_key(65537, 2048)
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return Key(kid, "RS256", private, {**jwk, "kid": kid, "use": "sig", "alg": "RS256"})


def ed_key(kid: str) -> Key:
    private = ed25519.Ed25519PrivateKey.generate()
    jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return Key(kid, "EdDSA", private, {**jwk, "kid": kid, "use": "sig"})


class Provider:
    """The identity provider's JWKS endpoint; `keys`, `status` and `body` can change."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.body: bytes | None = None  # served instead of the key set when set
        self.fetches = 0
        self.paths: list[str] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                provider.paths.append(self.path)
                body = provider.body or json.dumps({"keys": provider.keys}).encode()
                self.send_response(provider.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/corp/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def authenticator(self, **options: Any) -> OidcAuthenticator:
        return OidcAuthenticator(self.url, issuer=ISSUER, audience=AUDIENCE, **options)


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    p.thread.start()
    yield p
    p.server.shutdown()
    p.server.server_close()
    p.thread.join(5)


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {"old": rsa_key("2024-rsa"), "new": rsa_key("2025-rsa"), "ed": ed_key("2025-ed")}


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def test_tokens_are_verified_against_the_served_key_set_fetched_once(
    provider: Provider, keys: dict[str, Key]
) -> None:
    provider.keys = [keys["old"].jwk, keys["ed"].jwk]
    auth = provider.authenticator()
    for _ in range(10):
        assert await auth.principal_id_async(bearer(keys["old"].sign())) == "p-chen"
        assert auth.principal_id(bearer(keys["ed"].sign(sub="system:hris"))) == "system:hris"
    assert provider.fetches == 1
    assert provider.paths == ["/realms/corp/certs"]


async def test_settings_with_a_jwks_url_authenticate_against_it(
    provider: Provider, keys: dict[str, Key]
) -> None:
    provider.keys = [keys["old"].jwk]
    settings = CommonSettings(
        environment="test", oidc_jwks_url=provider.url, oidc_issuer=ISSUER, oidc_audience=AUDIENCE
    )
    auth = make_authenticator(settings)
    assert await auth.principal_id_async(bearer(keys["old"].sign())) == "p-chen"
    assert await auth.principal_id_async(bearer(keys["old"].sign(aud="other"))) is None


async def test_after_a_key_rotation_the_new_kid_is_accepted_once_the_set_is_fetched_again(
    provider: Provider, keys: dict[str, Key]
) -> None:
    provider.keys = [keys["old"].jwk]
    auth = provider.authenticator(refetch_cooldown=0.5)
    assert await auth.principal_id_async(bearer(keys["old"].sign())) == "p-chen"
    assert provider.fetches == 1

    provider.keys = [keys["new"].jwk]  # the provider rotates and withdraws the old key
    await asyncio.sleep(0.6)  # the cooldown since the first fetch has passed
    assert await auth.principal_id_async(bearer(keys["new"].sign())) == "p-chen"
    assert provider.fetches == 2
    # the refetched set replaced the cached one: the withdrawn key no longer works
    assert await auth.principal_id_async(bearer(keys["old"].sign())) is None
    assert auth.principal_id(bearer(keys["new"].sign())) == "p-chen"
    assert provider.fetches == 2


async def test_within_the_cooldown_a_new_kid_waits_and_the_provider_is_asked_once(
    provider: Provider, keys: dict[str, Key]
) -> None:
    provider.keys = [keys["old"].jwk]
    auth = provider.authenticator(refetch_cooldown=0.5)
    assert await auth.principal_id_async(bearer(keys["old"].sign())) == "p-chen"
    provider.keys = [keys["old"].jwk, keys["new"].jwk]

    # a burst of tokens with a kid not in the cached set: no refetch yet (cooldown)
    burst = [auth.principal_id_async(bearer(keys["new"].sign())) for _ in range(50)]
    assert await asyncio.gather(*burst) == [None] * 50
    assert provider.fetches == 1

    # after the cooldown a concurrent burst shares one refetch, and all get in
    await asyncio.sleep(0.6)
    burst = [auth.principal_id_async(bearer(keys["new"].sign())) for _ in range(50)]
    assert await asyncio.gather(*burst) == ["p-chen"] * 50
    assert provider.fetches == 2


async def test_made_up_kids_cannot_make_the_provider_be_asked_more_than_once_per_cooldown(
    provider: Provider, keys: dict[str, Key]
) -> None:
    provider.keys = [keys["old"].jwk]
    auth = provider.authenticator(refetch_cooldown=30)
    assert await auth.principal_id_async(bearer(keys["old"].sign())) == "p-chen"
    forged = [
        jwt.encode({"sub": "p-chen"}, keys["old"].private, "RS256", headers={"kid": f"k{n}"})
        for n in range(200)
    ]
    answers = await asyncio.gather(*(auth.principal_id_async(bearer(t)) for t in forged))
    assert answers == [None] * 200
    assert provider.fetches == 1


async def test_the_key_set_expires_and_is_fetched_again(
    provider: Provider, keys: dict[str, Key]
) -> None:
    provider.keys = [keys["old"].jwk]
    auth = provider.authenticator(jwks_lifespan=0.3)
    assert await auth.principal_id_async(bearer(keys["old"].sign())) == "p-chen"
    provider.keys = [keys["new"].jwk]
    await asyncio.sleep(0.4)
    # the expired set is fetched again without any unknown kid: the withdrawn key is gone
    assert await auth.principal_id_async(bearer(keys["old"].sign())) is None
    assert await auth.principal_id_async(bearer(keys["new"].sign())) == "p-chen"
    assert provider.fetches == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [(503, b'{"error": "down"}'), (200, b"<html>login</html>"), (200, b"[]"), (200, b"{}")],
    ids=["503", "html", "not-an-object", "no-keys"],
)
async def test_a_broken_provider_gives_nobody_with_a_warning_and_recovery_follows(
    provider: Provider,
    keys: dict[str, Key],
    status: int,
    body: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider.keys = [keys["old"].jwk]
    provider.status, provider.body = status, body
    auth = provider.authenticator(refetch_cooldown=0)
    token = keys["old"].sign()
    assert await auth.principal_id_async(bearer(token)) is None
    assert auth.principal_id(bearer(token)) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and all("JWKS" in w and provider.url in w for w in warnings)
    assert token not in caplog.text

    provider.status, provider.body = 200, None
    assert await auth.principal_id_async(bearer(token)) == "p-chen"


async def test_an_unreachable_provider_gives_nobody(keys: dict[str, Key]) -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{closed.server_address[1]}/certs"
    closed.server_close()  # nothing listens there any more
    auth = OidcAuthenticator(url, issuer=ISSUER, audience=AUDIENCE, fetch_timeout=2)
    assert await auth.principal_id_async(bearer(keys["old"].sign())) is None
