"""Live records: a task's record as its owner keeps it, a plain tuple.

Not a `TaskRecord` object, for the garbage collector's sake. Python's cyclic
collector walks every container object it tracks, on every full collection;
with a hundred thousand tasks in flight a record object per task made that walk
the largest part of what a task cost (bench/lifecycle.py). A tuple of strings,
numbers and None is dropped from tracking by the first collection that sees it,
so a running task's record costs the collector nothing after that.

A live record never changes: a new state is a new tuple (`finished`,
`replace`) that the owner puts in its table and marks for the next flush.
Stores read positions (`STATUS`, `USER_ID`...) in `save()`; the memory store
keeps the tuples as they are, terminal ones too. Every reader gets a
`TaskRecord` made by `snapshot()`. The error is kept as its type name and
message (two strings), so a failed task's record can be untracked too.
"""

from __future__ import annotations

from collections import deque
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from ._records import EMPTY, STATUS_BY_VALUE, TaskError, TaskEvent, TaskRecord, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "BURST",
    "CREATED_AT",
    "ERROR_MESSAGE",
    "ERROR_TYPE",
    "FINISHED_AT",
    "INSTANCE_ID",
    "ITEM_ID",
    "MAX_RUNTIME",
    "METADATA",
    "STATUS",
    "STOP_REQUESTED_AT",
    "TASK_ID",
    "USER_ID",
    "V_CANCELLED",
    "V_COMPLETED",
    "V_FAILED",
    "V_LOST",
    "V_RUNNING",
    "Live",
    "error_of",
    "event_of",
    "finished",
    "from_record",
    "item_id_of",
    "outcome",
    "pop_all",
    "replace",
    "snapshot",
    "status_of",
    "task_id_of",
    "user_id_of",
]

# The status a live record holds: a `TaskStatus` value, as a plain str.
V_RUNNING = TaskStatus.RUNNING.value
V_COMPLETED = TaskStatus.COMPLETED.value
V_FAILED = TaskStatus.FAILED.value
V_CANCELLED = TaskStatus.CANCELLED.value
V_LOST = TaskStatus.LOST.value

#: A live record: the fields of `TaskRecord` in its order, with the error as two
#: strings (type, message), the status as its string value, and metadata and
#: redirect as None when empty.
Live = tuple[Any, ...]

(
    TASK_ID,
    STATUS,
    NAME,
    ITEM_ID,
    USER_ID,
    CHANNEL_ID,
    PLATFORM,
    INSTANCE_ID,
    CREATED_AT,
    STARTED_AT,
    UPDATED_AT,
    FINISHED_AT,
    RESULT,
    ERROR_TYPE,
    ERROR_MESSAGE,
    PROGRESS,
    PROGRESS_MESSAGE,
    METADATA,
    REDIRECT,
    STOP_REQUESTED_AT,
    MAX_RUNTIME,
) = range(21)

# -- a burst at once ---------------------------------------------------------
# A flush hands a store the records of every task that changed in a loop turn,
# thousands in a burst. These go over them in C, with no Python code per record:
# `map(status_of, records)` iterates their statuses, `pop_all` drops keys.

status_of = itemgetter(STATUS)
task_id_of = itemgetter(TASK_ID)
user_id_of = itemgetter(USER_ID)
item_id_of = itemgetter(ITEM_ID)

# Below this many records a loop in Python costs less than setting up the
# iterators (measured: one record at a time, the bulk path cost 37k more
# instructions per task than the loop).
BURST = 32


def pop_all(table: dict[str, Any], keys: Iterable[str]) -> None:
    """Remove `keys` from `table`; absent ones are skipped."""
    deque(map(table.pop, keys, repeat(None)), maxlen=0)


def finished(rec: Live, status: str, result: Any, error: TaskError | None, now: float) -> Live:
    """`rec` ended: its terminal status value, result or error, finish time."""
    (
        task_id,
        _,
        name,
        item_id,
        user_id,
        channel_id,
        platform,
        instance_id,
        created_at,
        started_at,
        _,
        _,
        _,
        _,
        _,
        progress,
        progress_message,
        metadata,
        redirect,
        stop_requested_at,
        max_runtime,
    ) = rec
    return (
        task_id,
        status,
        name,
        item_id,
        user_id,
        channel_id,
        platform,
        instance_id,
        created_at,
        started_at,
        now,
        now,
        result,
        None if error is None else error.type,
        None if error is None else error.message,
        progress,
        progress_message,
        metadata,
        redirect,
        stop_requested_at,
        max_runtime,
    )


def replace(rec: Live, changes: Mapping[int, Any]) -> Live:
    """`rec` with the values at some positions changed (for the rarer changes)."""
    out = list(rec)
    for position, value in changes.items():
        out[position] = value
    return tuple(out)


def error_of(rec: Live) -> TaskError | None:
    error_type = rec[ERROR_TYPE]
    return None if error_type is None else TaskError(error_type, rec[ERROR_MESSAGE])


def outcome(rec: Live) -> tuple[TaskStatus, Any, TaskError | None]:
    """A terminal record's status, result and error, without making a `TaskRecord`."""
    return STATUS_BY_VALUE[rec[STATUS]], rec[RESULT], error_of(rec)


def snapshot(rec: Live) -> TaskRecord:
    """A `TaskRecord` of a live record: the caller's own."""
    (
        task_id,
        status,
        name,
        item_id,
        user_id,
        channel_id,
        platform,
        instance_id,
        created_at,
        started_at,
        updated_at,
        finished_at,
        result,
        _,  # the error, read by `error_of`
        _,
        progress,
        progress_message,
        metadata,
        redirect,
        stop_requested_at,
        max_runtime,
    ) = rec
    return TaskRecord(
        task_id,
        STATUS_BY_VALUE[status],
        name,
        item_id,
        user_id,
        channel_id,
        platform,
        instance_id,
        created_at,
        started_at,
        updated_at,
        finished_at,
        result,
        error_of(rec),
        progress,
        progress_message,
        EMPTY if metadata is None else dict(metadata),
        None if redirect is None else dict(redirect),
        stop_requested_at,
        max_runtime,
    )


def from_record(rec: TaskRecord) -> Live:
    """The live form of a `TaskRecord` (what a store's `save()` reads)."""
    error = rec.error
    return (
        rec.task_id,
        rec.status.value,
        rec.name,
        rec.item_id,
        rec.user_id,
        rec.channel_id,
        rec.platform,
        rec.instance_id,
        rec.created_at,
        rec.started_at,
        rec.updated_at,
        rec.finished_at,
        rec.result,
        None if error is None else error.type,
        None if error is None else error.message,
        rec.progress,
        rec.progress_message,
        dict(rec.metadata) if rec.metadata else None,
        None if rec.redirect is None else dict(rec.redirect),
        rec.stop_requested_at,
        rec.max_runtime,
    )


def event_of(
    kind: str,
    rec: Live,
    at: float,
    record: TaskRecord | None = None,
    data: str | None = None,
    seq: int | None = None,
) -> TaskEvent:
    """An event about a live record, carrying `record` (a snapshot, or None)."""
    return TaskEvent(
        kind,
        rec[TASK_ID],
        STATUS_BY_VALUE[rec[STATUS]],
        at,
        rec[USER_ID],
        rec[ITEM_ID],
        record,
        data,
        seq,
    )
