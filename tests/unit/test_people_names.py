"""People named in a report: ids and names, their resolution, the report's validation
wherever it enters, what readers see of the matches, and the search's rate limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.domain.events import (
    READER_FIELDS,
    ReportAmended,
    ReportSubmitted,
    data_of,
    open_data,
)
from services.domain.names import NameIndex, normalise
from services.domain.policy import Policy
from services.domain.ratelimit import TokenBuckets
from services.domain.reports import (
    MATCH_TEXT_FIELD,
    NameRow,
    PeopleRefused,
    ReportInput,
    resolve_people,
    sealed_people,
    submit_report,
    to_look_up,
)
from services.infra.config import load_yaml_model
from services.infra.crypto import IncidentKey, Pseudonyms, new_data_key, new_salt

POLICY = load_yaml_model(
    Path(__file__).resolve().parents[2] / "services" / "data" / "policy.yaml", Policy
)
KEY = IncidentKey("inc-0001", new_data_key(), new_salt(), Pseudonyms(new_data_key()))
DIRECTORY = {
    "p-wang": ("Wang Jun", ["\u738b\u519b"]),  # 王军
    "p-chen": ("Chen Mei", ["\u9648\u6885"]),  # 陈梅
    "p-li": ("Li Wei", []),
    "p-li2": ("Wei Li", []),  # the same normal form as p-li: ambiguous
}


def rows_for(report: ReportInput) -> tuple[frozenset[str], list[NameRow]]:
    """What `lookup_people` answers for this report, from DIRECTORY (as the names table)."""
    ids, norms = to_look_up(report)
    known = frozenset(i for i in ids if i in DIRECTORY)
    table = [
        NameRow(normalise(name), name, pid, kind)
        for pid, (primary, alternatives) in DIRECTORY.items()
        for kind, name in [("primary", primary), *(("alternative", a) for a in alternatives)]
    ]
    return known, [row for row in table if row.norm in norms]


def report(**changes: Any) -> ReportInput:
    return ReportInput.model_validate(
        {"category": "harassment", "summary": "s", "description": "d", **changes}
    )


def resolved(body: ReportInput, reporter: str | None = None) -> Any:
    known, names = rows_for(body)
    return resolve_people(body, known_ids=known, names=names, reporter=reporter)


@pytest.mark.parametrize(
    "spelling",
    [
        "p-wang",
        {"id": "p-wang"},
        "Wang Jun",
        "wang  JUN",
        "\uff37\uff41\uff4e\uff47 \uff2a\uff55\uff4e",
        "\u738b\u519b",
    ],
)
def test_every_spelling_of_the_accused_gives_his_person_id(spelling: Any) -> None:
    people = resolved(report(accused=[spelling]))
    assert [(e.value, e.is_id) for e in people.accused] == [("p-wang", True)]


def test_each_free_text_name_records_how_it_matched() -> None:
    people = resolved(
        report(
            accused=["Wang Jun", "wang jun", "\u738b\u519b", "the night driver", "li wei"],
            named=["p-chen"],
        )
    )
    assert [(f, t, m.how, m.person_id, m.candidates) for f, t, m in people.matches] == [
        ("accused", "Wang Jun", "exact", "p-wang", ("p-wang",)),
        ("accused", "wang jun", "normalised", "p-wang", ("p-wang",)),
        ("accused", "\u738b\u519b", "exact", "p-wang", ("p-wang",)),
        ("accused", "the night driver", "none", None, ()),
        ("accused", "li wei", "ambiguous", None, ("p-li", "p-li2")),
    ]
    # the same person three times is named once; unmatched names stay names
    assert [(e.value, e.is_id) for e in people.accused] == [
        ("p-wang", True),
        ("the night driver", False),
        ("li wei", False),
    ]
    assert [(e.value, e.is_id) for e in people.named] == [("p-chen", True)]


def test_an_alternative_name_in_another_form_matches_as_an_alternative_name() -> None:
    index = NameIndex.of({"p-wang": ("Wang Jun", ["Wáng Jūn"])})
    assert index.resolve("wang jun").how == "normalised"
    people = resolve_people(
        report(accused=["WANG, Jun"]),
        known_ids=frozenset(),
        names=[NameRow("jun wang", "Jun Wang-alt", "p-wang", "alternative")],
    )
    assert people.matches[0][2].how == "alternative_name"


def test_a_plain_string_that_is_a_known_id_is_that_person_and_a_name_object_never_is() -> None:
    people = resolved(report(accused=["p-chen", {"name": "p-chen"}]))
    assert [(e.value, e.is_id) for e in people.accused] == [
        ("p-chen", True),
        ("p-chen", False),  # nobody is *named* "p-chen": a name, kept (sealed)
    ]
    assert [m.how for _, _, m in people.matches] == ["none"]


def test_an_id_the_directory_does_not_know_is_refused_where_it_was_given() -> None:
    with pytest.raises(PeopleRefused) as refused:
        resolved(report(named=["p-chen", {"id": "p-nobody"}]))
    assert refused.value.where == "named.1"
    assert "p-nobody" not in str(refused.value)  # dead letters keep the reason


@pytest.mark.parametrize("himself", ["p-wang", {"id": "p-wang"}, "Wang Jun", "\u738b\u519b"])
def test_a_reporter_naming_himself_as_accused_is_refused(himself: Any) -> None:
    with pytest.raises(PeopleRefused, match=r"accused\.0: the reporter"):
        resolved(report(accused=[himself]), reporter="p-wang")
    assert resolved(report(named=[himself]), reporter="p-wang").named  # named: allowed


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "Wang\x00Jun", "Wang\u202eJun", "---"])
def test_empty_huge_or_control_character_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="each name is 1 to 200 characters"):
        report(accused=[name])
    with pytest.raises(ValidationError):
        report(named=[{"name": name}])


def test_a_malformed_person_entry_says_what_an_entry_is() -> None:
    with pytest.raises(ValidationError, match=r'a string, \{"id": \.\.\.\}'):
        report(accused=[3])
    with pytest.raises(ValidationError, match="pattern"):
        report(accused=[{"id": "p wang"}])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("unit", "city\x00retail"),
        ("unit", "city\nretail"),
        ("channel", "hot\x07line"),
        ("summary", "one\rline"),
        ("location", "floor\x1b3"),
        ("category", "harassment\x00"),
        ("description", "NUL\x00inside"),
    ],
)
def test_control_characters_are_refused_at_intake_as_triage_cannot_take_them(
    field: str, value: str
) -> None:
    with pytest.raises(ValidationError, match="control characters"):
        report(**{field: value})


@pytest.mark.parametrize("field", ["unit", "description", "accused"])
def test_a_lone_surrogate_is_refused_anywhere(field: str) -> None:
    value = "lone \udc80 surrogate"
    with pytest.raises(ValidationError, match="unicode"):
        report(**{field: [value] if field == "accused" else value})


def test_a_description_keeps_its_tabs_and_line_breaks() -> None:
    assert report(description="line 1\n\tline 2\r\n").description == "line 1\n\tline 2"


NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def submitted(body: ReportInput, reporter: str | None = None) -> ReportSubmitted:
    event = submit_report(
        body,
        POLICY,
        incident_id="inc-0001",
        reporter=reporter,
        channel="web",
        actor="anonymous",
        source="/services/intake",
        now=NOW,
        protect=KEY,
        people=resolved(body, reporter),
    )
    data = data_of(event)
    assert isinstance(data, ReportSubmitted)
    return data


def test_the_event_carries_the_matched_id_and_each_match_with_its_text_sealed() -> None:
    data = submitted(report(accused=["wang  JUN", "the night driver"]))
    assert data.accused[0] == "p-wang"
    assert KEY.open("accused", data.accused[1]) == "the night driver"
    texts = [KEY.open(MATCH_TEXT_FIELD, m.text) for m in data.people_matches]
    assert texts == ["wang  JUN", "the night driver"]
    assert [(m.field, m.how, m.person_id) for m in data.people_matches] == [
        ("accused", "normalised", "p-wang"),
        ("accused", "none", None),
    ]
    assert "night" not in json.dumps(data.model_dump(mode="json"))


def test_readers_see_the_texts_of_the_matches_and_nothing_else_opens() -> None:
    data = submitted(report(accused=["wang jun"])).model_dump(mode="json")

    def open_field(name: str, sealed: str) -> str | None:
        return KEY.open(name, sealed)

    opened = open_data(data, open_field, READER_FIELDS)
    assert opened["people_matches"][0]["text"] == "wang jun"
    assert opened["people_matches"][0]["how"] == "normalised"
    assert opened["summary"] == "s"
    shut = open_data(data, open_field, READER_FIELDS - {"people_matches.text"})
    assert shut["people_matches"][0]["text"] == data["people_matches"][0]["text"]
    erased = open_data(data, lambda _n, _s: None, READER_FIELDS)
    assert erased["people_matches"][0]["text"] == "[erased]"


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "category": st.just("harassment"),
            "summary": st.text(min_size=1, max_size=30),
            "description": st.text(min_size=1, max_size=60),
            "unit": st.text(max_size=20),
            "location": st.text(max_size=20),
            "channel": st.text(max_size=10),
            "accused": st.lists(st.text(max_size=20), max_size=3),
        }
    )
)
def test_every_report_intake_accepts_is_one_triage_can_store(body: dict[str, Any]) -> None:
    """Triage keeps the submitted event as JSONB, which refuses NUL; nothing else in the
    chain accepts a lone surrogate. Whatever `ReportInput` accepts passes both."""
    try:
        accepted = ReportInput.model_validate(body)
    except ValidationError:
        return
    data = submitted(accepted)
    text = json.dumps(data.model_dump(mode="json"), ensure_ascii=False)
    assert "\x00" not in text and "\\u0000" not in text
    text.encode("utf-8")  # no lone surrogate
    assert ReportSubmitted.model_validate_json(text) == data


def test_a_client_gets_a_burst_of_searches_then_waits_for_tokens() -> None:
    buckets = TokenBuckets(capacity=3, rate=0.5)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [None, None, None]
    assert buckets.take("a", 0.0) == 2  # one token back after 2 s
    assert buckets.take("b", 0.0) is None  # another client has its own bucket
    assert buckets.take("a", 2.0) is None
    assert buckets.take("a", 2.1) == 2


def test_the_buckets_stay_bounded_whatever_the_keys() -> None:
    buckets = TokenBuckets(capacity=2, rate=1.0, max_keys=100)
    for i in range(1000):
        buckets.take(f"client-{i}", float(i) / 1000)
    assert len(buckets._buckets) <= 101


def test_an_amendment_resolves_and_seals_its_added_people_the_same_way() -> None:
    added = report(accused=["wang jun", "the night driver"])
    fields = sealed_people(resolved(added), KEY, ("accused_added", "named_added"))
    amended = ReportAmended.model_validate({**fields, "report_digest": "sha256:00"})
    assert amended.accused_added[0] == "p-wang"
    assert KEY.open("accused_added", amended.accused_added[1]) == "the night driver"
    assert [m.how for m in amended.people_matches] == ["normalised", "none"]
