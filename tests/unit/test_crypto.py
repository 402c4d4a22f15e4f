"""Envelope encryption: sealed values open only with their key, incident and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.infra.crypto import (
    CryptoError,
    LocalMasterKey,
    is_sealed,
    new_data_key,
    new_salt,
    pseudonym,
    salted_digest,
    seal,
    unseal,
)


@given(st.text(max_size=2000))
def test_a_sealed_value_opens_to_the_same_text(text: str) -> None:
    key = new_data_key()
    token = seal(key, "inc-1", "description", text)
    assert is_sealed(token)
    assert unseal(key, "inc-1", "description", token) == text


def test_a_sealed_value_cannot_be_moved_to_another_incident_or_field() -> None:
    key = new_data_key()
    token = seal(key, "inc-1", "summary", "he grabbed me")
    with pytest.raises(CryptoError):
        unseal(key, "inc-2", "summary", token)
    with pytest.raises(CryptoError):
        unseal(key, "inc-1", "description", token)


def test_without_the_data_key_nothing_opens() -> None:
    token = seal(new_data_key(), "inc-1", "summary", "marker-7f3a")
    with pytest.raises(CryptoError):
        unseal(new_data_key(), "inc-1", "summary", token)
    assert "marker-7f3a" not in token


def test_a_tampered_value_is_refused() -> None:
    key = new_data_key()
    token = seal(key, "inc-1", "summary", "text")
    flipped = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(CryptoError):
        unseal(key, "inc-1", "summary", flipped)


def test_the_master_key_wraps_data_keys_for_one_context(tmp_path: Path) -> None:
    master = LocalMasterKey.from_file(tmp_path / "master.key", create=True)
    again = LocalMasterKey.from_file(tmp_path / "master.key", create=False)
    assert master.key_id == again.key_id
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    data_key = new_data_key()
    wrapped = master.wrap(data_key, "inc-1")
    assert again.unwrap(wrapped, "inc-1") == data_key
    with pytest.raises(CryptoError):
        master.unwrap(wrapped, "inc-2")


def test_a_missing_master_key_is_not_invented_where_creation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="missing"):
        LocalMasterKey.from_file(tmp_path / "nowhere.key", create=False)


def test_salted_digests_differ_per_incident_and_cannot_be_recomputed_without_the_salt() -> None:
    content = b'{"summary":"yes"}'
    one, two = new_salt(), new_salt()
    assert salted_digest(one, content) == salted_digest(one, content)
    assert salted_digest(one, content) != salted_digest(two, content)
    assert salted_digest(one, content).startswith("sha256:")


def test_pseudonyms_match_for_the_key_holder_and_hide_the_id() -> None:
    key = new_salt()
    assert pseudonym(key, "p-liu") == pseudonym(key, "p-liu") != pseudonym(key, "p-chen")
    assert "p-liu" not in pseudonym(key, "p-liu")
    assert pseudonym(new_salt(), "p-liu") != pseudonym(key, "p-liu")
