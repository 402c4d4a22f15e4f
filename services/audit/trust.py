"""What `incidents audit verify` trusts and remembers, and where else it finds signed heads.

Like a Go checksum-database client, which keeps the latest tree it verified and refuses
any later tree that does not extend it, the verifier keeps a state file (JSON, written
atomically) with, per log origin:

- the log's key, pinned on first use (``verifier_key``): later runs, of the service or
  of a bundle, require it unless ``--key`` names the trusted key itself (and a ``--key``
  that contradicts the pin is refused: drop the entry from the file to re-pin);
- the largest signed head the entries were proven against (``head``: size, root, signed
  note). The next run treats it as one more signed head: a tree that is now smaller,
  or whose first entries no longer hash to its root, is tampering.

Besides the state, heads come from the ``audit.checkpoints`` topic (`topic_heads`: the
service publishes every head there, and a cut of the database does not reach it) and
from files given with ``--head`` (`file_heads`: a checkpoint note, a head as
``/v1/ledger/head`` serves it, or an evidence bundle). `verify_service` and
`verify_bundle_file` put it together for the command; the checks are in `verify`.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.audit.verify import (
    KnownHead,
    LedgerSource,
    Progress,
    VerifyReport,
    verify_bundle,
    verify_ledger,
)
from services.domain.envelope import utc_rfc3339

__all__ = [
    "STATE_FORMAT",
    "StateError",
    "VerifierState",
    "default_state_file",
    "file_heads",
    "topic_heads",
    "verify_bundle_file",
    "verify_service",
]

STATE_FORMAT = "incidents.audit.verifier-state/v1"
STATE_FILE_NAME = "verified-heads.json"
_IDLE = 0.5  # seconds without a record, once at the end offsets, that end a topic read


class StateError(Exception):
    """The state file or a head file cannot be read or written, or trust conflicts."""


def default_state_file() -> Path:
    """``$INCIDENTS_STATE_DIR/verified-heads.json`` (default ``~/.incidents``)."""
    from services.infra.config import state_dir

    return state_dir() / STATE_FILE_NAME


@dataclass
class VerifierState:
    """The state file's content: ``logs`` maps an origin to its pin and largest head."""

    path: Path
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """Which log (origin) each service URL served when last verified."""
    changed: bool = False

    @classmethod
    def load(cls, path: Path) -> VerifierState:
        """The state at ``path``; empty if there is no file yet."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise StateError(f"cannot read the state file {path}: {exc}") from None
        try:
            document = json.loads(text)
        except ValueError:
            raise StateError(f"the state file {path} is not JSON: move it away") from None
        if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
            raise StateError(f"the state file {path} is not a {STATE_FORMAT} file")
        logs = document.get("logs")
        if not isinstance(logs, dict):
            raise StateError(f"the state file {path} is not a {STATE_FORMAT} file")
        sources = document.get("sources")
        return cls(
            path,
            {k: v for k, v in logs.items() if isinstance(v, dict)},
            {k: v for k, v in sources.items() if isinstance(v, str)}
            if isinstance(sources, dict)
            else {},
        )

    def save(self) -> None:
        """Write the file atomically (a temporary file renamed over it), if changed."""
        if not self.changed:
            return
        document = {"format": STATE_FORMAT, "logs": self.logs, "sources": self.sources}
        text = json.dumps(document, indent=2) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".verified-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StateError(f"cannot write the state file {self.path}: {exc}") from None
        self.changed = False

    def pinned_key(self, origin: str) -> str | None:
        key = self.logs.get(origin, {}).get("verifier_key")
        return key if isinstance(key, str) else None

    def known_heads(self, origin: str) -> list[KnownHead]:
        """The largest head verified before, as one more head to check against."""
        head = self.logs.get(origin, {}).get("head")
        if not isinstance(head, dict) or not isinstance(head.get("checkpoint"), str):
            return []
        where = f"the state file {self.path} (verified {head.get('verified_at', '?')})"
        return [KnownHead(head["checkpoint"], where)]

    def trusted_key(
        self, origin: str, key: str | None, source: str | None = None
    ) -> tuple[str | None, list[str]]:
        """The key to require for ``origin`` (``--key``, else the pin) and any warning.

        A service that served another, pinned log before must still sign with that
        log's key: a history re-signed under a new origin name is not a new log.
        """
        pinned = self.pinned_key(origin)
        before = self.sources.get(source) if source is not None else None
        if key is None and pinned is None and before not in (None, origin):
            return self.pinned_key(before), [
                f"{source} served log {before} before and now serves {origin}: its pinned"
                " key is required"
            ]
        if key is not None:
            if pinned is not None and pinned != key:
                raise StateError(
                    f"the state file {self.path} pins {pinned} for {origin}, but --key gives"
                    f" {key}: if the log's key really changed, remove the entry for {origin}"
                    " from the state file"
                )
            return key, []
        if pinned is not None:
            return pinned, []
        others = sorted(self.logs)
        also = f" (it pins only {', '.join(others)})" if others else ""
        return None, [
            f"the key of log {origin} is NOT PINNED in {self.path}{also}: the key the source"
            " serves is trusted on first use and pinned now. Compare its key id with one you"
            " trust, or pass --key."
        ]

    def remember(
        self, report: VerifyReport, *, heads: bool = True, source: str | None = None
    ) -> list[str]:
        """Pin the report's key if unpinned, keep its verified head if larger, and note
        which log ``source`` served."""
        if not report.ok or report.origin is None or report.verifier_key is None:
            return []
        notes: list[str] = []
        if source is not None and self.sources.get(source) != report.origin:
            self.sources[source] = report.origin
            self.changed = True
        entry = self.logs.setdefault(report.origin, {})
        if entry.get("verifier_key") is None:
            entry["verifier_key"] = report.verifier_key
            entry["pinned_at"] = utc_rfc3339(datetime.now(UTC))
            self.changed = True
            notes.append(f"pinned {report.verifier_key} for {report.origin} in {self.path}")
        head, kept = report.verified_head, entry.get("head")
        old_size = kept.get("tree_size", -1) if isinstance(kept, dict) else -1
        if heads and head is not None and head["tree_size"] > old_size:
            entry["head"] = {**head, "verified_at": utc_rfc3339(datetime.now(UTC))}
            self.changed = True
        return notes


# ------------------------------------------------------------------ more heads


def file_heads(path: Path) -> list[KnownHead]:
    """The head in a file: a signed checkpoint note, a head as the API serves it
    (``{"checkpoint": ...}``), or an evidence bundle (its ``head``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"cannot read the head file {path}: {exc}") from None
    if not text.lstrip().startswith("{"):
        return [KnownHead(text, f"the head file {path}")]
    try:
        document = json.loads(text)
    except ValueError:
        raise StateError(f"the head file {path} is neither a note nor JSON") from None
    head = document.get("head") if isinstance(document, dict) else None
    head = head if isinstance(head, dict) else document
    note = head.get("checkpoint") if isinstance(head, dict) else None
    if not isinstance(note, str):
        raise StateError(f"the head file {path} holds no signed checkpoint")
    what = "bundle" if head is not document else "head file"
    return [KnownHead(note, f"the {what} {path}")]


async def topic_heads(
    bootstrap: str, topic: str, *, within: float = 10.0
) -> tuple[list[KnownHead], str | None]:
    """Every signed note on ``topic``, read from the beginning without a consumer group;
    and a warning when the read did not finish within ``within`` seconds.

    The local broker's end offsets are a lower bound only (the base of the last batch
    plus one), so the read goes on until it has reached them and then a short while
    brings nothing more.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        request_timeout_ms=int(max(within, 1.0) * 1000),
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    heads: list[KnownHead] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    try:
        await asyncio.wait_for(consumer.start(), within)
        ends: dict[Any, int] | None = None
        quiet_since = loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    quiet_since = loop.time()
                    note = _note_of(record.value)
                    if note is not None:
                        at = f"partition {record.partition}, offset {record.offset}"
                        heads.append(KnownHead(note, f"the {topic} topic ({at})", optional=True))
            assigned = consumer.assignment()
            if not assigned:
                continue
            if ends is None:
                ends = await consumer.end_offsets(list(assigned))
            positions = {tp: await consumer.position(tp) for tp in ends}
            reached = all(positions[tp] >= end for tp, end in ends.items())
            if reached and loop.time() - quiet_since >= _IDLE:
                return heads, None
    except (KafkaError, OSError, TimeoutError) as exc:
        raise StateError(f"cannot read the topic {topic} at {bootstrap}: {exc!r}") from None
    finally:
        await consumer.stop()
    return heads, (
        f"reading the topic {topic} did not finish within {within:g} s: only the"
        f" {len(heads)} heads read by then were checked"
    )


def _note_of(value: bytes | None) -> str | None:
    """The signed note in a checkpoint event's data, if the record holds one."""
    try:
        event = json.loads(value or b"")
    except ValueError:
        return None
    data = event.get("data") if isinstance(event, dict) else None
    note = data.get("checkpoint") if isinstance(data, dict) else None
    return note if isinstance(note, str) else None


# ---------------------------------------------------------------- the command


async def verify_service(
    source: LedgerSource,
    state: VerifierState,
    *,
    key: str | None = None,
    heads: Sequence[KnownHead] = (),
    progress: Progress | None = None,
) -> tuple[VerifyReport, list[str]]:
    """Verify the source against its heads, the state's and ``heads``; remember the
    outcome in ``state`` (not saved) when intact. Returns the report and warnings."""
    document = await source.public_key()
    origin = str(document.get("origin")) if isinstance(document, dict) else "?"
    url = getattr(source, "url", None)
    trusted, notes = state.trusted_key(origin, key, url)
    known = [*state.known_heads(origin), *heads]
    report = await verify_ledger(source, progress=progress, trusted_key=trusted, known_heads=known)
    return report, notes + state.remember(report, source=url)


def verify_bundle_file(
    bundle: Any,
    state: VerifierState,
    *,
    key: str | None = None,
    heads: Sequence[KnownHead] = (),
) -> tuple[VerifyReport, list[str]]:
    """Verify a bundle with the trusted or pinned key; pin its key when intact (its head
    is not kept: offline, it cannot be proven consistent with the heads kept before)."""
    origin = str(bundle.get("origin")) if isinstance(bundle, dict) else "?"
    trusted, notes = state.trusted_key(origin, key)
    known = [*state.known_heads(origin), *heads]
    report = verify_bundle(bundle, trusted_key=trusted, known_heads=known)
    return report, notes + state.remember(report, heads=False)
