"""faust agents against `ConsumerLoop`s: idle CPU, latency and CPU per record.

The figures behind the choice in docs/architecture.md ("faust's internals, in one
guarded module"). One kind per process, so the CPU figures are that kind's own:

    .venv/bin/python -m bench.agent_consumers faust 127.0.0.1:9092 3
    .venv/bin/python -m bench.agent_consumers loop 127.0.0.1:9092 3    # a loop per agent
    .venv/bin/python -m bench.agent_consumers loop1 127.0.0.1:9092 3   # one loop, all topics

against a running broker (`incidents up`, or a `Tansu.start()`). It prints one JSON
line: idle CPU over 20 s (ms of CPU per second), the lateness of 300 records sent 20 ms
apart (p50, p99, ms), and the CPU to consume 20,000 records of 200 bytes (µs per
record; the producer's own CPU, measured on a topic nobody reads, taken off).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.infra.kafka import ConsumerLoop, ensure_topics
from services.infra.settings import CommonSettings

IDLE_SECONDS = 20
PACED = 300
BURST = 20_000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Runtime:
    """What `add_agent` needs of a runtime: nothing is poisoned or forged here."""

    async def dead_letter_poison(self, record: ConsumerRecord, exc: BaseException) -> None:
        raise AssertionError(f"poisoned: {exc!r}")

    async def screen(self, records: Sequence[ConsumerRecord]) -> list[ConsumerRecord]:
        return list(records)


async def _start(
    kind: str,
    settings: CommonSettings,
    topics: list[str],
    handler: Callable[[Sequence[ConsumerRecord]], Awaitable[None]],
    stop: asyncio.Event,
) -> Callable[[], Awaitable[None]]:
    """Start the consumers of `kind`; returns how to stop them."""
    runtime = _Runtime()
    if kind == "faust":
        from faust.contrib.asgi import faust_app_running

        from services.infra.faustapp import add_agent, make_faust_app

        app = make_faust_app(settings, f"bench{os.getpid()}")
        for i, topic in enumerate(topics):
            add_agent(app, runtime, name=f"a{i}", topics=[topic], handler=handler)  # type: ignore[arg-type]
        running = faust_app_running(app, stop_timeout=5)
        await running.__aenter__()

        async def stop_faust() -> None:
            await running.__aexit__(None, None, None)

        return stop_faust
    groups = [topics] if kind == "loop1" else [[t] for t in topics]
    loops = [
        ConsumerLoop(
            settings,
            group=f"bench{os.getpid()}-{i}",
            topics=group,
            handler=handler,
            on_poison=runtime.dead_letter_poison,
            gate=runtime.screen,
        )
        for i, group in enumerate(groups)
    ]
    tasks = [asyncio.create_task(loop.run(stop)) for loop in loops]

    async def stop_loops() -> None:
        stop.set()
        await asyncio.gather(*tasks)

    return stop_loops


async def _burst(producer: AIOKafkaProducer, topics: list[str], n: int) -> None:
    sent = [
        await producer.send(topics[i % len(topics)], b"v" * 200, key=str(i).encode())
        for i in range(n)
    ]
    await asyncio.gather(*sent)


async def measure(kind: str, bootstrap: str, agents: int) -> dict[str, object]:
    """One run of `kind` ('faust', 'loop' or 'loop1') with `agents` topics."""
    settings = CommonSettings(
        kafka_bootstrap=bootstrap,
        kafka_topic_prefix=f"bench{os.getpid()}.",
        environment="test",
        kafka_fetch_max_wait_ms=20,
    )
    topics = [settings.topic(f"t{i}") for i in range(agents)]
    unread = settings.topic("unread")
    await ensure_topics(settings, [*topics, unread])
    lateness: list[float] = []
    wanted = [0]
    arrived = asyncio.Event()

    async def handler(records: Sequence[ConsumerRecord]) -> None:
        now = time.time() * 1000
        lateness.extend(now - r.timestamp for r in records)
        if len(lateness) >= wanted[0]:
            arrived.set()

    async def until(count: int) -> None:
        """Until `count` records arrived since `lateness` was cleared."""
        wanted[0] = count
        arrived.clear()
        if len(lateness) < count:
            await arrived.wait()

    stop_consumers = await _start(kind, settings, topics, handler, asyncio.Event())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        started = time.monotonic()
        while len(lateness) < len(topics):  # every agent has joined and reads
            lateness.clear()
            for topic in topics:
                await producer.send_and_wait(topic, b"w", key=b"w")
            await asyncio.sleep(1.0)
            if time.monotonic() - started > 120:
                raise TimeoutError("the consumers never read")
        await asyncio.sleep(3)
        cpu, wall = _cpu(), time.monotonic()
        await asyncio.sleep(IDLE_SECONDS)
        idle = (_cpu() - cpu) / (time.monotonic() - wall) * 1000
        lateness.clear()
        for i in range(PACED):
            await producer.send_and_wait(topics[i % len(topics)], b"v" * 200, key=str(i).encode())
            await asyncio.sleep(0.02)
        await until(PACED)
        paced = sorted(lateness)
        cpu = _cpu()
        await _burst(producer, [unread], BURST)
        producing = _cpu() - cpu
        await asyncio.sleep(2)
        lateness.clear()
        cpu = _cpu()
        await _burst(producer, topics, BURST)
        await until(BURST)
        consuming = _cpu() - cpu - producing
    finally:
        await producer.stop()
        await stop_consumers()
    return {
        "kind": kind,
        "agents": agents,
        "idle_cpu_ms_per_s": round(idle, 1),
        "paced_p50_ms": round(statistics.median(paced), 2),
        "paced_p99_ms": round(paced[int(len(paced) * 0.99)], 2),
        "consume_cpu_us_per_record": round(consuming / BURST * 1e6, 1),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(sys.argv[1], sys.argv[2], int(sys.argv[3])))))
