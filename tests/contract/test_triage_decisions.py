"""Triage's decisions repository's contract: one suite, run on PostgreSQL and in memory.

`backend()` is a new `TriageUnitOfWork` on one shared store: a fresh schema with
triage's migrations (`services.triage.postgres`), or a `TriageStore`
(`services.triage.memory`). What the directory re-check relies on: `to_recheck` finds a
kept decision through anyone on its lines, or through lines taken after the re-check
mark; `keep_state` and `keep_lines` replace the lines; a rolled-back unit keeps none;
`for_update_each` gives the rows asked for that exist, in incident order. And the
re-check's use cases on both: a re-check lost to a stop is done when triage starts
again (`resume`), an accused unknown when the report was decided is applied when
he joins the directory, a decision under way while a manager moves is re-checked
before the mark passes it (the mark's lock: `hold_mark`, `rechecked`), and a decision
whose policy version an instance cannot read is left to the next re-check, not a
crash of it.
The `postgres` half is marked `integration`.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import services
from services.domain.envelope import Envelope
from services.domain.events import ReportAmended, ReportSubmitted
from services.domain.policy import Policy
from services.infra.config import load_yaml_model
from services.infra.recorder_memory import InMemoryStore
from services.triage.memory import InMemoryTriageUnitOfWork, TriageStore
from services.triage.usecases import (
    Cause,
    DecideReports,
    KeepDirectory,
    NewDecision,
    RecordPolicy,
    Reexclude,
    TriageUnitOfWork,
    TriageUseCases,
)
from tests.unit.test_triage_usecases import PEOPLE, PSEUDONYMS, later, submitted, upserted

SERVICES = Path(services.__file__).parent
POLICY = load_yaml_model(SERVICES / "data" / "policy.yaml", Policy)
REPORT = ReportSubmitted.model_validate(
    {"category": "harassment", "summary": "s", "description": "d", "report_digest": "x"}
)
STATE = {"decision": {"accused": ["p-wang"]}, "report_digest": "x"}

Backend = Callable[[], TriageUnitOfWork]


@pytest.fixture(scope="module")
def contract_database_url(make_database: Callable[[str], str]) -> str:
    return make_database("contract_triage")


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        store, tables = InMemoryStore(), TriageStore()
        unit: Backend = lambda: InMemoryTriageUnitOfWork(store, tables)  # noqa: E731
        await _with_policy(unit)
        yield unit
        return
    from services.infra.db import create_pool, migrate_service
    from services.triage.postgres import PostgresTriageUnitOfWork

    url = request.getfixturevalue("contract_database_url")
    schema = f"svc_{secrets.token_hex(4)}"
    await migrate_service(url, schema, SERVICES / "triage" / "migrations")
    pool = await create_pool(url, schema=schema, max_size=4)  # three units and a probe
    try:
        unit = lambda: PostgresTriageUnitOfWork(pool)  # noqa: E731
        await _with_policy(unit)
        yield unit
    finally:
        await pool.close()


async def _with_policy(unit: Backend) -> None:
    async with unit() as uow:
        await uow.policies.record(
            POLICY.version, POLICY.model_dump(mode="json", exclude_none=True)
        )  # as record_policy keeps it


async def _add(unit: Backend, incident: str, lines: set[str], seq: int) -> None:
    async with unit() as uow:
        new = NewDecision(incident, REPORT, POLICY.version, STATE, frozenset(lines))
        await uow.decisions.add([new], directory_seq=seq, decided_at=datetime.now(UTC))


async def _to_recheck(unit: Backend, moved: set[str], since: int) -> list[str]:
    async with unit() as uow:
        return await uow.decisions.to_recheck(moved, since=since)


async def test_a_decision_is_found_through_anyone_on_its_lines_in_incident_order(
    backend: Backend,
) -> None:
    await _add(backend, "i-2", {"p-wang", "p-li", "p-chen"}, 5)
    await _add(backend, "i-1", {"p-li", "p-zhou"}, 5)
    assert await _to_recheck(backend, {"p-li"}, 5) == ["i-1", "i-2"]
    assert await _to_recheck(backend, {"p-chen", "p-zhou"}, 5) == ["i-1", "i-2"]
    assert await _to_recheck(backend, {"p-wang"}, 5) == ["i-2"]
    assert await _to_recheck(backend, {"p-liu"}, 5) == []
    assert await _to_recheck(backend, set(), 5) == []


async def test_lines_taken_after_the_recheck_mark_are_found_whoever_moved(
    backend: Backend,
) -> None:
    await _add(backend, "i-1", {"p-li"}, 7)
    assert await _to_recheck(backend, set(), 6) == ["i-1"]
    assert await _to_recheck(backend, set(), 7) == []


async def test_kept_lines_replace_the_earlier_ones_and_a_rollback_keeps_none(
    backend: Backend,
) -> None:
    await _add(backend, "i-1", {"p-chen", "p-li"}, 5)
    async with backend() as uow:
        await uow.decisions.keep_lines({"i-1": {"p-chen", "p-x"}}, seq=6)
    assert await _to_recheck(backend, {"p-li"}, 6) == []
    assert await _to_recheck(backend, {"p-x"}, 6) == ["i-1"]
    async with backend() as uow:
        state = {**STATE, "report_digest": "y"}
        await uow.decisions.keep_state("i-1", state, lines={"p-zhou"}, seq=8)
        assert (await uow.decisions.for_update("i-1")).state == state  # type: ignore[union-attr]
    assert await _to_recheck(backend, {"p-chen", "p-x"}, 8) == []
    assert await _to_recheck(backend, {"p-zhou"}, 8) == ["i-1"]
    with pytest.raises(RuntimeError):
        async with backend() as uow:
            await uow.decisions.keep_lines({"i-1": {"p-sun"}}, seq=9)
            raise RuntimeError("the unit of work fails")
    assert await _to_recheck(backend, {"p-sun"}, 8) == []
    async with backend() as uow:  # keep_lines leaves the state as it was
        await uow.decisions.keep_lines({"i-1": {"p-sun"}}, seq=9)
        assert (await uow.decisions.for_update("i-1")).state == state  # type: ignore[union-attr]


async def test_several_decisions_lines_are_kept_at_once_and_their_rows_read_in_order(
    backend: Backend,
) -> None:
    await _add(backend, "i-2", {"p-chen", "p-li"}, 5)
    await _add(backend, "i-1", {"p-ma", "p-zhou"}, 5)
    async with backend() as uow:
        await uow.decisions.keep_lines({"i-1": {"p-ma"}, "i-2": set(), "i-9": {"p-li"}}, seq=6)
        rows = await uow.decisions.for_update_each(["i-2", "i-9", "i-1"])
        assert [row.incident_id for row in rows] == ["i-1", "i-2"]
        assert [row.state for row in rows] == [STATE, STATE]
    assert await _to_recheck(backend, {"p-ma"}, 6) == ["i-1"]
    assert await _to_recheck(backend, {"p-zhou", "p-chen", "p-li"}, 6) == []


async def test_a_decision_written_by_a_unit_the_recheck_could_not_see_is_found_by_the_next(
    backend: Backend,
) -> None:
    """i-late is written on directory 5 by a unit still open while a re-check up to 6
    reads the decisions, and committed after it: that re-check misses it, so the next
    one (since 6) finds it though nobody on its lines moved, and keeps its lines; the
    one after does not. (i-seen, committed before, may be found too on PostgreSQL while
    a transaction older than it runs anywhere on the server: the horizon is the
    server's oldest running transaction. Finding more is only more work.)"""
    await _add(backend, "i-seen", {"p-li"}, 5)
    async with backend() as writer:
        late = NewDecision("i-late", REPORT, POLICY.version, STATE, frozenset({"p-li"}))
        await writer.decisions.add([late], directory_seq=5, decided_at=datetime.now(UTC))
        async with backend() as recheck:
            assert await recheck.directory_log.rechecked() == 0
            await recheck.directory_log.mark_rechecked(6)
            assert await recheck.decisions.to_recheck({"p-li"}, since=5) == ["i-seen"]
    async with backend() as recheck:
        await recheck.directory_log.mark_rechecked(7)
        assert "i-late" in await recheck.decisions.to_recheck(set(), since=6)
        await recheck.decisions.keep_lines({"i-late": {"p-li"}}, seq=7)
    async with backend() as recheck:
        await recheck.directory_log.mark_rechecked(8)
        assert "i-late" not in await recheck.decisions.to_recheck(set(), since=7)


# -- the re-check's use cases on both backends ---------------------------------------------

_OFFSETS = itertools.count(1)


def _cause(envelope: Envelope, topic: str) -> Cause:
    return Cause(envelope, (envelope.id, topic, 0, next(_OFFSETS)))


async def _recorded(unit: Backend) -> TriageUseCases:
    """A triage worker with its policy recorded on the backend."""
    usecases = TriageUseCases(POLICY, PSEUDONYMS)
    await usecases.record_policy(RecordPolicy(POLICY), unit())
    return usecases


async def _started(unit: Backend) -> TriageUseCases:
    """A triage worker started on the backend, as the service starts one."""
    usecases = await _recorded(unit)
    await usecases.resume(unit())
    return usecases


async def _keep(usecases: TriageUseCases, unit: Backend, *changes: Envelope) -> None:
    batch = [_cause(e, "directory.changes") for e in changes]
    await usecases.keep_directory(KeepDirectory(batch), unit())


async def _decided(usecases: TriageUseCases, unit: Backend, accused: list[str]) -> str:
    incident = str(uuid.uuid4())
    envelope, report = submitted(incident, accused)
    await usecases.decide(DecideReports([(_cause(envelope, "incident.reports"), report)]), unit())
    return incident


async def _decision(unit: Backend, incident: str) -> dict[str, Any]:
    async with unit() as uow:
        row = await uow.decisions.for_update(incident)
    assert row is not None and row.state is not None
    return dict(row.state["decision"])


def _seed() -> list[Envelope]:
    return [upserted(p.id, p.manager, p.roles, p.unit or "group") for p in PEOPLE]


async def test_a_recheck_lost_to_a_stop_is_done_when_triage_starts_again(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await _recorded(backend)
    await _keep(first, backend, *_seed())
    incident = await _decided(first, backend, ["p-wang"])

    async def stopped(*_: object, **__: object) -> int:
        raise RuntimeError("the worker stopped")

    monkeypatch.setattr(first, "recheck", stopped)
    with pytest.raises(RuntimeError):
        await _keep(first, backend, upserted("p-wang", "p-zhou", ["store_manager"], "city-retail"))
    assert "p-zhou" not in {
        x["principal"] for x in (await _decision(backend, incident))["excluded"]
    }
    await _started(backend)  # the restart: nothing consumed yet
    decision = await _decision(backend, incident)
    rules = {x["principal"]: x["rule"] for x in decision["excluded"]}
    assert rules["p-zhou"] == "accused_management_chain"
    assert all("p-zhou" not in lv["recipients"] for lv in decision["chain"])
    async with backend() as uow:
        assert await uow.directory_log.rechecked() == len(PEOPLE) + 1


async def test_an_accused_unknown_when_decided_is_applied_when_he_joins(backend: Backend) -> None:
    usecases = await _recorded(backend)
    await _keep(usecases, backend, *_seed())
    incident = await _decided(usecases, backend, ["p-new"])
    assert (await _decision(backend, incident))["chain"][0]["recipients"] == ["p-sun"]
    await _keep(
        usecases,
        backend,
        upserted("p-new", "p-zhang", ["general_counsel"], "group"),
        upserted("p-sun", "p-new", ["chief_ethics_officer"], "group"),
    )
    decision = await _decision(backend, incident)
    assert decision["accused"] == ["p-new"] and decision["unresolved_accused"] == []
    rules = {x["principal"]: x["rule"] for x in decision["excluded"]}
    assert rules["p-new"] == "accused" and rules["p-sun"] == "accused_reports"
    assert [lv["recipients"] for lv in decision["chain"]] == [[], ["p-board"]]


async def _waiting_for_the_mark(unit: Backend) -> int:
    """How many units of work wait for the re-check mark's lock (on PostgreSQL: for any
    lock, in this database: a table lock or a row's)."""
    async with unit() as uow:
        if isinstance(uow, InMemoryTriageUnitOfWork):
            return uow.triage.mark.waiting
        return int(
            await uow.conn.fetchval(  # type: ignore[attr-defined]
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND cardinality(pg_blocking_pids(pid)) > 0"
            )
        )


async def _waits_for_the_mark(unit: Backend) -> bool:
    return await _waiting_for_the_mark(unit) > 0


async def test_a_waiting_recheck_holds_later_decisions_back(backend: Backend) -> None:
    """The mark is granted in the order asked: while a unit that decides holds it, a
    re-check waits, and a unit that asks to decide after it waits for the re-check (not
    let in beside the first: a stream of overlapping decisions would starve the
    re-check, as the row's FOR SHARE does). Units that decide share it."""
    order: list[str] = []

    async def rechecking() -> None:
        async with backend() as uow:
            await uow.directory_log.rechecked()
            order.append("recheck")

    async def deciding(name: str) -> None:
        async with backend() as uow:
            await uow.directory_log.hold_mark()
            order.append(name)

    async with backend() as first:
        await first.directory_log.hold_mark()
        await deciding("beside")  # shared: does not wait
        recheck = asyncio.create_task(rechecking())
        while not await _waiting_for_the_mark(backend):
            await asyncio.sleep(0.01)
        later = asyncio.create_task(deciding("later"))
        while await _waiting_for_the_mark(backend) < 2 and not later.done():
            await asyncio.sleep(0.01)
        order.append("first ends")
    await asyncio.gather(recheck, later)
    assert order == ["beside", "first ends", "recheck", "later"]


async def test_a_decision_under_way_while_a_manager_moves_is_rechecked_before_the_mark_passes(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 2 D2 (R1's interleaving): worker B decides a report against p-wang on the
    directory as it is, level 2 p-zhou; while B's unit is open, worker A keeps p-wang's
    move under p-zhou and re-checks. A's re-check waits for B's decision (B holds the
    mark from before it read the directory) and excludes p-zhou from it. Before, A
    marked the move without seeing B's uncommitted decision, and nothing looked at it
    again: not another report, not a restart (`resume`), until some later directory
    change."""
    a, b = await _recorded(backend), await _recorded(backend)
    await _keep(a, backend, *_seed())
    async with backend() as probe:
        decisions = type(probe.decisions)
    add = decisions.add
    inside, gate = asyncio.Event(), asyncio.Event()

    async def paused(self: object, *args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(decisions, "add", add)  # the later decisions are not paused
        inside.set()
        await gate.wait()
        await add(self, *args, **kwargs)

    monkeypatch.setattr(decisions, "add", paused)
    incident = str(uuid.uuid4())
    envelope, report = submitted(incident, ["p-wang"])
    command = DecideReports([(_cause(envelope, "incident.reports"), report)])
    deciding = asyncio.create_task(b.decide(command, backend()))
    await inside.wait()  # B decided on the directory before the move, not committed
    move = upserted("p-wang", "p-zhou", ["store_manager"], "city-retail")
    moving = asyncio.create_task(_keep(a, backend, move))
    while not moving.done() and not await _waits_for_the_mark(backend):
        await asyncio.sleep(0.01)
    gate.set()
    await deciding
    await moving
    await _decided(b, backend, ["p-liu"])  # what the review ran after: nothing left to do
    await _started(backend)
    decision = await _decision(backend, incident)
    rules = {x["principal"]: x["rule"] for x in decision["excluded"]}
    assert rules.get("p-zhou") == "accused_management_chain"
    assert all("p-zhou" not in lv["recipients"] for lv in decision["chain"])


async def test_a_recheck_under_way_holds_a_later_decision_and_an_amendment_back(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-check paused after it took the mark: a report and an amendment of a decided
    incident that arrive meanwhile wait for it (the amendment before it locks its row:
    the re-check locks rows too, so the other order would deadlock), then the report is
    decided on the directory the re-check marked (p-zhou never asked)."""
    worker, other = await _recorded(backend), await _recorded(backend)
    await _keep(worker, backend, *_seed())
    amended = await _decided(other, backend, ["p-wang"])
    async with backend() as probe:
        decisions = type(probe.decisions)
    to_recheck = decisions.to_recheck
    inside, gate = asyncio.Event(), asyncio.Event()

    async def paused(self: object, *args: Any, **kwargs: Any) -> list[str]:
        monkeypatch.setattr(decisions, "to_recheck", to_recheck)
        inside.set()
        await gate.wait()
        return await to_recheck(self, *args, **kwargs)

    monkeypatch.setattr(decisions, "to_recheck", paused)
    move = upserted("p-wang", "p-zhou", ["store_manager"], "city-retail")
    moving = asyncio.create_task(_keep(worker, backend, move))
    await inside.wait()
    incident = str(uuid.uuid4())
    envelope, report = submitted(incident, ["p-wang"])
    command = DecideReports([(_cause(envelope, "incident.reports"), report)])
    deciding = asyncio.create_task(other.decide(command, backend()))
    added = ReportAmended(accused_added=["p-liu"], report_digest="sha256:" + "1" * 64)
    change = _cause(later(amended, ReportAmended.TYPE, added), "incident.reports")
    amending = asyncio.create_task(other.reexclude(Reexclude(change, added), backend()))
    try:
        while not (deciding.done() and amending.done()) and not await _waits_for_the_mark(backend):
            await asyncio.sleep(0.01)
        async with backend() as uow:  # neither is kept while the re-check runs
            kept = dict(await uow.decisions.states())
    finally:
        gate.set()
        await asyncio.gather(moving, deciding, amending)
    assert incident not in kept and "p-liu" not in kept[amended]["decision"]["accused"]
    decision = await _decision(backend, incident)
    assert all("p-zhou" not in lv["recipients"] for lv in decision["chain"])
    assert "p-liu" in (await _decision(backend, amended))["accused"]


async def test_a_decision_whose_policy_cannot_be_read_is_left_to_the_next_recheck(
    backend: Backend,
) -> None:
    """Review 2 L1: an older instance in a rolling upgrade re-checks a decision made
    under a policy version a newer one recorded, in a form the older cannot read. That
    decision alone is refused (told, counted by the adapter), its lines forgotten so
    the next re-check checks it in full; the others are re-checked, the mark moves.
    A version recorded after the instance started but readable is read from `policies`.
    Before: KeyError out of the re-check (and of `resume`)."""
    refused: list[str] = []
    worker = await _recorded(backend)
    worker.recheck_refused = refused.append
    await _keep(worker, backend, *_seed())
    known = await _decided(worker, backend, ["p-wang"])
    body = POLICY.model_dump(mode="json", exclude_none=True)
    async with backend() as uow:
        await uow.policies.record("v-next", {**body, "version": "v-next", "new_rule": 1})
        await uow.policies.record("v-later", {**body, "version": "v-later"})
        for incident, version in (("i-next", "v-next"), ("i-later", "v-later")):
            row = await uow.decisions.for_update(known)
            assert row is not None and row.state is not None
            state = {**row.state, "decision": {**row.state["decision"], "policy_version": version}}
            new = NewDecision(incident, REPORT, version, state, frozenset({"p-wang"}))
            await uow.decisions.add([new], directory_seq=len(PEOPLE), decided_at=datetime.now(UTC))
    await _keep(worker, backend, upserted("p-wang", "p-zhou", ["store_manager"], "city-retail"))
    assert refused == ["unknown_policy"]
    for incident in (known, "i-later"):
        assert "p-zhou" in {
            x["principal"] for x in (await _decision(backend, incident))["excluded"]
        }
    async with backend() as uow:
        mark = await uow.directory_log.rechecked()
        assert mark == len(PEOPLE) + 1
        assert await uow.decisions.to_recheck(set(), since=mark) == ["i-next"]
    assert await worker.resume(backend()) == 0  # nothing lags: no crash, nothing to do
