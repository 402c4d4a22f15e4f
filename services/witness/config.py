"""The witness's settings (`INCIDENTS_WITNESS_*`) and its key, kept in its state folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.audit.checkpoint import NoteError, NoteVerifier, parse_verifier_key
from services.audit.cosignature import CosignatureSigner

log = logging.getLogger(__name__)
KEY_FILE = "witness-key.pem"
STORE_FILE = "witness.sqlite"


class WitnessSettings(BaseSettings):
    """A witness: who it is, where it keeps its state, which logs it witnesses."""

    model_config = SettingsConfigDict(env_prefix="INCIDENTS_WITNESS_", extra="ignore")

    name: str = Field(
        "incidents.example/witness",
        description="The witness's name: the key name of its cosignature lines.",
    )
    state_dir: Path = Field(
        Path.home() / ".incidents" / "witness",
        description="Folder of its private key (created 0600 on first start) and its"
        " SQLite store of the latest cosigned checkpoint per log.",
    )
    logs: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Verifier keys (C2SP vkeys) of the logs it witnesses, comma separated;"
        " a key's name is the log's origin.",
    )
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8005, ge=1, le=65535, description="HTTP port (INCIDENTS_WITNESS_PORT).")
    log_level: str = Field("INFO", description="Log level.")

    @field_validator("logs", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.replace("\n", ",").split(",") if v.strip())
        return value

    @field_validator("logs")
    @classmethod
    def _parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for vkey in value:
            try:
                parse_verifier_key(vkey)
            except NoteError as exc:
                raise ValueError(f"log key {vkey!r}: {exc}") from exc
        return value

    def log_verifiers(self) -> dict[str, NoteVerifier]:
        """origin -> the verifier of its signature (the key name is the origin)."""
        verifiers = [parse_verifier_key(v) for v in self.logs]
        return {v.name: v for v in verifiers}


def load_key(state_dir: Path, name: str) -> CosignatureSigner:
    """The witness key from `state_dir`, generated there (mode 0600) on first start."""
    path = state_dir / KEY_FILE
    if path.exists():
        return CosignatureSigner.from_pem(path.read_bytes(), name)
    signer = CosignatureSigner.generate(name)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile: use theirs
        return CosignatureSigner.from_pem(path.read_bytes(), name)
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.private_pem())
    log.warning("created a new witness key at %s", path)
    return signer
