"""Wiring of the intake service: settings -> runtime -> routes and consumers."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI

from services.console import web
from services.domain.events import Topic
from services.infra.bootstrap import content_base
from services.infra.kafka import per_record
from services.infra.keystore import pseudonyms_of
from services.infra.runtime import Runtime
from services.infra.settings import IntakeSettings
from services.infra.systems import load_systems
from services.infra.webapp import build_app
from services.intake import (
    attachments_api,
    attachments_ui,
    directory_api,
    events_api,
    handlers,
    my_reports,
    my_reports_ui,
    people,
    privacy,
    receipts,
    ui,
)
from services.intake.api import router
from services.intake.deadlines import DecisionWatch
from services.intake.directory import seed
from services.intake.inbound import InboundConsumer
from services.intake.privacy import Eraser
from services.intake.routing import routing_handler
from services.intake.scim import mount as mount_scim
from services.intake.service import IntakeService

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger(__name__)


def create_app(settings: IntakeSettings | None = None) -> FastAPI:
    """The intake app; configuration errors surface here, before anything starts."""
    settings = settings or IntakeSettings()
    runtime = Runtime(settings, "intake", MIGRATIONS)
    pseudonyms = pseudonyms_of(settings.pseudonym_key, settings.pseudonym_key_file)
    base = content_base(settings, runtime, pseudonyms)
    keys = base.keys
    service = IntakeService(runtime, base.policy, keys)
    eraser = Eraser(runtime, keys, base.policy, interval=settings.erasure_interval)
    runtime.background("erasure", eraser.run)
    decisions = DecisionWatch(runtime, settings.decision_within)
    runtime.background("decision-deadlines", decisions.run)
    systems = load_systems(settings.systems_file)
    inbound = InboundConsumer(runtime, service, systems)
    runtime.consume(
        f"{settings.kafka_topic_prefix}intake-inbound",
        [settings.topic(Topic.INBOUND)],
        per_record(inbound.handle),
    )
    runtime.consume(
        f"{settings.kafka_topic_prefix}intake-routing",
        [settings.topic(t) for t in (Topic.TRIAGE, Topic.ESCALATIONS, Topic.ACTIVITY)],
        routing_handler(runtime, on_overdue_decided=decisions.nudge),
    )

    async def seed_directory() -> None:
        added = await seed(runtime, base.directory)
        if added:
            log.info("directory: added %d people from %s", added, settings.directory_file)

    app = build_app(
        runtime,
        title="Incidents intake",
        on_start=seed_directory,
        # the console's pages an anonymous reporter loads are untraced too (start, static)
        untraced=(
            "v1/reports",
            "v1/channels",
            "v1/receipts",
            "v1/people",  # the people search: who searched for whom is never recorded
            "ui/report",
            "ui/receipt",
            "ui/lang",  # the language switch: its `next` names the page she came from
            "ui/static",
            "ui/$",
        ),
    )
    app.state.intake = service
    app.state.keys = keys
    app.state.eraser = eraser
    app.state.decisions = decisions
    app.state.auth = base.auth
    app.state.systems = systems
    app.include_router(router)
    app.include_router(receipts.router)
    app.include_router(events_api.router)
    app.include_router(handlers.router)
    app.include_router(attachments_api.router)
    app.include_router(attachments_ui.router)
    app.include_router(my_reports.router)
    app.include_router(my_reports_ui.router)
    app.include_router(directory_api.router)
    app.include_router(people.router)
    app.include_router(privacy.router)
    mount_scim(app, systems)
    web.mount(app, ui.router, settings, title="Incidents")
    return app
