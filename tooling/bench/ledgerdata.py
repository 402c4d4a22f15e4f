"""Synthetic ledger contents for benchmarks: valid events, canonical leaves, tree nodes.

An incident's life is a fixed sequence of catalog events (submitted, triaged, assigned,
notified, viewed, acknowledged, escalation cleared, status changed), built once with
`make_event` so every one validates. Each is then turned into a format string with
slots for the ids, subject and time, so a million events cost string formatting, not
pydantic. Incidents are interleaved in groups, as concurrent incidents are in a real
ledger, and a batch of `BATCH` entries shares one `recorded_at`, as an append does.

The leaves are exactly what `services.audit.ledger.leaf_bytes` writes (canonical JSON,
version 1); `LedgerData.check` proves that on a sample.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import ConsumerRecord

from services.audit.merkle import MerkleFrontier
from services.domain.envelope import canonical_json, utc_rfc3339
from services.domain.events import CATALOG, make_event

BATCH = 500
"""Entries per append batch (the audit consumer's `max_records`)."""

GROUP = 50
"""Incidents whose events are interleaved in the ledger."""


Row = tuple[Any, ...]
Node = tuple[int, int, bytes]

_DIGEST = "sha256:" + "ab" * 32
_DESCRIPTION = (
    "On Friday evening, after the inventory count, the store manager cornered me in the"
    " stock room and made remarks about my body; it has happened three times since"
    " March and two colleagues saw the last one. I am afraid of losing my shifts."
)
_SENTINELS = {"id": "@@ID@@", "subject": "@@SUBJECT@@", "time": "@@TIME@@"}


def _life(start: datetime) -> list[tuple[str, dict[str, Any], str]]:
    """(type, data, actor) of one incident's events, in order."""
    deadline = utc_rfc3339(start + timedelta(hours=4))
    return [
        (
            "incident.report.submitted.v1",
            {
                "category": "harassment",
                "summary": "Repeated remarks by the store manager",
                "description": _DESCRIPTION,
                "unit": "city-retail",
                "accused": ["p-wang"],
                "reporter": "p-liu",
                "channel": "web",
                "report_digest": _DIGEST,
            },
            "p-liu",
        ),
        (
            "incident.triaged.v1",
            {
                "category": "harassment",
                "severity": "high",
                "policy_version": "2026-11-01",
                "chain": [
                    {
                        "level": 1,
                        "role": "hr_case_handler",
                        "recipients": ["p-chen"],
                        "acknowledge_within": 14400,
                    },
                    {
                        "level": 2,
                        "role": "hr_head",
                        "recipients": ["p-zhou"],
                        "acknowledge_within": 28800,
                    },
                    {
                        "level": 3,
                        "role": "chief_ethics_officer",
                        "recipients": ["p-sun"],
                        "acknowledge_within": 86400,
                    },
                ],
                "excluded": [
                    {"principal": "p-wang", "rule": "accused"},
                    {"principal": "p-li", "rule": "accused_management_chain"},
                    {"principal": "p-zhang", "rule": "accused_management_chain"},
                    {"principal": "p-liu", "rule": "reporter"},
                ],
                "deadlines": {"level_1_acknowledge": deadline},
                "repeat_last_every": 86400,
                "report_digest": _DIGEST,
            },
            "system:triage",
        ),
        ("incident.assigned.v1", {"level": 1, "principals": ["p-chen"]}, "system:triage"),
        (
            "incident.notified.v1",
            {"principal": "p-chen", "channel": "log", "level": 1, "report_digest": _DIGEST},
            "system:triage",
        ),
        ("incident.viewed.v1", {"principal": "p-chen", "report_digest": _DIGEST}, "p-chen"),
        ("incident.acknowledged.v1", {"principal": "p-chen", "level": 1}, "p-chen"),
        (
            "incident.escalation.cleared.v1",
            {"level": 1, "principal": "p-chen"},
            "system:escalation",
        ),
        (
            "incident.status.changed.v1",
            {"principal": "p-chen", "status": "investigating"},
            "p-chen",
        ),
    ]


@dataclass(frozen=True)
class _Template:
    type: str
    topic: str
    event: str  # canonical event JSON with {id}, {subject}, {time} slots


def _templates(start: datetime) -> list[_Template]:
    out = []
    for kind, data, actor in _life(start):
        event = make_event(
            kind, subject="inc", data=data, source="/tooling/bench", time=start, actor=actor
        ).to_dict()
        event.update(_SENTINELS)
        text = canonical_json(event).decode()
        text = text.replace("{", "{{").replace("}", "}}")
        for slot, sentinel in _SENTINELS.items():
            text = text.replace(sentinel, "{" + slot + "}")
        out.append(_Template(kind, str(CATALOG[kind].topic), text))
    return out


def _uuid_prefix() -> str:
    """A random UUIDv4 without its last 12 hex digits: prefix + 12 hex digits is a UUID."""
    return str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))[:-12]


@dataclass
class Entry:
    """One generated ledger entry (and the event it holds)."""

    index: int
    recorded_at: datetime
    topic: str
    offset: int
    event_id: str
    incident_id: str
    event_type: str
    event: bytes
    leaf: bytes
    leaf_hash: bytes

    def row(self) -> tuple[Any, ...]:
        """The `ledger` row, columns as `LEDGER_COLUMNS`."""
        return (
            self.index,
            self.recorded_at,
            self.topic,
            0,
            self.offset,
            f"{self.topic}:{self.event_id}",
            self.event_id,
            self.incident_id,
            self.event_type,
            None,
            True,
            self.leaf,
            self.leaf_hash,
        )

    def record(self) -> ConsumerRecord:
        """The Kafka record audit would have consumed for it."""
        return ConsumerRecord(
            topic=self.topic,
            partition=0,
            offset=self.offset,
            timestamp=0,
            timestamp_type=0,
            key=self.incident_id.encode(),
            value=self.event,
            checksum=None,
            serialized_key_size=len(self.incident_id),
            serialized_value_size=len(self.event),
            headers=(),
        )


@dataclass
class LedgerData:
    """Generates `count` entries from `start`, one second of ledger time per batch."""

    count: int
    start: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(days=1))
    incident_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.templates = _templates(self.start)
        self.frontier = MerkleFrontier()
        self._events = _uuid_prefix()
        self._incidents = _uuid_prefix()

    @property
    def end(self) -> datetime:
        """The ledger time of the last entry."""
        return self.start + timedelta(seconds=(self.count - 1) // BATCH)

    def entries(self) -> Iterator[Entry]:
        """Every entry in index order (appends its leaf hash to `frontier`)."""
        per = len(self.templates)
        offsets: dict[str, int] = {}
        index = 0
        group = 0
        recorded_at = self.start
        stamp = utc_rfc3339(recorded_at)
        while index < self.count:
            incidents = [f"{self._incidents}{group * GROUP + i:012x}" for i in range(GROUP)]
            self.incident_ids.extend(incidents)
            group += 1
            for step in range(per):
                template = self.templates[step]
                for incident in incidents:
                    if index >= self.count:
                        return
                    if index % BATCH == 0:
                        recorded_at = self.start + timedelta(seconds=index // BATCH)
                        stamp = utc_rfc3339(recorded_at)
                    event_id = f"{self._events}{index:012x}"
                    offset = offsets.get(template.topic, 0)
                    offsets[template.topic] = offset + 1
                    event = template.event.format(id=event_id, subject=incident, time=stamp)
                    leaf = (
                        f'{{"event":{event},"index":{index},"offset":{offset},"partition":0,'
                        f'"recorded_at":"{stamp}","topic":"{template.topic}","v":1}}'
                    ).encode()
                    hashed = hashlib.sha256(b"\x00" + leaf).digest()
                    yield Entry(
                        index,
                        recorded_at,
                        template.topic,
                        offset,
                        event_id,
                        incident,
                        template.type,
                        event.encode(),
                        leaf,
                        hashed,
                    )
                    index += 1

    def chunks(
        self, size: int
    ) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[int, int, bytes]]]]:
        """(ledger rows, ledger_nodes rows) in chunks of `size` entries, in order."""
        rows: list[Row] = []
        nodes: list[Node] = []
        append = self.frontier.append
        for entry in self.entries():
            rows.append(entry.row())
            nodes.extend(append(entry.leaf_hash))
            if len(rows) == size:
                yield rows, nodes
                rows, nodes = [], []
        if rows:
            yield rows, nodes


def check(entry: Entry) -> None:
    """Raise AssertionError unless the entry's leaf and event are canonical and valid."""
    from services.domain.events import parse_event

    body = json.loads(entry.leaf)
    assert canonical_json(body) == entry.leaf, "leaf is not canonical JSON"
    assert body["index"] == entry.index
    envelope, _ = parse_event(entry.event)
    assert envelope.to_bytes() == entry.event, "event is not canonical"
    assert envelope.subject == entry.incident_id
