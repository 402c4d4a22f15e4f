"""Delivery adapters, their pure logic: signatures, the retry policy, the mail, the settings.

The webhook adapter runs against `httpx.MockTransport` here (the real HTTP and SMTP
servers are in tests/integration/test_notify.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from services.domain.events import Notified
from services.escalation.app import select_notifier
from services.escalation.handlers import _StillAllowed
from services.escalation.notify import (
    CLOSED_DETAIL,
    DELIVERY_HEADER,
    EXCLUDED_DETAIL,
    SIGNATURE_HEADER,
    AddressLookup,
    FanoutNotifier,
    LogNotifier,
    Outcome,
    RetryPolicy,
    SmtpNotifier,
    StillAllowed,
    WebhookNotifier,
    backoff_delay,
    build_notifier,
    recording,
    retry_after_seconds,
    retryable_status,
    signature_header,
    smtp_transient,
    valid_address,
    verify_signature,
)
from services.infra.settings import EscalationSettings

DIGEST = "sha256:" + "ab" * 32
NOTICE = Notified(principal="p-chen", channel="escalation", level=1, report_digest=DIGEST)
INCIDENT = "0b6c2f7e-9d1a-4c1e-8f0e-2f8d6b1f2a33"
SECRET = "whsec-unit-test-secret-0123456789abcdef"
NOW = 1_750_000_000.0
URL = "https://hooks.example/notify/PATHTOKEN?key=QUERYTOKEN"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No INCIDENTS_ variable of the developer's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("INCIDENTS_"):
            monkeypatch.delenv(name)


# -- signatures ------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"incident_id":"x"}'
    expected = hmac.new(SECRET.encode(), b"1750000000." + body, hashlib.sha256).hexdigest()
    assert signature_header(SECRET, body, 1_750_000_000) == f"t=1750000000,v1={expected}"


def test_a_signed_body_verifies_within_the_tolerance() -> None:
    body = b'{"a":1}'
    header = signature_header(SECRET, body, int(NOW))
    assert verify_signature(SECRET, header, body, 300, now=NOW)
    assert verify_signature(SECRET.encode(), header, body, 300, now=NOW + 299)
    assert verify_signature(SECRET, header, body, 300, now=NOW - 299)  # small clock skew


@pytest.mark.parametrize(
    ("secret", "body", "now"),
    [
        ("another-secret", b'{"a":1}', NOW),  # wrong key
        (SECRET, b'{"a":2}', NOW),  # body changed
        (SECRET, b'{"a":1} ', NOW),  # even by a byte
        (SECRET, b'{"a":1}', NOW + 301),  # replayed too late
        (SECRET, b'{"a":1}', NOW - 301),  # from too far in the future
        ("", b'{"a":1}', NOW),  # no secret never verifies
    ],
)
def test_anything_else_does_not_verify(secret: str, body: bytes, now: float) -> None:
    header = signature_header(SECRET, b'{"a":1}', int(NOW))
    assert not verify_signature(secret, header, body, 300, now=now)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "t=1750000000",
        "v1=abcd",
        "t=abc,v1=abcd",
        "t=-1750000000,v1=abcd",
        "t=\u0661\u0667\u0665\u0660,v1=abcd",  # non-ASCII digits
        "t=1750000000,v1=é",
        "t=99999999999999999999,v1=abcd",
    ],
)
def test_a_malformed_header_is_not_valid_and_does_not_raise(header: str | None) -> None:
    assert not verify_signature(SECRET, header, b"{}", 300, now=NOW)


def test_one_matching_v1_is_enough_while_a_secret_is_rotated() -> None:
    body = b"{}"
    old = signature_header("old-secret", body, int(NOW)).split(",")[1]
    new = signature_header(SECRET, body, int(NOW))
    assert verify_signature(SECRET, f"{new},{old}", body, now=NOW)
    assert verify_signature("old-secret", f"{new},{old}", body, now=NOW)
    assert not verify_signature("third", f"{new},{old}", body, now=NOW)


# -- retry policy ------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    assert backoff_delay(0, 0.5, 30, lambda: 1.0) == 0.5
    assert backoff_delay(1, 0.5, 30, lambda: 1.0) == 1.0
    assert backoff_delay(2, 0.5, 30, lambda: 1.0) == 2.0
    assert backoff_delay(2, 0.5, 30, lambda: 0.0) == 1.0  # at least half
    assert backoff_delay(20, 0.5, 30, lambda: 1.0) == 30.0


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("7", NOW) == 7.0
    assert retry_after_seconds(None, NOW) is None
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds("\u0663", NOW) is None
    later = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=12)
    assert retry_after_seconds(format_datetime(later, usegmt=True), NOW) == pytest.approx(12)
    earlier = datetime.fromtimestamp(NOW, UTC) - timedelta(seconds=12)
    assert retry_after_seconds(format_datetime(earlier, usegmt=True), NOW) == 0.0


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        *[(500, True), (502, True), (503, True), (429, True), (408, True)],
        *[(400, False), (401, False), (403, False), (404, False), (410, False), (301, False)],
    ],
)
def test_which_answers_are_retried(status: int, retried: bool) -> None:
    assert retryable_status(status) is retried


class Recorder:
    """A MockTransport handler answering from a script, recording what it received."""

    def __init__(self, *answers: int | httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(answer)


def webhook(
    handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float], **retry: Any
) -> WebhookNotifier:
    """A webhook to `handler`; `retry`: fields of its `RetryPolicy` other than these."""

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    policy: dict[str, Any] = {
        "timeout": 1.0,
        "retries": 3,
        "backoff": 0.5,
        "sleep": sleep,
        "rand": lambda: 1.0,
        **retry,
    }
    return WebhookNotifier(
        URL,
        SECRET,
        RetryPolicy(**policy),
        transport=httpx.MockTransport(handler),
        clock=lambda: NOW,
    )


async def test_a_webhook_posts_the_signed_notice_and_nothing_else() -> None:
    got = Recorder(204)
    delivered = await webhook(got, []).deliver(INCIDENT, NOTICE)
    assert delivered is True
    (request,) = got.requests
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    body = request.content
    assert json.loads(body) == {
        "incident_id": INCIDENT,
        "principal": "p-chen",
        "level": 1,
        "channel": "escalation",
        "report_digest": DIGEST,
        "sent_at": "2025-06-15T15:06:40.000000Z",
    }
    assert verify_signature(SECRET, request.headers[SIGNATURE_HEADER], body, now=NOW)
    assert len(request.headers[DELIVERY_HEADER]) == 32


async def test_a_given_delivery_id_is_the_delivery_header_of_every_attempt() -> None:
    got = Recorder(503, 503, 204)
    assert await webhook(got, []).deliver(INCIDENT, NOTICE, delivery_id="evt-1") is True
    assert [r.headers[DELIVERY_HEADER] for r in got.requests] == ["evt-1"] * 3


async def test_5xx_is_retried_with_exponential_backoff_then_delivered() -> None:
    sleeps: list[float] = []
    got = Recorder(503, 500, 200)
    assert await webhook(got, sleeps).deliver(INCIDENT, NOTICE) is True
    assert len(got.requests) == 3
    assert sleeps == [0.5, 1.0]
    ids = {r.headers[DELIVERY_HEADER] for r in got.requests}
    assert len(ids) == 1  # one delivery id across the retries: receivers can drop duplicates
    for request in got.requests:  # every attempt carries its own valid signature
        assert verify_signature(SECRET, request.headers[SIGNATURE_HEADER], request.content, now=NOW)


async def test_a_server_that_always_fails_gets_retries_plus_one_attempts_then_false() -> None:
    sleeps: list[float] = []
    got = Recorder(500)
    assert await webhook(got, sleeps, retries=2).deliver(INCIDENT, NOTICE) is False
    assert len(got.requests) == 3
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301, 302])
async def test_other_4xx_and_redirects_fail_at_once(status: int) -> None:
    answer = httpx.Response(status, headers={"location": "https://elsewhere.example/"})
    sleeps: list[float] = []
    got = Recorder(answer)
    assert await webhook(got, sleeps).deliver(INCIDENT, NOTICE) is False
    assert len(got.requests) == 1
    assert sleeps == []


async def test_429_waits_as_long_as_retry_after_asks() -> None:
    sleeps: list[float] = []
    got = Recorder(httpx.Response(429, headers={"retry-after": "4"}), 200)
    assert await webhook(got, sleeps).deliver(INCIDENT, NOTICE) is True
    assert sleeps == [4.0]


async def test_a_retry_after_beyond_the_longest_wait_counts_as_failed_for_good() -> None:
    sleeps: list[float] = []
    got = Recorder(httpx.Response(503, headers={"retry-after": "3600"}), 200)
    assert await webhook(got, sleeps, max_delay=30.0).deliver(INCIDENT, NOTICE) is False
    assert len(got.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("reset"),
    ],
)
async def test_connection_errors_and_timeouts_are_retried(error: Exception) -> None:
    sleeps: list[float] = []
    got = Recorder(error, error, 200)
    assert await webhook(got, sleeps).deliver(INCIDENT, NOTICE) is True
    assert len(got.requests) == 3


async def test_an_attempt_is_bounded_by_the_timeout_as_a_whole() -> None:
    calls = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(5)
        return httpx.Response(200)

    sleeps: list[float] = []
    notifier = webhook(slow, sleeps, timeout=0.05, retries=1)  # type: ignore[arg-type]
    assert await notifier.deliver(INCIDENT, NOTICE) is False
    assert calls == 2


async def test_an_unexpected_error_is_a_false_never_an_exception() -> None:
    got = Recorder(RuntimeError("boom"))
    assert await webhook(got, []).deliver(INCIDENT, NOTICE) is False
    bad = WebhookNotifier("not a url", SECRET, RetryPolicy(5.0, retries=0))
    assert await bad.deliver(INCIDENT, NOTICE) is False


async def test_the_client_is_reused_and_reopened_after_close() -> None:
    got = Recorder(200)
    notifier = webhook(got, [])
    await notifier.deliver(INCIDENT, NOTICE)
    first = notifier._client
    await notifier.deliver(INCIDENT, NOTICE)
    assert notifier._client is first
    await notifier.aclose()
    assert await notifier.deliver(INCIDENT, NOTICE) is True
    await notifier.aclose()


class Check:
    """`still_allowed` answering from a script; `log` (shared with the sleep) shows when
    it was asked."""

    def __init__(self, log: list[str], *answers: bool) -> None:
        self.log = log
        self.answers = list(answers)

    async def __call__(self) -> bool:
        self.log.append("check")
        return self.answers.pop(0)


def logged_webhook(steps: list[str], ok_at: int) -> WebhookNotifier:
    """A webhook answering 503 until attempt `ok_at`, then 200, that notes each POST and
    each wait in `steps`."""

    def handler(request: httpx.Request) -> httpx.Response:
        steps.append("POST")
        return httpx.Response(200 if steps.count("POST") >= ok_at else 503)

    async def sleep(delay: float) -> None:
        steps.append("wait")

    return webhook(handler, [], sleep=sleep)


async def test_a_webhook_asks_before_each_retry_and_stops_unsent_once_refused() -> None:
    """503, then a recipient excluded during the backoff: the retry is not sent (SPEC
    invariant 3), and the outcome says why: `gave_up`, not sent, recipient excluded."""
    steps: list[str] = []
    notifier = logged_webhook(steps, ok_at=2)
    with recording() as record:
        delivered = await notifier.deliver(INCIDENT, NOTICE, still_allowed=Check(steps, False))
    assert delivered is False
    assert steps == ["POST", "wait", "check"]  # asked after the wait, before the retry
    assert record.outcomes == [Outcome("webhook", False, 1, "gave_up", EXCLUDED_DETAIL)]


async def test_a_webhook_still_allowed_is_retried_and_a_first_success_asks_nothing() -> None:
    steps: list[str] = []
    check = Check(steps, True, True)
    notifier = logged_webhook(steps, ok_at=3)
    assert await notifier.deliver(INCIDENT, NOTICE, still_allowed=check)
    assert steps == ["POST", "wait", "check", "POST", "wait", "check", "POST"]
    steps.clear()
    first = Check(steps)  # would raise if asked: nothing scripted
    assert await webhook(Recorder(204), []).deliver(INCIDENT, NOTICE, still_allowed=first)
    assert steps == []


@pytest.mark.parametrize("closed", [False, True], ids=["excluded", "closed"])
async def test_a_mail_retry_is_not_sent_to_a_recipient_excluded_or_once_closed_meanwhile(
    monkeypatch: pytest.MonkeyPatch, closed: bool
) -> None:
    """A 451, then the recipient excluded (a plain check answering False), or the
    incident closed (the service's check, review L2), during the backoff."""
    steps: list[str] = []

    def busy(mail: Any, address: str, session: Any) -> None:
        steps.append("SMTP")
        raise smtplib.SMTPResponseException(451, b"try again later")

    notifier = smtp(lambda p: "chen@example.com")
    monkeypatch.setattr(notifier, "_send", busy)
    check = standing_check(steps, (False, True)) if closed else Check(steps, False)
    with recording() as record:
        delivered = await notifier.deliver(INCIDENT, NOTICE, still_allowed=check)
    assert delivered is False
    assert steps == ["SMTP", "check"]
    detail = CLOSED_DETAIL if closed else EXCLUDED_DETAIL
    assert record.outcomes == [Outcome("smtp", False, 1, "gave_up", detail)]


def standing_check(steps: list[str], *answers: tuple[bool, bool] | None) -> _StillAllowed:
    """The service's check before a retry (`_StillAllowed`) over scripted reads of the
    incident's standing: (excluded, closed), or None (no state)."""
    scripted = list(answers)

    async def standing(incident_id: str, principal: str) -> tuple[bool, bool] | None:
        steps.append("check")
        return scripted.pop(0)

    return _StillAllowed(standing, INCIDENT, NOTICE.principal)


async def test_a_webhook_retry_is_not_sent_once_the_incident_is_closed() -> None:
    """Review L2: 503, then the incident closes during the backoff. The service's check
    refuses the retry (a closed incident tells nobody), and the outcome says why: the
    existing `gave_up`, not sent: incident closed (not `recipient excluded`)."""
    steps: list[str] = []
    check = standing_check(steps, (False, True))
    with recording() as record:
        delivered = await logged_webhook(steps, ok_at=2).deliver(
            INCIDENT, NOTICE, still_allowed=check
        )
    assert delivered is False
    assert steps == ["POST", "wait", "check"]
    assert record.outcomes == [Outcome("webhook", False, 1, "gave_up", CLOSED_DETAIL)]
    assert (check.closed, check.excluded, check.unsure) == (True, False, False)


async def test_the_service_check_retries_an_open_incident_and_refuses_an_exclusion_first() -> None:
    """Open and allowed: the retry goes. Excluded and closed at once: named excluded, as
    the first attempt's check names it. No state: never sent on a guess."""
    steps: list[str] = []
    assert await logged_webhook(steps, ok_at=2).deliver(
        INCIDENT, NOTICE, still_allowed=standing_check(steps, (False, False))
    )
    assert steps == ["POST", "wait", "check", "POST"]
    for standing in [(True, True), None]:
        with recording() as record:
            delivered = await logged_webhook([], ok_at=2).deliver(
                INCIDENT, NOTICE, still_allowed=standing_check([], standing)
            )
        assert delivered is False
        assert record.outcomes == [Outcome("webhook", False, 1, "gave_up", EXCLUDED_DETAIL)]


async def test_logs_hold_no_secret_no_url_path_and_no_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="incidents.notify")
    for script in [(503, 200), (500,), (404,), (httpx.ConnectError("x"),), (RuntimeError(URL),)]:
        await webhook(Recorder(*script), [], retries=1).deliver(INCIDENT, NOTICE)
    text = caplog.text
    assert "hooks.example" in text and INCIDENT in text
    for leak in (SECRET, "PATHTOKEN", "QUERYTOKEN", DIGEST, "v1="):
        assert leak not in text
    assert repr(webhook(Recorder(200), [])).count("PATHTOKEN") == 0


def test_a_webhook_needs_a_secret_and_a_sensible_retry_policy() -> None:
    with pytest.raises(ValueError, match="secret"):
        WebhookNotifier(URL, "")
    for policy in (RetryPolicy(1.0, retries=-1), RetryPolicy(0.0), RetryPolicy(1.0, backoff=-0.1)):
        with pytest.raises(ValueError, match=r"^retries >= 0, timeout > 0 and backoff >= 0$"):
            WebhookNotifier(URL, SECRET, policy)
    assert WebhookNotifier(URL, SECRET).retry == RetryPolicy(timeout=5.0, retries=3, backoff=0.5)


# -- SMTP ------------------------------------------------------------------------------


def smtp(lookup: AddressLookup, **kw: object) -> SmtpNotifier:
    async def sleep(delay: float) -> None:
        return None

    options: dict[str, object] = {
        "starttls": False,
        "recipients_by_principal": lookup,
        "console_url": "https://console.example/",
        "retry": RetryPolicy(timeout=0.5, retries=1, sleep=sleep),
        **kw,
    }
    return SmtpNotifier("127.0.0.1", 1, "incidents@example.com", **options)  # type: ignore[arg-type]


def test_the_mail_asks_to_act_and_links_the_console_without_report_content() -> None:
    mail = smtp(lambda p: "chen@example.com").message(INCIDENT, NOTICE, "chen@example.com")
    assert mail["To"] == "chen@example.com"
    assert mail["From"] == "incidents@example.com"
    assert mail["Subject"] == f"Please act on incident {INCIDENT} (level 1)"
    assert mail["Message-ID"].endswith("@example.com>")
    assert mail["Auto-Submitted"] == "auto-generated"
    text = mail.get_content()
    assert f"You have been asked to act on incident {INCIDENT} (level 1)." in text
    assert f"Open https://console.example/incidents/{INCIDENT}\n" in text
    assert DIGEST not in text  # not even the digest: a mail may be forwarded
    assert mail.get_content_type() == "text/plain"


def test_an_odd_incident_id_cannot_break_the_mail_or_the_link() -> None:
    mail = smtp(lambda p: "x@example.com").message("a/b\r\nBcc: x@evil", NOTICE, "x@example.com")
    assert "\n" not in mail["Subject"]
    assert "Bcc" not in mail
    assert "/incidents/a%2Fb%0D%0ABcc%3A%20x%40evil" in mail.get_content()


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("chen@example.com", True),
        ("a.b+c@mail.example.org", True),
        (None, False),
        ("", False),
        ("chen", False),
        ("chen@example.com\r\nBcc: x@evil.example", False),
        ("Chen <chen@example.com>", False),
        ("a@b@example.com", False),
        ("a,b@example.com", False),
    ],
)
def test_only_bare_addresses_are_used(address: str | None, ok: bool) -> None:
    assert valid_address(address) is ok


async def test_no_known_address_is_a_failed_delivery_without_any_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="incidents.notify")
    assert await smtp(lambda p: None).deliver(INCIDENT, NOTICE) is False
    assert await smtp(lambda p: "x@example.com\nBcc: y@evil").deliver(INCIDENT, NOTICE) is False
    assert "evil" not in caplog.text and "retry" not in caplog.text


async def test_a_lookup_that_raises_is_a_false() -> None:
    def broken(principal: str) -> str | None:
        raise KeyError(principal)

    assert await smtp(broken).deliver(INCIDENT, NOTICE) is False


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (smtplib.SMTPServerDisconnected("gone"), True),
        (smtplib.SMTPResponseException(421, b"busy"), True),
        (smtplib.SMTPSenderRefused(451, b"later", "s@example.com"), True),
        (smtplib.SMTPRecipientsRefused({"a@example.com": (450, b"mailbox busy")}), True),
        (smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"no such user")}), False),
        (smtplib.SMTPDataError(554, b"rejected"), False),
        (smtplib.SMTPAuthenticationError(535, b"bad credentials"), False),
        (smtplib.SMTPNotSupportedError("no STARTTLS"), False),
        (ssl.SSLCertVerificationError("bad cert"), False),
    ],
)
def test_which_smtp_failures_are_retried(error: BaseException, transient: bool) -> None:
    assert smtp_transient(error) is transient


def test_the_smtp_adapter_refuses_a_bad_configuration() -> None:
    with pytest.raises(ValueError, match="lookup"):
        SmtpNotifier("h", 25, "s@example.com", console_url="https://c.example")
    with pytest.raises(ValueError, match="sender"):
        SmtpNotifier(
            "h",
            25,
            "Incidents <s@example.com>",
            recipients_by_principal=lambda p: None,
            console_url="https://c.example",
        )
    with pytest.raises(ValueError, match="together"):
        smtp(lambda p: None, username="u")


async def test_the_address_comes_from_the_service_s_lookup_when_the_notice_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Escalation's lookup is async (its projection of the directory events): the
    address as it is at sending time is used, and nobody without one is mailed."""
    addresses = {"p-chen": "chen@example.com"}

    async def lookup(principal: str) -> str | None:
        return addresses.get(principal)

    sent: list[str] = []
    notifier = smtp(lookup)
    monkeypatch.setattr(notifier, "_send", lambda mail, address, _session: sent.append(address))
    assert await notifier.deliver(INCIDENT, NOTICE)
    addresses["p-chen"] = "mei.chen@example.com"  # changed through the directory API
    assert await notifier.deliver(INCIDENT, NOTICE)
    assert not await notifier.deliver(INCIDENT, NOTICE.model_copy(update={"principal": "p-x"}))
    assert sent == ["chen@example.com", "mei.chen@example.com"]


# -- fan-out ---------------------------------------------------------------------------


class Fixed:
    def __init__(self, result: bool | Exception) -> None:
        self.result = result
        self.calls = 0
        self.checks: list[StillAllowed | None] = []

    async def deliver(
        self,
        incident_id: str,
        notice: Notified,
        *,
        delivery_id: str | None = None,
        still_allowed: StillAllowed | None = None,
    ) -> bool:
        self.calls += 1
        self.checks.append(still_allowed)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    async def aclose(self) -> None:
        raise RuntimeError("closing fails too")


async def test_a_fanout_delivers_when_any_channel_delivers() -> None:
    channels = [Fixed(False), Fixed(RuntimeError("x")), Fixed(True)]
    assert await FanoutNotifier(channels).deliver(INCIDENT, NOTICE) is True
    assert all(c.calls == 1 for c in channels)
    assert (
        await FanoutNotifier([Fixed(False), Fixed(RuntimeError("x"))]).deliver(INCIDENT, NOTICE)
        is False
    )
    await FanoutNotifier(channels).aclose()  # never raises either
    with pytest.raises(ValueError):
        FanoutNotifier([])


async def test_a_fanout_gives_every_channel_the_check_before_its_retries() -> None:
    channels = [Fixed(False), Fixed(True)]

    async def allowed() -> bool:
        return True

    await FanoutNotifier(channels).deliver(INCIDENT, NOTICE, still_allowed=allowed)
    assert [c.checks for c in channels] == [[allowed], [allowed]]


async def test_the_log_notifier_always_delivers() -> None:
    assert await LogNotifier().deliver(INCIDENT, NOTICE) is True


# -- settings and selection -----------------------------------------------------------


def test_by_default_notices_go_to_the_log() -> None:
    settings = EscalationSettings()
    assert settings.notify_adapter == "log"
    assert isinstance(build_notifier(settings), LogNotifier)
    assert isinstance(select_notifier(settings, lambda principal: None), LogNotifier)


def test_the_webhook_adapter_needs_a_url_and_a_non_empty_secret() -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_URL"):
        EscalationSettings(notify_adapter="webhook", notify_webhook_secret="s")
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        EscalationSettings(notify_adapter="webhook", notify_webhook_url="http://h.example/")
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        EscalationSettings(
            notify_adapter="webhook", notify_webhook_url="http://h/", notify_webhook_secret="  "
        )
    with pytest.raises(ValidationError, match="http"):
        EscalationSettings(
            notify_adapter="webhook", notify_webhook_url="ftp://h/", notify_webhook_secret="s"
        )


def test_webhook_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCIDENTS_NOTIFY_ADAPTER", "webhook")
    monkeypatch.setenv("INCIDENTS_NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("INCIDENTS_NOTIFY_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("INCIDENTS_NOTIFY_RETRIES", "5")
    monkeypatch.setenv("INCIDENTS_NOTIFY_TIMEOUT_SECONDS", "2.5")
    settings = EscalationSettings()
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    notifier = build_notifier(settings)
    assert isinstance(notifier, WebhookNotifier)
    assert notifier.retry == RetryPolicy(timeout=2.5, retries=5, backoff=0.5)
    assert SECRET not in repr(notifier)


def test_the_smtp_adapter_needs_a_host_and_a_sender_and_takes_the_service_s_lookup() -> None:
    with pytest.raises(ValidationError, match="SMTP_HOST"):
        EscalationSettings(notify_adapter="smtp", notify_smtp_sender="s@example.com")
    with pytest.raises(ValidationError, match="go together"):
        EscalationSettings(notify_smtp_username="u")
    settings = EscalationSettings(
        notify_adapter="smtp",
        notify_smtp_host="mail.example",
        notify_smtp_sender="incidents@example.com",
        notify_smtp_username="u",
        notify_smtp_password="p",
    )
    lookup = {"p-chen": "chen@example.com"}.get
    notifier = select_notifier(settings, lookup)
    assert isinstance(notifier, SmtpNotifier)
    assert (notifier.host, notifier.port, notifier.starttls) == ("mail.example", 587, True)
    assert notifier.recipients_by_principal is lookup
    assert notifier.retry == RetryPolicy(timeout=5.0, retries=3, backoff=0.5, max_delay=30.0)


def production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens: []\n")
    monkeypatch.setenv("INCIDENTS_ENVIRONMENT", "production")
    monkeypatch.setenv("INCIDENTS_DATABASE_URL", "postgresql://i:s@db.internal:5432/incidents")
    monkeypatch.setenv("INCIDENTS_KAFKA_IDEMPOTENCE", "true")
    monkeypatch.setenv("INCIDENTS_TOKENS_FILE", str(tokens))
    monkeypatch.setenv("INCIDENTS_OIDC_JWKS_URL", "https://idp.example/jwks")
    monkeypatch.setenv("INCIDENTS_OIDC_ISSUER", "https://idp.example")
    monkeypatch.setenv("INCIDENTS_OIDC_AUDIENCE", "incidents")
    monkeypatch.setenv("INCIDENTS_KAFKA_SECURITY_PROTOCOL", "SSL")
    for name in ("CAFILE", "CERTFILE", "KEYFILE"):
        monkeypatch.setenv(f"INCIDENTS_KAFKA_SSL_{name}", str(tmp_path / name.lower()))


def test_production_refuses_weak_notification_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    production(monkeypatch, tmp_path)
    monkeypatch.setenv("INCIDENTS_NOTIFY_ADAPTER", "webhook")
    monkeypatch.setenv("INCIDENTS_NOTIFY_WEBHOOK_URL", "https://hooks.example/n")
    monkeypatch.setenv("INCIDENTS_NOTIFY_WEBHOOK_SECRET", "short")
    with pytest.raises(ValidationError, match="32 characters"):
        EscalationSettings()
    monkeypatch.setenv("INCIDENTS_NOTIFY_WEBHOOK_SECRET", "")
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        EscalationSettings()
    monkeypatch.setenv("INCIDENTS_NOTIFY_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("INCIDENTS_NOTIFY_WEBHOOK_URL", "http://hooks.example/n")
    with pytest.raises(ValidationError, match="https"):
        EscalationSettings()
    monkeypatch.setenv("INCIDENTS_NOTIFY_WEBHOOK_URL", "https://hooks.example/n")
    assert EscalationSettings().notify_adapter == "webhook"

    monkeypatch.setenv("INCIDENTS_NOTIFY_ADAPTER", "smtp")
    monkeypatch.setenv("INCIDENTS_NOTIFY_SMTP_HOST", "mail.example")
    monkeypatch.setenv("INCIDENTS_NOTIFY_SMTP_SENDER", "incidents@example.com")
    with pytest.raises(ValidationError, match="CONSOLE_URL"):
        EscalationSettings()
    monkeypatch.setenv("INCIDENTS_CONSOLE_URL", "https://console.example")
    monkeypatch.setenv("INCIDENTS_NOTIFY_SMTP_USERNAME", "u")
    monkeypatch.setenv("INCIDENTS_NOTIFY_SMTP_PASSWORD", "p")
    monkeypatch.setenv("INCIDENTS_NOTIFY_SMTP_STARTTLS", "false")
    with pytest.raises(ValidationError, match="STARTTLS"):
        EscalationSettings()
    monkeypatch.setenv("INCIDENTS_NOTIFY_SMTP_STARTTLS", "true")
    assert EscalationSettings().notify_smtp_starttls is True


# -- outcomes for the ledger (issue 22) -------------------------------------------------


async def test_each_adapter_notes_its_outcome_with_a_class_and_no_secret() -> None:
    with recording() as refused:
        assert await webhook(Recorder(400), []).deliver(INCIDENT, NOTICE) is False
    with recording() as unreachable:
        down = Recorder(httpx.ConnectError("refused"))
        assert await webhook(down, [], retries=1).deliver(INCIDENT, NOTICE) is False
    with recording() as busy:
        assert await webhook(Recorder(503, 204), []).deliver(INCIDENT, NOTICE) is True
    with recording() as nobody:
        assert await smtp(lambda p: None).deliver(INCIDENT, NOTICE) is False
    with recording() as both:
        fan = FanoutNotifier([LogNotifier(), webhook(Recorder(400), [])])
        assert await fan.deliver(INCIDENT, NOTICE) is True

    assert refused.outcomes == [Outcome("webhook", False, 1, "refused", "HTTP 400")]
    assert unreachable.outcomes == [Outcome("webhook", False, 2, "unreachable", "ConnectError")]
    assert busy.delivered() == Outcome("webhook", True, 2)
    assert nobody.failed() == Outcome("smtp", False, 0, "no_address")
    assert both.delivered() == Outcome("log", True, 1)
    assert both.failed() == Outcome("webhook", False, 1, "refused", "HTTP 400")


@pytest.mark.parametrize(
    ("channel", "subject"),
    [
        ("reminder", f"Reminder: a legal deadline of incident {INCIDENT} is near"),
        ("breach", f"Legal deadline missed on incident {INCIDENT}"),
        ("escalation", f"Please act on incident {INCIDENT} (level 2)"),
    ],
)
def test_a_reminder_or_breach_mail_says_what_it_is(channel: str, subject: str) -> None:
    notice = NOTICE.model_copy(update={"channel": channel, "level": 2})
    mail = smtp(lambda p: "chen@example.com").message(INCIDENT, notice, "chen@example.com")
    assert mail["Subject"] == subject
    assert DIGEST not in mail.get_content()
