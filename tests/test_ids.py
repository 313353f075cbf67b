"""Task ids (random uuid4s) and the rules for caller-supplied ids (`check_id`)."""

from __future__ import annotations

import itertools
import os
import re
import sys
import uuid
from collections import Counter
from typing import Any

import pytest

from taskward._ids import MAX_ID_LENGTH, check_id, check_optional_id, new_task_id

UUID4_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# Positions of the 30 random hex digits in the 36-character form (not the version digit 14,
# not the variant digit 19, not the dashes).
RANDOM_COLUMNS = [i for i in range(36) if i not in (8, 13, 14, 18, 19, 23)]


def many_ids(n: int) -> list[str]:
    return [new_task_id() for _ in range(n)]


def test_ids_are_canonical_uuid4_strings() -> None:
    for task_id in many_ids(3000):  # more than one batch
        assert UUID4_RE.fullmatch(task_id), task_id
        parsed = uuid.UUID(task_id)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == task_id


def test_ids_are_unique_across_batches() -> None:
    ids = many_ids(50_000)
    assert len(set(ids)) == len(ids)


def test_every_random_digit_is_uniform() -> None:
    """A chi-squared test per hex column (15 degrees of freedom) with a generous bound."""
    n = 16_000
    ids = many_ids(n)
    expected = n / 16
    worst = 0.0
    for column in RANDOM_COLUMNS:
        counts = Counter(task_id[column] for task_id in ids)
        assert set(counts) == set("0123456789abcdef"), column
        chi2 = sum((counts[d] - expected) ** 2 / expected for d in "0123456789abcdef")
        worst = max(worst, chi2)
    # p < 1e-6 for 15 dof is ~ 56; a stuck or biased column scores in the thousands.
    assert worst < 60


def test_the_variant_digit_takes_its_four_values_evenly() -> None:
    n = 8000
    counts = Counter(task_id[19] for task_id in many_ids(n))
    assert set(counts) == set("89ab")
    assert all(abs(c - n / 4) < n / 4 * 0.15 for c in counts.values())


def test_consecutive_ids_share_no_structure() -> None:
    ids = many_ids(2048)
    # Neighbours (also across the 1024 batch boundary) are independent: on average about
    # 30/16 random digits coincide by chance, never most of them.
    same = [sum(a[i] == b[i] for i in RANDOM_COLUMNS) for a, b in itertools.pairwise(ids)]
    assert max(same) < 12
    assert 1.0 < sum(same) / len(same) < 3.0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    """Like uuid.uuid4(): a worker forked from a process that made ids (gunicorn --preload,
    multiprocessing) must not draw the same ids as its parent or its siblings."""
    new_task_id()  # the parent has made an id, as a manager's constructor does
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write_end, ",".join(many_ids(100)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = set(pipe.read().decode().split(","))
    os.waitpid(pid, 0)
    assert len(child_ids) == 100
    assert not child_ids & set(many_ids(100))


# -- check_id -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "good",
    [
        "a",
        "x" * MAX_ID_LENGTH,
        "chat:42",
        "user@example.com",
        "a-b_c.d/e+f=g,h;i<j>k",
        "~tilde|pipe^caret`tick'quote!bang#hash$dollar%pct&amp(paren)",
        "日本語",
        "emoji-🦊",
        "café",
        str(uuid.uuid4()),
    ],
)
def test_check_id_accepts_printable_ids(good: str) -> None:
    assert check_id(good, "item_id") is good


def test_max_id_length_is_256() -> None:
    assert MAX_ID_LENGTH == 256
    check_id("x" * 256, "item_id")
    with pytest.raises(ValueError, match="256"):
        check_id("x" * 257, "item_id")
    check_id("é" * 256, "item_id")  # characters, not bytes


def test_check_id_refuses_empty() -> None:
    with pytest.raises(ValueError, match="item_id"):
        check_id("", "item_id")


@pytest.mark.parametrize("char", [chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]])
def test_check_id_refuses_control_characters(char: str) -> None:
    with pytest.raises(ValueError, match="user_id"):
        check_id(f"a{char}b", "user_id")
    with pytest.raises(ValueError):
        check_id(char, "user_id")


WHITESPACE = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]


@pytest.mark.parametrize("char", WHITESPACE, ids=[f"U+{ord(c):04X}" for c in WHITESPACE])
def test_check_id_refuses_every_whitespace_character(char: str) -> None:
    with pytest.raises(ValueError):
        check_id(f"a{char}b", "user_id")


@pytest.mark.parametrize("char", list('{}*?[]\\"'))
def test_check_id_refuses_key_and_hash_tag_characters(char: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        check_id(f"a{char}b", "item_id")


@pytest.mark.parametrize("code", [0xD800, 0xDBFF, 0xDC80, 0xDFFF], ids=hex)
def test_check_id_refuses_lone_surrogates(code: int) -> None:
    """They cannot be encoded (UTF-8), so a store could never write such an id."""
    with pytest.raises(ValueError):
        check_id(f"a{chr(code)}b", "item_id")


@pytest.mark.parametrize("bad", [5, 5.0, None, b"id", bytearray(b"id"), ["id"], uuid.uuid4()])
def test_check_id_refuses_non_str(bad: Any) -> None:
    with pytest.raises(TypeError, match="item_id"):
        check_id(bad, "item_id")


def test_check_id_refuses_str_subclasses_only_by_content() -> None:
    class Tagged(str):
        pass

    assert check_id(Tagged("ok"), "item_id") == "ok"
    with pytest.raises(ValueError):
        check_id(Tagged("not ok"), "item_id")


def test_check_optional_id() -> None:
    assert check_optional_id(None, "user_id") is None
    assert check_optional_id("alice", "user_id") == "alice"
    with pytest.raises(ValueError):
        check_optional_id("", "user_id")
    with pytest.raises(TypeError):
        check_optional_id(1, "user_id")
