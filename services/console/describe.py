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

Fields = tuple[tuple[str, str], ...]
"""(data key, label) pairs shown for a type, in order."""

SHOWN: Mapping[str, Fields] = {
    "incident.report.submitted.v1": (
        ("category", "category"),
        ("channel", "channel"),
        ("report_digest", "digest"),
    ),
    "incident.report.amended.v1": (("report_digest", "digest"),),
    "incident.triaged.v1": (
        ("severity", "severity"),
        ("policy_version", "policy"),
        ("report_digest", "digest"),
    ),
    "incident.assigned.v1": (("level", "level"), ("principals", "to")),
    "incident.reassigned.v1": (("added", "added"),),
    "incident.notified.v1": (
        ("principal", "who"),
        ("level", "level"),
        ("channel", "channel"),
        ("report_digest", "digest"),
    ),
    "incident.viewed.v1": (("principal", "who"), ("report_digest", "digest")),
    "incident.acknowledged.v1": (("principal", "who"), ("level", "level")),
    "incident.commented.v1": (("principal", "who"),),
    "incident.status.changed.v1": (("principal", "who"), ("status", "status")),
    "incident.access.denied.v1": (
        ("principal", "who"),
        ("action", "action"),
        ("reason", "reason"),
    ),
    "incident.escalated.v1": (
        ("level", "level"),
        ("recipients", "to"),
        ("reason", "reason"),
        ("deadline", "deadline"),
    ),
    "incident.escalation.cleared.v1": (("level", "level"), ("principal", "by")),
    "incident.reminder.due.v1": (("clock", "clock"), ("due_at", "due")),
    "incident.deadline.breached.v1": (("clock", "clock"), ("due_at", "due")),
    "incident.notice.delivered.v1": (
        ("principal", "who"),
        ("level", "level"),
        ("channel", "channel"),
        ("adapter", "by"),
        ("attempts", "attempts"),
    ),
    "incident.notice.failed.v1": (
        ("principal", "who"),
        ("level", "level"),
        ("channel", "channel"),
        ("reason", "reason"),
        ("detail", "detail"),
        ("attempts", "attempts"),
    ),
    "incident.reporter.message.v1": (("direction", "direction"),),
}

NOTES: Mapping[str, str] = {
    "incident.report.submitted.v1": "report content not shown",
    "incident.report.amended.v1": "amendment content not shown",
    "incident.commented.v1": "comment text not shown",
    "incident.reporter.message.v1": "message text not shown",
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
    "incident.triaged.v1": ("excluded", _excluded),
    "incident.reassigned.v1": ("removed", _removed),
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
    if event_type == "incident.status.changed.v1" and data.get("outcome"):
        shown.append(("outcome", "recorded, not shown"))
    if event_type in NOTES:
        shown.append(("", NOTES[event_type]))
    return shown
