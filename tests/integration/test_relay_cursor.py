"""The relay's durable cursor: moved by the read of the next batch under a steady flow,
saved alone soon after the flow stops, and saved when the relay stops."""

from __future__ import annotations

import asyncpg
import pytest

from services.infra import relay as relay_module
from services.infra.settings import CommonSettings
from tests.helpers import drain, eventually
from tests.integration.test_relay import RelayUnderTest, per_key, pool, queue

pytestmark = pytest.mark.integration
__all__ = ["pool"]  # the fixture, used by name


async def _saved(pool: asyncpg.Pool) -> int:
    value = await pool.fetchval("SELECT published FROM relay_state WHERE name = 'kafka'")
    return int(value or 0)


async def _last(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(max(position), 0) FROM outbox"))


async def test_the_cursor_is_saved_soon_after_the_last_batch(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    topic = settings.topic("relay.cursor")
    await queue(pool, topic, [("k", i) for i in range(12)])
    last = await _last(pool)
    async with RelayUnderTest(settings) as relay:
        # no row comes after the last batch to carry the move: it is saved alone
        await eventually(lambda: _saved_is(pool, last))
        assert (relay.stats.cursor, relay.stats.published) == (last, 12)
    assert per_key(await drain(settings.kafka_bootstrap, topic, 12))["k"] == list(range(12))


async def test_a_stopping_relay_saves_the_cursor_it_has_not_saved_yet(
    settings: CommonSettings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "SAVE_WITHIN", 3600.0)  # only the stop saves it
    topic = settings.topic("relay.cursor-stop")
    await queue(pool, topic, [("k", i) for i in range(5)])
    before = await _saved(pool)
    async with RelayUnderTest(settings) as relay:
        await eventually(lambda: _at(relay, 5))
        assert await _saved(pool) == before  # published, the move still pending
    assert await _saved(pool) == await _last(pool)


async def _at(relay: relay_module.OutboxRelay, n: int) -> bool:
    return relay.stats.published >= n


async def _saved_is(pool: asyncpg.Pool, position: int) -> bool:
    return await _saved(pool) == position
