"""Delivering notices to people: one interface, adapters behind it.

`LogNotifier` (the default) writes one log line per notice, naming the principal,
level and incident, never the report content. Webhook and SMTP adapters plug in
behind the same `deliver` (planned with the rest of the escalation issue).
"""

from __future__ import annotations

import logging
from typing import Protocol

from services.domain.events import Notified

log = logging.getLogger("incidents.notify")


class Notifier(Protocol):
    """Delivers one notice; False when delivery failed for good (after its retries)."""

    async def deliver(self, incident_id: str, notice: Notified) -> bool: ...


class LogNotifier:
    """Delivery by log line: enough for development and for the record of who was told."""

    async def deliver(self, incident_id: str, notice: Notified) -> bool:
        log.info(
            "notify %s of incident %s (level %d, via %s)",
            notice.principal,
            incident_id,
            notice.level,
            notice.channel,
        )
        return True
