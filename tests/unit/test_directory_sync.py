"""The directory as SCIM and files describe it: mapping, filters as SQL, PATCH, imports."""

from __future__ import annotations

from typing import Any

import pytest
from scim2_models import InvalidFilterException, PatchOp, ScimFilter
from scim2_server.conditions import Conditions

from services.domain.directory import Person
from services.domain.directory_sync import (
    ENTERPRISE_SCHEMA,
    MAX_CHUNK_DATA_BYTES,
    ImportInvalid,
    import_problems,
    people_from_csv,
    people_from_scim_json,
    person_from_user,
    record_bytes,
    user_from_person,
)
from services.intake.scim import scim_service
from services.intake.scim_filter import SqlFilter, user_filter_sql

NIA = Person(
    id="p-nia",
    name="Nia Newcomer",
    alternative_names=["尼娅"],
    email="nia@example.com",
    unit="city-retail",
    manager="p-wang",
    roles=["employee"],
)


def test_person_round_trips_through_a_user() -> None:
    user = user_from_person(NIA, external_id="E-7")
    assert user["userName"] == "p-nia" and user["externalId"] == "E-7"
    assert user["displayName"] == "Nia Newcomer" and user["name"] == {"formatted": "尼娅"}
    assert user[ENTERPRISE_SCHEMA] == {"department": "city-retail", "manager": {"value": "p-wang"}}
    assert user["groups"] == [{"value": "employee", "display": "employee"}]
    assert person_from_user(user, roles=NIA.roles) == NIA


def test_user_mapping_choices() -> None:
    user: dict[str, Any] = {
        "userName": "p-x",
        "name": {"givenName": "Xu", "familyName": "Li"},
        "emails": [{"value": "home@x"}, {"value": "work@x", "primary": True}],
        ENTERPRISE_SCHEMA: {"organization": "retail"},
    }
    person = person_from_user(user)
    assert (person.name, person.email, person.unit, person.manager) == (
        "Xu Li",
        "work@x",
        "retail",
        None,
    )
    with pytest.raises(ValueError, match="userName"):
        person_from_user({"displayName": "Nobody"})


def test_kept_attributes_come_back_until_the_directory_changes_them() -> None:
    sent = {**user_from_person(NIA), "title": "Clerk", "active": False}
    assert user_from_person(NIA, kept=sent)["title"] == "Clerk"
    assert user_from_person(NIA, kept=sent)["active"] is False
    moved = NIA.model_copy(update={"manager": "p-liu", "unit": "hq"})
    again = user_from_person(moved, kept=sent)
    assert again[ENTERPRISE_SCHEMA] == {"department": "hq", "manager": {"value": "p-liu"}}
    assert again["title"] == "Clerk"


def _sql(text: str) -> tuple[str, list[Any]]:
    params = SqlFilter()
    return user_filter_sql(ScimFilter(text).ast, params), params.params


def test_filters_become_sql() -> None:
    # userName is caseExact false (RFC 7643 §4.1.1), id is caseExact
    assert _sql('userName eq "P-Nia"') == ("(lower(p.person_id) = $1)", ["p-nia"])
    assert _sql('id eq "P-Nia"') == ("(p.person_id = $1)", ["P-Nia"])
    where, params = _sql(
        f'displayName co "Ni_a" and (emails sw "NIA" or {ENTERPRISE_SCHEMA}:manager.value eq'
        ' "p-wang")'
    )
    assert where == (
        "((lower(p.name) LIKE $1) AND ((lower(p.email) LIKE $2) OR (p.manager_id = $3)))"
    )
    assert params == ["%ni\\_a%", "nia%", "p-wang"]
    assert _sql(f'{ENTERPRISE_SCHEMA}:department eq "Retail"') == (
        "(lower(p.unit) = $1)",
        ["retail"],
    )
    assert _sql('externalId eq "E-7"')[0] == "(s.external_id = $1)"
    assert _sql('groups eq "hr_head"') == ("($1 = ANY(p.roles))", ["hr_head"])
    assert _sql("not (displayName pr)")[0] == "(NOT coalesce((p.name IS NOT NULL), FALSE))"


def test_unknown_filter_attributes_are_invalid_filters() -> None:
    with pytest.raises(InvalidFilterException):
        _sql('title eq "Clerk"')
    with pytest.raises(InvalidFilterException):
        _sql('meta.lastModified gt "yesterday"')


def _patched(operations: list[dict[str, Any]]) -> Person:
    service = scim_service()
    resource_type = service.resource_type_at("Users")
    model = service.get_model(resource_type)
    with service.provider:
        user = model.model_validate(
            {**user_from_person(NIA), "meta": {"resourceType": "User", "version": 'W/"1"'}}
        )
        patch = PatchOp[model].model_validate(  # type: ignore[valid-type]
            {"schemas": [PatchOp.__schema__], "Operations": operations}
        )
        done = service.apply_patch(user, patch, Conditions())
    assert done is not None
    return person_from_user(done.model_dump(mode="json"), roles=NIA.roles)


def test_patch_operations_map_to_the_directory() -> None:
    manager = f"{ENTERPRISE_SCHEMA}:manager.value"
    assert _patched([{"op": "replace", "path": manager, "value": "p-liu"}]).manager == "p-liu"
    assert _patched([{"op": "remove", "path": f"{ENTERPRISE_SCHEMA}:manager"}]).manager is None
    added = _patched([{"op": "add", "value": {"displayName": "Nia N."}}])
    assert added.name == "Nia N." and added.manager == "p-wang"
    unit = _patched([{"op": "replace", "path": f"{ENTERPRISE_SCHEMA}:department", "value": "hq"}])
    assert unit.unit == "hq"


def test_import_files_and_their_checks() -> None:
    people = people_from_csv(
        "id,name,manager,roles,alternative_names\n"
        "p-a,Ann,,hr_head;employee,\n"
        "p-b,Bo,p-a,,Bo B.;ボー\n"
    )
    assert people[1].alternative_names == ["Bo B.", "ボー"]
    assert people[0].roles == ["employee", "hr_head"]
    assert import_problems(people, {}) == []
    scim = people_from_scim_json({"Resources": [user_from_person(NIA)]})
    assert scim[0].manager == "p-wang"
    assert import_problems(scim, {}) == ["p-nia: manager 'p-wang' is not in the directory"]
    assert import_problems(scim, {"p-wang": None}) == []
    cycle = [Person(id="p-a", manager="p-b"), Person(id="p-b", manager="p-a")]
    assert "cycle" in import_problems(cycle, {})[0]
    assert import_problems([Person(id="p-a", manager="p-a")], {}) == [
        "p-a: a person cannot be their own manager"
    ]
    with pytest.raises(ImportInvalid, match="line 2"):
        people_from_csv("id,name\n,Nameless\n")
    with pytest.raises(ImportInvalid, match="CSV header"):
        people_from_csv("who,name\np-a,A\n")


def test_an_import_refuses_a_person_larger_than_a_chunk_event() -> None:
    """A person whose record is over the chunk budget would be an event of one over
    Kafka's 1 MiB, which the broker refuses and the relay retries forever: the import's
    check refuses them, naming them and the size; one just within the budget passes."""
    names = ["名" * 200] * 500  # 500 names of 200 escaped characters: about 600 KB
    huge = Person(id="p-huge", name="Huge", alternative_names=names, manager="p-a")
    size = record_bytes(huge)
    assert size > MAX_CHUNK_DATA_BYTES
    people = [Person(id="p-a", name="Ann"), huge]
    assert import_problems(people, {}) == [
        f"p-huge: the record takes {size:,} bytes, more than the"
        f" {MAX_CHUNK_DATA_BYTES:,} bytes an import event may carry"
    ]
    fits = huge.model_copy(update={"alternative_names": names[:400]})
    assert record_bytes(fits) <= MAX_CHUNK_DATA_BYTES
    assert import_problems([Person(id="p-a", name="Ann"), fits], {}) == []
