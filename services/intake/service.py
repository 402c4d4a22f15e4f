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
import hashlib
import hmac
import json
import logging
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.domain.envelope import Envelope
from services.domain.events import ReporterMessage, make_event
from services.domain.inbound import authorize, incident_id_for, report_of
from services.domain.incident import fold
from services.domain.names import MAX_NAME_LENGTH, normalise
from services.domain.policy import Policy
from services.domain.ratelimit import TokenBuckets
from services.domain.receipts import (
    FailureBudget,
    ReporterView,
    idempotency_key_digest,
    new_receipt,
    new_secret,
    normalize_receipt,
    normalize_secret,
    reporter_view,
    request_digest,
    retry_after_seconds,
    sha256_hex,
)
from services.domain.reports import (
    People,
    ReportInput,
    UnknownCategory,
    one_line,
    resolve_people,
    submit_report,
    to_look_up,
)
from services.infra import eventstore
from services.infra.groupcommit import GroupCommit
from services.infra.keystore import KeyStore
from services.infra.runtime import Runtime
from services.infra.systems import System
from services.infra.telemetry import current_traceparent
from services.intake.directory import lookup_people, people_shown, search_people
from services.intake.progress import kept_events

log = logging.getLogger(__name__)

ANONYMOUS_ACTOR: Final = "reporter:anonymous"
REPLAY_NOTE: Final = (
    "This answer repeats an earlier one for the same Idempotency-Key. The secret was"
    " shown once, in that first answer, and is not stored: it cannot be shown again."
)
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


@dataclass(frozen=True)
class NewIncident:
    """What opening one incident needs (see `IntakeService.open_incidents`)."""

    incident_id: str
    report: ReportInput
    reporter: str | None
    channel: str
    actor: str
    traceparent: str | None
    causationid: str | None = None
    people: People = field(default_factory=People)
    """The accused and named, resolved (`IntakeService.resolve_people`)."""


@dataclass(frozen=True)
class NewReport:
    """A report waiting for its shared transaction: its incident, the receipt and the
    argon2id hash of its secret if anonymous, its Idempotency-Key if it came with one."""

    incident: NewIncident
    receipt: str | None
    secret_hash: str | None
    idempotency: IdempotencyKey | None = None
    stored: dict[str, Any] | None = None
    """The answer stored with the Idempotency-Key (repeated to a later request)."""


@dataclass(frozen=True)
class Accepted:
    """A report that is now durably an incident."""

    incident_id: str
    event_id: str


IDEMPOTENCY_TTL: Final = timedelta(hours=24)
"""How long an Idempotency-Key's answer is kept (and replayed); then it is forgotten."""
IDEMPOTENCY_CONTEXT: Final = "idempotency"
MY_REPORTS_CONTEXT: Final = "my-reports"


@dataclass(frozen=True)
class IdempotencyKey:
    """An Idempotency-Key in its scope (a keyed pseudonym of the caller, or "anonymous").

    `key_digest` is the SHA-256 of the header value: the value itself is never stored.
    Make one with `IntakeService.idempotency_key`.
    """

    scope: str
    key_digest: str
    request_hash: str

    @property
    def lock_id(self) -> int:
        """A 64-bit advisory lock id for this (scope, key)."""
        raw = hashlib.sha256(f"idempotency\0{self.scope}\0{self.key_digest}".encode()).digest()
        return int.from_bytes(raw[:8], "big", signed=True)


@dataclass(frozen=True)
class Submission:
    """The answer to a report: HTTP status and JSON body; `replayed` for a repeated key."""

    status: int
    body: dict[str, Any]
    replayed: bool


@dataclass(frozen=True)
class MessageSent:
    """A reporter's message, now durably an event of the incident."""

    incident_id: str
    message_id: str
    sent_at: datetime


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with another request body."""


class UnknownReporter(ValueError):
    """A system named a reporter the directory does not know."""


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
        runtime.background("receipt-attempts-pruner", self._prune_attempts)

    # -- reports -----------------------------------------------------------------

    async def take_report(
        self,
        report: ReportInput,
        *,
        reporter: str | None,
        actor: str,
        channel: str,
        idempotency: IdempotencyKey | None,
        check_reporter: bool = False,
        incident_id: str | None = None,
        issue_receipt: bool = True,
        causationid: str | None = None,
    ) -> Submission:
        """Open an incident for a report, as `POST /v1/reports` does.

        `incident_id` (an inbound event's derived id) replaces a random one; without
        `issue_receipt` an anonymous report gets no receipt and secret (an inbound report on
        Kafka: the answer travels on a topic); `causationid` is the event it came from.

        An anonymous report (no reporter) gets a receipt and a one-time secret; only
        the secret's argon2id hash is stored. With an Idempotency-Key, the answer is
        stored in the same transaction as the event; a request with the same key and
        body gets it again (the secret replaced by null and a note), another body
        raises IdempotencyConflict. Raises UnknownCategory, PeopleRefused (see
        `resolve_people`), and UnknownReporter when `check_reporter` and the directory
        does not know the reporter.
        """
        if idempotency is not None:
            async with self.runtime.db.acquire() as conn:
                earlier = await self._earlier_answer(conn, idempotency)
            if earlier is not None:
                return earlier
        if check_reporter and reporter is not None:
            async with self.runtime.db.acquire() as conn:
                known = await conn.fetchval("SELECT 1 FROM people WHERE person_id = $1", reporter)
            if not known:
                raise UnknownReporter(f"the directory has no person {reporter!r}")
        if report.category not in self.policy.categories:
            raise UnknownCategory(report.category, sorted(self.policy.categories))
        people = await self.resolve_people(report, reporter)
        anonymous = reporter is None and issue_receipt
        incident_id = incident_id or str(uuid.uuid4())
        # the caller's span: a new root for anonymous reports (see api._take)
        traceparent = current_traceparent()
        receipt = secret = secret_hash = None
        if anonymous:
            receipt, secret = new_receipt(), new_secret()
            secret_hash = await self._hash(secret)
        answer = {"incident_id": incident_id, "receipt": receipt, "secret": None}
        stored = {**answer, "note": REPLAY_NOTE} if anonymous else answer
        new = NewReport(
            NewIncident(
                incident_id, report, reporter, channel, actor, traceparent, causationid, people
            ),
            receipt,
            secret_hash,
            idempotency,
            stored,
        )
        # Shares a transaction with the reports arriving meanwhile (see the module doc).
        outcome = await self.writer.submit(new)
        if isinstance(outcome, IdempotencyConflict):
            raise outcome
        if outcome is not None:  # a request with this key was answered first
            return outcome
        return Submission(202, {**answer, "secret": secret}, replayed=False)

    async def take_inbound(
        self, event: dict[str, Any], system: System, *, channel: str, issue_receipt: bool
    ) -> Submission:
        """An inbound event of an authenticated registered system (docs/inbound.md),
        taken exactly as `take_report` takes `POST /v1/reports`' body: the same
        validation model, use case and refusals, then triage decides.

        The actor is the system (`system:<id>`); a `reporter` it names only within its
        scope. The incident id derives from the system and the event id, and the event
        id is the Idempotency-Key: a resend answers the first answer (one incident), the
        same id with other data raises IdempotencyConflict. Raises InboundRefused too.
        """
        envelope, request = report_of(event)
        reporter = request.reporter
        authorize(system.id, system.scopes, reporter)
        key = self.idempotency_key(
            system.principal, f"ce:{envelope.id}", request_digest("inbound", envelope.data)
        )
        incident_id = incident_id_for(system.id, envelope.id)
        async with self.runtime.db.acquire() as conn:
            earlier = await self._earlier_answer(conn, key)  # or IdempotencyConflict
            if earlier is None and await eventstore.stream_version(conn, incident_id):
                # a resend after its stored answer expired (IDEMPOTENCY_TTL): the same
                # incident, which exists; the receipt was given the first time only
                earlier = Submission(
                    202, {"incident_id": incident_id, "receipt": None, "secret": None}, True
                )
        if earlier is not None:
            return earlier
        return await self.take_report(
            request.report(),
            reporter=reporter,
            actor=system.principal,
            channel=channel,
            idempotency=key,
            check_reporter=True,
            incident_id=incident_id,
            issue_receipt=issue_receipt,
            causationid=envelope.id,
        )

    async def resolve_people(self, report: ReportInput, reporter: str | None) -> People:
        """The report's accused and named resolved against the directory: one indexed
        statement for all its entries (none without entries). Raises PeopleRefused."""
        ids, norms = to_look_up(report)
        if not ids and not norms:
            return People()
        async with self.runtime.db.acquire() as conn:
            known, names = await lookup_people(conn, ids, norms)
        return resolve_people(report, known_ids=known, names=names, reporter=reporter)

    async def _write_reports(
        self, conn: asyncpg.Connection, reports: Sequence[NewReport]
    ) -> list[Submission | IdempotencyConflict | None]:
        """Inside the caller's transaction: open the incidents, store the receipts and the
        Idempotency-Key answers. Per report: None when it was written, else the answer
        of an earlier request with its key (or IdempotencyConflict), and nothing written.

        The keys' advisory locks are taken first, in one order, so two batches never
        wait on each other's keys; a key repeated within the batch answers as its first.
        """
        answered = await self._idempotency_answers(conn, [r.idempotency for r in reports])
        outcomes: list[Submission | IdempotencyConflict | None] = []
        written: list[NewReport] = []
        for report in reports:
            key = report.idempotency
            if key is not None:
                earlier = answered.get((key.scope, key.key_digest))
                if earlier is not None:
                    request_hash, submission = earlier
                    same = request_hash == key.request_hash
                    outcomes.append(submission if same else IdempotencyConflict())
                    continue
                stored = Submission(202, report.stored or {}, replayed=True)
                answered[(key.scope, key.key_digest)] = (key.request_hash, stored)
            outcomes.append(None)
            written.append(report)
        if not written:
            return outcomes
        await self.open_incidents(conn, [r.incident for r in written])
        anonymous = [r for r in written if r.receipt is not None]
        if anonymous:
            await conn.execute(
                "INSERT INTO receipts (receipt, incident_id, secret_hash)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
                [r.receipt for r in anonymous],
                [r.incident.incident_id for r in anonymous],
                [r.secret_hash for r in anonymous],
            )
        named = [r.incident for r in written if r.incident.reporter is not None]
        if named:  # her reports, for her follow-up (docs/reporters.md)
            await conn.execute(
                "INSERT INTO reporter_reports (owner, incident_id)"
                " SELECT * FROM unnest($1::text[], $2::text[])",
                [self.reporter_tag(i.reporter or "") for i in named],
                [i.incident_id for i in named],
            )
        keyed = [(r.idempotency, r.stored) for r in written if r.idempotency is not None]
        if keyed:
            await conn.execute(
                "INSERT INTO idempotency (scope, key, request_hash, status, response)"
                " SELECT s, k, h, 202, r::jsonb"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x (s, k, h, r)",
                [key.scope for key, _ in keyed],
                [key.key_digest for key, _ in keyed],
                [key.request_hash for key, _ in keyed],
                [json.dumps(stored) for _, stored in keyed],
            )
        return outcomes

    async def _idempotency_answers(
        self, conn: asyncpg.Connection, keys: Sequence[IdempotencyKey | None]
    ) -> dict[tuple[str, str], tuple[str, Submission]]:
        """Lock the keys (sorted, one statement) and read their stored answers:
        (scope, key digest) -> (request hash, the answer replayed). Expired ones go."""
        present = [k for k in keys if k is not None]
        if not present:
            return {}
        await conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k",
            sorted({k.lock_id for k in present}),
        )
        return await self._stored_answers(conn, present)

    async def _stored_answers(
        self, conn: asyncpg.Connection, keys: Sequence[IdempotencyKey]
    ) -> dict[tuple[str, str], tuple[str, Submission]]:
        """The answers stored with these keys, as `_idempotency_answers` returns them;
        an expired answer is deleted first (the key may then be used again)."""
        scopes, digests = [k.scope for k in keys], [k.key_digest for k in keys]
        await conn.execute(  # an expired answer is forgotten, and the key may be used again
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

    async def open_incident(
        self,
        conn: asyncpg.Connection,
        incident_id: str,
        report: ReportInput,
        *,
        reporter: str | None,
        channel: str,
        actor: str,
        traceparent: str | None,
        causationid: str | None = None,
        people: People,
    ) -> Envelope:
        """Inside the caller's transaction: the incident's key, its sealed submitted event
        (stored and queued) and its retention row. Raises UnknownCategory."""
        (event,) = await self.open_incidents(
            conn,
            [
                NewIncident(
                    incident_id, report, reporter, channel, actor, traceparent, causationid, people
                )
            ],
        )
        return event

    async def open_incidents(
        self, conn: asyncpg.Connection, incidents: Sequence[NewIncident]
    ) -> list[Envelope]:
        """`open_incident` for several incidents, with one statement per table."""
        keys = await self.keys.create_many(conn, [i.incident_id for i in incidents])
        now = datetime.now(UTC)
        events = [
            submit_report(
                i.report,
                self.policy,
                incident_id=i.incident_id,
                reporter=i.reporter,
                channel=i.channel,
                actor=i.actor,
                source=self.runtime.source,
                now=now,
                protect=key,
                people=i.people,
                traceparent=i.traceparent,
                causationid=i.causationid,
            )
            for i, key in zip(incidents, keys, strict=True)
        ]
        await eventstore.append_streams(  # a refusal ends the caller's transaction
            conn,
            [(e.subject, 0, [e]) for e in events],
            topic_prefix=self.runtime.settings.kafka_topic_prefix,
            savepoint=False,
        )
        await conn.execute(
            "INSERT INTO retention (incident_id, category)"
            " SELECT * FROM unnest($1::text[], $2::text[])",
            [i.incident_id for i in incidents],
            [i.report.category for i in incidents],
        )
        return events

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

    async def _earlier_answer(
        self, conn: asyncpg.Connection, key: IdempotencyKey
    ) -> Submission | None:
        found = (await self._stored_answers(conn, [key])).get((key.scope, key.key_digest))
        if found is None:
            return None
        request_hash, submission = found
        if request_hash != key.request_hash:
            raise IdempotencyConflict
        return submission

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
        first = events[0].id
        sealed = key.seal("text", text)
        event = make_event(
            "incident.reporter.message.v1",
            subject=incident_id,
            data=ReporterMessage(direction="from_reporter", author="reporter", text=sealed),
            source=self.runtime.source,
            time=datetime.now(UTC),
            actor=actor,
            correlationid=events[0].correlationid or first,
            traceparent=fresh_traceparent(),
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
