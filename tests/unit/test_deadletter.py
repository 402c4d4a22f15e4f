"""Dead letters read back, selected and planned for a re-drive (services/domain/deadletter.py)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

import services.deadletter_cli as cli
from services.domain.deadletter import (
    DIRECTORY_NOT_REDRIVEN,
    DeadLetter,
    Selection,
    plan_redrive,
    read_dead_letter,
)
from services.domain.events import (
    InputRejected,
    LegalHoldPlaced,
    LegalHoldReleased,
    PeopleConfirmed,
    PeopleImported,
    PersonUpserted,
    ReassignmentOrdered,
    Recused,
    ReportAmended,
    RoleRevoked,
    StatusChanged,
    Viewed,
    b64,
    make_event,
)
from services.domain.reports import UnknownCategory
from services.intake.usecases import refusal_reason

NOW = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
PREFIX = "p."
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
    resends, skipped = plan_redrive(by_two, prefix=PREFIX)
    assert skipped == []
    [resend] = resends
    assert (resend.topic, resend.key, resend.value) == ("p.incident.activity", "inc-3", original)
    assert resend.letters == tuple(by_two)


def test_what_cannot_be_redriven_is_said_and_not_sent() -> None:
    cases = {
        "withheld": letter(b"", topic="p.incident.inbound"),
        "not an event of the catalog": letter(b'{"id": "x"}'),
        "does not say which topic": letter(viewed(), topic=None),
        "belongs on p.incident.activity only": letter(viewed(), topic="q.incident.activity"),
        "read on p.incident.deadletter, but": letter(viewed(), topic=DEAD),
        "itself a dead letter": letter(letter(viewed()).original and _dead_letter_bytes()),
    }
    resends, skipped = plan_redrive(list(cases.values()), prefix=PREFIX)
    assert resends == []
    for (expected, case), item in zip(cases.items(), skipped, strict=True):
        assert item.letter is case
        assert expected in item.why


def _dead_letter_bytes() -> bytes:
    return make_event(
        InputRejected.TYPE,
        subject="deadletter",
        data=InputRejected(reason="x", source_topic="p.incident.reports", original_b64=""),
        source="/services/triage",
        time=NOW,
    ).to_bytes()


def event(
    type_: str, data: dict[str, Any], *, subject: str = "inc-1", time: datetime = NOW
) -> bytes:
    return make_event(
        type_, subject=subject, data=data, source="/services/intake", time=time
    ).to_bytes()


# Review 2, D1: a directory change re-driven after a later one was folded over it.

DIRECTORY_EVENTS = {
    PersonUpserted.TYPE: {"person_id": "p-wang", "manager_id": "p-li", "unit": "city-retail"},
    PeopleImported.TYPE: {"people": [{"person_id": "p-wang", "manager_id": "p-li"}]},
    RoleRevoked.TYPE: {"person_id": "p-wang", "role": "hr_head"},
}


@pytest.mark.parametrize("type_", DIRECTORY_EVENTS)
def test_a_directory_change_is_never_redriven_the_current_record_is_republished(type_: str) -> None:
    original = event(type_, DIRECTORY_EVENTS[type_], subject="p-wang")
    dead = letter(original, topic="p.directory.changes")
    resends, skipped = plan_redrive([dead], prefix=PREFIX)
    assert resends == []
    assert [item.why for item in skipped] == [DIRECTORY_NOT_REDRIVEN]
    assert DIRECTORY_NOT_REDRIVEN == (
        "a directory change is not re-driven: it could undo a later one; publish the"
        " current records instead: incidents directory republish --person ID (or --all)"
    )


ORDER_SENSITIVE = {
    "confirm them again": (
        PeopleConfirmed.TYPE,
        {"principal": "p-ind", "accused": ["p-wang"]},
        "p.incident.reports",
    ),
    "order the reassignment again": (
        ReassignmentOrdered.TYPE,
        {"principal": "p-hr", "to": ["p-chen"], "remove": ["p-li"], "reason": "enc:v1:AA"},
        "p.incident.activity",
    ),
    "place or release the hold again": (
        LegalHoldReleased.TYPE,
        {"principal": "p-aud", "reason": "enc:v1:AA"},
        "p.incident.activity",
    ),
    "set the status again": (
        StatusChanged.TYPE,
        {"principal": "p-chen", "status": "investigating"},
        "p.incident.activity",
    ),
}


@pytest.mark.parametrize("why", ORDER_SENSITIVE)
def test_an_event_whose_latest_counts_is_not_redriven_it_is_made_again(why: str) -> None:
    type_, data, topic = ORDER_SENSITIVE[why]
    resends, skipped = plan_redrive([letter(event(type_, data), topic=topic)], prefix=PREFIX)
    assert resends == []
    [item] = skipped
    assert "could undo" in item.why and why in item.why


def test_what_only_adds_is_redriven_and_a_close_which_is_final() -> None:
    digest = "sha256:" + "ab" * 32
    originals = [
        (Recused.TYPE, {"principal": "p-li"}, "p.incident.activity"),
        (
            ReportAmended.TYPE,
            {"accused_added": ["p-li"], "report_digest": digest},
            "p.incident.reports",
        ),
        (
            StatusChanged.TYPE,
            {"principal": "p-chen", "status": "closed", "outcome": "enc:v1:AA"},
            "p.incident.activity",
        ),
        (
            LegalHoldPlaced.TYPE,
            {"principal": "p-aud", "reason": "enc:v1:AA"},
            "p.incident.activity",
        ),
    ]
    letters = [letter(event(t, d), topic=topic) for t, d, topic in originals]
    resends, skipped = plan_redrive(letters, prefix=PREFIX)
    assert [r.event.type for r in resends] == [t for t, _, _ in originals[:3]]
    assert [s.letter.original_type for s in skipped] == [LegalHoldPlaced.TYPE]


def test_an_incidents_originals_are_redriven_in_the_order_they_were_made() -> None:
    digest = "sha256:" + "ab" * 32
    first, second = (
        letter(
            event(
                ReportAmended.TYPE,
                {"named_added": [n], "report_digest": digest},
                time=NOW + timedelta(minutes=m),
            ),
            topic="p.incident.reports",
            time=NOW + timedelta(hours=3 - m),  # the later amendment was dead-lettered first
        )
        for n, m in (("p-a", 1), ("p-b", 2))
    )
    resends, _ = plan_redrive([second, first], prefix=PREFIX)
    assert [r.letters for r in resends] == [(first,), (second,)]


# Review 2, L4: the topic a re-drive sends to is the original type's, never the dead letter's.


def test_a_dead_letter_naming_another_topic_than_its_originals_type_is_refused() -> None:
    # incident.reports is a topic of the deployment, but a view is never published there
    dead = letter(viewed(), topic="p.incident.reports")
    resends, skipped = plan_redrive([dead], prefix=PREFIX)
    assert resends == []
    [item] = skipped
    assert item.why == (
        "the dead letter says the original was read on p.incident.reports, but a"
        " incident.viewed.v1 belongs on p.incident.activity only: not re-driven"
    )
    [resend], _ = plan_redrive([letter(viewed())], prefix=PREFIX)
    assert resend.topic == "p.incident.activity"


def test_a_dead_letter_whose_own_signature_fails_is_not_redriven() -> None:
    value = read_dead_letter(b"")
    assert value is None
    original = viewed()
    good = letter(original)
    forged = DeadLetter(**{**good.__dict__, "signature": "not authentic: unknown key"})
    checked = DeadLetter(**{**good.__dict__, "signature": "authentic"})
    resends, skipped = plan_redrive([forged], prefix=PREFIX)
    assert resends == [] and "the dead letter itself is not authentic" in skipped[0].why
    assert plan_redrive([checked], prefix=PREFIX)[0] and plan_redrive([good], prefix=PREFIX)[0]


# Review 2, D6: a dead letter's text is printed as text, never as markup or terminal codes.

HOSTILE = [
    "[/]",
    "[red]hidden[/red]",
    "\x1b[2J\x1b[H",
    "[link=https://x.example]y[/link]",
    "a\u202eb",
]


def _run(
    monkeypatch: pytest.MonkeyPatch, letters: list[DeadLetter], *args: str
) -> tuple[Any, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=stdout, width=400, highlight=False))
    monkeypatch.setattr(cli, "err", Console(file=stderr, width=400, highlight=False))
    monkeypatch.setattr(cli, "_letters", lambda *a, **k: letters)
    monkeypatch.setattr(cli, "_settings", lambda: type("S", (), {"kafka_topic_prefix": PREFIX})())
    result = CliRunner().invoke(cli.deadletter_app, list(args))
    return result, stdout.getvalue(), stderr.getvalue()


def test_list_prints_markup_and_control_characters_of_a_reason_as_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reasons = [refusal_reason(UnknownCategory(x, ["fraud"])) for x in HOSTILE]
    letters = [letter(viewed(), reason=r) for r in reasons]
    result, out, _ = _run(monkeypatch, letters, "list")
    assert result.exception is None and result.exit_code == 0, result.exception
    assert "\x1b" not in out and "\u202e" not in out
    flat = " ".join(out.split())
    for shown in (
        "'[/]'",
        "'[red]hidden[/red]'",
        "'\\x1b[2J\\x1b[H'",
        "[link=https://x.example]y[/link]",
        "a\\u202eb",
    ):
        assert shown in flat, shown
    assert "not checked" in out and "believe it only when its signature is" in flat


def test_redrive_prints_what_a_dead_letter_names_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = letter(viewed("[red]inc[/]\x1b[2J"), topic="[/]\x1b]0;title\x07")
    sendable = letter(viewed("[bold]inc-2[/bold]\x1b[31m"))
    result, out, err = _run(
        monkeypatch, [hostile, sendable], "redrive", "--event-id", "x", "--dry-run"
    )
    assert result.exception is not None and result.exit_code == 1  # one was not re-driven
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "read on [/]\\x1b]0;title\\x07, but" in " ".join(err.split())
    assert "[bold]inc-2[/bold]\\x1b[31m" in out


def test_list_json_escapes_control_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    result, out, _ = _run(monkeypatch, [letter(viewed(), reason="\x1b[2J[/]")], "list", "--json")
    assert result.exit_code == 0 and "\x1b" not in out
    assert json.loads(result.stdout)["reason"] == "\x1b[2J[/]"
