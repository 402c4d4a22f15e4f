"""A private stack for benchmarks: its own Tansu, a fresh database, services on free ports.

The stack of the end-to-end tests (`tooling.launcher.PrivateStack`): the broker from
`tooling.localstack`, each service as `python -m services.<name>` in its own
process group that dies with us, and readiness by `GET /readyz`. The database is a new
`bench_<stamp>` database on the server of `INCIDENTS_DATABASE_URL` (an embedded
PostgreSQL is started when nothing answers there), dropped by `close`.
"""

from __future__ import annotations

import functools
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from services.infra.db import quote_ident
from services.infra.settings import CommonSettings, with_database
from tooling.launcher import SERVICES, PrivateStack
from tooling.localstack import EmbeddedPostgres, postgres_answers, run_sync


class Databases:
    """Fresh databases on one PostgreSQL server, dropped together by `close`."""

    def __init__(self, logs: Path, server_url: str | None = None) -> None:
        self.embedded: EmbeddedPostgres | None = None
        configured = server_url or CommonSettings().database_url
        server = with_database(configured, "postgres")
        if not postgres_answers(server):
            holder = Path(tempfile.mkdtemp(prefix="incidents-bench-pg-"))
            holder.chmod(0o755)
            self.embedded = EmbeddedPostgres.start(holder / "pgdata")
            server = self.embedded.url
        self.server_url = server
        self.created: list[str] = []
        self.logs = logs

    def create(self, prefix: str) -> str:
        """A new empty database `<prefix>_<random>`; its URL."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        run_sync(functools.partial(self._execute, f"CREATE DATABASE {quote_ident(name)}"))
        self.created.append(name)
        return with_database(self.server_url, name)

    async def _execute(self, sql: str) -> None:
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def close(self) -> None:
        """Drop every database made here; stop the embedded server if one was started."""
        for name in self.created:
            try:
                run_sync(
                    functools.partial(
                        self._execute, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)"
                    )
                )
            except Exception as exc:  # keep dropping the others; say which one stayed
                print(f"could not drop bench database {name}: {exc}", file=sys.stderr)
        self.created.clear()
        if self.embedded is not None:
            self.embedded.remove()
            self.embedded = None


class BenchStack(PrivateStack):
    """The four services on free ports over one fresh database, and a broker.

    The broker is a Tansu started here, unless `bootstrap` names one to use (the tests
    pass the session's, with a topic prefix of their own).
    """

    def __init__(
        self, logs: Path, database_url: str, *, bootstrap: str | None = None, topic_prefix: str = ""
    ) -> None:
        super().__init__(
            logs,
            database_url,
            bootstrap=bootstrap,
            env={"INCIDENTS_KAFKA_TOPIC_PREFIX": topic_prefix, "INCIDENTS_DB_SCHEMA_SUFFIX": ""},
        )
        self.database_url = database_url
        self.topic_prefix = topic_prefix

    def start(self, timeout: float = 90.0, services: Sequence[str] = SERVICES) -> float:
        """Start the services (every one by default) and wait until each answers /readyz;
        seconds it took."""
        return self.start_all(services, timeout)
