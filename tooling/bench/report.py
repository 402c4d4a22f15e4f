"""Benchmark results: one `Figure` per row, latency summaries, the table, JSON and markdown.

Every figure carries the raw baseline measured in the same run and the ratio of the two
(value / baseline), because the machines are shared and noisy: the ratio travels
between machines better than the value. `met` is None when the issue sets no target.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; nan for no values, inf stays inf."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Latency:
    """p50, p99 and max of a sample, in milliseconds."""

    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of_seconds(cls, seconds: Sequence[float]) -> Latency:
        """Summarise latencies given in seconds."""
        ms = [s * 1000 for s in seconds]
        return cls(len(ms), percentile(ms, 50), percentile(ms, 99), max(ms, default=math.nan))

    def shown(self) -> str:
        """`p50 1.2 / p99 3.4 ms`."""
        return f"p50 {_num(self.p50)} / p99 {_num(self.p99)} ms"

    def to_json(self) -> dict[str, Any]:
        """Milliseconds, JSON-safe (inf and nan as null)."""
        return {k: _finite(v) for k, v in asdict(self).items()}


@dataclass
class Figure:
    """One row of the results table."""

    key: str
    name: str
    value: float | None = None
    unit: str = ""
    shown: str | None = None
    baseline_name: str = "-"
    baseline: float | None = None
    baseline_shown: str | None = None
    baseline_unit: str | None = None
    target: str = "-"
    met: bool | None = None
    limit: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        """value / baseline, when both are finite numbers."""
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        ratio = self.value / self.baseline
        return ratio if math.isfinite(ratio) else None

    def value_text(self) -> str:
        """The value as the table shows it."""
        if self.error is not None:
            return "error"
        if self.shown is not None:
            return self.shown
        return "-" if self.value is None else f"{_num(self.value)} {self.unit}".strip()

    def baseline_text(self) -> str:
        """The baseline as the table shows it, with its name."""
        if self.baseline_shown is not None:
            number = self.baseline_shown
        elif self.baseline is None:
            return self.baseline_name
        else:
            unit = self.unit if self.baseline_unit is None else self.baseline_unit
            number = f"{_num(self.baseline)} {unit}".strip()
        return f"{number} ({self.baseline_name})"

    def ratio_text(self) -> str:
        """`42 %` for rates (higher is better), `3.1x` for latencies."""
        ratio = self.ratio
        if ratio is None:
            return "-"
        if self.unit.endswith("/s"):
            return f"{ratio * 100:.0f} %"
        return f"{ratio:.1f}x"

    def met_text(self) -> str:
        """yes / NO / - (no target) / error."""
        if self.error is not None:
            return "error"
        return {True: "yes", False: "NO", None: "-"}[self.met]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (inf and nan as null)."""
        out = asdict(self)
        out["ratio"] = self.ratio
        for name in ("value", "baseline", "ratio"):
            out[name] = _finite(out[name])
        out["details"] = _clean(self.details)
        return out


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Latency):
        return value.to_json()
    return _finite(value)


def table(figures: Sequence[Figure], title: str) -> Table:
    """The rich table: figure, value, baseline, ratio, target, met?"""
    out = Table(title=title, show_lines=False)
    for name in ("figure", "value", "baseline (same run)", "ratio", "target", "met?"):
        out.add_column(name, overflow="fold")
    for figure in figures:
        met = figure.met_text()
        style = {"yes": "green", "NO": "bold red", "error": "bold red"}.get(met, "")
        out.add_row(
            figure.name,
            figure.value_text(),
            figure.baseline_text(),
            figure.ratio_text(),
            figure.target,
            f"[{style}]{met}[/]" if style else met,
        )
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write(
    out_dir: Path, stamp: str, figures: Sequence[Figure], meta: dict[str, Any]
) -> tuple[Path, Path]:
    """Write `<stamp>.json` and `<stamp>.md` into `out_dir`; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stamp}.json"
    md_path = out_dir / f"{stamp}.md"
    document = {**_clean(meta), "figures": [f.to_json() for f in figures]}
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(figures, meta), encoding="utf-8")
    return json_path, md_path


def markdown(figures: Sequence[Figure], meta: dict[str, Any]) -> str:
    """The summary: the table, what limits each figure, how it was measured."""
    mode = "quick" if meta.get("quick") else "full"
    lines = [
        f"# incidents bench, {meta.get('started_at', '')} ({mode})",
        "",
        f"Machine: {meta.get('machine', {}).get('cpus')} CPUs, "
        f"{meta.get('machine', {}).get('platform')}, Python "
        f"{meta.get('machine', {}).get('python')}. Stack: {meta.get('stack', '')}.",
        "Each figure stands beside a raw baseline measured in the same run; the ratio is"
        " value / baseline (rates as %, latencies as x).",
        "",
        "| figure | value | baseline (same run) | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        cells = [
            f.name,
            f.value_text(),
            f.baseline_text(),
            f.ratio_text(),
            f.target,
            f.met_text(),
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    missed = [f for f in figures if f.met is False]
    failed = [f for f in figures if f.error is not None]
    lines.append("")
    if missed:
        lines.append("**Targets missed:** " + "; ".join(f.name for f in missed) + ".")
    else:
        lines.append("Every target with a result was met.")
    for f in failed:
        lines.append(f"**{f.name} failed:** {f.error}")
    lines += ["", "## What limits each figure", ""]
    for f in figures:
        if f.limit:
            lines.append(f"- **{f.name}**: {f.limit}")
    notes = meta.get("notes") or []
    if notes:
        lines += ["", "## How it was measured", ""]
        lines += [f"- {note}" for note in notes]
    lines.append("")
    return "\n".join(lines)


def print_table(console: Console, figures: Sequence[Figure], title: str) -> None:
    """Print the table and a line per missed target or error."""
    console.print(table(figures, title))
    for f in figures:
        if f.error is not None:
            console.print(f"[bold red]{f.name}: failed:[/] {f.error}")
        elif f.met is False:
            console.print(f"[bold red]target missed[/] {f.name}: {f.value_text()} ({f.target})")
