"""The image's entry point: one image runs every service and every one-shot job.

The container's arguments say what to run:

    intake | triage | escalation | audit   the service: exec `python -m services.<name>`
    migrate                                apply every service's migrations (as the owner role)
    topics [FILE]                          create the catalog topics FILE declares
                                           (default /app/topics.yaml, from deploy/topics.yaml)
    wait SERVICE                           return once every catalog topic exists and SERVICE's
                                           migrations are applied (a Kubernetes init container)
    probe SERVICE|auto PATH                GET http://127.0.0.1:<port>PATH; exit 0 on 200. The
                                           port is SERVICE's setting (INCIDENTS_<NAME>_PORT or
                                           its default); `auto` finds the service running here

Every command reads the same `INCIDENTS_*` settings as the services, so a job refuses
to run with a configuration a service would refuse. `PGPASSWORD_FILE`, when set, is
read into `PGPASSWORD` first: asyncpg takes the password from there when the database
URL has none, so the password comes from a docker secret or a mounted Kubernetes
Secret and the URL stays free of it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICES = {
    "intake": "services.intake",
    "triage": "services.triage",
    "escalation": "services.escalation",
    "audit": "services.audit",
}
"""Each service and the module `python -m` runs for it."""

JOBS = ("migrate", "topics", "wait", "probe")
DEFAULT_TOPICS_FILE = Path("/app/topics.yaml")
WAIT_TIMEOUT = 600.0
USAGE = (
    "usage: entrypoint.py intake|triage|escalation|audit | migrate | topics [FILE]"
    " | wait SERVICE | probe SERVICE|auto PATH"
)


def settings_class(service: str) -> Any:
    """The settings class of a service (imported late: `probe` should stay light)."""
    from services.infra import settings

    return {
        "intake": settings.IntakeSettings,
        "triage": settings.TriageSettings,
        "escalation": settings.EscalationSettings,
        "audit": settings.AuditSettings,
    }[service]


def port_variable(service: str) -> str:
    """The variable that sets a service's HTTP port."""
    return f"INCIDENTS_{service.upper()}_PORT"


def service_port(service: str, environ: dict[str, str] | None = None) -> int:
    """The HTTP port a service listens on: its variable, else its settings default."""
    environ = dict(os.environ) if environ is None else environ
    value = environ.get(port_variable(service))
    if value:
        return int(value)
    default: int = settings_class(service).model_fields["port"].default
    return default


def load_password_file() -> None:
    """`PGPASSWORD_FILE` -> `PGPASSWORD` (docker secrets and Secret volumes are files)."""
    path = os.environ.get("PGPASSWORD_FILE")
    if path:
        os.environ["PGPASSWORD"] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")


# --- topics -------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    """One topic as deploy/topics.yaml declares it."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def load_topics(path: Path) -> list[TopicSpec]:
    """The topics a file declares; every catalog topic exactly once, nothing else."""
    import yaml

    from services.domain.events import Topic

    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    defaults = document.get("defaults", {})
    specs = []
    for name, spec in document["topics"].items():
        spec = spec or {}
        config = {**defaults.get("config", {}), **spec.get("config", {})}
        specs.append(
            TopicSpec(
                name=name,
                partitions=int(spec.get("partitions", defaults.get("partitions", 1))),
                replication_factor=int(
                    spec.get("replication_factor", defaults.get("replication_factor", 1))
                ),
                config={k: str(v) for k, v in config.items()},
            )
        )
    declared = [s.name for s in specs]
    catalog = {t.value for t in Topic}
    if sorted(declared) != sorted(catalog):
        missing = sorted(catalog - set(declared))
        unknown = sorted(set(declared) - catalog)
        raise ValueError(f"{path}: topics missing {missing}, not in the catalog {unknown}")
    return specs


async def _admin(settings: Any) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=30000
        )
        try:
            await admin.start()
            return admin
        except Exception as exc:
            await admin.close()
            if time.monotonic() > deadline:
                raise
            print(f"topics: broker not reachable yet ({exc!r}); retrying", file=sys.stderr)
            await asyncio.sleep(2)


async def create_topics(path: Path) -> int:
    """Create the declared topics that do not exist; report those that differ."""
    from aiokafka import errors
    from aiokafka.admin import NewTopic

    from services.infra.settings import CommonSettings

    # Only the broker settings matter here. The production checks concern a database
    # URL and authentication, which this job has no use for (it gets no database
    # credentials, and its network policy lets it reach the broker alone).
    settings = CommonSettings(environment="development")
    specs = load_topics(path)
    admin = await _admin(settings)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if settings.topic(s.name) not in existing]
        if missing:
            answer = await admin.create_topics(
                [
                    NewTopic(
                        name=settings.topic(s.name),
                        num_partitions=s.partitions,
                        replication_factor=s.replication_factor,
                        topic_configs=s.config,
                    )
                    for s in missing
                ]
            )
            # The broker answers per topic; aiokafka raises for none of them.
            failed = [
                f"{error[0]}: {errors.for_code(error[1]).__name__}"
                f"{' (' + error[2] + ')' if len(error) > 2 and error[2] else ''}"
                for error in answer.topic_errors
                if error[1] not in (0, errors.TopicAlreadyExistsError.errno)
            ]
            if failed:
                print(f"topics: not created: {'; '.join(failed)}", file=sys.stderr)
                return 1
        for spec in specs:
            verb = "created" if spec in missing else "exists"
            print(
                f"topics: {verb} {settings.topic(spec.name)} partitions={spec.partitions}"
                f" replication={spec.replication_factor}"
                f" retention.ms={spec.config.get('retention.ms', '(broker default)')}"
            )
        drift = await _partition_drift(admin, settings, [s for s in specs if s not in missing])
        for line in drift:
            print(f"topics: WARNING {line}", file=sys.stderr)
        return 0
    finally:
        await admin.close()


async def _partition_drift(admin: Any, settings: Any, specs: list[TopicSpec]) -> list[str]:
    """Existing topics whose partition count is not the declared one (never changed here:
    adding partitions moves keys, so an incident's events would lose their order)."""
    if not specs:
        return []
    try:
        described = await admin.describe_topics([settings.topic(s.name) for s in specs])
    except Exception as exc:  # a broker without DescribeTopics: nothing to compare
        return [f"could not describe topics: {exc!r}"]
    counts = {d["topic"]: len(d.get("partitions", ())) for d in described}
    return [
        f"{settings.topic(s.name)} has {counts[settings.topic(s.name)]} partitions,"
        f" declared {s.partitions}; change it by hand, knowing keys move"
        for s in specs
        if counts.get(settings.topic(s.name)) not in (None, s.partitions)
    ]


# --- migrations ---------------------------------------------------------------------


def service_migrations(service: str) -> Path:
    """A service's own migrations folder, inside the installed package."""
    import services

    return Path(services.__file__).resolve().parent / service / "migrations"


def migration_folders(service: str) -> list[Path]:
    """The folders whose SQL files make up a service's schema, as `migrate_service` reads them."""
    from services.infra.db import INFRA_MIGRATIONS

    folder = service_migrations(service)
    return [INFRA_MIGRATIONS, folder] if folder.is_dir() else [INFRA_MIGRATIONS]


async def migrate() -> int:
    """Apply every service's migrations, each to its schema (the one-shot job)."""
    from services.infra.db import migrate_service
    from services.infra.keystore import migrate_key_store
    from services.infra.settings import CommonSettings

    settings = CommonSettings()
    for service in SERVICES:
        applied = await migrate_service(
            settings.database_url, settings.schema_name(service), service_migrations(service)
        )
        print(f"migrate: {service}: {', '.join(applied) if applied else 'up to date'}")
    applied = await migrate_key_store(settings.database_url, settings.schema_name("keys"))
    print(f"migrate: keys: {', '.join(applied) if applied else 'up to date'}")
    return 0


# --- wait ---------------------------------------------------------------------------


async def _missing(service: str, settings: Any) -> list[str]:
    import asyncpg

    from services.infra.db import quote_ident
    from services.infra.kafka import all_topics, list_topics

    missing: list[str] = []
    try:
        topics = await asyncio.wait_for(list_topics(settings), 10)
        missing += [f"topic {t}" for t in all_topics(settings) if t not in topics]
    except Exception as exc:
        missing.append(f"broker ({exc!r})")
    wanted = {p.name for folder in migration_folders(service) for p in folder.glob("*.sql")}
    schema = settings.schema_name(service)
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=10)
        try:
            rows = await conn.fetch(f"SELECT name FROM {quote_ident(schema)}.schema_migrations")  # noqa: S608
        finally:
            await conn.close()
        missing += [f"migration {n}" for n in sorted(wanted - {r["name"] for r in rows})]
    except Exception as exc:
        missing.append(f"migrations of schema {schema} ({exc!r})")
    return missing


async def wait(service: str) -> int:
    """Until the topics exist and the service's migrations are applied (or time out)."""
    settings = settings_class(service)()
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        missing = await _missing(service, settings)
        if not missing:
            print(f"wait: {service} can start")
            return 0
        if time.monotonic() > deadline:
            print(f"wait: gave up; still missing: {'; '.join(missing)}", file=sys.stderr)
            return 1
        print(f"wait: missing {'; '.join(missing[:5])}", file=sys.stderr)
        await asyncio.sleep(3)


# --- probe --------------------------------------------------------------------------


def running_service(proc: Path = Path("/proc")) -> str | None:
    """The service a process of this container runs (`python -m services.<name>`)."""
    wanted = {module.encode(): name for name, module in SERVICES.items()}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for before, arg in itertools.pairwise(argv):
            if before == b"-m" and arg in wanted:
                return wanted[arg]
    return None


def probe(service: str, path: str) -> int:
    """0 when the service answers `path` with 200 on its port here, else 1."""
    if service == "auto":
        found = running_service()
        if found is None:
            return 0  # a one-shot job: nothing to probe
        service = found
    if service not in SERVICES or not path.startswith("/"):
        print(USAGE, file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{service_port(service)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return 0 if answer.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"probe: {url}: {exc}", file=sys.stderr)
        return 1


# --- dispatch -----------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Run what the arguments say; services replace this process."""
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    if command == "probe" and len(args) == 2:
        return probe(args[0], args[1])
    load_password_file()
    if command in SERVICES and not args:
        os.execv(sys.executable, [sys.executable, "-m", SERVICES[command]])  # noqa: S606
    if command == "migrate" and not args:
        return asyncio.run(migrate())
    if command == "topics" and len(args) <= 1:
        return asyncio.run(create_topics(Path(args[0]) if args else DEFAULT_TOPICS_FILE))
    if command == "wait" and len(args) == 1 and args[0] in SERVICES:
        return asyncio.run(wait(args[0]))
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
