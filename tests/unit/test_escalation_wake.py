"""The deadline scheduler's NOTIFY filter: a saved wake-up (migration 0008's payload,
Unix seconds) wakes the scheduler only when it is earlier than the one it sleeps until."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from services.escalation.handlers import Escalation

PLANNED = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def scheduler(planned: datetime | None) -> Escalation:
    """An Escalation with only what `_notified` reads (no runtime behind it)."""
    escalation = Escalation.__new__(Escalation)
    escalation._wake = asyncio.Event()
    escalation._planned = planned
    return escalation


@pytest.mark.parametrize(("offset", "woken"), [(60.0, False), (0.0, False), (-0.5, True)])
def test_a_notify_wakes_the_scheduler_only_for_an_earlier_wakeup(
    offset: float, woken: bool
) -> None:
    escalation = scheduler(PLANNED)
    escalation._notified(f"{PLANNED.timestamp() + offset:.6f}")
    assert escalation._wake.is_set() is woken


@pytest.mark.parametrize(
    ("planned", "payload"),
    [(None, f"{PLANNED.timestamp() + 3600:.6f}"), (PLANNED, ""), (PLANNED, "soon")],
)
def test_any_notify_wakes_it_while_it_knows_no_wakeup_or_cannot_read_one(
    planned: datetime | None, payload: str
) -> None:
    escalation = scheduler(planned)
    escalation._notified(payload)
    assert escalation._wake.is_set()
