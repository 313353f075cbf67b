"""The JSON form of what a task hands over, made once on its owner for every reader.

A task's result, metadata, progress message, error message and output are stored as
JSON and read by every instance. The owner normalises each value when it arrives, with
`ValueEncoder`, and keeps the normalised value, so the owner and every other instance
see the same data. The rule:

- `None`, `bool`, `int` and finite `float` pass as they are; so does `str`, with lone
  surrogates (such as the ``"\\udcff"`` `os.fsdecode` makes of a bad file name) replaced
  by U+FFFD, in every string, dict keys included.
- `dict` (and any other `Mapping`) → dict. `str` keys stay; `int`, `float`, `bool` and
  `None` keys become strings as `json.dumps` makes them (``1`` → ``"1"``, ``True`` →
  ``"true"``, ``None`` → ``"null"``); any other key (a tuple, say) is not encodable, and
  neither are two keys that become the same string.
- `list` and `tuple` → list; `set` and `frozenset` → list, in iteration order.
- Subclasses of `str`, `int`, `float`, `dict`, `list` and `tuple` → that type (a
  namedtuple becomes a list).
- Pydantic models (an object whose class has a callable `model_dump`; pydantic is not
  imported) → ``model_dump(mode="json")``, encoded again; dataclass instances → a dict
  of their fields, each encoded; `enum.Enum` members (`IntEnum` and `StrEnum` too) →
  their `value`, encoded; `datetime`, `date` and `time` → `isoformat()`; `uuid.UUID`,
  `decimal.Decimal` and `pathlib.PurePath` → `str()`.
- Anything else, `bytes` included → the encoder hook's return value, encoded again, if
  the `ValueEncoder` has a hook; a hook refuses an object by raising `TypeError` (or
  `ValueError`), and its message goes into the reason. With no hook: not encodable.
- Not encodable either: NaN and ±infinity; an int too long for Python to write out
  (`sys.get_int_max_str_digits`); circular references; nesting deeper than
  `MAX_DEPTH` (200) levels, where each container, and each object converted to another
  form, is a level; and a value whose compact UTF-8 JSON is over `max_size` bytes
  (`DEFAULT_MAX_VALUE_SIZE`, 4 MiB).

What is not encodable raises `ValueNotEncodable`, naming where and why, as in
``result['a'][2]: dict key (1, 2) of type tuple is not a str, int, float, bool or None``.
An exception raised by an app's code on the way (the hook, `model_dump`, a `Mapping`'s
methods) is turned into one too, with its type named: a bug there fails the task, not
the writer that stores it.

Texts (`ValueEncoder.text`: messages and output chunks) are cleaned of lone surrogates
the same way, and are refused, or cut at a UTF-8 boundary with a marker, past `max_size`.

How: a walk in Python builds the normalised value, then one `json.dumps` of it, in C,
gives its size. The other way was measured too (CPython 3.11, a 2-core machine):
`json.JSONEncoder(default=...)` writing the JSON text in C, and `json.loads` reading
the value back, is as fast on a small dict (4.4 µs, the walk 4.0 µs) and 5 to 40%
quicker on 1 MB lists (of ints 26.7 ms against 28.2, of small dicts 33.6 against 41.3,
of strings 10.2 against 16.9). It was not taken: the C encoder knows no paths, so each
refusal would take the walk anyway to say where, and the rule would be written twice,
in the walk and in a `default=`; its depth limit is the recursion limit; it neither
cleans surrogates nor sees two keys that become one. A scalar, the common result,
takes neither: 0.06 µs for None, 0.14 µs for a small int.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import pathlib
import reprlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from ._checks import check_int
from .errors import ValueNotEncodable

__all__ = [
    "DEFAULT_MAX_VALUE_SIZE",
    "MAX_DEPTH",
    "MIN_MAX_VALUE_SIZE",
    "EncoderHook",
    "ValueEncoder",
    "clean_text",
]

#: The largest value stored, in bytes of compact UTF-8 JSON (for a text: of UTF-8).
DEFAULT_MAX_VALUE_SIZE: Final = 4 * 1024 * 1024
#: The smallest `max_size` accepted: room for any float, or a truncation marker.
MIN_MAX_VALUE_SIZE: Final = 64
#: Levels of nesting a value may have; well below Python's recursion limit.
MAX_DEPTH: Final = 200

#: Turns an app's own types into JSON-compatible data; raises `TypeError` to refuse one.
EncoderHook = Callable[[Any], Any]

# An int of at most 64 bits is at most 21 characters: it fits in any max_size.
_SHORT_INT: Final = 2**64
# A str of n characters is at most 6n + 2 bytes of JSON ("\u001f" is 6).
_JSON_BYTES_PER_CHAR: Final = 6
# A str of n characters is at most 4n bytes of UTF-8.
_UTF8_BYTES_PER_CHAR: Final = 4

_compact_json = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False
).encode
_reprs = reprlib.Repr()  # reprs in messages, cut short
_reprs.maxstring = _reprs.maxother = 60
_short_repr = _reprs.repr
# A path in a message shows its first and last parts at most.
_PATH_HEAD: Final = 8
_PATH_TAIL: Final = 4
_AS_STR: Final = (uuid.UUID, decimal.Decimal, pathlib.PurePath)
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)


def clean_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (`text` itself when it has none).

    A high surrogate followed by a low one is read as the character the pair stands
    for, as UTF-16 and JSON read it.
    """
    if text.isascii():  # a flag CPython keeps: no scan
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


class ValueEncoder:
    """Turns values into the JSON form every reader sees; see the module docstring."""

    __slots__ = ("hook", "max_size")

    def __init__(
        self, hook: EncoderHook | None = None, max_size: int = DEFAULT_MAX_VALUE_SIZE
    ) -> None:
        if hook is not None and not callable(hook):
            raise TypeError(f"encoder must be callable, not {type(hook).__name__}")
        check_int("max_value_size", max_size, MIN_MAX_VALUE_SIZE)
        self.hook = hook
        self.max_size = max_size

    def value(self, value: Any, what: str) -> Any:
        """The JSON form of `value`, as every reader will see it.

        A new object built of dict, list, str, int, float, bool and None (immutable
        scalars may be `value` itself). `what` names the value in messages ("result").
        Raises `ValueNotEncodable` naming what could not be encoded, and where.
        """
        cls = type(value)
        # The common results, checked without a walk or a json.dumps.
        if value is None or cls is bool or (cls is float and math.isfinite(value)):
            return value
        if cls is int and -_SHORT_INT < value < _SHORT_INT:
            return value
        if cls is str and len(value) * _JSON_BYTES_PER_CHAR + 2 <= self.max_size:
            return clean_text(value)
        try:
            out = _Walk(self.hook).encode(value, 0)
        except _Refusal as exc:
            raise ValueNotEncodable(what + _path(exc.path), exc.reason) from exc.__cause__
        try:
            text = _compact_json(out)
        except ValueError as exc:  # only an int over sys.get_int_max_str_digits() digits
            raise ValueNotEncodable(what, f"holds an int Python cannot write out: {exc}") from exc
        size = len(text) if text.isascii() else len(text.encode())
        if size > self.max_size:
            raise ValueNotEncodable(what, self._over(size, "of JSON"))
        return out

    def text(self, text: str, what: str, *, truncate: bool = False) -> str:
        """`text` cleaned of lone surrogates, checked for size in bytes of UTF-8.

        Over `max_size`: `ValueNotEncodable`, or with `truncate=True` the text cut at a
        UTF-8 boundary and ended with a marker (``… [truncated 123456 bytes]``), the
        whole within `max_size`. `what` names the text in messages ("progress message").
        """
        if type(text) is not str:
            if not isinstance(text, str):
                raise TypeError(f"{what} must be a str, not {type(text).__name__}")
            text = str.__str__(text)
        text = clean_text(text)
        if len(text) * _UTF8_BYTES_PER_CHAR <= self.max_size:
            return text
        data = text.encode()
        if len(data) <= self.max_size:
            return text
        if not truncate:
            raise ValueNotEncodable(what, self._over(len(data), "of UTF-8"))
        return _truncate(data, self.max_size)

    def _over(self, size: int, of: str) -> str:
        return (
            f"{_format_size(size)} {of}, over the limit of "
            f"{_format_size(self.max_size)} (max_value_size)"
        )


class _Refusal(Exception):
    """Raised inside a walk; each container it passes through adds its part of the path."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []  # innermost first


class _Walk:
    """One walk over one value: the containers (and converted objects) being encoded."""

    __slots__ = ("active", "hook")

    def __init__(self, hook: EncoderHook | None) -> None:
        self.hook = hook
        self.active: set[int] = set()  # ids of the objects on the current path

    def encode(self, value: Any, depth: int) -> Any:
        cls = type(value)
        if cls is str:
            return clean_text(value)
        if value is None or cls is int or cls is bool:
            return value
        if cls is float:
            if math.isfinite(value):
                return value
            raise _Refusal(f"{value!r} is not a JSON number")
        if depth == MAX_DEPTH:
            raise _Refusal(f"nested deeper than {MAX_DEPTH} levels")
        if id(value) in self.active:
            raise _Refusal(f"circular reference to a {_type_name(cls)}")
        self.active.add(id(value))
        if cls is dict:
            out: Any = self._dict(value, depth + 1)
        elif cls is list or cls is tuple:
            out = self._list(value, depth + 1)
        else:
            out = self.encode(self._convert(value), depth + 1)
        self.active.discard(id(value))
        return out

    def _dict(self, value: dict[Any, Any], depth: int) -> dict[str, Any]:
        out = {}
        for key, item in value.items():
            name = clean_text(key) if type(key) is str else _key(key)
            try:
                out[name] = self.encode(item, depth)
            except _Refusal as exc:
                exc.path.append(f"[{_short_repr(key)}]")
                raise
        if len(out) < len(value):
            raise _Refusal(_collision(value))
        return out

    def _list(self, value: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
        out = []
        for index, item in enumerate(value):
            try:
                out.append(self.encode(item, depth))
            except _Refusal as exc:
                exc.path.append(f"[{index}]")
                raise
        return out

    def _convert(self, value: Any) -> Any:
        """What `value`, of no exact JSON type, stands for, to be encoded in its place."""
        try:
            return self._converted(value)
        except _Refusal:
            raise
        except Exception as exc:  # an app's code failed: the value cannot be encoded
            raise _Refusal(
                f"{type(exc).__name__} while encoding an object of type "
                f"{_type_name(type(value))}: {exc}"
            ) from exc

    def _converted(self, value: Any) -> Any:
        # Enum first: an IntEnum is an int, a StrEnum a str.
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, int):
            return int.__int__(value)
        if isinstance(value, float):
            return float.__float__(value)
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, Mapping):
            return dict(value.items())
        if isinstance(value, list | tuple | set | frozenset):
            return list(value)
        model_dump = getattr(type(value), "model_dump", None)
        if callable(model_dump):
            return value.model_dump(mode="json")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, datetime.date | datetime.time):
            return value.isoformat()
        if isinstance(value, _AS_STR):
            return str(value)
        return self._hooked(value)

    def _hooked(self, value: Any) -> Any:
        name = _type_name(type(value))
        if self.hook is None:
            if isinstance(value, _BYTES_LIKE):
                raise _Refusal(f"{name} is not JSON: decode it or base64 it")
            raise _Refusal(
                f"object of type {name} is not JSON-encodable; "
                "return JSON data, or pass encoder= to TaskManager"
            )
        try:
            out = self.hook(value)
        except (TypeError, ValueError) as exc:
            raise _Refusal(f"object of type {name} refused by the encoder: {exc}") from exc
        if out is value:
            raise _Refusal(f"the encoder returned the object of type {name} unchanged")
        return out


def _key(key: Any) -> str:
    """The JSON name of a dict key, as `json.dumps` writes it (lone surrogates replaced)."""
    if isinstance(key, str):
        return clean_text(str.__str__(key))
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, float) and math.isfinite(key):
        return float.__repr__(key)
    if isinstance(key, int):
        try:
            return int.__repr__(key)
        except ValueError as exc:  # over sys.get_int_max_str_digits() digits
            raise _Refusal(f"dict key of type int that Python cannot write out: {exc}") from exc
    raise _Refusal(
        f"dict key {_short_repr(key)} of type {_type_name(type(key))} "
        "is not a str, int, float, bool or None"
    )


def _collision(value: Mapping[Any, Any]) -> str:
    """Which two keys of `value` have the same JSON name (called only when some do)."""
    by_name: dict[str, list[Any]] = {}
    for key in value:
        by_name.setdefault(_key(key), []).append(key)
    name, (first, second, *_) = next((n, keys) for n, keys in by_name.items() if len(keys) > 1)
    return (
        f"dict keys {_short_repr(first)} and {_short_repr(second)} "
        f"both become the JSON key {name!r}"
    )


def _path(parts: list[str]) -> str:
    """`parts` (innermost first, as a refusal collects them) as one path, outermost first;
    cut in the middle when long, as after a refusal for nesting too deep."""
    parts = parts[::-1]
    if len(parts) > _PATH_HEAD + _PATH_TAIL:
        hidden = len(parts) - _PATH_HEAD - _PATH_TAIL
        parts = [*parts[:_PATH_HEAD], f"…{hidden} levels…", *parts[-_PATH_TAIL:]]
    return "".join(parts)


def _truncate(data: bytes, limit: int) -> str:
    """`data` (valid UTF-8, over `limit` bytes) cut to fit `limit` with its marker."""
    # The marker for the whole of `data` is at least as long as the one used.
    room = limit - len(_marker(len(data)).encode())
    cut = room
    while data[cut] & 0xC0 == 0x80:  # a continuation byte: its character starts earlier
        cut -= 1
    return data[:cut].decode() + _marker(len(data) - cut)


def _marker(removed: int) -> str:
    return f"… [truncated {removed} bytes]"


def _format_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def _type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
