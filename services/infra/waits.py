"""Waiting for the first of several things, in one place.

The relay, the escalation loops and `runtime.follow` each sleep until one of a few
events is set (new work, stop) or a time passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence


async def first_of(waits: Sequence[Awaitable[object]], within: float | None = None) -> None:
    """Return when the first of `waits` is done, or after `within` seconds (None: no
    limit); cancel the rest (tasks given are kept: their owner decides)."""
    futures = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(futures, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, wait in zip(futures, waits, strict=True):
            if future is not wait:
                future.cancel()
