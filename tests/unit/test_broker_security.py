"""Production broker security (issue 20, item 5): the ACLs of deploy/kafka/acls.sh
against the code's topic ownership, the apps' subscriptions against the read table, the
brokers' TLS and authorizer settings in deploy/, and the clients' security options.

`python -m tests.unit.test_broker_security` writes deploy/kafka/acls.sh again.
"""

from __future__ import annotations

import datetime
import re
import shlex
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from pydantic import ValidationError

from services.domain.events import CATALOG, SERVICES, Topic
from services.domain.topology import READS, acl_script, marker
from services.infra.kafka import security_options
from services.infra.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
ACLS = ROOT / "deploy" / "kafka" / "acls.sh"
COMPOSE = ROOT / "deploy" / "compose.yaml"


def granted(script: str, principal: str) -> dict[str, set[str]]:
    """Topic -> operations the script grants `principal` (literal topic names)."""
    topics: dict[str, set[str]] = defaultdict(set)
    for line in script.splitlines():
        words = shlex.split(line.strip())
        if not words or words[0] != "acls" or "--topic" not in words:
            continue
        if words[words.index("--allow-principal") + 1] != principal:
            continue
        if "--resource-pattern-type" in words:
            continue  # prefixed: faust's own topics, checked apart
        operations = {words[i + 1] for i, w in enumerate(words) if w == "--operation"}
        topics[words[words.index("--topic") + 1]] |= operations
    return topics


def test_the_committed_acl_script_is_what_the_code_renders() -> None:
    assert ACLS.read_text() == acl_script(), "run `python -m tests.unit.test_broker_security`"
    assert ACLS.stat().st_mode & 0o111


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_writes_only_the_topics_it_owns_and_reads_what_it_consumes(
    service: str,
) -> None:
    acls = granted(ACLS.read_text(), f"User:{service}")
    owned = {str(e.topic) for e in CATALOG.values() if service in e.producers}
    writable = {t for t, ops in acls.items() if "Write" in ops}
    assert writable == owned | {marker(service)}
    readable = {t for t, ops in acls.items() if "Read" in ops}
    assert readable == {str(t) for t in READS[service]} | {marker(service)}
    assert not any("All" in ops or "Alter" in ops for ops in acls.values())
    assert str(Topic.INBOUND) not in writable  # only the registered systems write there


def test_a_registered_system_writes_only_incident_inbound() -> None:
    script = ACLS.read_text()
    loop = script[script.index('for system in "$@"') :]
    system = granted(loop.replace('"$system"', "User:system-hris"), "User:system-hris")
    assert {t for t, ops in system.items() if "Write" in ops} == {"incident.inbound"}
    assert {t for t, ops in system.items() if "Read" in ops} == {"incident.inbound.results"}


def _subscriptions(app: Any) -> set[str]:
    topics = {t for c in app.state.runtime.consumers for t in c.topics}
    faust = getattr(app.state, "faust", None)
    if faust is not None:
        topics |= {t for agent in faust.agents.values() for t in agent.channel.topics}
    return topics


def test_the_read_table_is_what_the_services_subscribe_to() -> None:
    from services.audit.app import create_app as audit
    from services.escalation.app import create_app as escalation
    from services.intake.app import create_app as intake
    from services.triage.app import create_app as triage

    apps: dict[str, Callable[[], FastAPI]] = {
        "intake": intake,
        "triage": triage,
        "escalation": escalation,
        "audit": audit,
    }
    for service, create in apps.items():
        assert _subscriptions(create()) == {str(t) for t in READS[service]}, service


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_brokers_require_tls_client_certificates_and_deny_without_an_acl() -> None:
    services = _compose()["services"]
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        env = services[name]["environment"]
        assert "PLAINTEXT" not in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
        assert env["KAFKA_SSL_CLIENT_AUTH"] == "required"
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        assert env["KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM"] == "https"
        assert re.search(r"RULE:\^CN=", env["KAFKA_SSL_PRINCIPAL_MAPPING_RULES"])


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_connects_with_its_own_certificate(service: str) -> None:
    common = (ROOT / "deploy" / "env" / "production.env").read_text()
    assert "INCIDENTS_KAFKA_SECURITY_PROTOCOL=SSL\n" in common
    assert "INCIDENTS_KAFKA_SSL_CAFILE=/run/secrets/kafka_ca\n" in common
    env = _compose()["services"][service]["environment"]
    assert env["INCIDENTS_KAFKA_SSL_CERTFILE"] == f"/run/secrets/kafka_{service}_cert"
    assert env["INCIDENTS_KAFKA_SSL_KEYFILE"] == f"/run/secrets/kafka_{service}_key"
    secrets = _compose()["services"][service]["secrets"]
    assert {f"kafka_{service}_cert", f"kafka_{service}_key", "kafka_ca"} <= set(secrets)
    make = (ROOT / "deploy" / "make-secrets.sh").read_text()
    assert "for principal in admin intake triage escalation audit" in make


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intake")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_the_clients_use_tls_and_the_services_principal(tmp_path: Path) -> None:
    assert security_options(CommonSettings()) == {}
    cert, key = _certificate(tmp_path)
    mtls = CommonSettings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=cert,
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
    )
    options = security_options(mtls)
    assert options["security_protocol"] == "SSL" and options["ssl_context"].check_hostname
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    scram = CommonSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=cert,
        kafka_sasl_username="intake",
        kafka_sasl_password_file=password,
    )
    options = security_options(scram)
    assert (options["sasl_mechanism"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "s3cret",
    )
    with pytest.raises(ValidationError, match="KAFKA_SSL_CERTFILE"):
        CommonSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=cert)
    with pytest.raises(ValidationError, match="KAFKA_SSL_CAFILE"):
        CommonSettings(kafka_security_protocol="SASL_SSL")


if __name__ == "__main__":
    ACLS.parent.mkdir(parents=True, exist_ok=True)
    ACLS.write_text(acl_script())
    ACLS.chmod(0o755)
    print(f"wrote {ACLS.relative_to(ROOT)}")
