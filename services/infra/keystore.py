"""The key store: per-incident data keys, wrapped by the master key, and their destruction.

Every incident gets a random AES-256 data key and a digest salt when intake takes its
report. Both are kept only wrapped by the master key (`MasterKey`: a local key from a
setting or file, or a KMS behind the same two methods), in the `keys` schema
(`keys_migrations/`). Intake creates and destroys keys; audit may only read them
(grant to `incidents_audit`); triage and escalation have neither the master key nor a
grant, and work on the clear metadata.

`open_events` is the one place where sealed content becomes readable: intake's
handler and reporter views and audit's auditor answers call it, after their own
access checks, and it opens only an allow-list of fields (never `reporter_identity`
unless the caller is on an identity custodian's path). Once a key is destroyed
(erasure), its values read `[erased]`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from services.domain.envelope import Envelope
from services.domain.events import READER_FIELDS, ReportSubmitted, open_envelope
from services.infra.crypto import (
    DEVELOPMENT_MASTER_KEY,
    DEVELOPMENT_PSEUDONYM_KEY,
    KEY_BYTES,
    CryptoError,
    IncidentKey,
    LocalMasterKey,
    MasterKey,
    Pseudonyms,
    decode_key,
    new_data_key,
    new_salt,
)
from services.infra.db import migrate, quote_ident

MIGRATIONS = Path(__file__).resolve().parent / "keystore_migrations"
SCHEMA = "keys"
log = logging.getLogger(__name__)


def master_key_of(secret: SecretStr | None, path: Path | None) -> MasterKey:
    """The master key a service's settings name: the file, the setting, or the dev key."""
    if path is not None:
        return LocalMasterKey.from_file(path, create=False)
    if secret is not None:
        return LocalMasterKey.from_base64(secret.get_secret_value())
    return LocalMasterKey.from_base64(DEVELOPMENT_MASTER_KEY)


def pseudonyms_of(secret: SecretStr | None, path: Path | None) -> Pseudonyms:
    """The reporter pseudonyms a service's settings name: the file, the setting, or dev."""
    if path is not None:
        text = path.read_text()
    elif secret is not None:
        text = secret.get_secret_value()
    else:
        text = DEVELOPMENT_PSEUDONYM_KEY
    return Pseudonyms(decode_key(text, "pseudonym key"))


async def migrate_key_store(database_url: str, schema: str) -> list[str]:
    """Apply the key store's migrations to `schema` (also the production migrate job)."""
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn, schema, [MIGRATIONS])
    finally:
        await conn.close()


class KeyStore:
    """Create, read and destroy incidents' data keys (in the caller's transaction)."""

    def __init__(
        self,
        master: MasterKey,
        schema: str,
        *,
        pseudonyms: Pseudonyms | None = None,
        previous: Sequence[MasterKey] = (),
    ) -> None:
        self.master = master
        # Keys wrapped by an earlier master key still open while `rewrap` moves them.
        self.masters = {m.key_id: m for m in (*previous, master)}
        self.schema = schema
        self.pseudonyms = pseudonyms
        self._table = f"{quote_ident(schema)}.data_keys"

    async def migrate(self, database_url: str) -> list[str]:
        """Bring the key store's schema up to date (intake and audit both call it at start)."""
        return await migrate_key_store(database_url, self.schema)

    def _context(self, incident_id: str) -> str:
        return f"incidents-data-key\x00{incident_id}"

    async def create(self, conn: asyncpg.Connection, incident_id: str) -> IncidentKey:
        """A new key for a new incident; the existing one if it already has one."""
        (key,) = await self.create_many(conn, [incident_id])
        return key

    async def create_many(
        self, conn: asyncpg.Connection, incident_ids: Sequence[str]
    ) -> list[IncidentKey]:
        """`create` for several incidents in one statement; their keys, in order."""
        fresh = {i: new_data_key() + new_salt() for i in incident_ids}
        inserted = {
            row["incident_id"]
            for row in await conn.fetch(
                f"INSERT INTO {self._table} (incident_id, master_key_id, wrapped)"  # noqa: S608
                " SELECT i, $2, w FROM unnest($1::text[], $3::bytea[]) AS r (i, w)"
                " ON CONFLICT (incident_id) DO NOTHING RETURNING incident_id",
                list(fresh),
                self.master.key_id,
                [self.master.wrap(raw, self._context(i)) for i, raw in fresh.items()],
            )
        }
        keys = []
        for incident_id in incident_ids:
            if incident_id in inserted:
                raw = fresh[incident_id]
                keys.append(
                    IncidentKey(incident_id, raw[:KEY_BYTES], raw[KEY_BYTES:], self.pseudonyms)
                )
                continue
            existing = await self.get(conn, incident_id)
            if existing is None:
                raise CryptoError(f"the data key of {incident_id} was destroyed")
            keys.append(existing)
        return keys

    async def get(self, conn: asyncpg.Connection, incident_id: str) -> IncidentKey | None:
        """The incident's key, or None when it has none or it was destroyed."""
        row = await conn.fetchrow(
            f"SELECT wrapped, master_key_id FROM {self._table} WHERE incident_id = $1",  # noqa: S608
            incident_id,
        )
        if row is None or row["wrapped"] is None:
            return None
        raw = self._master(row["master_key_id"]).unwrap(
            bytes(row["wrapped"]), self._context(incident_id)
        )
        return IncidentKey(incident_id, raw[:KEY_BYTES], raw[KEY_BYTES:], self.pseudonyms)

    def _master(self, key_id: str) -> MasterKey:
        master = self.masters.get(key_id)
        if master is None:
            raise CryptoError(f"master key {key_id} is not configured (a previous one?)")
        return master

    async def rewrap(self, conn: asyncpg.Connection, limit: int = 500) -> int:
        """Re-wrap up to `limit` live keys still under an earlier master key; how many.

        Master-key rotation: configure the new key and the old one as previous, let
        this run until it returns 0, then remove the old key (and destroy it once no
        backup that needs it is kept). Destroyed keys have nothing to re-wrap.
        """
        rows = await conn.fetch(
            f"SELECT incident_id, master_key_id, wrapped FROM {self._table}"  # noqa: S608
            " WHERE wrapped IS NOT NULL AND master_key_id <> $1 AND master_key_id = ANY($2)"
            " ORDER BY incident_id LIMIT $3 FOR UPDATE SKIP LOCKED",
            self.master.key_id,
            list(self.masters),
            limit,
        )
        for row in rows:
            context = self._context(row["incident_id"])
            raw = self._master(row["master_key_id"]).unwrap(bytes(row["wrapped"]), context)
            await conn.execute(
                f"UPDATE {self._table} SET wrapped = $2, master_key_id = $3"  # noqa: S608
                " WHERE incident_id = $1",
                row["incident_id"],
                self.master.wrap(raw, context),
                self.master.key_id,
            )
        return len(rows)

    async def destroyed_at(self, conn: asyncpg.Connection, incident_id: str) -> datetime | None:
        value: datetime | None = await conn.fetchval(
            f"SELECT destroyed_at FROM {self._table} WHERE incident_id = $1",  # noqa: S608
            incident_id,
        )
        return value

    async def destroy(self, conn: asyncpg.Connection, incident_id: str) -> bool:
        """Destroy the incident's key (for good); False if it was already gone."""
        done = await conn.fetchval(
            f"UPDATE {self._table} SET wrapped = NULL, destroyed_at = clock_timestamp()"  # noqa: S608
            " WHERE incident_id = $1 AND destroyed_at IS NULL RETURNING 1",
            incident_id,
        )
        return bool(done)

    async def opener(
        self, conn: asyncpg.Connection, incident_id: str
    ) -> Callable[[str, str], str | None]:
        """`open(field, sealed)` for one incident: the plaintext, or None if unreadable."""
        key = await self.get(conn, incident_id)

        def open_field(field: str, sealed: str) -> str | None:
            if key is None:
                return None
            try:
                return key.open(field, sealed)
            except CryptoError:
                log.warning("a sealed %s of incident %s does not open", field, incident_id)
                return None

        return open_field

    async def reporter_of(
        self, conn: asyncpg.Connection, incident_id: str, events: Sequence[Envelope]
    ) -> str | None:
        """The reporter's person id, for access decisions only (never shown, never logged).

        Opened from the submission's sealed `reporter_identity`; an incident from before
        sealing carries the id in `reporter` (a pseudonym, `pn:`, is never an id). None
        when anonymous, or erased: then nobody can be told who reported any more.
        """
        submitted = next((e for e in events if e.type == ReportSubmitted.TYPE), None)
        if submitted is None:
            return None
        sealed = submitted.data.get("reporter_identity")
        if isinstance(sealed, str) and sealed:
            return (await self.opener(conn, incident_id))("reporter_identity", sealed)
        plain = submitted.data.get("reporter")
        return plain if isinstance(plain, str) and plain and not plain.startswith("pn:") else None

    async def open_events(
        self,
        conn: asyncpg.Connection,
        incident_id: str,
        events: Sequence[Envelope],
        *,
        fields: frozenset[str] = READER_FIELDS,
    ) -> list[Envelope]:
        """The incident's events with the sealed values of `fields` readable.

        Call after access checks. An allow-list: by default the content a reader is
        shown, never who reported (`CUSTODIAN_FIELDS` only on a custodian's path).
        """
        open_field = await self.opener(conn, incident_id)
        return [
            open_envelope(e, open_field, fields) if e.subject == incident_id else e for e in events
        ]


def key_store(
    master: SecretStr | None,
    master_file: Path | None,
    schema: str,
    pseudonyms: Pseudonyms | None = None,
    previous_files: Sequence[Path] = (),
) -> KeyStore:
    """The key store of a service, from its settings."""
    return KeyStore(
        master_key_of(master, master_file),
        schema,
        pseudonyms=pseudonyms,
        previous=[LocalMasterKey.from_file(p, create=False) for p in previous_files],
    )
