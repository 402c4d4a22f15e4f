"""The replay's fold over plain dicts gives what the fold over `IncidentState`s gave.

`incidents_as_of` keeps each incident's fields in a dict updated by `data_changes`; the
reference below is the replay as it was before (a new `IncidentState` per event by
`apply_data`, `apply` for what the JSON fold cannot read). Random ledgers of valid,
broken and foreign events, cut at random instants, must give equal states.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.audit.checkpoint import NoteSigner
from services.audit.cli import _aware, _Fold, incidents_as_of
from services.audit.verify import MemorySource
from services.domain.envelope import utc_rfc3339
from services.domain.events import InvalidEvent, parse_envelope
from services.domain.incident import IncidentState, apply, apply_data
from tests.unit.test_replay_json import T0, ack, leaf_log, life
from tests.unit.test_verify import _leaf

SUBJECTS = ("inc-1", "inc-2", "inc-3")


def reference(source: MemorySource, moment: datetime) -> dict[str, Any]:
    """The replay before plain dicts (services/audit/cli.py at c6e76d4)."""
    states: dict[str, Any] = {}
    cutoff = utc_rfc3339(moment)
    for entry in source.rows:
        body = orjson.loads(base64.b64decode(entry["leaf"]))
        if body["recorded_at"] > cutoff:
            break
        event = body.get("event")
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if (
            not isinstance(kind, str)
            or not kind.startswith("incident.")
            or kind == "incident.input.rejected.v1"
        ):
            continue
        subject = event.get("subject")
        state = states.get(subject) if isinstance(subject, str) else None
        if isinstance(state, str):
            continue
        try:
            if not isinstance(subject, str) or not subject:
                raise TypeError("no subject")
            time = datetime.fromisoformat(event["time"])
            if time.tzinfo is not UTC:
                time = _aware(time)
            states[subject] = apply_data(
                state or IncidentState(incident_id=subject), kind, time, event["data"]
            )
            continue
        except (KeyError, TypeError, ValueError):
            pass
        try:
            envelope = parse_envelope(event)
        except InvalidEvent:
            continue
        try:
            states[envelope.subject] = apply(
                states.get(envelope.subject) or IncidentState(incident_id=envelope.subject),
                envelope,
            )
        except ValueError as exc:
            states[envelope.subject] = f"cannot replay: {exc}"
    return states


VALID = [e.to_dict() for e in life()]
BREAKS: dict[str, Any] = {
    "as-is": lambda e: e,
    "no-principal": lambda e: {
        **e,
        "data": {k: v for k, v in e["data"].items() if k != "principal"},
    },
    "no-data": lambda e: {k: v for k, v in e.items() if k != "data"},
    "data-list": lambda e: {**e, "data": [1]},
    "unknown-type": lambda e: {**e, "type": "incident.nonsense.v1"},
    "foreign-type": lambda e: {**e, "type": "directory.person.upserted.v1"},
    "rejected": lambda e: {**e, "type": "incident.input.rejected.v1"},
    "naive-time": lambda e: {**e, "time": "2026-11-25T09:00:00"},
    "offset-time": lambda e: {**e, "time": "2026-11-25T10:00:00+01:00"},
    "bad-time": lambda e: {**e, "time": "soon"},
    "no-subject": lambda e: {k: v for k, v in e.items() if k != "subject"},
    "empty-subject": lambda e: {**e, "subject": ""},
    "int-subject": lambda e: {**e, "subject": 7},
    "level-text": lambda e: {**e, "data": {**e["data"], "level": "2"}},
    "not-an-event": lambda e: "raw input",
}

events = st.lists(
    st.tuples(
        st.integers(0, len(VALID) + 1),
        st.sampled_from(SUBJECTS),
        st.sampled_from(sorted(BREAKS)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(events, st.integers(0, 35))
def test_the_dict_fold_gives_the_states_the_state_fold_gave(
    picks: list[tuple[int, str, str]], cut: int
) -> None:
    ledger: list[Any] = []
    for i, subject, broken in picks:
        base = VALID[i] if i < len(VALID) else ack(subject)
        ledger.append(BREAKS[broken]({**base, "subject": subject}))
    leaves = [
        _leaf(i, T0 + timedelta(seconds=i), e, "x")
        if isinstance(e, dict)
        else json.dumps(
            {"v": 1, "index": i, "recorded_at": utc_rfc3339(T0 + timedelta(seconds=i)), "raw": e},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        for i, e in enumerate(ledger)
    ]
    source = MemorySource.build(NoteSigner.generate("test.example/replay"), leaves, [])
    moment = T0 + timedelta(seconds=cut)
    assert outcome(lambda: asyncio.run(incidents_as_of(source, moment))) == outcome(
        lambda: reference(source, moment)
    )


def outcome(call: Callable[[], Any]) -> Any:
    """What a replay gives, or the type of what it raised (data that is no JSON object
    raised AttributeError before as now)."""
    try:
        return call()
    except Exception as exc:
        return type(exc)


class Watched(MemorySource):
    """A source that says when each page was asked for and whether it was closed."""

    said: list[str]

    async def entries(self, start: int = 0, end: int | None = None) -> Any:
        self.said.append("opened")
        try:
            async for page in super().entries(start, end):
                self.said.append(f"served {page[0]['index']}")
                yield page
                self.said.append(f"asked after {page[0]['index']}")
        finally:
            self.said.append("closed")


def watched(events: int, page_size: int) -> Watched:
    log = leaf_log([ack(f"inc-{i % 3}") for i in range(events)])
    source = Watched(log.key, log.head_docs, log.rows, tree=log.tree, page_size=page_size)
    source.said = []
    return source


async def test_the_next_page_is_asked_for_before_this_one_is_folded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = watched(10, 4)
    page = _Fold.page

    def folded(self: _Fold, entries: list[dict[str, Any]]) -> bool:
        source.said.append(f"fold {entries[0]['index']}")
        return page(self, entries)

    monkeypatch.setattr(_Fold, "page", folded)
    states = await incidents_as_of(source, T0 + timedelta(hours=1))
    assert {k: v.version for k, v in states.items()} == {"inc-0": 4, "inc-1": 3, "inc-2": 3}
    assert source.said == [
        "opened",
        "served 0",
        "asked after 0",
        "served 4",
        "fold 0",
        "asked after 4",
        "served 8",
        "fold 4",
        "asked after 8",
        "closed",
        "fold 8",
    ]


async def test_a_replay_cut_off_early_closes_its_source_after_the_page_it_asked_for() -> None:
    source = watched(10, 4)
    states = await incidents_as_of(source, T0 + timedelta(seconds=1))  # entries 0 and 1
    assert {k: v.version for k, v in states.items()} == {"inc-0": 1, "inc-1": 1}
    assert source.said == ["opened", "served 0", "asked after 0", "served 4", "closed"]
