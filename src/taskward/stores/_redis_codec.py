"""How records, output chunks and cursors are written to and read from Redis.

A record is a hash with short field names; fields whose value is None (or
empty, for text and metadata) are omitted. Times and numbers are `repr` of the
float (exact round trip); `result`, `metadata` and `redirect` are compact JSON
(values JSON cannot express are written as their `str()`); `error` is the JSON
pair ``[type, message]``.

=====  =================  =====  =================
Field  Record attribute   Field  Record attribute
=====  =================  =====  =================
s      status             sa     started_at
n      name               ua     updated_at
i      item_id            fa     finished_at
u      user_id            r      result (JSON)
c      channel_id         e      error (JSON)
p      platform           pg     progress
o      instance_id        pm     progress_message
ca     created_at         m      metadata (JSON)
rd     redirect (JSON)    sr     stop_requested_at
mr     max_runtime
=====  =================  =====  =================

Output chunks are members of a sorted set scored by seq: ``"<seq>|<at>|<data>"``
(the seq makes every member unique, so re-sending a chunk is harmless).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from .._live import (
    CHANNEL_ID,
    CREATED_AT,
    ERROR_MESSAGE,
    ERROR_TYPE,
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
    TASK_ID,
    UPDATED_AT,
    USER_ID,
    V_RUNNING,
)
from .._records import STATUS_BY_VALUE, OutputChunk, TaskError, TaskRecord, dump_json

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .._live import Live

__all__ = [
    "decode_chunk",
    "decode_cursor",
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


def encode_record(rec: Live) -> list[Any]:
    """One live record as the save script reads it (inside the batch's JSON).

    ``[id, status, user|'', item|'', owner, created, finish_score|'', [field,
    value, ...], [field to delete, ...]]``, every value a string (so Lua never
    rounds a float). Never writes ``sr``: only `request_stop` does.
    """
    status = rec[STATUS]
    created = repr(rec[CREATED_AT])
    updated = rec[UPDATED_AT]
    pairs = ["s", status, "o", rec[INSTANCE_ID], "ca", created, "ua", repr(updated)]
    absent: list[str] = []
    user, item = rec[USER_ID], rec[ITEM_ID]
    if item is not None:
        pairs += ("i", item)
    else:
        absent.append("i")
    if user is not None:
        pairs += ("u", user)
    else:
        absent.append("u")
    if rec[NAME]:
        pairs += ("n", rec[NAME])
    if rec[CHANNEL_ID]:
        pairs += ("c", rec[CHANNEL_ID])
    if rec[PLATFORM]:
        pairs += ("p", rec[PLATFORM])
    done = rec[FINISHED_AT]
    for field, value in (
        ("sa", rec[STARTED_AT]),
        ("fa", done),
        ("pg", rec[PROGRESS]),
        ("mr", rec[MAX_RUNTIME]),
    ):
        if value is not None:
            pairs += (field, repr(value))
        else:
            absent.append(field)
    if rec[PROGRESS_MESSAGE] is not None:
        pairs += ("pm", rec[PROGRESS_MESSAGE])
    else:
        absent.append("pm")
    if rec[RESULT] is not None:
        pairs += ("r", dump_json(rec[RESULT]))
    else:
        absent.append("r")
    error_type = rec[ERROR_TYPE]
    if error_type is not None:
        pairs += ("e", dump_json([error_type, rec[ERROR_MESSAGE]]))
    else:
        absent.append("e")
    if rec[METADATA]:
        pairs += ("m", dump_json(rec[METADATA]))
    else:
        absent.append("m")
    if rec[REDIRECT] is not None:
        pairs += ("rd", dump_json(rec[REDIRECT]))
    else:
        absent.append("rd")
    if status == V_RUNNING:
        finish = ""
    else:
        finish = repr(done if done is not None else updated)
    return [
        rec[TASK_ID],
        status,
        user or "",
        item or "",
        rec[INSTANCE_ID],
        created,
        finish,
        pairs,
        absent,
    ]


def encode_batch(records: Sequence[Any], outputs: Sequence[Any]) -> str:
    """The save script's batch argument: ``[[record, ...], [[task_id, [seq, member, ...]], ...]]``."""
    return dump_json([records, outputs])


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


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
    status = STATUS_BY_VALUE.get(h.get("s", ""))
    if status is None:
        return None
    error = h.get("e")
    err: TaskError | None = None
    if error is not None:
        etype, emsg = json.loads(error)
        err = TaskError(str(etype), str(emsg))
    result = h.get("r")
    metadata = h.get("m")
    redirect = h.get("rd")
    return TaskRecord(
        task_id,
        status,
        h.get("n", ""),
        h.get("i"),
        h.get("u"),
        h.get("c", ""),
        h.get("p", ""),
        h.get("o", ""),
        float(h.get("ca", "0")),
        _float(h.get("sa")),
        float(h.get("ua", "0")),
        _float(h.get("fa")),
        None if result is None else json.loads(result),
        err,
        _float(h.get("pg")),
        h.get("pm"),
        {} if metadata is None else json.loads(metadata),
        None if redirect is None else json.loads(redirect),
        _float(h.get("sr")),
        _float(h.get("mr")),
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
