"""Wiring of the escalation service: settings -> runtime -> faust agents -> HTTP shell."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.domain.events import Topic
from services.infra.runtime import Runtime
from services.infra.settings import EscalationSettings
from services.infra.streamapp import create_stream_app, tracking_handler

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def create_app(settings: EscalationSettings | None = None) -> FastAPI:
    """The escalation app: agents over its input topics, health and metrics over HTTP."""
    settings = settings or EscalationSettings()
    runtime = Runtime(settings, "escalation", MIGRATIONS)
    topics = [settings.topic(Topic.TRIAGE), settings.topic(Topic.ACTIVITY)]
    return create_stream_app(
        settings,
        "escalation",
        MIGRATIONS,
        [("escalation-events", topics, tracking_handler(runtime, "escalation-events"))],
        runtime=runtime,
    )
