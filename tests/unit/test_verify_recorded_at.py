"""verify's fast loop skips the ``recorded_at`` pattern for a time it has just matched
(an append gives its whole batch one ``recorded_at``): a time that never matched is
still refused, however many entries share it, and both ways give the same report."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.audit.verify import MemorySource, verify_ledger
from services.domain.envelope import canonical_json
from tests.unit.test_verify_fast import SIGNER, _both_ways, _event_leaf, _put

SIZE = 12
SHARED = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def _batched_log() -> MemorySource:
    """Leaves in batches of four sharing one recorded_at, as appends write them."""
    leaves = []
    for i in range(SIZE):
        body = json.loads(_event_leaf(i))
        body["recorded_at"] = f"2026-11-25T09:00:0{i // 4}.000000Z"
        leaves.append(canonical_json(body))
    return MemorySource.build(SIGNER, leaves, [SIZE])


def _with_times(times: dict[int, Any]) -> MemorySource:
    base = _batched_log()
    log = MemorySource(base.key, base.head_docs, copy.deepcopy(base.rows), tree=base.tree)
    for index, recorded_at in times.items():
        body = json.loads(base64.b64decode(log.rows[index]["leaf"]))
        body["recorded_at"] = recorded_at
        _put(log.rows[index], canonical_json(body))
    return log


async def test_a_batch_sharing_one_recorded_at_verifies() -> None:
    report = await verify_ledger(_batched_log())
    assert report.ok and report.entries_checked == SIZE


@pytest.mark.parametrize("bad", ["", "yesterday", "2026-11-25T09:00:01.000000+00:00"])
async def test_a_bad_recorded_at_shared_by_neighbours_is_refused_on_each(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The skip only ever takes a time the pattern matched: two or three neighbours with
    the same bad time (the empty one included) are each named."""
    log = _with_times({4: bad, 5: bad, 6: bad})
    fast, slow = await _both_ways(log, monkeypatch)
    assert fast == slow
    assert not fast["ok"]
    assert fast["bad_indexes"] == [4, 5, 6]
    assert fast["problems"][:3] == [
        f"the leaf of entry {i} has no valid recorded_at" for i in (4, 5, 6)
    ]  # then the signed root, which the rewritten leaves no longer hash to
