"""Wiring of the intake service: settings -> runtime -> routes and consumers."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI

from services.console import web
from services.domain.directory import DirectoryFile
from services.domain.events import Topic
from services.domain.policy import Policy
from services.infra.auth import make_authenticator
from services.infra.config import load_yaml_model
from services.infra.kafka import per_record
from services.infra.keystore import key_store, pseudonyms_of
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
    policy = load_yaml_model(settings.policy_file, Policy)
    auth = make_authenticator(settings)
    runtime = Runtime(settings, "intake", MIGRATIONS)
    keys = key_store(
        settings.master_key,
        settings.master_key_file,
        settings.schema_name(settings.keys_schema),
        pseudonyms_of(settings.pseudonym_key, settings.pseudonym_key_file),
        settings.previous_master_key_files,
    )
    runtime.before_start.append(lambda: keys.migrate(settings.database_url))
    service = IntakeService(runtime, policy, keys)
    eraser = Eraser(runtime, keys, policy, interval=settings.erasure_interval)
    runtime.background("erasure", eraser.run)
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
        routing_handler(runtime),
    )
    directory = load_yaml_model(settings.directory_file, DirectoryFile)

    async def seed_directory() -> None:
        added = await seed(runtime, directory)
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
            "ui/static",
            "ui/$",
        ),
    )
    app.state.intake = service
    app.state.keys = keys
    app.state.eraser = eraser
    app.state.auth = auth
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
