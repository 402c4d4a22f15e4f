"""Triage's repositories in memory, for use-case tests that run in milliseconds.

`InMemoryTriageUnitOfWork(store, triage_store)` is the recorder's `InMemoryUnitOfWork`
(`services.infra.recorder_memory`) with `decisions`, `directory_log` and `policies`
beside it: what a block changes is staged and applied to `TriageStore` when the block
ends cleanly, dropped on an exception, like the PostgreSQL tables in a transaction.
Row locks (`for_update`) are not modelled: a test runs one unit of work at a time. The
re-check mark's lock is (`MarkLock`): shared by the units that keep decisions
(`hold_mark`), exclusive for a re-check (`rechecked`), as on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.infra.recorder_memory import InMemoryStore, InMemoryUnitOfWork
from services.triage.usecases import NewDecision, StoredDecision


@dataclass(eq=False)
class MarkLock:
    """`directory_rechecked`'s table lock: shared (ROW SHARE) by units that keep
    decisions, exclusive (EXCLUSIVE) for a re-check; granted in the order asked, as
    PostgreSQL's lock manager does (a waiting re-check holds later decisions back), and
    released when the unit ends."""

    holders: dict[object, tuple[bool, asyncio.Task[object] | None]] = field(default_factory=dict)
    """unit -> (exclusive, its task)."""
    queue: list[tuple[object, bool, asyncio.Future[None]]] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        """Units waiting for the lock (what a test waits to see)."""
        return len(self.queue)

    def _grantable(self, exclusive: bool) -> bool:
        return not self.holders or (
            not exclusive and not any(ex for ex, _ in self.holders.values())
        )

    async def acquire(self, unit: object, *, exclusive: bool) -> None:
        held = self.holders.get(unit)
        if held is not None:
            if held[0] or not exclusive:
                return
            raise RuntimeError("a shared mark made exclusive: not modelled")
        task = asyncio.current_task()
        if not self.queue and self._grantable(exclusive):
            self.holders[unit] = (exclusive, task)
            return
        if any(t is task for _, t in self.holders.values()):
            raise RuntimeError(
                "the re-check mark is held by an open unit of work of this task: waiting"
                " would never end (PostgreSQL would hang)"
            )
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.append((unit, exclusive, granted))
        try:
            await granted
        except BaseException:
            self.queue = [q for q in self.queue if q[0] is not unit]
            self.release(unit)
            raise
        self.holders[unit] = (exclusive, task)

    def release(self, unit: object) -> None:
        self.holders.pop(unit, None)
        while self.queue and self._grantable(self.queue[0][1]):
            waiter, exclusive, granted = self.queue.pop(0)
            self.holders[waiter] = (exclusive, None)  # its task set once it runs
            granted.set_result(None)


@dataclass
class TriageStore:
    """What triage's tables hold (committed state); read it in tests."""

    decisions: dict[str, StoredDecision] = field(default_factory=dict)
    directory_log: list[tuple[str, bytes]] = field(default_factory=list)
    """(event id, body); an event's seq is its index plus one."""
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    rechecked: int = 0
    """`directory_rechecked.seq`: the directory seq the decisions were checked against."""
    lines: dict[str, tuple[int | None, frozenset[str], int]] = field(default_factory=dict)
    """`decision_lines` by incident: the directory seq they were taken at
    (`decisions.lines_seq`; None: forgotten, as NULL), the people, and the commit that
    wrote them (`commits` then: `decisions.written_by`); an incident without them was
    kept before they existed."""
    commits: int = 0
    """Units of work committed so far (the transaction ids of PostgreSQL)."""
    horizon: int | None = None
    """`commits` when the last re-check read the decisions (`directory_rechecked.horizon`):
    lines committed later were written by a unit it could not see."""
    mark: MarkLock = field(default_factory=MarkLock, repr=False)
    """The lock of `directory_rechecked` (`hold_mark`, `rechecked`)."""


class _Staged:
    def __init__(self) -> None:
        self.decisions: dict[str, StoredDecision] = {}
        self.lines: dict[str, tuple[int | None, frozenset[str]]] = {}
        self.directory_log: list[tuple[str, bytes]] = []
        self.rechecked: int | None = None
        self.horizon: int | None = None
        self.policies: dict[str, dict[str, Any]] = {}


class MemoryDecisions:
    def __init__(self, store: TriageStore, staged: _Staged) -> None:
        self.store, self.staged = store, staged

    def _get(self, incident_id: str) -> StoredDecision | None:
        return self.staged.decisions.get(incident_id, self.store.decisions.get(incident_id))

    async def add(
        self, decisions: Sequence[NewDecision], *, directory_seq: int, decided_at: datetime
    ) -> None:
        for d in decisions:
            if self._get(d.incident_id) is not None:
                raise ValueError(f"decision {d.incident_id} exists (primary key)")
            self.staged.decisions[d.incident_id] = StoredDecision(
                incident_id=d.incident_id,
                report=d.report.model_dump(mode="json"),
                reporter=d.report.reporter,
                policy_version=d.policy_version,
                directory_seq=directory_seq,
                decided_at=decided_at,
                amendments=[],
                state=d.state,
            )
            self.staged.lines[d.incident_id] = (directory_seq, frozenset(d.lines))

    async def for_update(self, incident_id: str) -> StoredDecision | None:
        return self._get(incident_id)

    def _change(self, incident_id: str, **changes: Any) -> None:
        row = self._get(incident_id)
        if row is not None:  # an UPDATE of no row changes nothing
            self.staged.decisions[incident_id] = dataclasses.replace(row, **changes)

    async def keep_state(
        self, incident_id: str, state: dict[str, Any], *, lines: Collection[str], seq: int
    ) -> None:
        self._change(incident_id, state=state)
        await self.keep_lines({incident_id: lines}, seq=seq)

    async def keep_lines(self, lines: Mapping[str, Collection[str]], *, seq: int) -> None:
        for incident_id, people in lines.items():
            if self._get(incident_id) is not None:
                self.staged.lines[incident_id] = (seq, frozenset(people))

    async def forget_lines(self, incident_ids: Collection[str]) -> None:
        for incident_id in incident_ids:
            if self._get(incident_id) is not None:
                self.staged.lines[incident_id] = (None, frozenset())

    async def for_update_each(self, incident_ids: Collection[str]) -> list[StoredDecision]:
        return [row for row in map(self._get, sorted(set(incident_ids))) if row is not None]

    async def states(self) -> list[tuple[str, dict[str, Any]]]:
        return [(r.incident_id, r.state) for r in self._kept() if r.state is not None]

    async def to_recheck(self, moved: Collection[str], *, since: int) -> list[str]:
        found = []
        for row in self._kept():
            staged = self.staged.lines.get(row.incident_id)
            kept = (*staged, None) if staged else self.store.lines.get(row.incident_id)
            if row.state is not None and (
                kept is None
                or kept[0] is None
                or kept[0] > since
                or not kept[1].isdisjoint(moved)
                or (self._unseen(kept[2]) and kept[0] < since)
            ):
                found.append(row.incident_id)
        return found

    def _unseen(self, commit: int | None) -> bool:
        """Whether lines committed then were written by a unit the last re-check could
        not see (committed after it read the decisions)."""
        horizon = self.store.horizon
        return commit is not None and horizon is not None and commit > horizon

    def _kept(self) -> list[StoredDecision]:
        """Every decision row, committed or staged, in incident order."""
        ids = sorted({*self.store.decisions, *self.staged.decisions})
        return [row for row in map(self._get, ids) if row is not None]

    async def set_amendments(self, incident_id: str, amendments: list[dict[str, Any]]) -> None:
        self._change(incident_id, amendments=list(amendments))


class MemoryDirectoryLog:
    def __init__(self, store: TriageStore, staged: _Staged, unit: object) -> None:
        self.store, self.staged, self.unit = store, staged, unit

    async def append(self, events: Sequence[tuple[str, bytes]]) -> None:
        known = {i for i, _ in self.store.directory_log} | {i for i, _ in self.staged.directory_log}
        for event_id, body in events:
            if event_id not in known:
                known.add(event_id)
                self.staged.directory_log.append((event_id, body))

    async def after(self, seq: int) -> list[tuple[int, str, bytes]]:
        log = self.store.directory_log + self.staged.directory_log
        return [(n, i, body) for n, (i, body) in enumerate(log, start=1) if n > seq]

    async def hold_mark(self) -> None:
        await self.store.mark.acquire(self.unit, exclusive=False)

    async def rechecked(self) -> int:
        await self.store.mark.acquire(self.unit, exclusive=True)
        staged = self.staged.rechecked
        return staged if staged is not None else self.store.rechecked

    async def mark_rechecked(self, seq: int) -> None:
        self.staged.rechecked = seq
        self.staged.horizon = self.store.commits


class MemoryPolicies:
    def __init__(self, store: TriageStore, staged: _Staged) -> None:
        self.store, self.staged = store, staged

    async def record(self, version: str, body: dict[str, Any]) -> None:
        if await self.body_of(version) is None:
            self.staged.policies[version] = body

    async def body_of(self, version: str) -> dict[str, Any] | None:
        return self.staged.policies.get(version, self.store.policies.get(version))

    async def every(self) -> list[tuple[str, dict[str, Any]]]:
        return list({**self.store.policies, **self.staged.policies}.items())


class InMemoryTriageUnitOfWork(InMemoryUnitOfWork):
    """`TriageUnitOfWork` in memory: the recorder's store and triage's tables."""

    def __init__(self, store: InMemoryStore, triage: TriageStore) -> None:
        super().__init__(store)
        self.triage = triage
        self._staged = _Staged()

    def _opened(self) -> _Staged:
        self.recorder  # noqa: B018 - raises outside `async with`
        return self._staged

    @property
    def decisions(self) -> MemoryDecisions:
        return MemoryDecisions(self.triage, self._opened())

    @property
    def directory_log(self) -> MemoryDirectoryLog:
        return MemoryDirectoryLog(self.triage, self._opened(), self)

    @property
    def policies(self) -> MemoryPolicies:
        return MemoryPolicies(self.triage, self._opened())

    def commit(self) -> None:
        staged = self._staged
        self.triage.decisions.update(staged.decisions)
        self.triage.commits += 1
        commit = self.triage.commits
        self.triage.lines.update((i, (*kept, commit)) for i, kept in staged.lines.items())
        self.triage.directory_log.extend(staged.directory_log)
        self.triage.policies.update(staged.policies)
        if staged.rechecked is not None:
            self.triage.rechecked = staged.rechecked
            self.triage.horizon = staged.horizon
        self._staged = _Staged()
        super().commit()

    def rollback(self) -> None:
        self._staged = _Staged()
        super().rollback()
        self.triage.mark.release(self)  # after commit too: what waits sees it
