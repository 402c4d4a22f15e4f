"""`incidents demo`: the motivating case, played against a running stack.

An employee of City Retail reports, anonymously, a sexual assault by her store manager
(p-wang). This time the report cannot sit with HR: the HR case handler (p-chen) is
asked and does not act, the deadline passes and it climbs to the HR head (p-zhou), who
does not act either, then to the chief ethics officer (p-sun), who reads and
acknowledges it. The accused and his manager, the unit president (p-li), try to open
it and get 404, as for an incident that does not exist, and their attempts are in the
ledger. The reporter follows the report with her receipt, sees it acknowledged and
reads the handler's message. At the end the audit service says who knew what, when.

The stack must be running, with a policy of seconds (the demo policy turns hours into
seconds)::

    INCIDENTS_POLICY_FILE=services/data/policy-demo.yaml incidents up
    incidents demo

Nothing here waits blindly: every step polls the services (intake, and the audit
ledger with the demo auditor token) with a timeout, and the only waits are the
deadlines of the stack's own policy, which the demo reads from the triage decision. It
warns when they are long (the stack runs the real policy of hours) and stops when
reaching the ethics officer would take longer than ``--max-wait``. Tokens are the
public development tokens of ``services/data/tokens.yaml``.

Exit codes: 0 the story played, 1 it could not be played to the end (a step timed out
or a service answered what the story does not expect), 2 the stack is not reachable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from rich.console import Console
from rich.table import Table

import services

DATA = Path(services.__file__).resolve().parent / "data"
DEMO_POLICY = DATA / "policy-demo.yaml"
TOKENS_FILE = DATA / "tokens.yaml"
DIRECTORY_FILE = DATA / "directory.yaml"
START_HINT = "INCIDENTS_POLICY_FILE=services/data/policy-demo.yaml incidents up"

ACCUSED = "p-wang"
UNIT_PRESIDENT = "p-li"
AUDITOR = "p-audit"
NEVER_TOLD = ("p-wang", "p-li", "p-zhang")
"""The accused and his management line: the report must never reach them."""

POLL = 0.1
"""Seconds between two polls of a service."""
STEP_TIMEOUT = 20.0
"""Seconds a step that does not wait on a deadline may take (triage, the ledger...)."""
LATE = 10.0
"""Seconds past a deadline after which a missing escalation is an error."""
LONG_LEVEL = 60
"""A level deadline above this many seconds is not a demo policy: warn."""
SCENE_PAUSE = 1.0
"""Seconds between two scenes at --speed 1 (narration only; never across a deadline)."""

SUBMITTED = "incident.report.submitted.v1"
TRIAGED = "incident.triaged.v1"
NOTIFIED = "incident.notified.v1"
ESCALATED = "incident.escalated.v1"
CLEARED = "incident.escalation.cleared.v1"
DENIED = "incident.access.denied.v1"
MESSAGE = "incident.reporter.message.v1"

REPORT = {
    "category": "sexual_misconduct",
    "summary": "Sexual assault by my store manager on a work trip",
    "description": (
        "On the last evening of the supplier visit, the store manager of our City Retail"
        " store came to my hotel room and assaulted me. I am afraid to report this under"
        " my name: he decides my shifts and my contract renewal."
    ),
    "location": "Supplier visit, hotel",
    "unit": "city-retail",
    "accused": [ACCUSED],
}
HANDLER_MESSAGE = (
    "Thank you for reporting this. The ethics office has your report and is acting on it;"
    " the person you named has no access to it. We will write to you here."
)

T = TypeVar("T")
Entry = dict[str, Any]


class DemoError(Exception):
    """The story cannot go on; the message says why and what to do."""

    code = 1


class StackUnreachable(DemoError):
    """A service of the stack does not answer."""

    code = 2


def run_demo(
    *,
    intake_url: str,
    audit_url: str,
    speed: float = 1.0,
    max_wait: float = 300.0,
    console: Console | None = None,
) -> int:
    """Play the story; the exit code (0 played, 1 stopped, 2 stack not reachable)."""
    out = console or Console(highlight=False)
    try:
        with Demo(intake_url, audit_url, speed=speed, max_wait=max_wait, console=out) as demo:
            demo.play()
    except DemoError as exc:
        out.print(f"[bold red]demo stopped:[/] {exc}", soft_wrap=True)
        return exc.code
    except (KeyError, TypeError, ValueError) as exc:
        out.print(
            f"[bold red]demo stopped:[/] a service gave an answer the demo cannot read: {exc!r}",
            soft_wrap=True,
        )
        return 1
    return 0


class Demo:
    """One run of the story against the stack at `intake_url` and `audit_url`."""

    def __init__(
        self,
        intake_url: str,
        audit_url: str,
        *,
        speed: float,
        max_wait: float,
        console: Console,
    ) -> None:
        self.intake = intake_url.rstrip("/")
        self.audit = audit_url.rstrip("/")
        self.speed = max(speed, 0.01)
        self.max_wait = max_wait
        self.out = console
        self.http = httpx.Client(timeout=10.0)
        self.tokens = _tokens()
        self.names = _names()
        self.incident = ""
        self.t0: datetime | None = None
        self.chain: list[dict[str, Any]] = []

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    # -- the story ----------------------------------------------------------------

    def play(self) -> None:
        self.check_stack()
        receipt, secret = self.report()
        triaged = self.triage()
        self.first_level(triaged)
        self.scene()
        self.conflicted_try_to_look()
        deadline = _time(triaged["event"]["data"]["deadlines"]["level_1_acknowledge"])
        to_head = self.escalation(2, deadline)  # the HR head, who does not act either
        within = int(self.chain[1]["acknowledge_within"])
        deadline = _time(to_head["event"]["time"]) + timedelta(seconds=within)
        self.say(
            f"{self.who(to_head['event']['data']['recipients'])} does not act either."
            f" The deadline is about {self.rel(deadline)}."
        )
        to_ethics = self.escalation(3, deadline)
        recipients = to_ethics["event"]["data"]["recipients"]
        if not recipients:
            raise DemoError("nobody is eligible at level 3: this is not the demo directory")
        acknowledger = str(recipients[0])
        self.acknowledge(acknowledger)
        self.cleared()
        self.scene()
        self.reporter_follows_up(receipt, secret, acknowledger)
        self.settle(acknowledger)
        self.tables()

    # -- scenes -------------------------------------------------------------------

    def check_stack(self) -> None:
        for name, url in (("intake", self.intake), ("audit", self.audit)):
            try:
                answer = self.http.get(f"{url}/readyz", timeout=5.0)
            except httpx.HTTPError as exc:
                raise StackUnreachable(
                    f"{name} is not reachable at {url} ({type(exc).__name__}: {exc})."
                    f" Start the stack first, with the demo policy: {START_HINT}"
                ) from None
            if answer.status_code != 200:
                raise StackUnreachable(
                    f"{name} at {url} is not ready (GET /readyz answered"
                    f" {answer.status_code}); wait for `incidents up` to finish starting"
                )
        answer = self.get(self.audit, "/v1/ledger/entries?start=0&end=0", AUDITOR)
        if answer.status_code != 200:
            raise DemoError(
                f"audit refused the demo auditor token ({answer.status_code}): the stack must"
                " run with the development tokens (services/data/tokens.yaml)"
            )
        self.out.rule("[bold]The motivating case")
        self.out.print(
            "A City Retail employee reports, anonymously, a sexual assault by her store"
            f" manager {self.who([ACCUSED])}. Intake {self.intake}, audit {self.audit}.",
            soft_wrap=True,
        )

    def report(self) -> tuple[str, str]:
        answer = self.call(
            "post",
            self.intake,
            "/v1/reports",
            json=REPORT,
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        if answer.status_code != 202:
            raise DemoError(f"intake refused the report: {answer.status_code} {answer.text}")
        body = answer.json()
        self.incident = str(body["incident_id"])
        receipt, secret = str(body["receipt"]), str(body["secret"])
        submitted = self.wait(
            "the report in the audit ledger",
            lambda events: _first(events, lambda e: _type(e) == SUBMITTED),
            STEP_TIMEOUT,
        )
        self.t0 = _time(submitted["recorded_at"])
        self.say(f"anonymous report accepted: incident [bold]{self.incident}[/]", self.t0)
        self.say(
            f"the reporter keeps her receipt [bold]{receipt}[/] and its one-time secret"
            f" [dim]{secret[:5]}-…[/] (shown once; intake keeps only its hash)",
            self.t0,
        )
        return receipt, secret

    def triage(self) -> Entry:
        triaged = self.wait(
            "the triage decision",
            lambda events: _first(events, lambda e: _type(e) == TRIAGED),
            STEP_TIMEOUT,
        )
        data = triaged["event"]["data"]
        self.chain = sorted(data["chain"], key=lambda lv: int(lv["level"]))
        self.say(
            f"triaged: {data['category']} → severity [bold]{data['severity']}[/],"
            f" policy {data['policy_version']}",
            _time(triaged["recorded_at"]),
        )
        for level in self.chain:
            self.out.print(
                f"           level {level['level']}: {level['role']:<22}"
                f" {self.who(level['recipients']) or '[red]nobody eligible[/]'}"
                f"  ({_duration(int(level['acknowledge_within']))} to acknowledge)",
                soft_wrap=True,
            )
        excluded = ", ".join(f"{x['principal']} ({x['rule']})" for x in data.get("excluded", []))
        self.out.print(f"           never told: {excluded or 'nobody'}", soft_wrap=True)
        self.check_policy()
        return triaged

    def check_policy(self) -> None:
        within = [int(level["acknowledge_within"]) for level in self.chain]
        if len(within) < 3:
            raise DemoError(
                f"the running policy's chain has {len(within)} levels; the story needs three"
                f" (HR case handler, HR head, ethics officer). Start the stack with: {START_HINT}"
            )
        if sum(within[:2]) > self.max_wait:
            raise DemoError(
                f"the running stack's policy gives {', '.join(_duration(w) for w in within[:3])}"
                " to acknowledge: reaching the ethics officer would take"
                f" {_duration(sum(within[:2]))}, more than --max-wait {self.max_wait:.0f}s. The"
                " report stays in the stack and climbs on that policy's schedule. Restart the"
                f" stack with the demo policy (hours become seconds): {START_HINT}"
            )
        if max(within[:3]) > LONG_LEVEL:
            self.out.print(
                "[bold yellow]warning:[/] the running stack's policy gives"
                f" {', '.join(_duration(w) for w in within[:3])} to acknowledge, not the demo's"
                f" seconds: this will take a while. The demo policy: {START_HINT}",
                soft_wrap=True,
            )

    def first_level(self, triaged: Entry) -> None:
        recipients = list(self.chain[0]["recipients"])
        if not recipients:
            raise DemoError("nobody is eligible at level 1: this is not the demo directory")
        bad = sorted(set(recipients) & set(NEVER_TOLD))
        if bad:
            raise DemoError(f"level 1 names {bad}, who must never be told")
        for principal in recipients:
            notified = self.wait(
                f"the notice to {principal}",
                _naming(NOTIFIED, principal),
                STEP_TIMEOUT,
            )
            self.say(
                f"{self.who([principal], self.chain[0]['role'])} is notified …",
                _time(notified["recorded_at"]),
            )
        deadline = _time(triaged["event"]["data"]["deadlines"]["level_1_acknowledge"])
        self.say(f"… and does not act. Her deadline is {self.rel(deadline)}.")

    def conflicted_try_to_look(self) -> None:
        tried: list[str] = []
        for principal in (ACCUSED, UNIT_PRESIDENT):
            answer = self.get(self.intake, f"/v1/incidents/{self.incident}", principal)
            role = "the accused" if principal == ACCUSED else "his manager, the unit president"
            if answer.status_code != 404:
                raise DemoError(
                    f"{principal} ({role}) opened the incident: {answer.status_code}."
                    " This must never happen."
                )
            self.say(f"{self.who([principal])}, {role}, tries to open the incident → [bold]404[/]")
            tried.append(principal)
        for principal in tried:
            denied = self.wait(
                f"the refusal of {principal} in the ledger",
                _naming(DENIED, principal),
                STEP_TIMEOUT,
            )
            self.say(
                f"the ledger records {principal}'s attempt (index {denied['index']})",
                _time(denied["recorded_at"]),
            )

    def escalation(self, number: int, deadline: datetime) -> Entry:
        wait = max(0.0, (deadline - datetime.now(UTC)).total_seconds())
        with self.out.status(f"waiting for the deadline of level {number - 1} ({wait:.0f}s)…"):
            escalated = self.wait(
                f"the escalation to level {number}",
                lambda events: _first(
                    events,
                    lambda e: _type(e) == ESCALATED and int(e["event"]["data"]["level"]) == number,
                ),
                wait + LATE,
                hint="is the escalation service running?",
            )
        data = escalated["event"]["data"]
        fired = _time(escalated["event"]["time"])
        missed = _time(data["deadline"])
        role = self.chain[number - 1]["role"]
        self.say(
            f"[bold]the deadline {self.rel(missed)} passed[/]: escalated"
            f" {(fired - missed).total_seconds():.2f}s after it to level {number},"
            f" {self.who(data['recipients'], role) or 'nobody'} ({data['reason']})",
            fired,
        )
        return escalated

    def acknowledge(self, principal: str) -> None:
        self.wait_until(
            f"the incident in {principal}'s list",
            lambda: any(
                i["incident_id"] == self.incident
                for i in self.get(self.intake, "/v1/incidents", principal).json()["incidents"]
            ),
            STEP_TIMEOUT,
        )
        view = self.get(self.intake, f"/v1/incidents/{self.incident}", principal)
        if view.status_code != 200:
            raise DemoError(f"{principal} could not open the incident: {view.status_code}")
        self.say(
            f"{self.who([principal])} opens the report (recorded first, then shown):"
            f" “{view.json()['summary']}”"
        )
        answer = self.call(
            "post",
            self.intake,
            f"/v1/incidents/{self.incident}/acknowledge",
            headers=self.auth(principal),
        )
        if answer.status_code not in (200, 202):
            raise DemoError(f"{principal} could not acknowledge: {answer.status_code}")
        at = _time(answer.json()["acknowledged_at"])
        self.say(f"{self.who([principal])} [bold green]acknowledges[/] it", at)

    def reporter_follows_up(self, receipt: str, secret: str, handler: str) -> None:
        view = self.receipt(receipt, secret)
        if not view["acknowledged"]:
            raise DemoError(f"the receipt view does not show the acknowledgement: {view}")
        self.say(
            f"the reporter checks her receipt: acknowledged at"
            f" {self.rel(_time(view['acknowledged_at']))}, status {view['status']}"
            " (no handler is named to her)"
        )
        answer = self.call(
            "post",
            self.intake,
            f"/v1/incidents/{self.incident}/messages",
            json={"text": HANDLER_MESSAGE},
            headers=self.auth(handler),
        )
        if answer.status_code != 202:
            raise DemoError(f"{handler} could not write to the reporter: {answer.status_code}")
        self.say(f"{self.who([handler])} writes to the anonymous reporter")
        view = self.receipt(receipt, secret)
        to_her = [m for m in view["messages"] if m["direction"] == "to_reporter"]
        if not to_her:
            raise DemoError("the reporter does not see the handler's message")
        self.say(f"the reporter reads it with her receipt: “{to_her[-1]['text'][:60]}…”")

    def cleared(self) -> None:
        cleared = self.wait(
            "the end of the escalation",
            lambda events: _first(events, lambda e: _type(e) == CLEARED),
            STEP_TIMEOUT,
            hint="is the escalation service running?",
        )
        self.say(
            f"escalation cleared at level {cleared['event']['data']['level']}: nobody else"
            " will be asked",
            _time(cleared["recorded_at"]),
        )

    def settle(self, acknowledger: str) -> None:
        """Wait until the ledger holds the end of the story: the message, the knowledge."""
        self.wait(
            "the handler's message in the ledger",
            lambda events: _first(events, lambda e: _type(e) == MESSAGE),
            STEP_TIMEOUT,
        )
        self.wait_until(
            f"{acknowledger}'s acknowledgement in the knowledge",
            lambda: any(
                p["principal"] == acknowledger and p["acknowledged_at"]
                for p in self.knowledge()["principals"]
            ),
            STEP_TIMEOUT,
        )

    def tables(self) -> None:
        knowledge = self.knowledge()
        table = Table(title=f"Who knew what, when: incident {self.incident}")
        table.add_column("principal", style="bold")
        table.add_column("first knew at", justify="right")
        table.add_column("via")
        table.add_column("acknowledged", justify="right")
        for person in knowledge["principals"]:
            acknowledged = person.get("acknowledged_at")
            table.add_row(
                person["principal"],
                self.rel(_time(person["first_known_at"]), plain=True),
                ", ".join(person["via"]),
                self.rel(_time(acknowledged), plain=True) if acknowledged else "—",
            )
        self.out.print()
        self.out.print(table)
        knew = {p["principal"] for p in knowledge["principals"]}
        leaked = sorted(knew & set(NEVER_TOLD))
        if leaked:
            raise DemoError(f"the ledger says {leaked} knew: they must never be told")
        self.out.print(
            f"Never told: {', '.join(NEVER_TOLD)}, the accused and his management line."
            " Times are seconds after the report, by ledger time.",
            soft_wrap=True,
        )
        events = self.timeline()
        table = Table(title="The ledger of the incident")
        table.add_column("index", justify="right")
        table.add_column("recorded at")
        table.add_column("type")
        table.add_column("actor → principal")
        for entry in events:
            recorded = _time(entry["recorded_at"])
            table.add_row(
                str(entry["index"]),
                f"{recorded:%H:%M:%S.%f}"[:-3] + f" {self.rel(recorded, plain=True)}",
                _type(entry).removeprefix("incident.").removesuffix(".v1"),
                _who(entry["event"]),
            )
        self.out.print()
        self.out.print(table)
        self.out.print(
            "Check that nothing of it was altered:"
            f" incidents audit verify --url {self.audit} --token dev-auditor-token",
            soft_wrap=True,
        )

    # -- plumbing -----------------------------------------------------------------

    def scene(self) -> None:
        """A short pause for the reader, shortened by --speed; never across a deadline."""
        time.sleep(SCENE_PAUSE / self.speed)

    def say(self, text: str, moment: datetime | None = None) -> None:
        """A progress line, stamped with `moment` (default now) after the report."""
        stamp = self.rel(moment or datetime.now(UTC))
        self.out.print(f"[dim]{stamp:>9}[/] {text}", soft_wrap=True)

    def rel(self, moment: datetime, *, plain: bool = False) -> str:
        """`moment` as seconds after the report (its ledger time)."""
        if self.t0 is None:
            return ""
        seconds = (moment - self.t0).total_seconds()
        return f"{seconds:+.2f}s" if plain else f"T{seconds:+.2f}s"

    def who(self, principals: list[str], role: str = "") -> str:
        """`p-chen (Chen Mei, hr_case_handler)`: ids, with names from the demo directory."""
        return ", ".join(
            f"{p} ({', '.join(x for x in (self.names.get(p), role) if x)})"
            if p in self.names or role
            else p
            for p in principals
        )

    def auth(self, principal: str) -> dict[str, str]:
        try:
            return {"authorization": f"Bearer {self.tokens[principal]}"}
        except KeyError:
            raise DemoError(f"{TOKENS_FILE} has no token for {principal}") from None

    def call(self, method: str, base: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, base + path, **kwargs)
        except httpx.HTTPError as exc:
            raise StackUnreachable(
                f"{base} stopped answering ({type(exc).__name__}: {exc})"
            ) from None

    def get(self, base: str, path: str, principal: str) -> httpx.Response:
        return self.call("get", base, path, headers=self.auth(principal))

    def receipt(self, receipt: str, secret: str) -> dict[str, Any]:
        answer = self.call(
            "get", self.intake, f"/v1/receipts/{receipt}", headers={"X-Receipt-Secret": secret}
        )
        if answer.status_code != 200:
            raise DemoError(f"the receipt was refused: {answer.status_code} {answer.text}")
        view: dict[str, Any] = answer.json()
        return view

    def timeline(self) -> list[Entry]:
        answer = self.get(self.audit, f"/v1/incidents/{self.incident}/timeline", AUDITOR)
        if answer.status_code == 404:
            return []
        if answer.status_code != 200:
            raise DemoError(f"audit answered {answer.status_code} for the timeline")
        events: list[Entry] = answer.json()["events"]
        return events

    def knowledge(self) -> dict[str, Any]:
        answer = self.get(self.audit, f"/v1/incidents/{self.incident}/knowledge", AUDITOR)
        if answer.status_code != 200:
            raise DemoError(f"audit answered {answer.status_code} for the knowledge")
        body: dict[str, Any] = answer.json()
        return body

    def wait(
        self,
        what: str,
        found: Callable[[list[Entry]], T | None],
        timeout: float,
        hint: str = "is the audit service consuming?",
    ) -> T:
        """Poll the incident's timeline until `found` finds something in it."""
        end = time.monotonic() + timeout
        while True:
            hit = found(self.timeline())
            if hit is not None:
                return hit
            if time.monotonic() >= end:
                raise DemoError(f"{what} did not come within {timeout:.0f}s ({hint})")
            time.sleep(POLL)

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        end = time.monotonic() + timeout
        while not check():
            if time.monotonic() >= end:
                raise DemoError(f"{what} did not come within {timeout:.0f}s")
            time.sleep(POLL)


def _tokens() -> dict[str, str]:
    """Principal -> development token, from the shipped tokens file."""
    try:
        document = yaml.safe_load(TOKENS_FILE.read_text(encoding="utf-8"))
        return {str(t["principal"]): str(t["token"]) for t in document["tokens"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise DemoError(f"cannot read the demo tokens {TOKENS_FILE}: {exc}") from None


def _names() -> dict[str, str]:
    """Person id -> name, from the shipped demo directory (for the narration only)."""
    try:
        document = yaml.safe_load(DIRECTORY_FILE.read_text(encoding="utf-8"))
        return {str(p["id"]): str(p["name"]) for p in document["people"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}


def _first(events: list[Entry], match: Callable[[Entry], bool]) -> Entry | None:
    return next((e for e in events if match(e)), None)


def _naming(type_: str, principal: str) -> Callable[[list[Entry]], Entry | None]:
    """Finds the first entry of this type whose `data.principal` is `principal`."""

    def find(events: list[Entry]) -> Entry | None:
        return _first(
            events,
            lambda e: _type(e) == type_ and e["event"]["data"].get("principal") == principal,
        )

    return find


def _type(entry: Entry) -> str:
    return str(entry["event"]["type"])


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _who(event: dict[str, Any]) -> str:
    """Who caused an event, and whom it names (principal, recipients or principals)."""
    data = event.get("data") or {}
    actor = str(event.get("actor") or "")
    named = data.get("principal")
    if named is None:
        named = ", ".join(data.get("recipients") or data.get("principals") or []) or None
    if event.get("type") == MESSAGE:
        named = "reporter" if data.get("direction") == "to_reporter" else "handlers"
    if named and named != actor:
        return f"{actor} → {named}"
    return actor
