"""Integration fixtures: settings isolated per test (own database, own topic prefix)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from services.infra.settings import CommonSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(kafka_bootstrap: str, fresh_database_url: str) -> CommonSettings:
    """Settings of a service under test: its own database and topic names."""
    return CommonSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=fresh_database_url,
        kafka_topic_prefix=f"t{secrets.token_hex(4)}.",
        environment="test",
        outbox_poll_interval=0.1,
        broker_check_interval=0.3,
        kafka_session_timeout_ms=3000,
    )


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain producer, as another system would use."""
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()
