"""Evidence files' sealed chunks in an S3-compatible object store (a production option).

`INCIDENTS_ATTACHMENT_STORE=s3` puts each sealed chunk in its own object,
`<prefix><attachment id>/<index>`, of `INCIDENTS_ATTACHMENT_S3_BUCKET` (at
`INCIDENTS_ATTACHMENT_S3_ENDPOINT`: AWS, MinIO, Ceph, ...). The objects hold only
ciphertext sealed with the incident's data key (`services.intake.attachments`), so the
store never sees a file's content, name or incident, and destroying the key (erasure)
makes them unreadable even where a copy survives. The file's row, its chunk count and
its event stay in PostgreSQL, in the upload's short transaction: `put` writes the
objects just before it commits and `discard` deletes them when it does not, so an
aborted upload leaves no row and, unless the process dies in between, no object.

Credentials: `INCIDENTS_ATTACHMENT_S3_ACCESS_KEY_ID` with the secret key in the file
`INCIDENTS_ATTACHMENT_S3_SECRET_ACCESS_KEY_FILE` (a mounted secret), or neither: the AWS
default chain (AWS_* variables, the pod's or instance's role). The client is aiobotocore
(the `s3` extra: `pip install "incidents[s3]"`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

DELETE_BATCH = 1000
"""Most keys one DeleteObjects request takes (the S3 API's limit)."""


@dataclass(frozen=True)
class S3Place:
    """Where the chunks go, and as whom (the `attachment_s3_*` settings)."""

    endpoint: str | None
    region: str
    bucket: str
    prefix: str = ""
    access_key_id: str | None = None
    secret_access_key_file: Path | None = None

    @classmethod
    def of(cls, settings: Any) -> S3Place:
        """The place the settings name: each field is the setting `attachment_s3_<field>`."""
        return cls(**{f.name: getattr(settings, f"attachment_s3_{f.name}") for f in fields(cls)})

    def secret_access_key(self) -> str | None:
        """The secret key read from its file; None: the default chain."""
        if self.secret_access_key_file is None:
            return None
        return self.secret_access_key_file.read_text(encoding="utf-8").strip()


class S3Chunks:
    """A `ChunkStore` over an S3 bucket; one long-lived client, opened on first use."""

    def __init__(self, place: S3Place) -> None:
        self.place = place
        self._client: S3Client | None = None
        self._opening = asyncio.Lock()

    def key(self, attachment_id: str, index: int) -> str:
        return f"{self.place.prefix}{attachment_id}/{index}"

    async def client(self) -> S3Client:
        async with self._opening:
            if self._client is None:
                creator = get_session().create_client(
                    "s3",
                    endpoint_url=self.place.endpoint,
                    region_name=self.place.region,
                    aws_access_key_id=self.place.access_key_id,
                    aws_secret_access_key=self.place.secret_access_key(),
                )
                self._client = await creator.__aenter__()
            return self._client

    async def aclose(self) -> None:
        """Close the client (a later call opens another)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def put(
        self, conn: asyncpg.Connection, attachment_id: str, index: int, sealed: bytes
    ) -> None:
        client = await self.client()
        await client.put_object(
            Bucket=self.place.bucket, Key=self.key(attachment_id, index), Body=sealed
        )

    async def discard(self, attachment_id: str, count: int) -> None:
        await self._delete([self.key(attachment_id, i) for i in range(count)])

    async def get(self, db: asyncpg.Pool, attachment_id: str, index: int) -> bytes | None:
        client = await self.client()
        try:
            answer = await client.get_object(
                Bucket=self.place.bucket, Key=self.key(attachment_id, index)
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        async with answer["Body"] as body:
            return bytes(await body.read())

    async def delete_incident(self, conn: asyncpg.Connection, incident_id: str) -> int:
        """Delete the incident's rows (in the caller's transaction) and their objects."""
        rows = await conn.fetch(
            "DELETE FROM attachments WHERE incident_id = $1 RETURNING attachment_id, chunks",
            incident_id,
        )
        await self._delete(
            [self.key(r["attachment_id"], i) for r in rows for i in range(r["chunks"])]
        )
        return len(rows)

    async def _delete(self, keys: list[str]) -> None:
        if not keys:
            return
        client = await self.client()
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            await client.delete_objects(
                Bucket=self.place.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
