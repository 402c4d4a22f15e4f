"""Authentication: bearer tokens to principals (development file; OIDC in production).

Tokens are compared by their SHA-256 digest, so lookup time does not depend on how
much of a guess matches, and the tokens themselves are never logged or kept in memory
in clear after loading.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from services.infra.config import load_yaml_model


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
        return self.id.startswith("system:")


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
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._by_digest.get(_digest(token.strip()))
