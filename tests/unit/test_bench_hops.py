"""`tooling.bench.hops`: the per-hop breakdown of end-to-end latency, on synthetic
instants (no stack, no clock)."""

from __future__ import annotations

import math

import pytest

from tooling.bench import hops
from tooling.bench.hops import HOPS, INSTANTS, breakdown, lines


def _path(start: float, durations_ms: list[float]) -> dict[str, float | None]:
    """A path whose hops last `durations_ms`, in order, from `start` (seconds)."""
    assert len(durations_ms) == len(HOPS)
    at = start
    path: dict[str, float | None] = {INSTANTS[0]: at}
    for name, ms in zip(INSTANTS[1:], durations_ms, strict=True):
        at += ms / 1000
        path[name] = at
    return path


def test_the_hops_follow_the_instants_in_order() -> None:
    assert [start for _, start, _ in HOPS] == list(INSTANTS[:-1])
    assert [end for _, _, end in HOPS] == list(INSTANTS[1:])


def test_each_hop_is_the_difference_of_its_instants() -> None:
    result = breakdown([_path(1_700_000_000.0, [1, 2, 3, 4, 5, 6])])
    assert [r.p50 for r in result.rows] == pytest.approx([1, 2, 3, 4, 5, 6], abs=1e-3)
    assert [r.at_p50 for r in result.rows] == pytest.approx([1, 2, 3, 4, 5, 6], abs=1e-3)
    assert result.total_p50 == pytest.approx(21, abs=1e-3)
    assert (result.reports, result.complete, result.band) == (1, 1, 1)


def test_the_p50_column_averages_the_reports_around_the_median_and_adds_up() -> None:
    # 100 reports: total = 10 + i ms, all of the growth in the bus → triage hop,
    # except that the slowest ten wait in the relay instead.
    paths = []
    for i in range(100):
        relay = 30.0 if i >= 90 else 1.0
        paths.append(_path(1000.0 + i, [2.0, relay, 3.0 + i, 2.0, 1.0, 1.0]))
    result = breakdown(paths)
    # p40..p60 of the totals: reports 39..59 (nearest rank), all with a 1 ms relay
    assert result.band == 21
    relay_row = result.rows[1]
    assert relay_row.at_p50 == pytest.approx(1.0)
    assert relay_row.p50 == pytest.approx(1.0)
    assert relay_row.p99 == pytest.approx(30.0)
    bus_row = result.rows[2]
    assert bus_row.at_p50 == pytest.approx(3.0 + 49)  # mean of 42..62
    assert sum(r.at_p50 for r in result.rows) == pytest.approx(result.total_at_p50)
    assert result.total_at_p50 == pytest.approx(result.total_p50, abs=1.0)


def test_paths_missing_an_instant_are_counted_but_left_out_of_every_row() -> None:
    whole = _path(10.0, [1, 1, 1, 1, 1, 1])
    broken = _path(20.0, [100, 100, 100, 100, 100, 100])
    broken["triage_took"] = None
    result = breakdown([whole, broken])
    assert (result.reports, result.complete) == (2, 1)
    assert all(r.p99 == pytest.approx(1.0) for r in result.rows)


def test_no_complete_path_gives_nan_rows_not_an_error() -> None:
    result = breakdown([dict.fromkeys(INSTANTS)])
    assert result.complete == 0
    assert all(math.isnan(r.at_p50) and math.isnan(r.p50) for r in result.rows)
    assert result.to_json()["total_p50_ms"] is None  # JSON-safe


def test_the_table_has_a_row_per_hop_the_total_and_the_bus_baseline() -> None:
    result = breakdown([_path(5.0, [1, 2, 3, 4, 5, 6])])
    text = lines(result, bus_p50=2.5, bus_p99=4.0)
    assert len(text) == 1 + len(HOPS) + 2
    assert text[1].startswith(HOPS[0][0]) and text[1].split()[-3:] == ["1.0", "1.0", "1.0"]
    assert text[-2].split()[-3:] == ["21.0", "21.0", "21.0"]
    assert "bus round trip" in text[-1] and "2.5" in text[-1] and "4.0" in text[-1]


def test_json_has_every_hop() -> None:
    got = breakdown([_path(5.0, [1, 2, 3, 4, 5, 6])]).to_json()
    assert [h["hop"] for h in got["hops"]] == [label for label, _, _ in hops.HOPS]
    assert got["hops"][5]["p50_ms"] == pytest.approx(6.0)
