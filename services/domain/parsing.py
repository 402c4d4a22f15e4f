"""Reading text a person or another system sent, with errors that say where it went wrong.

Pure: the HTTP edge, the event consumers and the configuration check word their
refusals with these, so a malformed body names its line and column (never a byte
offset dressed as a field name) and a time without an offset is refused everywhere.
Messages never quote the input: it may be a report.
"""

from __future__ import annotations

import re
from datetime import datetime

RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)
"""RFC 3339 `date-time` (section 5.6): the offset is required, `Z` or `±hh:mm`."""
RFC3339_HINT = "an RFC 3339 date-time with a timezone offset, e.g. 2026-11-25T10:00:00Z"


def parse_rfc3339(text: object) -> datetime:
    """An aware datetime from RFC 3339 text, or ValueError.

    Bare numbers (`12345`, read as seconds since 1970 by pydantic), dates without a time
    and times without an offset are refused: each names a different instant to
    different readers.
    """
    if isinstance(text, datetime):
        if text.tzinfo is None:
            raise ValueError(f"needs a timezone offset: {RFC3339_HINT}")
        return text
    if not isinstance(text, str) or not RFC3339.match(text):
        raise ValueError(f"must be {RFC3339_HINT}")
    digits = text.replace("z", "Z").replace("t", "T")
    if "." in digits:  # Python reads at most microseconds: drop the nanosecond digits
        head, _, tail = digits.partition(".")
        fraction = re.match(r"\d+", tail)
        assert fraction is not None  # the pattern matched digits after the dot
        digits = f"{head}.{fraction.group()[:6]}{tail[fraction.end() :]}"
    try:
        return datetime.fromisoformat(digits)
    except ValueError:
        raise ValueError(f"is not a valid date or time: {RFC3339_HINT}") from None


def position(doc: str, pos: int) -> tuple[int, int]:
    """The 1-based line and column of character `pos` in `doc` (as `json` counts them)."""
    pos = max(0, min(pos, len(doc)))
    line = doc.count("\n", 0, pos) + 1
    column = pos - doc.rfind("\n", 0, pos)
    return line, column


def json_error(problem: str, doc: str, pos: int) -> str:
    """`Expecting value at line 3, column 14`: a JSON decoder's error where a person looks."""
    line, column = position(doc, pos)
    return f"{problem} at line {line}, column {column}"
