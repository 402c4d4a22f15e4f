"""The deployment (Dockerfile, .dockerignore, deploy/) checked against the code.

No container engine or cluster runs here, so whatever can be checked without one is:
every YAML file parses; compose.yaml validates against the compose-spec JSON Schema;
every service, port, probe and `INCIDENTS_*` variable in compose and Kubernetes
matches the settings classes, and the production settings they add up to pass the
production checks; every incidents container runs the one image built from the one
Dockerfile, whose install step is CI's; each Kubernetes object has what its kind
requires, every Deployment has probes, resources and a PodDisruptionBudget, and the
network policies let only the right pods reach PostgreSQL and Kafka; each service
mounts its own event signing key and the key set, which make-secrets.sh makes in a form
services.infra.signing loads. When `kubectl`
is installed, the production overlay is rendered with its kustomize and checked too.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from pydantic import AliasChoices

from services.domain.events import Topic
from services.infra.kafka import MAX_MESSAGE_BYTES
from services.infra.settings import (
    AuditSettings,
    CommonSettings,
    EscalationSettings,
    IntakeSettings,
    TriageSettings,
)
from services.infra.signing import Signer, load_private_key, parse_key_set

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
DOCKERFILE = ROOT / "Dockerfile"

SETTINGS: dict[str, type[CommonSettings]] = {
    "intake": IntakeSettings,
    "triage": TriageSettings,
    "escalation": EscalationSettings,
    "audit": AuditSettings,
}
PORTS = {name: cls.model_fields["port"].default for name, cls in SETTINGS.items()}
JOBS = {"migrate", "topics"}
DB_CLIENTS = {*SETTINGS, "migrate"}
BROKER_CLIENTS = {*SETTINGS, "topics"}
POSTGRES_PORT = 5432
KAFKA_PORT = 9092
# Incident-keyed topics: one partition count, so an incident is one partition number.
CO_PARTITIONED = {Topic.INBOUND, Topic.REPORTS, Topic.TRIAGE, Topic.ACTIVITY, Topic.ESCALATIONS}
# Variables our containers may carry besides settings, and who reads each.
OTHER_VARIABLES = {
    "PGPASSWORD": "asyncpg (the password when the database URL has none)",
    "PGPASSWORD_FILE": "deploy/docker/entrypoint.py",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "services/infra/telemetry.py",
    "OTEL_SERVICE_NAME": "services/infra/telemetry.py",
}


def read(relative: str) -> str:
    return (ROOT / relative).read_text(encoding="utf-8")


def settings_variables() -> set[str]:
    """Every environment variable a settings class reads (prefix + field, or its alias)."""
    names: set[str] = set()
    for cls in (CommonSettings, *SETTINGS.values()):
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, info in cls.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(c.upper() for c in alias.choices if isinstance(c, str))
            elif isinstance(alias, str):
                names.add(alias.upper())
            else:
                names.add(f"{prefix}{field_name}".upper())
    return names


VARIABLES = settings_variables()


def load_entrypoint() -> ModuleType:
    path = DEPLOY / "docker" / "entrypoint.py"
    spec = importlib.util.spec_from_file_location("deploy_entrypoint", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


ENTRYPOINT = load_entrypoint()


def check_variables(names: set[str], where: str) -> None:
    """Every INCIDENTS_* name is a settings field; anything else is a known extra."""
    unknown = {n for n in names if n.startswith("INCIDENTS_")} - VARIABLES
    assert not unknown, f"{where}: not a field of any settings class: {sorted(unknown)}"
    others = {n for n in names if not n.startswith("INCIDENTS_")} - OTHER_VARIABLES.keys()
    assert not others, f"{where}: unexpected variables {sorted(others)}"


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No INCIDENTS_* variable of this process leaks into settings built by a test."""
    import os

    for name in list(os.environ):
        if name.startswith("INCIDENTS_"):
            monkeypatch.delenv(name)
    return monkeypatch


SECRET = "<from a secret>"
"""The value of a variable set from a secret; settings are built with a stand-in."""
STAND_IN = "s" * 48


def build_settings(
    cls: type[CommonSettings],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    serves: bool = True,
) -> Any:
    """The settings a container with this environment gets (production checks included)."""
    for name, value in env.items():
        if name.startswith("INCIDENTS_"):
            monkeypatch.setenv(name, STAND_IN if value == SECRET else value)
    settings = cls()
    # Production: spans go to the collector, never to files on a read-only filesystem.
    assert settings.environment == "production" and not settings.traces_local
    assert settings.kafka_idempotence
    if isinstance(settings, EscalationSettings) and serves:
        assert settings.notify_adapter != "log", "production notices reach people"
        if settings.notify_webhook_secret is not None:
            assert settings.notify_webhook_secret.get_secret_value() == STAND_IN, "a secret"
    return settings


# --- every file parses ----------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_in_deploy_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert documents, f"{path} is empty"
    assert all(isinstance(d, dict) for d in documents)


# --- the Dockerfile -------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


INSTRUCTIONS = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def instructions(keyword: str) -> list[str]:
    return [rest for kind, rest in INSTRUCTIONS if kind == keyword]


def image_user() -> int:
    user = instructions("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: use a numeric uid so Kubernetes can check it"
    return int(uid)


def pip_installs(commands: list[str]) -> list[list[str]]:
    """The `pip install` commands among shell commands, as argument lists."""
    found = []
    for command in commands:
        for part in command.split("&&"):
            words = shlex.split(part)
            if "pip" in words and "install" in words:
                found.append(words)
    return found


def makefile_installs() -> list[list[str]]:
    """The install commands of the Makefile's recipes (what `make` and so CI run)."""
    recipe = [line.strip() for line in read("Makefile").splitlines() if line.startswith("\t")]
    commands = [
        line.replace("$(BIN)/python", "python", 1)
        for line in recipe
        if line.startswith("$(BIN)/python -m pip install")
    ]
    installs = pip_installs(commands)
    assert installs, "no pip install in the Makefile"
    return installs


def test_the_image_builds_in_stages_from_python_3_11_slim() -> None:
    froms = instructions("FROM")
    assert len(froms) >= 2, "multi-stage: build and runtime"
    args = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    base = args["PYTHON_IMAGE"]
    # A tag (digests are pinned at release, see the Dockerfile) or tag@sha256:digest.
    assert re.fullmatch(r"python:3\.11-slim(@sha256:[0-9a-f]{64})?", base), base
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)
    floor = re.search(r"requires-python\s*=\s*\">=(\d+\.\d+)\"", read("pyproject.toml"))
    assert floor is not None and floor.group(1) == "3.11", "the image tests the floor CI tests"


def test_the_image_runs_as_an_unprivileged_user() -> None:
    assert image_user() != 0
    runtime = INSTRUCTIONS[max(i for i, (k, _) in enumerate(INSTRUCTIONS) if k == "FROM") :]
    assert any(k == "USER" for k, _ in runtime), "the last stage sets the user"


def test_the_image_exposes_every_service_port_and_checks_health() -> None:
    exposed = {int(p) for line in instructions("EXPOSE") for p in line.split()}
    assert exposed == set(PORTS.values())
    (healthcheck,) = instructions("HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[-3:] == ["probe", "auto", "/healthz"]


def test_the_image_runs_any_service_by_argument() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    program = json.loads(entrypoint)
    assert program == ["python", "/app/entrypoint.py"]
    assert "deploy/docker/entrypoint.py /app/entrypoint.py" in instructions("COPY")
    assert "deploy/topics.yaml /app/topics.yaml" in instructions("COPY")
    assert Path("/app/topics.yaml") == ENTRYPOINT.DEFAULT_TOPICS_FILE
    (command,) = instructions("CMD")
    assert json.loads(command)[0] in ENTRYPOINT.SERVICES


def test_the_image_installs_what_ci_installs_with_the_same_constraints() -> None:
    """CI's `pip install -c constraints.txt -e ".[dev]"`, less `-e` and the dev extra."""
    image = pip_installs(instructions("RUN"))
    for ci in makefile_installs():
        expected = [re.sub(r"\[[^]]*\]$", "", word) for word in ci if word != "-e"]
        assert expected in image, f"the Dockerfile lacks CI's install {shlex.join(ci)}"
    constraints = {w[w.index("-c") + 1] for w in makefile_installs() if "-c" in w}
    assert constraints == {"constraints.txt"}
    for words in image:
        if words[-1] != "pip":  # every install of packages, not pip's own upgrade
            assert words[words.index("-c") + 1] == "constraints.txt", shlex.join(words)
    copied = " ".join(instructions("COPY"))
    assert "constraints.txt" in copied and "pyproject.toml" in copied


def constraint_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def test_the_trace_exporter_fits_the_pinned_opentelemetry() -> None:
    constraints = constraint_pins(read("constraints.txt"))
    extra = constraint_pins(read("deploy/docker/requirements-otlp.txt"))
    sdk = constraints["opentelemetry-sdk"]
    assert extra["opentelemetry-exporter-otlp-proto-http"] == sdk
    clashes = {n: (v, constraints[n]) for n, v in extra.items() if constraints.get(n, v) != v}
    assert not clashes, f"pinned differently in constraints.txt: {clashes}"


def test_the_image_sets_only_settings_variables() -> None:
    names = set()
    for line in instructions("ENV"):
        names.update(m.group(1) for m in re.finditer(r"(\w+)=", line))
    incidents = {n for n in names if n.startswith("INCIDENTS_")}
    assert incidents and incidents <= VARIABLES


def test_every_other_variable_is_read_by_someone() -> None:
    sources = read("services/infra/telemetry.py") + read("deploy/docker/entrypoint.py")
    for name, reader in OTHER_VARIABLES.items():
        if name != "PGPASSWORD":
            assert name in sources, f"{name}: {reader} does not read it"
    asyncpg_connect = Path(importlib.util.find_spec("asyncpg").origin).parent  # type: ignore[arg-type, union-attr]
    assert "PGPASSWORD" in (asyncpg_connect / "connect_utils.py").read_text(encoding="utf-8")


# --- .dockerignore --------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    patterns = [
        line.strip()
        for line in read(".dockerignore").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_secrets() -> None:
    for line in instructions("COPY"):
        if line.startswith("--from"):
            continue
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert not ignored(source), f".dockerignore excludes {source}"
    assert not ignored("services/intake/app.py")
    for path in (
        "deploy/secrets/db_audit_password",
        "deploy/secrets/audit-signing-key.pem",
        ".git/HEAD",
        ".venv/bin/python",
        "tests/unit/test_deploy.py",
        "services/intake/__pycache__/app.cpython-311.pyc",
        ".run/20260101T000000Z/intake.log",
    ):
        assert ignored(path), f".dockerignore lets {path} into the image"


# --- the entry point ------------------------------------------------------------------


def test_the_entry_point_runs_each_service_module() -> None:
    assert set(ENTRYPOINT.SERVICES) == set(SETTINGS)
    for name, module in ENTRYPOINT.SERVICES.items():
        assert module == f"services.{name}"
        assert importlib.util.find_spec(f"{module}.__main__") is not None
        assert ENTRYPOINT.service_migrations(name).is_dir()


def test_the_entry_point_finds_each_port_in_the_settings() -> None:
    for name, port in PORTS.items():
        assert ENTRYPOINT.service_port(name, {}) == port
        variable = ENTRYPOINT.port_variable(name)
        assert variable in VARIABLES
        assert ENTRYPOINT.service_port(name, {variable: "9999"}) == 9999


def test_the_entry_point_refuses_what_it_does_not_know() -> None:
    assert ENTRYPOINT.main([]) == 2
    assert ENTRYPOINT.main(["bogus"]) == 2
    assert ENTRYPOINT.main(["wait", "bogus"]) == 2
    assert ENTRYPOINT.probe("bogus", "/healthz") == 2


def test_the_probe_finds_the_service_running_in_the_container(tmp_path: Path) -> None:
    for pid, argv in (("1", [b"/sbin/docker-init", b"--"]), ("7", [b"python", b"-m"])):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    (tmp_path / "self").mkdir()
    assert ENTRYPOINT.running_service(tmp_path) is None
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "cmdline").write_bytes(b"python\0-m\0services.audit\0")
    assert ENTRYPOINT.running_service(tmp_path) == "audit"


@pytest.fixture
def health_server(clean_environ: pytest.MonkeyPatch) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    clean_environ.setenv("INCIDENTS_TRIAGE_PORT", str(server.server_address[1]))
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def test_the_probe_asks_the_service_port_for_the_path(health_server: int) -> None:
    assert ENTRYPOINT.probe("triage", "/healthz") == 0
    assert ENTRYPOINT.probe("triage", "/readyz") == 1  # 503: not ready


# --- topics ---------------------------------------------------------------------------


TOPICS = ENTRYPOINT.load_topics(DEPLOY / "topics.yaml")


def test_every_catalog_topic_is_declared_once(tmp_path: Path) -> None:
    assert sorted(s.name for s in TOPICS) == sorted(t.value for t in Topic)
    partial = yaml.safe_load(read("deploy/topics.yaml"))
    del partial["topics"][Topic.CHECKPOINTS.value]
    (tmp_path / "topics.yaml").write_text(yaml.safe_dump(partial))
    with pytest.raises(ValueError, match=r"audit\.checkpoints"):
        ENTRYPOINT.load_topics(tmp_path / "topics.yaml")


def test_topics_are_durable_and_keep_their_history() -> None:
    for spec in TOPICS:
        assert spec.replication_factor == 3, spec.name
        assert int(spec.config["min.insync.replicas"]) == 2, spec.name
        if spec.name == Topic.INBOUND.value:  # plaintext reports: short-lived, not ledgered
            assert 0 < int(spec.config["retention.ms"]) <= 7 * 86_400_000, spec.name
        else:
            assert spec.config["retention.ms"] == "-1", f"{spec.name}: the ledger reads it"
        assert spec.config["cleanup.policy"] == "delete", f"{spec.name}: compaction loses history"
        assert spec.config["unclean.leader.election.enable"] == "false"


def test_incident_topics_are_co_partitioned() -> None:
    counts = {s.partitions for s in TOPICS if s.name in {t.value for t in CO_PARTITIONED}}
    assert len(counts) == 1, counts


def test_the_dead_letter_topic_takes_what_the_producer_may_send() -> None:
    (deadletter,) = [s for s in TOPICS if s.name == Topic.DEADLETTER.value]
    assert int(deadletter.config["max.message.bytes"]) >= MAX_MESSAGE_BYTES


# --- PostgreSQL roles -----------------------------------------------------------------


ROLES_SQL = read("deploy/postgres/roles.sql")


def login_roles() -> dict[str, str]:
    """Role -> the psql variable of its password, from roles.sql's VALUES list."""
    return dict(re.findall(r"\('(incidents_\w+)', :'(\w+)'\)", ROLES_SQL))


def test_each_service_has_its_own_role_and_schema() -> None:
    roles = login_roles()
    assert set(roles) == {"incidents_migrator", *(f"incidents_{s}" for s in SETTINGS)}
    for service in SETTINGS:
        assert re.search(
            rf"CREATE SCHEMA IF NOT EXISTS {service} AUTHORIZATION incidents_migrator;", ROLES_SQL
        ), service


def test_the_audit_login_is_the_role_its_migration_restricts() -> None:
    audit_role = AuditSettings.model_fields["audit_db_role"].default
    assert audit_role in login_roles()
    migration = read("services/audit/migrations/0002_tree_and_heads.sql")
    assert f"CREATE ROLE {audit_role} NOLOGIN" in migration
    grants = [g for g in re.findall(r"GRANT[^;]*;", ROLES_SQL) if audit_role in g]
    for grant in grants:
        assert not re.search(r"\b(UPDATE|DELETE|TRUNCATE|ALL)\b", grant), grant
    assert f"GRANT {audit_role} TO incidents_migrator WITH ADMIN OPTION" in ROLES_SQL


def test_the_init_script_feeds_every_password_roles_sql_needs() -> None:
    script = read("deploy/postgres/initdb.sh")
    (names,) = re.findall(r"for role in ([\w ]+); do", script)[:1]
    fed = {f"{n}_password" for n in names.split()}
    assert fed == set(login_roles().values())
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert {f"db_{n}" for n in fed} <= set(compose["secrets"])


# --- compose --------------------------------------------------------------------------


COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
COMPOSE_SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = {n: s for n, s in COMPOSE_SERVICES.items() if "build" in s}
BROKERS = {
    n: s
    for n, s in COMPOSE_SERVICES.items()
    if s["image"].startswith("apache/kafka:") and n != "acls"  # acls: a job with its tools
}


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value
    return values


def secret_env_file(path: Path) -> dict[str, str]:
    """An uncommitted env file of secrets, as its committed `.example` names them."""
    example = path.with_name(path.name + ".example")
    assert example.exists(), f"{path} is described by no {example.name}"
    values = env_file(example)
    assert all(v == "" for v in values.values()), f"{example} holds values"
    return {k: SECRET for k in values}


def compose_env(name: str) -> dict[str, str]:
    """A compose service's variables (those of uncommitted secret files: SECRET)."""
    service = COMPOSE_SERVICES[name]
    env: dict[str, str] = {}
    for path in service.get("env_file", []):
        path = DEPLOY / path
        secret = path.parent == DEPLOY / "secrets"
        env.update(secret_env_file(path) if secret else env_file(path))
    for key, value in (service.get("environment") or {}).items():
        env[key] = "" if value is None else str(value)
    return env


def test_compose_validates_against_the_compose_spec_schema() -> None:
    if not COMPOSE_SCHEMA.exists():
        pytest.skip("tests/data/compose-spec.json (the compose-spec JSON Schema) is missing")
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(COMPOSE)]
    assert not errors, "\n".join(errors)
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["intake"]["helthcheck"] = {}
    assert not validator.is_valid(broken), "the schema catches a misspelt key"


def test_compose_runs_the_services_and_jobs_from_the_one_dockerfile() -> None:
    assert set(OURS) == set(SETTINGS) | JOBS
    images = {s["image"] for s in OURS.values()}
    assert len(images) == 1, images
    for name, service in OURS.items():
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT, name
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert service["command"] == [name], name
    others = {n: s["image"] for n, s in COMPOSE_SERVICES.items() if n not in OURS}
    for name, image in others.items():
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"


def test_compose_ports_and_health_checks_are_the_settings() -> None:
    for name, port in PORTS.items():
        service = COMPOSE_SERVICES[name]
        env = compose_env(name)
        assert env.get(ENTRYPOINT.port_variable(name), str(port)) == str(port)
        published = {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
        exposed = {int(p) for p in service.get("expose", [])}
        assert published | exposed == {port}, name
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/app/entrypoint.py"]
        assert test[3:5] == ["probe", name] and test[5] in ("/healthz", "/readyz"), test


def test_compose_variables_are_settings_and_production_passes(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    for name in OURS:
        env = compose_env(name)
        check_variables(set(env), f"compose service {name}")
        assert env["INCIDENTS_ENVIRONMENT"] == "production"
        assert env["INCIDENTS_KAFKA_IDEMPOTENCE"] == "true"
    for name, cls in {**SETTINGS, "migrate": CommonSettings}.items():
        with pytest.MonkeyPatch.context() as patch:
            build_settings(cls, compose_env(name), patch)


def test_compose_gives_each_service_its_own_database_login(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    roles = login_roles()
    for name in DB_CLIENTS:
        env = compose_env(name)
        url = urlsplit(env["INCIDENTS_DATABASE_URL"])
        assert url.username == f"incidents_{name.replace('migrate', 'migrator')}"
        assert url.username in roles
        assert url.password is None, f"{name}: the password is a secret, not in the URL"
        secret = env["PGPASSWORD_FILE"].removeprefix("/run/secrets/")
        assert secret in COMPOSE_SERVICES[name]["secrets"]
        assert secret == f"db_{roles[url.username].removesuffix('_password')}_password"
    assert "INCIDENTS_DATABASE_URL" not in compose_env("topics")
    # the topics job creates topics as the Kafka admin: its certificate, no database
    assert set(COMPOSE_SERVICES["topics"]["secrets"]) == {
        "kafka_ca",
        "kafka_admin_cert",
        "kafka_admin_key",
    }
    audit = compose_env("audit")
    assert audit["INCIDENTS_AUDIT_DB_ROLE"] == "", "production logs in as the audit role"
    key = audit["INCIDENTS_SIGNING_KEY_FILE"].removeprefix("/run/secrets/")
    assert key in COMPOSE_SERVICES["audit"]["secrets"]


def assert_git_ignores(path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return  # not a git checkout: nothing could be committed
    check = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", str(path)], check=False
    )
    assert check.returncode == 0, f"git would commit {path}"


def test_compose_secrets_are_files_git_ignores() -> None:
    for name, secret in COMPOSE["secrets"].items():
        path = (DEPLOY / secret["file"]).resolve()
        assert path.parent == DEPLOY / "secrets", name
        assert_git_ignores(path)
    for service in COMPOSE_SERVICES.values():
        for path in service.get("env_file", []):
            if (DEPLOY / path).parent == DEPLOY / "secrets":
                assert_git_ignores(DEPLOY / path)
    assert_git_ignores(DEPLOY / "secrets" / "anything-new")
    for name, value in env_file(DEPLOY / "env" / "production.env").items():
        if re.search(r"PASSWORD|SECRET|_KEY\b", name):
            pytest.fail(f"production.env holds a secret: {name}")
        if "://" in value:
            assert urlsplit(value).password is None, f"production.env: a password in {name}"


EVENT_KEY_SECRET = re.compile(r"event_key_(\w+)")
"""The compose secret of a service's event signing key (`event_key_<service>`)."""


def test_compose_gives_each_service_its_own_event_key_and_the_key_set() -> None:
    secrets = COMPOSE["secrets"]
    assert secrets["event_keys"]["file"] == "./secrets/event-keys.yaml"
    for name, service in OURS.items():
        env = compose_env(name)
        mine = {s for s in service.get("secrets", []) if EVENT_KEY_SECRET.fullmatch(str(s))}
        if name in JOBS:  # they publish nothing: no key
            assert not mine and "INCIDENTS_EVENT_SIGNING_KEY" not in env, name
            continue
        assert mine == {f"event_key_{name}"}, f"{name} mounts its own event key, no other"
        assert secrets[f"event_key_{name}"]["file"] == f"./secrets/event-key-{name}.pem"
        assert env["INCIDENTS_EVENT_SIGNING_KEY"] == f"/run/secrets/event_key_{name}"
        assert env["INCIDENTS_EVENT_KEYS_FILE"] == "/run/secrets/event_keys"
        assert "event_keys" in service["secrets"], name
    others = {n for n in COMPOSE_SERVICES if n not in OURS}
    for name in others:
        mounted = {
            str(s if isinstance(s, str) else s["source"])
            for s in COMPOSE_SERVICES[name].get("secrets", [])
        }
        assert not {m for m in mounted if m.startswith("event_key")}, name


def test_make_secrets_makes_every_compose_secret_and_a_key_set_that_loads(
    tmp_path: Path,
) -> None:
    """make-secrets.sh, run in a copy of deploy/: every file compose mounts, and event
    keys that services.infra.signing loads, each listed for its service in the key set;
    run again, it changes nothing; with one key replaced, the set holds both."""
    bash, openssl = shutil.which("bash"), shutil.which("openssl")
    if bash is None or openssl is None:
        pytest.skip("bash and openssl are needed to run deploy/make-secrets.sh")
    shutil.copy(DEPLOY / "make-secrets.sh", tmp_path / "make-secrets.sh")
    folder = tmp_path / "secrets"
    folder.mkdir()

    def run() -> None:
        answer = subprocess.run(
            [bash, str(tmp_path / "make-secrets.sh")],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert answer.returncode == 0, answer.stderr

    def key_ids() -> dict[str, str]:
        """Service -> the id of the key its file holds (signing.py's derivation)."""
        return {
            service: Signer(service, load_private_key(folder / f"event-key-{service}.pem")).key_id
            for service in SETTINGS
        }

    run()
    for name, secret in COMPOSE["secrets"].items():
        assert (DEPLOY / secret["file"]).resolve().parent == DEPLOY / "secrets", name
        assert (folder / Path(secret["file"]).name).is_file(), f"make-secrets.sh makes {name}"
    assert folder.stat().st_mode & 0o077 == 0, "the folder is the owner's alone"
    key_set_text = (folder / "event-keys.yaml").read_text(encoding="utf-8")
    keys = parse_key_set(key_set_text)
    ids = key_ids()
    assert set(keys.entries) == set(ids.values())
    for service, kid in ids.items():
        entry = keys.entries[kid]
        assert entry.service == service and not entry.revoked
    run()
    assert (folder / "event-keys.yaml").read_text(encoding="utf-8") == key_set_text
    # Rotation: intake's key moved away, a new one made and added beside the old one.
    (folder / "event-key-intake.pem").rename(tmp_path / "old-intake.pem")
    run()
    rotated = parse_key_set((folder / "event-keys.yaml").read_text(encoding="utf-8"))
    new_ids = key_ids()
    assert new_ids["intake"] != ids["intake"]
    assert set(rotated.entries) == set(ids.values()) | {new_ids["intake"]}


def test_compose_runs_kafka_in_kraft_mode_with_three_replicas() -> None:
    assert len(BROKERS) == 3
    node_ids = {}
    for name, broker in BROKERS.items():
        env = broker["environment"]
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        node_ids[str(env["KAFKA_NODE_ID"])] = name
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"SSL://{name}:{KAFKA_PORT}"
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3
        assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"
        assert "healthcheck" in broker
    for broker in BROKERS.values():
        voters = broker["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert {v.split("@")[0]: v.split("@")[1].split(":")[0] for v in voters} == node_ids
    bootstrap = compose_env("intake")["INCIDENTS_KAFKA_BOOTSTRAP"].split(",")
    assert sorted(bootstrap) == sorted(f"{n}:{KAFKA_PORT}" for n in BROKERS)
    assert int(compose_env("intake")["INCIDENTS_KAFKA_REPLICATION"]) == len(BROKERS)
    assert {s.replication_factor for s in TOPICS} == {len(BROKERS)}


def test_compose_starts_things_in_order() -> None:
    def needs(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in COMPOSE_SERVICES[name]["depends_on"].items()}

    for name in SETTINGS:
        assert needs(name)["topics"] == "service_completed_successfully"
        assert needs(name)["migrate"] == "service_completed_successfully"
        assert needs(name)["acls"] == "service_completed_successfully"
    assert needs("topics") == {n: "service_healthy" for n in BROKERS}
    assert needs("acls") == {n: "service_healthy" for n in BROKERS}
    assert needs("migrate") == {"postgres": "service_healthy"}
    for name in JOBS:
        assert COMPOSE_SERVICES[name]["restart"] == "no"


def test_compose_postgres_creates_the_roles_once() -> None:
    postgres = COMPOSE_SERVICES["postgres"]
    assert postgres["image"].startswith("postgres:") and "healthcheck" in postgres
    mounts = {v.split(":")[0]: v.split(":")[1] for v in postgres["volumes"] if v.startswith("./")}
    assert mounts["./postgres/initdb.sh"].startswith("/docker-entrypoint-initdb.d/")
    assert mounts["./postgres/roles.sql"] == "/opt/incidents/roles.sql"
    for source in mounts:
        assert (DEPLOY / source).exists(), source
    assert "/opt/incidents/roles.sql" in read("deploy/postgres/initdb.sh")


def test_compose_sends_traces_through_the_collector_to_jaeger() -> None:
    endpoint = urlsplit(compose_env("intake")["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname in COMPOSE_SERVICES
    collector = yaml.safe_load(read("deploy/otel/collector.yaml"))
    receiver = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert int(receiver.rsplit(":", 1)[1]) == endpoint.port
    for exporter in collector["exporters"].values():
        assert exporter["endpoint"].split(":")[0] in COMPOSE_SERVICES
    for name in SETTINGS:
        assert compose_env(name)["OTEL_SERVICE_NAME"] == name


# --- Kubernetes -----------------------------------------------------------------------


# What each kind we use must have (the API's required fields, and what we rely on).
REQUIRED: dict[tuple[str, str], list[str]] = {
    ("v1", "Namespace"): ["metadata.name"],
    ("v1", "ServiceAccount"): ["metadata.name"],
    ("v1", "ConfigMap"): ["metadata.name", "data"],
    ("v1", "Secret"): ["metadata.name", "type"],
    ("v1", "Service"): ["metadata.name", "spec.selector", "spec.ports"],
    ("apps/v1", "Deployment"): [
        "metadata.name",
        "spec.selector.matchLabels",
        "spec.template.metadata.labels",
        "spec.template.spec.containers",
    ],
    ("batch/v1", "Job"): [
        "metadata.name",
        "spec.template.spec.containers",
        "spec.template.spec.restartPolicy",
    ],
    ("policy/v1", "PodDisruptionBudget"): ["metadata.name", "spec.selector"],
    ("networking.k8s.io/v1", "NetworkPolicy"): ["metadata.name", "spec.podSelector"],
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): [],
}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def dig(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def k8s_documents(paths: list[Path]) -> list[dict[str, Any]]:
    return [d for p in paths for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]


def base_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return k8s_documents([K8S / "base" / r for r in kustomization["resources"]])


def rendered_production() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its kustomize) is not installed: the overlay is not rendered")
    answer = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / "production")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr
    return [d for d in yaml.safe_load_all(answer.stdout) if d]


@pytest.fixture(params=["base", "production"])
def manifests(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The objects of the base as written, and of the production overlay as rendered."""
    return base_objects() if request.param == "base" else rendered_production()


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def pod_templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Workload name (service or job) -> its pod template."""
    pods = {n: d["spec"]["template"] for n, d in of_kind(objects, "Deployment").items()}
    for job in of_kind(objects, "Job").values():
        pods[job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]] = job["spec"][
            "template"
        ]
    return pods


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def container_env(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """Variable -> value (SECRET where it comes from a Secret)."""
    config_maps = of_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        value_from = item.get("valueFrom", {})
        if "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            env[item["name"]] = config_maps[ref["name"]]["data"][ref["key"]]
        elif "secretKeyRef" in value_from:
            env[item["name"]] = SECRET
        else:
            env[item["name"]] = str(item.get("value", ""))
    return env


def complete_object_files() -> list[Path]:
    """Files of whole objects: the base, the Secret template, the kustomizations (the
    overlay's patches are partial objects, checked against the base they patch)."""
    return sorted(
        {*(K8S / "base").glob("*.yaml"), K8S / "secrets.template.yaml"}
        | set(K8S.rglob("kustomization.yaml"))
    )


@pytest.mark.parametrize("path", complete_object_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_k8s_objects_have_what_their_kind_requires(path: Path) -> None:
    for obj in k8s_documents([path]):
        key = (obj.get("apiVersion"), obj.get("kind"))
        assert key in REQUIRED, f"{path}: {key} is not a kind this deployment knows"
        for field in REQUIRED[key]:
            value = dig(obj, field)
            assert value is not None and value != [], f"{path}: {key[1]} lacks {field}"
        name = dig(obj, "metadata.name")
        if name is not None:
            assert DNS_LABEL.fullmatch(name), f"{path}: bad name {name!r}"
        kind = obj["kind"]
        if kind == "Deployment":
            spec = obj["spec"]
            assert selects(spec["selector"], spec["template"]["metadata"]["labels"])
        if kind == "Job":
            assert obj["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
        if kind == "PodDisruptionBudget":
            assert ("minAvailable" in obj["spec"]) != ("maxUnavailable" in obj["spec"])
        if kind == "NetworkPolicy":
            assert set(obj["spec"].get("policyTypes", [])) <= {"Ingress", "Egress"}
        for template in [dig(obj, "spec.template")] if kind in ("Deployment", "Job") else []:
            for container in containers(template):
                assert container.get("name") and container.get("image"), path


def test_kustomizations_name_files_and_objects_that_exist() -> None:
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    listed = {K8S / "base" / r for r in base["resources"]}
    on_disk = set((K8S / "base").glob("*.yaml")) - {K8S / "base" / "kustomization.yaml"}
    assert listed == on_disk, "every base file is a resource, and every resource a file"
    names = {(o["kind"], o["metadata"]["name"]) for o in base_objects()}
    overlay_dir = K8S / "overlays" / "production"
    overlay = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    for resource in overlay["resources"]:
        assert (overlay_dir / resource / "kustomization.yaml").exists(), resource
    for patch in overlay["patches"]:
        for obj in k8s_documents([overlay_dir / patch["path"]]):
            assert (obj["apiVersion"], obj["kind"]) in REQUIRED, patch
            assert (obj["kind"], obj["metadata"]["name"]) in names, patch
    for replicas in overlay["replicas"]:
        assert ("Deployment", replicas["name"]) in names
    for image in (*base["images"], *overlay["images"]):
        assert image["name"] == "incidents"
    for kustomization in (base, overlay):
        for listed_path in [
            *kustomization["resources"],
            *(p["path"] for p in kustomization.get("patches", [])),
        ]:
            assert "secrets.template" not in listed_path, "the Secret template is never applied"


def test_k8s_runs_each_service_with_probes_resources_and_a_pdb(
    manifests: list[dict[str, Any]],
) -> None:
    deployments = of_kind(manifests, "Deployment")
    assert set(deployments) == set(SETTINGS)
    pdbs = of_kind(manifests, "PodDisruptionBudget")
    services = of_kind(manifests, "Service")
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        (main,) = [c for c in template["spec"]["containers"] if c["name"] == name]
        assert main["args"] == [name]
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert ports == {"http": PORTS[name]}, name
        probes = {k: main[k]["httpGet"] for k in ("readinessProbe", "livenessProbe")}
        assert probes["readinessProbe"]["path"] == "/readyz"
        assert probes["livenessProbe"]["path"] == "/healthz"
        assert main["startupProbe"]["httpGet"]["path"] == "/healthz"
        for probe in (*probes.values(), main["startupProbe"]["httpGet"]):
            assert ports.get(probe["port"], probe["port"]) == PORTS[name]
        env = container_env(main, manifests)
        assert env.get(ENTRYPOINT.port_variable(name), str(PORTS[name])) == str(PORTS[name])
        covering = [
            p
            for p in pdbs.values()
            if selects(p["spec"]["selector"], template["metadata"]["labels"])
        ]
        assert len(covering) == 1, f"{name}: one PodDisruptionBudget"
        service = services[name]
        assert selects({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])
        (port,) = service["spec"]["ports"]
        assert port["port"] == PORTS[name] and port["targetPort"] in ("http", PORTS[name])
        waits = [c for c in template["spec"].get("initContainers", []) if c["name"] == "wait"]
        assert waits and waits[0]["args"] == ["wait", name]


def test_k8s_containers_have_resources_and_run_unprivileged(
    manifests: list[dict[str, Any]],
) -> None:
    uid = image_user()
    for name, template in pod_templates(manifests).items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid, "the Dockerfile's USER"
        assert pod["automountServiceAccountToken"] is False
        for container in containers(template):
            resources = container["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{name}: {part}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]


def test_k8s_runs_one_image_everywhere(manifests: list[dict[str, Any]]) -> None:
    images = {c["image"] for t in pod_templates(manifests).values() for c in containers(t)}
    assert len(images) == 1, images
    (image,) = images
    assert image.split("/")[-1].split(":")[0].split("@")[0] == "incidents"
    jobs = {
        j["spec"]["template"]["spec"]["containers"][0]["args"][0]
        for j in of_kind(manifests, "Job").values()
    }
    assert jobs == JOBS


def test_k8s_variables_are_settings_and_production_passes(
    manifests: list[dict[str, Any]], clean_environ: pytest.MonkeyPatch
) -> None:
    roles = login_roles()
    for name, template in pod_templates(manifests).items():
        for container in containers(template):
            env = container_env(container, manifests)
            check_variables(set(env), f"k8s {name}/{container['name']}")
            if name in DB_CLIENTS:
                url = urlsplit(env["INCIDENTS_DATABASE_URL"] or "")
                assert url.username in roles and url.password is None, name
                assert url.username == f"incidents_{name.replace('migrate', 'migrator')}"
                assert "PGPASSWORD" in env
            else:
                assert "INCIDENTS_DATABASE_URL" not in env and "PGPASSWORD" not in env
            cls = SETTINGS.get(name, CommonSettings)
            if name == "topics":
                continue  # reads the broker settings only (entrypoint.py)
            with pytest.MonkeyPatch.context() as patch:
                main = container in template["spec"]["containers"]
                build_settings(cls, env, patch, serves=main)
    audit = pod_templates(manifests)["audit"]["spec"]["containers"][0]
    assert container_env(audit, manifests)["INCIDENTS_AUDIT_DB_ROLE"] == ""


def test_k8s_secrets_come_from_the_template_which_has_no_values(
    manifests: list[dict[str, Any]],
) -> None:
    template = of_kind(k8s_documents([K8S / "secrets.template.yaml"]), "Secret")
    for secret in template.values():
        assert all(v == "" for v in secret["stringData"].values()), "a template has no values"
    assert not of_kind(manifests, "Secret"), "Secrets are created apart from the manifests"
    used: set[tuple[str, str]] = set()
    for template_ in pod_templates(manifests).values():
        for container in containers(template_):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add((ref["name"], ref["key"]))
        for volume in template_["spec"].get("volumes", []):
            if "secret" in volume:
                for item in volume["secret"]["items"]:
                    used.add((volume["secret"]["secretName"], item["key"]))
    available = {(n, k) for n, s in template.items() for k in s["stringData"]}
    assert used == available, f"used {sorted(used)}, templated {sorted(available)}"
    audit = pod_templates(manifests)["audit"]
    key_file = container_env(audit["spec"]["containers"][0], manifests)[
        "INCIDENTS_SIGNING_KEY_FILE"
    ]
    mounts = {m["mountPath"] for m in audit["spec"]["containers"][0]["volumeMounts"]}
    assert str(Path(key_file or "").parent) in mounts


def mounted_secret(template: dict[str, Any], container: dict[str, Any], path: str) -> str | None:
    """The Secret mounted in the container at the folder of `path`, if any."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] == str(Path(path).parent):
            secret = volumes[mount["name"]].get("secret", {})
            items = {i["path"]: i["key"] for i in secret.get("items", [])}
            assert Path(path).name in items, f"{path} is not an item of its volume"
            return str(secret.get("secretName"))
    return None


def test_k8s_gives_each_service_its_own_event_key_and_the_key_set(
    manifests: list[dict[str, Any]],
) -> None:
    template = of_kind(k8s_documents([K8S / "secrets.template.yaml"]), "Secret")
    assert set(template["incidents-event-keys"]["stringData"]) == {"keys.yaml"}
    for name, pod in pod_templates(manifests).items():
        names = {v["secret"]["secretName"] for v in pod["spec"].get("volumes", []) if "secret" in v}
        event_keys = {n for n in names if n.startswith("incidents-event-key-")}
        if name in JOBS:
            assert not event_keys, f"the {name} job publishes nothing: no event key"
            continue
        assert event_keys == {f"incidents-event-key-{name}"}, f"{name}: its own key, no other"
        (main,) = [c for c in pod["spec"]["containers"] if c["name"] == name]
        env = container_env(main, manifests)
        key, keys = env["INCIDENTS_EVENT_SIGNING_KEY"], env["INCIDENTS_EVENT_KEYS_FILE"]
        assert mounted_secret(pod, main, key) == f"incidents-event-key-{name}"
        assert mounted_secret(pod, main, keys) == "incidents-event-keys"
        assert set(template[f"incidents-event-key-{name}"]["stringData"]) == {Path(key).name}


def reachable_ports(policies: dict[str, dict[str, Any]], labels: dict[str, str]) -> set[int | str]:
    """Egress ports the network policies allow a pod with these labels."""
    ports: set[int | str] = set()
    for policy in policies.values():
        spec = policy["spec"]
        if "Egress" in spec.get("policyTypes", []) and selects(spec["podSelector"], labels):
            for rule in spec.get("egress", []):
                ports.update(p["port"] for p in rule.get("ports", []))
    return ports


def test_k8s_network_policies_let_only_the_right_pods_reach_the_database_and_broker(
    manifests: list[dict[str, Any]],
) -> None:
    policies = of_kind(manifests, "NetworkPolicy")
    deny = [
        p
        for p in policies.values()
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "a default-deny policy"
    pods = pod_templates(manifests)
    assert set(pods) == set(SETTINGS) | JOBS
    database = {
        n
        for n, t in pods.items()
        if POSTGRES_PORT in reachable_ports(policies, t["metadata"]["labels"])
    }
    broker = {
        n
        for n, t in pods.items()
        if KAFKA_PORT in reachable_ports(policies, t["metadata"]["labels"])
    }
    assert database == DB_CLIENTS
    assert broker == BROKER_CLIENTS


# --- the README -----------------------------------------------------------------------


METRIC = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"(incidents_\w+)\"")


def metric_names() -> set[str]:
    """The metrics the four services serve on /metrics (counters with their `_total`)."""
    names = set()
    for package in ("infra", *SETTINGS):
        for path in (ROOT / "services" / package).rglob("*.py"):
            for kind, name in METRIC.findall(path.read_text(encoding="utf-8")):
                total = kind == "Counter" and not name.endswith("_total")
                names.add(name + "_total" if total else name)
    return names


def test_the_deploy_readme_says_what_to_monitor_and_how_topics_are_made() -> None:
    readme = read("deploy/README.md")
    metrics = metric_names()
    assert len(metrics) >= 10
    missing = sorted(m for m in metrics if m not in readme)
    assert not missing, f"deploy/README.md does not mention {missing}"
    mentioned = set(
        re.findall(r"incidents_[a-z_]+_(?:total|seconds|records|events|deadlines)\b", readme)
    )
    assert mentioned <= metrics, f"not exposed by the code: {sorted(mentioned - metrics)}"
    for topic in Topic:
        assert topic.value in readme, topic
    (partitions,) = {s.partitions for s in TOPICS if s.name in {t.value for t in CO_PARTITIONED}}
    assert f"{partitions} partitions" in readme
