"""The `incidents` command: run the stack, talk to it, audit it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="incidents",
    help="Event-sourced incident workflow: intake, triage, escalation, audit.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def up(
    run_dir: str = typer.Option(
        None, "--run-dir", help="Folder for logs and state (default: ./.run/<timestamp>)."
    ),
) -> None:
    """Start the whole stack here: broker, PostgreSQL if needed, and the four services."""
    from services.infra.stack import run_stack

    raise typer.Exit(run_stack(run_dir=run_dir))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
