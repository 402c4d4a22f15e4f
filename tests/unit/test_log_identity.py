"""One log, one identity (issue 19): a signing key signs the log it was first bound to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.audit.checkpoint import NoteSigner
from services.audit.identity import LogIdentityError, bind, binding_path, check_latest_head


def test_a_key_is_bound_to_its_first_log_and_refused_for_another(tmp_path: Path) -> None:
    key = tmp_path / "audit-signing-key.pem"
    signer = NoteSigner.generate("incidents.example/ledger")
    bind(key, signer, "log-a")
    bind(key, signer, "log-a")  # the same log again: a restart
    assert json.loads(binding_path(key).read_text()) == {
        "log_id": "log-a",
        "origin": "incidents.example/ledger",
        "key_id": signer.key_id,
    }
    with pytest.raises(LogIdentityError, match="signs the log log-a, but this database holds"):
        bind(key, signer, "log-b")  # a fresh database under the same key and origin
    other = tmp_path / "other-key.pem"
    bind(other, NoteSigner.generate("incidents.example/ledger"), "log-b")  # its own key: fine


def test_an_unreadable_binding_refuses_rather_than_rebinds(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    binding_path(key).write_text("not json")
    with pytest.raises(LogIdentityError, match="cannot be read"):
        bind(key, NoteSigner.generate("o.example/log"), "log-a")


def test_a_key_folder_it_cannot_write_warns_and_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A read-only secret mount in production; a missing folder stands in for it here
    # (root writes through read-only permissions).
    key = tmp_path / "not-there" / "audit_signing_key"
    bind(key, NoteSigner.generate("o.example/log"), "log-a")
    assert "check is off" in caplog.text


def test_a_log_whose_latest_head_another_key_signed_is_refused() -> None:
    signer = NoteSigner.generate("incidents.example/ledger")
    other = NoteSigner.generate("incidents.example/ledger")
    note = other.sign("incidents.example/ledger\n13\n" + "A" * 43 + "=\n")
    with pytest.raises(LogIdentityError, match=r"tree size 13.*not by this service's key"):
        check_latest_head(signer, 13, other.key_id, note)
    check_latest_head(other, 13, other.key_id, note)  # its own key: fine
