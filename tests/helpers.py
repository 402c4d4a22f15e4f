"""Helpers shared by integration and end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from fastapi import FastAPI

from services.domain.envelope import Envelope
from services.infra import signing
from services.infra.settings import CommonSettings


async def drain(bootstrap: str, topic: str, want: int, timeout: float = 15.0) -> list[Any]:
    """Read a topic from the beginning until `want` records arrived (or time runs out)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got) < want and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                got.extend(records)
    finally:
        await consumer.stop()
    return got


async def eventually(
    probe: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05
) -> Any:
    """Await `probe()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


async def read_all(
    bootstrap: str, topic: str, idle: float = 0.3, timeout: float = 10.0
) -> list[Any]:
    """Everything on a topic now: read from the beginning until `idle` seconds bring nothing."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_since = loop.time()
        while loop.time() < deadline and loop.time() - quiet_since < idle:
            batch = await consumer.getmany(timeout_ms=50)
            for records in batch.values():
                if records:
                    got.extend(records)
                    quiet_since = loop.time()
    finally:
        await consumer.stop()
    return got


async def fetch_rows(settings: CommonSettings, query: str, *args: Any) -> list[Any]:
    """The rows of one statement on the settings' database (its own connection)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def serving(
    app: FastAPI, base_url: str = "http://service", *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan (runtime, consumers, relay) and talk to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


SEED_CASE = {
    "category": "sexual_misconduct",
    "summary": "Assault on a work trip",
    "description": "My store manager assaulted me in the hotel.",
    "unit": "city-retail",
    "accused": ["p-wang"],
}
"""The motivating report: a City Retail store manager (p-wang) accused."""


def critical_policy(version: str, within: str) -> str:
    """A policy file where every category is critical and each level has `within`."""
    levels = ("hr_case_handler", "hr_head", "chief_ethics_officer", "board_audit_committee")
    chain = "".join(f"      - {{role: {r}, acknowledge_within: {within}}}\n" for r in levels)
    return f"""
version: "{version}"
categories: {{sexual_misconduct: critical, harassment: critical, other: critical}}
severities:
  critical:
    chain:
{chain}    repeat_last_every: {within}
    feedback_within: 90d
reporter_acknowledgement_within: 7d
conflicts:
  exclude: [accused, accused_management_chain, named_in_report, reporter, accused_reports]
  independent_roles: [chief_ethics_officer, board_audit_committee]
"""


def signed(event: Envelope | dict[str, Any] | bytes, service: str | None = None) -> bytes:
    """An event as a service would publish it: signed with that service's development
    key (by default the producer its `source` names, else the only one of its type).

    Tests that produce events straight onto Kafka sign them with this, as every
    consumer refuses unsigned events (docs/event-signing.md).
    """
    if isinstance(event, Envelope):
        value = event.to_dict()
    elif isinstance(event, bytes):
        value = json.loads(event)
    else:
        value = dict(event)
    return signing.signer_for(service or signing.producer_of(value)).sign_bytes(value)


def event_record(topic: str, event: Any, offset: int) -> ConsumerRecord:
    """A consumer record carrying an event (keyed by its incident), as a handler gets it."""
    value = event.to_bytes()
    key = event.subject.encode()
    return ConsumerRecord(topic, 0, offset, 0, 0, key, value, None, len(key), len(value), ())


def broker_settings(kafka_bootstrap: str) -> CommonSettings:
    """Settings for a test of Kafka plumbing alone: topics under a prefix of its own,
    a 3 s session and a 20 ms fetch wait, no database."""
    return CommonSettings(
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"k{secrets.token_hex(4)}.",
        environment="test",
        kafka_session_timeout_ms=3000,
        kafka_fetch_max_wait_ms=20,
    )
