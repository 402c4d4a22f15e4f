"""Wiring of the audit service: settings -> runtime -> ledger ingest and auditor API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from services.audit import ui
from services.audit.api import router
from services.audit.heads import (
    IDLE_LOOK_SECONDS,
    HeadSigner,
    WitnessSubmitter,
    load_signer,
    load_witnesses,
)
from services.audit.identity import bind_to_database
from services.audit.ledger import consumed
from services.audit.postgres import Isolation, PostgresAuditUnitOfWork
from services.audit.receipt_proofs import router as proofs_router
from services.audit.ui_evidence import EvidenceDesk
from services.audit.ui_index import indexer
from services.audit.usecases import AppendBatch, AuditConfig, append_batch
from services.console import web
from services.domain.events import Topic
from services.infra import metrics
from services.infra.bootstrap import content_base
from services.infra.kafka import all_topics
from services.infra.runtime import Runtime
from services.infra.settings import AuditSettings
from services.infra.webapp import build_app

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger(__name__)


def create_app(settings: AuditSettings | None = None) -> FastAPI:
    """The audit app; configuration errors surface here, before anything starts."""
    settings = settings or AuditSettings()
    runtime = Runtime(settings, "audit", MIGRATIONS, db_role=settings.audit_db_role or None)
    # Audit opens content for auditors: it reads the key store, never writes it.
    base = content_base(settings, runtime)
    keys = base.keys
    config = AuditConfig(
        policy=base.policy,
        directory=base.directory,
        source=runtime.source,
        topic_prefix=settings.kafka_topic_prefix,
    )

    def unit_of_work(*, snapshot: bool = False) -> PostgresAuditUnitOfWork:
        isolation: Isolation = "repeatable_read" if snapshot else "read_committed"
        return PostgresAuditUnitOfWork(runtime.db, config, keys, isolation=isolation)

    async def ingest(records: Sequence[ConsumerRecord]) -> None:
        # Forged records are recorded too, as rejected input with the reason: the
        # attempt is evidence (docs/event-signing.md).
        refused = runtime.authenticity(records)
        batch = AppendBatch(tuple(consumed(records, refused)))
        if await append_batch(batch, unit_of_work()):
            for grew in ledger_grew:  # the head signer and the console index look now
                grew.set()
        for record, reason in zip(records, refused, strict=True):
            if reason is not None:
                metrics.REJECTED_EVENTS.labels("audit", reason).inc()
                log.error("audit recorded a refused record of %s: %s", record.topic, reason)

    # Every topic but incident.inbound: other systems publish plaintext reports there,
    # which intake seals before anything else stores them (the ledger holds intake's
    # sealed submitted event, whose causationid is the inbound event's id).
    runtime.consume(
        f"{settings.kafka_topic_prefix}audit-ledger",
        [t for t in all_topics(settings) if t != settings.topic(Topic.INBOUND)],
        ingest,
        verify=False,
    )
    signer = load_signer(settings)
    # One key signs one log: refuse a key that signed another database's log (identity.py).
    runtime.before_start.append(
        lambda: bind_to_database(
            settings.signing_key_file, signer, settings.database_url, runtime.schema
        )
    )
    endpoints = load_witnesses(settings)
    heads = HeadSigner(runtime, settings, signer, endpoints)
    index_grew = asyncio.Event()
    ledger_grew = (heads.grew, index_grew)
    runtime.background("head-signer", heads.run)
    witnesses = WitnessSubmitter(runtime, settings, endpoints)
    if witnesses.witnesses:  # separate from signing: a witness that is down delays nothing
        runtime.background("witness-submitter", witnesses.run)
    runtime.background("console-index", indexer(runtime, index_grew, IDLE_LOOK_SECONDS))
    # The event-proof route is what intake asks as a reporter opens her receipt: its span
    # would keep the submission's event id (so the incident) and when she looked, and
    # receipt views are never recorded (docs/reporters.md).
    app = build_app(runtime, title="Incidents audit", untraced=("v1/ledger/proofs/event",))
    app.state.signer = signer
    app.state.heads = heads
    app.state.witnesses = witnesses
    app.state.auth = base.auth
    app.state.directory = base.directory
    app.state.policy = config.policy
    app.state.unit_of_work = unit_of_work
    app.state.keys = keys
    app.state.evidence = EvidenceDesk(runtime, signer)
    app.state.trace_url = settings.console_trace_url
    app.include_router(router)
    app.include_router(proofs_router)
    web.mount(app, ui.router, settings, title="Incidents audit")
    return app
