"""The organisation as triage sees it: an immutable snapshot of people, managers and roles.

A snapshot is built from the directory file's `Person` items, or folded from the
`directory.*` events of the `directory.changes` topic, so triage can rebuild the
directory as it stood at any moment and explain a decision with it:

- `directory.person.upserted.v1` replaces everything known about one person (unit,
  manager, roles);
- `directory.people.imported.v1` (one chunk of a bulk import) is the same as one
  `directory.person.upserted.v1` per person it carries, in its order;
- `directory.role.assigned.v1` / `directory.role.revoked.v1` add or remove one role;
- `directory.role.proposed.v1` changes nothing: a privileged role proposed by one admin
  counts only once another admin approves it (then `directory.role.assigned.v1`).

Manager data comes from people, and people make mistakes: a manager may be missing
from the directory, or the managers may loop (a -> b -> a). `managers_above` always
terminates, stops at the first repeat and reports the loop, so a conflict-of-interest
check never hangs on bad data.

At the size of a real company (254,000 people) triage cannot copy the people map per
batch of events nor fold the log again to see a past moment: `DirectoryProjection` is
the incremental form of the same fold. It is changed in place, one event at a time,
keeps each person's earlier versions (valid from one sequence number to the next) and
serves read views, of now or of any past sequence number, that answer like a snapshot
(`Org`), so the pure decisions take either (docs/scale.md).

Pure code: no I/O, no asyncio.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Protocol

from services.domain.directory import DirectoryFile, Person
from services.domain.envelope import Envelope
from services.domain.events import (
    PeopleImported,
    PersonRecord,
    PersonUpserted,
    RoleAssigned,
    RoleProposed,
    RoleRevoked,
    data_of,
)

DIRECTORY_EVENT_TYPES = frozenset(
    {
        PersonUpserted.TYPE,
        PeopleImported.TYPE,
        RoleAssigned.TYPE,
        RoleRevoked.TYPE,
        RoleProposed.TYPE,
    }
)


class NotADirectoryEvent(ValueError):
    """The event is not one of `DIRECTORY_EVENT_TYPES`."""


@dataclass(frozen=True, slots=True)
class OrgPerson:
    """What routing needs to know about one person."""

    id: str
    unit: str | None = None
    manager: str | None = None
    roles: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ManagementChain:
    """The managers above one person, nearest first, and what stopped the walk.

    `managers` never contains the person themselves. The walk ends at the top (a
    person without a manager), at a manager the directory does not know (`dangling`,
    which is still listed in `managers`: it is an id from the directory), or at the
    first repeat: then `cycle` holds the people of the loop in walking order.
    """

    person: str
    managers: tuple[str, ...] = ()
    cycle: tuple[str, ...] = ()
    dangling: str | None = None

    def __iter__(self) -> Iterator[str]:
        return iter(self.managers)

    def __len__(self) -> int:
        return len(self.managers)

    def __contains__(self, person_id: object) -> bool:
        return person_id in self.managers

    @property
    def circular(self) -> bool:
        """The manager data above this person loops."""
        return bool(self.cycle)


@dataclass(frozen=True, eq=False)
class OrgSnapshot:
    """People by id; immutable (every change returns a new snapshot).

    `as_of` is the time of the latest directory event folded in (None for a snapshot
    built from the file or from nothing).
    """

    people: Mapping[str, OrgPerson] = field(default_factory=lambda: MappingProxyType({}))
    as_of: datetime | None = None
    _by_role: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _reports: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        people = dict(self.people)
        by_role: dict[str, list[str]] = {}
        reports: dict[str, list[str]] = {}
        for person_id in sorted(people):
            for role in people[person_id].roles:
                by_role.setdefault(role, []).append(person_id)
            manager = people[person_id].manager
            if manager is not None:
                reports.setdefault(manager, []).append(person_id)
        object.__setattr__(self, "people", MappingProxyType(people))
        object.__setattr__(
            self, "_by_role", MappingProxyType({r: tuple(ids) for r, ids in by_role.items()})
        )
        object.__setattr__(
            self, "_reports", MappingProxyType({m: tuple(ids) for m, ids in reports.items()})
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OrgSnapshot):
            return NotImplemented
        return dict(self.people) == dict(other.people) and self.as_of == other.as_of

    def __hash__(self) -> int:
        return hash((frozenset(self.people.items()), self.as_of))

    # -- building ---------------------------------------------------------------------

    @classmethod
    def empty(cls) -> OrgSnapshot:
        return cls()

    @classmethod
    def from_people(cls, people: Iterable[Person]) -> OrgSnapshot:
        """A snapshot of directory-file people (a later duplicate id replaces an earlier)."""
        return cls(
            {
                p.id: OrgPerson(id=p.id, unit=p.unit, manager=p.manager, roles=frozenset(p.roles))
                for p in people
            }
        )

    @classmethod
    def from_directory(cls, directory: DirectoryFile) -> OrgSnapshot:
        return cls.from_people(directory.people)

    def with_person(self, person: OrgPerson) -> OrgSnapshot:
        """A copy with this person added or replaced."""
        return OrgSnapshot({**self.people, person.id: person}, self.as_of)

    # -- queries ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.people)

    def __contains__(self, person_id: object) -> bool:
        return person_id in self.people

    def knows(self, person_id: str) -> bool:
        """The directory has a person with this id."""
        return person_id in self.people

    def person(self, person_id: str) -> OrgPerson | None:
        return self.people.get(person_id)

    def unit_of(self, person_id: str) -> str | None:
        """The person's unit; None if unknown or without a unit."""
        person = self.people.get(person_id)
        return person.unit if person else None

    def roles_of(self, person_id: str) -> frozenset[str]:
        person = self.people.get(person_id)
        return person.roles if person else frozenset()

    def holders(self, role: str, unit: str | None = None) -> tuple[str, ...]:
        """Ids of the people holding `role` (in `unit`, if given), sorted."""
        ids = self._by_role.get(role, ())
        if unit is None:
            return ids
        return tuple(i for i in ids if self.people[i].unit == unit)

    def reports_of(self, person_id: str) -> tuple[str, ...]:
        """The people whose manager is `person_id` (their direct reports), sorted."""
        return self._reports.get(person_id, ())

    def managers_above(self, person_id: str) -> ManagementChain:
        """The chain of managers above a person up to the top; terminates on loops."""
        return walk_managers(self.people.get, person_id)


def walk_managers(get: Callable[[str], OrgPerson | None], person_id: str) -> ManagementChain:
    """The chain of managers above `person_id` as `get` knows people; stops at the top,
    at an unknown manager (`dangling`) or at the first repeat (`cycle`)."""
    managers: list[str] = []
    seen = {person_id: -1}
    current = get(person_id)
    while current is not None and current.manager is not None:
        manager = current.manager
        if manager in seen:
            # The loop starts at the repeated manager (or at the person themselves).
            loop = (person_id, *managers) if manager == person_id else managers[seen[manager] :]
            return ManagementChain(person_id, tuple(managers), cycle=tuple(loop))
        seen[manager] = len(managers)
        managers.append(manager)
        current = get(manager)
        if current is None:
            return ManagementChain(person_id, tuple(managers), dangling=manager)
    return ManagementChain(person_id, tuple(managers))


class Org(Protocol):
    """What the decisions read of the directory: a snapshot or a projection's view."""

    @property
    def as_of(self) -> datetime | None: ...

    def __len__(self) -> int: ...

    def __contains__(self, person_id: object) -> bool: ...

    def knows(self, person_id: str) -> bool: ...

    def person(self, person_id: str) -> OrgPerson | None: ...

    def unit_of(self, person_id: str) -> str | None: ...

    def roles_of(self, person_id: str) -> frozenset[str]: ...

    def holders(self, role: str, unit: str | None = None) -> tuple[str, ...]: ...

    def reports_of(self, person_id: str) -> tuple[str, ...]: ...

    def managers_above(self, person_id: str) -> ManagementChain: ...


# -- folding directory events ---------------------------------------------------------


def _org_person(record: PersonRecord) -> OrgPerson:
    return OrgPerson(
        id=record.person_id,
        unit=record.unit,
        manager=record.manager_id,
        roles=frozenset(record.roles),
    )


def _changes(envelope: Envelope, held: Callable[[str], OrgPerson | None]) -> list[OrgPerson]:
    """The people one directory event changes, as they are after it, in the order they
    apply (empty if it changes nobody). `held` gives a person as they were before the
    event."""
    if envelope.type not in DIRECTORY_EVENT_TYPES:
        raise NotADirectoryEvent(
            f"{envelope.type} is not a directory event ({', '.join(sorted(DIRECTORY_EVENT_TYPES))})"
        )
    data = data_of(envelope)
    match data:
        case PersonUpserted():
            return [_org_person(data)]
        case PeopleImported():
            # one upsert per person, in order: a person listed twice ends as listed last
            return list({p.person_id: _org_person(p) for p in data.people}.values())
        case RoleAssigned():
            # A role for someone not upserted yet still counts: they hold it.
            known = held(data.person_id) or OrgPerson(id=data.person_id)
            return [OrgPerson(known.id, known.unit, known.manager, known.roles | {data.role})]
        case RoleRevoked():
            was = held(data.person_id)
            if was is not None and data.role in was.roles:
                return [OrgPerson(was.id, was.unit, was.manager, was.roles - {data.role})]
            return []
        case RoleProposed():
            return []  # pending until approved: a proposal grants nothing
        case _:  # pragma: no cover - DIRECTORY_EVENT_TYPES and the catalog agree
            raise NotADirectoryEvent(envelope.type)


def _apply(people: dict[str, OrgPerson], envelope: Envelope) -> None:
    for person in _changes(envelope, people.get):
        people[person.id] = person


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def apply_directory_event(snapshot: OrgSnapshot, envelope: Envelope) -> OrgSnapshot:
    """The snapshot after one more `directory.*` event.

    Raises `NotADirectoryEvent` for other types and `InvalidEvent` for invalid data.
    """
    people = dict(snapshot.people)
    _apply(people, envelope)
    return OrgSnapshot(people, _later(snapshot.as_of, envelope.time))


def fold_directory(
    events: Iterable[Envelope],
    *,
    start: OrgSnapshot | None = None,
    until: datetime | None = None,
) -> OrgSnapshot:
    """Fold `directory.*` events (in order) onto `start` (or nothing).

    With `until`, only events whose time is at or before it count: the directory as it
    stood at that moment. Copies the people once, so seeding a large directory is linear.
    """
    base = start or OrgSnapshot()
    people = dict(base.people)
    as_of = base.as_of
    for envelope in events:
        if until is not None and envelope.time > until:
            continue
        _apply(people, envelope)
        as_of = _later(as_of, envelope.time)
    return OrgSnapshot(people, as_of)


# -- the incremental, versioned projection ----------------------------------------------


def _micros(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _moment(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


class DirectoryProjection:
    """The directory folded event by event, in place, with every person's history.

    `apply(envelope, seq)` costs what the changes of the people it carries cost (one,
    or an import's chunk), whatever the size of the organisation: the current people by
    id, the holders of each role (by role and by role and unit) are updated for each of
    them, and the version they replace is
    kept, valid from the sequence number it was applied at until the next one. So the
    directory as it was at any earlier sequence number is a lookup (a bisection in one
    person's versions), never a fold of the log again: `at(seq)`. Sequence numbers only
    grow (the order of triage's `directory_log`).

    One owner changes it (the service); the decisions read it through `DirectoryView`s,
    which never change: a view of sequence number n answers as a fold of the events up
    to n would, however many events are applied after it was taken.
    """

    def __init__(self) -> None:
        self.seq = 0
        self._current: dict[str, OrgPerson] = {}
        self._since: dict[str, int] = {}
        """The sequence number each person's current version holds from."""
        self._past: dict[str, list[tuple[int, OrgPerson]]] = {}
        """Earlier versions of the people changed more than once: (from seq, version)."""
        self._holders: dict[tuple[str, str | None], dict[str, None]] = {}
        """(role, None) and (role, unit) -> the current holders (insertion-ordered set)."""
        self._sorted: dict[tuple[str, str | None], tuple[str, ...]] = {}
        self._ever: dict[str, set[str]] = {}
        """role -> everyone who ever held it: the holders at a past seq are among them."""
        self._reports: dict[str, dict[str, None]] = {}
        """manager -> the people whose current manager they are."""
        self._former_reports: dict[str, set[str]] = {}
        """manager -> the people who left them for another manager (for a past seq)."""
        self._seqs = array("q")
        self._as_of = array("q")
        self._counts = array("q")
        """After each applied event: its seq, the latest event time (us), people known."""

    def __len__(self) -> int:
        return len(self._current)

    def apply(self, envelope: Envelope, seq: int) -> int:
        """Fold one directory event recorded at `seq` (greater than every earlier one);
        returns how many people it changed.

        Raises `NotADirectoryEvent` or `InvalidEvent` (then nothing changed).
        """
        if seq <= self.seq:
            raise ValueError(f"directory seq {seq} is not after {self.seq}")
        changed = _changes(envelope, self._current.get)
        for person in changed:
            self._put(
                OrgPerson(
                    person.id,
                    sys.intern(person.unit) if person.unit is not None else None,
                    sys.intern(person.manager) if person.manager is not None else None,
                    person.roles,
                ),
                seq,
            )
        latest = _micros(envelope.time)
        if self._as_of and self._as_of[-1] > latest:
            latest = self._as_of[-1]
        self._seqs.append(seq)
        self._as_of.append(latest)
        self._counts.append(len(self._current))
        self.seq = seq
        return len(changed)

    def _put(self, person: OrgPerson, seq: int) -> None:
        old = self._current.get(person.id)
        if old is not None:
            self._past.setdefault(person.id, []).append((self._since[person.id], old))
            for key in _role_keys(old):
                self._holders[key].pop(person.id, None)
                self._sorted.pop(key, None)
            if old.manager is not None:
                self._reports[old.manager].pop(person.id, None)
                if old.manager != person.manager:
                    self._former_reports.setdefault(old.manager, set()).add(person.id)
        self._current[person.id] = person
        self._since[person.id] = seq
        for key in _role_keys(person):
            self._holders.setdefault(key, {})[person.id] = None
            self._sorted.pop(key, None)
        for role in person.roles:
            self._ever.setdefault(role, set()).add(person.id)
        if person.manager is not None:
            self._reports.setdefault(person.manager, {})[person.id] = None

    def view(self) -> DirectoryView:
        """The directory as it is now (the view does not follow later events)."""
        return DirectoryView(self, self.seq)

    def at(self, seq: int) -> DirectoryView:
        """The directory as it was once every event up to `seq` was applied."""
        return DirectoryView(self, min(seq, self.seq))

    # -- what the views read --------------------------------------------------------

    def person_at(self, person_id: str, seq: int) -> OrgPerson | None:
        since = self._since.get(person_id)
        if since is None:
            return None
        if seq >= since:
            return self._current[person_id]
        past = self._past.get(person_id, ())
        i = bisect_right(past, seq, key=lambda version: version[0]) - 1
        return past[i][1] if i >= 0 else None

    def holders_at(self, role: str, unit: str | None, seq: int) -> tuple[str, ...]:
        if seq == self.seq:
            key = (role, unit)
            found = self._sorted.get(key)
            if found is None:
                found = self._sorted[key] = tuple(sorted(self._holders.get(key, ())))
            return found
        held = []
        for person_id in self._ever.get(role, ()):
            person = self.person_at(person_id, seq)
            if (
                person is not None
                and role in person.roles
                and (unit is None or person.unit == unit)
            ):
                held.append(person_id)
        return tuple(sorted(held))

    def reports_at(self, manager: str, seq: int) -> tuple[str, ...]:
        if seq == self.seq:
            return tuple(sorted(self._reports.get(manager, ())))
        ever = {*self._reports.get(manager, ()), *self._former_reports.get(manager, ())}
        return tuple(
            sorted(
                p
                for p in ever
                if (person := self.person_at(p, seq)) is not None and person.manager == manager
            )
        )

    def _at_index(self, seq: int) -> int:
        return bisect_right(self._seqs, seq) - 1

    def as_of_at(self, seq: int) -> datetime | None:
        i = self._at_index(seq)
        return _moment(self._as_of[i]) if i >= 0 else None

    def count_at(self, seq: int) -> int:
        i = self._at_index(seq)
        return self._counts[i] if i >= 0 else 0

    def ids(self) -> Iterator[str]:
        """Everyone the projection ever knew (known at some seq)."""
        return iter(self._since)


def _role_keys(person: OrgPerson) -> list[tuple[str, str | None]]:
    return [key for role in person.roles for key in ((role, None), (role, person.unit))]


class DirectoryView:
    """The directory of a `DirectoryProjection` at one sequence number: an `Org`.

    Lookups cost what they cost in a snapshot (a dict, or a bisection in one person's
    versions when the view is older than the person's latest change), whatever the
    size of the organisation; `snapshot()` copies it whole, for tests and tools.
    """

    __slots__ = ("_projection", "seq")

    def __init__(self, projection: DirectoryProjection, seq: int) -> None:
        self._projection = projection
        self.seq = seq

    @property
    def as_of(self) -> datetime | None:
        return self._projection.as_of_at(self.seq)

    def __len__(self) -> int:
        return self._projection.count_at(self.seq)

    def __contains__(self, person_id: object) -> bool:
        return isinstance(person_id, str) and self.knows(person_id)

    def knows(self, person_id: str) -> bool:
        return self.person(person_id) is not None

    def person(self, person_id: str) -> OrgPerson | None:
        return self._projection.person_at(person_id, self.seq)

    def unit_of(self, person_id: str) -> str | None:
        person = self.person(person_id)
        return person.unit if person else None

    def roles_of(self, person_id: str) -> frozenset[str]:
        person = self.person(person_id)
        return person.roles if person else frozenset()

    def holders(self, role: str, unit: str | None = None) -> tuple[str, ...]:
        """Ids of the people holding `role` (in `unit`, if given), sorted."""
        return self._projection.holders_at(role, unit, self.seq)

    def reports_of(self, person_id: str) -> tuple[str, ...]:
        """The people whose manager is `person_id` (their direct reports), sorted."""
        return self._projection.reports_at(person_id, self.seq)

    def managers_above(self, person_id: str) -> ManagementChain:
        return walk_managers(self.person, person_id)

    def snapshot(self) -> OrgSnapshot:
        """The same directory as an `OrgSnapshot` (copies every person: not per report)."""
        people = (self.person(i) for i in self._projection.ids())
        return OrgSnapshot({p.id: p for p in people if p is not None}, self.as_of)
