"""Session fixtures: one Kafka-protocol broker and one PostgreSQL server per test run.

Broker (`kafka_bootstrap`, "host:port"), first that applies:
  1. `INCIDENTS_KAFKA_BOOTSTRAP` if set (it must answer, else the session fails);
  2. a Kafka container via testcontainers when a Docker engine answers;
  3. a Tansu broker started here on a free port (`tansu` yields it; None otherwise,
     so a test that restarts the broker skips when the broker is not ours).

PostgreSQL (`pg_server_url`, the server's `postgres` database), first that applies:
  1. the server of `INCIDENTS_DATABASE_URL` if set (it must answer);
  2. 127.0.0.1:5432 as `postgres` if it answers;
  3. a PostgreSQL container when Docker answers;
  4. an embedded PostgreSQL in a temp folder.

`make_database(prefix)` creates an empty database `t_<prefix>_<random>` on that server
and returns its URL; `fresh_database_url` is one such database per test. Every database
made this way is dropped at the end of the session.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the project is not necessarily installed in the venv
    sys.path.insert(0, str(ROOT))

from services.infra.settings import with_database  # noqa: E402
from tooling.localstack import (  # noqa: E402
    EmbeddedPostgres,
    Tansu,
    kafka_answers,
    postgres_answers,
    run_sync,
)

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def docker_answers() -> bool:
    """True if a Docker engine answers `docker info` within a few seconds."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def _broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Tansu | None]]:
    configured = os.environ.get("INCIDENTS_KAFKA_BOOTSTRAP")
    if configured:
        if not kafka_answers(configured, timeout=5):
            pytest.fail(f"INCIDENTS_KAFKA_BOOTSTRAP={configured} does not answer as Kafka")
        yield configured, None
    elif docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server(), None
    else:
        log = tmp_path_factory.mktemp("tansu") / "broker.log"
        with Tansu.start(log_path=log) as broker:
            yield broker.bootstrap, broker


@pytest.fixture(scope="session")
def kafka_bootstrap(_broker: tuple[str, Tansu | None]) -> str:
    """Bootstrap address of the session's Kafka-protocol broker."""
    return _broker[0]


@pytest.fixture(scope="session")
def tansu(_broker: tuple[str, Tansu | None]) -> Tansu | None:
    """The Tansu broker when this session started it (restartable), else None."""
    return _broker[1]


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of the session's PostgreSQL server, `postgres` database, superuser."""
    configured = os.environ.get("INCIDENTS_DATABASE_URL")
    if configured:
        server = with_database(configured, "postgres")
        if not postgres_answers(server, timeout=5):
            pytest.fail(f"INCIDENTS_DATABASE_URL server does not answer: {server}")
        yield server
    elif postgres_answers(LOCAL_PG):
        yield LOCAL_PG
    elif docker_answers():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:17", driver=None) as container:
            yield with_database(container.get_connection_url(), "postgres")
    else:
        # Under the temp dir so that `nobody` (the server's user when we are root)
        # can reach it; see tooling/localstack.py.
        holder = Path(tempfile.mkdtemp(prefix="incidents-test-pg-"))
        holder.chmod(0o755)
        embedded = EmbeddedPostgres.start(holder / "pgdata")
        try:
            yield embedded.url
        finally:
            embedded.remove()
            shutil.rmtree(holder, ignore_errors=True)


@pytest.fixture(scope="session")
def make_database(pg_server_url: str) -> Iterator[Callable[[str], str]]:
    """`make_database(prefix) -> url` of a new empty database, dropped at session end."""
    import asyncpg

    created: list[str] = []

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def make(prefix: str) -> str:
        clean = re.sub(r"[^a-z0-9_]", "_", prefix.lower())[:40]
        name = f"t_{clean}_{secrets.token_hex(4)}"
        run_sync(partial(execute, f'CREATE DATABASE "{name}"'))
        created.append(name)
        return with_database(pg_server_url, name)

    yield make
    for name in created:
        try:
            run_sync(partial(execute, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception as exc:  # keep dropping the others; say which one stayed
            print(f"could not drop test database {name}: {exc}", file=sys.stderr)


@pytest.fixture
def fresh_database_url(make_database: Callable[[str], str], request: pytest.FixtureRequest) -> str:
    """A new empty database for this test, named after it."""
    return make_database(request.node.name)


@pytest.fixture(autouse=True)
def _verifier_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`incidents audit verify` keeps a state file (pinned keys, verified heads): each
    test gets its own, never the user's (a key pinned there would fail the next run)."""
    state = tmp_path_factory.mktemp("verifier") / "verified-heads.json"
    monkeypatch.setenv("INCIDENTS_VERIFY_STATE", str(state))
