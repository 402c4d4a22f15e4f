"""Bearer tokens to principals: parsing the Authorization header, unknown tokens, the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.infra.auth import Principal, TokenAuthenticator
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
