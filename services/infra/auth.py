"""Authentication: bearer tokens to principals (development file; OIDC in production).

Two authenticators with one interface, `principal_id(authorization) -> str | None`
(and `principal_id_async`, which never blocks the event loop):

- `TokenAuthenticator`: the development and test tokens file. Tokens are compared by
  their SHA-256 digest, so lookup time does not depend on how much of a guess matches,
  and the tokens themselves are not kept in memory in clear after loading.
- `OidcAuthenticator`: OIDC JWTs, signature checked against the provider's JWKS
  (fetched over HTTP, cached, fetched again for an unknown `kid` at most once per
  cooldown), `iss`, `aud`, `exp`, `iat` required and checked (`nbf` when present:
  many providers omit it); `sub` is the principal id (a person id, or `system:<name>`
  for machine clients).

A token is never logged, not even when it is refused: only the reason and the `kid`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jwt
from jwt import PyJWK, PyJWKClient
from pydantic import BaseModel, ConfigDict, Field

from services.infra.config import load_yaml_model
from services.infra.settings import OIDC_ALLOWED_ALGORITHMS, CommonSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field(min_length=8)
    principal: str = Field(min_length=1)


class TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: list[TokenEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a person id or `system:<name>`, and the roles they hold."""

    id: str
    roles: frozenset[str]

    @property
    def is_system(self) -> bool:
        return is_system_id(self.id)


def is_system_id(principal_id: str) -> bool:
    """True for another corporate system (`system:<name>`), not a person."""
    return principal_id.startswith("system:")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuthenticator:
    """Maps `Authorization: Bearer <token>` to a principal id."""

    def __init__(self, principals_by_digest: dict[bytes, str]) -> None:
        self._by_digest = principals_by_digest

    @classmethod
    def from_file(cls, path: Path) -> TokenAuthenticator:
        tokens = load_yaml_model(path, TokensFile)
        return cls({_digest(t.token): t.principal for t in tokens.tokens})

    def principal_id(self, authorization: str | None) -> str | None:
        """The principal for an Authorization header value, or None if absent or unknown."""
        token = bearer_token(authorization)
        if token is None:
            return None
        return self._by_digest.get(_digest(token))

    async def principal_id_async(self, authorization: str | None) -> str | None:
        """Same as `principal_id` (a dictionary lookup: nothing to wait for)."""
        return self.principal_id(authorization)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


MAX_JWT_CHARS = 16 * 1024
"""Longer bearer values are refused before any parsing (real access tokens are ~1-4 KiB)."""

PRINCIPAL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
"""What a `sub` must look like to be a principal id (the directory's person id rule,
which `system:<name>` also satisfies)."""

REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "sub")  # nbf is checked when present


class TokenRefused(Exception):
    """Why a JWT was refused, in words safe to log (never the token).

    `provider` marks a problem on the provider's side (JWKS unreachable or unusable),
    logged as a warning rather than as a routine refusal.
    """

    def __init__(self, reason: str, *, provider: bool = False, kid: object = None) -> None:
        super().__init__(reason)
        self.provider = provider
        self.kid = kid


class OidcAuthenticator:
    """Maps `Authorization: Bearer <JWT>` to the JWT's `sub`, verified against a JWKS.

    Keys come from `PyJWKClient`: the whole key set is cached for `jwks_lifespan`
    seconds, and a token whose `kid` is not in the cached set makes it fetch the set
    again, at most once per `refetch_cooldown` seconds (so a flood of made-up kids
    cannot turn into a flood of requests to the provider). Keys are not cached beyond
    the set's lifespan, so a key the provider withdraws stops working within it.
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        algorithms: tuple[str, ...] | list[str] = ("RS256", "ES256", "EdDSA"),
        leeway_seconds: float = 30,
        jwks_lifespan: float = 300,
        refetch_cooldown: float = 30,
        fetch_timeout: float = 5,
    ) -> None:
        refused = set(algorithms) - OIDC_ALLOWED_ALGORITHMS
        if refused or not algorithms:
            raise ValueError(f"algorithms not accepted for OIDC: {sorted(refused)}")
        if not issuer or not audience:
            raise ValueError("OIDC needs an issuer and an audience")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)
        self.leeway = leeway_seconds
        self.client = PyJWKClient(
            jwks_url,
            cache_keys=False,  # the set cache expires; a per-kid LRU would never forget a key
            cache_jwk_set=True,
            lifespan=jwks_lifespan,
            timeout=fetch_timeout,
            cooldown_duration=refetch_cooldown,
        )
        self._fetching = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> OidcAuthenticator:
        if not settings.oidc_jwks_url or not settings.oidc_issuer or not settings.oidc_audience:
            raise ValueError("OIDC needs oidc_jwks_url, oidc_issuer and oidc_audience")
        return cls(
            settings.oidc_jwks_url,
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            algorithms=settings.oidc_algorithms,
            leeway_seconds=settings.oidc_leeway_seconds,
        )

    def principal_id(self, authorization: str | None) -> str | None:
        """The verified `sub`, or None. May block on a JWKS fetch (up to the timeout)."""
        return _result_now(self._checked(authorization, self._key_here))

    async def principal_id_async(self, authorization: str | None) -> str | None:
        """The verified `sub`, or None; a JWKS fetch runs in a thread, one at a time."""
        return await self._checked(authorization, self._key_in_thread)

    async def _checked(
        self, authorization: str | None, key_of: Callable[[str], Awaitable[PyJWK]]
    ) -> str | None:
        """The one check of both paths, which differ only in how a key is fetched (`key_of`)."""
        token = bearer_token(authorization)
        if token is None:
            return None
        kid: str | None = None
        try:
            kid = self._kid(token)
            return self._verify(token, await key_of(kid))
        except TokenRefused as exc:
            self._refused(exc, kid)
            return None

    async def _key_here(self, kid: str) -> PyJWK:
        """The key, fetched in this thread if need be (never waits on the event loop)."""
        return self._signing_key(kid)

    async def _key_in_thread(self, kid: str) -> PyJWK:
        """The key from the cached set, or fetched in a thread: concurrent requests share
        one fetch."""
        key = self._cached_key(kid)
        if key is None:
            async with self._fetching:
                key = self._cached_key(kid)
                if key is None:
                    key = await asyncio.to_thread(self._signing_key, kid)
        return key

    def _kid(self, token: str) -> str:
        """The `kid` of a token whose header names an accepted algorithm (unverified)."""
        if len(token) > MAX_JWT_CHARS:
            raise TokenRefused("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"malformed token ({type(exc).__name__})") from None
        kid = header.get("kid")
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise TokenRefused(f"algorithm {_printable(alg)} not accepted", kid=kid)
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("no kid in the token header")
        return kid

    def _cached_key(self, kid: str) -> PyJWK | None:
        """The key for `kid` from the cached set, without any I/O (None if not there)."""
        cache = self.client.jwk_set_cache
        jwk_set = cache.get() if cache is not None else None
        if jwk_set is None:
            return None
        for key in jwk_set.keys:
            if key.key_id == kid and key.public_key_use in ("sig", None):
                return key
        return None

    def _signing_key(self, kid: str) -> PyJWK:
        try:
            return self.client.get_signing_key(kid)
        except (jwt.PyJWKClientConnectionError, OSError):
            raise TokenRefused(f"JWKS {self.client.uri} unreachable", provider=True) from None
        except jwt.PyJWKClientError as exc:
            if str(exc).startswith("Unable to find a signing key"):
                raise TokenRefused("unknown kid") from None
            raise TokenRefused(f"unusable JWKS from {self.client.uri}", provider=True) from None
        except (jwt.PyJWTError, ValueError) as exc:  # a key set the provider got wrong
            raise TokenRefused(
                f"unusable JWKS from {self.client.uri} ({type(exc).__name__})", provider=True
            ) from None

    def _verify(self, token: str, key: PyJWK) -> str:
        if key.algorithm_name not in self.algorithms:
            raise TokenRefused(f"key algorithm {key.algorithm_name} not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenRefused(_reason(exc)) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not PRINCIPAL_ID.fullmatch(subject):
            raise TokenRefused("sub is not a principal id")
        return subject

    @staticmethod
    def _refused(exc: TokenRefused, kid: str | None) -> None:
        level = logging.WARNING if exc.provider else logging.INFO
        log.log(level, "bearer JWT refused (kid %s): %s", _printable(kid or exc.kid), exc)


_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not accepted"),
    (jwt.exceptions.InvalidSubjectError, "sub is not a principal id"),
    (jwt.DecodeError, "malformed token"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    """A loggable reason: fixed words, or a claim name, never text from the token."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim}"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return f"invalid token ({type(exc).__name__})"


def _result_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits, run to its end here (no event loop)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a coroutine run synchronously waited")


def _printable(value: object) -> str:
    """A header value from an untrusted token, safe for a log line."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:64])


Authenticator = TokenAuthenticator | OidcAuthenticator


def make_authenticator(settings: CommonSettings) -> Authenticator:
    """OIDC when `oidc_jwks_url` is set, else the tokens file (never in production)."""
    if settings.oidc_jwks_url:
        return OidcAuthenticator.from_settings(settings)
    if settings.environment == "production":
        raise ValueError("production authenticates with OIDC only (set oidc_jwks_url)")
    return TokenAuthenticator.from_file(settings.tokens_file)
