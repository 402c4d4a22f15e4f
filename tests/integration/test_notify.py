"""Delivery adapters against real servers on 127.0.0.1: an HTTP receiver (aiohttp) that
checks signatures, and an SMTP server (aiosmtpd), plain and with STARTTLS and AUTH. The
last tests run intake, triage and escalation in-process on the real broker and database:
with a webhook receiver that always fails, level 1 not reached means level 2 asked at
once; with one that takes seconds to answer, an acknowledgement is not held up by it;
a recipient excluded while her webhook is retried, or before the incident's decision
reached escalation, is never told (SPEC invariant 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from prometheus_client import REGISTRY

from services.domain.events import ChainLevel, Notified, Triaged, make_event, parse_event
from services.domain.knowledge import LedgerEvent, knowledge_as_of
from services.escalation.app import create_app as create_escalation
from services.escalation.notify import (
    CLOSED_DETAIL,
    DELIVERY_HEADER,
    EXCLUDED_DETAIL,
    SIGNATURE_HEADER,
    RetryPolicy,
    SmtpNotifier,
    StillAllowed,
    WebhookNotifier,
    verify_signature,
)
from services.infra.settings import (
    CommonSettings,
    EscalationSettings,
    IntakeSettings,
    TriageSettings,
)
from services.intake.app import create_app as create_intake
from services.triage.app import create_app as create_triage
from tests.helpers import (
    SEED_CASE,
    critical_policy,
    event_record,
    eventually,
    read_all,
    serving,
)

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "ab" * 32
NOTICE = Notified(principal="p-chen", channel="escalation", level=1, report_digest=DIGEST)
INCIDENT = "0b6c2f7e-9d1a-4c1e-8f0e-2f8d6b1f2a33"
SECRET = "whsec-integration-0123456789abcdef0123"
EMAILS = {"p-chen": "chen@example.com", "p-refused": "refused@example.com"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a real HTTP receiver -----------------------------------------------------------------


@dataclass
class Received:
    path: str
    body: bytes
    headers: dict[str, str]
    valid: bool


@dataclass
class Receiver:
    """Answers by path: /ok 204, /flaky 503 twice then 200, /down 500, /slow too slowly,
    /stall once `released` is set (or after `stall` seconds), /picky 400 for p-chen's
    notices and 204 for others', /once 503 to each notice's first attempt (by its
    delivery id) then 200."""

    base: str = ""
    got: list[Received] = field(default_factory=list)
    stall: float = 6.0
    released: asyncio.Event = field(default_factory=asyncio.Event)
    answered: list[Received] = field(default_factory=list)
    """The /stall requests answered so far."""

    def at(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        valid = verify_signature(SECRET, request.headers.get(SIGNATURE_HEADER), body)
        received = Received(request.path, body, dict(request.headers), valid)
        self.got.append(received)
        if not valid:
            return web.Response(status=401)
        if request.path == "/ok":
            return web.Response(status=204)
        if request.path == "/flaky":
            return web.Response(status=503 if len(self.at("/flaky")) <= 2 else 200)
        if request.path == "/slow":
            await asyncio.sleep(0.6)
            return web.Response(status=200)
        if request.path == "/once":
            delivery = request.headers.get(DELIVERY_HEADER)
            seen = [r for r in self.at("/once") if r.headers.get(DELIVERY_HEADER) == delivery]
            return web.Response(status=503 if len(seen) == 1 else 200)
        if request.path == "/picky":
            return web.Response(status=400 if json.loads(body)["principal"] == "p-chen" else 204)
        if request.path == "/stall":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), self.stall)
            self.answered.append(received)
            return web.Response(status=200)
        return web.Response(status=500, text="report content must never be asked for")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.base = f"http://{host}:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def hook(receiver: Receiver, path: str, **retry: Any) -> WebhookNotifier:
    """A webhook to `path`; `retry`: fields of its `RetryPolicy` other than these."""
    policy: dict[str, Any] = {"timeout": 2.0, "retries": 3, "backoff": 0.02, **retry}
    return WebhookNotifier(receiver.base + path, SECRET, RetryPolicy(**policy))


async def test_a_receiver_gets_the_signed_notice(receiver: Receiver) -> None:
    notifier = hook(receiver, "/ok")
    before = datetime.now(UTC)
    try:
        assert await notifier.deliver(INCIDENT, NOTICE) is True
    finally:
        await notifier.aclose()
    after = datetime.now(UTC)
    (got,) = receiver.at("/ok")
    assert got.valid
    assert got.headers["Content-Type"] == "application/json"
    data = json.loads(got.body)
    assert set(data) == {"incident_id", "principal", "level", "channel", "report_digest", "sent_at"}
    assert (data["incident_id"], data["principal"], data["level"]) == (INCIDENT, "p-chen", 1)
    sent = datetime.fromisoformat(data["sent_at"])
    assert before <= sent <= after  # the time it was sent
    assert not verify_signature("another-secret", got.headers[SIGNATURE_HEADER], got.body)


async def test_a_receiver_that_fails_twice_gets_it_on_the_third_attempt(
    receiver: Receiver,
) -> None:
    notifier = hook(receiver, "/flaky")
    try:
        assert await notifier.deliver(INCIDENT, NOTICE) is True
    finally:
        await notifier.aclose()
    attempts = receiver.at("/flaky")
    assert len(attempts) == 3
    assert all(a.valid for a in attempts)
    assert len({a.headers[DELIVERY_HEADER] for a in attempts}) == 1


async def test_a_receiver_that_always_fails_means_false_after_the_retries(
    receiver: Receiver,
) -> None:
    notifier = hook(receiver, "/down", retries=2)
    try:
        assert await notifier.deliver(INCIDENT, NOTICE) is False
    finally:
        await notifier.aclose()
    assert len(receiver.at("/down")) == 3


async def test_a_receiver_too_slow_for_the_timeout_means_false(receiver: Receiver) -> None:
    notifier = hook(receiver, "/slow", timeout=0.2, retries=1)
    try:
        # /slow answers 200 after 0.6 s: False means each try gave up at its 0.2 s timeout
        assert await notifier.deliver(INCIDENT, NOTICE) is False
    finally:
        await notifier.aclose()
    assert len(receiver.at("/slow")) == 2


async def test_nobody_listening_means_false_after_the_retries() -> None:
    notifier = WebhookNotifier(
        f"http://127.0.0.1:{free_port()}/hook", SECRET, RetryPolicy(1, retries=2, backoff=0.01)
    )
    try:
        assert await notifier.deliver(INCIDENT, NOTICE) is False
    finally:
        await notifier.aclose()


# -- a real SMTP server -------------------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler: keeps what it accepts; refuses one address, delays another."""

    def __init__(self, busy_times: int = 0) -> None:
        self.mails: list[Any] = []
        self.rcpt_calls = 0
        self.busy_times = busy_times
        self.logins: list[bytes] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.rcpt_calls += 1
        if address == EMAILS["p-refused"]:
            return "550 5.1.1 no such user"
        if self.rcpt_calls <= self.busy_times:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(envelope)
        return "250 Message accepted"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"u", b"pw")
        if ok:
            self.logins.append(data.login)
        return AuthResult(success=ok, handled=False)


@contextlib.contextmanager
def smtp_server(mailbox: Mailbox, **kw: Any) -> Iterator[int]:
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kw)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def mailer(port: int, **kw: Any) -> SmtpNotifier:
    options: dict[str, Any] = {
        "starttls": False,
        "recipients_by_principal": EMAILS.get,
        "console_url": "https://console.example",
        "retry": RetryPolicy(timeout=2.0, retries=3, backoff=0.02),
        **kw,
    }
    return SmtpNotifier("127.0.0.1", port, "incidents@example.com", **options)


async def test_a_mail_reaches_the_smtp_server() -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        assert await mailer(port).deliver(INCIDENT, NOTICE) is True
    (envelope,) = mailbox.mails
    assert envelope.mail_from == "incidents@example.com"
    assert envelope.rcpt_tos == ["chen@example.com"]
    mail = message_from_bytes(envelope.content, policy=default_policy)
    assert mail["To"] == "chen@example.com"
    assert mail["Subject"] == f"Please act on incident {INCIDENT} (level 1)"
    text = mail.get_content()  # type: ignore[attr-defined]
    assert f"You have been asked to act on incident {INCIDENT} (level 1)." in text
    assert f"Open https://console.example/incidents/{INCIDENT}" in text
    assert DIGEST not in envelope.content.decode()


async def test_a_busy_smtp_server_is_retried_and_a_refused_recipient_is_not() -> None:
    mailbox = Mailbox(busy_times=2)
    with smtp_server(mailbox) as port:
        assert await mailer(port).deliver(INCIDENT, NOTICE) is True
        assert mailbox.rcpt_calls == 3
        refused = Notified(
            principal="p-refused", channel="escalation", level=1, report_digest=DIGEST
        )
        assert await mailer(port).deliver(INCIDENT, refused) is False
        assert mailbox.rcpt_calls == 4  # a 550 is final: one attempt only
        unknown = Notified(
            principal="p-nobody", channel="escalation", level=1, report_digest=DIGEST
        )
        assert await mailer(port).deliver(INCIDENT, unknown) is False
    assert len(mailbox.mails) == 1


async def test_no_smtp_server_means_false_after_the_retries() -> None:
    once_more = RetryPolicy(timeout=2.0, retries=1, backoff=0.02)
    assert await mailer(free_port(), retry=once_more).deliver(INCIDENT, NOTICE) is False


@contextlib.contextmanager
def dripping_server() -> Iterator[int]:
    """An SMTP server that never finishes its greeting: a byte every 0.1 s, so no single
    read ever waits as long as the adapter's timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"220 ")
                while not stop.wait(0.1):
                    conn.sendall(b"x")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()


async def test_an_smtp_server_that_drips_its_answer_is_bounded_by_the_timeout() -> None:
    """Each attempt is bounded by `timeout` as a whole, not per read: a server that sends
    a byte now and then never holds a delivery (nor its worker's thread) for long."""
    once = RetryPolicy(timeout=0.5, retries=1, backoff=0.02)
    with dripping_server() as port:
        began = time.monotonic()
        delivered = await asyncio.wait_for(mailer(port, retry=once).deliver(INCIDENT, NOTICE), 10)
    assert delivered is False
    assert time.monotonic() - began < 3


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


async def test_starttls_and_login_before_anything_is_sent(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    mailbox = Mailbox()
    with smtp_server(
        mailbox,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=mailbox.authenticate,
        auth_required=True,
        auth_require_tls=True,
    ) as port:
        tls = {"starttls": True, "tls_context": client_tls}
        assert await mailer(port, **tls, username="u", password="pw").deliver(INCIDENT, NOTICE)
        assert mailbox.logins == [b"u"]
        wrong = mailer(port, **tls, username="u", password="wrong")
        assert await wrong.deliver(INCIDENT, NOTICE) is False  # 535: not retried
        untrusted = mailer(port, starttls=True, username="u", password="pw")
        assert await untrusted.deliver(INCIDENT, NOTICE) is False  # certificate not trusted
        plain = mailer(port, username="u", password="pw")
        assert await plain.deliver(INCIDENT, NOTICE) is False  # the server requires STARTTLS
    assert len(mailbox.mails) == 1


# -- escalation with a webhook that always fails, or takes seconds ---------------------------

LONG_DEADLINES = critical_policy("delivery-1", "120s")


@contextlib.asynccontextmanager
async def stack_with_webhook(
    settings: CommonSettings, tmp_path: Path, url: str, **notify: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """Intake, triage (directory loaded) and escalation delivering to the webhook `url`."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(LONG_DEADLINES)
    common = {**settings.model_dump(), "policy_file": policy}
    escalation = create_escalation(
        EscalationSettings(
            **common,
            notify_adapter="webhook",
            notify_webhook_url=url,
            notify_webhook_secret=SECRET,
            **notify,
        )
    )
    triage = create_triage(TriageSettings(**common))
    async with (
        serving(create_intake(IntakeSettings(**common)), "http://intake") as intake,
        serving(triage, "http://triage"),
        serving(escalation, "http://escalation"),
    ):

        async def loaded() -> bool:
            async with triage.state.triage.runtime.db.acquire() as conn:
                return bool(await conn.fetchval("SELECT count(*) >= 1 FROM directory_log"))

        await eventually(loaded, timeout=20)
        yield intake, escalation


async def escalations_of(settings: CommonSettings, incident: str) -> list[Any]:
    got = await read_all(settings.kafka_bootstrap, settings.topic("incident.escalations"))
    return [e for e in (parse_event(r.value)[0] for r in got) if e.subject == incident]


async def test_when_every_level_1_delivery_fails_level_2_is_asked_at_once(
    settings: CommonSettings, tmp_path: Path, receiver: Receiver
) -> None:
    """The webhook answers 400 for Chen, level 1's only recipient, and 204 for Zhou: the
    failure is recorded (a reason class, no retry), level 2 is asked at once, and the
    knowledge shows Chen notified but not delivered, Zhou delivered (issue 22)."""
    async with stack_with_webhook(
        settings,
        tmp_path,
        receiver.base + "/picky",
        notify_retries=1,
        notify_backoff_seconds=0.01,
        notify_timeout_seconds=2,
    ) as (intake, escalation):
        incident = (await intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]

        async def escalated_to(level: int) -> list[Any] | None:
            events = await escalations_of(settings, incident)
            mine = [e for e in events if e.type.endswith("escalated.v1")]
            return mine if any(e.data["level"] == level for e in mine) else None

        events = await eventually(lambda: escalated_to(2), timeout=20)

        async def outcomes() -> list[Any] | None:
            mine = [e for e in await escalations_of(settings, incident) if ".notice." in e.type]
            return mine if len(mine) == 2 else None

        delivered, failed = sorted(await eventually(outcomes, timeout=20), key=lambda e: e.type)
        activity = await read_all(settings.kafka_bootstrap, settings.topic("incident.activity"))
        async with escalation.state.escalation.runtime.db.acquire() as conn:
            level1_queue = await conn.fetch(
                "SELECT state, attempts FROM deliveries WHERE incident_id = $1"
                " AND convert_from(body, 'UTF8')::jsonb->'data'->>'level' = '1'",
                incident,
            )

    level2 = next(e for e in events if e.data["level"] == 2)
    assert level2.data["reason"] == "delivery_failed"
    assert level2.data["recipients"] == ["p-zhou"]
    # asked because the delivery failed (reason above), not at level 1's 120 s deadline,
    # which the 20 s wait above could not have reached
    level1_attempts = [
        json.loads(r.body)
        for r in receiver.at("/picky")
        if r.valid and json.loads(r.body)["incident_id"] == incident
    ]
    level1 = [a for a in level1_attempts if a["level"] == 1]
    assert level1 and {a["principal"] for a in level1} == {"p-chen"}
    assert len(level1) == 1  # a 400 is not retried
    assert all(set(a) >= {"report_digest", "sent_at"} and "description" not in a for a in level1)
    # the failure is recorded in the delivery queue, once, and published with its class
    assert [(r["state"], r["attempts"]) for r in level1_queue] == [("failed", 1)]
    assert failed.type == "incident.notice.failed.v1"
    assert {k: failed.data[k] for k in ("principal", "level", "reason", "detail", "attempts")} == {
        "principal": "p-chen",
        "level": 1,
        "reason": "refused",
        "detail": "HTTP 400",
        "attempts": 1,
    }
    assert (delivered.data["principal"], delivered.data["adapter"]) == ("p-zhou", "webhook")
    # knowledge over these events (ledger time = event time here): notified, not delivered
    mine = [parse_event(r.value)[0] for r in activity]
    ledger = [
        LedgerEvent(i, e.time, e)
        for i, e in enumerate(
            [*[e for e in mine if e.subject == incident], *events, failed, delivered]
        )
    ]
    known = knowledge_as_of(incident, ledger, datetime.now(UTC) + timedelta(seconds=1))
    chen, zhou = known.get("p-chen"), known.get("p-zhou")
    assert chen is not None and chen.delivery is not None and zhou is not None
    assert "notified" in chen.via and chen.knew_at is None
    assert chen.delivery.delivered_at is None and chen.delivery.failed_at is not None
    assert zhou.delivery is not None and zhou.delivery.delivered_at is not None


async def test_a_webhook_that_takes_seconds_does_not_hold_up_an_acknowledgement(
    settings: CommonSettings, tmp_path: Path, receiver: Receiver
) -> None:
    """The webhook holds the level-1 notice to Chen until the test lets it answer. Her
    acknowledgement, recorded meanwhile, clears the escalation while the webhook still
    holds the notice: delivery runs beside the consumers, not in them. Once let go, the
    notice is delivered and recorded once."""
    receiver.stall = 120.0  # a cap: the test lets it go long before
    async with stack_with_webhook(
        settings, tmp_path, receiver.base + "/stall", notify_retries=0, notify_timeout_seconds=120
    ) as (intake, escalation):
        incident = (await intake.post("/v1/reports", json=SEED_CASE)).json()["incident_id"]

        def mine(received: list[Received]) -> list[Received]:
            return [r for r in received if json.loads(r.body)["incident_id"] == incident]

        async def stalled() -> bool:  # the webhook has the notice and holds it
            return bool(mine(receiver.at("/stall")))

        await eventually(stalled, timeout=20)

        async def acknowledged() -> bool:
            answer = await intake.post(
                f"/v1/incidents/{incident}/acknowledge",
                headers={"authorization": "Bearer dev-chen-token"},
            )
            return answer.status_code == 202

        await eventually(acknowledged, timeout=10)

        async def cleared() -> bool:
            events = await escalations_of(settings, incident)
            return any(e.type.endswith("cleared.v1") for e in events)

        await eventually(cleared, timeout=30)
        held_at_clear = not mine(receiver.answered)
        receiver.released.set()

        async def delivered() -> list[Any] | None:
            async with escalation.state.escalation.runtime.db.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT state, attempts FROM deliveries WHERE incident_id = $1", incident
                )
            return rows if rows and rows[0]["state"] != "pending" else None

        rows = await eventually(delivered, timeout=15)
    assert held_at_clear, "the clear waited for the webhook's answer"
    assert [(r["state"], r["attempts"]) for r in rows] == [("delivered", 1)]
    [attempt] = mine(receiver.at("/stall"))
    assert uuid.UUID(attempt.headers[DELIVERY_HEADER])  # the notice's event id


class Recording:
    """A notifier that delivers every notice and keeps (incident, principal) of each."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, str]] = []

    async def deliver(
        self,
        incident_id: str,
        notice: Notified,
        *,
        delivery_id: str | None = None,
        still_allowed: StillAllowed | None = None,
    ) -> bool:
        self.delivered.append((incident_id, notice.principal))
        return True


async def test_a_notice_whose_worker_died_is_delivered_once_its_lease_runs_out(
    settings: CommonSettings,
) -> None:
    """Three queued notices as a dead worker left them: one whose lease ran out (it is
    delivered now), one whose lease still runs (a live worker has it: untouched), and one
    leased five times already (it counts as failed without another try)."""
    escalation = create_escalation(EscalationSettings(**settings.model_dump()))
    recording = Recording()
    esc = escalation.state.escalation
    esc.notifier = recording
    now = datetime.now(UTC)
    rows = {
        "lapsed": (-1.0, 1),
        "leased": (60.0, 1),
        "given-up": (-1.0, 5),
    }
    notices: list[str] = []
    async with serving(escalation, "http://escalation"):
        # their decisions came first: a notice with no state yet is held, not delivered
        decisions = [
            event_record(
                "incident.triage",
                make_event(
                    "incident.triaged.v1", subject=name, data=two_levels(), source="/t", time=now
                ),
                i,
            )
            for i, name in enumerate(rows)
        ]
        await esc.on_triage(decisions)
        async with esc.runtime.db.acquire() as conn:
            for name, (lease_left, attempts) in rows.items():
                event = make_event(
                    "incident.notified.v1",
                    subject=name,
                    data=NOTICE,
                    source="/services/triage",
                    time=now,
                )
                notices.append(event.id)
                await conn.execute(
                    "INSERT INTO deliveries (event_id, incident_id, body, attempts, next_at)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    event.id,
                    name,
                    event.to_bytes(),
                    attempts,
                    now + timedelta(seconds=lease_left),
                )

        async def settled() -> dict[str, tuple[str, int]] | None:
            # these notices only: the given-up one asks level 2 (p-zhou) at once
            async with esc.runtime.db.acquire() as conn:
                got = {
                    r["incident_id"]: (r["state"], r["attempts"])
                    for r in await conn.fetch(
                        "SELECT incident_id, state, attempts FROM deliveries"
                        " WHERE event_id = ANY($1::text[])",
                        notices,
                    )
                }
            done = got["lapsed"][0] != "pending" and got["given-up"][0] != "pending"
            return got if done else None

        states = await eventually(settled, timeout=10)
    assert states == {
        "lapsed": ("delivered", 2),
        "leased": ("pending", 1),
        "given-up": ("failed", 6),
    }
    assert [incident for incident, who in recording.delivered if who == "p-chen"] == ["lapsed"]


class OneIncident:
    """An escalation app (started by `serving(self.app, ...)`) whose notices go to
    `notifier`, and events of one new incident."""

    def __init__(self, settings: CommonSettings, notifier: Any = None) -> None:
        self.app = create_escalation(EscalationSettings(**settings.model_dump()))
        self.esc = self.app.state.escalation
        if notifier is not None:
            self.esc.notifier = notifier
        self.incident = str(uuid.uuid4())
        self.now = datetime.now(UTC)

    def event(self, type_: str, data: Any) -> Any:
        return make_event(type_, subject=self.incident, data=data, source="/t", time=self.now)


def two_levels() -> Triaged:
    """A decision asking p-chen at level 1 and p-zhou at level 2, ten minutes each."""
    return Triaged(
        category="harassment",
        severity="critical",
        policy_version="t",
        chain=[
            ChainLevel(
                level=1, role="hr_case_handler", recipients=["p-chen"], acknowledge_within=600
            ),
            ChainLevel(level=2, role="hr_head", recipients=["p-zhou"], acknowledge_within=600),
        ],
        report_digest=DIGEST,
    )


async def held(esc: Any, notice_id: str) -> bool:
    """Whether a worker took the notice and held it for its incident's decision: given
    back untried (no lease counted) and not due now (migration 0010)."""
    async with esc.runtime.db.acquire() as conn:
        return bool(
            await conn.fetchval(
                "SELECT state = 'pending' AND attempts = 0 AND next_at > clock_timestamp()"
                " FROM deliveries WHERE event_id = $1",
                notice_id,
            )
        )


async def held_before_its_decision(esc: Any, notice: Any) -> None:
    """Hand the notice to the activity consumer before any decision, and wait until a
    worker has taken it and held it."""
    await esc.on_activity([event_record("incident.activity", notice, 0)])
    await eventually(lambda: held(esc, notice.id), timeout=10)


async def outcome_of(esc: Any, notice_id: str) -> str | None:
    """The notice's state in the queue once it is no longer pending (None: pending)."""
    async with esc.runtime.db.acquire() as conn:
        state: str | None = await conn.fetchval(
            "SELECT state FROM deliveries WHERE event_id = $1", notice_id
        )
    return state if state != "pending" else None


async def published(esc: Any, incident: str) -> list[dict[str, Any]]:
    """The events escalation appended for the incident, in order (its outbox)."""
    async with esc.runtime.db.acquire() as conn:
        return [
            json.loads(bytes(r["value"]))
            for r in await conn.fetch(
                "SELECT value FROM outbox WHERE key = $1 ORDER BY position", incident
            )
        ]


async def test_a_notice_held_for_its_decision_that_then_fails_asks_the_next_level(
    settings: CommonSettings,
) -> None:
    """Level 1's notice comes on incident.activity, the decision on incident.triage: no
    order between them. A notice taken before escalation has the decision is held, not
    tried; once the decision comes it is tried, and when it fails level 2 is asked at
    once."""

    class Failing:
        async def deliver(
            self,
            incident_id: str,
            notice: Notified,
            *,
            delivery_id: str | None = None,
            still_allowed: StillAllowed | None = None,
        ) -> bool:
            return False

    one = OneIncident(settings, Failing())
    esc, event, incident = one.esc, one.event, one.incident
    decision = two_levels()

    async with serving(one.app, "http://escalation"):
        notice = event("incident.notified.v1", NOTICE)
        await held_before_its_decision(esc, notice)
        await esc.on_triage(
            [event_record("incident.triage", event("incident.triaged.v1", decision), 0)]
        )

        assert await eventually(lambda: outcome_of(esc, notice.id), timeout=30) == "failed"
        async with esc.runtime.db.acquire() as conn:
            state = json.loads(
                await conn.fetchval(
                    "SELECT state FROM escalation_state WHERE incident_id = $1", incident
                )
            )
        events = await published(esc, incident)
    assert state["current_level"] == 2
    # the failure is published first (a class, no adapter noted by this fake), then the move
    assert [e["type"] for e in events[:2]] == [
        "incident.notice.failed.v1",
        "incident.escalated.v1",
    ]
    assert events[0]["data"]["reason"] == "gave_up"
    moves = [e["data"] for e in events if e["type"] == "incident.escalated.v1"]
    assert {"level": 2, "recipients": ["p-zhou"], "reason": "delivery_failed"}.items() <= moves[
        0
    ].items()


async def held_alarms() -> float:
    return REGISTRY.get_sample_value("incidents_escalation_held_alarms_total") or 0.0


async def held_incidents() -> float | None:
    return REGISTRY.get_sample_value("incidents_escalation_held_incidents")


async def test_a_notice_held_past_the_limit_for_a_decision_never_read_is_alarmed_once(
    settings: CommonSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """Review D7: the decision never reaches escalation (dead-lettered here), so triage's
    level-1 notice is held for good, nobody is told and no deadline runs. Within the
    limit nothing is raised; past it (escalation's clock moved on, not the wall clock)
    the delivery worker's own round alarms the incident once: an error line naming the
    incident and nobody else, the counter, the gauge. A second notice of the incident
    raises nothing more; the decision, when it comes at last, drops the gauge and the
    notice is delivered."""
    caplog.set_level(logging.ERROR, logger="services.escalation.handlers")
    recording = Recording()
    one = OneIncident(settings, recording)
    esc, event, incident = one.esc, one.event, one.incident
    before = await held_alarms()

    async with serving(one.app, "http://escalation"):
        notice = event("incident.notified.v1", NOTICE)
        await held_before_its_decision(esc, notice)
        assert await esc.alarm_held() == 0  # held, but within the limit
        assert await held_incidents() == 0
        later = datetime.now(UTC) + timedelta(seconds=esc.held_alarm + 60)
        esc.now = lambda: later

        async def raised() -> bool:
            return await held_alarms() > before

        await eventually(raised, timeout=20)  # the worker's round, not the test, raised it
        assert await held_incidents() == 1
        again = event("incident.notified.v1", NOTICE.model_copy(update={"level": 2}))
        await held_before_its_decision(esc, again)
        assert await esc.alarm_held() == 0  # once per incident, whatever comes after
        assert await held_incidents() == 1
        async with esc.runtime.db.acquire() as conn:
            alarmed = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE alarmed_at IS NOT NULL"
            )

        await esc.on_triage(
            [event_record("incident.triage", event("incident.triaged.v1", two_levels()), 0)]
        )
        assert await eventually(lambda: outcome_of(esc, notice.id), timeout=30) == "delivered"
        assert await esc.alarm_held() == 0
        assert await held_incidents() == 0
    assert await held_alarms() == before + 1
    assert alarmed == 2
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    mine = [line for line in lines if incident in line]
    assert len(mine) == 1, lines
    assert "p-chen" not in mine[0] and "deadletter" in mine[0]
    assert ("p-chen" in [who for i, who in recording.delivered if i == incident]) is True


async def test_a_notice_queued_for_someone_excluded_since_is_never_sent(
    settings: CommonSettings,
) -> None:
    """Level 1's notice comes on incident.activity, a reassignment that removes its
    recipient on incident.triage: no order between them, and a notice waits in the queue
    while a webhook is retried. A notice whose recipient the incident excludes by the
    time the worker takes it is not sent: recorded failed (`gave_up`, no adapter)."""
    recording = Recording()
    one = OneIncident(settings, recording)
    esc, event, incident = one.esc, one.event, one.incident
    decision = two_levels()
    removal = {"removed": [{"principal": "p-chen", "rule": "accused"}]}

    async with serving(one.app, "http://escalation"):
        await esc.on_triage(
            [
                event_record("incident.triage", event("incident.triaged.v1", decision), 0),
                event_record("incident.triage", event("incident.reassigned.v1", removal), 1),
            ]
        )
        notice = event("incident.notified.v1", NOTICE)
        await esc.on_activity([event_record("incident.activity", notice, 0)])

        # p-chen's notice only: level 2's (p-zhou), asked at once because level 1 has
        # nobody left, comes back through the bus and may be delivered first.
        assert await eventually(lambda: outcome_of(esc, notice.id), timeout=30) == "failed"
        outcomes = await published(esc, incident)
    # level 2 (p-zhou), asked at once, may have been told already
    assert "p-chen" not in {principal for _, principal in recording.delivered}
    (failed,) = [e["data"] for e in outcomes if e["type"] == "incident.notice.failed.v1"]
    assert (failed["principal"], failed["reason"], failed["adapter"]) == ("p-chen", "gave_up", None)


async def test_a_notice_queued_before_its_incident_closed_is_never_sent(
    settings: CommonSettings,
) -> None:
    """A notice (a reminder, an ask) waits in the queue while the handler closes the
    incident: the worker that takes it after the close sends nothing and records it
    failed (`gave_up`, `CLOSED_DETAIL`, no adapter). The failure moves nothing on."""
    recording = Recording()
    one = OneIncident(settings, recording)
    esc, event, incident = one.esc, one.event, one.incident
    close = {"principal": "p-chen", "status": "closed", "outcome": "sealed"}

    async with serving(one.app, "http://escalation"):
        await esc.on_triage(
            [event_record("incident.triage", event("incident.triaged.v1", two_levels()), 0)]
        )
        await esc.on_activity(
            [event_record("incident.activity", event("incident.status.changed.v1", close), 0)]
        )
        notice = event("incident.notified.v1", NOTICE)
        await esc.on_activity([event_record("incident.activity", notice, 1)])

        assert await eventually(lambda: outcome_of(esc, notice.id), timeout=30) == "failed"
        outcomes = await published(esc, incident)
    assert recording.delivered == []
    assert [e["type"] for e in outcomes] == ["incident.notice.failed.v1"]  # no move
    failed = outcomes[0]["data"]
    assert (failed["reason"], failed["adapter"], failed["detail"]) == (
        "gave_up",
        None,
        CLOSED_DETAIL,
    )


async def test_a_webhook_retry_is_never_sent_to_a_recipient_excluded_during_its_backoff(
    settings: CommonSettings, receiver: Receiver
) -> None:
    """The webhook answers 503 to p-chen's notice, then would answer 200. During the
    backoff, a reassignment removes her (escalation folds it). The retry is not sent:
    one POST named her, and the notice is recorded failed, `gave_up`, not sent because
    she is excluded (review R3)."""
    one = OneIncident(settings)
    esc, event, incident = one.esc, one.event, one.incident
    removal = event(
        "incident.reassigned.v1", {"removed": [{"principal": "p-chen", "rule": "accused"}]}
    )
    waits: list[float] = []

    async def backoff(delay: float) -> None:  # the wait before a retry: she is removed now
        waits.append(delay)
        if len(waits) == 1:
            await esc.on_triage([event_record("incident.triage", removal, 1)])

    esc.notifier = hook(receiver, "/once", sleep=backoff)
    async with serving(one.app, "http://escalation"):
        decision = event("incident.triaged.v1", two_levels())
        await esc.on_triage([event_record("incident.triage", decision, 0)])
        notice = event("incident.notified.v1", NOTICE)
        await esc.on_activity([event_record("incident.activity", notice, 0)])

        state = await eventually(lambda: outcome_of(esc, notice.id), timeout=30)
        outcomes = await published(esc, incident)
        async with esc.runtime.db.acquire() as conn:
            excluded = json.loads(
                await conn.fetchval(
                    "SELECT state -> 'excluded' FROM escalation_state WHERE incident_id = $1",
                    incident,
                )
            )
    to_chen = [
        r
        for r in receiver.at("/once")
        if json.loads(r.body)["incident_id"] == incident
        and json.loads(r.body)["principal"] == "p-chen"
    ]
    assert excluded == ["p-chen"]
    assert state == "failed"
    assert len(to_chen) == 1  # the first attempt, before she was removed; no retry
    (failed,) = [
        e["data"]
        for e in outcomes
        if e["type"] == "incident.notice.failed.v1" and e["data"]["principal"] == "p-chen"
    ]
    assert {k: failed[k] for k in ("adapter", "reason", "detail", "attempts")} == {
        "adapter": "webhook",
        "reason": "gave_up",
        "detail": EXCLUDED_DETAIL,
        "attempts": 1,
    }


@pytest.mark.parametrize("removed", [False, True], ids=["allowed", "excluded"])
async def test_a_notice_seen_before_its_incident_s_decision_waits_for_it(
    settings: CommonSettings, removed: bool
) -> None:
    """p-chen's notice is taken before escalation has the incident's decision (other
    topic, no order): it is held, not sent, since nobody can tell yet whether a removal
    on incident.triage excludes her (review L3). The decision makes it due at once:
    sent when she is allowed; not sent, recorded failed (`gave_up`), when a reassignment
    in the same batch removed her. The 30 s waited here is less than the hold's own
    re-check (60 s), so it is the decision that wakes the notice."""
    recording = Recording()
    one = OneIncident(settings, recording)
    esc, event, incident = one.esc, one.event, one.incident

    async with serving(one.app, "http://escalation"):
        notice = event("incident.notified.v1", NOTICE)
        await held_before_its_decision(esc, notice)
        told_before = list(recording.delivered)
        triage = [event_record("incident.triage", event("incident.triaged.v1", two_levels()), 0)]
        if removed:
            removal = {"removed": [{"principal": "p-chen", "rule": "accused"}]}
            triage.append(
                event_record("incident.triage", event("incident.reassigned.v1", removal), 1)
            )
        await esc.on_triage(triage)

        state = await eventually(lambda: outcome_of(esc, notice.id), timeout=30)
        outcomes = await published(esc, incident)
    assert told_before == []
    told = [who for i, who in recording.delivered if i == incident and who == "p-chen"]
    mine = [e for e in outcomes if e["data"].get("notice_id") == notice.id]
    if removed:
        assert (state, told) == ("failed", [])
        (failed,) = [e["data"] for e in mine]
        assert (failed["reason"], failed["detail"], failed["adapter"]) == (
            "gave_up",
            EXCLUDED_DETAIL,
            None,
        )
    else:
        assert (state, told) == ("delivered", ["p-chen"])
        assert [e["type"] for e in mine] == ["incident.notice.delivered.v1"]
