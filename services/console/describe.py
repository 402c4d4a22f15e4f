"""What the auditor's timeline says about each event, without any report content.

Only fields named here are shown, type by type: who, which level, which status, which
digest, which deadline. Summaries, descriptions, addenda, comments, messages and
outcomes are never read (they may be ciphertext, and an auditor reads content, if at
all, through the service functions that decide who may). Unknown types show nothing
but their type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.domain.events import (
    AccessDenied,
    Acknowledged,
    Assigned,
    Commented,
    DeadlineBreached,
    DecisionOverdue,
    Escalated,
    EscalationCleared,
    NoticeDelivered,
    NoticeFailed,
    Notified,
    Reassigned,
    ReminderDue,
    ReportAmended,
    ReporterMessage,
    ReportSubmitted,
    StatusChanged,
    Triaged,
    Viewed,
)

Fields = tuple[tuple[str, str], ...]
"""(data key, label) pairs shown for a type, in order."""

LABELS: Mapping[str, str] = {
    "principal": "who",
    "principals": "to",
    "recipients": "to",
    "report_digest": "digest",
    "policy_version": "policy",
    "adapter": "by",
    "due_at": "due",
    "submitted_at": "submitted",
}
"""A data key's label wherever it is not the key itself."""

KEYS: Mapping[str, tuple[str, ...]] = {
    ReportSubmitted.TYPE: ("category", "channel", "report_digest"),
    ReportAmended.TYPE: ("report_digest",),
    Triaged.TYPE: ("severity", "policy_version", "report_digest"),
    Assigned.TYPE: ("level", "principals"),
    Reassigned.TYPE: ("added",),
    Notified.TYPE: ("principal", "level", "channel", "report_digest"),
    Viewed.TYPE: ("principal", "report_digest"),
    Acknowledged.TYPE: ("principal", "level"),
    Commented.TYPE: ("principal",),
    StatusChanged.TYPE: ("principal", "status"),
    AccessDenied.TYPE: ("principal", "action", "reason"),
    Escalated.TYPE: ("level", "recipients", "reason", "deadline"),
    ReminderDue.TYPE: ("clock", "due_at"),
    DeadlineBreached.TYPE: ("clock", "due_at"),
    DecisionOverdue.TYPE: ("submitted_at", "due_at"),
    NoticeDelivered.TYPE: ("principal", "level", "channel", "adapter", "attempts"),
    NoticeFailed.TYPE: ("principal", "level", "channel", "reason", "detail", "attempts"),
    ReporterMessage.TYPE: ("direction",),
}
"""The data keys shown for a type, in order."""

SHOWN: Mapping[str, Fields] = {
    **{t: tuple((key, LABELS.get(key, key)) for key in keys) for t, keys in KEYS.items()},
    EscalationCleared.TYPE: (("level", "level"), ("principal", "by")),  # cleared by, not who
}

NOTES: Mapping[str, str] = {
    ReportSubmitted.TYPE: "report content not shown",
    ReportAmended.TYPE: "amendment content not shown",
    Commented.TYPE: "comment text not shown",
    ReporterMessage.TYPE: "message text not shown",
    DecisionOverdue.TYPE: "no triage decision in time: operations alerted, nobody told",
}


EXTRA: Mapping[str, str] = {Triaged.TYPE: "excluded", Reassigned.TYPE: "removed"}
"""The key of the people a type lists with the rule that applies to each."""


def _people_rules(people: Any) -> str | None:
    if not isinstance(people, list) or not people:
        return None
    return ", ".join(
        f"{x.get('principal')} ({x.get('rule')})" for x in people if isinstance(x, dict)
    )


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "nobody"
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:19] + "…"  # the digest's start is enough to tell versions apart
    return str(value)


def describe(event_type: str, data: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(label, value) pairs safe to show an auditor for one event."""
    data = data or {}
    shown = [
        (label, _text(data[key]))
        for key, label in SHOWN.get(event_type, ())
        if data.get(key) not in (None, "")
    ]
    if event_type in EXTRA:
        key = EXTRA[event_type]
        value = _people_rules(data.get(key))
        if value:
            shown.append((key, value))
    if event_type == StatusChanged.TYPE and data.get("outcome"):
        shown.append(("outcome", "recorded, not shown"))
    if event_type in NOTES:
        shown.append(("", NOTES[event_type]))
    return shown
