"""A generated organisation of any size, shaped like the seed company's.

`generate(n)` gives `n` directory people: the seed directory's group core
(services/data/directory.yaml: the CEO p-zhang, group HR, the chief ethics officer,
the board, the auditors, the admins) and units of up to `UNIT_SIZE` people under the
CEO. Each unit has a president, an HR head and two HR case handlers who answer to
her, and a management tree under the president: directors, senior managers, managers
and team leads (fan-out 4), then employees (three per team lead). So the deepest
employee has six management levels above her, the CEO included.

`seed_case(people)` picks the seed case in it: a team lead of the first unit accused
by one of his employees (a named report), so his whole line (manager, senior
manager, director, president, CEO) must be excluded. Deterministic: the same `n`
gives the same organisation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import services
from services.domain.directory import DirectoryFile, Person
from services.infra.config import load_yaml_model

UNIT_SIZE = 1000
FAN_OUT = (4, 4, 4, 4, 3)
"""Children per person at depth 1 (president) .. 5 (team lead); employees are leaves."""
SEED_FILE = Path(services.__file__).parent / "data" / "directory.yaml"
CEO = "p-zhang"


@dataclass(frozen=True)
class SeedCase:
    """The accused, his named reporter, the unit, and the line that must be excluded."""

    accused: str
    reporter: str
    unit: str
    line: tuple[str, ...]


def seed_people() -> list[Person]:
    return list(load_yaml_model(SEED_FILE, DirectoryFile).people)


def generate(n: int) -> list[Person]:
    """`n` people (at least the seed directory's): the seed core, then full units."""
    people = seed_people()
    number = 0
    while len(people) < n:
        number += 1
        people.extend(_unit(number, min(UNIT_SIZE, n - len(people))))
    return people


def _unit(number: int, size: int) -> list[Person]:
    unit = f"u-{number:04d}"
    made: list[Person] = []

    def add(manager: str, roles: list[str]) -> str:
        person_id = f"p-{number:04d}-{len(made):04d}"
        made.append(
            Person(
                id=person_id,
                name=f"Person {number}-{len(made)}",
                email=f"{person_id}@example.com",
                unit=unit,
                manager=manager,
                roles=roles,
            )
        )
        return person_id

    president = add(CEO, ["unit_president"])
    if len(made) < size:
        hr_head = add(president, ["hr_head"])
        for _ in range(2):
            if len(made) < size:
                add(hr_head, ["hr_case_handler"])
    queue: deque[tuple[str, int]] = deque([(president, 1)])
    while queue and len(made) < size:
        manager, depth = queue.popleft()
        if depth > len(FAN_OUT):
            continue
        for _ in range(FAN_OUT[depth - 1]):
            if len(made) >= size:
                break
            roles = ["manager"] if depth < len(FAN_OUT) else ["employee"]
            queue.append((add(manager, roles), depth + 1))
    return made


def seed_case(people: list[Person]) -> SeedCase:
    """The deepest employee of the first unit reports her team lead."""
    by_id = {p.id: p for p in people}
    for person in people:
        if person.unit == "u-0001" and person.roles == ["employee"]:
            accused = by_id[person.manager or ""]
            line: list[str] = []
            current = accused.manager
            while current is not None:
                line.append(current)
                current = by_id[current].manager
            if len(line) >= 5:
                return SeedCase(accused.id, person.id, "u-0001", tuple(line))
    # The seed directory alone: p-wang, reported by p-liu (the seed case itself).
    return SeedCase("p-wang", "p-liu", "city-retail", ("p-li", CEO))
