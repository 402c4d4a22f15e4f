"""The organisation as triage sees it: an immutable snapshot of people, managers and roles.

A snapshot is built from the directory file's `Person` items, or folded from the
`directory.*` events of the `directory.changes` topic, so triage can rebuild the
directory as it stood at any moment and explain a decision with it:

- `directory.person.upserted.v1` replaces everything known about one person (unit,
  manager, roles);
- `directory.role.assigned.v1` / `directory.role.revoked.v1` add or remove one role;
- `directory.role.proposed.v1` changes nothing: a privileged role proposed by one admin
  counts only once another admin approves it (then `directory.role.assigned.v1`).

Manager data comes from people, and people make mistakes: a manager may be missing
from the directory, or the managers may loop (a -> b -> a). `managers_above` always
terminates, stops at the first repeat and reports the loop, so a conflict-of-interest
check never hangs on bad data.

Pure code: no I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from services.domain.directory import DirectoryFile, Person
from services.domain.envelope import Envelope
from services.domain.events import (
    PersonUpserted,
    RoleAssigned,
    RoleProposed,
    RoleRevoked,
    data_of,
)

DIRECTORY_EVENT_TYPES = frozenset(
    {
        "directory.person.upserted.v1",
        "directory.role.assigned.v1",
        "directory.role.revoked.v1",
        "directory.role.proposed.v1",
    }
)


class NotADirectoryEvent(ValueError):
    """The event is not one of `DIRECTORY_EVENT_TYPES`."""


@dataclass(frozen=True)
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

    def __post_init__(self) -> None:
        people = dict(self.people)
        by_role: dict[str, list[str]] = {}
        for person_id in sorted(people):
            for role in people[person_id].roles:
                by_role.setdefault(role, []).append(person_id)
        object.__setattr__(self, "people", MappingProxyType(people))
        object.__setattr__(
            self, "_by_role", MappingProxyType({r: tuple(ids) for r, ids in by_role.items()})
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

    def managers_above(self, person_id: str) -> ManagementChain:
        """The chain of managers above a person up to the top; terminates on loops."""
        managers: list[str] = []
        seen = {person_id: -1}
        current = self.people.get(person_id)
        while current is not None and current.manager is not None:
            manager = current.manager
            if manager in seen:
                # The loop starts at the repeated manager (or at the person themselves).
                loop = (person_id, *managers) if manager == person_id else managers[seen[manager] :]
                return ManagementChain(person_id, tuple(managers), cycle=tuple(loop))
            seen[manager] = len(managers)
            managers.append(manager)
            current = self.people.get(manager)
            if current is None:
                return ManagementChain(person_id, tuple(managers), dangling=manager)
        return ManagementChain(person_id, tuple(managers))


# -- folding directory events ---------------------------------------------------------


def _apply(people: dict[str, OrgPerson], envelope: Envelope) -> None:
    if envelope.type not in DIRECTORY_EVENT_TYPES:
        raise NotADirectoryEvent(
            f"{envelope.type} is not a directory event ({', '.join(sorted(DIRECTORY_EVENT_TYPES))})"
        )
    data = data_of(envelope)
    match data:
        case PersonUpserted():
            people[data.person_id] = OrgPerson(
                id=data.person_id,
                unit=data.unit,
                manager=data.manager_id,
                roles=frozenset(data.roles),
            )
        case RoleAssigned():
            # A role for someone not upserted yet still counts: they hold it.
            held = people.get(data.person_id) or OrgPerson(id=data.person_id)
            people[data.person_id] = OrgPerson(
                held.id, held.unit, held.manager, held.roles | {data.role}
            )
        case RoleRevoked():
            known = people.get(data.person_id)
            if known is not None and data.role in known.roles:
                people[data.person_id] = OrgPerson(
                    known.id, known.unit, known.manager, known.roles - {data.role}
                )
        case RoleProposed():
            pass  # pending until approved: a proposal grants nothing
        case _:  # pragma: no cover - DIRECTORY_EVENT_TYPES and the catalog agree
            raise NotADirectoryEvent(envelope.type)


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
