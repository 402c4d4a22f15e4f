"""Structured JSON logs: one JSON object per line, with trace context, never secrets.

`configure_logging` is called once per process by the entry point (`webapp.serve`).
Everything the services log goes through the standard `logging` module
(`logging.getLogger(__name__)`); a structlog `ProcessorFormatter` on the root handler
turns every record, the services' and the libraries' (uvicorn, faust, aiokafka), into
a JSON line with `timestamp`, `level`, `logger`, `event`, `service`, the active
OpenTelemetry span's `trace_id` and `span_id`, and `incident_id` when one is bound
(`bind_incident`) or the message names one ("incident <id>"). structlog loggers
(`structlog.get_logger()`) end in the same handler.

The last processor before rendering (`redact`) is a second line of defence behind the
rule that code never logs such things: it drops keys that hold secrets or report
content (`authorization`, `secret`, `summary`, `description`, `reporter`, ...), and
masks values that look like bearer tokens, JWTs, receipt codes or receipt secrets, and
receipt URLs, wherever they appear, the message text and tracebacks included.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from types import TracebackType
from typing import Any, Final, TextIO

import structlog
from opentelemetry import trace
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED: Final = "[redacted]"

SECRET_KEYS: Final = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "bearer",
        "password",
        "secret",
        "receipt",
        "receipt_secret",
        "x_receipt_secret",
        "idempotency_key",
    }
)
"""Keys whose values are credentials or capabilities (compared lower case, `-` as `_`)."""

CONTENT_KEYS: Final = frozenset(
    {"summary", "description", "text", "accused", "named", "reporter", "reporter_id"}
)
"""Keys that hold report content or the reporter's identity."""

DROPPED_KEYS: Final = SECRET_KEYS | CONTENT_KEYS

_CROCKFORD = "[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]"
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"(?i)\bbearer\s+\S+"), f"Bearer {REDACTED}"),
    (re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]*"), REDACTED),  # a JWT anywhere
    (re.compile(r"(?i)(/receipts/)[^/\s?#\"']+"), rf"\g<1>{REDACTED}"),
    # Receipts are 4 groups of 5 Crockford symbols, receipt secrets 6 groups.
    (re.compile(rf"\b{_CROCKFORD}{{5}}(?:-{_CROCKFORD}{{5}}){{3,5}}\b"), REDACTED),
)


def redact_text(text: str) -> str:
    """The text with bearer tokens, JWTs, receipt codes, secrets and receipt URLs masked."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _dropped(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in DROPPED_KEYS


def _clean(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth > 8:
        return REDACTED
    if isinstance(value, Mapping):
        return {k: _clean(v, depth + 1) for k, v in value.items() if not _dropped(k)}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray):
        return REDACTED  # raw bytes (a record value, a body) are never logged
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: drop secret and content keys, mask secret-looking values."""
    for key in [k for k in event_dict if _dropped(k)]:
        del event_dict[key]
    for key, value in list(event_dict.items()):
        if key.startswith("_"):  # structlog's own (`_record`, `_from_structlog`)
            continue
        event_dict[key] = _clean(value)
    return event_dict


def add_trace_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: `trace_id` and `span_id` of the active span, if any."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


_RECORD_FIELDS: Final = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", None, None).__dict__,
        "message",
        "asctime",
        "color_message",  # uvicorn's copy of the message with terminal colours
    }
)


def add_extras(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: a stdlib record's `extra={...}` fields as keys of the line."""
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord) and not event_dict.get("_from_structlog"):
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                event_dict.setdefault(key, value)
    return event_dict


FIRST_KEYS: Final = (
    "timestamp",
    "level",
    "logger",
    "event",
    "service",
    "trace_id",
    "span_id",
    "incident_id",
)


def ordered(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the standard keys first, in one order, then the rest."""
    first = {k: event_dict[k] for k in FIRST_KEYS if k in event_dict}
    return {**first, **{k: v for k, v in event_dict.items() if k not in first}}


_NAMED_INCIDENT = re.compile(
    r"\bincident[ _:=]+([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b"
)


def add_named_incident(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: `incident_id` from a message that names one, when none is bound.

    The services' messages say "incident <id>" where a record or request concerns one.
    The active span gets `incident.id` too, so the local trace lookup finds it.
    """
    if "incident_id" in event_dict:
        return event_dict
    event = event_dict.get("event")
    found = _NAMED_INCIDENT.search(event) if isinstance(event, str) else None
    if found is not None:
        event_dict["incident_id"] = found.group(1)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("incident.id", found.group(1))
    return event_dict


def _add_service(service: str) -> Processor:
    def add_service(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


def _shared_processors(service: str) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_extras,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _add_service(service),
        add_trace_context,
        add_named_incident,
        structlog.processors.StackInfoRenderer(),
        # Plain text tracebacks: never structured ones with local variables.
        structlog.processors.format_exc_info,
    ]


def json_formatter(service: str) -> structlog.stdlib.ProcessorFormatter:
    """The formatter that renders any log record as one redacted JSON line."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(service),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact,
            ordered,
            structlog.processors.JSONRenderer(sort_keys=False, default=str),
        ],
    )


_handler: logging.Handler | None = None
QUIET_LOGGERS: Final = ("aiokafka", "kafka")
"""Loggers kept at WARNING: at INFO they report every group rebalance."""


def configure_logging(
    service: str, level: str = "INFO", *, stream: TextIO | None = None
) -> logging.Handler:
    """JSON logs for this process on `stream` (stderr); entry points only.

    Replaces the handler an earlier call installed (other handlers, such as a test
    runner's, are left alone) and returns the new one.
    """
    global _handler
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(json_formatter(service))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            *_shared_processors(service),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _handler = handler
    return handler


def unconfigure_logging() -> None:
    """Remove the handler `configure_logging` installed (tests)."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
    structlog.reset_defaults()


class _Bound(contextlib.AbstractContextManager[None]):
    def __init__(self, tokens: Mapping[str, Any]) -> None:
        self._tokens = tokens

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)


def bind_incident(incident_id: str) -> contextlib.AbstractContextManager[None]:
    """Name the incident this context works on: in every log line, and on the span.

    Binds `incident_id` for structlog's context (every later log line of this task or
    request carries it) and sets `incident.id` on the active span, so `incidents
    traces show` finds the trace locally. Call it plainly to bind for the rest of the
    context, or as `with bind_incident(i):` to unbind on leaving.
    """
    tokens = structlog.contextvars.bind_contextvars(incident_id=incident_id)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("incident.id", incident_id)
    return _Bound(tokens)


_INCIDENT_PATH = re.compile(r"^/v1/incidents/([A-Za-z0-9_.:-]{1,100})(?:/|$)")


class IncidentBinding:
    """ASGI middleware: a request whose path names an incident binds it (`bind_incident`).

    Only `/v1/incidents/{id}...` paths: a receipt is never bound or logged.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        found = _INCIDENT_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        with bind_incident(found.group(1)):
            await self.app(scope, receive, send)


def json_lines(text: str) -> Iterable[dict[str, Any]]:
    """The JSON objects of a log text, one a line (blank lines skipped); for tests and tools."""
    import json

    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)
