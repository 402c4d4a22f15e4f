"""Delivering notices to people: one interface, adapters behind it.

Every adapter implements `Notifier.deliver(incident_id, notice, delivery_id=,
still_allowed=) -> bool`, where `delivery_id` names the notice (the service passes its
event id). It returns False when delivery failed for good, after its own retries, and
it never raises. The escalation handler then records `delivery_failed`, and once every
recipient of a level has failed, the next level is asked at once.

`still_allowed`, when given, is asked before every retry (each attempt after the first:
the caller asked before the first, so a first attempt that succeeds costs nothing more).
The service passes its check that the incident does not exclude the recipient now (SPEC
invariant 3) and is not closed, so a reassignment, an amendment, a recusal or the close
that comes while a webhook or mail server is retried stops the retries: on False the
adapter sends nothing more and notes `gave_up` with the check's `detail` attribute
(`refusal`: `CLOSED_DETAIL` for a close), `EXCLUDED_DETAIL` when it has none.

No adapter sends report content. A notice
names the incident, the person, the level and the report's digest, and nothing more.
Logs name the incident, principal, level and outcome. They never hold secrets, URLs'
paths or queries, message text, or response bodies.

- `LogNotifier` (the default) writes one log line per notice.
- `WebhookNotifier` POSTs a JSON notice, signed with HMAC-SHA256 (see below), and
  retries connection errors, timeouts, 408, 429 and 5xx with exponential backoff and
  jitter. A `Retry-After` is honoured (seconds or an HTTP date), and one longer than
  `max_delay` counts as failed for good: a notice that can't arrive in time should hand
  over to the next level. Other answers (3xx, 4xx) fail at once, and redirects are not
  followed. One `httpx.AsyncClient` is reused.
- `SmtpNotifier` sends a plain-text mail with the stdlib `smtplib`, in a thread. It uses
  STARTTLS (certificate verified) and a login when configured. It retries connection
  errors, timeouts and 4xx replies, and fails at once on 5xx or TLS errors. The
  address comes from a `recipients_by_principal` lookup that the service provides
  (plain or async): escalation's projection of the directory events
  (`services.escalation.addresses`), so a change made through the directory API
  counts for the next notice.
- `FanoutNotifier` delivers to several adapters at once. A notice counts as delivered
  if any of them delivered it.

Every attempt is bounded by `timeout`. One `deliver` therefore takes at most about
`(retries + 1) * timeout` plus the backoff (`backoff * (2**retries - 1)`, each delay
capped at `max_delay`). With the defaults (3 retries, 5 s, 0.5 s) that is about 24 s.
The service queues notices durably and a worker delivers several at once
(`services.escalation.handlers`), so this bounds how long one notice takes, never how
long the consumers wait; it also sets the worker's lease on a notice.

Webhook signature, like Stripe's scheme: every request carries

    X-Incidents-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

and `X-Incidents-Delivery: <id>`, the `delivery_id` (a random one without it), which is
the same on every retry of one notice and when the notice is delivered again after a
crash, so a receiver can drop duplicates. Each attempt is signed again with its own timestamp. A
receiver recomputes the HMAC over the raw body and checks that `t` is recent:
`verify_signature(secret, header, body, tolerance=300)`. Several `v1=` entries may
appear, one per secret while a secret is rotated, and one match is enough. The body is

    {"incident_id", "principal", "level", "channel", "report_digest", "sent_at"}

where `sent_at` (RFC 3339 UTC) is the time of the attempt.

What happened, for the ledger: a caller that wants to know how a `deliver` went (which
adapter, how many attempts, why it failed) opens `recording()` around it; each adapter
notes its outcome there (`Outcome`: a reason class and a detail such as `HTTP 400`,
never an address, URL or server text). It travels in a context variable, so the
`Notifier` protocol stays a bool and a fan-out's adapters note into the same record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import json
import logging
import random as _random
import re
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parsedate_to_datetime
from typing import ClassVar, Final, Protocol
from urllib.parse import quote, urlsplit

import httpx
from prometheus_client import Counter

from services.domain.events import NoticeAdapter, NoticeFailure, Notified
from services.infra.settings import EscalationSettings

log = logging.getLogger("incidents.notify")
AddressLookup = Callable[[str], str | Awaitable[str | None] | None]
"""principal -> e-mail address (or None), plain or async."""

SIGNATURE_HEADER = "X-Incidents-Signature"
DELIVERY_HEADER = "X-Incidents-Delivery"
DEFAULT_TOLERANCE = 300
DELIVERIES = Counter(
    "incidents_notify_deliveries",
    "Notices handed to an adapter, by adapter and outcome (delivered or failed).",
    ["adapter", "outcome"],
)
ATTEMPTS_RETRIED = Counter(
    "incidents_notify_retries", "Delivery attempts that failed and were retried.", ["adapter"]
)

Sleep = Callable[[float], Awaitable[None]]
StillAllowed = Callable[[], Awaitable[bool]]
"""Asked before each retry: may the notice still be sent (False: stop, not sent). Why it
refused is read from its `detail` attribute, if it has one (`refusal`)."""
EXCLUDED_DETAIL: Final = "not sent: recipient excluded"
"""The `detail` of a notice not sent because its recipient was excluded since it was
queued (before the first attempt, by the delivery worker; before a retry, by the adapter)."""
CLOSED_DETAIL: Final = "not sent: incident closed"
"""The `detail` of a notice not sent because its incident was closed since it was queued
(before the first attempt, by the delivery worker; before a retry, by the adapter): a
closed incident tells nobody."""


def refusal(still_allowed: StillAllowed) -> str:
    """Why `still_allowed` answered False: its `detail` attribute when it is a string
    (the service's check names a close so), else `EXCLUDED_DETAIL`."""
    detail = getattr(still_allowed, "detail", None)
    return detail if isinstance(detail, str) and detail else EXCLUDED_DETAIL


@dataclass(frozen=True)
class Outcome:
    """One adapter's outcome of one notice: what `incident.notice.*.v1` records (no
    adapter: the delivery worker decided without one, e.g. a recipient excluded)."""

    adapter: NoticeAdapter | None
    delivered: bool
    attempts: int
    reason: NoticeFailure | None = None
    detail: str | None = None


@dataclass
class Record:
    """The outcomes noted during one `deliver` (several for a fan-out)."""

    outcomes: list[Outcome] = field(default_factory=list)

    def delivered(self) -> Outcome | None:
        """The first adapter that delivered, if any."""
        return next((o for o in self.outcomes if o.delivered), None)

    def failed(self) -> Outcome | None:
        """The last adapter's failure, if any."""
        return next((o for o in reversed(self.outcomes) if not o.delivered), None)


_RECORD: ContextVar[Record | None] = ContextVar("incidents_notify_record", default=None)


@contextmanager
def recording() -> Iterator[Record]:
    """Collect the outcomes the adapters note while the block runs."""
    record = Record()
    token = _RECORD.set(record)
    try:
        yield record
    finally:
        _RECORD.reset(token)


def note(
    adapter: NoticeAdapter,
    attempts: int,
    reason: NoticeFailure | None = None,
    detail: str | None = None,
) -> None:
    """An adapter's outcome (delivered when `reason` is None), if someone is recording."""
    record = _RECORD.get()
    if record is not None:
        record.outcomes.append(Outcome(adapter, reason is None, attempts, reason, detail))


class Notifier(Protocol):
    """Delivers one notice; False when delivery failed for good (after its retries), or
    when `still_allowed`, asked before each retry, answered False."""

    async def deliver(
        self,
        incident_id: str,
        notice: Notified,
        *,
        delivery_id: str | None = None,
        still_allowed: StillAllowed | None = None,
    ) -> bool: ...


class Adapter(Notifier, Protocol):
    """A notifier the service owns: closed when the service stops."""

    async def aclose(self) -> None: ...


class LogNotifier:
    """Delivery by log line: enough for development and for the record of who was told.
    One attempt, never retried: `still_allowed` is never asked."""

    async def deliver(
        self,
        incident_id: str,
        notice: Notified,
        *,
        delivery_id: str | None = None,
        still_allowed: StillAllowed | None = None,
    ) -> bool:
        log.info(
            "notify %s of incident %s (level %d, via %s)",
            notice.principal,
            incident_id,
            notice.level,
            notice.channel,
        )
        note("log", 1)
        DELIVERIES.labels("log", "delivered").inc()
        return True

    async def aclose(self) -> None:
        return None


# -- signatures ------------------------------------------------------------------------


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>." + body` under `secret`."""
    return hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The `X-Incidents-Signature` value: `t=<timestamp>,v1=<signature>`."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> bool:
    """True if `header` signs exactly `body` under `secret`, at most `tolerance` seconds
    away from `now`. For receivers of the webhook. It never raises: a malformed header
    is simply not valid."""
    if not header or not secret:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            if not (value.isascii() and value.isdigit()) or len(value) > 12:
                return False
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected.encode(), c.lower().encode()) for c in candidates)


# -- retry policy ------------------------------------------------------------------------


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = _random.random
) -> float:
    """Delay before retry number `attempt + 1`: `base * 2**attempt`, capped at `cap`, with
    "equal jitter" (between half and all of it) so that retries don't come in step."""
    full = min(cap, base * 2.0**attempt)
    return full / 2 + rand() * full / 2


@dataclass(frozen=True)
class RetryPolicy:
    """How an adapter tries a notice: each attempt limited to `timeout` seconds, up to
    `retries` more after the first, `backoff_delay(attempt, backoff, max_delay, rand)`
    apart (waited with `sleep`)."""

    timeout: float
    retries: int = 3
    backoff: float = 0.5
    max_delay: float = 30.0
    sleep: Sleep = asyncio.sleep
    rand: Callable[[], float] = _random.random

    def delay(self, attempt: int) -> float:
        """The wait before retry number `attempt + 1`."""
        return backoff_delay(attempt, self.backoff, self.max_delay, self.rand)


WEBHOOK_RETRY: Final = RetryPolicy(timeout=5.0)
SMTP_RETRY: Final = RetryPolicy(timeout=10.0)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """The wait a `Retry-After` header asks for (delta seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def retryable_status(status: int) -> bool:
    """HTTP answers worth another attempt: 408, 429 and every 5xx."""
    return status in (408, 429) or 500 <= status <= 599


def _where(url: str) -> str:
    """Scheme and host of a URL, for logs: paths and queries may carry tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def _rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- retrying adapters ------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class _Retrying:
    """What the webhook and SMTP adapters share: `deliver` that never raises, logs that
    name the notice, and the wait between attempts."""

    adapter: ClassVar[NoticeAdapter]
    what: ClassVar[str]
    """How logs name a notice of this adapter ("webhook notice")."""

    retry: RetryPolicy

    async def deliver(
        self,
        incident_id: str,
        notice: Notified,
        *,
        delivery_id: str | None = None,
        still_allowed: StillAllowed | None = None,
    ) -> bool:
        try:
            delivered = await self._deliver(incident_id, notice, delivery_id, still_allowed)
        except Exception as exc:  # a failure is a False, never an exception
            self._log(logging.ERROR, incident_id, notice, " failed: %s", type(exc).__name__)
            note(self.adapter, 0, "error", type(exc).__name__)
            delivered = False
        DELIVERIES.labels(self.adapter, "delivered" if delivered else "failed").inc()
        return delivered

    async def _deliver(
        self,
        incident_id: str,
        notice: Notified,
        delivery_id: str | None,
        still_allowed: StillAllowed | None,
    ) -> bool:
        raise NotImplementedError

    def _log(
        self, level: int, incident_id: str, notice: Notified, rest: str, *args: object
    ) -> None:
        """One log line about a notice: `<what> of incident <id> to <principal> (level <n>)`
        followed by `rest` (a format, with `args`)."""
        log.log(
            level,
            f"{self.what} of incident %s to %s (level %d){rest}",
            incident_id,
            notice.principal,
            notice.level,
            *args,
        )

    def _delivered(self, incident_id: str, notice: Notified, where: str, attempt: int) -> bool:
        verb = "delivered to" if self.adapter == "webhook" else "handed to"
        self._log(logging.INFO, incident_id, notice, f" {verb} %s (attempt %d)", where, attempt + 1)
        note(self.adapter, attempt + 1)
        return True

    def _refused(
        self, incident_id: str, notice: Notified, where: str, attempt: int, outcome: str
    ) -> bool:
        self._log(
            logging.WARNING, incident_id, notice, " refused by %s: %s; not retried", where, outcome
        )
        note(self.adapter, attempt + 1, "refused", outcome[:80])
        return False

    async def _wait(
        self,
        incident_id: str,
        notice: Notified,
        where: str,
        attempt: int,
        outcome: str,
        delay: float,
        still_allowed: StillAllowed | None,
    ) -> bool:
        """Log the failed attempt, wait `delay` seconds, then ask `still_allowed` whether
        the next attempt may go: False (noted `gave_up` with its `refusal`:
        `EXCLUDED_DETAIL` or `CLOSED_DETAIL`) ends the delivery unsent. Asked after the
        wait, just before the attempt, so an exclusion or a close that came during the
        backoff counts."""
        self._log(
            logging.INFO,
            incident_id,
            notice,
            ": %s from %s; retry %d of %d in %.2f s",
            outcome,
            where,
            attempt + 1,
            self.retry.retries,
            delay,
        )
        ATTEMPTS_RETRIED.labels(self.adapter).inc()
        await self.retry.sleep(delay)
        if still_allowed is None or await still_allowed():
            return True
        detail = refusal(still_allowed)
        self._log(logging.WARNING, incident_id, notice, " not retried: %s", detail)
        note(self.adapter, attempt + 1, "gave_up", detail)
        return False

    def _gave_up(self, incident_id: str, notice: Notified, where: str, outcome: str) -> bool:
        self._log(
            logging.WARNING,
            incident_id,
            notice,
            " failed after %d attempts (last: %s from %s)",
            self.retry.retries + 1,
            outcome,
            where,
        )
        note(self.adapter, self.retry.retries + 1, _given_up(outcome), outcome[:80])
        return False


# -- webhook ---------------------------------------------------------------------------


class WebhookNotifier(_Retrying):
    """Signed JSON POST per notice, retried with backoff; see the module docstring."""

    adapter = "webhook"
    what = "webhook notice"

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        retry: RetryPolicy = WEBHOOK_RETRY,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("a webhook needs a non-empty signing secret")
        if retry.retries < 0 or retry.timeout <= 0 or retry.backoff < 0:
            raise ValueError("retries >= 0, timeout > 0 and backoff >= 0")
        super().__init__(retry)
        self.url = url
        self._secret = _key(secret)
        self._transport = transport
        self._clock = clock
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"WebhookNotifier({_where(self.url)}, retries={self.retry.retries})"

    def body(self, incident_id: str, notice: Notified, sent_at: float) -> bytes:
        """The JSON body: who is asked, at which level, about which report digest."""
        return json.dumps(
            {
                "incident_id": incident_id,
                "principal": notice.principal,
                "level": notice.level,
                "channel": notice.channel,
                "report_digest": notice.report_digest,
                "sent_at": _rfc3339(sent_at),
            },
            separators=(",", ":"),
        ).encode()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(self.retry.timeout),
                follow_redirects=False,
                headers={"user-agent": "incidents-escalation/1"},
            )
        return self._client

    async def aclose(self) -> None:
        """Close the pooled client (a later `deliver` opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _attempt(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
        """One POST: its status and Retry-After. The answer's body is never read."""
        async with (
            asyncio.timeout(self.retry.timeout),
            self._http().stream("POST", self.url, content=body, headers=headers) as response,
        ):
            return response.status_code, response.headers.get("retry-after")

    async def _deliver(
        self,
        incident_id: str,
        notice: Notified,
        delivery_id: str | None,
        still_allowed: StillAllowed | None,
    ) -> bool:
        delivery = delivery_id or uuid.uuid4().hex
        where = _where(self.url)
        outcome = "not tried"
        for attempt in range(self.retry.retries + 1):
            sent_at = self._clock()
            body = self.body(incident_id, notice, sent_at)
            headers = {
                "content-type": "application/json",
                SIGNATURE_HEADER: signature_header(self._secret, body, int(sent_at)),
                DELIVERY_HEADER: delivery,
            }
            wait: float | None = None
            try:
                status, retry_after = await self._attempt(body, headers)
            except (httpx.TransportError, TimeoutError) as exc:
                outcome = type(exc).__name__
            else:
                if 200 <= status <= 299:
                    return self._delivered(incident_id, notice, where, attempt)
                outcome = f"HTTP {status}"
                if not retryable_status(status):
                    return self._refused(incident_id, notice, where, attempt, outcome)
                wait = retry_after_seconds(retry_after, self._clock())
            if attempt == self.retry.retries:
                break
            delay = self.retry.delay(attempt)
            if wait is not None:
                if wait > self.retry.max_delay:
                    self._log(
                        logging.WARNING,
                        incident_id,
                        notice,
                        ": %s asks to wait %.0f s, longer than %.0f s; given up",
                        where,
                        wait,
                        self.retry.max_delay,
                    )
                    note("webhook", attempt + 1, "gave_up", outcome)
                    return False
                delay = max(delay, wait)
            if not await self._wait(
                incident_id, notice, where, attempt, outcome, delay, still_allowed
            ):
                return False
        return self._gave_up(incident_id, notice, where, outcome)


def _given_up(outcome: str) -> NoticeFailure:
    """Retries exhausted: on answers that kept saying no, or on a peer never reached."""
    return "refused" if re.search(r"\b\d{3}$", outcome) else "unreachable"  # a status or code


# -- SMTP ------------------------------------------------------------------------------


def _wording(notice: Notified, shown: str) -> tuple[str, str]:
    """Subject and first line: an ask, or a legal clock's reminder or breach (which tell
    of the clock and ask nothing new; `services.domain.escalation.CLOCK_CHANNELS`)."""
    if notice.channel == "reminder":
        return (
            f"Reminder: a legal deadline of incident {shown} is near",
            f"A legal deadline of incident {shown} is near (you are at level {notice.level}).",
        )
    if notice.channel == "breach":
        return (
            f"Legal deadline missed on incident {shown}",
            f"A legal deadline of incident {shown} has passed unmet (level {notice.level}).",
        )
    return (
        f"Please act on incident {shown} (level {notice.level})",
        f"You have been asked to act on incident {shown} (level {notice.level}).",
    )


_ADDRESS = re.compile(r"^[^@\s<>,;:\"()\[\]\\]+@[A-Za-z0-9.-]+$")


def valid_address(address: str | None) -> bool:
    """A bare `local@domain` address with no room for header injection."""
    return bool(address) and len(address or "") <= 254 and bool(_ADDRESS.match(address or ""))


def _one_line(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", "", text)[:200]


def smtp_transient(exc: BaseException) -> bool:
    """Worth another attempt: connection trouble, timeouts and 4xx replies; not TLS errors,
    5xx replies or a server that lacks what we need (STARTTLS, AUTH)."""
    if isinstance(exc, ssl.SSLError):
        return False
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= code <= 499 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code <= 499
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPException):
        return False
    return isinstance(exc, OSError)  # refused, reset, timed out


def _smtp_outcome(exc: BaseException) -> str:
    """What to log about an SMTP failure: the reply code, never the server's text (it may
    echo the address or the message)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "recipient refused " + ",".join(str(c) for c, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__} {exc.smtp_code}"
    return type(exc).__name__


class _Session(smtplib.SMTP):
    """An SMTP connection that is in `session` before it connects, so that a deadline
    can shut its socket (`sock`, once it has one) from outside the thread."""

    def __init__(self, host: str, port: int, timeout: float, session: list[smtplib.SMTP]):
        session.append(self)
        super().__init__(host, port, timeout=timeout)


class SmtpNotifier(_Retrying):
    """A plain-text mail per notice, with a link to the console; see the module docstring."""

    adapter = "smtp"
    what = "mail notice"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        starttls: bool = True,
        username: str | None = None,
        password: str | None = None,
        recipients_by_principal: AddressLookup | None = None,
        *,
        console_url: str,
        retry: RetryPolicy = SMTP_RETRY,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if recipients_by_principal is None:
            raise ValueError("the SMTP adapter needs a lookup of e-mail addresses")
        if not valid_address(sender):
            raise ValueError("the SMTP sender must be a bare address (local@domain)")
        if (username is None) != (password is None):
            raise ValueError("an SMTP username and password go together")
        super().__init__(retry)
        self.host = host
        self.port = port
        self.sender = sender
        self.starttls = starttls
        self.username = username
        self._password = password
        self.recipients_by_principal = recipients_by_principal
        self.console_url = console_url.rstrip("/")
        self._tls = tls_context

    def __repr__(self) -> str:
        return f"SmtpNotifier({self.host}:{self.port}, starttls={self.starttls})"

    async def aclose(self) -> None:
        return None  # one connection per mail: nothing is kept open

    def message(self, incident_id: str, notice: Notified, address: str) -> EmailMessage:
        """The mail: who is asked to act on which incident, and where; no report content."""
        link = f"{self.console_url}/incidents/{quote(incident_id, safe='')}"
        shown = _one_line(incident_id)
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = address
        subject, opening = _wording(notice, shown)
        mail["Subject"] = subject
        mail["Date"] = format_datetime(datetime.now(UTC), usegmt=True)
        mail["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2])
        mail["Auto-Submitted"] = "auto-generated"
        mail.set_content(
            f"{opening}\n"
            f"Open {link}\n"
            "\n"
            "This mail holds no report content. Sign in to the console to read the report\n"
            "and to acknowledge it; if nobody acknowledges in time, it goes up the chain.\n"
        )
        return mail

    def _send(self, mail: EmailMessage, address: str, session: list[smtplib.SMTP]) -> None:
        """One SMTP session, blocking (run in a thread); the connection is put in
        `session` so that the attempt's deadline can cut it (`_attempt`)."""
        with _Session(self.host, self.port, self.retry.timeout, session) as smtp:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=self._tls or ssl.create_default_context())
                smtp.ehlo()
            if self.username is not None:
                smtp.login(self.username, self._password or "")
            smtp.send_message(mail, from_addr=self.sender, to_addrs=[address])

    async def _attempt(self, mail: EmailMessage, address: str) -> None:
        """One session in a thread, bounded by `timeout` as a whole: smtplib's timeout
        bounds each read alone, so a server that answers a byte at a time could hold the
        attempt (and the thread) for ever. At the deadline the connection is shut, which
        ends the thread's blocked read, and `TimeoutError` (retried) is raised."""
        session: list[smtplib.SMTP] = []
        sending = asyncio.ensure_future(asyncio.to_thread(self._send, mail, address, session))
        try:
            async with asyncio.timeout(self.retry.timeout):
                await asyncio.shield(sending)
        except TimeoutError:
            while not sending.done():  # the thread ends on the shut connection
                for smtp in session:  # its socket, once the connection has one
                    if smtp.sock is not None:
                        with contextlib.suppress(OSError):
                            smtp.sock.shutdown(socket.SHUT_RDWR)
                await asyncio.wait({sending}, timeout=0.05)
            if not sending.cancelled():
                sending.exception()  # retrieved: the attempt's outcome is the timeout
            raise

    async def _deliver(
        self,
        incident_id: str,
        notice: Notified,
        _: str | None,
        still_allowed: StillAllowed | None,
    ) -> bool:
        found = self.recipients_by_principal(notice.principal)
        address = await found if inspect.isawaitable(found) else found
        if address is None or not valid_address(address):
            known = "no e-mail address known" if not address else "unusable e-mail address"
            self._log(logging.WARNING, incident_id, notice, " not sent: %s", known)
            note("smtp", 0, "no_address")
            return False
        mail = self.message(incident_id, notice, address)
        outcome = "not tried"
        for attempt in range(self.retry.retries + 1):
            try:
                await self._attempt(mail, address)
            except (smtplib.SMTPException, OSError) as exc:
                outcome = _smtp_outcome(exc)
                if not smtp_transient(exc):
                    return self._refused(incident_id, notice, self.host, attempt, outcome)
            else:
                return self._delivered(incident_id, notice, self.host, attempt)
            if attempt == self.retry.retries:
                break
            delay = self.retry.delay(attempt)
            if not await self._wait(
                incident_id, notice, self.host, attempt, outcome, delay, still_allowed
            ):
                return False
        return self._gave_up(incident_id, notice, self.host, outcome)


# -- several at once --------------------------------------------------------------------


class FanoutNotifier:
    """Every adapter at once; a notice counts as delivered if any of them delivered it.
    Each adapter asks `still_allowed` before each of its own retries."""

    def __init__(self, notifiers: Sequence[Adapter]) -> None:
        if not notifiers:
            raise ValueError("a fan-out needs at least one notifier")
        self.notifiers = tuple(notifiers)

    async def deliver(
        self,
        incident_id: str,
        notice: Notified,
        *,
        delivery_id: str | None = None,
        still_allowed: StillAllowed | None = None,
    ) -> bool:
        results = await asyncio.gather(
            *(
                _never_raises(n, incident_id, notice, delivery_id, still_allowed)
                for n in self.notifiers
            )
        )
        return any(results)

    async def aclose(self) -> None:
        for notifier in self.notifiers:
            try:
                await notifier.aclose()
            except Exception as exc:
                log.warning("closing %r failed: %s", notifier, type(exc).__name__)


async def _never_raises(
    notifier: Notifier,
    incident_id: str,
    notice: Notified,
    delivery_id: str | None,
    still_allowed: StillAllowed | None,
) -> bool:
    try:
        return await notifier.deliver(
            incident_id, notice, delivery_id=delivery_id, still_allowed=still_allowed
        )
    except Exception as exc:
        log.error(
            "%r failed on incident %s to %s: %s",
            notifier,
            incident_id,
            notice.principal,
            type(exc).__name__,
        )
        return False


# -- wiring ----------------------------------------------------------------------------


def build_notifier(
    settings: EscalationSettings,
    *,
    recipients_by_principal: AddressLookup | None = None,
) -> Adapter:
    """The adapter `settings.notify_adapter` names, configured from the settings."""
    retry = RetryPolicy(
        timeout=settings.notify_timeout_seconds,
        retries=settings.notify_retries,
        backoff=settings.notify_backoff_seconds,
    )
    if settings.notify_adapter == "webhook":
        secret = settings.notify_webhook_secret
        if settings.notify_webhook_url is None or secret is None:
            raise ValueError("the webhook adapter needs a URL and a secret")
        return WebhookNotifier(
            settings.notify_webhook_url,
            secret.get_secret_value(),
            retry,
        )
    if settings.notify_adapter == "smtp":
        if settings.notify_smtp_host is None or settings.notify_smtp_sender is None:
            raise ValueError("the SMTP adapter needs a host and a sender")
        password = settings.notify_smtp_password
        return SmtpNotifier(
            settings.notify_smtp_host,
            settings.notify_smtp_port,
            settings.notify_smtp_sender,
            starttls=settings.notify_smtp_starttls,
            username=settings.notify_smtp_username,
            password=password.get_secret_value() if password is not None else None,
            recipients_by_principal=recipients_by_principal,
            console_url=settings.console_url,
            retry=retry,
        )
    return LogNotifier()
