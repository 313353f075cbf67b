"""How records, output chunks and cursors are written to and read from Redis.

A record is a hash with short field names (`HASH_FIELDS`: row position, field,
kind); fields whose value is None (or an empty text) are left out. Times and
numbers are `repr` of the float (exact round trip); `result`, `metadata` and
`redirect` are compact JSON (the owner encoded them by the one encoding rule,
see `_encoding.py`); `error` is the JSON pair ``[type, message]``.

Output chunks are members of a sorted set scored by seq: ``"<seq>|<at>|<data>"``
(the seq makes every member unique, so re-sending a chunk is harmless).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from .._live import (
    CHANNEL_ID,
    CREATED_AT,
    ERROR,
    FINISHED_AT,
    INSTANCE_ID,
    ITEM_ID,
    MAX_RUNTIME,
    METADATA,
    NAME,
    PLATFORM,
    PROGRESS,
    PROGRESS_MESSAGE,
    REDIRECT,
    RESULT,
    STARTED_AT,
    STATUS,
    STOP_REQUESTED_AT,
    TASK_ID,
    UPDATED_AT,
    USER_ID,
    snapshot,
)
from .._records import OutputChunk, TaskError, TaskRecord, TaskStatus, dump_json
from .base import Delivery

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from .._live import Live

__all__ = [
    "HASH_FIELDS",
    "decode_chunk",
    "decode_cursor",
    "decode_delivery",
    "decode_flat",
    "decode_hash",
    "encode_batch",
    "encode_chunk",
    "encode_cursor",
    "encode_record",
    "text",
]


def text(value: bytes | str) -> str:
    """A reply value as str, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value


def _encode_error(error: TaskError) -> str:
    return dump_json([error.type, error.message])


def _decode_error(raw: str) -> TaskError:
    error_type, message = json.loads(raw)
    return TaskError(str(error_type), str(message))


def _same(value: str) -> str:
    return value


# How each kind of field is written and read back.
_CODECS: dict[str, tuple[Callable[[Any], str], Callable[[str], Any]]] = {
    "text": (_same, _same),
    "float": (repr, float),
    "json": (dump_json, json.loads),
    "error": (_encode_error, _decode_error),
}

#: Every field of a row but the task id (the key) as the hash stores it:
#: (row position, hash field, kind). A field whose value is None (or empty)
#: is left out of the hash.
HASH_FIELDS: tuple[tuple[int, str, str], ...] = (
    (STATUS, "s", "text"),
    (NAME, "n", "text"),
    (ITEM_ID, "i", "text"),
    (USER_ID, "u", "text"),
    (CHANNEL_ID, "c", "text"),
    (PLATFORM, "p", "text"),
    (INSTANCE_ID, "o", "text"),
    (CREATED_AT, "ca", "float"),
    (STARTED_AT, "sa", "float"),
    (UPDATED_AT, "ua", "float"),
    (FINISHED_AT, "fa", "float"),
    (RESULT, "r", "json"),
    (ERROR, "e", "error"),
    (PROGRESS, "pg", "float"),
    (PROGRESS_MESSAGE, "pm", "text"),
    (METADATA, "m", "json"),
    (REDIRECT, "rd", "json"),
    (STOP_REQUESTED_AT, "sr", "float"),
    (MAX_RUNTIME, "mr", "float"),
)
# What `save` writes: every field but the stop request and the redirect, which only
# `request_stop` and the redirect scripts write. An empty text is left out too (it reads
# back as the record's default, "" or None).
_SAVED = tuple(
    (position, field, _CODECS[kind][0], kind == "text")
    for position, field, kind in HASH_FIELDS
    if position not in (STOP_REQUESTED_AT, REDIRECT)
)
_READ = tuple((position, field, _CODECS[kind][1]) for position, field, kind in HASH_FIELDS)
# What a field left out of the hash reads as: the record's default.
_DEFAULTS: tuple[Any, ...] = tuple(
    None if f.default is MISSING or f.name == "metadata" else f.default for f in fields(TaskRecord)
)
_RUNNING = TaskStatus.RUNNING.value


def encode_record(rec: Live) -> list[Any]:
    """One row as the save script reads it (inside the batch's JSON).

    ``[id, status, user|'', item|'', owner, created, finish_score|'', [field,
    value, ...], [field to delete, ...]]``, every value a string (so Lua never
    rounds a float). Never writes ``sr`` or ``rd``: only `request_stop` and the
    redirect scripts do.
    """
    pairs: list[str] = []
    absent: list[str] = []
    for position, field, encode, text_kind in _SAVED:
        value = rec[position]
        if value is None or (text_kind and value == ""):
            absent.append(field)
        else:
            pairs += (field, encode(value))
    status = rec[STATUS]
    if status == _RUNNING:
        finish = ""
    else:
        done = rec[FINISHED_AT]
        finish = repr(done if done is not None else rec[UPDATED_AT])
    return [
        rec[TASK_ID],
        status,
        rec[USER_ID] or "",
        rec[ITEM_ID] or "",
        rec[INSTANCE_ID],
        repr(rec[CREATED_AT]),
        finish,
        pairs,
        absent,
    ]


def encode_batch(records: Sequence[Any], outputs: Sequence[Any]) -> str:
    """The save script's batch argument: ``[[record, ...], [[task_id, [seq, member, ...]], ...]]``."""
    return dump_json([records, outputs])


def decode_hash(task_id: str, raw: Mapping[Any, Any]) -> TaskRecord | None:
    """A record from HGETALL (bytes or str keys and values); None if empty or not a record."""
    if not raw:
        return None
    return _decode(task_id, {text(k): text(v) for k, v in raw.items()})


def decode_flat(task_id: str, raw: Sequence[Any]) -> TaskRecord | None:
    """A record from a flat ``[field, value, ...]`` array (as Lua returns HGETALL)."""
    if not raw:
        return None
    it = iter(raw)
    return _decode(task_id, {text(k): text(v) for k, v in zip(it, it, strict=True)})


def _decode(task_id: str, h: dict[str, str]) -> TaskRecord | None:
    if h.get("s") not in _STATUSES:
        return None
    row = list(_DEFAULTS)
    row[TASK_ID] = task_id
    for position, field, decode in _READ:
        raw = h.get(field)
        if raw is not None:
            row[position] = decode(raw)
    return snapshot(tuple(row))


_STATUSES = frozenset(status.value for status in TaskStatus)


def decode_delivery(raw: bytes | str) -> Delivery:
    """A claimed delivery from the JSON the scripts keep (see `_redis_scripts.enqueue`)."""
    d = json.loads(text(raw))

    def given(key: str) -> str | None:
        value = d.get(key)
        return value if isinstance(value, str) and value != "" else None

    result, error, finished = given("r"), given("e"), given("fa")
    return Delivery(
        d["id"],
        d["t"],
        d["c"],
        d["p"],
        int(d["mx"]),
        float(d["ea"]),
        int(d["a"]),
        d["k"],
        TaskStatus(d["s"]),
        given("n") or "",
        None if result is None else json.loads(result),
        None if error is None else _decode_error(error),
        given("u"),
        given("i"),
        None if finished is None else float(finished),
    )


def encode_chunk(chunk: OutputChunk) -> str:
    return f"{chunk.seq}|{chunk.at!r}|{chunk.data}"


def decode_chunk(member: bytes | str) -> OutputChunk:
    seq, at, data = text(member).split("|", 2)
    return OutputChunk(int(seq), data, float(at))


def encode_cursor(score: str, task_id: str) -> str:
    """An opaque cursor: the creation score and id of the last record examined."""
    raw = f"{score}\n{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: object) -> tuple[str, str]:
    """The (score, id) in a cursor from `encode_cursor`; ValueError if it is not one."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > 1024:
        raise ValueError(f"malformed cursor {cursor!r}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, task_id = raw.split("\n")
        float(score)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError(f"malformed cursor {cursor!r}") from None
    if not task_id or score in ("nan", "inf", "-inf"):
        raise ValueError(f"malformed cursor {cursor!r}")
    return score, task_id
