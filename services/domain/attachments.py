"""Evidence files: what a file is (by its content), what it may be called, who sees it.

Pure: the upload route hands `sniff` the first bytes of a file and `safe_name` the name
the client sent; the views ask `attachments_of` which files an incident's events list,
and `visible_to_reporter` which of them the reporter may see. Nothing here reads or
writes a file (see `services.intake.attachments`).

The type is decided by the content alone, from a small table of signatures (the
allow-list); the name's extension is never consulted, so a `.pdf` that is a PNG is
stored as the PNG it is. A zip is allowed only as an Office document: its first entry is
`[Content_Types].xml` (what Office and LibreOffice write first) and the head names a
`word/` (DOCX) or `xl/` (XLSX) part. Plain text is UTF-8 without control characters
other than tab, newline and carriage return.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from services.domain.envelope import Envelope
from services.domain.events import AttachmentAdded

SNIFF_BYTES = 64 * 1024
"""How much of a file's start `sniff` needs (it is given at least this, or the whole file)."""
MAX_NAME = 200
"""A file name is cut to this many characters (before sealing)."""

PDF = "application/pdf"
PNG = "image/png"
JPEG = "image/jpeg"
GIF = "image/gif"
WEBP = "image/webp"
TEXT = "text/plain"
MP3 = "audio/mpeg"
M4A = "audio/mp4"
WAV = "audio/wav"
MP4 = "video/mp4"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ALLOWED: tuple[str, ...] = (PDF, PNG, JPEG, GIF, WEBP, TEXT, MP3, M4A, WAV, MP4, DOCX, XLSX)
"""The media types accepted (415 for anything else)."""
EXTENSIONS: dict[str, str] = {
    PDF: ".pdf",
    PNG: ".png",
    JPEG: ".jpg",
    GIF: ".gif",
    WEBP: ".webp",
    TEXT: ".txt",
    MP3: ".mp3",
    M4A: ".m4a",
    WAV: ".wav",
    MP4: ".mp4",
    DOCX: ".docx",
    XLSX: ".xlsx",
}
_ZIP = b"PK\x03\x04"
_CONTENT_TYPES = b"[Content_Types].xml"
_TEXT_CONTROLS = frozenset(range(32)) - {9, 10, 13}


def sniff(head: bytes) -> str | None:
    """The media type of a file from its first bytes (`SNIFF_BYTES`, or all of a smaller
    file), or None when it is none of `ALLOWED`."""
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return WAV
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return MP3
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return M4A if brand in (b"M4A ", b"M4B ") else MP4
    if head.startswith(_ZIP):
        return _office(head)
    return TEXT if _is_text(head) else None


def _office(head: bytes) -> str | None:
    """DOCX or XLSX for a zip whose first entry is `[Content_Types].xml`, else None."""
    name_length = int.from_bytes(head[26:28], "little")
    if head[30 : 30 + name_length] != _CONTENT_TYPES:
        return None
    if b"word/" in head:
        return DOCX
    if b"xl/" in head:
        return XLSX
    return None


def _is_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        # the head may end inside a character: up to 3 bytes of it may be cut off
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or exc.reason != "unexpected end of data":
            return False
        text = head[: exc.start].decode("utf-8")
    return not any(ord(c) in _TEXT_CONTROLS or c == "\x7f" for c in text)


def safe_name(raw: str | None, media_type: str) -> str:
    """A file name to keep (sealed): the base name of what the client sent, without
    directories, control characters or a leading dot, at most `MAX_NAME` characters; an
    empty one becomes `attachment<ext>` (the extension of the type found)."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in unicodedata.normalize("NFC", name) if c.isprintable())
    name = name.strip().lstrip(".").strip()[:MAX_NAME]
    return name or f"attachment{EXTENSIONS.get(media_type, '')}"


@dataclass(frozen=True)
class Attachment:
    """One file an incident's events list (`incident.attachment.added.v1`)."""

    attachment_id: str
    digest: str
    size: int
    media_type: str
    name: str
    author: str
    audience: str
    message_id: str | None
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat().replace("+00:00", "Z")}


def attachments_of(events: Iterable[Envelope]) -> list[Attachment]:
    """The files an incident's events list, oldest first (names as the events carry
    them: sealed unless the events were opened)."""
    return [
        Attachment(
            attachment_id=e.data["attachment_id"],
            digest=e.data["digest"],
            size=e.data["size"],
            media_type=e.data["media_type"],
            name=e.data["name"],
            author=e.data["author"],
            audience=e.data.get("audience", "handlers"),
            message_id=e.data.get("message_id"),
            at=e.time,
        )
        for e in events
        if e.type == AttachmentAdded.TYPE
    ]


def visible_to_reporter(attachment: Attachment) -> bool:
    """The reporter sees the files she added and those the handlers sent her."""
    return attachment.author == "reporter" or attachment.audience == "reporter"


def find(attachments: Sequence[Attachment], attachment_id: str) -> Attachment | None:
    return next((a for a in attachments if a.attachment_id == attachment_id), None)
