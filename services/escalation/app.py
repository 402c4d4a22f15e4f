"""Wiring of the escalation service: settings -> runtime -> agents, scheduler -> HTTP shell."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.domain.events import Topic
from services.escalation.handlers import Escalation, system_clock
from services.escalation.notify import LogNotifier
from services.infra.runtime import Runtime
from services.infra.settings import EscalationSettings
from services.infra.streamapp import create_stream_app

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def create_app(settings: EscalationSettings | None = None) -> FastAPI:
    """The escalation app: durable deadlines, escalation chains, notices."""
    settings = settings or EscalationSettings()
    runtime = Runtime(settings, "escalation", MIGRATIONS)
    escalation = Escalation(runtime, LogNotifier(), system_clock)
    runtime.background("deadline-scheduler", escalation.run_scheduler)
    app = create_stream_app(
        settings,
        "escalation",
        MIGRATIONS,
        [
            ("escalation-triage", [settings.topic(Topic.TRIAGE)], escalation.on_triage),
            ("escalation-activity", [settings.topic(Topic.ACTIVITY)], escalation.on_activity),
        ],
        runtime=runtime,
    )
    app.state.escalation = escalation
    return app
