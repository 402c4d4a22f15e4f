"""`infra.waits.first_of`: the first of several waits, or a time limit."""

from __future__ import annotations

import asyncio
import inspect

from services.infra.waits import first_of


async def test_it_returns_when_one_event_is_set_and_cancels_the_other_waits() -> None:
    one, other = asyncio.Event(), asyncio.Event()
    other_wait = other.wait()
    asyncio.get_running_loop().call_soon(one.set)
    await first_of([one.wait(), other_wait])
    assert one.is_set() and not other.is_set()
    await asyncio.sleep(0)  # the cancelled wait's task ends on the next turn
    assert inspect.getcoroutinestate(other_wait) == inspect.CORO_CLOSED  # cancelled


async def test_it_returns_after_the_limit_when_nothing_comes() -> None:
    never = asyncio.Event()
    await first_of([never.wait()], 0.01)
    assert not never.is_set()


async def test_a_task_it_was_given_is_left_running() -> None:
    release = asyncio.Event()
    task = asyncio.create_task(release.wait())
    await first_of([task], 0.01)
    assert not task.done()
    release.set()
    await task
    assert task.done() and not task.cancelled()
