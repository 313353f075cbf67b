"""Cutting text to a length without breaking a character: the `max_chars` rule.

A cut never falls inside a user-perceived character: not between the halves
of a character outside the Basic Multilingual Plane (counted as two units
where a platform counts UTF-16, as Discord and Telegram do), nor before a
combining mark, a variation selector, an emoji modifier or tag, after a zero
width joiner, between the two regional indicators of a flag, or between CR
and LF. The cut text ends with a visible marker saying how many characters
were cut, and the whole, marker included, fits the limit.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["MARKER", "MIN_LIMIT", "clusters", "cut_text", "utf16_length"]

#: What replaces the cut part; ``{n}`` is the number of characters cut.
MARKER = "… [truncated {n} characters]"
#: The smallest limit a cut text fits in, marker included.
MIN_LIMIT = 64

_ZWJ = "\u200d"
_MARKS = frozenset({"Mn", "Mc", "Me"})


def _is_regional(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


def _extends(ch: str) -> bool:
    """Whether `ch` belongs to the character before it."""
    return (
        unicodedata.category(ch) in _MARKS  # combining marks, variation selectors, keycaps
        or ch == _ZWJ
        or "\U0001f3fb" <= ch <= "\U0001f3ff"  # emoji skin tone modifiers
        or "\U000e0020" <= ch <= "\U000e007f"  # emoji tag sequences
    )


def clusters(text: str) -> Iterator[str]:
    """`text` in user-perceived characters (close to Unicode's extended grapheme clusters)."""
    start = 0
    n = len(text)
    i = 1
    while i <= n:
        if i < n:
            ch, prev = text[i], text[i - 1]
            joined = (
                _extends(ch)
                or prev == _ZWJ
                or (prev == "\r" and ch == "\n")
                or (_is_regional(ch) and _is_regional(prev) and _odd_regionals(text, start, i))
            )
            if joined:
                i += 1
                continue
        yield text[start:i]
        start = i
        i += 1


def _odd_regionals(text: str, start: int, end: int) -> bool:
    """Whether the cluster text[start:end] ends with an unpaired regional indicator."""
    count = 0
    for ch in reversed(text[start:end]):
        if not _is_regional(ch):
            break
        count += 1
    return count % 2 == 1


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units (what JavaScript's `length` says)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def cut_text(text: str, limit: int, *, utf16: bool = False) -> str:
    """`text` if it fits `limit`, else its head, cut between characters, and `MARKER`.

    `limit` counts code points, or UTF-16 units with `utf16`; 0 means no limit.
    Raises ValueError for a limit below `MIN_LIMIT` (the marker would not fit).
    """
    if limit == 0:
        return text
    if limit < MIN_LIMIT:
        raise ValueError(f"a limit must be 0 or at least {MIN_LIMIT}, not {limit}")
    size = utf16_length if utf16 else len
    if len(text) <= limit and size(text) <= limit:
        return text
    # The marker with the largest count it can show: the cut never makes it longer.
    budget = limit - size(MARKER.format(n=len(text)))
    kept = 0
    end = 0
    for cluster in clusters(text):
        units = size(cluster)
        if kept + units > budget:
            break
        kept += units
        end += len(cluster)
    return text[:end] + MARKER.format(n=len(text) - end)
