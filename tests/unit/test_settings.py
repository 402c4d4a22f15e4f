"""Settings come from `INCIDENTS_*` variables; production refuses the unsafe demo defaults."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.infra.crypto import DEVELOPMENT_MASTER_KEY, DEVELOPMENT_PSEUDONYM_KEY
from services.infra.settings import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_DATABASE_URL,
    AuditSettings,
    CommonSettings,
    IntakeSettings,
    database_name,
    with_database,
)

PRODUCTION_URL = "postgresql://incidents:secret@db.internal:5432/incidents"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No INCIDENTS_ variable of the developer's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("INCIDENTS_"):
            monkeypatch.delenv(name)


def production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Everything production needs, set safely; each test then breaks one thing."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens: []\n")
    monkeypatch.setenv("INCIDENTS_ENVIRONMENT", "production")
    monkeypatch.setenv("INCIDENTS_DATABASE_URL", PRODUCTION_URL)
    monkeypatch.setenv("INCIDENTS_KAFKA_IDEMPOTENCE", "true")
    monkeypatch.setenv("INCIDENTS_TOKENS_FILE", str(tokens))
    monkeypatch.setenv("INCIDENTS_SYSTEMS_FILE", str(tmp_path / "systems.yaml"))
    monkeypatch.setenv("INCIDENTS_KAFKA_SECURITY_PROTOCOL", "SSL")
    for name in ("CAFILE", "CERTFILE", "KEYFILE"):
        monkeypatch.setenv(f"INCIDENTS_KAFKA_SSL_{name}", str(tmp_path / name.lower()))
    monkeypatch.setenv("INCIDENTS_OIDC_JWKS_URL", "https://idp.example/jwks")
    monkeypatch.setenv("INCIDENTS_OIDC_ISSUER", "https://idp.example")
    monkeypatch.setenv("INCIDENTS_OIDC_AUDIENCE", "incidents")


def test_the_defaults_are_the_documented_local_ones() -> None:
    settings = IntakeSettings()
    assert settings.environment == "development"
    assert settings.kafka_bootstrap == DEFAULT_BOOTSTRAP == "127.0.0.1:9092"
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.port == 8001
    assert AuditSettings().port == 8004
    assert settings.policy_file.is_file() and settings.directory_file.is_file()


def test_incidents_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCIDENTS_KAFKA_BOOTSTRAP", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("INCIDENTS_DATABASE_URL", "postgresql://u@db:5432/x")
    monkeypatch.setenv("INCIDENTS_KAFKA_TOPIC_PREFIX", "t1-")
    monkeypatch.setenv("INCIDENTS_INTAKE_PORT", "9001")
    monkeypatch.setenv("INCIDENTS_POLICY_FILE", "/etc/incidents/policy.yaml")
    settings = IntakeSettings()
    assert settings.kafka_bootstrap == "broker-1:9092,broker-2:9092"
    assert settings.database_url == "postgresql://u@db:5432/x"
    assert settings.port == 9001
    assert settings.policy_file == Path("/etc/incidents/policy.yaml")
    assert settings.topic("incident.reports") == "t1-incident.reports"


def test_variables_without_the_prefix_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    assert CommonSettings().database_url == DEFAULT_DATABASE_URL


def test_an_invalid_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCIDENTS_KAFKA_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="kafka_partitions"):
        CommonSettings()


def test_an_unknown_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCIDENTS_ENVIRONMENT", "staging")
    with pytest.raises(ValidationError, match="environment"):
        CommonSettings()


def test_production_with_explicit_safe_settings_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    production(monkeypatch, tmp_path)
    assert CommonSettings().environment == "production"


def test_production_refuses_the_default_database_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    production(monkeypatch, tmp_path)
    monkeypatch.delenv("INCIDENTS_DATABASE_URL")
    with pytest.raises(ValidationError, match="INCIDENTS_DATABASE_URL"):
        CommonSettings()


def test_production_refuses_a_producer_without_idempotence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    production(monkeypatch, tmp_path)
    monkeypatch.setenv("INCIDENTS_KAFKA_IDEMPOTENCE", "false")
    with pytest.raises(ValidationError, match="INCIDENTS_KAFKA_IDEMPOTENCE"):
        CommonSettings()


def test_production_refuses_the_demo_tokens_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    production(monkeypatch, tmp_path)
    monkeypatch.delenv("INCIDENTS_TOKENS_FILE")
    with pytest.raises(ValidationError, match="demo tokens file"):
        CommonSettings()


def test_production_refuses_a_plaintext_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    production(monkeypatch, tmp_path)
    CommonSettings()
    monkeypatch.setenv("INCIDENTS_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    with pytest.raises(ValidationError, match="KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL"):
        CommonSettings()


def test_production_refuses_the_demo_systems_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    production(monkeypatch, tmp_path)
    safe = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv("INCIDENTS_MASTER_KEY", safe)
    monkeypatch.setenv("INCIDENTS_PSEUDONYM_KEY", safe)
    assert IntakeSettings().systems_file == tmp_path / "systems.yaml"
    monkeypatch.delenv("INCIDENTS_SYSTEMS_FILE")
    with pytest.raises(ValidationError, match="demo systems file"):
        IntakeSettings()


def test_production_refuses_the_demo_tokens_file_by_another_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    production(monkeypatch, tmp_path)
    demo = CommonSettings.model_fields["tokens_file"].default
    monkeypatch.chdir(demo.parent)
    monkeypatch.setenv("INCIDENTS_TOKENS_FILE", f"../data/./{demo.name}")
    with pytest.raises(ValidationError, match="demo tokens file"):
        CommonSettings()


def test_development_accepts_the_demo_defaults() -> None:
    assert CommonSettings().tokens_file.name == "tokens.yaml"


def test_a_database_url_can_point_at_another_database() -> None:
    url = with_database(DEFAULT_DATABASE_URL, "t_case_1")
    assert url == "postgresql://postgres:postgres@127.0.0.1:5432/t_case_1"
    assert database_name(url) == "t_case_1"
    assert database_name("postgresql://127.0.0.1:5432") == "postgres"


@pytest.mark.parametrize("spelling", ["{key}\n", " {key}", "\t{key}\t\n"])
@pytest.mark.parametrize(
    ("setting", "development"),
    [
        ("INCIDENTS_MASTER_KEY", DEVELOPMENT_MASTER_KEY),
        ("INCIDENTS_PSEUDONYM_KEY", DEVELOPMENT_PSEUDONYM_KEY),
    ],
)
def test_production_refuses_the_development_keys_however_spelled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spelling: str, setting: str, development: str
) -> None:
    production(monkeypatch, tmp_path)
    safe = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv("INCIDENTS_MASTER_KEY", safe)
    monkeypatch.setenv("INCIDENTS_PSEUDONYM_KEY", safe)
    IntakeSettings()  # safe keys start
    monkeypatch.setenv(setting, spelling.format(key=development))
    with pytest.raises(ValidationError) as refused:
        IntakeSettings()
    assert development not in str(refused.value)  # never echoed into the logs
    monkeypatch.delenv(setting)
    key_file = tmp_path / "key.b64"
    key_file.write_text(spelling.format(key=development))
    monkeypatch.setenv(setting + "_FILE", str(key_file))
    with pytest.raises(ValidationError):
        IntakeSettings()


def test_a_refused_setting_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCIDENTS_KAFKA_IDEMPOTENCE", "s3cret-not-a-bool")
    with pytest.raises(ValidationError) as refused:
        CommonSettings()
    assert "s3cret" not in str(refused.value)
