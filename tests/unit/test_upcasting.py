"""Upcasters: a stored `.v1` event is read through the `.v2` model, the envelope untouched.

The `.v2` types here are test-only: each test builds its own `Upcasters` registry, so
nothing reaches the services' registry or the catalog (the one test of `data_of`
swaps both in with monkeypatch, which puts them back).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from services.domain import events
from services.domain.envelope import Envelope
from services.domain.events import (
    CATALOG,
    EventType,
    InvalidEvent,
    ReportSubmitted,
    Topic,
    Viewed,
    data_of,
    make_event,
    parse_envelope,
)
from services.domain.upcasting import UPCASTERS, Upcasters, split_version

NOW = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
V2 = "incident.report.submitted.v2"
V3 = "incident.report.submitted.v3"


class ReportSubmittedV2(ReportSubmitted):
    """Test-only `.v2`: the business units as a list, and the report's language."""

    TYPE: ClassVar[str] = V2
    TOPIC: ClassVar[Topic] = Topic.REPORTS

    units: list[str]
    language: str


class ReportSubmittedV3(ReportSubmittedV2):
    """Test-only `.v3`: whether the reporter asked for a call back."""

    TYPE: ClassVar[str] = V3

    call_back: bool


def to_v2(data: Mapping[str, Any]) -> dict[str, Any]:
    unit = data.get("unit")
    return {**data, "units": [unit] if unit else [], "language": "und"}


def to_v3(data: Mapping[str, Any]) -> dict[str, Any]:
    return {**data, "call_back": False}


def registry(*, v3: bool = False) -> Upcasters:
    upcasters = Upcasters()
    upcasters.register(ReportSubmitted.TYPE, V2)(to_v2)
    if v3:
        upcasters.add(V2, V3, to_v3)
    return upcasters


def stored_v1() -> tuple[bytes, Envelope]:
    """A `.v1` report as the event store or the ledger hands it back: bytes, parsed."""
    event = make_event(
        ReportSubmitted.TYPE,
        subject="inc-0001",
        data={
            "category": "fraud",
            "summary": "s",
            "description": "d",
            "unit": "finance",
            "report_digest": DIGEST,
        },
        source="/services/intake",
        time=NOW,
    )
    raw = event.to_bytes()
    return raw, parse_envelope(raw)


def test_a_stored_v1_event_is_read_through_the_v2_model() -> None:
    raw, envelope = stored_v1()
    report = ReportSubmittedV2.read(envelope, upcasters=registry())
    assert isinstance(report, ReportSubmittedV2)
    assert (report.units, report.language, report.category) == (["finance"], "und", "fraud")
    # The envelope is what was hashed and signed: reading never changes it.
    assert envelope.type == ReportSubmitted.TYPE
    assert envelope.to_bytes() == raw
    assert "units" not in envelope.data


def test_the_steps_chain_from_v1_to_the_newest_version() -> None:
    _, envelope = stored_v1()
    upcasters = registry(v3=True)
    assert upcasters.current(ReportSubmitted.TYPE) == V3
    report = ReportSubmittedV3.read(envelope, upcasters=upcasters)
    assert (report.units, report.call_back) == (["finance"], False)
    # Read as v2, the chain stops at v2.
    assert ReportSubmittedV2.read(envelope, upcasters=upcasters).units == ["finance"]


def test_data_of_reads_through_the_services_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    _, envelope = stored_v1()
    monkeypatch.setattr(events, "UPCASTERS", registry())
    monkeypatch.setitem(CATALOG, V2, EventType.of(ReportSubmittedV2))
    report = data_of(envelope)
    assert isinstance(report, ReportSubmittedV2)
    assert report.language == "und"


def test_the_catalog_and_registry_are_untouched_by_these_tests() -> None:
    assert V2 not in CATALOG
    assert UPCASTERS.current(ReportSubmitted.TYPE) == ReportSubmitted.TYPE
    assert data_of(stored_v1()[1]) == ReportSubmitted.read(stored_v1()[1])


def test_an_event_is_never_read_as_an_older_version_or_another_type() -> None:
    _, envelope = stored_v1()
    newer = envelope.model_copy(update={"type": V2})
    with pytest.raises(
        InvalidEvent, match=re.escape(f"{V2} is not read as {ReportSubmitted.TYPE}")
    ):
        ReportSubmitted.read(newer, upcasters=registry())
    with pytest.raises(InvalidEvent, match=re.escape(f"is not read as {Viewed.TYPE}")):
        Viewed.read(envelope)


def test_an_upcaster_that_leaves_the_data_invalid_is_an_invalid_event() -> None:
    _, envelope = stored_v1()
    upcasters = Upcasters()
    upcasters.add(ReportSubmitted.TYPE, V2, lambda data: dict(data))  # forgets `language`
    with pytest.raises(
        InvalidEvent, match=re.escape(f"invalid data for {ReportSubmitted.TYPE}: units")
    ):
        ReportSubmittedV2.read(envelope, upcasters=upcasters)


@pytest.mark.parametrize(
    ("source", "target", "why"),
    [
        (ReportSubmitted.TYPE, V3, "goes from"),  # a step skips no version
        (V2, ReportSubmitted.TYPE, "goes from"),  # nor goes back
        (ReportSubmitted.TYPE, "incident.viewed.v2", "goes from"),  # nor changes name
        (ReportSubmitted.TYPE, V2, "already has"),  # one step per version
        ("incident.report.submitted", V2, "does not end in a version"),
    ],
)
def test_the_registry_refuses_a_step_that_is_not_vn_to_vn_plus_1(
    source: str, target: str, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        registry().add(source, target, to_v2)


def test_every_step_of_the_services_registry_leads_to_a_catalog_type() -> None:
    for source in UPCASTERS.sources():
        assert source in CATALOG and UPCASTERS.current(source) in CATALOG
    for name in CATALOG:  # a type past .v1 is reached from its previous version
        base, version = split_version(name)
        if version > 1:
            assert UPCASTERS.current(f"{base}.v{version - 1}") == name


class ViewedWithNote(Viewed):
    """Test-only: `incident.viewed.v1` after an optional field was added (same version)."""

    note: str | None = None


def test_an_optional_field_added_to_a_version_reads_old_events_and_old_readers_ignore_it() -> None:
    old = make_event(
        Viewed.TYPE,
        subject="inc-0001",
        data={"principal": "p-ma", "report_digest": DIGEST},
        source="/services/intake",
        time=NOW,
    )
    assert ViewedWithNote.read(old).note is None  # events written before the field
    newer = make_event(
        Viewed.TYPE,
        subject="inc-0001",
        data=Viewed(principal="p-ma", report_digest=DIGEST),
        source="/services/intake",
        time=NOW,
    ).model_copy(update={"data": {"principal": "p-ma", "report_digest": DIGEST, "note": "n"}})
    assert Viewed.read(parse_envelope(newer.to_bytes())) == Viewed(
        principal="p-ma", report_digest=DIGEST
    )  # a reader deployed before the field
