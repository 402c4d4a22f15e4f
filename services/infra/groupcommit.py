"""Group commit: concurrent callers' writes share one PostgreSQL transaction.

Under load, many requests each wanting a small transaction of the same shape are
cheaper as one transaction of many rows: one BEGIN, one COMMIT (one WAL flush), and
one statement per table instead of one per row and request. `GroupCommit.submit`
queues an item and waits until the transaction that carries it has committed; a
writer task takes whatever is queued at that moment (up to `max_batch`) and runs
`write(conn, items)` inside one transaction. Under light load a batch is one item,
so nothing waits for company: there is no timer, only the queue.

If a shared transaction fails, each of its items is written again alone, so one bad
item fails only its own caller. Writer tasks run in an empty context: the SQL of a
batch belongs to no single request's trace, so it gets its own span, linked to the
span of every request it carries.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Generic, TypeVar

import asyncpg
from opentelemetry import trace

from services.infra import metrics
from services.infra.telemetry import tracer

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Write = Callable[[asyncpg.Connection, Sequence[T]], Awaitable[Sequence[R]]]
"""Writes items inside the caller's transaction; one result per item, in order."""


@dataclass
class _Queued(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    link: trace.Link | None = field(default=None)


@dataclass(eq=False, repr=False)
class GroupCommit(Generic[T, R]):
    """Runs `write` for queued items in shared transactions (see the module doc):
    `GroupCommit(pool, write, name=..., max_batch=..., writers=...)`."""

    _pool: Callable[[], asyncpg.Pool]
    _write: Write[T, R]
    _: KW_ONLY
    name: str
    max_batch: int = 64
    writers: int = 2
    _queue: list[_Queued[T, R]] = field(default_factory=list, init=False)
    _active: int = field(default=0, init=False)
    """Writers that will still look at the queue before they end."""
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    """Held, so none is collected."""

    async def submit(self, item: T) -> R:
        """Write `item` in the next shared transaction; its result once committed.

        Raises what writing it alone raised. If the caller is cancelled after the
        transaction began, the item may still commit (as with a lost HTTP answer).
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # A caller cancelled meanwhile never reads its future's error: read it here.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        context = trace.get_current_span().get_span_context()
        link = trace.Link(context) if context.is_valid else None
        self._queue.append(_Queued(item, future, link))
        if self._active < self.writers:
            self._active += 1
            # An empty context: the batch's spans are not the first caller's children.
            task = asyncio.get_running_loop().create_task(
                self._drain(), context=contextvars.Context()
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                try:
                    await self._commit(batch)
                except BaseException as exc:  # the task must never leave a caller waiting
                    for queued in batch:
                        if not queued.future.done():
                            queued.future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
        finally:
            # In the same step as the empty check above (no await between them), so an
            # item queued from now on finds a free writer slot and starts a writer; a
            # count kept by a done-callback would lag a step and could strand it.
            self._active -= 1

    async def _commit(self, batch: list[_Queued[T, R]]) -> None:
        links = [q.link for q in batch if q.link is not None]
        metrics.GROUP_COMMIT_BATCH.labels(self.name).observe(len(batch))
        with tracer.start_as_current_span(
            f"{self.name}: group commit", links=links, attributes={"batch.size": len(batch)}
        ):
            try:
                results = await self._transaction([q.item for q in batch])
            except Exception as exc:
                if len(batch) == 1:
                    batch[0].future.set_exception(exc)
                    return
                log.warning(
                    "%s: a shared transaction of %d failed (%r); writing each alone",
                    self.name,
                    len(batch),
                    exc,
                )
                for queued in batch:
                    try:
                        (result,) = await self._transaction([queued.item])
                    except Exception as alone:
                        queued.future.set_exception(alone)
                    else:
                        queued.future.set_result(result)
                return
        for queued, result in zip(batch, results, strict=True):
            queued.future.set_result(result)

    async def _transaction(self, items: Sequence[T]) -> Sequence[R]:
        async with self._pool().acquire() as conn, conn.transaction():
            results = await self._write(conn, items)
            if len(results) != len(items):  # before COMMIT: nothing of it stays
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
        return results
