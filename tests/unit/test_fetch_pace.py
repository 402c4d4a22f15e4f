"""`kafka.FetchPace`: the fetch wait of a consumer follows the flow of records, and the
faust consumer thread drives it (`faust_internals._QuickFetchThread`).

Driven by a fake loop whose clock only moves when the test says so: no wall clock."""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from services.infra import faust_internals
from services.infra.kafka import FetchPace
from services.infra.settings import CommonSettings


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """`time()` and `call_later()` of an event loop, on a clock moved by `advance`."""

    def __init__(self) -> None:
        self.now = 100.0
        self._due: list[tuple[float, int, _Handle, Callable[[], None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle:
        assert delay >= 0
        handle = _Handle()
        heapq.heappush(self._due, (self.now + delay, next(self._order), handle, callback))
        return handle

    def pending(self) -> int:
        return sum(1 for _, _, handle, _ in self._due if not handle.cancelled)

    def advance(self, seconds: float) -> None:
        """Move the clock, running each callback that falls due, at its own instant."""
        end = self.now + seconds
        while self._due and self._due[0][0] <= end:
            due, _, handle, callback = heapq.heappop(self._due)
            if handle.cancelled:
                continue
            self.now = due
            callback()
        self.now = end


def _pace(short: int = 20, long: int = 500) -> tuple[FetchPace, FakeLoop, list[int]]:
    applied: list[int] = []
    pace = FetchPace(short, long, applied.append)
    loop = FakeLoop()
    pace.start(loop)  # type: ignore[arg-type]
    return pace, loop, applied


def test_waits_are_short_while_records_keep_coming() -> None:
    pace, loop, applied = _pace()
    for _ in range(100):  # a record every 40 ms (25/s) for 4 s
        loop.advance(0.04)
        pace.records()
    assert pace.wait_ms == 20
    assert applied == []
    assert loop.pending() == 1  # one check pending, not one per batch


N = FetchPace.STEP_WAITS


def _level_ends(short: int = 20, long: int = 500) -> list[tuple[float, int]]:
    """(instant after the last record, wait from then on) for each step up."""
    out, at, wait = [], 0.0, short
    while wait < long:
        at += N * wait / 1000
        wait = min(wait * 2, long)
        out.append((at, wait))
    return out


def test_the_wait_doubles_after_as_many_empty_waits_of_each_length_up_to_the_long_one() -> None:
    pace, loop, applied = _pace()
    loop.advance(N * 0.020 - 0.001)
    assert pace.wait_ms == 20
    loop.advance(0.002)  # N waits of 20 ms without a record
    assert applied == [40]
    loop.advance(N * 0.040)  # N of 40 ms
    assert applied == [40, 80]
    loop.advance(N * (0.080 + 0.160 + 0.320))
    assert applied == [40, 80, 160, 320, 500]
    assert loop.now - 100 == pytest.approx(_level_ends()[-1][0], abs=0.01)
    assert loop.pending() == 0  # at the long wait nothing wakes any more
    loop.advance(3600)
    assert applied == [40, 80, 160, 320, 500]


def test_a_record_after_a_quiet_spell_brings_the_short_wait_back_at_once() -> None:
    pace, loop, applied = _pace()
    loop.advance(60)
    assert pace.wait_ms == 500
    pace.records()
    assert applied[-1] == 20
    assert pace.wait_ms == 20
    loop.advance(N * 0.020 - 0.01)
    assert pace.wait_ms == 20
    loop.advance(0.02)
    assert pace.wait_ms == 40


def test_records_during_a_longer_wait_reschedule_the_check_for_the_short_one() -> None:
    pace, loop, _ = _pace()
    at_160 = _level_ends()[2][0]  # 160 ms from then until N * 160 ms later
    loop.advance(at_160 + 0.1)
    assert pace.wait_ms == 160
    pace.records()
    assert loop.pending() == 1  # the longer wait's check was dropped
    loop.advance(N * 0.020 + 0.01)
    assert pace.wait_ms == 40  # stepped up N short waits after the record


def test_the_wait_after_a_quiet_spell_grows_with_it_and_stops_at_the_long_one() -> None:
    """So a record after t seconds of quiet waits at most ~short/2 + t/(2 N) for its
    fetch (Tansu answers at about half the wait), never more than half the long wait."""
    for quiet in (0.1, 0.5, 1.0, 2.9, 7.0, 15.0, 16.0, 600.0):
        pace, loop, _ = _pace()
        pace.records()
        loop.advance(quiet)
        assert pace.wait_ms <= 20 + quiet * 1000 / N, quiet
        assert pace.wait_ms <= 500
        assert pace.wait_ms == max([20] + [w for at, w in _level_ends() if at <= quiet]), quiet


def test_stop_drops_the_pending_check_and_start_begins_short_again() -> None:
    pace, loop, applied = _pace()
    loop.advance(60)
    assert pace.wait_ms == 500
    pace.stop()
    assert loop.pending() == 0
    pace.start(loop)  # type: ignore[arg-type]
    assert pace.wait_ms == 20
    assert applied[-1] == 20
    assert loop.pending() == 1


def test_records_before_start_do_nothing() -> None:
    applied: list[int] = []
    pace = FetchPace(20, 500, applied.append)
    pace.records()
    assert not pace.started
    assert applied == []


def test_a_long_wait_below_the_short_one_keeps_the_short_one() -> None:
    pace, loop, applied = _pace(short=50, long=10)
    loop.advance(60)
    assert pace.wait_ms == 50
    assert applied == []


def test_the_settings_give_the_short_and_the_idle_wait() -> None:
    settings = CommonSettings(kafka_fetch_max_wait_ms=15, kafka_fetch_idle_wait_ms=300)
    pace = FetchPace.of(settings, lambda _: None)
    assert (pace.short_ms, pace.long_ms) == (15, 300)


def test_the_pace_uses_the_running_loop_when_given_none() -> None:
    applied: list[int] = []
    pace = FetchPace(1, 4, applied.append)

    async def main() -> None:
        pace.start()
        for _ in range(500):  # 10 ms at 1 ms, then 20 ms at 2 ms (bounded: 5 s)
            if len(applied) >= 2:
                break
            await asyncio.sleep(0.01)
        pace.stop()

    asyncio.run(main())
    assert applied[:2] == [2, 4]


# ---------------------------------------------- the faust consumer thread's side


def test_the_fetch_records_override_keeps_fausts_signature() -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    ours = inspect.signature(faust_internals._QuickFetchThread._fetch_records)
    theirs = inspect.signature(faust_aiokafka.AIOKafkaConsumerThread._fetch_records)
    assert list(ours.parameters) == list(theirs.parameters)


def test_the_fetcher_reads_its_wait_for_each_fetch_request() -> None:
    """`set_consumer_fetch_wait` works on a running consumer because the fetcher reads
    the attribute where it builds each request, not once at start."""
    from aiokafka.consumer.fetcher import Fetcher

    source = inspect.getsource(Fetcher._get_actions_per_node)
    assert "self._fetch_max_wait_ms" in source


def test_set_consumer_fetch_wait_sets_the_consumer_and_its_fetcher() -> None:
    class Fetcher:
        _fetch_max_wait_ms = 20

    class Consumer:
        _fetch_max_wait_ms = 20
        _fetcher: Any = None

    consumer = Consumer()
    faust_internals.set_consumer_fetch_wait(consumer, 300)
    assert consumer._fetch_max_wait_ms == 300  # not started: passed on at start
    consumer._fetcher = Fetcher()
    faust_internals.set_consumer_fetch_wait(consumer, 40)
    assert (consumer._fetch_max_wait_ms, consumer._fetcher._fetch_max_wait_ms) == (40, 40)


class _Pace:
    def __init__(self) -> None:
        self.started = False
        self.calls: list[str] = []

    def start(self) -> None:
        self.started = True
        self.calls.append("start")

    def records(self) -> None:
        self.calls.append("records")

    def stop(self) -> None:
        self.calls.append("stop")


@pytest.mark.parametrize("fetched", [{}, {"tp": ["r"]}])
def test_the_consumer_thread_starts_the_pace_and_tells_it_of_records(
    monkeypatch: pytest.MonkeyPatch, fetched: dict[str, list[str]]
) -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    async def parent(*args: Any, **kwargs: Any) -> dict[str, list[str]]:
        return fetched

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records", parent)
    thread = object.__new__(faust_internals._QuickFetchThread)
    pace = _Pace()
    thread._pace = pace
    got = asyncio.run(thread._fetch_records(object(), set(), timeout=0.1, max_records=10))
    assert got == fetched
    assert pace.calls == (["start", "records"] if fetched else ["start"])
    asyncio.run(thread._fetch_records(object(), set()))
    assert pace.calls.count("start") == 1


def test_a_consumer_loop_paces_the_consumer_it_runs_now() -> None:
    from services.infra.kafka import ConsumerLoop, fetch_wait_setter

    async def nothing(*_: Any) -> None:
        return None

    loop = ConsumerLoop(
        CommonSettings(), group="g", topics=["t"], handler=nothing, on_poison=nothing
    )
    assert (loop.pace.short_ms, loop.pace.long_ms) == (20, 500)

    class Consumer:
        _fetch_max_wait_ms = 20
        _fetcher: Any = None

    consumer = Consumer()
    loop._set_wait = fetch_wait_setter()
    loop._apply_wait(300)  # no consumer running: nothing to set
    assert consumer._fetch_max_wait_ms == 20
    loop._current = consumer  # type: ignore[assignment]
    loop._apply_wait(300)
    assert consumer._fetch_max_wait_ms == 300
