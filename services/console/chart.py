"""The who-knew chart, laid out as numbers for an inline SVG (pure: no I/O, no HTML).

One row per principal who knew the incident at `as_of` (from `knowledge_as_of`, the
function behind the audit API's `/knowledge`): a bar from when they first knew to the
as-of instant, a mark at every knowing entry (notified, viewed, escalated to,
acknowledged, reported) and at each notice's outcome (delivered, failed) and first
opening (a queued notice alone is not told), and vertical lines for the deadlines known
at that instant and the clocks breached by then. The time axis spans the whole incident,
whatever the as-of instant, so moving the as-of control grows the bars instead of rescaling them.

Deadlines come from `incident.triaged.v1` (`deadlines`), `incident.escalated.v1`
(`deadline`) and `incident.deadline.breached.v1` (`due_at`); none of them carries
report content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from services.domain.events import DeadlineBreached, Escalated, Triaged, data_of
from services.domain.knowledge import Knowledge, LedgerEvent

WIDTH = 960
GUTTER = 170  # room for the principals' names
RIGHT = 24
TOP = 28
ROW = 28
AXIS = 36
TICKS = 6

LineKind = Literal["deadline", "breach"]


@dataclass(frozen=True)
class TimeLine:
    """A deadline or a breach, at an instant, with what it is about."""

    at: datetime
    kind: LineKind
    label: str


@dataclass(frozen=True)
class Mark:
    x: float
    via: str
    at: datetime


@dataclass(frozen=True)
class Row:
    principal: str
    y: float
    x0: float
    x1: float
    first_known_at: datetime
    acknowledged_at: datetime | None
    marks: tuple[Mark, ...]


@dataclass(frozen=True)
class Line:
    x: float
    kind: LineKind
    label: str
    at: datetime


@dataclass(frozen=True)
class Tick:
    x: float
    label: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Chart:
    """Everything the SVG template draws, in pixels, plus what lies outside the axis."""

    width: int
    height: int
    gutter: int
    top: int
    plot_bottom: float
    start: datetime
    end: datetime
    as_of: datetime
    cursor_x: float
    rows: tuple[Row, ...]
    lines: tuple[Line, ...]
    ticks: tuple[Tick, ...]
    off_axis: tuple[TimeLine, ...]
    """Deadlines beyond the axis (a feedback clock months away): listed, not drawn."""

    @property
    def right(self) -> float:
        return float(self.width - RIGHT)


def time_lines(entries: Sequence[LedgerEvent], as_of: datetime) -> list[TimeLine]:
    """The deadlines and breaches the ledger had recorded by `as_of`, by time."""
    found: dict[tuple[str, datetime], TimeLine] = {}
    for entry in entries:
        if entry.recorded_at > as_of:
            continue
        kind = entry.envelope.type
        if kind not in _LINE_TYPES:
            continue
        data = data_of(entry.envelope)
        if isinstance(data, Triaged):
            for name, due in data.deadlines.items():
                found.setdefault((name, due), TimeLine(due, "deadline", _words(name)))
        elif isinstance(data, Escalated) and data.reason == "not_acknowledged":
            # `deadline` is the one that passed unacknowledged, making the chain climb
            label = f"deadline missed: escalated to level {data.level}"
            found.setdefault((label, data.deadline), TimeLine(data.deadline, "breach", label))
        elif isinstance(data, DeadlineBreached):
            label = f"{_words(data.clock)} breached"
            found[(label, entry.recorded_at)] = TimeLine(entry.recorded_at, "breach", label)
    return sorted(found.values(), key=lambda line: (line.at, line.kind, line.label))


_LINE_TYPES = frozenset({Triaged.TYPE, Escalated.TYPE, DeadlineBreached.TYPE})
"""The types `time_lines` reads (deadlines set, missed, breached)."""


def _words(name: str) -> str:
    return name.replace("_", " ")


def axis_span(entries: Sequence[LedgerEvent]) -> tuple[datetime, datetime]:
    """The chart's time axis: from the incident's first ledger entry to its last."""
    if not entries:
        raise ValueError("an incident without ledger entries has no chart")
    times = [e.recorded_at for e in entries]
    start, end = min(times), max(times)
    if end - start < timedelta(seconds=1):
        end = start + timedelta(seconds=1)
    return start, end + (end - start) * 0.03


def layout(
    knowledge: Knowledge,
    lines: Sequence[TimeLine],
    start: datetime,
    end: datetime,
    *,
    width: int = WIDTH,
) -> Chart:
    """Place the rows, marks, lines and ticks of the chart of `knowledge`."""
    if end <= start:
        raise ValueError("the axis must end after it starts")
    span = (end - start).total_seconds()
    plot = width - GUTTER - RIGHT

    def x(moment: datetime) -> float:
        offset = (moment - start).total_seconds() / span
        return round(GUTTER + min(max(offset, 0.0), 1.0) * plot, 1)

    as_of = knowledge.as_of
    rows = []
    for number, person in enumerate(knowledge.principals):
        seen: set[tuple[str, int]] = set()
        marks = []
        for at, via in person.marks:
            mark = Mark(x(at), via, at)
            pixel = (via, round(mark.x))
            if pixel not in seen:  # thousands of views collapse to one per pixel
                seen.add(pixel)
                marks.append(mark)
        rows.append(
            Row(
                principal=person.principal,
                y=TOP + number * ROW,
                x0=x(person.first_known_at),
                x1=x(as_of),
                first_known_at=person.first_known_at,
                acknowledged_at=person.acknowledged_at,
                marks=tuple(marks),
            )
        )
    drawn = [Line(x(t.at), t.kind, t.label, t.at) for t in lines if start <= t.at <= end]
    off_axis = tuple(t for t in lines if not start <= t.at <= end)
    ticks = []
    for i in range(TICKS):
        moment = start + (end - start) * i / (TICKS - 1)
        anchor = "start" if i == 0 else "end" if i == TICKS - 1 else "middle"
        ticks.append(Tick(x(moment), _tick(moment, span), anchor))
    bottom = TOP + max(len(rows), 1) * ROW
    return Chart(
        width=width,
        height=int(bottom + AXIS),
        gutter=GUTTER,
        top=TOP,
        plot_bottom=bottom,
        start=start,
        end=end,
        as_of=as_of,
        cursor_x=x(as_of),
        rows=tuple(rows),
        lines=tuple(drawn),
        ticks=tuple(ticks),
        off_axis=off_axis,
    )


def _tick(moment: datetime, span: float) -> str:
    if span <= 120:
        return moment.strftime("%H:%M:%S.%f")[:10]
    if span <= 2 * 86400:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%m-%d %H:%M")
