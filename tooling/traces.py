"""`incidents traces show`: a report's traces as a waterfall in the terminal.

The services keep their finished spans in local files, one JSON object a line
(`<traces_dir>/<service>.jsonl`, see `services.infra.telemetry.LocalSpanExporter`).
This command finds the trace ids of an incident, from the audit timeline (every ledger
entry records the trace id of its event) when `--audit` is given, and from spans that
name the incident (`incident.id`, set by `bind_incident`) otherwise or as well. It then
loads the spans of those traces from every span file of the folder and draws one
waterfall per trace: one row per span, indented by depth, with its service, a bar on a
common time axis and its duration. Nothing beyond the project itself is needed.

`show` is the body of the command (services/cli.py declares its options). Exit codes:
0 drawn, 1 nothing found, 2 the command could not do its job (audit unreachable, token
refused).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

_EXIT_NOTHING = 1
_EXIT_ERROR = 2
_MIN_BAR = 20
_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")


class TracesError(Exception):
    """The trace ids could not be looked up; the message says why."""


def default_traces_dir() -> Path:
    """`INCIDENTS_TRACES_DIR`, else the settings' default (`~/.incidents/traces`)."""
    configured = os.environ.get("INCIDENTS_TRACES_DIR")
    if configured:
        return Path(configured).expanduser()
    from services.infra.settings import CommonSettings

    default: Path = CommonSettings.model_fields["traces_dir"].default
    return default


@dataclass(frozen=True)
class Span:
    """A finished span as the local exporter wrote it."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start: int
    end: int
    service: str
    attributes: dict[str, Any]
    scope: str | None = None

    @property
    def duration_ms(self) -> float:
        return max(0, self.end - self.start) / 1e6

    @property
    def is_detail(self) -> bool:
        """A database statement or an ASGI send/receive: hidden unless `--all`."""
        if "db.system" in self.attributes or (self.scope or "").endswith(".asyncpg"):
            return True
        return self.kind == "INTERNAL" and self.name.endswith((" http send", " http receive"))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Span:
        return cls(
            trace_id=str(data["trace_id"]),
            span_id=str(data["span_id"]),
            parent_span_id=data.get("parent_span_id") or None,
            name=str(data.get("name", "?")),
            kind=str(data.get("kind", "INTERNAL")),
            start=int(data["start_time_unix_nano"]),
            end=int(data.get("end_time_unix_nano") or data["start_time_unix_nano"]),
            service=str(data.get("service.name", "?")),
            attributes=dict(data.get("attributes") or {}),
            scope=data.get("scope"),
        )


def load_spans(directory: Path, trace_ids: Iterable[str] | None = None) -> list[Span]:
    """Every span in the folder's `*.jsonl` files (of `trace_ids` only, when given).

    Lines that are not whole spans (a write cut short by a crash) are skipped; a span
    found twice (a file rotated while read) is kept once.
    """
    wanted = None if trace_ids is None else set(trace_ids)
    found: dict[tuple[str, str], Span] = {}
    for path in sorted(Path(directory).expanduser().glob("*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if wanted is not None and not any(t in line for t in wanted):
                continue  # cheap filter before parsing
            try:
                span = Span.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue
            if wanted is None or span.trace_id in wanted:
                found[(span.trace_id, span.span_id)] = span
    return list(found.values())


def trace_ids_naming(spans: Iterable[Span], incident_id: str) -> list[str]:
    """Trace ids of the spans that name the incident (`incident.id` or any attribute)."""
    ids: dict[str, int] = {}
    for span in spans:
        if incident_id in span.name or any(
            v == incident_id for v in span.attributes.values() if isinstance(v, str)
        ):
            ids[span.trace_id] = min(ids.get(span.trace_id, span.start), span.start)
    return sorted(ids, key=ids.__getitem__)


async def audit_trace_ids(
    url: str,
    token: str | None,
    incident_id: str,
    *,
    transport: Any = None,
) -> list[str]:
    """The trace ids of the incident's ledger entries, in ledger order, each once."""
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    path = f"/v1/incidents/{quote(incident_id, safe='')}/timeline"
    try:
        async with httpx.AsyncClient(
            base_url=url.rstrip("/"), transport=transport, timeout=15.0
        ) as client:
            answer = await client.get(path, headers=headers)
    except httpx.HTTPError as exc:
        raise TracesError(f"audit at {url} did not answer: {exc!r}") from None
    if answer.status_code == 401:
        raise TracesError("the audit service refused the token (pass --token or INCIDENTS_TOKEN)")
    if answer.status_code == 403:
        raise TracesError("the token's principal lacks the auditor role")
    if answer.status_code == 404:
        return []
    if answer.status_code != 200:
        raise TracesError(f"audit answered {answer.status_code} for the timeline")
    try:
        events = answer.json()["events"]
        ids = [e.get("trace_id") for e in events]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TracesError(f"audit gave a timeline this command cannot read: {exc!r}") from None
    return list(dict.fromkeys(i for i in ids if isinstance(i, str) and i))


@dataclass(frozen=True)
class Row:
    """One line of a waterfall: a span at its depth in the tree."""

    depth: int
    span: Span


def tree_rows(spans: Sequence[Span], *, detail: bool = True) -> list[Row]:
    """The spans of one trace in tree order (children by start time below their parent).

    A span whose parent is not among them (its process kept no file, or the file was
    rotated away) is drawn as a root. Without `detail`, detail spans (`Span.is_detail`)
    are left out and their children hang from the nearest ancestor that is shown.
    """
    by_id = {s.span_id: s for s in spans}

    def shown_parent(span: Span) -> str | None:
        parent = by_id.get(span.parent_span_id or "")
        hops = 0
        while parent is not None and not detail and parent.is_detail and hops < len(by_id):
            parent, hops = by_id.get(parent.parent_span_id or ""), hops + 1
        return parent.span_id if parent is not None else None

    children: dict[str | None, list[Span]] = {}
    for span in spans:
        if detail or not span.is_detail:
            children.setdefault(shown_parent(span), []).append(span)
    for kids in children.values():
        kids.sort(key=lambda s: (s.start, s.end))
    rows: list[Row] = []
    stack = [(0, s) for s in reversed(children.get(None, []))]
    seen: set[str] = set()
    while stack:
        depth, span = stack.pop()
        if span.span_id in seen:  # a cycle in damaged data: draw each span once
            continue
        seen.add(span.span_id)
        rows.append(Row(depth, span))
        stack.extend((depth + 1, c) for c in reversed(children.get(span.span_id, [])))
    return rows


def _bar(span: Span, begin: int, total: int, width: int, style: str) -> Text:
    offset = int((span.start - begin) / total * width) if total else 0
    offset = min(max(offset, 0), width - 1)
    length = max(1, round((span.end - span.start) / total * width)) if total else 1
    length = min(length, width - offset)
    bar = Text("·" * offset, style="dim")
    bar.append("█" * length, style=style)
    bar.append("·" * (width - offset - length), style="dim")
    return bar


def _label(row: Row) -> str:
    return "   " * max(row.depth - 1, 0) + ("└─ " if row.depth else "") + row.span.name


def waterfall(spans: Sequence[Span], *, width: int = 120, detail: bool = False) -> Table:
    """One trace as a table: span (indented by depth), service, bar, duration.

    `width` is the room the table may take (the terminal's); the bar gets what the
    other columns leave, at least 16 characters.
    """
    rows = tree_rows(spans, detail=detail)
    begin = min(s.start for s in spans)
    total = max(s.end for s in spans) - begin
    services = sorted({s.service for s in spans})
    colour = {name: _COLOURS[i % len(_COLOURS)] for i, name in enumerate(services)}
    started = datetime.fromtimestamp(begin / 1e9, UTC).isoformat(timespec="milliseconds")
    hidden = len(spans) - len(rows)
    caption = f"{started.replace('+00:00', 'Z')} · {len(spans)} spans · {total / 1e6:.1f} ms"
    if hidden:
        caption += f" · {hidden} database and ASGI spans hidden (--all shows them)"
    service_width = max(len("service"), *(len(s) for s in services))
    ms_width = max(len("ms"), *(len(f"{r.span.duration_ms:.1f}") for r in rows))
    fixed = service_width + ms_width + 13  # 5 borders, 4 columns padded on both sides
    label_width = max(
        16, min(max((len(_label(r)) for r in rows), default=4), 56, width - fixed - _MIN_BAR)
    )
    bar_width = max(_MIN_BAR, width - label_width - fixed)
    table = Table(
        title=f"trace {spans[0].trace_id}",
        caption=caption,
        title_justify="left",
        caption_justify="left",
        expand=False,
    )
    table.add_column("span", no_wrap=True, overflow="ellipsis", max_width=label_width)
    table.add_column("service", no_wrap=True, min_width=service_width)
    table.add_column(f"0 … {total / 1e6:.1f} ms", no_wrap=True, width=bar_width)
    table.add_column("ms", justify="right", no_wrap=True)
    for row in rows:
        span = row.span
        table.add_row(
            Text(_label(row)),
            Text(span.service, style=colour[span.service]),
            _bar(span, begin, total, bar_width, colour[span.service]),
            f"{span.duration_ms:.1f}",
        )
    return table


def render(
    incident_id: str,
    spans: Sequence[Span],
    trace_ids: Sequence[str],
    *,
    width: int = 120,
    detail: bool = False,
) -> RenderableType:
    """One waterfall per trace id (in the given order) that has spans."""
    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    parts: list[RenderableType] = [Text(f"incident {incident_id}", style="bold")]
    for trace_id in trace_ids:
        if by_trace.get(trace_id):
            parts.append(waterfall(by_trace[trace_id], width=width, detail=detail))
    missing = [t for t in trace_ids if not by_trace.get(t)]
    if missing:
        parts.append(
            Text(f"{len(missing)} trace(s) with no local spans: {', '.join(missing)}", style="dim")
        )
    return Group(*parts)


def render_text(
    incident_id: str,
    spans: Sequence[Span],
    trace_ids: Sequence[str],
    *,
    width: int = 160,
    detail: bool = False,
) -> str:
    """`render` as plain text (tests, logs)."""
    import io

    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(render(incident_id, spans, trace_ids, width=width, detail=detail))
    return console.export_text()


async def find_traces(
    incident_id: str,
    directory: Path,
    *,
    audit: str | None = None,
    token: str | None = None,
    transport: Any = None,
) -> tuple[list[str], list[Span]]:
    """The incident's trace ids (ledger order first, then local finds) and their spans."""
    trace_ids: list[str] = []
    if audit:
        trace_ids = await audit_trace_ids(audit, token, incident_id, transport=transport)
    local = trace_ids_naming(load_spans(directory), incident_id)
    trace_ids = list(dict.fromkeys([*trace_ids, *local]))
    return trace_ids, load_spans(directory, trace_ids) if trace_ids else []


# -- Arize Phoenix: an optional local trace viewer (`incidents up --traces`) ---------------

PHOENIX_EXTRA = "pip install -c constraints.txt -e '.[traces]'"
"""How to install what `--traces` needs (from the repository)."""
_PHOENIX_MODULES = ("phoenix.server.main", "opentelemetry.exporter.otlp.proto.http.trace_exporter")


def phoenix_missing() -> str | None:
    """Why Phoenix cannot run here (its module or the OTLP exporter is missing), or None."""
    import importlib.util

    for module in _PHOENIX_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return (
                f"--traces needs the optional extra (Python module {module.split('.')[0]!r}"
                f" of {module!r} is not installed). Install it with: {PHOENIX_EXTRA}"
            )
    return None


@dataclass
class Phoenix:
    """An Arize Phoenix server bound to `host`, its data in `working_dir`.

    It takes OTLP over HTTP at `otlp_endpoint` (+ `/v1/traces`) and over gRPC at
    `grpc_port`, and serves its UI at `url`. The services export to it when their
    `OTEL_EXPORTER_OTLP_ENDPOINT` is `otlp_endpoint` (`service_env`).
    """

    working_dir: Path
    host: str = "127.0.0.1"
    port: int = 6006
    grpc_port: int = 4317
    process: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def otlp_endpoint(self) -> str:
        return self.url

    def service_env(self) -> dict[str, str]:
        """What each service's environment needs to send its spans here."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of the server (nothing listens beyond `host`)."""
        env = {
            **os.environ,
            "PHOENIX_HOST": self.host,
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_WORKING_DIR": str(self.working_dir),
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PYTHONPATH": os.pathsep.join(
                p
                for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH"))
                if p
            ),
        }
        launch = "from tooling.traces import run_phoenix; run_phoenix()"
        return [sys.executable, "-c", launch, "serve"], env

    def start(self, log_path: Path, timeout: float = 90.0) -> None:
        """Start the server and wait until its UI answers; RuntimeError if it does not."""
        import httpx

        from tooling.localstack import kill_process, log_tail, spawn

        self.working_dir.mkdir(parents=True, exist_ok=True)
        command, env = self.command()
        self.process = spawn(command, log_path, env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        code = self.process.poll()
        kill_process(self.process)
        why = f"exited with code {code}" if code is not None else f"did not answer in {timeout}s"
        raise RuntimeError(f"Phoenix {why}; log {log_path}:\n{log_tail(log_path)}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        from tooling.localstack import stop_process

        if self.process is not None:
            stop_process(self.process)


def run_phoenix() -> None:  # pragma: no cover - the body of Phoenix's own process
    """Phoenix's server, its OTLP gRPC receiver bound to `PHOENIX_HOST` as well.

    Phoenix binds its HTTP side to `PHOENIX_HOST` but its gRPC receiver to every
    interface (`[::]`), which would take spans from anyone on the network.
    """
    import grpc.aio
    from phoenix.server.main import main

    host = os.environ.get("PHOENIX_HOST", "127.0.0.1")
    make_server = grpc.aio.server

    def on_host(add: Any, address: str, *rest: Any) -> Any:
        return add(address.replace("[::]:", f"{host}:", 1), *rest)

    def server_on_host(*args: Any, **kwargs: Any) -> Any:
        server = make_server(*args, **kwargs)
        for name in ("add_insecure_port", "add_secure_port"):
            setattr(server, name, functools.partial(on_host, getattr(server, name)))
        return server

    grpc.aio.server = server_on_host
    main()


def show(
    incident_id: str,
    directory: Path | None = None,
    *,
    audit: str | None = None,
    token: str | None = None,
    all_spans: bool = False,
) -> int:
    """Draw an incident's traces as waterfalls, from the spans kept on this machine."""
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    folder = directory if directory is not None else default_traces_dir()
    try:
        trace_ids, spans = asyncio.run(find_traces(incident_id, folder, audit=audit, token=token))
    except TracesError as exc:
        err.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return _EXIT_ERROR
    if not trace_ids:
        hint = (
            "the audit timeline has no trace ids for it"
            if audit
            else "pass --audit URL --token T to take its trace ids from the audit timeline"
        )
        err.print(f"no trace found for incident {incident_id} in {folder}: {hint}", soft_wrap=True)
        return _EXIT_NOTHING
    if not spans:
        err.print(
            f"{len(trace_ids)} trace(s) for incident {incident_id}, but no spans of them in"
            f" {folder} (was the stack run with INCIDENTS_TRACES_LOCAL=false or another"
            " INCIDENTS_TRACES_DIR?)",
            soft_wrap=True,
        )
        return _EXIT_NOTHING
    out.print(render(incident_id, spans, trace_ids, width=out.width, detail=all_spans))
    return 0
