"""Evidence files, pure parts: the type by content, the safe name, and sealed chunks that
cannot be reordered, swapped between files or cut short."""

from __future__ import annotations

import io
import zipfile

import pytest

from services.domain import attachments as a
from services.infra.crypto import CryptoError, new_data_key, open_chunk, seal_chunk


def office(part: str) -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr(f"{part}/document.xml", "<x/>")
    return raw.getvalue()


def plain_zip() -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as z:
        z.writestr("payload.exe", b"MZ")
    return raw.getvalue()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"%PDF-1.7\n", a.PDF),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", a.PNG),
        (b"\xff\xd8\xff\xe0\0\x10JFIF", a.JPEG),
        (b"GIF89a\x01\0", a.GIF),
        (b"RIFF\0\0\0\0WEBPVP8 ", a.WEBP),
        (b"RIFF\0\0\0\0WAVEfmt ", a.WAV),
        (b"ID3\x04\0\0", a.MP3),
        (b"\xff\xfb\x90\x64", a.MP3),
        (b"\0\0\0\x20ftypM4A \0\0\0\0", a.M4A),
        (b"\0\0\0\x18ftypisom\0\0\0\0", a.MP4),
        ("Der Filialleiter sagte: 你好\n".encode(), a.TEXT),
        (office("word"), a.DOCX),
        (office("xl"), a.XLSX),
        (plain_zip(), None),  # a zip that is no Office document
        (b"\x7fELF\x02\x01\x01", None),
        (b"MZ\x90\0\x03", None),
        (b"plain text with a NUL\0", None),
        (b"", None),
    ],
)
def test_the_type_is_found_in_the_content(head: bytes, expected: str | None) -> None:
    assert a.sniff(head) == expected


def test_text_cut_inside_a_character_is_still_text() -> None:
    assert a.sniff("证据".encode()[:-1]) == a.TEXT


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd.pdf", "passwd.pdf"),
        ("C:\\Users\\li\\Desktop\\chat.png", "chat.png"),
        ("/abs/.hidden.txt", "hidden.txt"),
        ("a\x00b\nc.txt", "abc.txt"),
        ("..", "attachment.pdf"),
        (None, "attachment.pdf"),
        ("x" * 500, "x" * a.MAX_NAME),
    ],
)
def test_the_name_is_reduced_to_a_safe_base_name(raw: str | None, expected: str) -> None:
    assert a.safe_name(raw, a.PDF) == expected


def test_chunks_cannot_be_reordered_swapped_or_cut_short() -> None:
    key = new_data_key()
    first = seal_chunk(key, "inc", "file-1", 0, False, b"one")
    last = seal_chunk(key, "inc", "file-1", 1, True, b"two")
    assert open_chunk(key, "inc", "file-1", 0, False, first) == b"one"
    assert open_chunk(key, "inc", "file-1", 1, True, last) == b"two"
    for place in (
        ("inc", "file-1", 1, True, first),  # reordered
        ("inc", "file-1", 0, False, last),
        ("inc", "file-2", 0, False, first),  # moved to another file
        ("other", "file-1", 0, False, first),  # or another incident
        ("inc", "file-1", 0, True, first),  # the file cut after its first chunk
    ):
        with pytest.raises(CryptoError):
            open_chunk(key, *place)
    with pytest.raises(CryptoError):
        open_chunk(new_data_key(), "inc", "file-1", 0, False, first)  # the key is gone
