"""`runtime.follow`: a background step woken by its producer instead of polling."""

from __future__ import annotations

import asyncio

from services.infra.runtime import follow


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_an_idle_step_waits_for_its_wake_up_not_for_the_spacing() -> None:
    stop, grew = asyncio.Event(), asyncio.Event()
    steps: list[int] = []

    async def step() -> bool:
        steps.append(len(steps))
        return False  # nothing left for later

    task = asyncio.create_task(follow(stop, grew, step, spacing=0.0, fallback=3600.0))
    await _turns()
    assert steps == [0]  # ran once, then waits (spacing 0 would otherwise spin)
    grew.set()
    await _turns()
    assert steps == [0, 1]
    await _turns()
    assert steps == [0, 1]  # the wake-up was consumed
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_step_that_left_work_runs_again_without_a_wake_up() -> None:
    stop, grew = asyncio.Event(), asyncio.Event()
    steps: list[int] = []

    async def step() -> bool:
        steps.append(len(steps))
        if len(steps) == 3:
            stop.set()
        return True  # something not yet due

    await asyncio.wait_for(follow(stop, grew, step, spacing=0.0, fallback=3600.0), 5)
    assert steps == [0, 1, 2]


async def test_stop_ends_the_wait_at_once() -> None:
    stop, grew = asyncio.Event(), asyncio.Event()

    async def step() -> bool:
        return False

    task = asyncio.create_task(follow(stop, grew, step, spacing=3600.0, fallback=3600.0))
    await _turns()
    stop.set()
    await asyncio.wait_for(task, 5)
