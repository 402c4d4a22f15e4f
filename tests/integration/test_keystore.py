"""The key store on a real PostgreSQL: keys open, are destroyed for good, and rotate."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.infra.crypto import CryptoError, LocalMasterKey
from services.infra.keystore import KeyStore

pytestmark = pytest.mark.integration


def master() -> LocalMasterKey:
    return LocalMasterKey(secrets.token_bytes(32))


@pytest.fixture
async def conn(fresh_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    await KeyStore(master(), "keys").migrate(fresh_database_url)
    connection = await asyncpg.connect(fresh_database_url)
    yield connection
    await connection.close()


async def test_a_destroyed_key_is_gone_for_good_and_rows_are_never_deleted(
    conn: asyncpg.Connection,
) -> None:
    store = KeyStore(master(), "keys")
    key = await store.create(conn, "inc-1")
    sealed = key.seal("summary", "he grabbed me")
    again = await store.get(conn, "inc-1")
    assert again is not None and again.open("summary", sealed) == "he grabbed me"
    assert (await store.create(conn, "inc-1")).data_key == key.data_key  # one key
    assert await store.destroy(conn, "inc-1") and not await store.destroy(conn, "inc-1")
    assert await store.get(conn, "inc-1") is None
    with pytest.raises(CryptoError, match="destroyed"):
        await store.create(conn, "inc-1")
    open_field = await store.opener(conn, "inc-1")
    assert open_field("summary", sealed) is None
    # not even the table's owner brings it back, changes it or deletes the row
    with pytest.raises(asyncpg.RaiseError, match="destroyed"):
        await conn.execute(
            "UPDATE keys.data_keys SET wrapped = '\\x00', destroyed_at = NULL"
            " WHERE incident_id = 'inc-1'"
        )
    await store.create(conn, "inc-2")
    with pytest.raises(asyncpg.RaiseError, match="never deleted"):
        await conn.execute("DELETE FROM keys.data_keys WHERE incident_id = 'inc-2'")
    with pytest.raises(asyncpg.RaiseError, match="another master key"):
        await conn.execute(
            "UPDATE keys.data_keys SET wrapped = '\\x00' WHERE incident_id = 'inc-2'"
        )


async def test_rotation_rewraps_live_keys_under_the_new_master_key(
    conn: asyncpg.Connection,
) -> None:
    old, new = master(), master()
    before = KeyStore(old, "keys")
    sealed = {}
    for n in range(3):
        key = await before.create(conn, f"inc-{n}")
        sealed[f"inc-{n}"] = key.seal("description", f"text {n}")
    await before.destroy(conn, "inc-2")

    with pytest.raises(CryptoError, match="not configured"):
        await KeyStore(new, "keys").get(conn, "inc-0")  # the old master is still needed
    rotating = KeyStore(new, "keys", previous=[old])
    assert (await rotating.get(conn, "inc-0")).open("description", sealed["inc-0"]) == "text 0"  # type: ignore[union-attr]
    async with conn.transaction():
        assert await rotating.rewrap(conn, limit=1) == 1
    async with conn.transaction():
        assert await rotating.rewrap(conn) == 1  # inc-1; the destroyed inc-2 has no key
    assert await rotating.rewrap(conn) == 0

    after = KeyStore(new, "keys")  # the old master key can go now
    for n in range(2):
        key = await after.get(conn, f"inc-{n}")
        assert key is not None and key.open("description", sealed[f"inc-{n}"]) == f"text {n}"
    assert await after.get(conn, "inc-2") is None
    ids = {r["master_key_id"] for r in await conn.fetch("SELECT * FROM keys.data_keys")}
    assert ids == {new.key_id, old.key_id}  # the destroyed row keeps the id it had
    with pytest.raises(CryptoError):
        await KeyStore(old, "keys").get(conn, "inc-0")
