"""Wiring of the triage service: settings -> runtime -> faust agents -> HTTP shell."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.domain.events import Topic
from services.infra.runtime import Runtime
from services.infra.settings import TriageSettings
from services.infra.streamapp import create_stream_app, tracking_handler

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def create_app(settings: TriageSettings | None = None) -> FastAPI:
    """The triage app: agents over its input topics, health and metrics over HTTP."""
    settings = settings or TriageSettings()
    runtime = Runtime(settings, "triage", MIGRATIONS)
    topics = [settings.topic(Topic.REPORTS), settings.topic(Topic.DIRECTORY)]
    return create_stream_app(
        settings,
        "triage",
        MIGRATIONS,
        [("triage-events", topics, tracking_handler(runtime, "triage-events"))],
        runtime=runtime,
    )
