"""Wiring of the escalation service: settings -> runtime -> agents, scheduler -> HTTP shell."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI

from services.domain.events import Topic
from services.escalation.addresses import Addresses
from services.escalation.handlers import Escalation, system_clock
from services.escalation.notify import Adapter, AddressLookup, build_notifier
from services.infra.runtime import Runtime
from services.infra.settings import EscalationSettings
from services.infra.streamapp import create_stream_app

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def create_app(settings: EscalationSettings | None = None) -> FastAPI:
    """The escalation app: durable deadlines, escalation chains, notices."""
    settings = settings or EscalationSettings()
    runtime = Runtime(settings, "escalation", MIGRATIONS)
    addresses = Addresses(runtime)
    notifier = select_notifier(settings, addresses.lookup)
    escalation = Escalation(runtime, notifier, system_clock)
    runtime.background("notifier", _close_when_stopped(notifier))
    runtime.background("deadline-scheduler", escalation.run_scheduler)
    runtime.background("notice-delivery", escalation.run_deliveries)
    app = create_stream_app(
        settings,
        "escalation",
        MIGRATIONS,
        [
            ("escalation-triage", [settings.topic(Topic.TRIAGE)], escalation.on_triage),
            ("escalation-activity", [settings.topic(Topic.ACTIVITY)], escalation.on_activity),
            ("escalation-reports", [settings.topic(Topic.REPORTS)], escalation.on_report),
            ("escalation-directory", [settings.topic(Topic.DIRECTORY)], addresses.on_directory),
        ],
        runtime=runtime,
    )
    app.state.escalation = escalation
    app.state.addresses = addresses
    return app


def select_notifier(settings: EscalationSettings, addresses: AddressLookup) -> Adapter:
    """The delivery adapter of `INCIDENTS_NOTIFY_ADAPTER` (log by default).

    The smtp adapter looks each address up in escalation's projection of the directory
    events (`services.escalation.addresses`) when it sends, so changes count at once.
    """
    lookup = addresses if settings.notify_adapter == "smtp" else None
    return build_notifier(settings, recipients_by_principal=lookup)


def _close_when_stopped(notifier: Adapter) -> Callable[[asyncio.Event], Awaitable[None]]:
    async def close(stop: asyncio.Event) -> None:
        await stop.wait()
        await notifier.aclose()

    return close
