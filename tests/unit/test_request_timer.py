"""The HTTP latency metric's middleware: route template, method and status per request."""

from __future__ import annotations

import gc

import httpx
import pytest
from fastapi import FastAPI

from services.infra import metrics
from services.infra.http import Problem, install_problem_handlers
from services.infra.settings import CommonSettings
from services.infra.webapp import RequestTimer, build_app


def _count(method: str, route: str, status: str) -> float:
    for family in metrics.HTTP_LATENCY.collect():
        for sample in family.samples:
            if (
                sample.name.endswith("_count")
                and sample.labels.get("method") == method
                and sample.labels.get("route") == route
                and sample.labels.get("status") == status
            ):
                return sample.value
    return 0.0


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        if thing_id == "missing":
            raise Problem(404, "Not found", "no such thing")
        return {"id": thing_id}

    app.add_middleware(RequestTimer)
    return app


async def test_each_request_is_counted_under_its_route_template_and_status() -> None:
    ok_before = _count("GET", "/things/{thing_id}", "200")
    missing_before = _count("GET", "/things/{thing_id}", "404")
    unmatched_before = _count("GET", "unmatched", "404")
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/things/a")).status_code == 200
        assert (await client.get("/things/b")).status_code == 200
        assert (await client.get("/things/missing")).status_code == 404
        assert (await client.get("/nowhere")).status_code == 404
    assert _count("GET", "/things/{thing_id}", "200") == ok_before + 2
    assert _count("GET", "/things/{thing_id}", "404") == missing_before + 1
    assert _count("GET", "unmatched", "404") == unmatched_before + 1


class _Runtime:
    """What `build_app` uses of a runtime, without its connections."""

    settings = CommonSettings(database_url="postgresql://unused/unused")

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def readiness(self) -> dict[str, str]:
        return {}


@pytest.mark.parametrize("own_process", [False, True])
async def test_a_service_process_freezes_its_heap_once_it_has_started(own_process: bool) -> None:
    """`serve` marks the app; its lifespan then freezes what start-up built (the
    collector stops walking it at every full collection). Apps in tests stay unfrozen."""
    app = build_app(_Runtime(), title="t")  # type: ignore[arg-type]
    app.state.freeze_heap = own_process
    gc.unfreeze()
    try:
        async with app.router.lifespan_context(app):
            assert (gc.get_freeze_count() > 0) is own_process
    finally:
        gc.unfreeze()
