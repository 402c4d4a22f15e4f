"""The console's pure parts: the who-knew chart layout, content-free event descriptions,
the login redirect guard, and the console index's stored state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.audit.ui_index import state_from_row, state_to_row
from services.console.chart import GUTTER, WIDTH, axis_span, layout, time_lines
from services.console.describe import describe
from services.console.web import query_string, safe_next
from services.domain.events import make_event
from services.domain.incident import apply, fold
from services.domain.knowledge import LedgerEvent, knowledge_as_of

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
INCIDENT = "inc-1"


def entry(index: int, seconds: float, kind: str, data: dict[str, Any], actor: str) -> LedgerEvent:
    at = T0 + timedelta(seconds=seconds)
    envelope = make_event(kind, subject=INCIDENT, data=data, source="/t", time=at, actor=actor)
    return LedgerEvent(index, at, envelope)


def seed_case() -> list[LedgerEvent]:
    """Reported, p-chen told at level 1, missed; p-zhou escalated to, views, acknowledges."""
    return [
        entry(
            0,
            0,
            "incident.report.submitted.v1",
            {
                "category": "sexual_misconduct",
                "summary": "SECRET summary",
                "description": "SECRET description",
                "accused": ["p-wang"],
                "report_digest": DIGEST,
            },
            "reporter:anonymous",
        ),
        entry(
            1,
            1,
            "incident.triaged.v1",
            {
                "category": "sexual_misconduct",
                "severity": "critical",
                "policy_version": "v",
                "chain": [
                    {
                        "level": 1,
                        "role": "hr_case_handler",
                        "recipients": ["p-chen"],
                        "acknowledge_within": 60,
                    }
                ],
                "excluded": [{"principal": "p-wang", "rule": "accused"}],
                "deadlines": {
                    "level_1_acknowledge": (T0 + timedelta(seconds=61)).isoformat(),
                    "feedback": (T0 + timedelta(days=90)).isoformat(),
                },
            },
            "system:triage",
        ),
        entry(
            2,
            1,
            "incident.notified.v1",
            {"principal": "p-chen", "channel": "log", "level": 1, "report_digest": DIGEST},
            "system:triage",
        ),
        entry(
            3,
            62,
            "incident.escalated.v1",
            {
                "level": 2,
                "recipients": ["p-zhou"],
                "reason": "not_acknowledged",
                "deadline": (T0 + timedelta(seconds=61)).isoformat(),
            },
            "system:escalation",
        ),
        entry(
            4,
            70,
            "incident.viewed.v1",
            {"principal": "p-zhou", "report_digest": DIGEST},
            "p-zhou",
        ),
        entry(
            5,
            71,
            "incident.viewed.v1",
            {"principal": "p-zhou", "report_digest": DIGEST},
            "p-zhou",
        ),
        entry(
            6,
            80,
            "incident.acknowledged.v1",
            {"principal": "p-zhou", "level": 2},
            "p-zhou",
        ),
        entry(
            7,
            90,
            "incident.commented.v1",
            {"principal": "p-zhou", "text": "SECRET comment"},
            "p-zhou",
        ),
    ]


def test_a_row_per_principal_from_first_known_to_the_as_of_instant() -> None:
    entries = seed_case()
    start, end = axis_span(entries)
    as_of = T0 + timedelta(seconds=75)
    knowledge = knowledge_as_of(INCIDENT, entries, as_of)
    chart = layout(knowledge, time_lines(entries, as_of), start, end)
    assert [r.principal for r in chart.rows] == ["reporter", "p-chen", "p-zhou"]
    zhou = chart.rows[2]
    assert zhou.x0 < zhou.x1 == chart.cursor_x
    assert [m.via for m in zhou.marks] == ["escalated", "viewed", "viewed"]
    assert zhou.acknowledged_at is None  # the acknowledgement came after the as-of instant
    assert GUTTER <= chart.rows[0].x0 < zhou.x0 <= chart.cursor_x <= WIDTH
    assert chart.rows[0].y < chart.rows[1].y < chart.rows[2].y


def test_the_axis_stays_put_while_the_as_of_instant_moves() -> None:
    entries = seed_case()
    start, end = axis_span(entries)
    early = layout(knowledge_as_of(INCIDENT, entries, T0), [], start, end)
    late = layout(knowledge_as_of(INCIDENT, entries, T0 + timedelta(hours=1)), [], start, end)
    assert [t.x for t in early.ticks] == [t.x for t in late.ticks]
    assert [r.principal for r in early.rows] == ["reporter"]
    assert late.cursor_x == late.right  # clamped to the end of the axis
    assert late.rows[2].acknowledged_at == T0 + timedelta(seconds=80)


def test_deadlines_and_breaches_known_at_the_instant_become_lines() -> None:
    entries = seed_case()
    start, end = axis_span(entries)
    before = time_lines(entries, T0 + timedelta(seconds=30))
    assert [(t.kind, t.label) for t in before] == [
        ("deadline", "level 1 acknowledge"),
        ("deadline", "feedback"),
    ]
    after = time_lines(entries, T0 + timedelta(seconds=65))
    missed = [t for t in after if t.kind == "breach"]
    assert [t.label for t in missed] == ["deadline missed: escalated to level 2"]
    chart = layout(
        knowledge_as_of(INCIDENT, entries, T0 + timedelta(seconds=65)), after, start, end
    )
    assert {line.label for line in chart.lines} == {
        "level 1 acknowledge",
        "deadline missed: escalated to level 2",
    }
    assert [t.label for t in chart.off_axis] == ["feedback"]  # 90 days away: listed, not drawn


def test_thousands_of_views_collapse_to_one_mark_per_pixel() -> None:
    entries = seed_case()[:3]
    for i in range(2000):
        entries.append(
            entry(
                3 + i,
                2 + i * 0.0001,  # 2,000 views within 0.2 s: some 30 pixels
                "incident.viewed.v1",
                {"principal": "p-chen", "report_digest": DIGEST},
                "p-chen",
            )
        )
    start, end = axis_span(entries)
    chart = layout(knowledge_as_of(INCIDENT, entries, end), [], start, end)
    chen = next(r for r in chart.rows if r.principal == "p-chen")
    views = [m for m in chen.marks if m.via == "viewed"]
    spread = views[-1].x - views[0].x  # the pixels those 2,000 views cover
    assert 2 <= len(views) <= spread + 2 < 2000


def test_an_incident_without_entries_has_no_axis() -> None:
    with pytest.raises(ValueError):
        axis_span([])


def test_the_timeline_never_shows_report_content() -> None:
    shown = " ".join(
        f"{label} {value}"
        for e in seed_case()
        for label, value in describe(e.envelope.type, e.envelope.data)
    )
    assert "SECRET" not in shown
    assert "report content not shown" in shown
    assert "comment text not shown" in shown
    assert "p-wang (accused)" in shown
    assert "not_acknowledged" in shown


def test_messages_amendments_and_outcomes_stay_hidden() -> None:
    message = describe(
        "incident.reporter.message.v1",
        {"direction": "from_reporter", "author": "reporter", "text": "SECRET"},
    )
    assert message == [("direction", "from_reporter"), ("", "message text not shown")]
    closed = describe(
        "incident.status.changed.v1",
        {"principal": "p-sun", "status": "closed", "outcome": "SECRET outcome"},
    )
    assert ("outcome", "recorded, not shown") in closed
    assert "SECRET" not in str(closed)
    amended = describe(
        "incident.report.amended.v1", {"addendum": "SECRET", "report_digest": DIGEST}
    )
    assert "SECRET" not in str(amended)
    assert describe("something.else.v1", {"text": "SECRET"}) == []


@pytest.mark.parametrize(
    "target",
    [
        None,
        "",
        "/",
        "//evil.example/ui/",
        "https://evil.example/ui/",
        "/ui\\..",
        "/uix",
        "/ui/\r\nX",
    ],
)
def test_login_only_returns_to_console_paths(target: str | None) -> None:
    assert safe_next(target, "/ui/") == "/ui/"


def test_login_returns_to_the_page_asked_for() -> None:
    assert safe_next("/ui/incidents/abc?as_of=x", "/ui/") == "/ui/incidents/abc?as_of=x"


def test_query_strings_keep_only_what_is_set() -> None:
    assert query_string({"category": "fraud", "status": None, "overdue": "", "before": 7}) == (
        "?category=fraud&before=7"
    )
    assert query_string({"a": None}) == ""
    assert query_string({"q": "a&b"}) == "?q=a%26b"


def test_the_index_stores_a_state_it_can_fold_on_from() -> None:
    envelopes = [e.envelope for e in seed_case()]
    whole = fold(INCIDENT, envelopes)
    half = state_from_row(state_to_row(fold(INCIDENT, envelopes[:4])))
    for envelope in envelopes[4:]:
        half = apply(half, envelope)
    assert state_to_row(half) == state_to_row(whole)
    assert half.acknowledged_by == "p-zhou"


def test_an_as_of_offset_past_any_date_is_refused_not_a_crash() -> None:
    from datetime import UTC, datetime

    from services.audit.ui import MAX_T, instant
    from services.console.web import ConsoleError

    start = datetime(2026, 11, 25, tzinfo=UTC)
    assert instant(None, MAX_T, start).year == 2126
    with pytest.raises(ConsoleError) as refused:
        instant(None, 1_000_000_000_000_000, start)
    assert refused.value.status == 422


def test_the_incident_page_shows_each_notice_and_a_failed_one_is_not_proof() -> None:
    """Issue 22: the as-of part lists every notice with its outcome, marks the chart with
    it, and says that p-chen, whose only notice failed, is not proven to have known."""
    from services.audit.ui import as_of_view
    from services.console.web import fragment

    story = seed_case()
    notice = story[2].envelope
    failed = {
        "notice_id": notice.id,
        "principal": "p-chen",
        "level": 1,
        "channel": "triage",
        "adapter": "webhook",
        "attempts": 1,
        "reason": "refused",
        "detail": "HTTP 400",
    }
    entries = [*story, entry(8, 2, "incident.notice.failed.v1", failed, "system:escalation")]
    view = as_of_view(INCIDENT, entries, T0 + timedelta(seconds=100))
    chen = view["knowledge"].get("p-chen")
    assert chen.knew_at is None and "failed" in [m.via for m in view["chart"].rows[1].marks]

    html = fragment("audit_asof.html", **view)

    assert 'id="deliveries-h"' in html and "HTTP 400" in html and "not proven" in html
    assert 'class="mark m-failed"' in html
