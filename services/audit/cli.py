"""`incidents audit`: verify the ledger, export evidence for an incident, replay the past.

Every command talks to the audit service (``--url``, default http://127.0.0.1:8004) with
an auditor's bearer token (``--token`` or ``INCIDENTS_TOKEN``), except ``verify
--bundle``, which needs neither network nor database. Exit codes: 0 all good, 1 the
ledger or bundle failed verification, 2 the command could not do its job (service
unreachable, token refused, bad input).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shlex
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import msgspec
import orjson
import pybase64
import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from services.audit.trust import VerifierState
    from services.audit.verify import HttpSource, KnownHead, LedgerSource, VerifyReport

audit_app = typer.Typer(
    name="audit",
    help="Check the audit ledger, export evidence bundles, replay history.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_URL = "http://127.0.0.1:8004"
_URL_HELP = "Base URL of the audit service."
_AUTH_HELP = "Auditor bearer token (default: $INCIDENTS_TOKEN)."
_EXIT_FAILED = 1
_EXIT_ERROR = 2

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
T = TypeVar("T")


def _url_option() -> Any:
    return typer.Option(DEFAULT_URL, "--url", help=_URL_HELP)


def _token_option() -> Any:
    return typer.Option(None, "--token", envvar="INCIDENTS_TOKEN", help=_AUTH_HELP)


def _fail(message: str, code: int = _EXIT_ERROR) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def _call(
    url: str,
    token: str | None,
    work: Callable[[HttpSource], Awaitable[T]],
    *,
    require_indexed: bool = True,
) -> T:
    """Run ``work`` against the service; turn every source error into a message, exit 2."""
    from services.audit.verify import AuthError, ExportError, HttpSource, SourceError

    async def run() -> T:
        async with HttpSource(url, token, require_indexed=require_indexed) as source:
            return await work(source)

    try:
        return asyncio.run(run())
    except AuthError as exc:
        hint = (
            "pass an auditor token with --token or INCIDENTS_TOKEN"
            if exc.status == 401
            else "the token's principal lacks the auditor role"
        )
        raise _fail(f"{exc} ({hint})") from None
    except (SourceError, ExportError) as exc:
        raise _fail(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(f"{url} gave an answer this command cannot read: {exc!r}") from None


# ------------------------------------------------------------------------ verify


@audit_app.command()
def verify(
    url: str = _url_option(),
    bundle: Path | None = typer.Option(
        None, "--bundle", help="Check this evidence bundle offline instead of a service."
    ),
    token: str | None = _token_option(),
    key: str | None = typer.Option(
        None,
        "--key",
        help="Trusted C2SP verifier key of the log (or a file holding it). Without it, the"
        " key pinned in the state file is required; with no pin, the key the source serves"
        " is pinned on first use, with a warning.",
    ),
    state_file: Path | None = typer.Option(
        None,
        "--state",
        envvar="INCIDENTS_VERIFY_STATE",
        help="State file: the pinned key and the largest verified head of each log"
        " (default: verified-heads.json in $INCIDENTS_STATE_DIR, else ~/.incidents).",
    ),
    head_files: list[Path] = typer.Option(
        [],
        "--head",
        help="One more signed head to check the log against: a checkpoint note, a head as"
        " /v1/ledger/head serves it, or an evidence bundle. Repeatable.",
    ),
    kafka: str | None = typer.Option(
        None,
        "--kafka",
        envvar="INCIDENTS_KAFKA_BOOTSTRAP",
        help="Kafka bootstrap servers: check every head published on the checkpoints topic.",
    ),
    checkpoints_topic: str | None = typer.Option(
        None,
        "--checkpoints-topic",
        help="The topic of signed heads (default: $INCIDENTS_KAFKA_TOPIC_PREFIX"
        " + audit.checkpoints).",
    ),
    kafka_timeout: float = typer.Option(
        10.0, "--kafka-timeout", min=0.5, help="Read the checkpoints topic for at most this long."
    ),
    witness_keys: list[str] = typer.Option(
        [],
        "--witness",
        help="Verifier key of a witness whose cosignatures count (repeatable; docs/witness.md).",
    ),
    quorum: int = typer.Option(
        1,
        "--quorum",
        min=1,
        help="With --witness: fail unless a signed head carries this many"
        " valid cosignatures of those witnesses.",
    ),
    witness_urls: list[str] = typer.Option(
        [],
        "--witness-url",
        help="A witness's base URL: the latest checkpoint it cosigned of this log is one"
        " more head to check the log against (repeatable; docs/witness.md).",
    ),
    allow_unindexed: bool = typer.Option(
        False,
        "--allow-unindexed",
        help="Accept entries served without their index columns (an audit service older"
        " than that field): reported as not checked instead of failing.",
    ),
) -> None:
    """Recompute the Merkle tree and check it against every signed head found; exit 1 if
    anything is not intact (bad entries, a cut tail, a fork, another key)."""
    from services.audit.trust import StateError, VerifierState, default_state_file, file_heads

    try:
        state = VerifierState.load(state_file or default_state_file())
        heads = [head for path in head_files for head in file_heads(path)]
        trusted = _key_text(key)
        heads += _witness_checkpoints(witness_urls, url, bundle, trusted)
        if bundle is not None:
            if url != DEFAULT_URL:
                raise _fail("give --url or --bundle, not both")
            report, notes = _verify_bundle(bundle, state, trusted, heads)
        else:
            topic = checkpoints_topic or _checkpoints_topic()
            report, notes = _verify_service(
                url, token, state, trusted, heads, kafka, topic, kafka_timeout, allow_unindexed
            )
    except StateError as exc:
        raise _fail(str(exc)) from None
    if witness_keys and report.ok:
        _witness_quorum(report, url, bundle, witness_keys, quorum)
    for note in notes:
        err.print(f"[bold yellow]warning:[/] {note}", soft_wrap=True)
    if report.ok:
        try:
            state.save()
        except StateError as exc:
            err.print(f"[bold yellow]warning:[/] {exc}", soft_wrap=True)
        return
    _verdict(report)
    raise typer.Exit(_EXIT_FAILED)


def _key_text(key: str | None) -> str | None:
    """``--key``: a verifier key string, or a file holding one."""
    if key is None or "+" in key:
        return key
    try:
        return Path(key).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"--key is neither a verifier key nor a readable file: {exc}") from None


def _checkpoints_topic() -> str:
    from services.domain.events import Topic

    return f"{os.environ.get('INCIDENTS_KAFKA_TOPIC_PREFIX', '')}{Topic.CHECKPOINTS}"


def _verify_bundle(
    path: Path, state: VerifierState, key: str | None, heads: list[KnownHead]
) -> tuple[VerifyReport, list[str]]:
    from services.audit.trust import verify_bundle_file

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read the bundle {path}: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        out.print(
            f"the bundle {path} is not valid JSON (cut short or damaged): {exc}", soft_wrap=True
        )
        raise typer.Exit(_EXIT_FAILED) from None
    report, notes = verify_bundle_file(document, state, key=key, heads=heads)
    _summary(report, f"bundle {path}")
    return report, notes


def _verify_service(
    url: str,
    token: str | None,
    state: VerifierState,
    key: str | None,
    heads: list[KnownHead],
    kafka: str | None,
    topic: str,
    kafka_timeout: float,
    allow_unindexed: bool = False,
) -> tuple[VerifyReport, list[str]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from services.audit.trust import topic_heads, verify_service

    notes: list[str] = []
    if kafka:
        published, late = asyncio.run(topic_heads(kafka, topic, within=kafka_timeout))
        heads = [*heads, *published]
        notes += [late] if late else []
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = bar.add_task("verifying entries", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        report, more = _call(
            url,
            token,
            lambda source: verify_service(source, state, key=key, heads=heads, progress=progress),
            require_indexed=not allow_unindexed,
        )
    _summary(report, url + (f" and the {topic} topic" if kafka else ""))
    return report, notes + more


def _verdict(report: VerifyReport) -> None:
    """Why the log or bundle is not intact: the first bad index, every other one, and
    the two heads that disagree."""
    where = report.where()
    if where is None:
        out.print(f"verification failed: {report.reason}", soft_wrap=True)
    else:
        out.print(f"first bad index: {where} ({report.reason})", soft_wrap=True)
    if len(report.bad_indexes) > 1:
        shown = ", ".join(map(str, report.bad_indexes[:50]))
        more = f" and {len(report.bad_indexes) - 50} more" if report.bad_indexes[50:] else ""
        out.print(f"bad indexes ({len(report.bad_indexes)}): {shown}{more}", soft_wrap=True)
        for problem in report.problems[1:10]:
            out.print(f"  also: {problem}", soft_wrap=True)
    if report.conflict:
        out.print("heads that disagree:")
        for head in report.conflict:
            out.print(
                f"  size {head['tree_size']}, root {head['root_hash']} ({head['where']})",
                soft_wrap=True,
            )


def _witness_checkpoints(
    urls: list[str], url: str, bundle: Path | None, trusted: str | None
) -> list[KnownHead]:
    """``--witness-url``: each witness's latest cosigned checkpoint of the log, as a head."""
    import httpx

    from services.audit.checkpoint import NoteError, parse_verifier_key
    from services.audit.verify import SourceError, witness_known_heads

    if not urls:
        return []
    try:
        if trusted is not None:
            origin = parse_verifier_key(trusted).name
        elif bundle is not None:
            origin = json.loads(bundle.read_text(encoding="utf-8"))["origin"]
        else:
            answer = httpx.get(f"{url.rstrip('/')}/v1/ledger/public-key", timeout=30.0)
            origin = answer.raise_for_status().json()["origin"]
        return witness_known_heads(urls, str(origin))
    except (SourceError, NoteError, OSError, ValueError, KeyError, TypeError) as exc:
        raise _fail(f"--witness-url: {exc}") from None
    except httpx.HTTPError as exc:
        raise _fail(f"--witness-url: cannot read the log's origin at {url}: {exc}") from None


def _witness_quorum(
    report: VerifyReport, url: str, bundle: Path | None, keys: list[str], quorum: int
) -> None:
    """``--witness``/``--quorum``: fail `report` unless a head carries the quorum."""
    from services.audit.verify import SourceError, witness_check

    try:
        outcome = witness_check(report, url, bundle, keys, quorum)
    except SourceError as exc:
        raise _fail(str(exc)) from None
    if outcome.ok:
        out.print(f"witnesses: {outcome.reason} (latest head {outcome.latest_size})")


def _summary(report: VerifyReport, source: str) -> None:
    table = Table(title="audit ledger verification", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("source", source)
    table.add_row("log", f"{report.origin or '?'} (key id {(report.key_id or '?')[:16]})")
    table.add_row("signed heads", f"{report.heads_checked} checked (largest {report.tree_size})")
    table.add_row("proofs", f"{report.proofs_checked} checked")
    table.add_row("entries", f"{report.entries_checked:,}")
    if report.withheld:
        table.add_row(
            "withheld", f"{report.withheld:,} (incidents that exclude you: hashes only, see docs)"
        )
    note = report.unindexed_note()
    if note is not None:
        accepted = (
            "accepted: --allow-unindexed"
            if report.ok
            else "pass --allow-unindexed for an older service"
        )
        table.add_row("index columns", f"[yellow]{note}[/] ({accepted})")
    if report.ok and report.unsigned_entries:
        table.add_row("not yet signed", f"{report.unsigned_entries} entries after the last head")
    table.add_row("rate", f"{report.rate:,.0f} entries/s ({report.elapsed:.2f} s)")
    table.add_row("result", "[green]intact[/]" if report.ok else "[bold red]NOT INTACT[/]")
    out.print(table)
    if report.ok and report.heads_checked == 0:
        out.print("[yellow]warning:[/] no signed head: nothing vouches for these entries")


# ------------------------------------------------------------------------ export


@audit_app.command()
def export(
    incident: str = typer.Option(..., "--incident", help="The incident id."),
    out_file: Path = typer.Option(..., "--out", help="Where to write the bundle (JSON)."),
    url: str = _url_option(),
    token: str | None = _token_option(),
) -> None:
    """Write an evidence bundle (events, inclusion proofs, signed head, key) for one incident."""
    from services.audit.verify import export_bundle

    bundle = _call(url, token, lambda source: export_bundle(source, incident))
    try:
        out_file.write_text(json.dumps(bundle, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot write {out_file}: {exc}") from None
    command = shlex.join(
        ["incidents", "audit", "verify", "--bundle", str(out_file), "--key", bundle["verifier_key"]]
    )
    out.print(
        f"{out_file}: {len(bundle['entries'])} entries of {incident}, cut at tree size"
        f" {bundle['tree_size']} and proven against its signed head; check it with",
        soft_wrap=True,
    )
    out.print(command, soft_wrap=True, markup=False)


# ------------------------------------------------------------------------ replay


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an RFC 3339 instant", param_hint="--as-of"
        ) from None
    if moment.tzinfo is None:
        raise typer.BadParameter("give a timezone, e.g. 2026-11-25T10:00:00Z", param_hint="--as-of")
    return moment


@audit_app.command()
def replay(
    as_of: str = typer.Option(..., "--as-of", help="RFC 3339 instant (ledger time)."),
    incident: str | None = typer.Option(None, "--incident", help="Only this incident."),
    url: str = _url_option(),
    token: str | None = _token_option(),
) -> None:
    """Rebuild the state of incidents as the ledger stood at an instant."""
    moment = _instant(as_of)
    if incident is not None:
        state, knowledge = _call(
            url, token, lambda source: _incident_as_of(source, incident, moment)
        )
        _state_table(state)
        _knowledge_table(knowledge)
        return
    states = _call(url, token, lambda source: incidents_as_of(source, moment))
    if not states:
        out.print(f"no incident had been recorded by {as_of} (ledger time)")
        return
    table = Table(title=f"incidents as of {as_of} (ledger time)")
    for name in ("incident", "status", "category", "severity", "acknowledged at", "level"):
        table.add_column(name)
    for incident_id, state in states.items():
        if isinstance(state, str):
            table.add_row(incident_id, f"[red]{state}[/]", "", "", "", "")
            continue
        table.add_row(
            incident_id,
            state.status,
            state.category or "",
            state.severity or "",
            _shown(state.acknowledged_at),
            str(state.escalation_level),
        )
    out.print(table)


async def _incident_as_of(
    source: HttpSource, incident: str, moment: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    from services.audit.verify import SourceError

    path = f"/v1/incidents/{quote(incident, safe='')}"
    params = {"as_of": moment.isoformat()}
    try:
        state = await source.get_json(f"{path}/state", params)
        knowledge = await source.get_json(f"{path}/knowledge", params)
    except SourceError as exc:
        if exc.status == 404:
            raise SourceError(f"the ledger holds no event of incident {incident}") from None
        raise
    return state, knowledge


async def incidents_as_of(source: LedgerSource, moment: datetime) -> dict[str, Any]:
    """Every incident folded from the ledger entries recorded by ``moment``, in ledger order.

    Events are read from the leaves themselves (the bytes the Merkle tree covers) and
    folded by the services' own fold, as the audit API's ``/state`` folds them (its
    `state_as_of`). Values are `IncidentState`, or a message when an incident's events
    do not fold. The ledger only records as events what validated when it was
    consumed, so each is folded from its JSON (`apply_data`) without validating it
    again; one that does not fold that way takes the validating path (`apply`), which
    skips an event that is no valid CloudEvent and reports one that does not fold.
    The cyclic garbage collector is paused meanwhile (`_cyclic_gc_paused`).
    """
    with _cyclic_gc_paused():
        return await _fold_leaves(source, moment)


async def _fold_leaves(source: LedgerSource, moment: datetime) -> dict[str, Any]:
    from services.domain.envelope import utc_rfc3339
    from services.domain.incident import IncidentState, state_of

    # Each incident's state is kept as its fields in a plain dict, updated in place by
    # `data_changes` (what `apply_data` does, without a new state per event), or as the
    # message saying why it does not fold; the states are built once at the end.
    fold = _Fold(IncidentState(incident_id="").__dict__, utc_rfc3339(moment))
    async with contextlib.aclosing(_read_ahead(source.entries(0))) as pages:
        async for page in pages:
            if fold.page(page):
                break
    return {k: state_of(v) if isinstance(v, dict) else v for k, v in fold.states.items()}


async def _read_ahead(pages: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """The pages of ``pages``, each next one asked for before this one is handed on, so
    that the source (the audit service, PostgreSQL) prepares it while this one is
    folded. Closed early, it waits for the page it asked for (unused) and closes
    ``pages``."""
    ahead = asyncio.ensure_future(anext(pages))
    try:
        while True:
            try:
                page = await ahead
            except StopAsyncIteration:
                return
            ahead = asyncio.ensure_future(anext(pages))
            await asyncio.sleep(0)  # the request goes out before the fold
            yield page
    finally:
        try:
            with contextlib.suppress(Exception):  # a page nobody will fold
                await ahead
        finally:
            close = getattr(pages, "aclose", None)
            if close is not None:
                await close()


class _EventHead(msgspec.Struct, gc=False):
    """What the replay reads of a recorded event; its other fields are skipped unread."""

    type: Any = None
    subject: Any = None
    time: Any = None
    data: Any = msgspec.UNSET


class _LeafHead(msgspec.Struct, gc=False):
    """What the replay reads of a leaf (an ``event`` that is no JSON object, or a leaf
    that msgspec does not read, takes the slow path, `_Fold.body`)."""

    recorded_at: str
    event: _EventHead | None = None


_LEAF_HEAD = msgspec.json.Decoder(_LeafHead).decode
_REJECTED = "incident.input.rejected.v1"


class _Fold:
    """The replay's fold over pages of entries (`page`)."""

    def __init__(self, fresh: dict[str, Any], cutoff: str) -> None:
        self.fresh = fresh  # the fields of a new incident's state
        self.cutoff = cutoff  # ledger time, RFC 3339 UTC: entries after it are not folded
        self.states: dict[str, dict[str, Any] | str] = {}

    def page(self, page: list[dict[str, Any]]) -> bool:
        """Fold a page's entries recorded by the cutoff; whether one after it was met
        (ledger time never goes back: the replay ends there).

        The fast path reads only what the fold needs of each leaf (`_LeafHead`) and
        folds an incident's event by its JSON (`data_changes`) when the event has a
        subject, a UTC time and data that fold; anything else (an entry without a leaf,
        a leaf msgspec does not read, an event the JSON fold refuses) goes to `entry`,
        which reads the whole leaf and decides as the replay always did."""
        from services.domain.incident import data_changes

        cutoff, fresh, states = self.cutoff, self.fresh, self.states
        fromisoformat, b64decode, head_of = datetime.fromisoformat, pybase64.b64decode, _LEAF_HEAD
        for entry in page:
            text = entry.get("leaf")
            if (
                type(text) is not str
                or "withheld" in entry
                or "unreadable" in entry
                or "error" in entry
            ):
                if self.entry(entry):
                    return True
                continue
            leaf = b64decode(text)  # as binascii.a2b_base64: non-alphabet skipped
            try:
                head = head_of(leaf)
            except msgspec.MsgspecError:
                if self.body(_leaf_json(leaf)):
                    return True
                continue
            if head.recorded_at > cutoff:
                return True
            event = head.event
            if event is None:
                continue  # rejected input, recorded raw
            kind = event.type
            if type(kind) is not str or not kind.startswith("incident.") or kind == _REJECTED:
                continue
            subject = event.subject
            fields = states.get(subject) if type(subject) is str else None
            if isinstance(fields, str):
                continue  # this incident already failed to fold
            try:
                if type(subject) is not str or not subject or event.data is msgspec.UNSET:
                    raise TypeError("no subject or no data")
                time = fromisoformat(event.time)
                if time.tzinfo is not UTC:
                    raise ValueError("not in UTC")
                if fields is None:
                    changes = data_changes(fresh, kind, time, event.data)
                    states[subject] = fields = {**fresh, "incident_id": subject}
                else:
                    changes = data_changes(fields, kind, time, event.data)
                fields.update(changes)
            except (KeyError, TypeError, ValueError):
                self.body(_leaf_json(leaf))  # the whole leaf decides
        return False

    def entry(self, entry: dict[str, Any]) -> bool:
        """An entry without a plain leaf. One the audit service withholds from this reader
        (an incident that excludes them) is skipped: replay shows nothing of it, as the
        timeline does; an unreadable one ends the replay."""
        from services.audit.verify import SourceError

        if entry.get("withheld"):  # an incident that excludes the reader: no leaf
            return bool(entry["recorded_at"] > self.cutoff)
        if "unreadable" in entry or "error" in entry:  # a damaged leaf: nothing to fold
            why = entry.get("unreadable") or entry.get("error")
            raise SourceError(
                f"entry {entry['index']} cannot be read ({why}): `incidents audit verify`"
                " names every damaged entry"
            )
        return self.body(_leaf_json(pybase64.b64decode(entry["leaf"])))

    def body(self, body: dict[str, Any]) -> bool:
        """One whole decoded leaf, folded by its JSON or else by the validating path;
        whether it was recorded after the cutoff."""
        from services.domain.events import InvalidEvent, parse_envelope
        from services.domain.incident import IncidentState, apply, data_changes, state_of

        if body["recorded_at"] > self.cutoff:
            return True
        states = self.states
        event = body.get("event")
        if type(event) is not dict:
            return False  # rejected input, recorded raw
        kind = event.get("type")
        if type(kind) is not str or not kind.startswith("incident.") or kind == _REJECTED:
            return False
        subject = event.get("subject")
        fields = states.get(subject) if type(subject) is str else None
        if isinstance(fields, str):
            return False  # this incident already failed to fold
        try:
            if type(subject) is not str or not subject:
                raise TypeError("no subject")
            time = datetime.fromisoformat(event["time"])
            if time.tzinfo is not UTC:
                time = _aware(time)
            changes = data_changes(fields or self.fresh, kind, time, event["data"])
            if fields is None:
                states[subject] = fields = {**self.fresh, "incident_id": subject}
            fields.update(changes)
            return False
        except (KeyError, TypeError, ValueError):
            pass  # not the JSON a valid event has: the validating path decides
        try:
            envelope = parse_envelope(event)
        except InvalidEvent:
            return False  # recorded as an event, but not one the fold can read
        known = states.get(envelope.subject)
        try:
            state = apply(
                (state_of(known) if isinstance(known, dict) else known)  # type: ignore[arg-type]
                or IncidentState(incident_id=envelope.subject),
                envelope,
            )
            states[envelope.subject] = dict(state.__dict__)
        except ValueError as exc:
            states[envelope.subject] = f"cannot replay: {exc}"
        return False


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a fold, then put it back as it was.

    A replay keeps every incident's state alive (tens of thousands of objects, none in a
    reference cycle) while it allocates and frees a leaf's JSON per event; the collector
    kept walking the growing states, 15-20 % of a full replay. Reference counting still
    frees each leaf as soon as it is folded, so memory stays what the states need.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _aware(time: datetime) -> datetime:
    """An event time as the envelope has it: in UTC, refused without a timezone."""
    if time.tzinfo is None:
        raise ValueError("time must carry a timezone")
    return time.astimezone(UTC)


def _leaf_json(leaf: bytes) -> Any:
    """A whole leaf's JSON, as the replay always read it."""
    try:
        return orjson.loads(leaf)
    except orjson.JSONDecodeError:  # NaN, a lone surrogate: the standard library's
        return json.loads(leaf)


def _shown(value: Any) -> str:
    """A value for a table cell: times in RFC 3339, lists comma-separated, None empty."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(map(str, value))
    return str(value)


def _state_table(answer: dict[str, Any]) -> None:
    state = answer.get("state", {})
    table = Table(title=f"{answer.get('incident_id')} as of {answer.get('as_of')} (ledger time)")
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in state.items():
        if name == "incident_id":
            continue
        table.add_row(name, _shown(value))
    out.print(table)


def _knowledge_table(answer: dict[str, Any]) -> None:
    table = Table(title=f"who knew {answer.get('incident_id')} as of {answer.get('as_of')}")
    for name in ("principal", "first known at", "via", "acknowledged at", "report versions"):
        table.add_column(name)
    for person in answer.get("principals", []):
        table.add_row(
            str(person.get("principal")),
            _shown(person.get("first_known_at")),
            _shown(person.get("via")),
            _shown(person.get("acknowledged_at")),
            str(len(person.get("report_digests", []))),
        )
    out.print(table)
    if not answer.get("principals"):
        out.print("nobody knew yet")
