"""People named in words: the normal form of a name and matching it against the directory.

A reporter rarely knows a person id. She writes "Chen Mei", "chen  mei", the same in
full-width letters, "Chén Méi" or "陈梅"; intake resolves each free-text name to the
one person it can only mean, or records that it matched nobody or several people (the report is then
*conflict-unresolved*, see `services.domain.events.PersonMatch`).

`normalise` is the one normal form used for the directory's names and for what a
reporter typed: Unicode NFKC (full-width forms become ASCII), case folded, diacritics
removed, punctuation turned into spaces, spaces collapsed, and the order of the words
ignored ("Mei Chen" is "Chen Mei": family-name order varies between scripts and forms).
Scripts without spaces (Chinese) keep their characters; "陈 梅" and "陈梅" are one name.

`NameIndex` maps normal forms to person ids; `resolve` answers a `PersonMatch`-shaped
result. Pure: no I/O.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

MAX_NAME_LENGTH = 200
"""A free-text name longer than this is refused (4xx) before any matching."""

_JOINERS = frozenset("'\u2019`\u02bc")  # apostrophes: ', right single quote, `, modifier
How = Literal["exact", "normalised", "alternative_name", "none", "ambiguous"]


def _is_cjk(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F") and ch.isalpha()


def normalise(text: str) -> str:
    """The normal form of a name: what two spellings of one name have in common."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    stripped = "".join(
        ch for ch in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(ch)
    )
    words: list[str] = []
    current: list[str] = []
    for ch in stripped:
        if ch in _JOINERS:
            continue  # O'Brien is OBrien, not "O Brien"
        if ch.isalnum() and not _is_cjk(ch):
            current.append(ch)
            continue
        if current:
            words.append("".join(current))
            current = []
        if _is_cjk(ch):
            words.append(ch)  # one word per ideograph: spacing and order do not matter
    if current:
        words.append("".join(current))
    if words and all(len(w) == 1 and _is_cjk(w) for w in words):
        return "".join(words)  # a name in Chinese characters keeps its order
    return " ".join(sorted(words))


def is_valid_name(text: str) -> bool:
    """Something a person could have typed as a name: not empty once normalised, not
    absurdly long, no control characters."""
    if not text or len(text) > MAX_NAME_LENGTH:
        return False
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in text):
        return False
    return bool(normalise(text))


@dataclass(frozen=True)
class NameMatch:
    """What one free-text name resolved to."""

    how: How
    person_id: str | None = None
    candidates: tuple[str, ...] = ()


@dataclass
class NameIndex:
    """Normal forms of the directory's names and alternative names, to person ids."""

    _primary: dict[str, set[str]] = field(default_factory=dict)
    _alternative: dict[str, set[str]] = field(default_factory=dict)
    _exact: dict[str, set[str]] = field(default_factory=dict)

    def add(self, person_id: str, name: str | None, alternative_names: Iterable[str] = ()) -> None:
        if name:
            self._exact.setdefault(name, set()).add(person_id)
            self._primary.setdefault(normalise(name), set()).add(person_id)
        for alt in alternative_names:
            if alt:
                self._exact.setdefault(alt, set()).add(person_id)
                self._alternative.setdefault(normalise(alt), set()).add(person_id)

    @classmethod
    def of(cls, people: Mapping[str, tuple[str | None, Iterable[str]]]) -> NameIndex:
        """An index of `{person_id: (name, alternative_names)}`."""
        index = cls()
        for person_id, (name, alternatives) in people.items():
            index.add(person_id, name, alternatives)
        return index

    def resolve(self, text: str) -> NameMatch:
        return resolve(text, self._exact, self._primary, self._alternative)


def resolve(
    text: str,
    exact: Mapping[str, Iterable[str]],
    primary: Mapping[str, Iterable[str]],
    alternative: Mapping[str, Iterable[str]],
) -> NameMatch:
    """Resolve `text` given the people whose name is exactly it, whose name has its
    normal form, and whose alternative name has its normal form.

    Every person any of the three finds is a candidate: one candidate is a match
    (`exact` if the text is their name or an alternative name to the letter, else
    `normalised` or `alternative_name`), several are `ambiguous`, none is `none`.
    """
    key = normalise(text)
    by_exact = set(exact.get(text, ()))
    by_primary = set(primary.get(key, ())) if key else set()
    by_alt = set(alternative.get(key, ())) if key else set()
    everyone = by_exact | by_primary | by_alt
    if not everyone:
        return NameMatch("none")
    if len(everyone) > 1:
        return NameMatch("ambiguous", candidates=tuple(sorted(everyone)))
    (person_id,) = everyone
    how: How = "exact" if by_exact else ("normalised" if by_primary else "alternative_name")
    return NameMatch(how, person_id=person_id, candidates=(person_id,))
