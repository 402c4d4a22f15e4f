"""Anonymous reporters: receipt and secret codes, request digests, failure budgets, and
the reporter's view of an incident. Pure: no I/O, no clock, no asyncio.

Codes (receipts and secrets) are written in Crockford's base32 alphabet
(`0-9 A-Z` without `I L O U`), in groups of five separated by hyphens:

- a receipt has 4 groups (20 symbols, 100 bits): `7K3QZ-M0XRT-4HB9C-PWD2E`;
- a secret has 6 groups (30 symbols, 150 bits).

Reading one back is forgiving, as Crockford intends for codes people type: case is
ignored, hyphens and spaces are ignored, `O` reads as `0`, and `I` and `L` read as `1`.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from services.domain.envelope import Envelope, canonical_json, utc_rfc3339
from services.domain.events import ReporterMessage, data_of
from services.domain.incident import IncidentState, apply
from services.domain.status import (
    FEEDBACK,
    REPORTER_ACKNOWLEDGEMENT,
    Progress,
    in_time_order,
    progress_of,
)

ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
GROUP_LENGTH: Final = 5
RECEIPT_GROUPS: Final = 4
SECRET_GROUPS: Final = 6
BITS_PER_SYMBOL: Final = 5
_READS_AS: Final = {"O": "0", "I": "1", "L": "1"}


def code_bits(groups: int) -> int:
    """Entropy of a random code of `groups` groups, in bits."""
    return groups * GROUP_LENGTH * BITS_PER_SYMBOL


def new_code(groups: int, randbelow: Callable[[int], int] = secrets.randbelow) -> str:
    """A random code of `groups` groups of five symbols (CSPRNG unless told otherwise)."""
    symbols = "".join(ALPHABET[randbelow(len(ALPHABET))] for _ in range(groups * GROUP_LENGTH))
    return "-".join(symbols[i : i + GROUP_LENGTH] for i in range(0, len(symbols), GROUP_LENGTH))


def normalize_code(text: str, groups: int) -> str | None:
    """The canonical form of a typed code, or None if it cannot be one."""
    if len(text) > 4 * groups * GROUP_LENGTH:  # never work on huge input
        return None
    symbols = "".join(ch for ch in text.upper() if ch not in "- ")
    symbols = "".join(_READS_AS.get(ch, ch) for ch in symbols)
    if len(symbols) != groups * GROUP_LENGTH or any(ch not in ALPHABET for ch in symbols):
        return None
    return "-".join(symbols[i : i + GROUP_LENGTH] for i in range(0, len(symbols), GROUP_LENGTH))


def new_receipt() -> str:
    """A fresh receipt (100 bits)."""
    return new_code(RECEIPT_GROUPS)


def new_secret() -> str:
    """A fresh secret (150 bits)."""
    return new_code(SECRET_GROUPS)


def normalize_receipt(text: str) -> str | None:
    """The canonical receipt a reporter typed, or None."""
    return normalize_code(text, RECEIPT_GROUPS)


def normalize_secret(text: str) -> str | None:
    """The canonical secret a reporter typed, or None."""
    return normalize_code(text, SECRET_GROUPS)


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


def request_digest(route: str, body: Mapping[str, Any]) -> str:
    """Digest of a request for Idempotency-Key: the route and the canonical JSON body.

    Two bodies that validate to the same report (key order, whitespace that is
    stripped, defaults spelled out or left out) give the same digest; the route is
    part of it, so one key cannot mean a report on two endpoints.
    """
    return "sha256:" + hashlib.sha256(canonical_json({"route": route, "body": body})).hexdigest()


def idempotency_key_digest(key: str) -> str:
    """What is stored of an Idempotency-Key: its digest, never the header value itself."""
    return "sha256:" + sha256_hex(key)


def retry_after_seconds(remaining: float) -> int:
    """A Retry-After value (whole seconds, at least 1) for `remaining` seconds."""
    return max(1, math.ceil(remaining))


@dataclass
class FailureBudget:
    """At most `limit` failures in any `window` seconds (a sliding window, in memory).

    Times are whatever monotonic clock the caller passes.
    """

    limit: int
    window: float
    _failures: deque[float] = field(default_factory=deque, repr=False)

    def _forget(self, now: float) -> None:
        while self._failures and self._failures[0] <= now - self.window:
            self._failures.popleft()

    def retry_after(self, now: float) -> int | None:
        """None while failures are allowed; else seconds until the next one is."""
        self._forget(now)
        if len(self._failures) < self.limit:
            return None
        return retry_after_seconds(self._failures[0] + self.window - now)

    def record(self, now: float) -> None:
        """Count one failure at `now`."""
        self._forget(now)
        self._failures.append(now)


@dataclass(frozen=True)
class MessageView:
    """A message between the reporter and the handlers, as the reporter sees it."""

    direction: str
    text: str
    sent_at: datetime


@dataclass(frozen=True)
class ReporterView:
    """What a reporter (anonymous or named) may see of their incident: never who handles
    it, never the handlers' comments."""

    incident_id: str
    status: str
    submitted_at: datetime | None
    acknowledged_at: datetime | None
    acknowledgement_due_at: datetime | None
    messages: tuple[MessageView, ...]
    progress: Progress = field(default_factory=Progress)
    feedback_due_at: datetime | None = None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None

    @property
    def outcome(self) -> str | None:
        """The outcome the handler recorded, once the incident is closed."""
        return self.progress.outcome if self.progress.status == "closed" else None

    def to_json(self) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return utc_rfc3339(moment) if moment is not None else None

        clocks = {c["clock"]: c for c in self.progress.reporter_clocks()}
        for name, due, met in (  # before triage's decision: the policy's spans
            (REPORTER_ACKNOWLEDGEMENT, self.acknowledgement_due_at, self.acknowledged_at),
            (FEEDBACK, self.feedback_due_at, self.progress.first_feedback_at),
        ):
            if due is not None and name not in clocks:
                clocks[name] = {
                    "clock": name,
                    "due_at": when(due),
                    "met_at": when(met),
                    "breached": False,
                }
        return {
            "incident_id": self.incident_id,
            "status": self.status,
            "status_label": self.progress.label,
            "level": self.progress.level,
            "stalled": self.progress.stalled,
            "outcome": self.outcome,
            "closed_at": when(self.progress.closed_at) if self.outcome is not None else None,
            "submitted_at": when(self.submitted_at),
            "acknowledged": self.acknowledged,
            "acknowledged_at": when(self.acknowledged_at),
            "acknowledgement_due_at": when(self.acknowledgement_due_at),
            "feedback_due_at": when(self.feedback_due_at),
            "clocks": [
                clocks[name] for name in (REPORTER_ACKNOWLEDGEMENT, FEEDBACK) if name in clocks
            ],
            "messages": [
                {"direction": m.direction, "text": m.text, "sent_at": utc_rfc3339(m.sent_at)}
                for m in self.messages
            ],
        }


def reporter_view(
    incident_id: str,
    events: Iterable[Envelope],
    *,
    acknowledgement_within: int | None,
    kept: Iterable[Envelope] = (),
    feedback_within: Callable[[str | None], int | None] = lambda category: None,
) -> ReporterView:
    """The reporter's view of an incident from its events, in order.

    The acknowledgement deadline is triage's `reporter_acknowledgement` deadline when
    a triage decision in the stream carries one, else the submission time plus
    `acknowledgement_within` seconds (the policy's `reporter_acknowledgement_within`),
    else unknown; the feedback deadline likewise (`feedback_within` of the category's
    severity). `kept` are the triage and escalation events intake keeps: the status,
    level and clocks are `services.domain.status` over both, as every view shows them.
    Handler identities and internal comments are never part of it.
    """
    events = list(events)
    state = IncidentState(incident_id=incident_id)
    messages: list[MessageView] = []
    for event in events:
        state = apply(state, event)
        data = data_of(event)
        if isinstance(data, ReporterMessage):
            messages.append(MessageView(data.direction, data.text, event.time))
    progress = progress_of(in_time_order(events, kept))
    due = progress.reporter_acknowledgement_due
    feedback_due = progress.feedback_due
    if state.submitted_at is not None:
        if due is None and acknowledgement_within is not None:
            due = state.submitted_at + timedelta(seconds=acknowledgement_within)
        within = feedback_within(state.category)
        if feedback_due is None and within is not None:
            feedback_due = state.submitted_at + timedelta(seconds=within)
    return ReporterView(
        incident_id=incident_id,
        status=progress.status,
        submitted_at=state.submitted_at,
        acknowledged_at=state.acknowledged_at,
        acknowledgement_due_at=due,
        messages=tuple(messages),
        progress=progress,
        feedback_due_at=feedback_due,
    )
