"""`incidents directory import FILE`: load a whole directory into intake, set-based.

The file is YAML (the seed format, `people:`), CSV (`services.domain.directory_sync.
CSV_COLUMNS`) or SCIM JSON (a ListResponse, a BulkRequest or a list of Users), chosen by
its suffix. The command writes to intake's database directly (INCIDENTS_DATABASE_URL,
the intake schema), signing the events with intake's key (INCIDENTS_EVENT_SIGNING_KEY),
and the running intake's relay publishes them from the outbox. The whole file is
checked first (duplicates, unknown managers, cycles): a refused file writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import typer

from services.domain.directory import DirectoryFile, Person
from services.domain.directory_sync import ImportInvalid, people_from_csv, people_from_scim_json
from services.infra.config import ConfigError, load_yaml_model

directory_app = typer.Typer(help="The directory: import people in bulk.", no_args_is_help=True)


def read_people(path: Path) -> list[Person]:
    """The people of a YAML, CSV or SCIM JSON file (ImportInvalid or ConfigError if bad)."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return list(load_yaml_model(path, DirectoryFile).people)
    text = path.read_text(encoding="utf-8")
    if suffix == ".csv":
        return people_from_csv(text)
    if suffix == ".json":
        try:
            return people_from_scim_json(json.loads(text))
        except ValueError as exc:
            if isinstance(exc, ImportInvalid):
                raise
            raise ImportInvalid([f"not JSON: {exc}"]) from exc
    raise ImportInvalid([f"{path.name}: use a .yaml, .csv or .json (SCIM) file"])


async def _run(people: list[Person], actor: str, progress: object) -> tuple[int, int, int]:
    from rich.progress import Progress

    from services.infra import signing
    from services.infra.db import create_pool, migrate_service
    from services.infra.settings import IntakeSettings
    from services.intake.app import MIGRATIONS
    from services.intake.directory_import import import_people

    settings = IntakeSettings()
    signing.configure(
        "intake", settings.environment, settings.event_signing_key, settings.event_keys_file
    )
    schema = settings.schema_name("intake")
    await migrate_service(settings.database_url, schema, MIGRATIONS)
    pool = await create_pool(settings.database_url, schema=schema)
    assert isinstance(progress, Progress)
    task = progress.add_task("importing", total=len(people))
    try:
        result = await import_people(
            pool,
            people,
            source="/services/intake",
            actor=actor,
            topic_prefix=settings.kafka_topic_prefix,
            progress=lambda n: progress.advance(task, n),
        )
    finally:
        await pool.close()
    return result.added, result.changed, result.unchanged


@directory_app.command("import")
def import_command(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML, CSV or SCIM JSON."),
    actor: str = typer.Option(
        "system:directory-import",
        "--actor",
        help="Who the events name as actor (a system principal, e.g. system:hris).",
    ),
) -> None:
    """Import a directory file into intake: one event per person added or changed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    if not actor.startswith("system:"):
        typer.echo("--actor must be a system principal (system:<id>)", err=True)
        raise typer.Exit(2)
    try:
        people = read_people(file)
    except (ImportInvalid, ConfigError) as exc:
        problems = exc.problems if isinstance(exc, ImportInvalid) else [str(exc)]
        typer.echo("refused, nothing imported:\n  " + "\n  ".join(problems[:20]), err=True)
        raise typer.Exit(1) from exc
    started = time.perf_counter()
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeRemainingColumn()) as progress:
        try:
            added, changed, unchanged = asyncio.run(_run(people, actor, progress))
        except ImportInvalid as exc:
            typer.echo("refused, nothing imported:\n  " + "\n  ".join(exc.problems[:20]), err=True)
            raise typer.Exit(1) from exc
    seconds = time.perf_counter() - started
    typer.echo(
        f"{added} added, {changed} changed, {unchanged} unchanged in {seconds:.1f} s"
        f" ({len(people) / max(seconds, 1e-9):,.0f} people/s)"
    )
