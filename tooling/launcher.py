"""The one way tooling starts service processes: `incidents up`, bench, chaos, e2e tests.

`Launcher` runs each service as a child process (`python -m services.<name>` unless told
otherwise) in its own process group, with `PR_SET_PDEATHSIG` so that it dies with the
process that started it, its output appended to `<logs>/<name>.log`. It waits until a
service answers `GET /readyz` with 200, kills one (SIGKILL to its group), tails its log
and stops them all in reverse start order (SIGTERM, SIGKILL after a timeout).

`PrivateStack` is what bench, chaos and the end-to-end tests run: a Tansu broker of its
own (unless one is named), the four services on free ports over one database, and a
`Launcher` for them. `incidents up` (tooling/stack.py) drives a `Launcher` itself: its
ports, broker and database come from the settings.

The kernel ties `PR_SET_PDEATHSIG` to the *thread* that started the child: start
long-lived services from the thread that outlives them (the main one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import httpx

from tooling.localstack import (
    STOP_TIMEOUT,
    Tansu,
    free_port,
    kill_process,
    log_tail,
    spawn,
    stop_process,
)

SERVICES: tuple[str, ...] = ("intake", "triage", "escalation", "audit")
READY_TIMEOUT = 60.0
TAIL_LINES = 40
IMPORT_ROOT = Path(__file__).resolve().parent.parent
"""The folder that makes `services` (and `tooling`) importable: put on each child's path."""


class LaunchError(RuntimeError):
    """A service exited or did not answer /readyz in time; the message ends with its log."""


def service_command(name: str) -> list[str]:
    """The command line of a service: `python -m services.<name>`."""
    return [sys.executable, "-m", f"services.{name}"]


def with_import_root(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the project's root first on `PYTHONPATH` and unbuffered output."""
    path = os.pathsep.join(p for p in (str(IMPORT_ROOT), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


class Launcher:
    """Service processes under one supervisor: start, wait ready, kill, tail, stop.

    `env` is every child's environment (see `with_import_root`); `start` adds the
    service's own `INCIDENTS_<NAME>_PORT` and any extra variables. `procs` maps each
    started service to its process, in start order.
    """

    def __init__(
        self,
        logs: Path,
        env: Mapping[str, str],
        ports: Mapping[str, int],
        *,
        host: str = "127.0.0.1",
        command: Callable[[str], list[str]] = service_command,
    ) -> None:
        self.logs = logs
        self.env = dict(env)
        self.ports = dict(ports)
        self.host = host
        self.command = command
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started_at: dict[str, float] = {}
        self.ready_seconds: dict[str, float] = {}
        """Seconds from each service's (latest) start to its first 200 on /readyz."""

    def url(self, name: str) -> str:
        """The service's base URL."""
        return f"http://{self.host}:{self.ports[name]}"

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def tail(self, name: str, lines: int = TAIL_LINES) -> str:
        """The end of the service's log."""
        return log_tail(self.log_path(name), lines)

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        """Start the service (its own process group, dying with this thread)."""
        child_env = {**self.env, f"INCIDENTS_{name.upper()}_PORT": str(self.ports[name]), **env}
        process = spawn(self.command(name), self.log_path(name), child_env)
        self.procs[name] = process
        self.started_at[name] = time.monotonic()
        self.ready_seconds.pop(name, None)
        return process

    def _died(self, name: str, when: str) -> LaunchError:
        code = self.procs[name].returncode
        return LaunchError(
            f"{name} exited {when} with code {code}; log {self.log_path(name)}:\n{self.tail(name)}"
        )

    def _check(self, name: str, answer: httpx.Response | None, timeout: float) -> bool:
        """True once ready; LaunchError if the service died or its time is up."""
        if self.procs[name].poll() is not None:
            raise self._died(name, "before it was ready")
        elapsed = time.monotonic() - self.started_at[name]
        if answer is not None and answer.status_code == 200:
            self.ready_seconds[name] = elapsed
            return True
        if elapsed > timeout:
            raise LaunchError(
                f"{name} did not answer /readyz with 200 within {timeout:.0f}s (last answer:"
                f" {answer.status_code if answer else 'none'}); log {self.log_path(name)}:\n"
                f"{self.tail(name)}"
            )
        return False

    def wait_ready(
        self,
        names: Iterable[str] | None = None,
        timeout: float = READY_TIMEOUT,
        *,
        stop: threading.Event | None = None,
        on_ready: Callable[[str, float], None] | None = None,
        on_pending: Callable[[list[str]], None] | None = None,
        interval: float = 0.2,
    ) -> bool:
        """Poll the services (every started one by default) until each answers /readyz.

        True when all are ready; False as soon as `stop` is set. LaunchError when one
        exits first or is not ready `timeout` seconds after its start. `on_ready` hears
        each service's name and seconds to ready, `on_pending` who is still awaited.
        """
        pending = list(self.procs if names is None else names)
        with httpx.Client(timeout=2.0) as http:
            while pending:
                if on_pending is not None:
                    on_pending(pending)
                for name in list(pending):
                    if stop is not None and stop.is_set():
                        return False
                    try:
                        answer: httpx.Response | None = http.get(self.url(name) + "/readyz")
                    except httpx.HTTPError:
                        answer = None
                    if self._check(name, answer, timeout):
                        pending.remove(name)
                        if on_ready is not None:
                            on_ready(name, self.ready_seconds[name])
                if not pending:
                    break
                if stop is None:
                    time.sleep(interval)
                elif stop.wait(interval):
                    return False
        return True

    async def wait_ready_async(
        self, name: str, http: httpx.AsyncClient, within: float = READY_TIMEOUT
    ) -> float:
        """`wait_ready` for one service from an event loop; its seconds to ready."""
        while True:
            answer: httpx.Response | None = None
            with contextlib.suppress(httpx.HTTPError):
                answer = await http.get(self.url(name) + "/readyz", timeout=10)
            if self._check(name, answer, within):
                return self.ready_seconds[name]
            await asyncio.sleep(0.1)

    def check_alive(self) -> None:
        """LaunchError if a started service has exited."""
        for name, process in self.procs.items():
            if process.poll() is not None:
                raise self._died(name, "unexpectedly")

    def kill(self, name: str) -> None:
        """SIGKILL the service's process group and reap it."""
        kill_process(self.procs[name])

    def stop_all(
        self,
        timeout: float = STOP_TIMEOUT,
        report: Callable[[str, int | None], None] | None = None,
    ) -> None:
        """Stop the services in reverse start order (SIGTERM, SIGKILL after `timeout`);
        `report` hears each one still running and its exit code."""
        for name in reversed(list(self.procs)):
            process = self.procs[name]
            running = process.poll() is None
            code = stop_process(process, timeout)
            if running and report is not None:
                report(name, code)
        self.procs.clear()


class PrivateStack:
    """A broker and the four services on free ports over one database: for bench,
    chaos and the end-to-end tests.

    The broker is a Tansu started here (`<logs>/broker.log`) unless `bootstrap` names
    one. Every service runs with `INCIDENTS_ENVIRONMENT=test`, the broker, the database,
    a signing key file in `logs`, every service's port and `env` on top; with
    `inherit_incidents=False` the caller's own `INCIDENTS_*` variables are left out.
    """

    def __init__(
        self,
        logs: Path,
        database_url: str,
        *,
        bootstrap: str | None = None,
        env: Mapping[str, str] | None = None,
        inherit_incidents: bool = True,
    ) -> None:
        self.logs = logs
        self.broker = None if bootstrap else Tansu.start(free_port(), logs / "broker.log")
        self.bootstrap = bootstrap or self.broker.bootstrap  # type: ignore[union-attr]
        ports = {name: free_port() for name in SERVICES}
        inherited = {
            k: v
            for k, v in os.environ.items()
            if inherit_incidents or not k.startswith("INCIDENTS_")
        }
        self.launcher = Launcher(
            logs,
            with_import_root(
                {
                    **inherited,
                    "INCIDENTS_ENVIRONMENT": "test",
                    "INCIDENTS_KAFKA_BOOTSTRAP": self.bootstrap,
                    "INCIDENTS_DATABASE_URL": database_url,
                    "INCIDENTS_SIGNING_KEY_FILE": str(logs / "signing-key.pem"),
                    **{f"INCIDENTS_{n.upper()}_PORT": str(p) for n, p in ports.items()},
                    **(env or {}),
                }
            ),
            ports,
        )

    @property
    def env(self) -> dict[str, str]:
        return self.launcher.env

    @property
    def ports(self) -> dict[str, int]:
        return self.launcher.ports

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.launcher.procs

    @property
    def ready_seconds(self) -> dict[str, float]:
        return self.launcher.ready_seconds

    def url(self, name: str) -> str:
        return self.launcher.url(name)

    def tail(self, name: str) -> str:
        return self.launcher.tail(name)

    def start_service(self, name: str, **env: str) -> None:
        self.launcher.start(name, **env)

    def start_all(self, names: Iterable[str] = SERVICES, timeout: float = 90.0) -> float:
        """Start the services and wait until each answers /readyz; seconds it took."""
        began = time.monotonic()
        names = list(names)
        for name in names:
            self.launcher.start(name)
        self.launcher.wait_ready(names, timeout)
        return time.monotonic() - began

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> float:
        """Wait until the service answers /readyz; its seconds from start to ready."""
        self.launcher.wait_ready([name], timeout, interval=0.1)
        return self.launcher.ready_seconds[name]

    def kill(self, name: str) -> None:
        """SIGKILL the service's process group."""
        self.launcher.kill(name)

    def restart_broker(self) -> None:
        """SIGKILL the broker and start an empty one on the same port."""
        assert self.broker is not None, "the broker was not started here"
        self.broker.restart()

    def stop(self) -> None:
        """Stop the services in reverse order, then the broker if it was started here."""
        self.launcher.stop_all()
        if self.broker is not None:
            self.broker.stop()
