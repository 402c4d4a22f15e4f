"""The directory snapshot triage decides with: people, managers, roles, and their history.

The seed organisation (services/data/directory.yaml):

    p-zhang (ceo, group)
    ├── p-li (unit_president, city-retail)
    │   ├── p-wang (store_manager, city-retail)
    │   │   └── p-liu (employee, city-retail)
    │   └── p-chen (hr_case_handler, city-retail)
    ├── p-zhou (hr_head, group)
    │   └── p-ma (hr_case_handler, group)
    └── p-sun (chief_ethics_officer, group)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import services
from services.domain.directory import DirectoryFile, Person
from services.domain.envelope import Envelope, new_event_id
from services.domain.events import InvalidEvent, make_event
from services.domain.org import (
    ManagementChain,
    NotADirectoryEvent,
    OrgPerson,
    OrgSnapshot,
    apply_directory_event,
    fold_directory,
)
from services.infra.config import load_yaml_model

SEED = load_yaml_model(Path(services.__file__).parent / "data" / "directory.yaml", DirectoryFile)
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def org(*people: tuple[str, str | None, str | None, list[str]]) -> OrgSnapshot:
    """A snapshot from (id, unit, manager, roles) rows."""
    return OrgSnapshot.from_people(
        Person(id=i, unit=unit, manager=manager, roles=roles) for i, unit, manager, roles in people
    )


def directory_event(type_: str, minutes: int, **data: Any) -> Envelope:
    return make_event(
        f"directory.{type_}.v1",
        subject=data["person_id"],
        data=data,
        source="/services/intake",
        time=T0 + timedelta(minutes=minutes),
        actor="system:directory-seed",
    )


# -- the seed organisation --------------------------------------------------------------


def test_the_seed_directory_becomes_a_snapshot() -> None:
    seed = OrgSnapshot.from_directory(SEED)
    assert len(seed) == len(SEED.people)
    assert seed.knows("p-wang") and "p-wang" in seed
    assert not seed.knows("Wang Jun")
    assert seed.unit_of("p-wang") == "city-retail"
    assert seed.unit_of("p-nobody") is None
    assert seed.roles_of("p-chen") == {"hr_case_handler"}
    assert seed.person("p-ma") == OrgPerson(
        "p-ma", "group", "p-zhou", frozenset({"hr_case_handler"})
    )


def test_holders_of_a_role_anywhere_or_in_one_unit() -> None:
    seed = OrgSnapshot.from_directory(SEED)
    assert seed.holders("hr_case_handler") == ("p-chen", "p-ma")
    assert seed.holders("hr_case_handler", "city-retail") == ("p-chen",)
    assert seed.holders("hr_case_handler", "group") == ("p-ma",)
    assert seed.holders("hr_case_handler", "logistics") == ()
    assert seed.holders("astronaut") == ()


def test_the_management_chain_goes_up_to_the_top() -> None:
    seed = OrgSnapshot.from_directory(SEED)
    above_liu = seed.managers_above("p-liu")
    assert above_liu.managers == ("p-wang", "p-li", "p-zhang")
    assert not above_liu.circular and above_liu.dangling is None
    assert list(above_liu) == ["p-wang", "p-li", "p-zhang"] and "p-li" in above_liu
    assert seed.managers_above("p-zhang") == ManagementChain("p-zhang")
    assert seed.managers_above("p-unknown") == ManagementChain("p-unknown")


# -- bad manager data ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("people", "start", "managers", "cycle"),
    [
        pytest.param([("a", "b"), ("b", "a")], "a", ("b",), ("a", "b"), id="a->b->a"),
        pytest.param([("a", "a")], "a", (), ("a",), id="own manager"),
        pytest.param(
            [("x", "a"), ("a", "b"), ("b", "c"), ("c", "a")],
            "x",
            ("a", "b", "c"),
            ("a", "b", "c"),
            id="x enters the loop a->b->c->a",
        ),
        pytest.param(
            [("a", "b"), ("b", "c"), ("c", "b")], "a", ("b", "c"), ("b", "c"), id="loop above"
        ),
    ],
)
def test_circular_manager_data_stops_at_the_first_repeat_and_reports_the_loop(
    people: list[tuple[str, str]], start: str, managers: tuple[str, ...], cycle: tuple[str, ...]
) -> None:
    snapshot = org(*((i, "u", m, []) for i, m in people))
    chain = snapshot.managers_above(start)
    assert chain.managers == managers
    assert chain.cycle == cycle
    assert chain.circular


def test_a_manager_missing_from_the_directory_ends_the_chain_and_is_reported() -> None:
    snapshot = org(("a", "u", "b", []), ("b", "u", "ghost", []))
    chain = snapshot.managers_above("a")
    assert chain.managers == ("b", "ghost")
    assert chain.dangling == "ghost"
    assert not chain.circular


@given(st.dictionaries(st.sampled_from("abcdefgh"), st.none() | st.sampled_from("abcdefghij")))
def test_managers_above_always_terminates_without_repeats(managers: dict[str, str | None]) -> None:
    snapshot = org(*((i, None, m, []) for i, m in managers.items()))
    for person in managers:
        chain = snapshot.managers_above(person)
        assert person not in chain.managers
        assert len(set(chain.managers)) == len(chain.managers)
        assert set(chain.cycle) <= {person, *chain.managers}
        # Each step follows the manager field.
        for below, above in zip((person, *chain.managers), chain.managers, strict=False):
            assert managers.get(below) == above


# -- immutability and equality ----------------------------------------------------------


def test_a_snapshot_cannot_be_changed_in_place() -> None:
    seed = OrgSnapshot.from_directory(SEED)
    with pytest.raises(TypeError):
        seed.people["p-x"] = OrgPerson("p-x")  # type: ignore[index]
    with pytest.raises(AttributeError):
        seed.as_of = T0  # type: ignore[misc]
    changed = seed.with_person(OrgPerson("p-x", "group", None, frozenset({"hr_head"})))
    assert not seed.knows("p-x") and changed.knows("p-x")
    assert changed.holders("hr_head") == ("p-x", "p-zhou")
    assert seed.holders("hr_head") == ("p-zhou",)
    assert seed == OrgSnapshot.from_directory(SEED) and seed != changed


# -- folding directory events -----------------------------------------------------------


def seed_events() -> list[Envelope]:
    return [
        directory_event(
            "person.upserted",
            n,
            person_id=p.id,
            name=p.name,
            email=p.email,
            unit=p.unit,
            manager_id=p.manager,
            roles=p.roles,
        )
        for n, p in enumerate(SEED.people)
    ]


def test_folding_the_seed_events_gives_the_seed_directory() -> None:
    events = seed_events()
    folded = fold_directory(events)
    assert folded.people == OrgSnapshot.from_directory(SEED).people
    assert folded.as_of == events[-1].time


def test_one_event_at_a_time_gives_the_same_as_a_fold() -> None:
    snapshot = OrgSnapshot.empty()
    for event in seed_events():
        snapshot = apply_directory_event(snapshot, event)
    assert snapshot == fold_directory(seed_events())


def test_an_upsert_replaces_the_person_and_roles_come_and_go() -> None:
    start = fold_directory(seed_events())
    history = [
        # p-chen moves to the group HR team under p-zhou.
        directory_event(
            "person.upserted",
            100,
            person_id="p-chen",
            unit="group",
            manager_id="p-zhou",
            roles=["hr_case_handler"],
        ),
        directory_event("role.assigned", 101, person_id="p-liu", role="hr_case_handler"),
        directory_event("role.revoked", 102, person_id="p-ma", role="hr_case_handler"),
        directory_event("role.revoked", 103, person_id="p-ma", role="not_held"),
        directory_event("role.revoked", 104, person_id="p-nobody", role="hr_head"),
        directory_event("role.assigned", 105, person_id="p-new", role="hr_head"),
    ]
    after = fold_directory(history, start=start)
    assert after.person("p-chen") == OrgPerson(
        "p-chen", "group", "p-zhou", frozenset({"hr_case_handler"})
    )
    assert after.roles_of("p-liu") == {"employee", "hr_case_handler"}
    assert after.roles_of("p-ma") == frozenset()
    assert not after.knows("p-nobody")
    # A role for someone not upserted yet: they hold it, with no unit or manager known.
    assert after.person("p-new") == OrgPerson("p-new", None, None, frozenset({"hr_head"}))
    assert after.holders("hr_case_handler") == ("p-chen", "p-liu")
    assert after.holders("hr_case_handler", "city-retail") == ("p-liu",)
    assert after.as_of == history[-1].time
    # The start is untouched.
    assert start.holders("hr_case_handler") == ("p-chen", "p-ma")


def test_the_directory_as_it_stood_at_a_moment() -> None:
    events = [
        *seed_events(),
        directory_event("role.revoked", 100, person_id="p-chen", role="hr_case_handler"),
        directory_event("role.assigned", 200, person_id="p-liu", role="hr_case_handler"),
    ]
    assert fold_directory(events, until=T0 + timedelta(minutes=50)).holders(
        "hr_case_handler", "city-retail"
    ) == ("p-chen",)
    assert (
        fold_directory(events, until=T0 + timedelta(minutes=150)).holders(
            "hr_case_handler", "city-retail"
        )
        == ()
    )
    assert fold_directory(events).holders("hr_case_handler", "city-retail") == ("p-liu",)


def test_other_events_are_refused() -> None:
    other = make_event(
        "incident.acknowledged.v1",
        subject="inc-1",
        data={"principal": "p-chen", "level": 1},
        source="/services/intake",
        time=T0,
    )
    with pytest.raises(NotADirectoryEvent, match="not a directory event"):
        apply_directory_event(OrgSnapshot.empty(), other)


def test_a_directory_event_with_invalid_data_is_refused() -> None:
    bad = Envelope(
        id=new_event_id(),
        source="/services/intake",
        type="directory.role.assigned.v1",
        time=T0,
        subject="p-chen",
        data={"person_id": "p-chen"},  # no role
    )
    with pytest.raises(InvalidEvent, match="role"):
        apply_directory_event(OrgSnapshot.empty(), bad)
