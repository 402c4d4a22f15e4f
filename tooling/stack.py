"""`incidents up`: the whole stack on this machine, supervised in the foreground.

Order of work: take the single-instance lock, check the service ports are free, use the
configured Kafka broker or start Tansu on its address, use the configured PostgreSQL or
start an embedded one, apply every service's migrations, start intake, triage,
escalation and audit as child processes (each in its own process group, output in
`<run>/<name>.log`), wait until each answers `GET /readyz`, print the URLs, then watch.

A child that dies stops everything with exit code 1 (no silent restarts). SIGINT or
SIGTERM stops the children in reverse start order (SIGTERM, SIGKILL after 10 s), then
the broker and PostgreSQL if they were started here, and returns 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from services.infra import signing
from services.infra.config import state_dir
from services.infra.db import migrate_service
from services.infra.preflight import CONFIG_EXIT, SETTINGS, check_service
from services.infra.settings import (
    AuditSettings,
    CommonSettings,
    database_name,
    with_database,
)
from tooling.launcher import (
    IMPORT_ROOT,
    READY_TIMEOUT,
    SERVICES,
    Launcher,
    LaunchError,
    with_import_root,
)
from tooling.launcher import service_command as default_command
from tooling.localstack import (
    STOP_TIMEOUT,
    EmbeddedPostgres,
    LocalStackError,
    Tansu,
    kafka_answers,
    log_tail,
    port_in_use,
    postgres_answers,
    run_sync,
    split_host_port,
)
from tooling.traces import Phoenix

_PACKAGE_ROOT = IMPORT_ROOT / "services"


class StackError(RuntimeError):
    """The stack cannot start; the message says why, for the operator."""


def redact_url(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()


@contextlib.contextmanager
def _single_instance(lock_path: Path, run: Path) -> Iterator[bool]:
    """Hold an exclusive flock on `lock_path`; yields False if someone else holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = lock_path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        handle.seek(0)
        handle.truncate()
        info = {
            "pid": os.getpid(),
            "run_dir": str(run),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        handle.write(json.dumps(info) + "\n")
        handle.flush()
        try:
            yield True
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _lock_holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    pid = info.get("pid", "?")
    run = info.get("run_dir", "?")
    return f"pid {pid}, run folder {run}"


@contextlib.contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM while inside (handlers only in the main thread)."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: list[tuple[signal.Signals, Any]] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous.append((sig, signal.signal(sig, handler)))
    try:
        yield stop
    finally:
        for sig, old in previous:
            signal.signal(sig, old)


class _Stack:
    """The resources started so far, stopped in reverse order by `shutdown`."""

    def __init__(self, console: Console, run: Path, stop: threading.Event) -> None:
        self.console = console
        self.run = run
        self.stop = stop
        self.broker: Tansu | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.services: Launcher | None = None
        self.bootstrap = ""
        self.database_url = ""
        self.phoenix: Phoenix | None = None

    # -- start ---------------------------------------------------------------------

    def start_broker(self, bootstrap: str) -> None:
        if kafka_answers(bootstrap):
            self.console.print(f"Kafka broker: using the one at [bold]{bootstrap}[/]")
            self.bootstrap = bootstrap
            return
        host, port = split_host_port(bootstrap.split(",")[0])
        with self.console.status(f"Starting the Tansu broker on {host}:{port} ..."):
            try:
                self.broker = Tansu.start(port, self.run / "broker.log", host=host)
            except LocalStackError as exc:
                raise StackError(str(exc)) from exc
        self.bootstrap = self.broker.bootstrap
        self.console.print(
            f"Kafka broker: started Tansu on [bold]{self.bootstrap}[/] "
            "(memory storage: a restart loses every topic)"
        )

    def start_phoenix(self) -> None:
        """Arize Phoenix on 127.0.0.1 (`PHOENIX_PORT`, `PHOENIX_GRPC_PORT`); data in the run."""
        phoenix = Phoenix(
            self.run / "phoenix",
            port=int(os.environ.get("PHOENIX_PORT", "6006")),
            grpc_port=int(os.environ.get("PHOENIX_GRPC_PORT", "4317")),
        )
        taken = [p for p in (phoenix.port, phoenix.grpc_port) if port_in_use(phoenix.host, p)]
        if taken:
            raise StackError(
                f"Phoenix port(s) {taken} already in use on {phoenix.host}; set PHOENIX_PORT"
                " and PHOENIX_GRPC_PORT to free ones"
            )
        with self.console.status(f"Starting Arize Phoenix on {phoenix.url} ..."):
            try:
                phoenix.start(self.run / "phoenix.log")
            except RuntimeError as exc:
                raise StackError(str(exc)) from exc
        self.phoenix = phoenix
        self.console.print(
            f"Traces: Arize Phoenix at [bold]{phoenix.url}[/] (OTLP over HTTP at"
            f" {phoenix.otlp_endpoint}/v1/traces, gRPC at {phoenix.host}:{phoenix.grpc_port})"
        )

    def start_database(self, configured_url: str) -> None:
        if postgres_answers(configured_url):
            self.console.print(
                f"PostgreSQL: using the one at [bold]{redact_url(configured_url)}[/]"
            )
            self.database_url = configured_url
            return
        with self.console.status("Starting an embedded PostgreSQL ..."):
            try:
                # In the state folder, not the run folder: the ledger, receipts and
                # everything else outlive a restart (the broker's topics are rebuilt).
                self.postgres = EmbeddedPostgres.start(state_dir() / "pgdata", keep=True)
            except (LocalStackError, OSError, subprocess.SubprocessError) as exc:
                raise StackError(f"embedded PostgreSQL did not start: {exc}") from exc
        self.database_url = with_database(self.postgres.url, database_name(configured_url))
        self.console.print(
            f"PostgreSQL: nothing answered at {redact_url(configured_url)}; started an "
            f"embedded server on port {self.postgres.port} (data {self.postgres.data_dir})"
        )

    def migrate(self, settings: CommonSettings, names: Sequence[str]) -> None:
        with self.console.status("Applying migrations ..."):
            for name in names:
                folder = _PACKAGE_ROOT / name / "migrations"
                schema = settings.schema_name(name)
                try:
                    applied = run_sync(
                        functools.partial(migrate_service, self.database_url, schema, folder)
                    )
                except Exception as exc:
                    raise StackError(f"migrations of {name} failed: {exc}") from exc
                if applied:
                    self.console.print(f"  {name}: applied {', '.join(applied)}")

    def local_witness(self, host: str) -> int:
        """Prepare the one local witness (docs/witness.md): its state in the state folder,
        audit's key as the log it witnesses, and INCIDENTS_WITNESSES for audit. Its port."""
        from services.audit.heads import load_signer
        from services.witness.config import WitnessSettings, load_key

        witness = WitnessSettings()
        if not os.environ.get("INCIDENTS_WITNESS_STATE_DIR"):  # kept between runs by default
            witness = WitnessSettings(state_dir=state_dir() / "witness")
        if port_in_use(host, witness.port):
            raise StackError(f"the witness port {witness.port} is in use on {host}")
        log_key = load_signer(AuditSettings()).verifier_key
        vkey = load_key(witness.state_dir, witness.name).verifier_key
        os.environ["INCIDENTS_WITNESS_STATE_DIR"] = str(witness.state_dir)
        os.environ["INCIDENTS_WITNESS_LOGS"] = log_key
        os.environ["INCIDENTS_WITNESSES"] = f"http://{host}:{witness.port} {vkey}"
        self.console.print(f"Witness: {vkey}")
        return witness.port

    def start_services(
        self,
        host: str,
        ports: Mapping[str, int],
        command: Callable[[str], list[str]],
    ) -> None:
        env = dict(os.environ)
        env["INCIDENTS_KAFKA_BOOTSTRAP"] = self.bootstrap
        env["INCIDENTS_DATABASE_URL"] = self.database_url
        # A report triage has not decided in 30 s is raised (docs/operations.md): on one
        # machine triage decides in about a second, so a longer wait means it is down.
        env.setdefault("INCIDENTS_DECISION_WITHIN", "30")
        if self.phoenix is not None:
            env.update(self.phoenix.service_env())
        key_files: dict[str, Path] = {}
        if not env.get("INCIDENTS_EVENT_KEYS_FILE"):  # real event keys, kept in the state folder
            key_files, keys_file = signing.ensure_key_files(state_dir() / "event-keys")
            env["INCIDENTS_EVENT_KEYS_FILE"] = str(keys_file)
        self.services = Launcher(self.run, with_import_root(env), ports, host=host, command=command)
        for name in ports:
            key = {"INCIDENTS_EVENT_SIGNING_KEY": str(key_files[name])} if name in key_files else {}
            self.services.start(name, **key)

    def wait_ready(self, timeout: float) -> bool:
        """True when every service answers /readyz; False if asked to stop meanwhile."""
        assert self.services is not None
        services = self.services
        with self.console.status("") as status:
            return services.wait_ready(
                timeout=timeout,
                stop=self.stop,
                on_pending=lambda pending: status.update(
                    "Waiting for "
                    + ", ".join(f"{n} (:{services.ports[n]})" for n in pending)
                    + " to answer /readyz ..."
                ),
                on_ready=lambda name, seconds: self.console.print(
                    f"  [green]ready[/] {name} in {seconds:.1f}s"
                ),
            )

    # -- watch and stop ------------------------------------------------------------

    def watch(self) -> None:
        """Block until asked to stop; raise StackError when a process dies."""
        while not self.stop.wait(0.5):
            if self.services is not None:
                self.services.check_alive()
            if self.broker is not None and not self.broker.running:
                raise StackError(
                    f"the Tansu broker died unexpectedly; log {self.broker.log_path}:\n"
                    f"{log_tail(self.broker.log_path)}"
                )
            if self.phoenix is not None and not self.phoenix.running:
                raise StackError(f"Arize Phoenix died unexpectedly; log {self.run / 'phoenix.log'}")

    def shutdown(self) -> None:
        if self.services is not None:

            def stopped(name: str, code: int | None) -> None:
                how = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
                self.console.print(f"  stopped {name} ({how})")

            with self.console.status("Stopping the services ..."):
                self.services.stop_all(STOP_TIMEOUT, report=stopped)
        if self.phoenix is not None:
            with self.console.status("Stopping Arize Phoenix ..."):
                self.phoenix.stop()
            self.console.print("  stopped Arize Phoenix")
            self.phoenix = None
        if self.broker is not None:
            with self.console.status("Stopping the Tansu broker ..."):
                self.broker.stop()
            self.console.print("  stopped the Tansu broker")
            self.broker = None
        if self.postgres is not None:
            with self.console.status("Stopping the embedded PostgreSQL ..."):
                self.postgres.stop()
                if self.postgres.holder is not None:  # data outside the run folder
                    self.postgres.remove()
            self.console.print("  stopped the embedded PostgreSQL")
            self.postgres = None

    def print_urls(self, host: str) -> None:
        table = Table(title="incidents is up", show_header=True)
        table.add_column("what")
        table.add_column("where")
        if self.services is not None:
            for name in self.services.procs:
                table.add_row(name, self.services.url(name))
        broker_note = " (Tansu, started here)" if self.broker else ""
        table.add_row("Kafka bootstrap", self.bootstrap + broker_note)
        db_note = " (embedded, started here)" if self.postgres else ""
        table.add_row("PostgreSQL", redact_url(self.database_url) + db_note)
        table.add_row("logs", str(self.run))
        if self.phoenix is not None:
            table.add_row("traces (Phoenix UI)", self.phoenix.url)
            table.add_row("OTLP HTTP endpoint", f"{self.phoenix.otlp_endpoint}/v1/traces")
        self.console.print(table)
        self.console.print("Press Ctrl-C to stop everything.")


def _service_ports(names: Sequence[str], overrides: Mapping[str, int] | None) -> dict[str, int]:
    ports = {name: SETTINGS[name]().port for name in names}  # type: ignore[attr-defined]
    ports.update({k: v for k, v in (overrides or {}).items() if k in ports})
    return ports


def run_stack(
    run_dir: str | None = None,
    *,
    services: Sequence[str] = SERVICES,
    service_command: Callable[[str], list[str]] | None = None,
    ports: Mapping[str, int] | None = None,
    ready_timeout: float = READY_TIMEOUT,
    console: Console | None = None,
    traces: bool = False,
) -> int:
    """Run the stack until SIGINT/SIGTERM (exit code 0) or a failure (exit code 1); a
    configuration problem (`services.infra.preflight`) exits with 2 before anything starts.

    `services`, `service_command` (name -> argv) and `ports` (name -> HTTP port) exist
    for tests; by default the four services run as `python -m services.<name>` on the
    ports of their settings classes. Each child gets `INCIDENTS_<NAME>_PORT` set to its port.
    With `traces`, an Arize Phoenix server (the `[traces]` extra) starts first, on
    127.0.0.1, and every service exports its spans to it over OTLP.
    """
    console = console or Console()
    run = Path(run_dir) if run_dir else Path(".run") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run = run.absolute()
    lock_path = state_dir() / "up.lock"
    with _single_instance(lock_path, run) as mine:
        if not mine:
            console.print(
                f"[red]incidents up is already running[/] ({_lock_holder(lock_path)}; "
                f"lock {lock_path}). Stop it first (Ctrl-C in its terminal)."
            )
            return 1
        # a file several services read is named once
        problems = list(dict.fromkeys(p for name in services for p in check_service(name)[1]))
        if problems:  # before the broker, the database or a migration starts
            console.print(f"[red]error:[/] the configuration has {len(problems)} problem(s):")
            for line in problems:
                console.print(f"  {line}", markup=False, highlight=False)
            return CONFIG_EXIT
        try:
            settings, host, service_ports = _preflight(services, ports)
        except StackError as exc:
            console.print(f"[red]error:[/] {exc}")
            return 1
        run.mkdir(parents=True, exist_ok=True)
        console.print(f"Run folder: [bold]{run}[/] (one log per process)")
        with _stop_requests() as stop:
            stack = _Stack(console, run, stop)
            try:
                if traces:
                    stack.start_phoenix()
                return _run(stack, settings, host, service_ports, service_command, ready_timeout)
            except (StackError, LaunchError) as exc:
                console.print(f"[red]error:[/] {exc}")
                return 1
            finally:
                stack.shutdown()


def _preflight(
    services: Sequence[str], overrides: Mapping[str, int] | None
) -> tuple[CommonSettings, str, dict[str, int]]:
    """Settings, the host to probe and each service's port; StackError if unusable."""
    try:
        settings = CommonSettings()
        ports = _service_ports(services, overrides)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise StackError(f"invalid settings: {exc}") from exc
    if len(set(ports.values())) != len(ports):
        raise StackError(
            f"two services share a port: {ports} (check the INCIDENTS_<NAME>_PORT variables)"
        )
    host = settings.http_host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a bind-all address: probe loopback
        host = "127.0.0.1"
    taken = [f"{name} :{port}" for name, port in ports.items() if port_in_use(host, port)]
    if taken:
        raise StackError(
            f"port(s) already in use on {host}: {', '.join(taken)}. Another stack or "
            "program is running there; stop it first."
        )
    return settings, host, ports


def _run(
    stack: _Stack,
    settings: CommonSettings,
    host: str,
    ports: dict[str, int],
    service_command: Callable[[str], list[str]] | None,
    ready_timeout: float,
) -> int:
    stack.start_broker(settings.kafka_bootstrap)
    if stack.stop.is_set():
        return 0
    stack.start_database(settings.database_url)
    if stack.stop.is_set():
        return 0
    stack.migrate(settings, list(ports))
    if stack.stop.is_set():
        return 0
    if service_command is None and "audit" in ports and not os.environ.get("INCIDENTS_WITNESSES"):
        ports = {"witness": stack.local_witness(host), **ports}
    stack.start_services(host, ports, service_command or default_command)
    if not stack.wait_ready(ready_timeout):
        stack.console.print("Stopping (signal received) ...")
        return 0
    stack.print_urls(host)
    stack.watch()
    stack.console.print("Stopping (signal received) ...")
    return 0
