"""`incidents witness`: run a witness (its key and store in its state folder)."""

from __future__ import annotations

from pathlib import Path

import typer


def witness(
    state_dir: Path | None = typer.Option(
        None,
        "--state-dir",
        help="Key and store folder (default $INCIDENTS_WITNESS_STATE_DIR or ~/.incidents/witness).",
    ),
    log: list[str] = typer.Option(
        [],
        "--log",
        help="Verifier key of a log to witness (repeatable; default $INCIDENTS_WITNESS_LOGS)."
        " The audit service serves its key at /v1/ledger/public-key.",
    ),
    name: str | None = typer.Option(None, "--name", help="The witness's key name."),
    port: int | None = typer.Option(None, "--port", help="HTTP port (default 8005)."),
) -> None:
    """Run a C2SP tlog-witness: cosign each log checkpoint proven consistent with the last."""
    from pydantic import ValidationError

    from services.witness.app import serve, settings_from

    try:
        settings = settings_from(state_dir, log, name, port)
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    serve(settings)
