"""The attachment figures of issue 22: upload and download throughput of one file through
intake's routes, beside a raw write and read of the same bytes to PostgreSQL.

An anonymous report is routed to a handler (routing rows written as triage's decision
would write them, where no triage's decision came first), who uploads a file of `size` bytes
(a PDF header and random bytes: nothing for compression to gain) and downloads it again,
`rounds` times; the figures are the medians in MB/s (10^6 bytes). The baselines, in the
same run against the same PostgreSQL: plain asyncpg writing the same bytes as one
`bytea` row in one transaction, and reading it back. What the routes add: HTTP on
loopback, the access decision, the type check, sealing in 1 MiB chunks (AES-256-GCM),
the digest, the chunk rows, the recorded events, and on the way back opening each chunk.
"""

from __future__ import annotations

import os
import statistics
import time

import asyncpg
import httpx

from tooling.bench.figures import REPORT, Target
from tooling.bench.refusals import _route
from tooling.bench.report import Figure

HANDLER = "dev-chen-token"
MB = 1_000_000
MIB = 1024 * 1024
UP = (
    "HTTP on loopback, the access decision, the type check, the salted digest, AES-256-GCM"
    " sealing of 1 MiB chunks, one row per chunk and the recorded event, in one"
    " transaction; the baseline is one bytea row in one statement."
)
DOWN = (
    "The access decision and the recorded download (committed first), then one SELECT"
    " and one AES-256-GCM opening per 1 MiB chunk, over HTTP on loopback; the baseline"
    " is one SELECT of one bytea row."
)


async def attachment_figures(
    target: Target, *, size: int = 20 * 1024 * 1024, rounds: int = 3
) -> list[Figure]:
    """Upload and download MB/s of a `size`-byte file, beside plain asyncpg's."""
    content = b"%PDF-1.7\n" + os.urandom(size - 9)
    headers = {"authorization": f"Bearer {HANDLER}", "x-filename": "bench.pdf"}
    uploads: list[float] = []
    downloads: list[float] = []
    async with httpx.AsyncClient(base_url=target.intake_url, timeout=300.0) as http:
        answer = await http.post("/v1/reports", json=REPORT)
        answer.raise_for_status()
        incident = str(answer.json()["incident_id"])
        await _route(target, incident)
        for _ in range(rounds):
            began = time.perf_counter()
            stored = await http.post(
                f"/v1/incidents/{incident}/attachments", content=content, headers=headers
            )
            uploads.append(time.perf_counter() - began)
            stored.raise_for_status()
            path = f"/v1/incidents/{incident}/attachments/{stored.json()['attachment_id']}"
            began = time.perf_counter()
            got = await http.get(path, headers=headers)
            downloads.append(time.perf_counter() - began)
            got.raise_for_status()
            if got.content != content:
                raise AssertionError("the downloaded file differs from the uploaded one")
    writes, reads = await _raw(target, content, rounds)
    return [
        _figure("attachments.upload", "upload", size, uploads, writes, "raw INSERT", UP),
        _figure("attachments.download", "download", size, downloads, reads, "raw SELECT", DOWN),
    ]


async def _raw(target: Target, content: bytes, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds to write the bytes as one row (one transaction) and to read them back."""
    if target.database_url is None:
        raise ValueError("the attachment figures need the database")
    conn = await asyncpg.connect(target.database_url)
    writes: list[float] = []
    reads: list[float] = []
    try:
        await conn.execute("CREATE TEMPORARY TABLE bench_raw_files (id int, body bytea)")
        for n in range(rounds):
            began = time.perf_counter()
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_raw_files VALUES ($1, $2)", n, content)
            writes.append(time.perf_counter() - began)
            began = time.perf_counter()
            body = await conn.fetchval("SELECT body FROM bench_raw_files WHERE id = $1", n)
            reads.append(time.perf_counter() - began)
            if bytes(body) != content:
                raise AssertionError("the raw read differs from the raw write")
    finally:
        await conn.close()
    return writes, reads


def _figure(
    key: str,
    what: str,
    size: int,
    seconds: list[float],
    raw: list[float],
    raw_name: str,
    limit: str,
) -> Figure:
    rate = size / MB / statistics.median(seconds)
    baseline = size / MB / statistics.median(raw)
    return Figure(
        key=key,
        name=f"attachment {what}, {size / MIB:g} MiB file (MB/s, median of {len(seconds)})",
        value=rate,
        unit="MB/s",
        shown=f"{rate:.0f} MB/s ({statistics.median(seconds) * 1000:.0f} ms)",
        baseline_name=f"plain asyncpg {raw_name} of the same bytes",
        baseline=baseline,
        baseline_shown=f"{baseline:.0f} MB/s ({statistics.median(raw) * 1000:.0f} ms)",
        limit=limit + " One client, one file at a time.",
        details={
            "bytes": size,
            "seconds": seconds,
            "baseline_seconds": raw,
        },
    )
