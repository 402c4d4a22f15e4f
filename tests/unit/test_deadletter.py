"""Dead letters read back, selected and planned for a re-drive (services/domain/deadletter.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from services.domain.deadletter import DeadLetter, Selection, plan_redrive, read_dead_letter
from services.domain.events import InputRejected, Viewed, b64, make_event

NOW = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
TOPICS = ["p.incident.reports", "p.incident.activity", "p.directory.changes"]
DEAD = "p.incident.deadletter"


def viewed(incident: str = "inc-1") -> bytes:
    event = make_event(
        Viewed.TYPE,
        subject=incident,
        data={"principal": "p-chen", "report_digest": "sha256:" + "ab" * 32},
        source="/services/intake",
        time=NOW,
    )
    return event.to_bytes()


def letter(
    original: bytes,
    *,
    by: str = "triage",
    topic: str | None = "p.incident.activity",
    reason: str = "not authentic: unknown key",
    time: datetime = NOW,
) -> DeadLetter:
    event = make_event(
        InputRejected.TYPE,
        subject="deadletter",
        data=InputRejected(
            reason=reason,
            source_topic=topic,
            source_partition=0,
            source_offset=4,
            original_b64=b64(original),
        ),
        source=f"/services/{by}",
        time=time,
    )
    read = read_dead_letter(event.to_bytes())
    assert read is not None
    return read


def test_a_dead_letter_names_the_refusing_service_and_the_originals_identity() -> None:
    original = viewed()
    read = letter(original)
    assert read.rejected_by == "/services/triage"
    assert read.original == original
    assert (read.original_type, read.incident) == (Viewed.TYPE, "inc-1")
    assert read.original_id == json.loads(original)["id"]


def test_a_record_that_is_no_dead_letter_is_left_out() -> None:
    assert read_dead_letter(viewed()) is None
    assert read_dead_letter(b"{") is None
    assert read_dead_letter(None) is None


def test_a_withheld_or_unreadable_original_has_no_identity() -> None:
    assert letter(b"").original_event is None
    assert letter(b"not json").original_id is None


def test_a_selection_names_a_dead_letter_by_its_id_or_its_originals() -> None:
    read = letter(viewed())
    assert Selection(event_ids=frozenset({read.id})).matches(read)
    assert Selection(event_ids=frozenset({read.original_id or ""})).matches(read)
    assert not Selection(event_ids=frozenset({"other"})).matches(read)


def test_every_filter_given_must_pass() -> None:
    read = letter(viewed("inc-7"), reason="handler failed: KeyError", time=NOW)
    assert Selection(source_topics=frozenset({"p.incident.activity"})).matches(read)
    assert not Selection(source_topics=frozenset({"p.incident.reports"})).matches(read)
    assert Selection(reason_contains="keyerror").matches(read)
    assert Selection(since=NOW - timedelta(seconds=1)).matches(read)
    assert not Selection(since=NOW + timedelta(seconds=1)).matches(read)
    assert Selection(incident="inc-7").matches(read)
    assert not Selection(incident="inc-7", reason_contains="unknown key").matches(read)
    assert not Selection().filtered and Selection(incident="inc-7").filtered


def test_a_redrive_sends_each_original_once_per_topic_keyed_as_its_producer_did() -> None:
    original = viewed("inc-3")
    by_two = [letter(original, by="triage"), letter(original, by="escalation")]
    resends, skipped = plan_redrive(by_two, topics=TOPICS, deadletter_topic=DEAD)
    assert skipped == []
    [resend] = resends
    assert (resend.topic, resend.key, resend.value) == ("p.incident.activity", "inc-3", original)
    assert resend.letters == tuple(by_two)


def test_what_cannot_be_redriven_is_said_and_not_sent() -> None:
    cases = {
        "withheld": letter(b"", topic="p.incident.inbound"),
        "not an event of the catalog": letter(b'{"id": "x"}'),
        "does not say which topic": letter(viewed(), topic=None),
        "not a topic": letter(viewed(), topic="elsewhere.incident.activity"),
        "not a topic a re-drive": letter(viewed(), topic=DEAD),
    }
    resends, skipped = plan_redrive(list(cases.values()), topics=TOPICS, deadletter_topic=DEAD)
    assert resends == []
    for (expected, case), item in zip(cases.items(), skipped, strict=True):
        assert item.letter is case
        assert expected in item.why
