"""Intake's use cases. Each takes plain inputs, runs one transaction, returns a result.

Reports (`take_report`): the submitted event, its outbox row, the anonymous reporter's
receipt and the Idempotency-Key answer commit together, or none of them does. Reports
share their transaction with the reports that arrive while the previous one commits
(`GroupCommit`): one COMMIT and one statement per table for the lot, each report still
all-or-nothing (a failed batch is written again one by one).

People search (`search_people`): the people a reporter may pick as accused or named,
by the start of any word of their names; rate-limited per client in memory.

Receipts (`open_receipt`, `reporter_view`, `message_from_reporter`): an anonymous
reporter comes back with the receipt and the secret. Every attempt runs exactly one
argon2id verification, against a dummy hash when the receipt does not exist or the
secret is malformed, so a wrong receipt and a wrong secret cost the same time and get
the same answer. Attempts are limited per receipt in PostgreSQL (shared by every
intake instance) and per process in memory; never by anything about the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Self

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.domain.envelope import Envelope
from services.domain.events import ReporterMessage
from services.domain.incident import fold
from services.domain.names import MAX_NAME_LENGTH, normalise
from services.domain.policy import Policy
from services.domain.ratelimit import TokenBuckets
from services.domain.receipts import (
    FailureBudget,
    ReporterView,
    idempotency_key_digest,
    new_secret,
    normalize_receipt,
    normalize_secret,
    reporter_view,
    retry_after_seconds,
    sha256_hex,
)
from services.domain.reports import NameRow, Protector, one_line
from services.infra import eventstore
from services.infra.groupcommit import GroupCommit
from services.infra.keystore import KeyStore
from services.infra.recorder import PostgresRecorder, Recorder
from services.infra.runtime import Runtime
from services.infra.systems import System
from services.infra.telemetry import current_traceparent
from services.intake.actions import incident_event
from services.intake.deadlines import PostgresDecisionClocks
from services.intake.directory import lookup_people, people_shown, search_people
from services.intake.progress import kept_events
from services.intake.usecases import ANONYMOUS_ACTOR as ANONYMOUS_ACTOR  # routes import it here
from services.intake.usecases import (
    Answered,
    DecisionClocks,
    IdempotencyConflict,
    IdempotencyKey,
    Intake,
    NewIncident,
    NewReport,
    ReportRows,
    Submission,
    TakeInbound,
    TakeReport,
    take_inbound,
    take_report,
    write_reports,
)

log = logging.getLogger(__name__)

RECEIPT_ATTEMPTS: Final = 5
"""Attempts per receipt and window; the next one answers 429 until the window ends."""
RECEIPT_WINDOW: Final = 15 * 60.0
"""Seconds of a receipt's attempt window (fixed, starting at its first attempt)."""
PROCESS_FAILURES: Final = 100
"""Failed receipt attempts one process accepts in PROCESS_WINDOW before answering 429."""
PROCESS_WINDOW: Final = 60.0
HASH_CONCURRENCY: Final = 4
"""Argon2 computations at once per process (each takes 64 MiB and a core for ~0.1 s)."""
MESSAGE_RETRIES: Final = 10
PRUNE_EVERY: Final = 60.0
SEARCH_RESULTS: Final = 10
"""At most this many people in one search answer."""
SEARCH_MIN_CHARS: Final = 2
"""A search needs this many letters or digits (spaces and punctuation do not count)."""
SEARCH_BURST: Final = 30
SEARCH_RATE: Final = 1.0
"""Searches per client: a burst of SEARCH_BURST, then SEARCH_RATE a second."""


IDEMPOTENCY_TTL: Final = timedelta(hours=24)
"""How long an Idempotency-Key's answer is kept (and replayed); then it is forgotten."""
IDEMPOTENCY_CONTEXT: Final = "idempotency"
MY_REPORTS_CONTEXT: Final = "my-reports"


@dataclass(frozen=True)
class MessageSent:
    """A reporter's message, now durably an event of the incident."""

    incident_id: str
    message_id: str
    sent_at: datetime


class ReceiptNotFound(Exception):
    """No report matches this receipt and secret (which of the two is wrong is not said)."""


class TooManyAttempts(Exception):
    """Too many failed attempts; `retry_after` seconds until the next is considered."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


class BadSearch(ValueError):
    """A people search that cannot be run (too short, too long, control characters)."""


@dataclass(frozen=True)
class PersonFound:
    """What a people search shows of a person: never roles, managers or addresses."""

    id: str
    name: str | None
    unit: str | None


class ReportClosed(Exception):
    """The report is closed: the handlers no longer read messages or files on it."""


class Busy(Exception):
    """The incident kept moving under us; the caller may retry."""


def _one_line(text: str) -> bool:
    try:
        one_line(text)
    except ValueError:
        return False
    return True


def fresh_traceparent() -> str:
    """A new W3C trace context that links to nothing the client sent."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


class IntakeService:
    """Turns reports into incidents and serves anonymous reporters their receipts."""

    def __init__(
        self,
        runtime: Runtime,
        policy: Policy,
        keys: KeyStore,
        *,
        hasher: PasswordHasher | None = None,
        receipt_attempts: int = RECEIPT_ATTEMPTS,
        receipt_window: float = RECEIPT_WINDOW,
        process_failures: int = PROCESS_FAILURES,
        process_window: float = PROCESS_WINDOW,
        search_burst: int = SEARCH_BURST,
        search_rate: float = SEARCH_RATE,
    ) -> None:
        self.runtime = runtime
        self.policy = policy
        self.keys = keys
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        self.receipt_attempts = receipt_attempts
        self.receipt_window = receipt_window
        self.failures = FailureBudget(process_failures, process_window)
        self._hashing = asyncio.Semaphore(HASH_CONCURRENCY)
        self.searches = TokenBuckets(capacity=search_burst, rate=search_rate)
        # Client addresses are keyed under a per-process secret before they are used
        # as bucket keys: the address itself is never held, logged or stored.
        self._client_key = secrets.token_bytes(32)
        # Same parameters as every real hash, so verifying against it takes as long.
        self._dummy_hash = self.hasher.hash(new_secret())
        # One writer: while it commits, the next reports queue up and share the next
        # transaction. With two, paced arrivals mostly found a free writer and went one
        # per transaction (1.4 reports a commit at 350/s), and each transaction costs
        # intake about as much CPU as a report does: 2.2 against 2.0 ms per report at
        # 420/s, and a p99 of 70-76 against 24-35 ms at 460/s (paced runs of incidents bench).
        self.writer: GroupCommit[NewReport, Submission | IdempotencyConflict | None] = GroupCommit(
            lambda: self.runtime.db, self._write_reports, name="intake reports", writers=1
        )
        self.reads = PostgresReportReads(self)
        runtime.background("receipt-attempts-pruner", self._prune_attempts)

    # -- reports -----------------------------------------------------------------

    @functools.cached_property
    def intake(self) -> Intake:
        """What the report use cases need besides their ports (`usecases.Intake`)."""
        return Intake(
            policy=self.policy,
            source=self.runtime.source,
            topic_prefix=self.runtime.settings.kafka_topic_prefix,
            hash_secret=self._hash,
            key_for=self.idempotency_key,
        )

    async def take_report(self, command: TakeReport) -> Submission:
        """`usecases.take_report` on PostgreSQL: every door's report (see its doc)."""
        return await take_report(command, self.reads, self.writer, self.intake)

    async def take_inbound(
        self, event: dict[str, Any], system: System, *, channel: str, issue_receipt: bool
    ) -> Submission:
        """`usecases.take_inbound` for an authenticated registered system (docs/inbound.md)."""
        command = TakeInbound(
            event,
            system_id=system.id,
            principal=system.principal,
            scopes=system.scopes,
            channel=channel,
            issue_receipt=issue_receipt,
            traceparent=current_traceparent(),
        )
        return await take_inbound(command, self.reads, self.writer, self.intake)

    async def _write_reports(
        self, conn: asyncpg.Connection, reports: Sequence[NewReport]
    ) -> list[Submission | IdempotencyConflict | None]:
        """The group commit's write: `usecases.write_reports` in its shared transaction."""
        async with ReportTransaction(conn, self) as uow:
            return await write_reports(uow, reports, self.intake, datetime.now(UTC))

    def idempotency_key(
        self, principal: str | None, header: str, request_hash: str
    ) -> IdempotencyKey:
        """An Idempotency-Key as stored: nothing in it names the caller or the report.

        The scope is a keyed pseudonym of the caller (so the table does not link a
        person to an incident), the request's digest is keyed too (so a report's text
        cannot be confirmed by hashing guesses), both under intake's pseudonym key.
        """
        pseudonyms = self.keys.pseudonyms
        if pseudonyms is None:
            raise RuntimeError("intake runs with a pseudonym key")
        scope = "anonymous" if principal is None else pseudonyms.of(IDEMPOTENCY_CONTEXT, principal)
        return IdempotencyKey(
            scope=scope,
            key_digest=idempotency_key_digest(header),
            request_hash=pseudonyms.of(IDEMPOTENCY_CONTEXT, request_hash),
        )

    def reporter_tag(self, person_id: str) -> str:
        """The keyed pseudonym her reports are listed under (`reporter_reports`): the
        table names nobody without intake's pseudonym key (docs/reporters.md)."""
        pseudonyms = self.keys.pseudonyms
        if pseudonyms is None:
            raise RuntimeError("intake runs with a pseudonym key")
        return pseudonyms.of(MY_REPORTS_CONTEXT, person_id)

    # -- people search -----------------------------------------------------------

    def search_client(self, principal: str | None, address: str | None) -> str:
        """The rate-limit key of a search: the principal, or for an anonymous caller a
        keyed digest of the client address (all anonymous callers without an address,
        or behind one proxy, share one bucket)."""
        if principal is not None:
            return f"principal:{principal}"
        mac = hmac.new(self._client_key, (address or "").encode(), hashlib.sha256)
        return f"anonymous:{mac.hexdigest()[:32]}"

    async def search_people(self, query: str, client: str) -> list[PersonFound]:
        """Up to SEARCH_RESULTS people with, for every word of `query` (normalised as
        names are), a word of one of their names starting with it.

        Raises TooManyAttempts when `client` (`search_client`) has no search left, and
        BadSearch for a query with control characters, over MAX_NAME_LENGTH, or with
        fewer than SEARCH_MIN_CHARS letters or digits. Logs nothing: the query and the
        answer may say whom an anonymous reporter is about to report.
        """
        wait = self.searches.take(client, asyncio.get_running_loop().time())
        if wait is not None:
            raise TooManyAttempts(wait)
        if len(query) > MAX_NAME_LENGTH or not _one_line(query):
            raise BadSearch(
                f"a search is at most {MAX_NAME_LENGTH} characters, without control characters"
            )
        words = normalise(query).split()
        if sum(len(w) for w in words) < SEARCH_MIN_CHARS:
            raise BadSearch(f"a search needs at least {SEARCH_MIN_CHARS} letters or digits")
        async with self.runtime.db.acquire() as conn:
            rows = await search_people(conn, sorted(set(words)), SEARCH_RESULTS)
        return [PersonFound(r["person_id"], r["name"], r["unit"]) for r in rows]

    async def people_picked(self, ids: Sequence[str]) -> list[PersonFound]:
        """What the search showed of people already picked, in the order given (ids the
        directory does not know are left out)."""
        if not ids:
            return []
        async with self.runtime.db.acquire() as conn:
            rows = await people_shown(conn, ids)
        by_id = {r["person_id"]: PersonFound(r["person_id"], r["name"], r["unit"]) for r in rows}
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]

    # -- receipts ----------------------------------------------------------------

    async def open_receipt(self, receipt: str, secret: str | None) -> str:
        """The incident a receipt and secret open; else ReceiptNotFound or TooManyAttempts.

        Exactly one argon2id verification runs on every path that reaches it.
        """
        loop = asyncio.get_running_loop()
        wait = self.failures.retry_after(loop.time())
        if wait is not None:
            raise TooManyAttempts(wait)
        canonical = normalize_receipt(receipt)
        digest = sha256_hex(canonical or receipt[:200])
        async with self.runtime.db.acquire() as conn:
            attempt = await conn.fetchrow(
                _COUNT_ATTEMPT, digest, timedelta(seconds=self.receipt_window)
            )
            if attempt["attempts"] > self.receipt_attempts:
                raise TooManyAttempts(retry_after_seconds(attempt["remaining"]))
            found = None
            if canonical is not None:
                found = await conn.fetchrow(
                    "SELECT incident_id, secret_hash FROM receipts WHERE receipt = $1", canonical
                )
        typed = normalize_secret(secret or "")
        against = found["secret_hash"] if found is not None and typed is not None else None
        matches = await self._verify(against or self._dummy_hash, typed or "")
        if not (matches and against is not None and found is not None):
            self.failures.record(loop.time())
            raise ReceiptNotFound
        async with self.runtime.db.acquire() as conn:
            await conn.execute("DELETE FROM receipt_attempts WHERE receipt_digest = $1", digest)
        incident_id: str = found["incident_id"]
        return incident_id

    async def reporter_view(self, incident_id: str) -> ReporterView:
        """What the reporter may see of their incident (from intake's event store), the
        messages opened with the incident's key (after the receipt and secret matched)."""
        async with self.runtime.db.acquire() as conn:
            stored = await eventstore.load(conn, incident_id)
            events = await self.keys.open_events(conn, incident_id, [s.envelope for s in stored])
            kept = (await kept_events(conn, [incident_id])).get(incident_id, [])
        return reporter_view(
            incident_id,
            events,
            acknowledgement_within=self.policy.reporter_acknowledgement_within,
            kept=kept,
            feedback_within=self.feedback_within,
        )

    def feedback_within(self, category: str | None) -> int | None:
        """Seconds the reporter waits for feedback at most (the category's severity)."""
        severity = self.policy.categories.get(category or "")
        rules = self.policy.severities.get(severity or "")
        return None if rules is None else int(rules.feedback_within)

    async def message_from_reporter(
        self, incident_id: str, text: str, *, actor: str = ANONYMOUS_ACTOR
    ) -> MessageSent:
        """Append the reporter's message to the incident (retried when the stream moves);
        `actor` is `reporter:named` for a named reporter (never her id). Raises
        ReportClosed once it is closed, ReceiptNotFound once erased."""
        async with self.runtime.db.acquire() as conn:
            events = [s.envelope for s in await eventstore.load(conn, incident_id)]
            key = await self.keys.get(conn, incident_id)
        if key is None or not events:  # erased: nothing can be added to it any more
            raise ReceiptNotFound
        if fold(incident_id, events).status == "closed":
            raise ReportClosed
        sealed = key.seal("text", text)
        data = ReporterMessage(direction="from_reporter", author="reporter", text=sealed)
        event = incident_event(
            self.runtime, incident_id, events, data, actor, traceparent=fresh_traceparent()
        )
        await self.append_event(incident_id, event)
        return MessageSent(incident_id=incident_id, message_id=event.id, sent_at=event.time)

    async def append_event(self, incident_id: str, event: Envelope) -> None:
        """Append one event at the stream's end, retried when the stream moves; Busy
        when it kept moving."""
        for attempt in range(MESSAGE_RETRIES):
            try:
                async with self.runtime.db.acquire() as conn, conn.transaction():
                    version = await eventstore.stream_version(conn, incident_id)
                    await eventstore.append(
                        conn,
                        incident_id,
                        version,
                        [event],
                        topic_prefix=self.runtime.settings.kafka_topic_prefix,
                    )
            except eventstore.ConcurrencyError:
                await asyncio.sleep(0.005 * 2**attempt * (0.5 + secrets.randbelow(100) / 100))
                continue
            return
        raise Busy

    # -- argon2 ------------------------------------------------------------------

    async def _hash(self, secret: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self.hasher.hash, secret)

    async def _verify(self, secret_hash: str, secret: str) -> bool:
        async with self._hashing:
            try:
                return await asyncio.to_thread(self.hasher.verify, secret_hash, secret)
            except (VerificationError, InvalidHashError):
                return False

    async def _prune_attempts(self, stop: asyncio.Event) -> None:
        """Forget attempt windows that ended, and Idempotency-Key answers past their 24 h."""
        while not stop.is_set():
            try:
                async with self.runtime.db.acquire() as conn:
                    await conn.execute(
                        "DELETE FROM receipt_attempts WHERE window_start < now() - $1::interval",
                        timedelta(seconds=self.receipt_window),
                    )
                    await conn.execute(
                        "DELETE FROM idempotency WHERE created_at < now() - $1::interval",
                        IDEMPOTENCY_TTL,
                    )
            except Exception as exc:  # the next round tries again
                log.warning("pruning receipt attempts failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=PRUNE_EVERY)


class PostgresReportReads:
    """`usecases.ReportReads` on intake's pool: each a statement of its own."""

    def __init__(self, service: IntakeService) -> None:
        self.service = service

    async def answers(self, keys: Sequence[IdempotencyKey]) -> Answered:
        async with self.service.runtime.db.acquire() as conn:
            return await _stored_answers(conn, keys)

    async def person_exists(self, person_id: str) -> bool:
        async with self.service.runtime.db.acquire() as conn:
            found = await conn.fetchval("SELECT 1 FROM people WHERE person_id = $1", person_id)
        return bool(found)

    async def incident_exists(self, incident_id: str) -> bool:
        async with self.service.runtime.db.acquire() as conn:
            return bool(await eventstore.stream_version(conn, incident_id))

    async def directory_people(
        self, ids: Sequence[str], norms: Sequence[str]
    ) -> tuple[Collection[str], Iterable[NameRow]]:
        async with self.service.runtime.db.acquire() as conn:
            return await lookup_people(conn, ids, norms)


class ReportTransaction:
    """`usecases.ReportUnitOfWork` over the group commit's shared transaction (which
    `GroupCommit` begins, commits or rolls back): entering and leaving it do nothing,
    an exception inside ends the whole shared transaction."""

    def __init__(self, conn: asyncpg.Connection, service: IntakeService) -> None:
        self.conn = conn
        self.service = service

    @property
    def recorder(self) -> Recorder:
        return PostgresRecorder(self.conn, savepoint=False)

    @property
    def reports(self) -> ReportRows:
        return self

    @property
    def decisions(self) -> DecisionClocks:
        return PostgresDecisionClocks(self.conn)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None  # the group commit ends the transaction

    async def lock_answers(self, keys: Sequence[IdempotencyKey]) -> Answered:
        if not keys:
            return {}
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k",
            sorted({k.lock_id for k in keys}),
        )
        return await _stored_answers(self.conn, keys)

    async def create_keys(self, incident_ids: Sequence[str]) -> list[Protector]:
        return list(await self.service.keys.create_many(self.conn, incident_ids))

    async def add_incidents(self, incidents: Sequence[NewIncident]) -> None:
        await self.conn.execute(
            "INSERT INTO retention (incident_id, category)"
            " SELECT * FROM unnest($1::text[], $2::text[])",
            [i.incident_id for i in incidents],
            [i.report.category for i in incidents],
        )
        named = [i for i in incidents if i.reporter is not None]
        if named:  # her reports, for her follow-up (docs/reporters.md)
            await self.conn.execute(
                "INSERT INTO reporter_reports (owner, incident_id)"
                " SELECT * FROM unnest($1::text[], $2::text[])",
                [self.service.reporter_tag(i.reporter or "") for i in named],
                [i.incident_id for i in named],
            )

    async def add_receipts(self, rows: Sequence[tuple[str, str, str]]) -> None:
        await self.conn.execute(
            "INSERT INTO receipts (receipt, incident_id, secret_hash)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
            *(list(column) for column in zip(*rows, strict=True)),
        )

    async def add_answers(self, rows: Sequence[tuple[IdempotencyKey, dict[str, Any]]]) -> None:
        await self.conn.execute(
            "INSERT INTO idempotency (scope, key, request_hash, status, response)"
            " SELECT s, k, h, 202, r::jsonb"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x (s, k, h, r)",
            [key.scope for key, _ in rows],
            [key.key_digest for key, _ in rows],
            [key.request_hash for key, _ in rows],
            [json.dumps(stored) for _, stored in rows],
        )


async def _stored_answers(conn: asyncpg.Connection, keys: Sequence[IdempotencyKey]) -> Answered:
    """The answers stored with these keys; an expired answer is deleted first (the key
    may then be used again)."""
    scopes, digests = [k.scope for k in keys], [k.key_digest for k in keys]
    await conn.execute(
        "DELETE FROM idempotency i USING unnest($1::text[], $2::text[]) AS x (s, k)"
        " WHERE i.scope = x.s AND i.key = x.k AND i.created_at < now() - $3::interval",
        scopes,
        digests,
        IDEMPOTENCY_TTL,
    )
    rows = await conn.fetch(
        "SELECT DISTINCT i.scope, i.key, i.request_hash, i.status, i.response"
        " FROM idempotency i JOIN unnest($1::text[], $2::text[]) AS x (s, k)"
        " ON i.scope = x.s AND i.key = x.k",
        scopes,
        digests,
    )
    return {
        (r["scope"], r["key"]): (
            r["request_hash"],
            Submission(r["status"], json.loads(r["response"]), replayed=True),
        )
        for r in rows
    }


# One statement, so concurrent attempts on a receipt cannot all pass the check:
# the count goes up before the secret is verified.
_COUNT_ATTEMPT: Final = """
INSERT INTO receipt_attempts AS a (receipt_digest, window_start, attempts)
VALUES ($1, now(), 1)
ON CONFLICT (receipt_digest) DO UPDATE SET
    attempts = CASE WHEN a.window_start <= now() - $2::interval
                    THEN 1 ELSE a.attempts + 1 END,
    window_start = CASE WHEN a.window_start <= now() - $2::interval
                        THEN now() ELSE a.window_start END
RETURNING attempts,
    extract(epoch FROM window_start + $2::interval - now())::float8 AS remaining
"""
