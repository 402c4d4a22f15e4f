"""PostgreSQL plumbing: the pool, database creation and the migration runner.

Migrations are plain SQL files applied in name order inside the service's schema
(`search_path` is set, so files use unqualified names). Each file is applied once,
in its own transaction, recorded with its checksum in `<schema>.schema_migrations`;
an edited file that was already applied stops start-up instead of drifting.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from services.infra.settings import database_name, with_database

INFRA_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(RuntimeError):
    """A migration could not be applied, or an applied one was changed."""


def quote_ident(name: str) -> str:
    """A safe SQL identifier; only plain lowercase names are accepted."""
    if not _IDENT.match(name):
        raise ValueError(f"unsafe SQL identifier {name!r}")
    return f'"{name}"'


async def ensure_database(url: str) -> bool:
    """Create the database a URL names if it does not exist; True if created."""
    name = database_name(url)
    conn = await asyncpg.connect(with_database(url, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        try:
            await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            return False
        return True
    finally:
        await conn.close()


def _server_settings(schema: str) -> dict[str, str]:
    quote_ident(schema)
    return {"search_path": f"{schema},public", "application_name": schema}


async def _become(conn: asyncpg.Connection, role: str | None) -> None:
    if role:
        await conn.execute(f"SET ROLE {quote_ident(role)}")


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """Release a pool connection without asyncpg's reset query.

    asyncpg still rolls back an open transaction and drops listener callbacks; what it
    skips is a round trip per release (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN
    *; RESET ALL`), which showed up as several % of a service's CPU under load. Pooled
    connections keep no session state: advisory locks are transaction-scoped, settings
    are `SET LOCAL`, LISTEN and session locks use dedicated connections (`connect`).
    (`RESET ALL` never undid the pool's SET ROLE anyway.)
    """
    del conn


async def create_pool(
    url: str, *, schema: str, max_size: int = 10, role: str | None = None
) -> asyncpg.Pool:
    """A pool whose connections use the service's schema first, working as `role` if given.

    Working as a role (SET ROLE) drops the login's own privileges, superuser included,
    so a service can be held to what its role was granted even in development.
    """

    async def init(conn: asyncpg.Connection) -> None:
        await _become(conn, role)

    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_size,
        server_settings=_server_settings(schema),
        init=init,
        reset=_no_session_state,
    )
    assert pool is not None
    return pool


async def connect(url: str, *, schema: str, role: str | None = None) -> asyncpg.Connection:
    """One dedicated connection, configured like the pool's."""
    conn: asyncpg.Connection = await asyncpg.connect(url, server_settings=_server_settings(schema))
    await _become(conn, role)
    return conn


def _lock_key(schema: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"migrate:{schema}".encode()).digest()[:8], "big", signed=True
    )


async def migrate(conn: asyncpg.Connection, schema: str, folders: Sequence[Path]) -> list[str]:
    """Apply every not-yet-applied SQL file of `folders` to `schema`; return the applied names.

    Files are named `NNNN_what.sql`; a name is unique across the folders given. An
    advisory lock makes concurrent start-ups of the same service wait for each other.
    """
    ident = quote_ident(schema)
    files: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.sql")):
            if path.name in files:
                raise MigrationError(f"{path}: name already used by {files[path.name]}")
            files[path.name] = path
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {ident}.schema_migrations ("
            " name text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["name"]: r["checksum"]
            for r in await conn.fetch(f"SELECT name, checksum FROM {ident}.schema_migrations")  # noqa: S608 (quoted identifier)
        }
        for name in sorted(files, key=lambda n: (n.split("_", 1)[0], n)):
            sql = files[name].read_text(encoding="utf-8")
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if name in done:
                if done[name] != checksum:
                    raise MigrationError(
                        f"{files[name]} was changed after it was applied to schema {schema}; "
                        "add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {ident}, public")
                try:
                    await conn.execute(sql.replace("{schema}", schema))
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"{files[name]}: {exc}") from exc
                await conn.execute(
                    f"INSERT INTO {ident}.schema_migrations (name, checksum) VALUES ($1, $2)",  # noqa: S608
                    name,
                    checksum,
                )
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    return applied_now


async def migrate_service(url: str, schema: str, service_migrations: Path | None) -> list[str]:
    """Create the database if needed and bring a service's schema up to date."""
    await ensure_database(url)
    folders = [INFRA_MIGRATIONS]
    if service_migrations is not None and service_migrations.is_dir():  # noqa: ASYNC240 (start-up)
        folders.append(service_migrations)
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn, schema, folders)
    finally:
        await conn.close()
