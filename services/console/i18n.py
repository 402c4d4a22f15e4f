"""The console's languages: gettext catalogs, the reader's choice, dates in her language.

English is the source language: the templates are written in it. Every other language
is a catalog, `locale/<tag>/LC_MESSAGES/messages.po` beside this module (tags as Babel
spells them: `zh_Hans` is Simplified Chinese). The catalogs are compiled in memory when
this module is imported, from the `.po` files themselves, so a fresh clone or an
installed wheel needs no build step and no `.mo` file can be stale. Adding a language is
adding a catalog (docs/console.md says how; `make messages` extracts and updates).

A page's language is the `lang` cookie's, set by the switch every page shows (a plain
link, no JavaScript), else the best match of the browser's `Accept-Language` (Babel's
`negotiate_locale`), else English. Only the pages change: the JSON API stays English.

Strings shown to people that are not in a template are marked here with `N_` (status
words, category names) or are the literal titles and details of `Problem(...)` and
`ConsoleError(...)` calls, which `extract_problems` collects: an error page shows them
in the reader's language when the catalog has them, and as they are otherwise.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, datetime
from functools import cache
from gettext import NullTranslations
from io import BytesIO
from pathlib import Path
from typing import IO, Any

from babel import Locale, negotiate_locale
from babel.dates import format_datetime
from babel.messages.extract import extract_python
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from markupsafe import Markup

LOCALE_DIR = Path(__file__).parent / "locale"
SOURCE = "en"
"""The templates' own language (no catalog)."""
COOKIE = "lang"
"""The cookie the language switch sets (a preference, not a secret)."""
COOKIE_MAX_AGE = 365 * 86400

ALIASES = {"zh": "zh_Hans", "zh_cn": "zh_Hans", "zh_sg": "zh_Hans", "zh_hans_cn": "zh_Hans"}
"""Browser tags that mean a catalog's language (lower case, `_`-separated)."""

Gettext = Callable[[str], str]


def N_(message: str) -> str:
    """Mark a string for extraction; it is translated where it is shown."""
    return message


@cache
def catalogs() -> Mapping[str, NullTranslations]:
    """Every language's translations, compiled from its `.po` (English: none needed)."""
    found: dict[str, NullTranslations] = {SOURCE: NullTranslations()}
    for po in sorted(LOCALE_DIR.glob("*/LC_MESSAGES/messages.po")):
        with po.open("rb") as file:
            catalog = read_po(file)
        compiled = BytesIO()
        write_mo(compiled, catalog)
        compiled.seek(0)
        found[po.parent.parent.name] = Translations(compiled)
    return found


def languages() -> tuple[str, ...]:
    """The tags offered: English first, then the catalogs'."""
    return tuple(catalogs())


def _known(tag: str | None) -> str | None:
    """The catalog tag a cookie value names (`zh-Hans`, `zh_hans` and `zh_Hans` alike)."""
    if not tag:
        return None
    wanted = tag.strip().replace("-", "_").lower()[:20]
    wanted = ALIASES.get(wanted, wanted).lower()
    return next((t for t in languages() if t.lower() == wanted), None)


def _preferred(accept_language: str) -> list[str]:
    """The tags of an `Accept-Language` header, most wanted first (RFC 9110 q-values)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(accept_language[:500].split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        match = re.search(r"q\s*=\s*([0-9.]+)", params)
        if match:
            try:
                quality = float(match.group(1))
            except ValueError:
                quality = 0.0
        if tag and tag != "*" and quality > 0:
            ranked.append((-quality, index, tag.replace("-", "_")))
    return [tag for _, _, tag in sorted(ranked)]


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The language of a page: the switch's cookie, else `Accept-Language`, else English."""
    chosen = _known(cookie)
    if chosen:
        return chosen
    if accept_language:
        offered = [t for t in languages()]
        found = negotiate_locale(_preferred(accept_language), offered, sep="_", aliases=ALIASES)
        if found:
            return _known(found) or SOURCE
    return SOURCE


def html_lang(tag: str) -> str:
    """The BCP 47 tag for `<html lang>`: `en`, `zh-Hans`."""
    return tag.replace("_", "-")


def display_name(tag: str) -> str:
    """A language's name in itself (what the switch shows): English, 中文 (简体)."""
    return (Locale.parse(tag).get_display_name() or tag).replace(" (", " ").rstrip(")")


def translations(tag: str) -> NullTranslations:
    return catalogs().get(tag) or catalogs()[SOURCE]


def _utc(moment: datetime | str) -> datetime:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def when_text(moment: datetime | str | None, tag: str = SOURCE) -> str:
    """A time as the reader reads it: Babel's medium date and time in her language, UTC
    (`Dec 7, 2026, 4:35:18 AM UTC`, `2026年12月7日 04:35:18 UTC`); a dash for none."""
    if moment is None:
        return "-"
    shown = format_datetime(_utc(moment), "medium", tzinfo=UTC, locale=Locale.parse(tag))
    return f"{shown} UTC"


def when(moment: datetime | str | None, tag: str = SOURCE) -> Markup | str:
    """`when_text` inside a `<time datetime=...>` (RFC 3339 UTC) for machines."""
    if moment is None:
        return "-"
    machine = _utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z")
    return Markup('<time datetime="{}">{}</time>').format(machine, when_text(moment, tag))


# Status words (services/domain/status.py says them in English, on every page and in
# the API); the console says them in the reader's language.
STATUS_WORDS = {
    "new": N_("new"),
    "submitted": N_("submitted"),
    "triaged": N_("triaged"),
    "escalated": N_("escalated"),
    "acknowledged": N_("acknowledged"),
    "investigating": N_("investigating"),
    "resolved": N_("resolved"),
    "closed": N_("closed"),
}
_REST = (
    (re.compile(r", (?P<where>.+) asked"), N_(", %(where)s asked")),
    (re.compile(r" to (?P<where>.+)"), N_(" to %(where)s")),
    (re.compile(r" at (?P<where>.+)"), N_(" at %(where)s")),
    (re.compile(r" with outcome"), N_(" with outcome")),
)
_STALLED = " (stalled: nobody left to ask)"
N_(" (stalled: nobody left to ask)")
_OVERDUE = " (overdue: no triage decision)"
N_(" (overdue: no triage decision)")
_LEVEL = re.compile(r"level (?P<number>\d+)")
N_("level %(number)s")
N_("the independent level")

TITLES = (N_("Incidents"), N_("Incidents audit"))
"""The consoles' names (services/intake/app.py, services/audit/app.py)."""
CATEGORIES = (
    N_("sexual misconduct"),
    N_("harassment"),
    N_("fraud"),
    N_("safety"),
    N_("security"),
    N_("other"),
)
"""The categories of the policies shipped (services/data); others are shown as named."""


SEVERITIES = (N_("critical"), N_("high"), N_("normal"), N_("low"))


def status_word(status: str, gettext: Gettext) -> str:
    return gettext(STATUS_WORDS[status]) if status in STATUS_WORDS else status


def level_label(text: str, gettext: Gettext) -> str:
    """`level 2`, `the independent level` (status.py's words) in the reader's language."""
    if text == "the independent level":
        return gettext("the independent level")
    level = _LEVEL.fullmatch(text)
    return gettext("level %(number)s") % {"number": level["number"]} if level else text


def status_rest(label: str, status: str, gettext: Gettext) -> str:
    """What a status label says after its status word (` at level 2`), translated."""
    rest = label[len(status) :] if label.startswith(status) else ""
    flags = ""
    for flag in (_OVERDUE, _STALLED):  # status.py appends them in this order, at the end
        if rest.endswith(flag):
            rest, flags = rest[: -len(flag)], gettext(flag) + flags
    for pattern, message in _REST:
        found = pattern.fullmatch(rest)
        if found:
            where = found.groupdict().get("where")
            rest = gettext(message) % ({"where": level_label(where, gettext)} if where else {})
            break
    return rest + flags


def status_label(label: str, gettext: Gettext) -> str:
    """A whole status label (`escalated to level 2`) in the reader's language."""
    status = label.split(",")[0].split(" ")[0]
    return status_word(status, gettext) + status_rest(label, status, gettext)


# Extraction ---------------------------------------------------------------------------

_PROBLEM_CALLS = frozenset({"Problem", "ConsoleError"})


def extract_problems(
    fileobj: IO[bytes],
    keywords: Mapping[str, Any],
    comment_tags: Collection[str],
    options: Mapping[str, Any],
) -> Iterator[tuple[int, Any, Any, Any]]:
    """A Babel extractor (babel.cfg): the usual `_`, `N_`, `gettext` calls of a Python
    file, and the literal title and detail of each `Problem(...)` and `ConsoleError(...)`
    call, which the console's error page shows in the reader's language."""
    source = fileobj.read()
    yield from extract_python(BytesIO(source), keywords, comment_tags, dict(options))  # type: ignore[arg-type]
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name not in _PROBLEM_CALLS:
            continue
        for arg in node.args[1:3]:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value:
                yield node.lineno, None, arg.value, []
