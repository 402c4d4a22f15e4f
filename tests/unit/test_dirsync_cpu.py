"""The CPU accounting of the directory import figure (tooling/bench/dirsync.py)."""

from __future__ import annotations

import os

from tooling.bench.dirsync import _cpu_per_person, _cpu_seconds


def test_cpu_seconds_of_a_process_and_of_one_gone() -> None:
    spent = _cpu_seconds(os.getpid())
    sum(i * i for i in range(200_000))  # some CPU of this process
    assert _cpu_seconds(os.getpid()) >= spent > 0
    assert _cpu_seconds(2**22 + 1) == 0.0  # above the largest pid Linux gives


def test_cpu_per_person_counts_each_part_and_new_processes_from_zero() -> None:
    before = {"triage": {10: 1.0}, "postgresql (backends)": {20: 2.0}}
    after = {"triage": {10: 1.5}, "postgresql (backends)": {20: 2.25, 21: 0.25}}
    used = _cpu_per_person(before, after, 1000)
    assert used == {"triage": 500.0, "postgresql (backends)": 500.0, "total": 1000.0}
