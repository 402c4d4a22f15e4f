"""The witness's HTTP service: thin routes over `Witness`, and the process that serves them.

Routes (submission and monitoring prefix are both the root):

- ``POST /add-checkpoint``: c2sp.org/tlog-witness; answers in `services.witness.witness`.
- ``GET /<sha256 hex of origin>/checkpoint``: the latest cosigned checkpoint of a log,
  with the log's signature and ours (404 if none).
- ``GET /key``: the witness's verifier key string (``text/plain``), to configure clients.
- ``GET /healthz``, ``GET /readyz``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from services.infra.http import URL_REFUSED, ControlCharacters, problem_response
from services.witness.config import STORE_FILE, WitnessSettings, load_key
from services.witness.store import Store
from services.witness.witness import MAX_BODY_BYTES, SIZE_CONTENT_TYPE, Witness

log = logging.getLogger(__name__)
_TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    422: "Unprocessable checkpoint",
}


def create_app(settings: WitnessSettings) -> FastAPI:
    """The witness app: its key and store from `settings.state_dir`."""
    signer = load_key(settings.state_dir, settings.name)
    store = Store(settings.state_dir / STORE_FILE)
    witness = Witness(signer, settings.log_verifiers(), store)
    app = FastAPI(title="Incidents witness", docs_url=None, redoc_url=None, responses=URL_REFUSED)
    app.add_middleware(ControlCharacters)  # as every service: 400 for a control character
    app.state.witness = witness

    @app.post("/add-checkpoint", response_model=None)
    async def add_checkpoint(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return problem_response(413, "Too large", "The body is over 64 KiB.")
        answer = witness.add_checkpoint(bytes(body), int(time.time()))
        if answer.status == 200:
            return PlainTextResponse(answer.body)
        if answer.status == 409:
            return Response(answer.body, status_code=409, media_type=SIZE_CONTENT_TYPE)
        log.info("refused a checkpoint: %s (%d)", answer.reason, answer.status)
        return problem_response(answer.status, _TITLES[answer.status], answer.reason)

    @app.get("/key", response_class=PlainTextResponse)
    async def key() -> str:
        return signer.verifier_key + "\n"

    @app.get("/healthz")
    @app.get("/readyz")
    async def ready() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/{origin_hash}/checkpoint", response_model=None)
    async def checkpoint(origin_hash: str) -> Response:
        for origin in witness.logs:
            if hashlib.sha256(origin.encode()).hexdigest() == origin_hash:
                latest = store.latest(origin)
                if latest is not None:
                    return PlainTextResponse(latest.note)
        return problem_response(404, "Not found", "No checkpoint of this log was cosigned.")

    return app


def serve(settings: WitnessSettings) -> None:
    """Serve until SIGINT/SIGTERM, after printing the verifier key and the logs."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(message)s")
    app = create_app(settings)
    witness: Witness = app.state.witness
    print(f"witness key: {witness.signer.verifier_key}", flush=True)
    for origin in witness.logs:
        print(f"witnessing: {origin}", flush=True)
    if not witness.logs:
        log.warning("no log keys configured (INCIDENTS_WITNESS_LOGS): every origin is unknown")
    print(f"listening on http://{settings.host}:{settings.port}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


def settings_from(
    state_dir: Path | None, logs: Sequence[str], name: str | None, port: int | None
) -> WitnessSettings:
    """Environment settings with the command line's values on top."""
    overrides: dict[str, object] = {}
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    if logs:
        overrides["logs"] = tuple(logs)
    if name is not None:
        overrides["name"] = name
    if port is not None:
        overrides["port"] = port
    return WitnessSettings(**overrides)  # type: ignore[arg-type]


def run() -> None:
    """`python -m services.witness`."""
    serve(WitnessSettings())
