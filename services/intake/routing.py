"""Who each incident is routed to, learned from `incident.triage` and `incident.escalations`."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import ConsumerRecord

from services.infra.runtime import Runtime


def routing_handler(runtime: Runtime):  # type: ignore[no-untyped-def]
    """Placeholder: filled in by the handlers work of issue 3."""

    async def handle(records: Sequence[ConsumerRecord]) -> None:
        return None

    return handle
