"""What the auditor's timeline says about each event, without any report content.

Only fields named here are shown, type by type: who, which level, which status, which
digest, which deadline. Summaries, descriptions, addenda, comments, messages and
outcomes are never read (they may be ciphertext, and an auditor reads content, if at
all, through the service functions that decide who may). Unknown types show nothing
but their type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from services.domain.events import (
    AccessDenied,
    Acknowledged,
    Assigned,
    Commented,
    DeadlineBreached,
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

SHOWN: Mapping[str, Fields] = {
    ReportSubmitted.TYPE: (
        ("category", "category"),
        ("channel", "channel"),
        ("report_digest", "digest"),
    ),
    ReportAmended.TYPE: (("report_digest", "digest"),),
    Triaged.TYPE: (
        ("severity", "severity"),
        ("policy_version", "policy"),
        ("report_digest", "digest"),
    ),
    Assigned.TYPE: (("level", "level"), ("principals", "to")),
    Reassigned.TYPE: (("added", "added"),),
    Notified.TYPE: (
        ("principal", "who"),
        ("level", "level"),
        ("channel", "channel"),
        ("report_digest", "digest"),
    ),
    Viewed.TYPE: (("principal", "who"), ("report_digest", "digest")),
    Acknowledged.TYPE: (("principal", "who"), ("level", "level")),
    Commented.TYPE: (("principal", "who"),),
    StatusChanged.TYPE: (("principal", "who"), ("status", "status")),
    AccessDenied.TYPE: (
        ("principal", "who"),
        ("action", "action"),
        ("reason", "reason"),
    ),
    Escalated.TYPE: (
        ("level", "level"),
        ("recipients", "to"),
        ("reason", "reason"),
        ("deadline", "deadline"),
    ),
    EscalationCleared.TYPE: (("level", "level"), ("principal", "by")),
    ReminderDue.TYPE: (("clock", "clock"), ("due_at", "due")),
    DeadlineBreached.TYPE: (("clock", "clock"), ("due_at", "due")),
    NoticeDelivered.TYPE: (
        ("principal", "who"),
        ("level", "level"),
        ("channel", "channel"),
        ("adapter", "by"),
        ("attempts", "attempts"),
    ),
    NoticeFailed.TYPE: (
        ("principal", "who"),
        ("level", "level"),
        ("channel", "channel"),
        ("reason", "reason"),
        ("detail", "detail"),
        ("attempts", "attempts"),
    ),
    ReporterMessage.TYPE: (("direction", "direction"),),
}

NOTES: Mapping[str, str] = {
    ReportSubmitted.TYPE: "report content not shown",
    ReportAmended.TYPE: "amendment content not shown",
    Commented.TYPE: "comment text not shown",
    ReporterMessage.TYPE: "message text not shown",
}


def _excluded(data: Mapping[str, Any]) -> str | None:
    excluded = data.get("excluded")
    if not isinstance(excluded, list) or not excluded:
        return None
    return ", ".join(
        f"{x.get('principal')} ({x.get('rule')})" for x in excluded if isinstance(x, dict)
    )


def _removed(data: Mapping[str, Any]) -> str | None:
    removed = data.get("removed")
    if not isinstance(removed, list) or not removed:
        return None
    return ", ".join(
        f"{x.get('principal')} ({x.get('rule')})" for x in removed if isinstance(x, dict)
    )


EXTRA: Mapping[str, tuple[str, Callable[[Mapping[str, Any]], str | None]]] = {
    Triaged.TYPE: ("excluded", _excluded),
    Reassigned.TYPE: ("removed", _removed),
}


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
        label, extra = EXTRA[event_type]
        value = extra(data)
        if value:
            shown.append((label, value))
    if event_type == StatusChanged.TYPE and data.get("outcome"):
        shown.append(("outcome", "recorded, not shown"))
    if event_type in NOTES:
        shown.append(("", NOTES[event_type]))
    return shown
