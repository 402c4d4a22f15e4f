"""A stream-processor service: a faust app inside the shared FastAPI/runtime shell."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from fastapi import FastAPI
from faust.contrib.asgi import faust_app_running

from services.infra.faustapp import GroupRejoin, add_agent, make_faust_app
from services.infra.kafka import BatchHandler
from services.infra.runtime import Runtime
from services.infra.settings import CommonSettings
from services.infra.webapp import build_app


def create_stream_app(
    settings: CommonSettings,
    name: str,
    migrations: Path | None,
    agents: Sequence[tuple[str, Sequence[str], BatchHandler]] | None = None,
    *,
    runtime: Runtime | None = None,
    on_start: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """A FastAPI app (health, metrics) whose lifespan runs the runtime and a faust app."""
    runtime = runtime or Runtime(settings, name, migrations)
    faust_app = make_faust_app(settings, name)
    for agent_name, topics, handler in agents or ():
        add_agent(faust_app, runtime, name=agent_name, topics=topics, handler=handler)
    # After a broker reset the agents must read every partition of the new topics.
    rejoin = GroupRejoin(faust_app, settings.kafka_session_timeout_ms / 1000)
    runtime.watch.on_reset(rejoin)

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[None]:
        async with faust_app_running(faust_app, stop_timeout=10):
            yield

    app = build_app(runtime, title=f"Incidents {name}", on_start=on_start, alongside=running)
    app.state.faust = faust_app
    app.state.faust_rejoin = rejoin
    return app
