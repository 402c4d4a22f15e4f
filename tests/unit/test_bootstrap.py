"""`content_base`: the steps intake and audit take alike before building their apps."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.infra.auth import TokenAuthenticator
from services.infra.bootstrap import content_base
from services.infra.config import ConfigError
from services.infra.crypto import DEVELOPMENT_PSEUDONYM_KEY, Pseudonyms, decode_key
from services.infra.runtime import Runtime
from services.infra.settings import AuditSettings, IntakeSettings

LOCAL = {"environment": "test", "oidc_jwks_url": None}
"""Set here, so that a shell's INCIDENTS_ variables cannot change what is tested."""


def test_the_base_of_a_service_that_makes_pseudonyms() -> None:
    settings = IntakeSettings(db_schema_suffix="_t1", **LOCAL)
    runtime = Runtime(settings, "intake", None)
    pseudonyms = Pseudonyms(decode_key(DEVELOPMENT_PSEUDONYM_KEY, "key"))
    base = content_base(settings, runtime, pseudonyms)
    assert base.policy.version
    assert base.directory.people
    assert isinstance(base.auth, TokenAuthenticator)
    assert base.keys.schema == "keys_t1"
    assert base.keys.pseudonyms is pseudonyms
    assert len(runtime.before_start) == 1  # the key store's migration, before anything runs


def test_the_base_of_a_service_that_only_reads_content() -> None:
    settings = AuditSettings(keys_schema="vault", **LOCAL)
    runtime = Runtime(settings, "audit", None)
    base = content_base(settings, runtime)
    assert base.keys.schema == "vault"
    assert base.keys.pseudonyms is None
    assert len(runtime.before_start) == 1


def test_a_broken_file_stops_it_before_anything_starts(tmp_path: Path) -> None:
    broken = tmp_path / "directory.yaml"
    broken.write_text("people: [\n")
    settings = AuditSettings(directory_file=broken, **LOCAL)
    runtime = Runtime(settings, "audit", None)
    with pytest.raises(ConfigError, match=r"directory\.yaml"):
        content_base(settings, runtime)
    assert runtime.before_start == []
