"""A private stack for benchmarks: its own Tansu, a fresh database, services on free ports.

The same approach as the end-to-end tests (tests/e2e/conftest.py): the broker from
`services.infra.localstack`, each service as `python -m services.<name>` in its own
process group that dies with us, and readiness by `GET /readyz`. The database is a new
`bench_<stamp>` database on the server of `INCIDENTS_DATABASE_URL` (an embedded
PostgreSQL is started when nothing answers there), dropped by `close`.
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import httpx

from services.infra.db import quote_ident
from services.infra.localstack import (
    EmbeddedPostgres,
    Tansu,
    die_with_parent,
    free_port,
    log_tail,
    postgres_answers,
    run_sync,
    stop_process,
)
from services.infra.settings import CommonSettings, with_database

SERVICES = ("intake", "triage", "escalation", "audit")
_IMPORT_ROOT = Path(__file__).resolve().parents[2]


class BenchStackError(RuntimeError):
    """The private stack could not start; the message carries the log tail."""


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


class BenchStack:
    """The four services on free ports over one fresh database, and a broker.

    The broker is a Tansu started here, unless `bootstrap` names one to use (the tests
    pass the session's, with a topic prefix of their own).
    """

    def __init__(
        self, logs: Path, database_url: str, *, bootstrap: str | None = None, topic_prefix: str = ""
    ) -> None:
        self.logs = logs
        self.database_url = database_url
        self.topic_prefix = topic_prefix
        self.broker = None if bootstrap else Tansu.start(free_port(), logs / "broker.log")
        self.bootstrap = bootstrap or self.broker.bootstrap  # type: ignore[union-attr]
        self.ports = {name: free_port() for name in SERVICES}
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(_IMPORT_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
            "INCIDENTS_ENVIRONMENT": "test",
            "INCIDENTS_KAFKA_BOOTSTRAP": self.bootstrap,
            "INCIDENTS_KAFKA_TOPIC_PREFIX": topic_prefix,
            "INCIDENTS_DB_SCHEMA_SUFFIX": "",
            "INCIDENTS_DATABASE_URL": database_url,
            "INCIDENTS_SIGNING_KEY_FILE": str(logs / "signing-key.pem"),
            **{f"INCIDENTS_{n.upper()}_PORT": str(p) for n, p in self.ports.items()},
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        """Base URL of a service."""
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, timeout: float = 90.0, services: Sequence[str] = SERVICES) -> float:
        """Start the services (every one by default) and wait until each answers /readyz;
        seconds it took."""
        began = time.monotonic()
        for name in services:
            with (self.logs / f"{name}.log").open("ab") as log:
                self.procs[name] = subprocess.Popen(  # noqa: S603 - our interpreter and module
                    [sys.executable, "-m", f"services.{name}"],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
        pending = list(services)
        with httpx.Client(timeout=2.0) as http:
            while pending:
                for name in list(pending):
                    proc = self.procs[name]
                    if proc.poll() is not None:
                        raise BenchStackError(
                            f"{name} exited {proc.returncode}:\n{self.tail(name)}"
                        )
                    try:
                        if http.get(self.url(name) + "/readyz").status_code == 200:
                            pending.remove(name)
                    except httpx.HTTPError:
                        pass
                if time.monotonic() - began > timeout:
                    raise BenchStackError(
                        f"not ready in {timeout:.0f}s: {', '.join(pending)}\n"
                        + "\n".join(f"--- {n}\n{self.tail(n)}" for n in pending)
                    )
                if pending:
                    time.sleep(0.2)
        return time.monotonic() - began

    def tail(self, name: str) -> str:
        """The end of a service's log."""
        return log_tail(self.logs / f"{name}.log", 40)

    def stop(self) -> None:
        """Stop the services in reverse order, then the broker if it was started here."""
        for name in reversed(list(self.procs)):
            stop_process(self.procs[name])
        self.procs.clear()
        if self.broker is not None:
            self.broker.stop()
