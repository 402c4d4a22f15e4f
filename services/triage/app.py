"""Wiring of the triage service: settings -> runtime -> faust agents -> HTTP shell."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.domain.events import Topic
from services.domain.policy import Policy
from services.infra.config import load_yaml_model
from services.infra.keystore import pseudonyms_of
from services.infra.runtime import Runtime
from services.infra.settings import TriageSettings
from services.infra.streamapp import create_stream_app
from services.triage.handlers import Triage

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def create_app(settings: TriageSettings | None = None) -> FastAPI:
    """The triage app: decisions from reports, the directory from its events, and
    reassignments from recusals and ordered reassignments (activity)."""
    settings = settings or TriageSettings()
    policy = load_yaml_model(settings.policy_file, Policy)
    runtime = Runtime(settings, "triage", MIGRATIONS)
    pseudonyms = pseudonyms_of(settings.pseudonym_key, settings.pseudonym_key_file)
    triage = Triage(runtime, policy, pseudonyms)
    app = create_stream_app(
        settings,
        "triage",
        MIGRATIONS,
        [
            ("triage-directory", [settings.topic(Topic.DIRECTORY)], triage.on_directory),
            ("triage-reports", [settings.topic(Topic.REPORTS)], triage.on_report),
            ("triage-activity", [settings.topic(Topic.ACTIVITY)], triage.on_activity),
        ],
        runtime=runtime,
        on_start=triage.start,
    )
    app.state.triage = triage
    return app
