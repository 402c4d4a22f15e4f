"""`incidents deadletter list | redrive`: the dead letters on the bus, and their originals
published again once the cause is fixed (docs/operations.md, "Dead letters").

For operations with access to the bus, not for auditors: it reads incident.deadletter
straight from Kafka with the services' connection settings (INCIDENTS_KAFKA_BOOTSTRAP,
INCIDENTS_KAFKA_SECURITY_PROTOCOL and the TLS/SASL files, INCIDENTS_KAFKA_TOPIC_PREFIX),
without a consumer group. It shows who refused what and why, never an original's data.

Exit codes: 0 done; 1 (redrive) the selection matched nothing, or a selected dead letter
could not be re-driven, or a send failed; 2 the command could not do its job (no broker,
no such topic, bad options).

Everything a dead letter says is someone's input (a reason quotes the refused value, an
original's id and subject are whatever its producer wrote): it is printed as plain text,
never as rich markup, with every control character shown escaped (`_plain`), so no text
can break the listing, hide itself or drive the terminal.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from services.domain.deadletter import (
    AUTHENTIC,
    DeadLetter,
    Resend,
    Selection,
    Skipped,
    plan_redrive,
)
from services.domain.envelope import utc_rfc3339
from services.domain.policy import parse_duration

if TYPE_CHECKING:
    from services.infra.settings import CommonSettings
    from services.infra.signing import KeySet

deadletter_app = typer.Typer(
    name="deadletter",
    help="Dead letters: list them; re-drive their originals once the cause is fixed.",
    no_args_is_help=True,
    add_completion=False,
)

_EXIT_FAILED = 1
_EXIT_ERROR = 2
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
T = TypeVar("T")


def _plain(value: object) -> str:
    """`value` as text safe to print: every control or format character (C0, C1, DEL,
    bidirectional overrides, line separators) shown as its escape, e.g. `\\x1b`."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _text(*lines: object, style: str = "") -> Text:
    """A cell of plain text, one line each of `lines`: never read as markup."""
    return Text("\n".join(_plain(line) for line in lines), style=style)


def _fail(message: str, code: int = _EXIT_ERROR) -> typer.Exit:
    err.print(Text.assemble(("error:", "bold red"), " ", _plain(message)), soft_wrap=True)
    return typer.Exit(code)


def _since(value: str | None) -> datetime | None:
    """An instant: RFC 3339 (UTC if no offset) or a duration back from now (`2h`, `7d`)."""
    if value is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(f"--since {value!r}: give a time (2026-12-07T10:00Z) or 30m, 2h, 7d") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _selection(
    event_ids: list[str],
    source_topic: str | None,
    reason_contains: str | None,
    since: str | None,
    incident: str | None,
    prefix: str,
) -> Selection:
    topics = frozenset({source_topic, prefix + source_topic}) if source_topic else frozenset()
    return Selection(
        event_ids=frozenset(event_ids),
        source_topics=topics,
        reason_contains=reason_contains,
        since=_since(since),
        incident=incident,
    )


def _settings() -> CommonSettings:
    from pydantic import ValidationError

    from services.infra.settings import CommonSettings

    try:
        return CommonSettings()
    except ValidationError as exc:
        raise _fail(f"the INCIDENTS_ settings are not valid: {exc}") from None


def _run(
    settings: CommonSettings,
    work: Callable[[CommonSettings, Callable[[int, int], None]], Coroutine[Any, Any, T]],
    what: str,
) -> T:
    """Run `work(settings, progress)` under a progress bar; broker failures exit 2."""
    from aiokafka.errors import KafkaError

    from services.infra.kafka import TopicMissing

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the error below says it
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task(what, total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=max(total, done))

            return asyncio.run(work(settings, advance))
    except TopicMissing as exc:
        raise _fail(
            f"{exc.topic} does not exist at {settings.kafka_bootstrap} (is"
            f" INCIDENTS_KAFKA_TOPIC_PREFIX={settings.kafka_topic_prefix!r} the services'?)"
        ) from None
    except (KafkaError, OSError, TimeoutError) as exc:
        raise _fail(f"no answer from the broker at {settings.kafka_bootstrap}: {exc!r}") from None


def _timeout_option() -> Any:
    return typer.Option(
        60.0, "--timeout", min=1.0, help="Give up (exit 2) if reading the topic takes longer."
    )


def _who(letter: DeadLetter) -> str:
    return letter.rejected_by.removeprefix("/services/")


def _where(letter: DeadLetter) -> str:
    if letter.source_topic is None:
        return "?"
    return f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "time": utc_rfc3339(letter.time),
        "rejected_by": _who(letter),
        "reason": letter.reason,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "original_id": letter.original_id,
        "original_type": letter.original_type,
        "incident": letter.incident,
        "original_bytes": len(letter.original),
        "signature": letter.signature,
    }


def _keys(settings: CommonSettings) -> KeySet | None:
    from services.infra.deadletters import dead_letter_keys
    from services.infra.signing import SigningError

    try:
        return dead_letter_keys(settings)
    except SigningError as exc:
        raise _fail(str(exc)) from None


def _letters(settings: CommonSettings, selection: Selection, timeout: float) -> list[DeadLetter]:
    from services.infra.deadletters import dead_letters

    keys = _keys(settings)

    async def read(settings: CommonSettings, advance: Callable[[int, int], None]) -> Any:
        found = await dead_letters(settings, within=timeout, keys=keys, progress=advance)
        return selection.select(found)

    letters: list[DeadLetter] = _run(settings, read, "reading dead letters")
    return letters


_SOURCE_TOPIC = typer.Option(
    None, "--source-topic", help="Only those refused on this topic (e.g. incident.reports)."
)
_REASON = typer.Option(None, "--reason-contains", help="Only those whose reason has this text.")
_SINCE = typer.Option(None, "--since", help="Only those since: a time (RFC 3339) or 30m, 2h, 7d.")
_INCIDENT = typer.Option(None, "--incident", help="Only those whose original is this incident's.")


@deadletter_app.command("list")
def list_command(
    source_topic: str | None = _SOURCE_TOPIC,
    reason_contains: str | None = _REASON,
    since: str | None = _SINCE,
    incident: str | None = _INCIDENT,
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line, no table."),
    timeout: float = _timeout_option(),
) -> None:
    """List the dead letters: when, who refused it, why, where it was read, and the
    original's event id, type and incident (never its data)."""
    settings = _settings()
    prefix = settings.kafka_topic_prefix
    selection = _selection([], source_topic, reason_contains, since, incident, prefix)
    letters = _letters(settings, selection, timeout)
    if as_json:
        for letter in letters:
            typer.echo(json.dumps(_letter_json(letter)))
        return
    table = Table(
        title=f"{len(letters)} dead letter(s)",
        title_justify="left",
        caption=_CAPTION,
        caption_justify="left",
    )
    for name in ("when (UTC)", "refused by", "signature", "reason", "read at"):
        table.add_column(name, overflow="fold")
    for name in ("original: type, id, incident", "dead letter id"):  # ids are copied: never cut
        table.add_column(name, no_wrap=True)
    for letter in letters:
        original = [letter.original_type or "(not an event)", letter.original_id, letter.incident]
        signature = letter.signature or "not checked"
        table.add_row(
            f"{letter.time.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            _text(_who(letter)),
            _text(signature, style="" if signature == AUTHENTIC else "bold red"),
            _text(letter.reason),
            _text(_where(letter)),
            _text(*(x for x in original if x)),
            _text(letter.id),
        )
    out.print(table)


_CAPTION = (
    "A dead letter's text is what its writer said: believe it only when its signature is"
    " authentic ('not checked': no key set, INCIDENTS_EVENT_KEYS_FILE). A re-drive sends"
    " the original, whose own signature every consumer checks."
)


@deadletter_app.command("redrive")
def redrive_command(
    event_ids: list[str] = typer.Option(
        [],
        "--event-id",
        help="A dead letter's id, or its original's event id (repeatable).",
    ),
    source_topic: str | None = _SOURCE_TOPIC,
    reason_contains: str | None = _REASON,
    since: str | None = _SINCE,
    incident: str | None = _INCIDENT,
    all_matching: bool = typer.Option(
        False, "--all-matching", help="Re-drive every dead letter the filters select."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be sent; send nothing."),
    timeout: float = _timeout_option(),
) -> None:
    """Publish the originals of the selected dead letters again, unchanged, to the topic
    of each one's type. Directory changes, and incident events whose latest counts (people
    confirmed, reassignment orders, legal holds, status changes but closed), are not
    re-driven: they could undo a later one. Fix the cause first: each consumer of that
    topic reads it again, and those that handled it before change nothing (they dedupe
    by event id)."""
    settings = _settings()
    prefix = settings.kafka_topic_prefix
    selection = _selection(event_ids, source_topic, reason_contains, since, incident, prefix)
    if not event_ids and not (selection.filtered and all_matching):
        raise _fail(
            "select what to re-drive: --event-id ID (repeatable), or filters and --all-matching"
        )
    letters = _letters(settings, selection, timeout)
    if not letters:
        err.print("no dead letter matches the selection: nothing sent")
        raise typer.Exit(_EXIT_FAILED)
    resends, skipped = plan_redrive(letters, prefix=prefix)
    _print_skipped(skipped)
    if dry_run:
        _print_resends(resends, None, "would send")
        raise typer.Exit(_EXIT_FAILED if skipped else 0)
    sent = _send(settings, resends)
    _print_resends(resends, sent, "sent")
    raise typer.Exit(_EXIT_FAILED if skipped else 0)


def _send(settings: CommonSettings, resends: list[Resend]) -> dict[int, str]:
    """Send them; by index into `resends`, where each went."""
    from services.infra.deadletters import RedriveFailed, Sent, redrive

    def where(sent: list[Sent]) -> dict[int, str]:
        return {n: f"[{s.partition}]@{s.offset}" for n, s in enumerate(sent)}

    async def work(settings: CommonSettings, advance: Callable[[int, int], None]) -> list[Sent]:
        return await redrive(settings, resends, progress=advance)

    if not resends:
        return {}
    try:
        return where(_run(settings, work, "re-driving"))
    except RedriveFailed as exc:
        _print_resends(resends[: len(exc.sent)], where(exc.sent), "sent")
        raise _fail(
            f"{exc} (run the same command again: what was sent changes nothing twice)",
            _EXIT_FAILED,
        ) from None


def _print_skipped(skipped: list[Skipped]) -> None:
    for item in skipped:
        line = f"not re-driven: dead letter {item.letter.id}: {item.why}"
        err.print(_text(line), soft_wrap=True)


def _print_resends(resends: list[Resend], sent: dict[int, str] | None, verb: str) -> None:
    table = Table(title=f"{verb}: {len(resends)} original(s)", title_justify="left")
    table.add_column("original: type, id", no_wrap=True)
    table.add_column("to", overflow="fold")
    for name in ("key", "dead letters"):
        table.add_column(name, no_wrap=True)
    for n, resend in enumerate(resends):
        where = resend.topic + (sent.get(n, " (not sent)") if sent is not None else "")
        table.add_row(
            _text(resend.event.type, resend.event.id),
            _text(where),
            _text(resend.key),
            _text(*(letter.id for letter in resend.letters)),
        )
    out.print(table)
    out.print(
        "A dead letter keeps neither the record's key nor its headers: the key is the"
        " original's, derived as its producer did (its incident; 'directory' for the"
        " directory), the headers its content type and trace context.",
        soft_wrap=True,
    )
