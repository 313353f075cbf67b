"""ValueEncoder: the JSON form of results, messages and output, as every reader sees it."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import json
import pathlib
import subprocess
import sys
import types
import uuid
from typing import Any, NamedTuple

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskward import TaskwardError
from taskward._encoding import (
    DEFAULT_MAX_VALUE_SIZE,
    MAX_DEPTH,
    MIN_MAX_VALUE_SIZE,
    ValueEncoder,
    clean_text,
)
from taskward.errors import ValueNotEncodable

ENCODER = ValueEncoder()
NOT_JSON = "is not JSON-encodable; return JSON data, or pass encoder= to TaskManager"


def refusal(value: Any, encoder: ValueEncoder = ENCODER) -> ValueNotEncodable:
    with pytest.raises(ValueNotEncodable) as info:
        encoder.value(value, "result")
    return info.value


def compact_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


class Foo:
    pass


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    HIGH = 3


class Mode(enum.StrEnum):
    FAST = "fast"


class Point(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Source:
    url: str
    tags: frozenset[str]
    seen: datetime.date


@dataclasses.dataclass
class Answer:
    text: str
    sources: list[Source]
    color: Color
    extra: Any = None


class Doc(pydantic.BaseModel):
    title: str
    at: datetime.datetime
    id: uuid.UUID


class Reply(pydantic.BaseModel):
    docs: list[Doc]
    score: float


# -- the error ---------------------------------------------------------------------------


def test_value_not_encodable_carries_what_and_reason() -> None:
    exc = ValueNotEncodable("result['a']", "nan is not a JSON number")
    assert (exc.what, exc.reason) == ("result['a']", "nan is not a JSON number")
    assert str(exc) == "result['a']: nan is not a JSON number"
    assert isinstance(exc, TaskwardError)
    assert isinstance(exc, ValueError)


# -- scalars -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [None, True, False, 0, -7, 2**64 - 1, -(2**64) + 1, 1.5, -0.0, 1e308, "", "héllo"]
)
def test_plain_scalars_pass_as_they_are(value: Any) -> None:
    assert ENCODER.value(value, "result") is value


@pytest.mark.parametrize(
    "value", [None, True, 0, 2**64 - 1, 2**64, -(2**64), 10**100, 0.1, "x", "é" * 10, "\udcff"]
)
def test_a_scalar_alone_and_in_a_list_agree(value: Any) -> None:
    # Alone, a scalar skips the walk; in a list it takes it.
    assert ENCODER.value([value], "result") == [ENCODER.value(value, "result")]


def test_ints_past_64_bits_pass() -> None:
    assert ENCODER.value(10**100, "result") == 10**100
    assert ENCODER.value({"n": -(10**100)}, "result") == {"n": -(10**100)}


def test_an_int_python_cannot_write_out_is_not_encodable() -> None:
    huge = 10 ** (sys.get_int_max_str_digits() + 1)
    for value in (huge, {"n": [huge]}):
        exc = refusal(value)
        assert exc.what == "result"
        assert exc.reason.startswith("holds an int Python cannot write out: ")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_not_encodable(value: float) -> None:
    exc = refusal(value)
    assert str(exc) == f"result: {value!r} is not a JSON number"
    assert str(refusal({"scores": [1.0, value]})) == (
        f"result['scores'][1]: {value!r} is not a JSON number"
    )


def test_subclasses_of_scalars_become_the_base_type() -> None:
    class Name(str):
        def __str__(self) -> str:
            return "not the text"

    class Count(int):
        pass

    class Ratio(float):
        pass

    out = ENCODER.value([Name("ann"), Count(3), Ratio(0.5)], "result")
    assert out == ["ann", 3, 0.5]
    assert [type(item) for item in out] == [str, int, float]
    assert type(ENCODER.value(Count(3), "result")) is int
    assert str(refusal(Ratio("nan"))) == "result: nan is not a JSON number"


# -- strings and surrogates --------------------------------------------------------------


def test_clean_text() -> None:
    ascii_text, accented = "plain", "naïve ☃ 😀"
    assert clean_text(ascii_text) is ascii_text
    assert clean_text(accented) is accented
    assert clean_text("file\udcff.txt") == "file\ufffd.txt"
    assert clean_text("\ud83d") == "\ufffd"
    assert clean_text("a\ud83db") == "a\ufffdb"
    assert clean_text("\ude00\ud83d") == "\ufffd\ufffd"
    # A high surrogate followed by a low one is the character the pair stands for.
    assert clean_text("\ud83d\ude00") == "😀"


def test_surrogates_are_replaced_in_strings_and_keys_at_any_depth() -> None:
    value = {"name\udcff": ["ok", ("bad\udc80",)], "k": {"\udcfe": "\ud800"}}
    out = ENCODER.value(value, "result")
    assert out == {"name\ufffd": ["ok", ["bad\ufffd"]], "k": {"\ufffd": "\ufffd"}}
    json.dumps(out, ensure_ascii=False).encode()  # raises if a surrogate were left
    assert ENCODER.value("\udcff", "result") == "\ufffd"


# -- containers --------------------------------------------------------------------------


def test_dict_keys_become_strings_as_json_dumps_makes_them() -> None:
    value = {"s": 1, 2: 2, 1.5: 3, True: 4, False: 5, None: 6, -2.5: 7, 1e100: 8}
    out = ENCODER.value(value, "result")
    assert out == json.loads(json.dumps(value))
    assert list(out) == ["s", "2", "1.5", "true", "false", "null", "-2.5", "1e+100"]


def test_enum_keys_of_str_and_int_become_their_value() -> None:
    assert ENCODER.value({Mode.FAST: 1, Level.HIGH: 2}, "result") == {"fast": 1, "3": 2}


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ((1, 2), "(1, 2) of type tuple"),
        (frozenset(), "frozenset() of type frozenset"),
        (Color.RED, "<Color.RED: 'red'> of type test_encoding.Color"),
        (float("nan"), "nan of type float"),
        (b"k", "b'k' of type bytes"),
    ],
)
def test_other_dict_keys_are_not_encodable(key: Any, shown: str) -> None:
    exc = refusal({"a": [0, 1, {key: 1}]})
    assert exc.what == "result['a'][2]"
    assert exc.reason == f"dict key {shown} is not a str, int, float, bool or None"


def test_the_example_message() -> None:
    assert str(refusal({"a": [0, 1, {(1, 2): 3}]})) == (
        "result['a'][2]: dict key (1, 2) of type tuple is not a str, int, float, bool or None"
    )


def test_a_key_python_cannot_write_out_is_not_encodable() -> None:
    exc = refusal({10 ** (sys.get_int_max_str_digits() + 1): 1})
    assert exc.reason.startswith("dict key of type int that Python cannot write out: ")


def test_two_keys_that_become_one_are_not_encodable() -> None:
    assert str(refusal({"x": {1: "a", "1": "b"}})) == (
        "result['x']: dict keys 1 and '1' both become the JSON key '1'"
    )
    lone, replacement = "\udcff", "\ufffd"
    assert str(refusal({lone: 1, replacement: 2})) == (
        "result: dict keys '\\udcff' and '\ufffd' both become the JSON key '\ufffd'"
    )
    assert str(refusal({None: 1, "null": 2})) == (
        "result: dict keys None and 'null' both become the JSON key 'null'"
    )


def test_lists_tuples_and_sets_become_lists() -> None:
    tags = {"b", "a", "c"}
    out = ENCODER.value({"t": (1, (2, [3])), "s": tags, "f": frozenset({4})}, "result")
    assert out == {"t": [1, [2, [3]]], "s": list(tags), "f": [4]}
    assert ENCODER.value(Point(1, 2), "result") == [1, 2]


def test_mappings_and_subclasses_of_containers_become_plain_ones() -> None:
    class Row(list[int]):
        pass

    value = {
        "o": collections.OrderedDict(a=1),
        "d": collections.defaultdict(Row, {"k": Row([1])}),
        "m": types.MappingProxyType({2: "two"}),
    }
    out = ENCODER.value(value, "result")
    assert out == {"o": {"a": 1}, "d": {"k": [1]}, "m": {"2": "two"}}
    assert [type(out[k]) for k in "odm"] == [dict, dict, dict]
    assert type(out["d"]["k"]) is list


def test_the_output_is_a_new_object() -> None:
    inner = [1, 2]
    value = {"inner": inner}
    out = ENCODER.value(value, "result")
    assert out is not value
    assert out["inner"] is not inner
    inner.append(3)
    assert out == {"inner": [1, 2]}


def test_shared_references_that_are_not_circular_are_encoded_each_time() -> None:
    shared = {"k": [1]}
    assert ENCODER.value([shared, shared, {"again": shared}], "result") == [
        {"k": [1]},
        {"k": [1]},
        {"again": {"k": [1]}},
    ]


def test_circular_references_are_not_encodable() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    assert str(refusal(loop)) == "result[1]: circular reference to a list"

    node: dict[str, Any] = {"name": "n"}
    node["children"] = [{"parent": node}]
    assert str(refusal({"root": node})) == (
        "result['root']['children'][0]['parent']: circular reference to a dict"
    )

    answer = Answer("t", [], Color.RED)
    answer.extra = [answer]
    assert str(refusal(answer)) == (
        "result['extra'][0]: circular reference to a test_encoding.Answer"
    )


def nested_lists(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_nesting_up_to_the_limit_passes() -> None:
    assert ENCODER.value(nested_lists(MAX_DEPTH), "result") == nested_lists(MAX_DEPTH)


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 100_000])
def test_nesting_past_the_limit_is_not_encodable(levels: int) -> None:
    exc = refusal(nested_lists(levels))
    assert exc.reason == f"nested deeper than {MAX_DEPTH} levels"
    assert exc.what == f"result{'[0]' * 8}…{MAX_DEPTH - 12} levels…{'[0]' * 4}"


def test_nesting_of_dicts_past_the_limit_is_not_encodable() -> None:
    value: dict[str, Any] = {}
    for _ in range(5_000):
        value = {"k": value}
    assert refusal(value).reason == f"nested deeper than {MAX_DEPTH} levels"


# -- other types -------------------------------------------------------------------------


def test_pydantic_models_are_dumped_in_json_mode() -> None:
    at = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    doc_id = uuid.UUID(int=7)
    reply = Reply(docs=[Doc(title="t\udcff", at=at, id=doc_id)], score=0.5)
    assert ENCODER.value({"reply": reply}, "result") == {
        "reply": {
            "docs": [{"title": "t\ufffd", "at": "2024-05-01T12:30:00Z", "id": str(doc_id)}],
            "score": 0.5,
        }
    }


def test_anything_whose_class_has_model_dump_is_dumped_in_json_mode() -> None:
    class Dumps:
        def __init__(self, out: Any) -> None:
            self.out = out

        def model_dump(self, *, mode: str) -> Any:
            assert mode == "json"
            return self.out

    assert ENCODER.value(Dumps({"k": (1,)}), "result") == {"k": [1]}
    assert str(refusal({"m": Dumps({"x": float("inf")})})) == (
        "result['m']['x']: inf is not a JSON number"
    )


def test_model_dump_found_on_the_instance_only_does_not_count() -> None:
    class Anything:
        def __getattr__(self, name: str) -> Any:
            return lambda **kw: {"made": "up"}

    assert "Anything is not JSON-encodable" in refusal(Anything()).reason


def test_a_failing_model_dump_is_not_encodable_and_its_error_is_the_cause() -> None:
    class Broken:
        def model_dump(self, *, mode: str) -> Any:
            raise KeyError("field")

    exc = refusal([Broken()])
    assert exc.what == "result[0]"
    assert exc.reason.startswith("KeyError while encoding an object of type ")
    assert exc.reason.endswith("Broken: 'field'")
    assert isinstance(exc.__cause__, KeyError)


def test_dataclasses_become_dicts_of_their_fields() -> None:
    source = Source("https://a.example", frozenset({"x"}), datetime.date(2024, 1, 2))
    answer = Answer("hi", [source], Color.PAIR, extra=Level.HIGH)
    assert ENCODER.value(answer, "result") == {
        "text": "hi",
        "sources": [{"url": "https://a.example", "tags": ["x"], "seen": "2024-01-02"}],
        "color": [1, 2],
        "extra": 3,
    }
    assert str(refusal(Answer("hi", [], Color.RED, extra={"f": Foo()}))) == (
        f"result['extra']['f']: object of type test_encoding.Foo {NOT_JSON}"
    )


def test_a_dataclass_class_is_not_an_instance() -> None:
    assert refusal(Source).reason == f"object of type type {NOT_JSON}"


def test_enums_become_their_value() -> None:
    out = ENCODER.value([Color.RED, Color.PAIR, Level.HIGH, Mode.FAST], "result")
    assert out == ["red", [1, 2], 3, "fast"]
    assert [type(item) for item in out] == [str, list, int, str]


def test_dates_times_and_str_like_types() -> None:
    tz = datetime.timezone(datetime.timedelta(hours=2))
    value = [
        datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=tz),
        datetime.date(2024, 1, 2),
        datetime.time(3, 4, 5),
        uuid.UUID(int=1),
        decimal.Decimal("1.10"),
        decimal.Decimal("NaN"),
        pathlib.PurePosixPath("/tmp/a b"),
        pathlib.Path("rel/x"),
    ]
    assert ENCODER.value(value, "result") == [
        "2024-01-02T03:04:05.000006+02:00",
        "2024-01-02",
        "03:04:05",
        "00000000-0000-0000-0000-000000000001",
        "1.10",
        "NaN",
        "/tmp/a b",
        "rel/x",
    ]


@pytest.mark.parametrize("value", [b"\x00", bytearray(b"a"), memoryview(b"a")])
def test_bytes_are_not_encodable(value: Any) -> None:
    exc = refusal({"blob": value})
    assert exc.what == "result['blob']"
    assert exc.reason == f"{type(value).__name__} is not JSON: decode it or base64 it"


def test_other_objects_are_not_encodable() -> None:
    assert str(refusal({"x": [Foo()]})) == (
        f"result['x'][0]: object of type test_encoding.Foo {NOT_JSON}"
    )
    assert str(refusal(datetime.timedelta(1))) == (
        f"result: object of type datetime.timedelta {NOT_JSON}"
    )


# -- the hook ----------------------------------------------------------------------------


def money_hook(obj: Any) -> Any:
    if isinstance(obj, Money):
        return {"cents": obj.cents, "currency": "EUR"}
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"no encoding for {type(obj).__name__}")


def test_the_hook_encodes_an_apps_types_and_its_output_is_encoded_again() -> None:
    calls: list[Any] = []

    def hook(obj: Any) -> Any:
        calls.append(obj)
        if isinstance(obj, Foo):
            return ({"m": Money(5)}, datetime.date(2024, 1, 1))
        return money_hook(obj)

    encoder = ValueEncoder(hook)
    foo = Foo()
    out = encoder.value({"foo": foo, "raw": b"\x01", "day": datetime.date(2000, 1, 1)}, "r")
    assert out == {
        "foo": [{"m": {"cents": 5, "currency": "EUR"}}, "2024-01-01"],
        "raw": "01",
        "day": "2000-01-01",
    }
    # Called for what the rule does not encode (bytes included), nothing else.
    assert [type(obj) for obj in calls] == [Foo, Money, bytes]


@pytest.mark.parametrize("error", [TypeError, ValueError])
def test_a_hook_that_refuses(error: type[Exception]) -> None:
    def hook(obj: Any) -> Any:
        raise error("not mine")

    exc = refusal({"x": Foo()}, ValueEncoder(hook))
    assert str(exc) == (
        "result['x']: object of type test_encoding.Foo refused by the encoder: not mine"
    )
    assert isinstance(exc.__cause__, error)


def test_a_hook_that_fails_otherwise_is_named_with_its_error() -> None:
    def hook(obj: Any) -> Any:
        names: dict[str, str] = {}
        return names["missing"]

    exc = refusal([Foo()], ValueEncoder(hook))
    assert str(exc) == (
        "result[0]: KeyError while encoding an object of type test_encoding.Foo: 'missing'"
    )
    assert isinstance(exc.__cause__, KeyError)


def test_a_hook_returning_what_cannot_be_encoded() -> None:
    encoder = ValueEncoder(money_hook)
    assert str(refusal({"m": Money(1), "f": Foo()}, encoder)) == (
        "result['f']: object of type test_encoding.Foo refused by the encoder: no encoding for Foo"
    )
    nan_hook = ValueEncoder(lambda obj: {"v": float("nan")})
    assert str(refusal([Foo()], nan_hook)) == "result[0]['v']: nan is not a JSON number"
    same = ValueEncoder(lambda obj: obj)
    assert str(refusal(Foo(), same)) == (
        "result: the encoder returned the object of type test_encoding.Foo unchanged"
    )
    endless = ValueEncoder(lambda obj: Foo())
    assert refusal(Foo(), endless).reason == f"nested deeper than {MAX_DEPTH} levels"


def test_encoder_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="encoder must be callable, not int"):
        ValueEncoder(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_value_size must be an int"):
        ValueEncoder(max_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"max_value_size must be at least {MIN_MAX_VALUE_SIZE}"):
        ValueEncoder(max_size=MIN_MAX_VALUE_SIZE - 1)
    assert ValueEncoder(max_size=MIN_MAX_VALUE_SIZE).max_size == MIN_MAX_VALUE_SIZE
    assert ValueEncoder().max_size == DEFAULT_MAX_VALUE_SIZE == 4 * 1024 * 1024


# -- size --------------------------------------------------------------------------------


def test_the_size_limit_counts_bytes_of_compact_utf8_json() -> None:
    small = ValueEncoder(max_size=64)
    fits = {"k": "é" * 28}  # {"k":"..."} is 8 bytes, and each é is 2
    assert compact_size(fits) == 64
    assert small.value(fits, "result") == fits
    over = {"k": "é" * 28 + "x"}
    assert str(refusal(over, small)) == (
        "result: 65 bytes of JSON, over the limit of 64 bytes (max_value_size)"
    )


@pytest.mark.parametrize("count", range(12))
def test_a_str_alone_is_measured_as_json(count: int) -> None:
    # "\x1f" is 6 bytes of JSON: the bound a str alone is checked against before a dumps.
    value = "\x1f" * count
    fits = 6 * count + 2 <= 64
    encoder = ValueEncoder(max_size=64)
    if fits:
        assert encoder.value(value, "result") == value
    else:
        assert refusal(value, encoder).reason.startswith(f"{6 * count + 2} bytes of JSON")


@pytest.mark.parametrize(("digits", "fits"), [(64, True), (65, False)])
def test_a_long_int_alone_is_measured(digits: int, fits: bool) -> None:
    value = int("9" * digits)
    encoder = ValueEncoder(max_size=64)
    if fits:
        assert encoder.value(value, "result") == value
    else:
        assert refusal(value, encoder).reason.startswith("65 bytes of JSON")


def test_sizes_in_messages_use_kib_and_mib() -> None:
    assert refusal(["x" * 3000], ValueEncoder(max_size=2048)).reason == (
        "2.9 KiB of JSON, over the limit of 2.0 KiB (max_value_size)"
    )
    big = "x" * int(5.2 * 1024 * 1024)
    assert str(refusal(big)) == (
        "result: 5.2 MiB of JSON, over the limit of 4.0 MiB (max_value_size)"
    )


# -- text --------------------------------------------------------------------------------


def test_text_is_cleaned_and_passes_under_the_limit() -> None:
    encoder = ValueEncoder(max_size=64)
    plain = "a" * 64
    assert encoder.text(plain, "progress message") is plain
    assert encoder.text("bad \udcff name", "progress message") == "bad \ufffd name"
    assert encoder.text("é" * 32, "error message") == "é" * 32


def test_text_over_the_limit_is_refused() -> None:
    encoder = ValueEncoder(max_size=64)
    with pytest.raises(ValueNotEncodable) as info:
        encoder.text("a" * 65, "progress message")
    assert str(info.value) == (
        "progress message: 65 bytes of UTF-8, over the limit of 64 bytes (max_value_size)"
    )
    with pytest.raises(ValueNotEncodable, match="66 bytes of UTF-8"):
        encoder.text("é" * 33, "error message")


@pytest.mark.parametrize("lead", range(4))
def test_truncated_text_is_cut_at_a_utf8_boundary_with_a_marker(lead: int) -> None:
    encoder = ValueEncoder(max_size=64)
    text = "a" * lead + "😀" * 40  # 4 bytes each: every position of the cut occurs
    total = len(text.encode())
    out = encoder.text(text, "output", truncate=True)
    kept, _ = out.split("…")
    assert len(out.encode()) <= 64
    assert text.startswith(kept)
    marker = f"… [truncated {total - len(kept.encode())} bytes]"
    assert out == kept + marker
    # As much kept as fits: one more character would not.
    assert len((text[: len(kept) + 1] + marker).encode()) > 64


def test_truncate_leaves_text_under_the_limit_alone() -> None:
    assert ValueEncoder(max_size=64).text("short", "output", truncate=True) == "short"


def test_truncated_text_is_cleaned_first() -> None:
    out = ValueEncoder(max_size=64).text("\udcff" * 100, "output", truncate=True)
    assert out.startswith("\ufffd")
    assert out.endswith(" bytes]")
    assert len(out.encode()) <= 64


def test_text_takes_a_str_only() -> None:
    class Label(str):
        pass

    out = ENCODER.text(Label("x\udcff"), "progress message")
    assert type(out) is str
    assert out == "x\ufffd"
    with pytest.raises(TypeError, match="progress message must be a str, not int"):
        ENCODER.text(1, "progress message")  # type: ignore[arg-type]


# -- pydantic is not imported by the library ---------------------------------------------


def test_the_library_does_not_import_pydantic() -> None:
    code = "import sys, taskward, taskward._encoding; print('pydantic' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "False"


# -- properties --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=40,
)
# Any code point, lone surrogates often: drawn from all of Unicode they are rare, and
# st.text() merges the alphabets it is given into one.
any_char = st.characters(codec=None, exclude_categories=()) | st.characters(categories=["Cs"])
any_text = st.lists(any_char).map("".join)


@settings(deadline=None)  # the shared machines are slow at times
@given(json_values)
def test_json_values_come_back_equal(value: Any) -> None:
    out = ENCODER.value(value, "result")
    assert out == value
    assert json.loads(json.dumps(out)) == out


@settings(deadline=None)  # the shared machines are slow at times
@given(any_text, st.booleans())
def test_any_text_comes_out_as_utf8(text: str, truncate: bool) -> None:
    encoder = ValueEncoder(max_size=64)
    try:
        out = encoder.text(text, "output", truncate=truncate)
    except ValueNotEncodable:
        assert not truncate
        assert len(clean_text(text).encode()) > 64
        return
    assert len(out.encode()) <= 64


@settings(deadline=None)  # the shared machines are slow at times
@given(st.recursive(any_text, lambda c: st.dictionaries(any_text, st.lists(c)), max_leaves=20))
def test_any_text_in_a_value_comes_out_as_utf8(value: Any) -> None:
    try:
        out = ENCODER.value(value, "result")
    except ValueNotEncodable as exc:  # surrogates cleaned, two keys can become one
        assert "both become the JSON key" in exc.reason
        return
    json.dumps(out, ensure_ascii=False).encode()
