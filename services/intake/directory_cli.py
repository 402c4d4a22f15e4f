"""`incidents directory import FILE`: load a whole directory into intake, set-based.

The file is YAML (the seed format, `people:`), CSV (`services.domain.directory_sync.
CSV_COLUMNS`) or SCIM JSON (a ListResponse, a BulkRequest or a list of Users), chosen by
its suffix. The command writes to intake's database directly (INCIDENTS_DATABASE_URL,
the intake schema), signing the events with intake's key (INCIDENTS_EVENT_SIGNING_KEY),
and the running intake's relay publishes them from the outbox. The whole file is
checked first (duplicates, unknown managers, cycles): a refused file writes nothing.

`incidents directory republish (--person ID ... | --all)`: the current records of
those people published again, the same way (one `directory.people.imported.v1` per run
of up to 500, intake's key, the outbox), so every consumer folds the current record
after any stale one: the remedy for a dead-lettered directory change, which is never
re-driven (docs/operations.md, Dead letters). Nothing in intake changes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from services.domain.directory import DirectoryFile, Person
from services.domain.directory_sync import ImportInvalid, people_from_csv, people_from_scim_json
from services.infra.config import ConfigError, load_yaml_model

if TYPE_CHECKING:  # imported where used: `incidents` starts without them
    import asyncpg
    from rich.progress import Progress

directory_app = typer.Typer(
    help="The directory: import people in bulk, publish current records again.",
    no_args_is_help=True,
)
SOURCE = "/services/intake"
"""The events' source: intake's, whose key signs them."""


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


@asynccontextmanager
async def _intake() -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    """Intake's database pool (migrated) and topic prefix, with intake's signing key set,
    as the running intake has them (INCIDENTS_* settings)."""
    from services.infra import signing
    from services.infra.db import create_pool, migrate_service
    from services.infra.settings import IntakeSettings
    from services.intake.app import MIGRATIONS

    settings = IntakeSettings()
    signing.configure(
        "intake", settings.environment, settings.event_signing_key, settings.event_keys_file
    )
    schema = settings.schema_name("intake")
    await migrate_service(settings.database_url, schema, MIGRATIONS)
    pool = await create_pool(settings.database_url, schema=schema)
    try:
        yield pool, settings.kafka_topic_prefix
    finally:
        await pool.close()


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    return Progress(*columns, TimeRemainingColumn())


def _advance(progress: Progress, what: str, total: int) -> Callable[[int], None]:
    """A task of `total` on the progress bar, and what moves it by n."""
    task = progress.add_task(what, total=total)
    return lambda n: progress.advance(task, n)


def _system_actor(actor: str) -> None:
    if not actor.startswith("system:"):
        typer.echo("--actor must be a system principal (system:<id>)", err=True)
        raise typer.Exit(2)


async def _run(people: list[Person], actor: str, progress: Progress) -> tuple[int, int, int]:
    from services.intake.directory_import import import_people

    async with _intake() as (pool, prefix):
        advance = _advance(progress, "importing", len(people))
        result = await import_people(
            pool, people, source=SOURCE, actor=actor, topic_prefix=prefix, progress=advance
        )
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
    _system_actor(actor)
    try:
        people = read_people(file)
    except (ImportInvalid, ConfigError) as exc:
        problems = exc.problems if isinstance(exc, ImportInvalid) else [str(exc)]
        typer.echo("refused, nothing imported:\n  " + "\n  ".join(problems[:20]), err=True)
        raise typer.Exit(1) from exc
    started = time.perf_counter()
    with _progress() as progress:
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


async def _republish(ids: list[str] | None, actor: str, progress: Progress) -> tuple[int, int]:
    from services.intake.directory_import import people_count, republish_people

    async with _intake() as (pool, prefix):
        total = len(ids) if ids is not None else await people_count(pool)
        advance = _advance(progress, "republishing", total)
        result = await republish_people(
            pool, ids, source=SOURCE, actor=actor, topic_prefix=prefix, progress=advance
        )
    return result.people, result.events


@directory_app.command("republish")
def republish_command(
    person: list[str] = typer.Option(
        [], "--person", help="A person id (repeat the option for more)."
    ),
    everyone: bool = typer.Option(False, "--all", help="Everyone in the directory."),
    actor: str = typer.Option(
        "system:directory-republish",
        "--actor",
        help="Who the events name as actor (a system principal).",
    ),
) -> None:
    """Publish the current records of people again, for every consumer to fold.

    For a directory change a consumer dead-lettered (never re-driven: it could undo a
    later one): each consumer then folds the current record after the stale one.
    Folding a record it already has changes nothing; intake's records, their SCIM
    version and lastModified are not changed. An unknown id refuses the whole run.
    """
    from services.intake.directory_import import NotInDirectory

    _system_actor(actor)
    if everyone == bool(person):
        typer.echo("name people with --person ID (repeatable), or --all", err=True)
        raise typer.Exit(2)
    started = time.perf_counter()
    with _progress() as progress:
        try:
            people, events = asyncio.run(_republish(None if everyone else person, actor, progress))
        except NotInDirectory as exc:
            typer.echo(f"refused, nothing republished: {exc}", err=True)
            raise typer.Exit(1) from exc
    seconds = time.perf_counter() - started
    typer.echo(
        f"{people} republished in {events} event(s) in {seconds:.1f} s;"
        " the running intake's relay publishes them"
    )
