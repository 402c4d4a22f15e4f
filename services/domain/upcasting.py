"""Upcasters: how an event stored under an old version is read as the current one.

The ledger keeps every event forever, in the version it was written in: an event is
never rewritten (its bytes are hashed and signed). When a type's shape changes, the new
shape is a new type: in `events.py` the old class is renamed `ReportSubmittedV1` (its
`TYPE` unchanged, still in the catalog, so stored events still parse and verify), the
class `ReportSubmitted` becomes the `.v2` model, and one *upcaster* turns the `data` of
version N into the `data` of version N+1:

    @UPCASTERS.register(ReportSubmittedV1.TYPE, ReportSubmitted.TYPE)
    def _submitted_v2(data: Mapping[str, Any]) -> dict[str, Any]:
        return {**data, "language": "und"}

On read (`events.data_of`, `Event.read`), the upcasters run in a chain, v1 -> v2 -> v3,
before the payload is validated, so a fold only ever sees the newest model. Parsing the
envelope (`events.parse_envelope`) never upcasts: the envelope is what was signed and
hashed, and it is passed on and republished as it was written.

A new *optional* field (one with a default) is not a new version: see "Changing an
event" in docs/events.md. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Upcast = Callable[[Mapping[str, Any]], dict[str, Any]]
"""One step: the `data` of version N in (never modified), the `data` of version N+1 out."""

_VERSIONED = re.compile(r"^(?P<name>.+)\.v(?P<version>[1-9][0-9]*)$")


def split_version(event_type: str) -> tuple[str, int]:
    """`incident.viewed.v1` -> (`incident.viewed`, 1); ValueError if not versioned."""
    match = _VERSIONED.match(event_type)
    if match is None:
        raise ValueError(f"{event_type!r} does not end in a version (.v1, .v2, ...)")
    return match["name"], int(match["version"])


@dataclass(frozen=True)
class Step:
    """One registered upcaster: `source` (vN) to `target` (vN+1)."""

    source: str
    target: str
    upcast: Upcast


class Upcasters:
    """A registry of upcasters, one per old version of a type.

    `UPCASTERS` is the one the services read with; a test builds its own instance, so
    that a test-only version never reaches the catalog or another test.
    """

    def __init__(self) -> None:
        self._steps: dict[str, Step] = {}

    def add(self, source: str, target: str, upcast: Upcast) -> None:
        """Register `upcast` from type `source` (vN) to `target` (vN+1 of the same name)."""
        name, version = split_version(source)
        if split_version(target) != (name, version + 1):
            raise ValueError(f"an upcaster goes from {source} to {name}.v{version + 1}")
        if source in self._steps:
            raise ValueError(f"{source} already has an upcaster (to {self._steps[source].target})")
        self._steps[source] = Step(source, target, upcast)

    def register(self, source: str, target: str) -> Callable[[Upcast], Upcast]:
        """Decorator form of `add`."""

        def decorate(upcast: Upcast) -> Upcast:
            self.add(source, target, upcast)
            return upcast

        return decorate

    def current(self, event_type: str) -> str:
        """The type an event of `event_type` is read as (itself when nothing upcasts it)."""
        while (step := self._steps.get(event_type)) is not None:
            event_type = step.target
        return event_type

    def upcast(
        self, event_type: str, data: Mapping[str, Any], until: str | None = None
    ) -> tuple[str, Mapping[str, Any]]:
        """`(type, data)` after every step from `event_type`, or up to type `until`.

        The data given is never modified (an envelope's data is what was signed).
        """
        while event_type != until and (step := self._steps.get(event_type)) is not None:
            event_type, data = step.target, step.upcast(data)
        return event_type, data

    def sources(self) -> frozenset[str]:
        """Every type that has an upcaster (an older version of some type)."""
        return frozenset(self._steps)


UPCASTERS = Upcasters()
"""The services' registry. Register each step beside the new version's class in
`events.py`; none yet: every type is at its first version."""
