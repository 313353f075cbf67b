"""The Redis bus's wire formats (`taskward.bus._redis_codec`), without a server.

Property tests: whatever bytes arrive, decoding either yields what a sender
encoded or raises `BadMessage`, never anything else; signed messages survive
the trip and refuse any change.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskward._events import EVENT_KINDS
from taskward._records import TaskError, TaskEvent, TaskRecord, TaskStatus
from taskward.bus._redis_codec import (
    MAX_COMMAND_SIZE,
    MAX_MESSAGE_AGE,
    BadMessage,
    _json_types,
    decode_command,
    decode_events,
    encode_command,
    encode_events,
    events_body,
    sender_of,
    split_events,
)

CHANNEL = "{p}:events"
COMMANDS = "{p}:cmd:b"
SECRET = b"s3cret"
NOW = 1_700_000_000.0
OPS = frozenset({"stop"})

# No example database (nothing written beside the tests), no per-example deadline.
PROPERTY = settings(database=None, deadline=None, max_examples=150)

ids = st.text(st.characters(codec="utf-8", exclude_characters="\n"), min_size=1, max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
optional_ids = st.none() | ids


@st.composite
def records(draw: st.DrawFn, task_id: str) -> TaskRecord:
    return TaskRecord(
        task_id,
        draw(st.sampled_from(TaskStatus)),
        name=draw(st.text(max_size=10)),
        item_id=draw(optional_ids),
        user_id=draw(optional_ids),
        instance_id=draw(st.text(max_size=10)),
        created_at=draw(times),
        finished_at=draw(st.none() | times),
        result=draw(json_values),
        error=draw(st.none() | st.builds(TaskError, st.text(), st.text())),
        progress=draw(st.none() | st.floats(0, 1)),
        metadata=draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
    )


@st.composite
def events(draw: st.DrawFn) -> TaskEvent:
    task_id = draw(ids)
    return TaskEvent(
        draw(st.sampled_from(sorted(EVENT_KINDS))),
        task_id,
        draw(st.sampled_from(TaskStatus)),
        draw(times),
        draw(optional_ids),
        draw(optional_ids),
        draw(st.none() | records(task_id)),
        draw(st.none() | st.text()),
        draw(st.none() | st.integers(0, 2**40)),
    )


def receive(
    payload: str | bytes, secret: bytes | None, now: float = NOW, channel: str = CHANNEL
) -> list[TaskEvent]:
    """What a listener makes of an events message (sender line, signature, body)."""
    data = payload.encode() if isinstance(payload, str) else payload
    sender_of(data)
    return decode_events(events_body(data, channel, secret, now))


def thin(event: TaskEvent) -> TaskEvent:
    """`event` as sent when too large: without its record and data."""
    return dataclasses.replace(event, record=None, data=None)


# -- anything at all -------------------------------------------------------------------


@PROPERTY
@given(data=st.binary(max_size=300), secret=st.sampled_from([None, SECRET]))
def test_any_bytes_decode_or_raise_bad_message(data: bytes, secret: bytes | None) -> None:
    for message in (data, b"x\n" + data, b"x\nv1 " + data):
        try:
            receive(message, secret)
        except BadMessage:
            pass
        try:
            decode_command(message, COMMANDS, secret, NOW, OPS)
        except BadMessage:
            pass


@PROPERTY
@given(value=json_values)
def test_any_json_decodes_or_raises_bad_message(value: Any) -> None:
    body = json.dumps(value).encode()
    for wrapped in (body, json.dumps([value]).encode(), json.dumps([[*"abc", value]]).encode()):
        try:
            decode_events(wrapped)
        except BadMessage:
            pass
    try:
        decode_command(body, COMMANDS, None, NOW, OPS)
    except BadMessage:
        pass


@PROPERTY
@given(event=events(), index=st.integers(0, 8), value=json_values)
def test_an_event_with_any_field_replaced_decodes_or_raises_bad_message(
    event: TaskEvent, index: int, value: Any
) -> None:
    entry = json.loads(encode_events("x", [event], CHANNEL, None, NOW).split("\n", 1)[1])[0]
    entry[index] = value
    try:
        decoded = decode_events(json.dumps([entry]))
    except BadMessage:
        return
    assert len(decoded) == 1 and isinstance(decoded[0], TaskEvent)


@PROPERTY
@given(event=events(), field=st.sampled_from(sorted(TaskRecord.__dataclass_fields__)))
def test_a_record_field_of_the_wrong_type_is_refused(event: TaskEvent, field: str) -> None:
    entry = json.loads(encode_events("x", [event], CHANNEL, None, NOW).split("\n", 1)[1])[0]
    entry[6] = {"task_id": event.task_id, **(entry[6] or {}), field: [["not", "this"]]}
    if field == "result":  # any JSON value is a result
        assert decode_events(json.dumps([entry]))[0].record is not None
        return
    with pytest.raises(BadMessage):
        decode_events(json.dumps([entry]))


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        "[" + "1" * 5000 + "]",
    ],
    ids=["open", "balanced", "objects", "huge-integer"],
)
def test_deep_or_huge_json_is_a_bad_message(body: str) -> None:
    with pytest.raises(BadMessage):
        decode_events(body)
    with pytest.raises(BadMessage):
        decode_command(body.encode(), COMMANDS, None, NOW, OPS)
    with pytest.raises(BadMessage):  # an unchecked signature line, then the body
        decode_command(b"v1 1.0 abc\n" + body.encode(), COMMANDS, None, NOW, OPS)


# -- what a sender writes --------------------------------------------------------------------


@PROPERTY
@given(sent=st.lists(events(), max_size=5), secret=st.sampled_from([None, SECRET]))
def test_events_survive_the_trip(sent: list[TaskEvent], secret: bytes | None) -> None:
    payload = encode_events("sender-1", sent, CHANNEL, secret, NOW)
    assert payload.startswith("sender-1\n")
    assert sender_of(payload.encode()) == "sender-1"
    assert receive(payload, secret) == sent
    assert receive(payload, None) == sent  # a bus without a secret takes it unchecked


@PROPERTY
@given(sent=st.lists(events(), min_size=1, max_size=3), data=st.data())
def test_any_change_to_a_signed_message_is_refused(
    sent: list[TaskEvent], data: st.DataObject
) -> None:
    payload = encode_events("sender-1", sent, CHANNEL, SECRET, NOW).encode()
    index = data.draw(st.integers(0, len(payload) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != payload[index]))
    changed = payload[:index] + bytes([byte]) + payload[index + 1 :]
    with pytest.raises(BadMessage):
        receive(changed, SECRET)


@PROPERTY
@given(command=st.dictionaries(st.text(max_size=5), json_values, max_size=3), data=st.data())
def test_any_change_to_a_signed_command_is_refused(
    command: dict[str, Any], data: st.DataObject
) -> None:
    command["op"] = "stop"
    payload = encode_command(command, COMMANDS, SECRET, NOW).encode()
    assert decode_command(payload, COMMANDS, SECRET, NOW, OPS) == command
    index = data.draw(st.integers(0, len(payload) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != payload[index]))
    changed = payload[:index] + bytes([byte]) + payload[index + 1 :]
    with pytest.raises(BadMessage):
        decode_command(changed, COMMANDS, SECRET, NOW, OPS)


def test_a_signed_message_is_bound_to_its_channel_time_and_secret() -> None:
    sent = [TaskEvent("finished", "t", TaskStatus.CANCELLED, NOW)]
    payload = encode_events("a", sent, CHANNEL, SECRET, NOW)
    assert receive(payload, SECRET, NOW + MAX_MESSAGE_AGE) == sent
    assert receive(payload, SECRET, NOW - MAX_MESSAGE_AGE) == sent
    with pytest.raises(BadMessage, match="stale events"):
        receive(payload, SECRET, NOW + MAX_MESSAGE_AGE + 1)
    with pytest.raises(BadMessage, match="stale events"):
        receive(payload, SECRET, NOW - MAX_MESSAGE_AGE - 1)
    with pytest.raises(BadMessage, match="bad signature"):
        receive(payload, b"another secret")
    with pytest.raises(BadMessage, match="bad signature"):
        receive(payload, SECRET, channel="{q}:events")  # another deployment's channel
    with pytest.raises(BadMessage, match="unsigned events"):
        receive(encode_events("a", sent, CHANNEL, None, NOW), SECRET)
    # A command and an events message are signed for different channels: neither passes
    # as the other.
    command = encode_command({"op": "stop", "task_id": "t"}, CHANNEL, SECRET, NOW)
    with pytest.raises(BadMessage, match="bad signature"):
        receive(f"a\n{command}", SECRET)
    signed_part = payload.split("\n", 1)[1]
    with pytest.raises(BadMessage, match="bad signature"):
        decode_command(signed_part.encode(), CHANNEL, SECRET, NOW, OPS)


def test_the_sender_line_is_read_without_the_rest() -> None:
    assert sender_of(b"inst-a\n\xff not even UTF-8") == "inst-a"
    for bad in (b"", b"no newline", b"\n[]", b"x" * 2000 + b"\n[]", b"\xff\n[]"):
        with pytest.raises(BadMessage):
            sender_of(bad)


# -- sizes ----------------------------------------------------------------------------------


@PROPERTY
@given(
    sent=st.lists(events(), max_size=30),
    secret=st.sampled_from([None, SECRET]),
    limit=st.integers(MAX_COMMAND_SIZE // 16, MAX_COMMAND_SIZE),
)
def test_split_events_keep_within_the_limit_and_in_order(
    sent: list[TaskEvent], secret: bytes | None, limit: int
) -> None:
    messages, thinned = split_events("s", sent, CHANNEL, secret, NOW, limit)
    assert all(len(m.encode()) <= limit for m in messages)
    received = [e for m in messages for e in receive(m, secret)]
    assert len(received) == len(sent)
    assert all(r in (s, thin(s)) for r, s in zip(received, sent, strict=True))
    assert sum(r != s for r, s in zip(received, sent, strict=True)) == thinned
    whole = encode_events("s", sent, CHANNEL, secret, NOW)
    if sent and len(whole.encode()) <= limit:  # one message when one will do
        assert messages == [whole]


def test_an_event_too_large_to_go_alone_goes_thin() -> None:
    big = TaskRecord("big", TaskStatus.COMPLETED, result="x" * MAX_COMMAND_SIZE)
    sent = [
        TaskEvent("finished", "small", TaskStatus.COMPLETED, NOW, "u", None, TaskRecord("small")),
        TaskEvent.of("finished", big, NOW),
        TaskEvent("output", "big", TaskStatus.RUNNING, NOW, data="y" * MAX_COMMAND_SIZE, seq=3),
    ]
    messages, thinned = split_events("s", sent, CHANNEL, SECRET, NOW, MAX_COMMAND_SIZE)
    assert thinned == 2
    assert all(len(m.encode()) <= MAX_COMMAND_SIZE for m in messages)
    received = [e for m in messages for e in receive(m, SECRET)]
    assert received == [sent[0], thin(sent[1]), thin(sent[2])]
    assert received[1] == TaskEvent("finished", "big", TaskStatus.COMPLETED, NOW)


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (str, (str,)),
        (TaskStatus, (str,)),
        (float | None, (int, float, type(None))),
        (int, (int,)),
        (bool | None, (bool, type(None))),
        (dict[str, Any] | None, (dict, type(None))),
        (Mapping[str, Any], (dict,)),
        (TaskError | None, (dict, type(None))),
        (Any, None),
        (Optional[Any], None),  # noqa: UP045 - a typing.Union, as older annotations give
        (str | Any, None),
    ],
)
def test_record_field_checks_follow_the_annotations(hint: Any, expected: Any) -> None:
    assert _json_types(hint) == expected


def test_a_record_field_of_a_type_without_a_json_form_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="no JSON form"):
        _json_types(list[int])
