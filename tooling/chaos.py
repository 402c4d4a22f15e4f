"""`incidents chaos`: crash every process of a real local stack while reports flow in,
then check the invariants of the product spec on what the ledger recorded.

The run, in order:

1. **A stack of its own.** A Tansu broker and the four services (`python -m
   services.<name>`) on free ports, each in its own process group, logs in the run
   folder, with a fresh database on the PostgreSQL of `INCIDENTS_DATABASE_URL`, else
   127.0.0.1:5432, else an embedded server. The policy is one of seconds (`POLICY`,
   written to the run folder and passed as `INCIDENTS_POLICY_FILE`), so every level's
   deadline and the reporter's acknowledgement clock pass during the run.
2. **Reports at a steady rate**, a seeded mix of anonymous and named reports (the seed
   case of docs/getting-started.md among them: see `TEMPLATES`), each with its own
   `Idempotency-Key`. A report whose answer is lost (intake killed mid-request, a 5xx)
   is sent again with the same key until it gets its 202, as a careful client would.
   A share of the incidents is acknowledged by its level-1 handler a second or two
   later, so that acknowledged chains are checked too.
3. **Faults meanwhile.** Each service is SIGKILLed (its whole process group) `kills`
   times at seeded random moments of the drive (when a random share of the reports has
   been accepted, so faults spread over the run even when intake cannot keep up with
   the asked rate) and started again at once. Intake is killed right after a 202
   and, when it can be caught, while its outbox holds rows the relay has not
   published yet (the relay mid-batch); the other services while their outbox has a
   backlog, when one shows up within a few seconds. With `broker_restart`, the broker
   is killed and started empty once, at a moment when every service is up, and no
   service is killed until every relay has noticed the reset (see below). A restart
   while a service is down does not converge today: that service creates its marker
   topic when it starts, never learns that the broker lost its data, and what it had
   published that nobody had consumed yet is lost.
4. **A quiet period**: no new input until every deadline of the last incidents has
   passed, every outbox is published and the ledger has stopped growing.
5. **The verdict**, from the ledger's own leaves (read from the database) and the
   answers the driver got: see `evaluate`. `verify_ledger` (what `incidents audit
   verify` runs) then checks the whole ledger through the audit API. The verdict is
   printed as a table and written to `verdict.json` in the run folder.

**How the system converges after a broker restart.** Tansu keeps everything in memory:
the restart loses every topic, record, consumer group and offset, and a producer with
cached metadata may get acks for sends that are lost. PostgreSQL is the record. Every
service keeps its events and an outbox in its own schema, and its `BrokerWatch` checks
every `INCIDENTS_BROKER_CHECK_INTERVAL` for a marker topic that only that service
creates. When the marker is gone, the service creates its topics again, rebuilds its
consumers (which read each partition of the new topics from offset 0, whatever a
consumer that ran on may have committed there at the old broker's positions) and
rewinds its relay's cursor by `INCIDENTS_OUTBOX_REPLAY_WINDOW` (7 days), so it
publishes again, in order, everything it wrote in that window, including what the old
broker acked and lost. A topic may come back with 4 partitions instead of 3 (the first
client to ask for it has Tansu auto-create it, with its default, before the watch
creates it), and Tansu keeps handing a group member it knows its first assignment; so
the faust agents, once their own rejoin has settled, compare their assignment with
fresh metadata and join again as a new member until they read every partition
(`GroupRejoin` in services/infra/faustapp.py: the run of #9 that lost notifications
had escalation never reading the new partition). Consumers skip what they have
already handled: each writes a tracking row keyed by (consumer, event id) in the same
transaction as its effects, and audit keys each ledger entry by (topic, event id). So
whatever the broker forgot arrives again and is handled once, and nothing is recorded
twice. `relay_state.resets` in each schema counts the rewinds; the run waits for all
four before the next kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import secrets
import statistics
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml
from rich.console import Console
from rich.table import Table

import services
from services.domain.escalation import CLOCK_CHANNELS
from services.infra.settings import with_database
from tooling.launcher import SERVICES, LaunchError, PrivateStack
from tooling.localstack import (
    EmbeddedPostgres,
    LocalStackError,
    postgres_answers,
    run_sync,
)

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
AUDITOR = "auditor"  # dev-auditor-token, from the development tokens file
_DATA = Path(services.__file__).resolve().parent / "data"

SUBMITTED = "incident.report.submitted.v1"
TRIAGED = "incident.triaged.v1"
NOTIFIED = "incident.notified.v1"
ESCALATED = "incident.escalated.v1"
ACKNOWLEDGED = "incident.acknowledged.v1"
CLEARED = "incident.escalation.cleared.v1"
REMINDER = "incident.reminder.due.v1"
BREACHED = "incident.deadline.breached.v1"
REPORTER_CLOCK = "reporter_acknowledgement"

TOLERANCE = timedelta(seconds=3)
"""Slack when two clocks of one machine are compared: an event's `time` is taken a
moment after the instant its state machine used (same transaction, up to a batch)."""
CUTOFF_MARGIN = timedelta(seconds=3)
"""Deadlines later than the snapshot minus this are not required to have fired."""
MAX_IN_FLIGHT = 256
REQUEST_TIMEOUT = 120.0
"""Long: a request to a live but busy intake is left to finish (a retry would only add
work); one to a killed intake fails at once with the dropped connection."""
READY_WITHIN = 600.0
"""A restarted service under a backlog of requests may take long to answer /readyz."""
GIVE_UP_AFTER = 300.0
"""A report still unanswered this long after it was first sent is given up on."""

POLICY: dict[str, Any] = {
    "version": "chaos-seconds-1",
    "categories": {
        "sexual_misconduct": "critical",
        "harassment": "high",
        "fraud": "high",
        "safety": "high",
        "security": "high",
        "other": "normal",
    },
    "severities": {
        "critical": {
            "chain": [
                {"role": "hr_case_handler", "acknowledge_within": "4s"},
                {"role": "hr_head", "acknowledge_within": "4s"},
                {"role": "chief_ethics_officer", "acknowledge_within": "6s"},
                {"role": "board_audit_committee", "acknowledge_within": "8s"},
            ],
            "repeat_last_every": "1h",
            "feedback_within": "1h",
        },
        "high": {
            "chain": [
                {"role": "hr_case_handler", "acknowledge_within": "5s"},
                {"role": "hr_head", "acknowledge_within": "6s"},
                {"role": "chief_ethics_officer", "acknowledge_within": "8s"},
            ],
            "repeat_last_every": "1h",
            "feedback_within": "1h",
        },
        "normal": {
            "chain": [
                {"role": "hr_case_handler", "acknowledge_within": "6s"},
                {"role": "hr_head", "acknowledge_within": "10s"},
            ],
            "repeat_last_every": "1h",
            "feedback_within": "1h",
        },
    },
    "reporter_acknowledgement_within": "20s",
    "conflicts": {
        "exclude": [
            "accused",
            "accused_management_chain",
            "named_in_report",
            "reporter",
            "accused_reports",
        ],
        "independent_roles": ["chief_ethics_officer", "board_audit_committee"],
    },
}
"""The policy of seconds: chains end (with one repeat of the last level) within 22 s of
triage, the reporter's acknowledgement clock breaches after 20 s; the next repeats and
the feedback clock are an hour away, after the run."""


def _seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(text[:-1]) * units[text[-1]]


CHAIN_SPAN = max(
    sum(_seconds(level["acknowledge_within"]) for level in severity["chain"])
    for severity in POLICY["severities"].values()
)
QUIET_AFTER = timedelta(
    seconds=max(CHAIN_SPAN, _seconds(POLICY["reporter_acknowledgement_within"]))
)


# --------------------------------------------------------------------------- the mix


@dataclass(frozen=True)
class Template:
    """One kind of report the driver sends, and what the demo directory makes of it."""

    name: str
    body: dict[str, Any]
    login: str | None = None  # who calls, by development token; None: anonymous
    path: str = "/v1/reports"
    first: tuple[str, ...] = ()  # who triage must ask at level 1
    never: frozenset[str] = frozenset()  # accused, their managers, named: never told
    acker: str | None = None  # a level-1 handler who may acknowledge
    weight: int = 1

    @property
    def anonymous(self) -> bool:
        """Gets a receipt (and costs intake an argon2id hash): no reporter."""
        return self.login is None or (self.login == "hris" and "reporter" not in self.body)

    @property
    def token(self) -> str | None:
        return None if self.login is None else _dev_token(self.login)

    @property
    def ack_token(self) -> str | None:
        return None if self.acker is None else _dev_token(self.acker)

    @property
    def ack_principal(self) -> str | None:
        return None if self.acker is None else f"p-{self.acker}"


def _dev_token(login: str) -> str:
    """The development bearer token of `services/data/tokens.yaml` for a login."""
    return f"dev-{login}-token"


_WANG_LINE = frozenset({"p-wang", "p-li", "p-zhang"})
TEMPLATES: tuple[Template, ...] = (
    Template(
        "seed case",
        {
            "category": "sexual_misconduct",
            "summary": "Assault by store manager",
            "description": "On Friday evening the store manager ...",
            "unit": "city-retail",
            "accused": ["p-wang"],
        },
        first=("p-chen",),
        never=_WANG_LINE,
        acker="chen",
        weight=3,
    ),
    Template(
        "harassment channel",
        {
            "category": "harassment",
            "summary": "Remarks in the stock room",
            "description": "Repeated remarks ...",
            "unit": "city-retail",
            "accused": ["p-wang"],
        },
        path="/v1/channels/harassment/reports",
        first=("p-chen",),
        never=_WANG_LINE,
        acker="chen",
        weight=2,
    ),
    Template(
        "accused HR handler",
        {
            "category": "harassment",
            "summary": "HR handler accused",
            "description": "...",
            "unit": "city-retail",
            "accused": ["p-chen"],
        },
        first=("p-ma",),
        never=frozenset({"p-chen", "p-li", "p-zhang"}),
        acker="ma",
    ),
    Template(
        "nobody at level 1",
        {
            "category": "security",
            "summary": "Badge misuse",
            "description": "...",
            "unit": "city-retail",
            "accused": ["p-chen"],
            "named": ["p-ma"],
        },
        never=frozenset({"p-chen", "p-ma", "p-li", "p-zhang"}),
    ),
    Template(
        "system, anonymous",
        {"category": "fraud", "summary": "Invoice fraud", "description": "...", "unit": "group"},
        login="hris",
        first=("p-ma",),
        acker="ma",
    ),
    Template(
        "free-text accused",
        {
            "category": "other",
            "summary": "Unsafe ladder",
            "description": "...",
            "accused": ["the night shift supervisor"],
        },
        # a name that matches nobody: conflict-unresolved, the independent role only
        first=("p-sun",),
        acker="sun",
    ),
    Template(
        "named employee",
        {
            "category": "harassment",
            "summary": "Comments in meetings",
            "description": "...",
            "unit": "city-retail",
            "accused": ["p-wang"],
        },
        login="liu",
        first=("p-chen",),
        never=_WANG_LINE | {"p-liu"},
        acker="chen",
        weight=3,
    ),
    Template(
        "system for a person",
        {
            "category": "safety",
            "summary": "Blocked fire exit",
            "description": "...",
            "unit": "city-retail",
            "reporter": "p-liu",
        },
        login="hris",
        first=("p-chen",),
        never=frozenset({"p-liu"}),
        acker="chen",
        weight=2,
    ),
    Template(
        "reporter in the chain",
        {
            "category": "sexual_misconduct",
            "summary": "HR head accused",
            "description": "...",
            "unit": "group",
            "accused": ["p-zhou"],
        },
        login="sun",
        # p-ma, the group's handler, answers to p-zhou: City Retail's is asked
        first=("p-chen",),
        never=frozenset({"p-zhou", "p-sun", "p-zhang", "p-ma"}),
        acker="chen",
    ),
    Template(
        "handler reports",
        {"category": "fraud", "summary": "Expense claims", "description": "...", "unit": "group"},
        login="chen",
        first=("p-ma",),
        never=frozenset({"p-chen"}),
        acker="ma",
    ),
    Template(
        "unit president accused",
        {
            "category": "harassment",
            "summary": "Unit president accused",
            "description": "...",
            "unit": "city-retail",
            "accused": ["p-li"],
        },
        login="liu",
        # everyone in City Retail answers to p-li: the group's handler is asked
        first=("p-ma",),
        never=frozenset({"p-li", "p-zhang", "p-chen", "p-wang", "p-liu"}),
        acker="ma",
    ),
)
SEED_CASE = TEMPLATES[0]
TEMPLATE_BY_NAME = {t.name: t for t in TEMPLATES}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ChaosConfig:
    """What `incidents chaos` does; the defaults are those of the command."""

    reports: int = 10_000
    rate: float = 100.0
    kills: int = 3
    broker_restart: bool = False
    seed: int | None = None
    anonymous: float = 0.25
    ack_share: float = 0.2
    run_dir: Path | None = None
    database_url: str | None = None
    converge_timeout: float = 300.0


class ChaosError(RuntimeError):
    """The run could not be carried out (not a broken invariant)."""


# --------------------------------------------------------------------------- the stack


class ChaosStack(PrivateStack):
    """A broker and the four services as child processes, restartable at will, with
    none of the caller's `INCIDENTS_*` settings: the policy of seconds, the demo
    directory and tokens.

    Processes are started from the calling thread (the kernel ties `die_with_parent`
    to it), so call `start_service` from the thread that runs the chaos loop.
    """

    def __init__(self, run_dir: Path, database_url: str, policy_file: Path) -> None:
        super().__init__(
            run_dir,
            database_url,
            inherit_incidents=False,
            env={
                "INCIDENTS_BROKER_CHECK_INTERVAL": "0.5",
                "INCIDENTS_CHECKPOINT_INTERVAL": "1",
                "INCIDENTS_POLICY_FILE": str(policy_file),
                "INCIDENTS_DIRECTORY_FILE": str(_DATA / "directory.yaml"),
                "INCIDENTS_TOKENS_FILE": str(_DATA / "tokens.yaml"),
            },
        )


# --------------------------------------------------------------------------- records


@dataclass
class Accepted:
    """A 202 the driver got."""

    incident_id: str
    template: str
    at: datetime
    replayed: bool
    attempts: int
    sent: float = 0.0  # seconds after the drive started, first attempt
    latency: float = 0.0  # seconds from the first attempt to the 202


@dataclass
class Ack:
    """An acknowledgement intake accepted (202, or 200 when it was already recorded)."""

    incident_id: str
    principal: str
    at: datetime
    status: int


@dataclass
class Fault:
    """One injected fault."""

    target: str
    at: float  # seconds after the drive started
    how: str
    down: float = 0.0  # until it answered /readyz again (broker: every relay rewound)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ready_at: datetime | None = None


@dataclass
class RunRecord:
    """Everything the driver saw."""

    accepted: dict[str, Accepted] = field(default_factory=dict)
    acks: dict[str, Ack] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    server_errors: int = 0
    connection_errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    ack_attempts: int = 0
    ack_unknown: set[str] = field(default_factory=set)
    started: dict[str, datetime] = field(default_factory=dict)  # triaged event id -> when
    notes: list[str] = field(default_factory=list)

    def down_intervals(self, target: str) -> list[tuple[datetime, datetime]]:
        return [
            (f.started_at, f.ready_at or datetime.max.replace(tzinfo=UTC))
            for f in self.faults
            if f.target == target
        ]


# --------------------------------------------------------------------------- the run


def _now() -> datetime:
    return datetime.now(UTC)


class Chaos:
    """Drives one chaos run against a started `ChaosStack`."""

    def __init__(
        self,
        config: ChaosConfig,
        stack: ChaosStack,
        database_url: str,
        console: Console,
        seed: int,
    ) -> None:
        self.config = config
        self.stack = stack
        self.database_url = database_url
        self.console = console
        self.seed = seed
        self.rng = random.Random(seed)  # the mix of reports, drawn in order
        self.fault_rng = random.Random(seed ^ 0x5EED)  # the faults, drawn as they come
        self.record = RunRecord()
        self._cond = asyncio.Condition()
        self._down = 0
        self._broker_busy = False
        self._accepted_signal = asyncio.Event()
        self._driven = asyncio.Event()
        self._acks: set[asyncio.Task[None]] = set()
        self._t0 = 0.0
        self.drive_seconds = 0.0
        self.converge_seconds = 0.0
        self.snapshot_at = _now()
        self.pool: asyncpg.Pool | None = None
        self.http: httpx.AsyncClient | None = None

    # -- plumbing ---------------------------------------------------------------

    @property
    def db(self) -> asyncpg.Pool:
        assert self.pool is not None
        return self.pool

    @property
    def client(self) -> httpx.AsyncClient:
        assert self.http is not None
        return self.http

    def _elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self._t0

    async def _sleep_until(self, offset: float) -> None:
        delay = offset - self._elapsed()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _progress_reached(self, share: float) -> None:
        """Until that share of the reports was accepted (or the drive is over).

        Faults follow the drive's progress, not the clock: when intake cannot keep up
        with the asked rate, they still spread over the whole run.
        """
        while len(self.record.accepted) < share * self.config.reports:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._driven.wait(), 0.05)
                return

    async def backlog(self, schema: str) -> int:
        """Outbox rows of a service that its relay has not published yet."""
        value = await self.db.fetchval(
            f"SELECT (SELECT last FROM {schema}.counters WHERE name = 'outbox')"  # noqa: S608
            f" - coalesce((SELECT published FROM {schema}.relay_state WHERE name = 'kafka'), 0)"
        )
        return int(value or 0)

    async def resets(self) -> dict[str, int]:
        """How many times each service's relay has rewound after a broker reset."""
        out = {}
        for schema in SERVICES:
            value = await self.db.fetchval(
                f"SELECT resets FROM {schema}.relay_state WHERE name = 'kafka'"  # noqa: S608
            )
            out[schema] = int(value or 0)
        return out

    async def ledger_size(self) -> int:
        return int(
            await self.db.fetchval("SELECT last + 1 FROM audit.counters WHERE name='ledger'")
        )

    # -- the run ----------------------------------------------------------------

    async def run(self) -> tuple[list[tuple[int, str, dict[str, Any] | None]], Any, str | None]:
        limits = httpx.Limits(max_connections=MAX_IN_FLIGHT + 32, max_keepalive_connections=64)
        async with (
            httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT) as http,
            asyncpg.create_pool(self.database_url, min_size=1, max_size=6) as pool,
        ):
            self.http, self.pool = http, pool
            await self._warm_up()
            loop = asyncio.get_running_loop()
            self._t0 = loop.time()
            faults = [
                asyncio.ensure_future(self._kill_loop(name, self._moments())) for name in SERVICES
            ]
            if self.config.broker_restart:
                share = self.fault_rng.uniform(0.3, 0.6)
                faults.append(asyncio.ensure_future(self._broker_fault(share)))
            try:
                await self._drive()
                self.drive_seconds = self._elapsed()
                self._driven.set()
                await asyncio.gather(*faults)
            finally:
                for task in faults:
                    task.cancel()
            if self._acks:
                await asyncio.gather(*self._acks, return_exceptions=True)
            converge_began = loop.time()
            await self._converge()
            self.converge_seconds = loop.time() - converge_began
            self.snapshot_at = _now()
            leaves = await self._read_ledger()
            self.record.started = await self._read_starts()
            report, error = await self._verify()
            return leaves, report, error

    def _moments(self) -> list[float]:
        """When to kill, as shares of the reports accepted so far."""
        return sorted(self.fault_rng.uniform(0.05, 0.9) for _ in range(self.config.kills))

    async def _warm_up(self) -> None:
        """Wait until triage holds the directory, then see one report through.

        Intake seeds the directory file as events (one `directory.people.imported.v1`
        per run of up to 500 people): triage holds the directory once its log has as
        many events as intake's directory streams."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not await self.db.fetchval(
            "SELECT n > 0 AND (SELECT count(*) FROM triage.directory_log) >= n FROM"
            " (SELECT count(*) AS n FROM intake.events WHERE stream_id LIKE 'directory%') e"
        ):
            if loop.time() > deadline:
                raise ChaosError("triage did not receive the directory within 60 s")
            await asyncio.sleep(0.2)
        await self._submit(SEED_CASE, str(uuid.uuid4()), acknowledge=False, ack_delay=0)
        [incident] = list(self.record.accepted)
        while not await self.db.fetchval(
            "SELECT 1 FROM audit.ledger WHERE incident_id = $1 AND event_type = $2",
            incident,
            TRIAGED,
        ):
            if loop.time() > deadline:
                raise ChaosError("the first report was not triaged into the ledger in 60 s")
            await asyncio.sleep(0.1)

    async def _drive(self) -> None:
        anonymous = [t for t in TEMPLATES if t.anonymous]
        named = [t for t in TEMPLATES if not t.anonymous]
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        for i in range(self.config.reports):
            await self._sleep_until(i / self.config.rate)
            pool = anonymous if self.rng.random() < self.config.anonymous else named
            template = self.rng.choices(pool, weights=[t.weight for t in pool])[0]
            key = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            acknowledge = template.ack_token is not None and self.rng.random() < (
                self.config.ack_share
            )
            ack_delay = self.rng.uniform(1.0, 2.5)
            await slots.acquire()
            task = asyncio.ensure_future(self._submit(template, key, acknowledge, ack_delay))
            tasks.add(task)
            task.add_done_callback(functools.partial(_finished, slots, tasks))
            if i % max(1, int(self.config.rate * 10)) == 0 and i:
                self._progress(i)
        if tasks:
            await asyncio.gather(*tasks)
        self._progress(self.config.reports)

    def _progress(self, sent: int) -> None:
        r = self.record
        down = [f.target for f in r.faults if f.ready_at is None]
        self.console.print(
            f"  {self._elapsed():6.1f}s  sent {sent:,}  accepted {len(r.accepted):,}"
            f"  acks {len(r.acks):,}  faults {len(r.faults)}"
            + (f"  (down: {', '.join(down)})" if down else ""),
            highlight=False,
        )

    async def _submit(
        self, template: Template, key: str, acknowledge: bool, ack_delay: float
    ) -> None:
        headers = {"Idempotency-Key": key}
        if template.token:
            headers["Authorization"] = f"Bearer {template.token}"
        url = self.stack.url("intake") + template.path
        loop = asyncio.get_running_loop()
        began = loop.time()
        delay = 0.1
        attempts = 0
        while loop.time() - began < GIVE_UP_AFTER:
            attempts += 1
            try:
                answer = await self.client.post(url, json=template.body, headers=headers)
            except httpx.HTTPError as exc:
                self.record.connection_errors += 1
                self.record.error_kinds[type(exc).__name__] += 1
            else:
                if answer.status_code == 202:
                    incident = answer.json()["incident_id"]
                    self.record.accepted[incident] = Accepted(
                        incident,
                        template.name,
                        _now(),
                        answer.headers.get("Idempotent-Replayed") == "true",
                        attempts,
                        began - self._t0,
                        loop.time() - began,
                    )
                    self._accepted_signal.set()
                    if acknowledge:
                        task = asyncio.ensure_future(
                            self._acknowledge(incident, template, ack_delay)
                        )
                        self._acks.add(task)
                        task.add_done_callback(self._acks.discard)
                    return
                if answer.status_code < 500:
                    self.record.refused.append(
                        f"{template.name}: {answer.status_code} {answer.text[:200]}"
                    )
                    return
                self.record.server_errors += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        self.record.given_up.append(f"{template.name} (key {key}) after {attempts} attempts")

    async def _acknowledge(self, incident: str, template: Template, delay: float) -> None:
        """The level-1 handler acknowledges; retried until intake has routed it to them."""
        assert template.ack_token is not None and template.ack_principal is not None
        await asyncio.sleep(delay)
        url = f"{self.stack.url('intake')}/v1/incidents/{incident}/acknowledge"
        headers = {"Authorization": f"Bearer {template.ack_token}"}
        loop = asyncio.get_running_loop()
        began = loop.time()
        refusals = 0
        lost = False  # an attempt whose answer was lost may have been recorded
        while refusals < 60 and loop.time() - began < GIVE_UP_AFTER:
            self.record.ack_attempts += 1
            try:
                answer = await self.client.post(url, headers=headers)
            except httpx.HTTPError:
                lost = True
                await asyncio.sleep(0.5)
                continue
            if answer.status_code in (200, 202):
                self.record.acks[incident] = Ack(
                    incident, template.ack_principal, _now(), answer.status_code
                )
                return
            if answer.status_code < 500:
                refusals += 1  # 404/403: not routed to them yet
            await asyncio.sleep(0.5)
        if lost:
            self.record.ack_unknown.add(incident)

    # -- faults -----------------------------------------------------------------

    async def _kill_loop(self, name: str, moments: Sequence[float]) -> None:
        for share in moments:
            pause = self.fault_rng.uniform(0.0, 1.0)
            await self._progress_reached(share)
            async with self._cond:
                await self._cond.wait_for(lambda: not self._broker_busy)
                self._down += 1
            try:
                await self._kill(name, pause)
            finally:
                async with self._cond:
                    self._down -= 1
                    self._cond.notify_all()

    async def _kill(self, name: str, pause: float) -> None:
        how = await self._pick_moment(name)
        fault = Fault(name, self._elapsed(), how)
        self.stack.kill(name)
        self.record.faults.append(fault)
        await asyncio.sleep(pause)
        self.stack.start_service(name)
        await self.stack.launcher.wait_ready_async(name, self.client, READY_WITHIN)
        fault.ready_at = _now()
        fault.down = (fault.ready_at - fault.started_at).total_seconds()

    async def _pick_moment(self, name: str, patience: float = 3.0) -> str:
        """Wait (a little) for the moment that hurts most; say what it was."""
        loop = asyncio.get_running_loop()
        until = loop.time() + patience
        after_202 = False
        while loop.time() < until:
            if name == "intake":
                self._accepted_signal.clear()
                try:
                    await asyncio.wait_for(self._accepted_signal.wait(), until - loop.time())
                except TimeoutError:
                    break
                after_202 = True
            try:
                pending = await self.backlog(name)
            except (asyncpg.PostgresError, OSError):
                pending = 0
            if pending > 0:
                return ("right after a 202, " if after_202 else "") + f"outbox backlog {pending}"
            if name != "intake":
                await asyncio.sleep(0.005)
        return "right after a 202" if after_202 else "at random"

    async def _broker_fault(self, share: float) -> None:
        await self._progress_reached(share)
        async with self._cond:
            self._broker_busy = True
            await self._cond.wait_for(lambda: self._down == 0)
        try:
            before = await self.resets()
            fault = Fault("broker", self._elapsed(), "killed and restarted empty")
            self.stack.restart_broker()
            self.record.faults.append(fault)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90
            while True:
                now = await self.resets()
                if all(now[s] > before[s] for s in SERVICES):
                    fault.how += "; every relay rewound"
                    break
                if loop.time() > deadline:
                    late = [s for s in SERVICES if now[s] <= before[s]]
                    self.record.notes.append(
                        f"relays of {', '.join(late)} had not rewound 90 s after the restart"
                    )
                    break
                await asyncio.sleep(0.2)
            fault.ready_at = _now()
            fault.down = (fault.ready_at - fault.started_at).total_seconds()
        finally:
            async with self._cond:
                self._broker_busy = False
                self._cond.notify_all()

    # -- the end ----------------------------------------------------------------

    async def _converge(self) -> None:
        """Wait until the last deadlines passed, outboxes are empty, the ledger is still."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        last_input = max(
            [a.at for a in self.record.accepted.values()]
            + [a.at for a in self.record.acks.values()]
        )
        quiet_from = last_input + QUIET_AFTER + timedelta(seconds=2)
        size, still_since = -1, loop.time()
        self.console.print(
            f"  quiet period: waiting for the deadlines (until"
            f" {quiet_from.strftime('%H:%M:%S')} UTC), empty outboxes and a still ledger",
            highlight=False,
        )
        while True:
            backlog = sum([await self.backlog(s) for s in SERVICES])
            current = await self.ledger_size()
            if current != size:
                size, still_since = current, loop.time()
            if _now() >= quiet_from and backlog == 0 and loop.time() - still_since >= 5:
                return
            if loop.time() - began > self.config.converge_timeout:
                self.record.notes.append(
                    f"did not converge within {self.config.converge_timeout:.0f} s"
                    f" (outbox backlog {backlog}); checked as it stood"
                )
                return
            await asyncio.sleep(1)

    async def _read_starts(self) -> dict[str, datetime]:
        """When escalation took in each triage decision (its tracking row, by event id)."""
        rows = await self.db.fetch(
            "SELECT event_key, processed_at FROM escalation.tracking WHERE consumer = 'escalation'"
        )
        return {row["event_key"]: row["processed_at"] for row in rows}

    async def _read_ledger(self) -> list[tuple[int, str, dict[str, Any] | None]]:
        leaves: list[tuple[int, str, dict[str, Any] | None]] = []
        async with self.db.acquire() as conn, conn.transaction():
            async for row in conn.cursor(
                "SELECT idx, leaf FROM audit.ledger ORDER BY idx", prefetch=5000
            ):
                body = json.loads(bytes(row["leaf"]))
                event = body.get("event")
                leaves.append((int(row["idx"]), str(body.get("topic")), event))
        return leaves

    async def _verify(self) -> tuple[Any, str | None]:
        from services.audit.verify import HttpSource, SourceError, verify_ledger

        try:
            async with HttpSource(self.stack.url("audit"), _dev_token(AUDITOR)) as source:
                return await verify_ledger(source), None
        except SourceError as exc:
            return None, str(exc)


# --------------------------------------------------------------------------- verdict


@dataclass
class Check:
    """One invariant: how many things were checked, and what broke it."""

    name: str
    checked: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def fail(self, message: str) -> None:
        self.violations.append(message)


@dataclass
class Move:
    """One `incident.escalated.v1`."""

    level: int
    recipients: tuple[str, ...]
    reason: str
    deadline: datetime
    time: datetime


@dataclass
class Trail:
    """What the ledger holds about one incident, reduced to what the checks read."""

    submitted: int = 0
    triaged: list[dict[str, Any]] = field(default_factory=list)
    triaged_ids: list[str] = field(default_factory=list)
    notified: list[tuple[str, str, int]] = field(default_factory=list)
    escalated: list[Move] = field(default_factory=list)
    acknowledged: list[tuple[datetime, str]] = field(default_factory=list)
    cleared: list[datetime] = field(default_factory=list)
    breached: list[tuple[str, datetime]] = field(default_factory=list)
    reminded: list[tuple[str, datetime]] = field(default_factory=list)


def _time(text: Any) -> datetime:
    return datetime.fromisoformat(str(text)).astimezone(UTC)


def trails(
    leaves: Iterable[tuple[int, str, dict[str, Any] | None]],
) -> tuple[dict[str, Trail], Counter[tuple[str, str]], int]:
    """Per incident, its trail; the count of each (topic, event id); raw entries."""
    out: dict[str, Trail] = defaultdict(Trail)
    keys: Counter[tuple[str, str]] = Counter()
    raw = 0
    for _idx, topic, event in leaves:
        if event is None:
            raw += 1
            continue
        keys[(topic, str(event.get("id")))] += 1
        kind = str(event.get("type", ""))
        subject = event.get("subject")
        if not kind.startswith("incident.") or not isinstance(subject, str):
            continue
        data = event.get("data") or {}
        trail = out[subject]
        if kind == SUBMITTED:
            trail.submitted += 1
        elif kind == TRIAGED:
            trail.triaged.append(data)
            trail.triaged_ids.append(str(event.get("id")))
        elif kind == NOTIFIED:
            trail.notified.append((data["principal"], data["channel"], int(data["level"])))
        elif kind == ESCALATED:
            trail.escalated.append(
                Move(
                    int(data["level"]),
                    tuple(data["recipients"]),
                    data["reason"],
                    _time(data["deadline"]),
                    _time(event["time"]),
                )
            )
        elif kind == ACKNOWLEDGED:
            trail.acknowledged.append((_time(event["time"]), data["principal"]))
        elif kind == CLEARED:
            trail.cleared.append(_time(event["time"]))
        elif kind == BREACHED:
            trail.breached.append((data["clock"], _time(data["due_at"])))
        elif kind == REMINDER:
            trail.reminded.append((data["clock"], _time(data["due_at"])))
    return out, keys, raw


class _Schedule:
    """The chain of one triage decision, read independently of the escalation code."""

    def __init__(self, triaged: Mapping[str, Any]) -> None:
        self.levels = {int(lv["level"]): lv for lv in triaged["chain"]}
        self.last = max(self.levels)
        self.excluded = {x["principal"] for x in triaged.get("excluded", [])}
        self.repeat = triaged.get("repeat_last_every")

    def eligible(self, level: int) -> tuple[str, ...]:
        recipients = self.levels[level]["recipients"]
        return tuple(dict.fromkeys(p for p in recipients if p not in self.excluded))

    def within(self, level: int) -> int:
        return int(self.levels[level]["acknowledge_within"])

    def move(self, current: int, reason: str) -> list[tuple[int, tuple[str, ...], str]]:
        """The escalations of one move from `current`: empty levels, then the next asked."""
        if current >= self.last:
            asked = self.eligible(self.last)
            return [(self.last, asked, "not_acknowledged" if asked else "nobody_eligible")]
        out = []
        for level in range(current + 1, self.last + 1):
            asked = self.eligible(level)
            out.append((level, asked, reason if asked else "nobody_eligible"))
            if asked:
                break
            reason = "nobody_eligible"
        return out


def _effective(
    moment: datetime,
    downs: Sequence[tuple[datetime, datetime]],
    started: datetime | None = None,
) -> datetime:
    """When escalation could act on a deadline: at once, or when it was back up, and not
    before it had taken in the incident's triage decision (`started`)."""
    if started is not None and started > moment:
        moment = started
    for start, end in downs:
        if start <= moment <= end:
            return end
    return moment


def _walk_deadlines(
    incident: str,
    trail: Trail,
    triaged: Mapping[str, Any],
    cutoff: datetime,
    acked_at: datetime | None,
    cleared_at: datetime | None,
    downs: Sequence[tuple[datetime, datetime]],
    started: datetime | None = None,
) -> tuple[int, list[str]]:
    """Every acknowledgement deadline that passed has exactly one move; none after an ack.

    A deadline must have fired when it passed (or escalation came back up after it)
    before the handler acknowledged and before the snapshot's cutoff. A deadline close
    to the acknowledgement may or may not fire (a race the design allows); one after the
    acknowledgement was applied (the clearing) must not.
    """
    problems: list[str] = []
    plan = _Schedule(triaged)
    for (level, deadline), n in Counter((m.level, m.deadline) for m in trail.escalated).items():
        if n > 1:
            problems.append(f"{incident}: {n} escalations of level {level} for deadline {deadline}")
    moves: dict[datetime, list[Move]] = defaultdict(list)
    for move in trail.escalated:
        moves[move.deadline].append(move)

    def compare(deadline: datetime, found: list[Move], expected: list[Any]) -> None:
        got = [(m.level, tuple(sorted(m.recipients)), m.reason) for m in found]
        want = [(lv, tuple(sorted(r)), why) for lv, r, why in expected]
        if sorted(set(got)) != sorted(want):
            problems.append(f"{incident}: move at deadline {deadline}: got {got}, expected {want}")

    checked = 0
    window: tuple[datetime, datetime] | None
    current = 1
    if plan.eligible(1):
        due = _time(triaged["deadlines"]["level_1_acknowledge"])
        window = (due, due)
    else:
        starts = [
            d
            for d, ms in moves.items()
            if any(m.level == 1 and m.reason == "nobody_eligible" for m in ms)
        ]
        if not starts:
            return 0, [*problems, f"{incident}: level 1 has nobody eligible, but no record of it"]
        start = min(starts)
        found = moves.pop(start)
        expected = [(1, (), "nobody_eligible"), *plan.move(1, "nobody_eligible")]
        compare(start, found, expected)
        checked += 1
        level, asked, _why = expected[-1]
        current = level
        window = None
        if asked:  # asked at the instant of the start: the deadline is exact
            due = start + timedelta(seconds=plan.within(level))
            window = (due, due)
    while window is not None:
        low, high = window
        candidates = sorted(d for d in moves if low - timedelta(milliseconds=1) <= d <= high)
        could_fire = _effective(high, downs, started)
        required = could_fire < cutoff and (acked_at is None or could_fire < acked_at - TOLERANCE)
        if not candidates:
            if required:
                problems.append(
                    f"{incident}: the level {current} deadline at {high.isoformat()} passed"
                    " unacknowledged and nothing escalated"
                )
            break
        deadline = candidates[0]
        found = moves.pop(deadline)
        checked += 1
        if cleared_at is not None and deadline > cleared_at + TOLERANCE:
            problems.append(
                f"{incident}: escalated for deadline {deadline.isoformat()} after the"
                f" acknowledgement was applied at {cleared_at.isoformat()}"
            )
        expected = plan.move(current, "not_acknowledged")
        compare(deadline, found, expected)
        level, asked, _why = expected[-1]
        if not asked:
            break  # nobody left to ask: the chain stops
        repeated = current == plan.last
        current = level
        within = plan.repeat if repeated else plan.within(level)
        if within is None:
            break  # the last level is not repeated: nothing more is due
        # asked at the instant the deadline fired, a moment before the event's time
        fired = max(m.time for m in found if m.level == level)
        window = (
            fired - TOLERANCE + timedelta(seconds=within),
            fired + timedelta(seconds=within),
        )
    for deadline, left in sorted(moves.items()):
        problems.append(
            f"{incident}: unexpected escalation(s) for deadline {deadline.isoformat()}:"
            f" {[(m.level, m.reason) for m in left]}"
        )
    return checked, problems


def evaluate(
    record: RunRecord,
    leaves: Iterable[tuple[int, str, dict[str, Any] | None]],
    snapshot_at: datetime,
    verify_report: Any,
    verify_error: str | None,
) -> tuple[list[Check], dict[str, Any]]:
    """The invariants, on the ledger as it stood at `snapshot_at`, and some facts."""
    by_incident, keys, raw = trails(leaves)
    cutoff = snapshot_at - CUTOFF_MARGIN
    downs = record.down_intervals("escalation")
    accepted_all = Check("every report sent got a 202 (retried with its Idempotency-Key)")
    submission = Check("every 202 has exactly one ledger entry for its submission")
    decision = Check("every 202 has one triage decision, routed as the directory says")
    notices = Check("every 202 has its notifications (level 1 by triage, each escalation's)")
    once = Check("no ledger entry twice (topic + event id)")
    deadlines = Check("every passed deadline escalated exactly once per (level, deadline)")
    clocks = Check("the reporter-acknowledgement clock breached once unless acknowledged")
    acks = Check("every accepted acknowledgement is in the ledger and cleared the chain once")
    excluded = Check("no excluded (accused, management line, named, reporter) principal told")
    verified = Check("incidents audit verify: the ledger is intact")

    accepted_all.checked = len(record.accepted) + len(record.refused) + len(record.given_up)
    for text in record.refused:
        accepted_all.fail(f"refused: {text}")
    for text in record.given_up:
        accepted_all.fail(f"no answer: {text}")

    lateness: list[float] = []
    for incident, accepted in record.accepted.items():
        template = TEMPLATE_BY_NAME[accepted.template]
        trail = by_incident.get(incident, Trail())
        label = f"{incident} ({template.name})"
        submission.checked += 1
        if trail.submitted != 1:
            submission.fail(f"{label}: {trail.submitted} submission entries")
        decision.checked += 1
        if len(trail.triaged) != 1:
            decision.fail(f"{label}: {len(trail.triaged)} triage decisions")
        if not trail.triaged:
            continue
        triaged = trail.triaged[0]
        plan = _Schedule(triaged)
        if sorted(plan.eligible(1)) != sorted(template.first):
            decision.fail(f"{label}: level 1 asks {plan.eligible(1)}, expected {template.first}")

        notices.checked += 1
        by_triage = Counter(p for p, channel, level in trail.notified if channel == "triage")
        if by_triage != Counter(plan.eligible(1)):
            notices.fail(
                f"{label}: triage notified {dict(by_triage)}, level 1 is {plan.eligible(1)}"
            )
        if any(lv != 1 for _p, ch, lv in trail.notified if ch == "triage"):
            notices.fail(f"{label}: triage notified a level other than 1")
        by_escalation = Counter((lv, p) for p, ch, lv in trail.notified if ch == "escalation")
        asked = Counter((m.level, p) for m in trail.escalated for p in m.recipients)
        if by_escalation != asked:
            notices.fail(
                f"{label}: escalation notices {dict(by_escalation)} differ from the"
                f" escalations' recipients {dict(asked)}"
            )
        # a legal clock's reminder and breach tell people too (issue 22), never asking
        others = {ch for _p, ch, _lv in trail.notified} - {"triage", "escalation", *CLOCK_CHANNELS}
        if others:
            notices.fail(f"{label}: notices on unexpected channels {others}")
        if not trail.notified and any(plan.eligible(k) for k in plan.levels):
            notices.fail(f"{label}: nobody was notified")

        excluded.checked += 1
        barred = set(plan.excluded) | set(template.never)
        told = {p for p, _ch, _lv in trail.notified} | {
            p for m in trail.escalated for p in m.recipients
        }
        if told & barred:
            excluded.fail(f"{label}: told {sorted(told & barred)}, who are excluded")

        ack = record.acks.get(incident)
        valid_acks = [t for t, p in trail.acknowledged if ack is not None and p == ack.principal]
        acked_at = min(valid_acks) if valid_acks else None
        cleared_at = min(trail.cleared) if trail.cleared else None
        if ack is not None:
            acks.checked += 1
            if len(valid_acks) != 1:
                acks.fail(f"{label}: {len(valid_acks)} acknowledgements by {ack.principal}")
            if len(trail.cleared) != 1:
                acks.fail(f"{label}: acknowledged, cleared {len(trail.cleared)} times")
        elif (trail.acknowledged or trail.cleared) and incident not in record.ack_unknown:
            acks.fail(f"{label}: acknowledged/cleared, but the driver never acknowledged it")

        started = record.started.get(trail.triaged_ids[0])
        checked, problems = _walk_deadlines(
            incident, trail, triaged, cutoff, acked_at, cleared_at, downs, started
        )
        deadlines.checked += checked
        for problem in problems:
            deadlines.fail(problem)
        for move in trail.escalated:  # how late, from when escalation could have fired
            if move.reason == "not_acknowledged":
                could_fire = _effective(move.deadline, downs, started)
                lateness.append(max(0.0, (move.time - could_fire).total_seconds()))

        due_text = (triaged.get("deadlines") or {}).get(REPORTER_CLOCK)
        if due_text is not None:
            clocks.checked += 1
            due = _time(due_text)
            breaches = [d for c, d in trail.breached if c == REPORTER_CLOCK]
            reminders = [d for c, d in trail.reminded if c == REPORTER_CLOCK]
            could_fire = _effective(due, downs, started)
            required = could_fire < cutoff and (
                acked_at is None or could_fire < acked_at - TOLERANCE
            )
            forbidden = cleared_at is not None and due > cleared_at + TOLERANCE
            if len(breaches) > 1 or len(reminders) > 1:
                clocks.fail(f"{label}: {len(breaches)} breaches, {len(reminders)} reminders")
            if breaches and breaches[0] != due:
                clocks.fail(f"{label}: breach for {breaches[0]}, the clock was due {due}")
            if required and not breaches:
                clocks.fail(f"{label}: due {due.isoformat()}, unacknowledged, never breached")
            if forbidden and breaches:
                clocks.fail(f"{label}: breached though acknowledged at {cleared_at}")

    for (topic, event_id), count in keys.items():
        if count > 1:
            once.fail(f"{topic} {event_id}: {count} ledger entries")
    once.checked = sum(keys.values())

    verified.checked = 1
    if verify_error is not None:
        verified.fail(f"could not verify: {verify_error}")
    elif verify_report is None or not verify_report.ok:
        where = verify_report.where() if verify_report is not None else None
        reason = verify_report.reason if verify_report is not None else "no report"
        verified.fail(f"NOT INTACT: {reason}" + (f" (first bad index {where})" if where else ""))

    submissions = {i for i, t in by_incident.items() if t.submitted}
    unanswered = sorted(submissions - set(record.accepted))
    checks = [
        accepted_all,
        submission,
        decision,
        notices,
        once,
        deadlines,
        clocks,
        acks,
        excluded,
        verified,
    ]
    facts: dict[str, Any] = {
        "ledger entries": sum(keys.values()) + raw,
        "raw (rejected) entries": raw,
        "submissions in the ledger without a 202 seen": len(unanswered),
    }
    if lateness:
        ordered = sorted(lateness)
        facts["escalation lateness p50 / p99 / max (s), from when it could fire"] = (
            f"{statistics.median(ordered):.3f} / "
            f"{ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]:.3f} / {ordered[-1]:.3f}"
        )
    if verify_report is not None:
        facts["verified entries"] = verify_report.entries_checked
        facts["signed heads checked"] = verify_report.heads_checked
    return checks, facts


# --------------------------------------------------------------------------- output


def render(
    console: Console,
    checks: Sequence[Check],
    facts: Mapping[str, Any],
    faults: Sequence[Fault],
) -> None:
    """Print the faults, the facts and the verdict table."""
    if faults:
        table = Table(title="faults injected")
        for name in ("at (s)", "target", "when", "back after (s)"):
            table.add_column(name)
        for fault in faults:
            table.add_row(f"{fault.at:.1f}", fault.target, fault.how, f"{fault.down:.1f}")
        console.print(table)
    table = Table(title="run", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in facts.items():
        table.add_row(name, str(value))
    console.print(table)
    table = Table(title="chaos verdict")
    for name in ("invariant", "checked", "violations", "result"):
        table.add_column(name)
    for check in checks:
        table.add_row(
            check.name,
            f"{check.checked:,}",
            str(len(check.violations)),
            "[green]pass[/]" if check.ok else "[bold red]FAIL[/]",
        )
    passed = all(c.ok for c in checks)
    table.add_row("", "", "", "[bold green]PASS[/]" if passed else "[bold red]FAIL[/]")
    console.print(table)
    for check in checks:
        for line in check.violations[:5]:
            console.print(f"  [red]✗[/] {check.name}: {line}", soft_wrap=True, highlight=False)
        if len(check.violations) > 5:
            console.print(f"    ... and {len(check.violations) - 5} more", highlight=False)


def verdict_document(
    config: ChaosConfig,
    seed: int,
    checks: Sequence[Check],
    facts: Mapping[str, Any],
    record: RunRecord,
) -> dict[str, Any]:
    """The verdict as JSON, as written to the verdict file."""
    return {
        "ok": all(c.ok for c in checks),
        "seed": seed,
        "config": {
            "reports": config.reports,
            "rate": config.rate,
            "kills": config.kills,
            "broker_restart": config.broker_restart,
            "anonymous": config.anonymous,
            "ack_share": config.ack_share,
        },
        "policy": POLICY,
        "checks": [
            {
                "invariant": c.name,
                "checked": c.checked,
                "violations": len(c.violations),
                "ok": c.ok,
                "examples": c.violations[:50],
            }
            for c in checks
        ],
        "facts": dict(facts),
        "faults": [
            {"at": round(f.at, 3), "target": f.target, "how": f.how, "down": round(f.down, 3)}
            for f in record.faults
        ],
        "notes": record.notes,
    }


# --------------------------------------------------------------------------- entry


@dataclass
class _Database:
    url: str
    drop: Callable[[], None] | None = None
    server: EmbeddedPostgres | None = None


def _database(config: ChaosConfig, run_dir: Path, console: Console) -> _Database:
    """A fresh database on the configured, the local or an embedded PostgreSQL."""
    name = f"chaos_{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}_{secrets.token_hex(3)}"
    candidates = [config.database_url, os.environ.get("INCIDENTS_DATABASE_URL"), LOCAL_PG]
    for url in candidates:
        if url and postgres_answers(url):
            server = with_database(url, "postgres")
            console.print(f"PostgreSQL: database {name} on {_redact(server)}", highlight=False)
            return _Database(with_database(url, name), drop=functools.partial(_drop, server, name))
    console.print("PostgreSQL: none answers; starting an embedded server", highlight=False)
    embedded = EmbeddedPostgres.start(run_dir / "pgdata")
    return _Database(with_database(embedded.url, name), server=embedded)


def _redact(url: str) -> str:
    from tooling.stack import redact_url

    return redact_url(url)


def _drop(server: str, name: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_sync(drop)


def _kinds(counts: Counter[str]) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in counts.most_common()) or "none"


def _latencies(record: RunRecord) -> str:
    accepted = sorted(record.accepted.values(), key=lambda a: a.latency)
    if not accepted:
        return "-"
    values = [a.latency for a in accepted]
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    slowest = accepted[-1]
    return (
        f"{statistics.median(values):.3f} / {p99:.3f} / {values[-1]:.3f}"
        f" (the slowest sent at {slowest.sent:.1f} s, {slowest.attempts} attempts)"
    )


def run_chaos(config: ChaosConfig, console: Console | None = None) -> int:
    """Run chaos; 0 if every invariant held, 1 if one broke, 2 if the run failed."""
    console = console or Console()
    seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (config.run_dir or Path(".run") / f"chaos-{stamp}").absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    policy_file = run_dir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(POLICY, sort_keys=False), encoding="utf-8")
    console.print(
        f"chaos: {config.reports:,} reports at {config.rate:g}/s, {config.kills} kill(s) per"
        f" service{', one broker restart' if config.broker_restart else ''}, seed {seed};"
        f" run folder {run_dir}",
        highlight=False,
    )
    began = time.monotonic()
    try:
        database = _database(config, run_dir, console)
    except (LocalStackError, OSError, subprocess.SubprocessError) as exc:
        console.print(f"[red]error:[/] no PostgreSQL: {exc}")
        return 2
    stack: ChaosStack | None = None
    passed = False
    try:
        try:
            stack = ChaosStack(run_dir, database.url, policy_file)
            for name in SERVICES:
                stack.start_service(name)
        except (LocalStackError, OSError) as exc:
            console.print(f"[red]error:[/] the stack did not start: {exc}")
            return 2
        chaos = Chaos(config, stack, database.url, console, seed)

        async def main() -> Any:
            async with httpx.AsyncClient() as http:
                for name in SERVICES:
                    await stack.launcher.wait_ready_async(name, http, READY_WITHIN)
            console.print(f"stack ready: {', '.join(f'{n} {stack.url(n)}' for n in SERVICES)}")
            return await chaos.run()

        try:
            leaves, report, error = run_sync(main)
        except (ChaosError, LaunchError) as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
        checks, facts = evaluate(chaos.record, leaves, chaos.snapshot_at, report, error)
        record = chaos.record
        kinds = Counter(
            "anonymous" if TEMPLATE_BY_NAME[a.template].anonymous else "named"
            for a in record.accepted.values()
        )
        facts = {
            "seed": seed,
            "reports accepted (202), the warm-up one included": f"{len(record.accepted):,}"
            f" ({kinds['anonymous']:,} anonymous, {kinds['named']:,} named)",
            "achieved rate": f"{config.reports / max(chaos.drive_seconds, 1e-9):.1f}/s over"
            f" {chaos.drive_seconds:.1f} s (asked {config.rate:g}/s)",
            "answers retried (connection lost / 5xx)": f"{record.connection_errors:,} /"
            f" {record.server_errors:,} ({_kinds(record.error_kinds)});"
            f" {sum(a.replayed for a in record.accepted.values()):,} replayed by key",
            "acknowledgements accepted": f"{len(record.acks):,}",
            "kills": ", ".join(f"{s} {sum(f.target == s for f in record.faults)}" for s in SERVICES)
            + (f"; broker restarts {sum(f.target == 'broker' for f in record.faults)}"),
            "202 latency p50 / p99 / max (s), retries included": _latencies(record),
            "quiet period to converge": f"{chaos.converge_seconds:.1f} s",
            **facts,
            "notes": "; ".join(record.notes) or "-",
            "run folder": str(run_dir),
            "total time": f"{time.monotonic() - began:.0f} s",
        }
        verdict_file = run_dir / "verdict.json"
        facts["verdict file"] = str(verdict_file)
        render(console, checks, facts, record.faults)
        document = verdict_document(config, seed, checks, facts, record)
        verdict_file.write_text(json.dumps(document, indent=2, default=str) + "\n", "utf-8")
        passed = bool(document["ok"])
        return 0 if passed else 1
    finally:
        if stack is not None:
            stack.stop()
        if database.server is not None:
            database.server.stop()
        elif database.drop is not None:
            if passed:
                with contextlib.suppress(Exception):
                    database.drop()
            else:
                console.print(f"kept the database for inspection: {_redact(database.url)}")


def _finished(
    slots: asyncio.Semaphore, tasks: set[asyncio.Task[Any]], task: asyncio.Task[Any]
) -> None:
    """A submission ended: free its slot and forget its task."""
    slots.release()
    tasks.discard(task)
