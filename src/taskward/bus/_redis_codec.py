"""Wire formats of the Redis bus: events and commands, optionally signed.

Events, on the shared events channel, one message per flush of one instance
(several for a large one, see *Sizes*)::

    <sender instance id>\\n<JSON list>                                 (no secret)
    <sender instance id>\\nv1 <unix time> <hex HMAC-SHA256>\\n<JSON list>  (secret)

``<unix time>`` has three decimals; the signature is taken over
``<events channel>\\n<time>\\n<sender>\\n<JSON list>``, so a signed events
message vouches for its sender too and cannot pass as a command (whose channel
differs). A JSON list never starts with ``v``: the two forms are told apart by
their second line. The sender line comes first, before the signature, so a
receiver skips its own messages, and every message when nobody there listens
to events, without checking a signature or decoding any JSON.

The JSON list has one entry per event:
``[kind, task_id, status, at, user_id, item_id, record, data, seq]`` where
`record` is the record's fields (`TaskRecord.to_dict`) that differ from their
defaults (its `task_id` always, the event's), or null. An empty list is an
instance announcing itself.

Commands, on one instance's command channel: the JSON object itself, or with a
secret ``v1 <unix time> <hex HMAC-SHA256>\\n<JSON object>``, the MAC taken over
``<channel>\\n<time>\\n<JSON>`` so a signed command is only valid for the
instance it was sent to.

A receiver with a secret refuses (`BadMessage`) an unsigned message, a
signature made with another key or for another channel or sender, and one
made more than `MAX_MESSAGE_AGE` seconds away from its own clock. A signed
message repeated within that window repeats what its signer said, nothing
else. A receiver without a secret takes both forms, unchecked.

Sizes: a listener refuses unread an events message over its limit (its
`max_message_size`, `MAX_EVENTS_SIZE` by default) and a command over
`MAX_COMMAND_SIZE` bytes. A sender keeps within the same limit
(`split_events`): a flush whose message would be larger goes as several
messages, and an event too large to go alone goes *thin*, without its record
and data (enough to wake a waiter or confirm a stop; the store has the rest).

Everything else that is not exactly these shapes and types is refused as
`BadMessage` too: text that is not UTF-8 or not JSON, JSON nested deeper than
the parser goes, wrong shapes, wrong field types (record fields are checked
against `TaskRecord`'s annotations).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

from .._ids import MAX_ID_LENGTH
from .._records import STATUS_BY_VALUE, TaskError, TaskEvent, TaskRecord, dump_json

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "MAX_COMMAND_SIZE",
    "MAX_EVENTS_SIZE",
    "MAX_MESSAGE_AGE",
    "BadMessage",
    "decode_command",
    "decode_events",
    "encode_command",
    "encode_events",
    "events_body",
    "sender_of",
    "split_events",
]

#: Seconds a signed message stays valid, either side of the receiver's clock.
MAX_MESSAGE_AGE = 60.0
#: Bytes of the largest events message a listener decodes, unless told otherwise:
#: decoding one costs the loop tens of milliseconds at most.
MAX_EVENTS_SIZE = 8 * 1024 * 1024
#: Bytes of the largest command a listener decodes (a command is a few hundred).
MAX_COMMAND_SIZE = 64 * 1024

_SIGNED = b"v1 "
_SIGNED_TEXT = _SIGNED.decode()
# A sender line is an instance id: at most this many bytes of UTF-8, then a newline.
_MAX_SENDER = 4 * MAX_ID_LENGTH
# A signature line: "v1 ", a time, a space, 64 hex digits (room for odd times).
_MAX_SIGNATURE_LINE = 128


class BadMessage(ValueError):
    """A message that is not ours, malformed, unsigned when it must be, forged or stale."""


# -- events: encoding ------------------------------------------------------------


# A record's fields as `to_dict` gives them when they hold their defaults.
_DEFAULTS = TaskRecord("").to_dict()


def _record_dict(rec: TaskRecord) -> dict[str, Any]:
    """The fields of `rec` that differ from their defaults (a result of ``{}`` or ``""``
    is sent: only None is a result's default)."""
    return {
        k: v
        for k, v in rec.to_dict().items()
        if not (type(v) is type(d := _DEFAULTS[k]) and (v is d or v == d))
    }


def _entry(e: TaskEvent, *, thin: bool = False) -> list[Any]:
    record = None if thin or e.record is None else _record_dict(e.record)
    data = None if thin else e.data
    return [e.kind, e.task_id, e.status.value, e.at, e.user_id, e.item_id, record, data, e.seq]


def _frame(sender: str, body: str, channel: str, secret: bytes | None, now: float) -> str:
    if secret is None:
        return f"{sender}\n{body}"
    stamp = f"{now:.3f}"
    mac = _mac(secret, channel, stamp, f"{sender}\n".encode(), body.encode())
    return f"{sender}\n{_SIGNED_TEXT}{stamp} {mac}\n{body}"


def encode_events(
    sender: str,
    events: Sequence[TaskEvent],
    channel: str,
    secret: bytes | None,
    now: float,
) -> str:
    """One events message for `events`, signed with `secret` for `channel` if given."""
    return _frame(sender, dump_json([_entry(e) for e in events]), channel, secret, now)


def split_events(
    sender: str,
    events: Sequence[TaskEvent],
    channel: str,
    secret: bytes | None,
    now: float,
    limit: int,
) -> tuple[list[str], int]:
    """Events messages of at most `limit` bytes each, carrying `events` in order,
    and how many events went thin (see the module docstring).

    A thin event takes a few kilobytes at most (its ids are checked ids); only
    under a limit that small would one go alone in a message over the limit.
    """
    empty = _frame(sender, "[]", channel, secret, now)
    budget = limit - len(empty.encode())  # what the entries and their commas may take
    messages: list[str] = []
    chunk: list[str] = []
    size = 0
    thin = 0
    for event in events:
        entry = dump_json(_entry(event))
        length = len(entry.encode())
        if length > budget:
            entry = dump_json(_entry(event, thin=True))
            length = len(entry.encode())
            thin += 1
        if chunk and size + 1 + length > budget:
            messages.append(_frame(sender, f"[{','.join(chunk)}]", channel, secret, now))
            chunk, size = [], 0
        size += length + (1 if chunk else 0)
        chunk.append(entry)
    if chunk:
        messages.append(_frame(sender, f"[{','.join(chunk)}]", channel, secret, now))
    return messages, thin


# -- events: decoding ------------------------------------------------------------


def _sender_end(data: bytes) -> int:
    end = data.find(b"\n", 0, _MAX_SENDER + 1)
    if end <= 0:
        raise BadMessage("no sender line")
    return end


def sender_of(data: bytes) -> str:
    """The sender id on the first line of an events message; BadMessage if none."""
    try:
        return data[: _sender_end(data)].decode()
    except UnicodeDecodeError:
        raise BadMessage("the sender line is not UTF-8") from None


def events_body(data: bytes, channel: str, secret: bytes | None, now: float) -> bytes:
    """The JSON list of an events message, its signature checked."""
    start = _sender_end(data) + 1
    if data.startswith(_SIGNED, start):
        end = data.find(b"\n", start, start + _MAX_SIGNATURE_LINE)
        if end < 0:
            raise BadMessage("malformed signature line")
        body = data[end + 1 :]
        if secret is not None:
            _verify("events", secret, channel, data[start:end], data[:start], body, now)
        return body
    if secret is not None:
        raise BadMessage("unsigned events, and this bus requires signatures")
    return data[start:]


def decode_events(body: bytes | str) -> list[TaskEvent]:
    """The events of a JSON list (from `events_body`); BadMessage if it is not one."""
    items = _load(body, "events")
    if not isinstance(items, list):
        raise BadMessage("events must be a JSON list")
    return [_decode_event(item) for item in items]


def _decode_event(item: Any) -> TaskEvent:
    if not isinstance(item, list) or len(item) != 9:
        raise BadMessage("an event must be a list of 9 values")
    kind, task_id, status, at, user_id, item_id, record, data, seq = item
    if not isinstance(kind, str) or not isinstance(task_id, str):
        raise BadMessage("event kind and task_id must be strings")
    if not _is_number(at) or not _opt_str(user_id) or not _opt_str(item_id):
        raise BadMessage("bad event field types")
    if not _opt_str(data) or not (seq is None or type(seq) is int):
        raise BadMessage("bad event field types")
    st = STATUS_BY_VALUE.get(status) if isinstance(status, str) else None
    if st is None:
        raise BadMessage(f"unknown status {status!r}")
    rec = None
    if record is not None:
        if not isinstance(record, dict):
            raise BadMessage("an event record must be an object")
        _check_record(record, task_id)
        try:
            rec = TaskRecord.from_dict(record)
        except ValueError as exc:
            raise BadMessage(f"bad event record: {exc}") from None
    return TaskEvent(kind, task_id, st, float(at), user_id, item_id, rec, data, seq)


def _opt_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_types(hint: Any) -> tuple[type, ...] | None:
    """The JSON value types a record field annotated `hint` may arrive as; None: any."""
    if hint is Any:
        return None
    origin = get_origin(hint) or hint
    if origin is Union or origin is types.UnionType:
        found: tuple[type, ...] = ()
        for arg in get_args(hint):
            arg_types = _json_types(arg)
            if arg_types is None:
                return None
            found += arg_types
        return found
    if origin is types.NoneType or origin is int or origin is bool:
        return (origin,)
    if origin is float:
        return (int, float)
    if issubclass(origin, str):  # str, and TaskStatus as its value
        return (str,)
    if issubclass(origin, Mapping) or origin is TaskError:  # TaskError as {type, message}
        return (dict,)
    raise TypeError(f"no JSON form known for a record field of type {hint!r}")


# Derived from the record's one layout: a new field gets its check with it.
_RECORD_TYPES: dict[str, tuple[type, ...] | None] = {
    name: _json_types(hint)
    for name, hint in get_type_hints(TaskRecord, localns={"Mapping": Mapping}).items()
}


def _check_record(record: dict[str, Any], task_id: str) -> None:
    for name, value in record.items():
        if name not in _RECORD_TYPES:
            continue  # a field of a later version: `TaskRecord.from_dict` ignores it
        allowed = _RECORD_TYPES[name]
        if allowed is None:
            continue
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise BadMessage(f"record field {name!r} cannot be {type(value).__name__}")
    if record.get("task_id") != task_id:
        raise BadMessage("the event's record is of another task")


# -- commands ------------------------------------------------------------------------


def encode_command(command: dict[str, Any], channel: str, secret: bytes | None, now: float) -> str:
    body = dump_json(command)
    if secret is None:
        return body
    stamp = f"{now:.3f}"
    return f"{_SIGNED_TEXT}{stamp} {_mac(secret, channel, stamp, body.encode())}\n{body}"


def decode_command(
    payload: bytes, channel: str, secret: bytes | None, now: float, ops: frozenset[str]
) -> dict[str, Any]:
    """The command in `payload`; BadMessage if it must be refused.

    With a `secret`, only commands signed with it for this `channel` within
    `MAX_MESSAGE_AGE` seconds pass. Without one, signatures are not checked.
    """
    if payload.startswith(_SIGNED):
        end = payload.find(b"\n", 0, _MAX_SIGNATURE_LINE)
        if end < 0:
            raise BadMessage("malformed signature line")
        body = payload[end + 1 :]
        if secret is not None:
            _verify("command", secret, channel, payload[:end], b"", body, now)
    elif secret is not None:
        raise BadMessage("unsigned command, and this bus requires signatures")
    else:
        body = payload
    command = _load(body, "command")
    if not isinstance(command, dict):
        raise BadMessage("a command must be a JSON object")
    op = command.get("op")
    if not isinstance(op, str) or op not in ops:
        raise BadMessage(f"unknown command op {op!r}")
    return command


# -- shared ------------------------------------------------------------------------


def _mac(secret: bytes, channel: str, stamp: str, *parts: bytes) -> str:
    """HMAC-SHA256 of ``<channel>\\n<stamp>\\n`` and then `parts`, in hex."""
    mac = hmac.new(secret, f"{channel}\n{stamp}\n".encode(), hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.hexdigest()


def _verify(
    what: str, secret: bytes, channel: str, line: bytes, sender: bytes, body: bytes, now: float
) -> None:
    """Check a signature `line` (``v1 <time> <mac>``) over `sender` (its line) and `body`."""
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadMessage("malformed signature line")
    _, raw_stamp, signature = parts
    try:
        stamp = raw_stamp.decode("ascii")
        sent = float(stamp)
    except ValueError:  # UnicodeDecodeError included
        raise BadMessage("malformed timestamp") from None
    expected = _mac(secret, channel, stamp, sender, body).encode()
    if not hmac.compare_digest(expected, signature):
        raise BadMessage("bad signature (forged, or signed with another secret)")
    if not math.isfinite(sent) or abs(now - sent) > MAX_MESSAGE_AGE:
        raise BadMessage(f"stale {what} (signed {now - sent:.0f}s away from now)")


def _load(body: bytes | str, what: str) -> Any:
    """`body` as JSON: BadMessage for anything that is not UTF-8 JSON, however it fails."""
    try:
        text = body.decode() if isinstance(body, bytes) else body
        return json.loads(text)
    except UnicodeDecodeError:
        raise BadMessage(f"{what} not UTF-8") from None
    except ValueError as exc:
        raise BadMessage(f"{what} not JSON: {exc}") from None
    except RecursionError:
        raise BadMessage(f"{what} nested too deeply") from None
