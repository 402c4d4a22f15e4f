"""Typed settings: one class per service, all read from `INCIDENTS_*` variables.

Every field has a description (`incidents config` prints them). Unsafe development
defaults are refused when `INCIDENTS_ENVIRONMENT` is not `development`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.infra.crypto import (
    DEVELOPMENT_MASTER_KEY,
    DEVELOPMENT_PSEUDONYM_KEY,
    CryptoError,
    decode_key,
)

DEFAULT_DATABASE_URL = "postgresql://postgres:postgres@127.0.0.1:5432/incidents"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
_DATA = Path(__file__).resolve().parent.parent / "data"
OIDC_ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""Asymmetric JWS algorithms only: `none` and HMAC (HS*) are never accepted."""


def _blank_is_none(value: Any) -> Any:
    """A blank string setting (an empty environment variable) is unset."""
    return None if isinstance(value, str) and not value.strip() else value


def _http_url_or_none(value: str | None) -> str | None:
    """An http(s) URL with a host, or unset."""
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
    return value


def _port(service: str, default: int, serves: str = "") -> Any:
    """The field of `service`'s HTTP port, read from ``INCIDENTS_<SERVICE>_PORT``."""
    env = f"INCIDENTS_{service.upper()}_PORT"
    return Field(
        default,
        validation_alias=AliasChoices(env),
        description=f"HTTP port{serves} of {service} ({env}).",
    )


def _key(name: str, what: str) -> Any:
    """The field of key setting ``name``: base64 of a 32-byte key, `what` it is."""
    return Field(
        None,
        description=f"Base64 of the 32-byte {what}. Unset (and no {name}_file): a public"
        " development key, which production refuses.",
    )


def _key_file(name: str) -> Any:
    """The field of the file that holds key setting ``name`` instead."""
    noun = name.replace("_", " ")
    return Field(None, description=f"File holding the {noun} (base64); wins over {name}.")


def _key_rules(name: str, development: str) -> tuple[Any, Any]:
    """The validators of key setting ``name`` and its ``name``_file: blank is unset, and
    production refuses them when they leave the public `development` key in use."""

    def refuse_development_key(settings: CommonSettings) -> CommonSettings:
        value, path = getattr(settings, name), getattr(settings, f"{name}_file")
        if settings.environment == "production" and _development_key(value, path, development):
            env = f"INCIDENTS_{name.upper()}"
            raise ValueError(f"production needs {env}_FILE or {env} (not the development key)")
        return settings

    blank_is_unset = field_validator(name, f"{name}_file", mode="before")(_blank_is_none)
    return blank_is_unset, model_validator(mode="after")(refuse_development_key)


class CommonSettings(BaseSettings):
    """Settings every service reads."""

    model_config = SettingsConfigDict(
        env_prefix="INCIDENTS_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        hide_input_in_errors=True,  # a refused setting may be a key: never echo it
    )

    environment: Literal["development", "test", "production"] = Field(
        "development", description="Deployment kind; production refuses unsafe defaults."
    )
    kafka_bootstrap: str = Field(
        DEFAULT_BOOTSTRAP, description="Kafka bootstrap servers, comma separated."
    )
    kafka_idempotence: bool = Field(
        False,
        description="Idempotent producer (on for Apache Kafka; the local Tansu broker rejects it).",
    )
    kafka_topic_prefix: str = Field(
        "", description="Prefix for every topic name (tests use one per run)."
    )
    kafka_partitions: int = Field(3, ge=1, description="Partitions of topics created at start.")
    kafka_replication: int = Field(1, ge=1, description="Replication factor of created topics.")
    kafka_session_timeout_ms: int = Field(
        6000, ge=1000, description="Consumer group session timeout (rebalances wait half)."
    )
    kafka_fetch_max_wait_ms: int = Field(
        20,
        ge=1,
        description="How long a fetch waits for data while records flow: the consumer's"
        " latency floor.",
    )
    kafka_fetch_idle_wait_ms: int = Field(
        500,
        ge=1,
        description="The longest fetch wait, that of a consumer long idle: the wait doubles"
        " from the short one after each 25 empty waits, up to this (reached after 15.5 s of"
        " quiet at 20/500). The local broker answers a record up to half the wait late, so"
        " a record after a quiet spell of t seconds waits up to ~10 ms + t/50, at most half"
        " of this, per hop; shorter costs idle CPU (100: 12-17 ms/s per service instead of"
        " 7-10). Apache Kafka answers a fetch as soon as a record comes: 5000 there.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How the service talks to Kafka: PLAINTEXT (local broker only), SSL"
        " (TLS; with a client certificate, the certificate is the principal: mTLS) or"
        " SASL_SSL (TLS and a SCRAM login). Production refuses PLAINTEXT"
        " (deploy/README.md, Broker security).",
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA certificate (PEM) the broker's certificate must chain to."
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for mTLS: its CN is the Kafka principal."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="Private key (PEM) of the client certificate."
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism with SASL_SSL."
    )
    kafka_sasl_username: str | None = Field(None, description="SCRAM user with SASL_SSL.")
    kafka_sasl_password_file: Path | None = Field(
        None, description="File holding the SCRAM password with SASL_SSL (a secret)."
    )
    database_url: str = Field(DEFAULT_DATABASE_URL, description="PostgreSQL URL.")
    db_schema_suffix: str = Field(
        "", description="Suffix for every service's schema name (tests isolate with it)."
    )
    db_pool_max: int = Field(10, ge=1, description="Largest PostgreSQL pool size.")
    relay_enabled: bool = Field(
        True, description="Run the outbox relay in this process (off: another process relays)."
    )
    outbox_batch: int = Field(500, ge=1, description="Most events the relay publishes at once.")
    outbox_poll_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between relay polls when no NOTIFY wakes it (a fallback: every"
        " commit that adds to the outbox notifies the relay).",
    )
    outbox_replay_window: float = Field(
        7 * 86400.0,
        ge=0,
        description="Seconds of outbox history republished after the broker lost its data.",
    )
    broker_check_interval: float = Field(
        2.0, gt=0, description="Seconds between checks that the broker still has our topics."
    )
    http_host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    log_level: str = Field("INFO", description="Log level.")
    traces_local: bool = Field(
        True,
        description="Keep finished spans in local files for `incidents traces show`.",
    )
    traces_dir: Path = Field(
        Path.home() / ".incidents" / "traces",
        description="Folder of the local span files, one `<service>.jsonl` per service.",
    )
    traces_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        description="Size at which a local span file is rotated (one older file is kept).",
    )
    max_body_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest accepted HTTP body (413 above)."
    )
    directory_file: Path = Field(
        _DATA / "directory.yaml", description="Organisation seed (YAML), loaded at start."
    )
    policy_file: Path = Field(_DATA / "policy.yaml", description="Triage and escalation policy.")
    tokens_file: Path = Field(
        _DATA / "tokens.yaml", description="Development bearer tokens (never in production)."
    )
    oidc_jwks_url: str | None = Field(
        None,
        description="JWKS URL of the OIDC provider. Set: bearer tokens are JWTs verified"
        " against it (sub = principal id) and the tokens file is not used. Unset: the"
        " tokens file (development and test only; production requires this).",
    )
    oidc_issuer: str | None = Field(
        None, description="Required `iss` of OIDC JWTs (needed when oidc_jwks_url is set)."
    )
    oidc_audience: str | None = Field(
        None, description="Required `aud` of OIDC JWTs (needed when oidc_jwks_url is set)."
    )
    oidc_algorithms: Annotated[tuple[str, ...], NoDecode] = Field(
        ("RS256", "ES256", "EdDSA"),
        description="Accepted JWS algorithms, comma separated (asymmetric only; `none`"
        " and HS* are refused).",
    )
    oidc_leeway_seconds: int = Field(
        30, ge=0, le=300, description="Clock skew allowed on exp, nbf and iat (seconds)."
    )

    event_signing_key: Path | None = Field(
        None,
        description="This service's Ed25519 private key (PEM, or raw base64) that signs"
        " every event it publishes (docs/event-signing.md). Unset: a public development"
        " key derived from the service's name, which production refuses.",
    )
    event_keys_file: Path | None = Field(
        None,
        description="The key set consumers check event signatures against (YAML: id,"
        " service, public_key, revoked). Unset: the development keys, which production"
        " refuses.",
    )

    @field_validator("oidc_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):  # a JSON list works too
                return json.loads(value)
            return tuple(a.strip() for a in value.split(",") if a.strip())
        return value

    @field_validator("oidc_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one algorithm is needed")
        refused = [a for a in value if a not in OIDC_ALLOWED_ALGORITHMS]
        if refused:
            raise ValueError(
                f"not accepted: {', '.join(refused)} (allowed: "
                f"{', '.join(sorted(OIDC_ALLOWED_ALGORITHMS))})"
            )
        return value

    _empty_is_unset = field_validator(
        "oidc_jwks_url", "oidc_issuer", "oidc_audience", mode="before"
    )(_blank_is_none)

    _http_url = field_validator("oidc_jwks_url")(_http_url_or_none)

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> CommonSettings:
        if self.environment == "production":
            if self.database_url == DEFAULT_DATABASE_URL:
                raise ValueError("production needs INCIDENTS_DATABASE_URL set explicitly")
            if not self.kafka_idempotence:
                raise ValueError("production needs INCIDENTS_KAFKA_IDEMPOTENCE=true")
            # Resolved, so that a relative or symlinked path to the demo file is refused too.
            if self.tokens_file.resolve() == (_DATA / "tokens.yaml").resolve():
                raise ValueError("production refuses the demo tokens file")
            if self.oidc_jwks_url is None:
                raise ValueError("production needs INCIDENTS_OIDC_JWKS_URL (OIDC JWTs)")
            if urlsplit(self.oidc_jwks_url).scheme != "https":
                raise ValueError("production needs an https INCIDENTS_OIDC_JWKS_URL")
            if self.kafka_security_protocol == "PLAINTEXT":
                raise ValueError(
                    "production needs INCIDENTS_KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL"
                )
        if self.kafka_security_protocol != "PLAINTEXT" and self.kafka_ssl_cafile is None:
            raise ValueError("Kafka over TLS needs INCIDENTS_KAFKA_SSL_CAFILE")
        if self.kafka_security_protocol == "SSL" and not (
            self.kafka_ssl_certfile and self.kafka_ssl_keyfile
        ):
            raise ValueError(
                "INCIDENTS_KAFKA_SECURITY_PROTOCOL=SSL (mTLS) needs INCIDENTS_KAFKA_SSL_CERTFILE"
                " and INCIDENTS_KAFKA_SSL_KEYFILE"
            )
        if self.kafka_security_protocol == "SASL_SSL" and not (
            self.kafka_sasl_username and self.kafka_sasl_password_file
        ):
            raise ValueError(
                "INCIDENTS_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs INCIDENTS_KAFKA_SASL_USERNAME"
                " and INCIDENTS_KAFKA_SASL_PASSWORD_FILE"
            )
        if self.oidc_jwks_url is not None and not (self.oidc_issuer and self.oidc_audience):
            raise ValueError(
                "INCIDENTS_OIDC_JWKS_URL needs INCIDENTS_OIDC_ISSUER and INCIDENTS_OIDC_AUDIENCE"
            )
        return self

    def topic(self, name: str) -> str:
        """The broker-side name of a catalog topic."""
        return f"{self.kafka_topic_prefix}{name}"

    def schema_name(self, name: str) -> str:
        """The PostgreSQL schema of a service."""
        return f"{name}{self.db_schema_suffix}"


def _development_key(value: SecretStr | None, path: Path | None, development: str) -> bool:
    """True when a key setting (or key file) leaves the public development key in use.

    Compared as key bytes, so another spelling of it (spaces, a newline) is caught; a
    file that cannot be read or is not a key is not the development key (the service
    refuses it when it loads the key).
    """
    if path is not None:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            return False
    elif value is not None:
        text = value.get_secret_value()
    else:
        return True
    try:
        return decode_key(text, "key") == decode_key(development, "key")
    except CryptoError:
        return False


class PseudonymSettings(CommonSettings):
    """The key of reporter pseudonyms: intake makes them, triage matches them."""

    pseudonym_key: SecretStr | None = _key(
        "pseudonym_key", "HMAC key of reporter pseudonyms (intake and triage must share it)"
    )
    pseudonym_key_file: Path | None = _key_file("pseudonym_key")

    _blank_pseudonym_is_unset, _real_pseudonym_key = _key_rules(
        "pseudonym_key", DEVELOPMENT_PSEUDONYM_KEY
    )


class ContentKeySettings(CommonSettings):
    """The master key that wraps incidents' data keys (intake and audit only)."""

    master_key: SecretStr | None = _key(
        "master_key", "master key that wraps every incident's data key"
    )
    master_key_file: Path | None = _key_file("master_key")
    keys_schema: str = Field(
        "keys", description="PostgreSQL schema of the key store (suffixed like the others)."
    )
    previous_master_key_files: Annotated[tuple[Path, ...], NoDecode] = Field(
        (),
        description="Files of earlier master keys, comma separated: keys they wrapped still"
        " open, and intake re-wraps them under the current one (rotation).",
    )

    @field_validator("previous_master_key_files", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(Path(p.strip()) for p in value.split(",") if p.strip())
        return value

    _blank_key_is_unset, _real_master_key = _key_rules("master_key", DEVELOPMENT_MASTER_KEY)


class IntakeSettings(ContentKeySettings, PseudonymSettings):
    """Intake: the HTTP front door and the `incident.inbound` consumer."""

    erasure_interval: float = Field(
        3600.0,
        gt=0,
        description="Seconds between runs of the erasure job (destroys the keys of closed"
        " incidents whose retention has passed and that no legal hold keeps).",
    )
    decision_within: float = Field(
        300.0,
        gt=0,
        description="Seconds triage has to decide a report after intake accepted it; past"
        " that, intake raises incident.decision.overdue.v1 for it, once (an error log line,"
        " incidents_decision_overdue_total, incidents_decision_overdue_incidents;"
        " docs/operations.md). `incidents up` sets 30 unless given.",
    )
    attachment_max_bytes: int = Field(
        25 * 1024 * 1024,
        ge=1024,
        description="Largest accepted evidence file, in bytes (413 above; docs/attachments.md).",
    )
    attachment_incident_max_bytes: int = Field(
        200 * 1024 * 1024,
        ge=1024,
        description="Most bytes of evidence files one incident may hold (413 above).",
    )
    attachment_store: Literal["postgres", "s3"] = Field(
        "postgres",
        description="Where evidence files' sealed chunks live: `postgres` (the intake"
        " database) or `s3` (an S3-compatible object store; docs/attachments.md).",
    )
    attachment_s3_endpoint: str | None = Field(
        None,
        description="The S3-compatible store's URL (e.g. https://s3.eu-central-1.amazonaws.com"
        " or a MinIO/Ceph address). Unset: AWS's endpoint for the region.",
    )
    attachment_s3_region: str = Field("us-east-1", description="The S3 store's region.")
    attachment_s3_bucket: str | None = Field(
        None, description="The bucket of the sealed chunks (required with the `s3` store)."
    )
    attachment_s3_prefix: str = Field(
        "attachments/", description="Key prefix of the chunks' objects in the bucket."
    )
    attachment_s3_access_key_id: str | None = Field(
        None,
        description="S3 access key id. Unset: the AWS default chain (AWS_* variables, a"
        " role of the pod or instance).",
    )
    attachment_s3_secret_access_key_file: Path | None = Field(
        None,
        description="File holding the S3 secret access key (a secret; never in the repository).",
    )
    systems_file: Path = Field(
        _DATA / "systems.yaml",
        description="Registered systems that may report incidents (YAML: id, scopes, Ed25519"
        " public keys, HTTP, Kafka principal; docs/inbound.md). Production refuses the demo"
        " file.",
    )
    audit_url: str = Field(
        "http://127.0.0.1:8004",
        description="Audit's base URL: the receipt view fetches the reporter's ledger proof"
        " there (docs/witness.md). Empty: receipts carry no proof.",
    )

    port: int = _port("intake", 8001)

    @model_validator(mode="after")
    def _real_systems(self) -> IntakeSettings:
        if (
            self.environment == "production"
            and self.systems_file.resolve() == (_DATA / "systems.yaml").resolve()
        ):
            raise ValueError("production refuses the demo systems file (INCIDENTS_SYSTEMS_FILE)")
        if self.attachment_store == "s3" and not self.attachment_s3_bucket:
            raise ValueError("the s3 attachment store needs INCIDENTS_ATTACHMENT_S3_BUCKET")
        if self.attachment_store == "s3" and importlib.util.find_spec("aiobotocore") is None:
            raise ValueError(
                'the s3 attachment store needs its client: pip install "incidents[s3]"'
            )
        if (self.attachment_s3_access_key_id is None) != (
            self.attachment_s3_secret_access_key_file is None
        ):
            raise ValueError(
                "INCIDENTS_ATTACHMENT_S3_ACCESS_KEY_ID and"
                " INCIDENTS_ATTACHMENT_S3_SECRET_ACCESS_KEY_FILE go together"
            )
        return self


class TriageSettings(PseudonymSettings):
    """Triage: the faust stream processor that decides routing."""

    port: int = _port("triage", 8002, " (health, metrics)")


class EscalationSettings(CommonSettings):
    """Escalation: the faust stream processor that keeps deadlines."""

    port: int = _port("escalation", 8003, " (health, metrics)")
    notify_adapter: Literal["log", "webhook", "smtp"] = Field(
        "log",
        description="How notices reach people: `log` (a log line, the default), `webhook`"
        " (a signed JSON POST) or `smtp` (a plain-text mail to the directory file's address).",
    )
    notify_webhook_url: str | None = Field(
        None,
        description="URL the webhook adapter POSTs notices to (required with `webhook`;"
        " https in production).",
    )
    notify_webhook_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key that signs each webhook (X-Incidents-Signature header);"
        " required with `webhook`, at least 32 characters in production.",
    )
    notify_smtp_host: str | None = Field(
        None, description="SMTP server of the smtp adapter (required with `smtp`)."
    )
    notify_smtp_port: int = Field(587, ge=1, le=65535, description="SMTP server port.")
    notify_smtp_sender: str | None = Field(
        None, description="From address of notice mails (required with `smtp`)."
    )
    notify_smtp_starttls: bool = Field(
        True,
        description="Upgrade the SMTP connection with STARTTLS (certificate verified) before"
        " anything is sent; production refuses a password without it.",
    )
    notify_smtp_username: str | None = Field(
        None, description="SMTP login (with notify_smtp_password); unset: no login."
    )
    notify_smtp_password: SecretStr | None = Field(
        None, description="SMTP password (with notify_smtp_username)."
    )
    notify_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Retries of a failed delivery (connection error, timeout, 5xx, 429, SMTP"
        " 4xx) before it counts as failed for good and the next level may be asked.",
    )
    notify_timeout_seconds: float = Field(
        5.0, gt=0, le=120, description="Time limit of one delivery attempt (seconds)."
    )
    notify_backoff_seconds: float = Field(
        0.5,
        ge=0,
        le=60,
        description="First retry delay (seconds); doubles per retry, with jitter.",
    )
    notify_held_alarm_seconds: float = Field(
        300.0,
        gt=0,
        description="Seconds a notice may wait for an incident's decision that escalation"
        " has not read (its escalation never started: the decision dead-lettered here) before"
        " the incident is alarmed, once (an error log line,"
        " incidents_escalation_held_alarms_total, incidents_escalation_held_incidents;"
        " docs/operations.md).",
    )
    console_url: str = Field(
        "http://127.0.0.1:8001/ui",
        description="Base URL of the handlers' console: notice mails link to"
        " <console_url>/incidents/<id> (https in production with `smtp`).",
    )

    _blank_is_unset = field_validator(
        "notify_webhook_url",
        "notify_webhook_secret",
        "notify_smtp_host",
        "notify_smtp_sender",
        "notify_smtp_username",
        "notify_smtp_password",
        mode="before",
    )(_blank_is_none)

    _http_or_https = field_validator("notify_webhook_url", "console_url")(_http_url_or_none)

    @model_validator(mode="after")
    def _notify_complete(self) -> EscalationSettings:
        production = self.environment == "production"
        if self.notify_adapter == "webhook":
            if self.notify_webhook_url is None:
                raise ValueError(
                    "INCIDENTS_NOTIFY_ADAPTER=webhook needs INCIDENTS_NOTIFY_WEBHOOK_URL"
                )
            secret = self.notify_webhook_secret
            if secret is None or not secret.get_secret_value():
                raise ValueError(
                    "INCIDENTS_NOTIFY_ADAPTER=webhook needs INCIDENTS_NOTIFY_WEBHOOK_SECRET"
                )
            if production and len(secret.get_secret_value()) < 32:
                raise ValueError("production needs a webhook secret of at least 32 characters")
            if production and urlsplit(self.notify_webhook_url).scheme != "https":
                raise ValueError("production needs an https INCIDENTS_NOTIFY_WEBHOOK_URL")
        if self.notify_adapter == "smtp":
            if self.notify_smtp_host is None or self.notify_smtp_sender is None:
                raise ValueError(
                    "INCIDENTS_NOTIFY_ADAPTER=smtp needs INCIDENTS_NOTIFY_SMTP_HOST and"
                    " INCIDENTS_NOTIFY_SMTP_SENDER"
                )
            if production and urlsplit(self.console_url).scheme != "https":
                raise ValueError("production needs an https INCIDENTS_CONSOLE_URL")
        if (self.notify_smtp_username is None) != (self.notify_smtp_password is None):
            raise ValueError(
                "INCIDENTS_NOTIFY_SMTP_USERNAME and INCIDENTS_NOTIFY_SMTP_PASSWORD go together"
            )
        if production and self.notify_smtp_password is not None and not self.notify_smtp_starttls:
            raise ValueError("production refuses an SMTP password without STARTTLS")
        return self


class AuditSettings(ContentKeySettings):
    """Audit: the ledger, its proofs and the auditor API."""

    ledger_origin: str = Field(
        "incidents.example/ledger",
        description="Origin line of the signed checkpoints (the log's name; also the key name).",
    )
    signing_key_file: Path = Field(
        Path.home() / ".incidents" / "audit-signing-key.pem",
        description="Ed25519 private key (PKCS#8 PEM) that signs tree heads. Created on first"
        " start outside production; production refuses to start without it.",
    )
    checkpoint_every: int = Field(
        1000, ge=1, description="Sign a new tree head after this many new entries..."
    )
    checkpoint_interval: float = Field(
        5.0, gt=0, description="...or after this many seconds, if anything new was recorded."
    )
    console_trace_url: str | None = Field(
        None,
        description="Link for a trace id on the console's timeline, with `{trace_id}` in it"
        " (a Phoenix or Jaeger trace page). Unset: the page shows the id and the"
        " `incidents traces show` command.",
    )
    witnesses: Annotated[tuple[tuple[str, str], ...], NoDecode] = Field(
        (),
        description="Witnesses that cosign each signed head (docs/witness.md): comma"
        " separated `<base URL> <witness verifier key>` pairs (INCIDENTS_WITNESSES).",
    )
    audit_db_role: str | None = Field(
        "incidents_audit",
        description="Role audit works as (SET ROLE): it may read and append the ledger,"
        " never update or delete. Empty: the login role as is (production logs in as it).",
    )

    port: int = _port("audit", 8004)

    @field_validator("witnesses", mode="before")
    @classmethod
    def _witness_pairs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        pairs = []
        for item in value.split(","):
            parts = item.split()
            if not parts:
                continue
            if len(parts) != 2 or urlsplit(parts[0]).scheme not in ("http", "https"):
                raise ValueError("each witness is `<http(s) base URL> <verifier key>`")
            pairs.append((parts[0].rstrip("/"), parts[1]))
        return tuple(pairs)


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def database_name(url: str) -> str:
    """The database a URL names."""
    return urlsplit(url).path.lstrip("/") or "postgres"
