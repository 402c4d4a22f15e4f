"""One log, one identity: the signing key is bound to the log it signs (issue 19).

Each audit database holds a log id, made with the database (migration 0005) and never
changed. Beside the signing key, `<key file>.log` records the log that key signs
(`{"log_id", "origin", "key_id"}`), written on the key's first start with a database.
Audit refuses to start when its key is bound to another log: a fresh or replaced
database would otherwise continue under the key and origin of an earlier log, so two
different trees would be signed as one log and every earlier head and receipt would
contradict the new ones. The way out is deliberate: give the new log its own key
(`INCIDENTS_SIGNING_KEY_FILE`), or move the old key and its `.log` file away (outside
production a new key is then made). Where the key lives on a read-only mount (a
Kubernetes or Compose secret) the binding cannot be written: audit warns and starts,
and the witnesses, which never cosign a smaller or forked tree, remain the check.

The other direction holds too: a log whose latest signed head does not verify under this
key was signed by another key (`check_latest_head`), and audit refuses to start rather
than sign new heads on top of it under a second key, which no verifier would accept.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import asyncpg

from services.audit.checkpoint import NoteError, NoteSigner

log = logging.getLogger(__name__)


class LogIdentityError(RuntimeError):
    """The signing key already signed a different log."""


def binding_path(key_file: Path) -> Path:
    """Where the log a key signs is recorded: beside the key, `<key file>.log`."""
    return key_file.with_name(key_file.name + ".log")


def bind(key_file: Path, signer: NoteSigner, log_id: str) -> None:
    """Bind the key to `log_id` on first use; LogIdentityError if it signs another log."""
    path = binding_path(key_file)
    record = {"log_id": log_id, "origin": signer.name, "key_id": signer.key_id}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # bound before (or by another instance just now): compare
        pass
    except OSError as exc:  # a read-only secret mount: nothing to compare against
        log.warning(
            "cannot record the log of the signing key beside it (%s): the one-key-one-log"
            " check is off; witnesses still refuse to cosign a restarted or forked log",
            exc,
        )
        return
    else:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        return
    try:
        bound = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LogIdentityError(
            f"{path} cannot be read ({exc}); it names the log that {key_file} signs"
        ) from None
    if not isinstance(bound, dict) or bound.get("log_id") != log_id:
        other = bound.get("log_id") if isinstance(bound, dict) else bound
        raise LogIdentityError(
            f"the signing key {key_file} (key id {signer.key_id}, origin {signer.name}) signs"
            f" the log {other}, but this database holds the log {log_id}: one key and origin"
            " sign one log only. Give this log its own key (INCIDENTS_SIGNING_KEY_FILE), or,"
            f" if the earlier log is gone for good, move {key_file} and {path} away."
        )


async def log_id_of(database_url: str, schema: str) -> str:
    """The log id stored in audit's schema (made by migration 0005)."""
    conn = await asyncpg.connect(database_url)
    try:
        value = await conn.fetchval(f'SELECT log_id FROM "{schema}".ledger_log')  # noqa: S608
    finally:
        await conn.close()
    return str(value)


def check_latest_head(signer: NoteSigner, tree_size: int, key_id: str, checkpoint: str) -> None:
    """LogIdentityError unless the log's latest signed head verifies under `signer`'s key."""
    try:
        signer.verifier().verify(checkpoint)
    except NoteError:
        raise LogIdentityError(
            f"this log's latest signed head (tree size {tree_size}) was signed by key id"
            f" {key_id}, not by this service's key (key id {signer.key_id}): a log is signed"
            " by one key. Start audit with the key that signed it"
            " (INCIDENTS_SIGNING_KEY_FILE); a new key means a new log (a new database)."
        ) from None


async def bind_to_database(
    key_file: Path, signer: NoteSigner, database_url: str, schema: str
) -> None:
    """`bind` the key to the log of this database, and check that the log's latest head
    was signed by this key (a step before audit starts)."""
    bind(key_file, signer, await log_id_of(database_url, schema))
    conn = await asyncpg.connect(database_url)
    try:
        head = await conn.fetchrow(
            f'SELECT tree_size, key_id, checkpoint FROM "{schema}".ledger_heads'  # noqa: S608
            " ORDER BY tree_size DESC LIMIT 1"
        )
    finally:
        await conn.close()
    if head is not None:
        check_latest_head(signer, head["tree_size"], head["key_id"], head["checkpoint"])
