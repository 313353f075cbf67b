"""Wire formats of the Redis bus: events (compact JSON) and commands (JSON, optionally signed).

Events: ``<sender instance id>\\n<JSON list>``, one entry per event:
``[kind, task_id, status, at, user_id, item_id, record, data, seq]`` where
`record` is the record's non-empty fields (`TaskRecord.to_dict`) or null. The
sender id comes first so a receiver can skip its own messages, and messages
nobody here listens to, without decoding any JSON.

Commands: the JSON object itself, or with a secret
``v1 <unix time> <hex HMAC-SHA256>\\n<JSON object>``, the MAC taken over
``<channel>\\n<time>\\n<JSON>`` so a signed command is only valid for the
instance it was sent to, and only for `MAX_COMMAND_AGE` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from typing import TYPE_CHECKING, Any

from .._records import STATUS_BY_VALUE, TaskEvent, TaskRecord, dump_json

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "MAX_COMMAND_AGE",
    "BadMessage",
    "decode_command",
    "decode_events",
    "encode_command",
    "encode_events",
    "split_sender",
]

MAX_COMMAND_AGE = 60.0
_SIGNED = "v1 "


class BadMessage(ValueError):
    """A message that is not ours, malformed, unsigned when it must be, forged or stale."""


def _record_dict(rec: TaskRecord) -> dict[str, Any]:
    return {k: v for k, v in rec.to_dict().items() if v is not None and v != "" and v != {}}


def encode_events(sender: str, events: Sequence[TaskEvent]) -> str:
    body = [
        [
            e.kind,
            e.task_id,
            e.status.value,
            e.at,
            e.user_id,
            e.item_id,
            None if e.record is None else _record_dict(e.record),
            e.data,
            e.seq,
        ]
        for e in events
    ]
    return f"{sender}\n{dump_json(body)}"


def split_sender(payload: str) -> tuple[str, str]:
    """(sender, body) of an events message; BadMessage if there is no sender line."""
    sender, sep, body = payload.partition("\n")
    if not sep or not sender:
        raise BadMessage("no sender line")
    return sender, body


def decode_events(body: str) -> list[TaskEvent]:
    try:
        items = json.loads(body)
        if not isinstance(items, list):
            raise BadMessage("events must be a JSON list")
        return [_decode_event(item) for item in items]
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, BadMessage):
            raise
        raise BadMessage(f"bad event: {exc}") from None


def _decode_event(item: Any) -> TaskEvent:
    if not isinstance(item, list) or len(item) != 9:
        raise BadMessage("an event must be a list of 9 values")
    kind, task_id, status, at, user_id, item_id, record, data, seq = item
    if not isinstance(kind, str) or not isinstance(task_id, str):
        raise BadMessage("event kind and task_id must be strings")
    if not isinstance(at, int | float) or not _opt_str(user_id) or not _opt_str(item_id):
        raise BadMessage("bad event field types")
    if not _opt_str(data) or not (seq is None or isinstance(seq, int)):
        raise BadMessage("bad event field types")
    st = STATUS_BY_VALUE.get(status) if isinstance(status, str) else None
    if st is None:
        raise BadMessage(f"unknown status {status!r}")
    rec = None
    if record is not None:
        if not isinstance(record, dict):
            raise BadMessage("an event record must be an object")
        rec = TaskRecord.from_dict(record)
    return TaskEvent(kind, task_id, st, float(at), user_id, item_id, rec, data, seq)


def _opt_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _mac(secret: bytes, channel: str, stamp: str, body: str) -> str:
    message = f"{channel}\n{stamp}\n{body}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def encode_command(command: dict[str, Any], channel: str, secret: bytes | None, now: float) -> str:
    body = dump_json(command)
    if secret is None:
        return body
    stamp = f"{now:.3f}"
    return f"{_SIGNED}{stamp} {_mac(secret, channel, stamp, body)}\n{body}"


def decode_command(
    payload: str, channel: str, secret: bytes | None, now: float, ops: frozenset[str]
) -> dict[str, Any]:
    """The command in `payload`; BadMessage if it must be refused.

    With a `secret`, only commands signed with it for this `channel` in the
    last `MAX_COMMAND_AGE` seconds pass. Without one, signatures are not checked.
    """
    if payload.startswith(_SIGNED):
        header, _, body = payload.partition("\n")
        parts = header.split(" ")
        if len(parts) != 3:
            raise BadMessage("malformed signature line")
        _, stamp, signature = parts
        if secret is not None:
            expected = _mac(secret, channel, stamp, body)
            if not hmac.compare_digest(expected, signature):
                raise BadMessage("bad signature (forged, or signed with another secret)")
            try:
                sent = float(stamp)
            except ValueError:
                raise BadMessage("malformed timestamp") from None
            if not math.isfinite(sent) or abs(now - sent) > MAX_COMMAND_AGE:
                raise BadMessage(f"stale command (sent {now - sent:.0f}s ago)")
    elif secret is not None:
        raise BadMessage("unsigned command, and this bus requires signatures")
    else:
        body = payload
    try:
        command = json.loads(body)
    except ValueError:
        raise BadMessage("command is not JSON") from None
    if not isinstance(command, dict):
        raise BadMessage("a command must be a JSON object")
    op = command.get("op")
    if not isinstance(op, str) or op not in ops:
        raise BadMessage(f"unknown command op {op!r}")
    return command
