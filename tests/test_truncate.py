"""The max_chars rule: a cut between user-perceived characters, with a marker that fits."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskward._truncate import MARKER, MIN_LIMIT, clusters, cut_text, utf16_length


def cut_count(text: str) -> int:
    match = re.search(r"… \[truncated (\d+) characters\]$", text)
    assert match is not None, text
    return int(match.group(1))


def test_a_text_that_fits_is_left_alone() -> None:
    assert cut_text("hello", 64) == "hello"
    assert cut_text("x" * 64, 64) == "x" * 64
    assert cut_text("anything" * 1000, 0) == "anything" * 1000


def test_a_long_text_is_cut_with_a_marker_saying_how_much() -> None:
    out = cut_text("a" * 1000, 100)
    assert len(out) <= 100
    kept = out[: out.index("…")]
    assert kept == "a" * len(kept)
    assert cut_count(out) == 1000 - len(kept)


def test_a_combining_sequence_is_never_split() -> None:
    # "e" + combining acute, repeated: a cut must keep each pair whole.
    text = "e\u0301" * 200
    for limit in range(MIN_LIMIT, MIN_LIMIT + 40):
        out = cut_text(text, limit)
        kept = out[: out.index("…")]
        assert len(kept) % 2 == 0 and not kept.endswith("e")
        assert len(out) <= limit


def test_emoji_sequences_and_flags_stay_whole() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl
    thumbs = "\U0001f44d\U0001f3fd"  # thumbs up, medium skin tone
    flag = "\U0001f1eb\U0001f1f7"  # FR
    keycap = "1\ufe0f\u20e3"
    text = (family + thumbs + flag + keycap + "\r\n") * 40
    units = [family, thumbs, flag, keycap, "\r\n"]
    assert list(clusters(family + thumbs + flag + keycap + "\r\n")) == units
    for limit in range(MIN_LIMIT, MIN_LIMIT + 30):
        out = cut_text(text, limit)
        kept = out[: out.index("…")]
        assert "".join(list(clusters(kept))) == kept
        assert all(c in units for c in clusters(kept))


def test_three_regional_indicators_pair_the_first_two() -> None:
    f, r, d = "\U0001f1eb", "\U0001f1f7", "\U0001f1e9"
    assert list(clusters(f + r + d + "x")) == [f + r, d, "x"]


def test_utf16_counting_never_cuts_an_astral_character_in_half() -> None:
    text = "\U0001f600" * 100  # each is two UTF-16 units
    for limit in range(MIN_LIMIT, MIN_LIMIT + 5):
        out = cut_text(text, limit, utf16=True)
        assert utf16_length(out) <= limit
        assert cut_count(out) == 100 - out.count("\U0001f600")
    assert utf16_length("a\U0001f600") == 3


def test_a_limit_too_small_for_the_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        cut_text("x" * 100, MIN_LIMIT - 1)
    assert len(MARKER.format(n=10**12)) < MIN_LIMIT


@given(st.text(min_size=0, max_size=300), st.integers(MIN_LIMIT, 200), st.booleans())
def test_any_text_fits_and_keeps_a_prefix(text: str, limit: int, utf16: bool) -> None:
    out = cut_text(text, limit, utf16=utf16)
    size = utf16_length if utf16 else len
    assert size(out) <= limit
    if out != text:
        kept = out[: out.rindex("… [truncated")]
        assert text.startswith(kept)
        assert cut_count(out) == len(text) - len(kept)
        # The cut fell between clusters of the original text.
        boundaries = {0}
        position = 0
        for cluster in clusters(text):
            position += len(cluster)
            boundaries.add(position)
        assert len(kept) in boundaries
