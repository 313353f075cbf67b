"""Rows: a task's record as its owner and the stores keep it, a plain tuple.

The layout is `TaskRecord`'s: one position per field, in its order (the
position constants below; a test checks they agree with `TaskRecord`'s fields
and with the Redis codec). A row differs from a record in three ways only: the
status is its string value, `metadata` is None when empty, and nothing in it is
ever changed (a new state is a new tuple, from `finished` or `replace`).

Why a tuple and not a `TaskRecord`: Python's cyclic garbage collector walks
every container it tracks on every full collection, and with a hundred
thousand tasks in flight a record object per task made that walk the largest
part of what a task cost (bench/lifecycle.py). A tuple of strings, numbers and
None is dropped from tracking by the first collection that sees it, so a
running task's row costs the collector nothing after that. Every reader gets
a `TaskRecord` made by `snapshot()`, its own to keep.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, Final

from ._records import EMPTY, STATUS_BY_VALUE, TaskError, TaskEvent, TaskRecord, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CHANNEL_ID",
    "CREATED_AT",
    "ERROR",
    "FIELDS",
    "FINISHED_AT",
    "INSTANCE_ID",
    "ITEM_ID",
    "MAX_RUNTIME",
    "METADATA",
    "NAME",
    "PLATFORM",
    "PROGRESS",
    "PROGRESS_MESSAGE",
    "REDIRECT",
    "RESULT",
    "STARTED_AT",
    "STATUS",
    "STOP_REQUESTED_AT",
    "TASK_ID",
    "UPDATED_AT",
    "USER_ID",
    "V_CANCELLED",
    "V_COMPLETED",
    "V_FAILED",
    "V_LOST",
    "V_RUNNING",
    "Live",
    "event_of",
    "finished",
    "from_record",
    "new_row",
    "outcome",
    "replace",
    "snapshot",
]

# A row's status is the `TaskStatus` value as a plain str: an enum member (an
# object the collector tracks) would keep every row tracked.
V_RUNNING: Final = TaskStatus.RUNNING.value
V_COMPLETED: Final = TaskStatus.COMPLETED.value
V_FAILED: Final = TaskStatus.FAILED.value
V_CANCELLED: Final = TaskStatus.CANCELLED.value
V_LOST: Final = TaskStatus.LOST.value

#: A row: `TaskRecord`'s fields in its order (see the module docstring).
Live = tuple[Any, ...]

#: The field names, position by position.
FIELDS: Final = tuple(f.name for f in fields(TaskRecord))

TASK_ID: Final = 0
STATUS: Final = 1
NAME: Final = 2
ITEM_ID: Final = 3
USER_ID: Final = 4
CHANNEL_ID: Final = 5
PLATFORM: Final = 6
INSTANCE_ID: Final = 7
CREATED_AT: Final = 8
STARTED_AT: Final = 9
UPDATED_AT: Final = 10
FINISHED_AT: Final = 11
RESULT: Final = 12
ERROR: Final = 13
PROGRESS: Final = 14
PROGRESS_MESSAGE: Final = 15
METADATA: Final = 16
REDIRECT: Final = 17
STOP_REQUESTED_AT: Final = 18
MAX_RUNTIME: Final = 19


def new_row(
    task_id: str,
    name: str,
    item_id: str | None,
    user_id: str | None,
    channel_id: str,
    platform: str,
    instance_id: str,
    now: float,
    metadata: dict[str, Any] | None,
    max_runtime: float | None,
) -> Live:
    """The first row of a task starting now: running, nothing else happened yet.

    Spelled out in position order (every task makes one; a test checks it against
    `from_record` of the same `TaskRecord`).
    """
    return (
        task_id,
        V_RUNNING,
        name,
        item_id,
        user_id,
        channel_id,
        platform,
        instance_id,
        now,  # created
        now,  # started
        now,  # updated
        None,  # finished
        None,  # result
        None,  # error
        None,  # progress
        None,  # progress message
        metadata,
        None,  # redirect
        None,  # stop requested
        max_runtime,
    )


def replace(row: Live, changes: Mapping[int, Any]) -> Live:
    """`row` with the values at some positions changed."""
    out = list(row)
    for position, value in changes.items():
        out[position] = value
    return tuple(out)


def finished(row: Live, status: str, result: Any, error: TaskError | None, now: float) -> Live:
    """`row` ended at `now`: its terminal status value, and its result or error."""
    out = list(row)
    out[STATUS] = status
    out[UPDATED_AT] = out[FINISHED_AT] = now
    out[RESULT] = result
    out[ERROR] = error
    return tuple(out)


def outcome(row: Live) -> tuple[TaskStatus, Any, TaskError | None]:
    """A terminal row's status, result and error, without making a `TaskRecord`."""
    return STATUS_BY_VALUE[row[STATUS]], row[RESULT], row[ERROR]


def snapshot(row: Live) -> TaskRecord:
    """A `TaskRecord` of a row: the caller's own."""
    rec = TaskRecord(*row)
    rec.status = STATUS_BY_VALUE[row[STATUS]]
    metadata = row[METADATA]
    rec.metadata = EMPTY if metadata is None else dict(metadata)
    if rec.redirect is not None:
        rec.redirect = dict(rec.redirect)
    return rec


def from_record(rec: TaskRecord) -> Live:
    """The row of a `TaskRecord` (what a store's `save()` reads)."""
    row = tuple(getattr(rec, name) for name in FIELDS)
    return replace(
        row,
        {
            STATUS: rec.status.value,
            METADATA: dict(rec.metadata) if rec.metadata else None,
            REDIRECT: None if rec.redirect is None else dict(rec.redirect),
        },
    )


def event_of(
    kind: str,
    row: Live,
    at: float,
    record: TaskRecord | None = None,
    data: str | None = None,
    seq: int | None = None,
) -> TaskEvent:
    """An event about a row, carrying `record` (a snapshot, or None)."""
    return TaskEvent(
        kind,
        row[TASK_ID],
        STATUS_BY_VALUE[row[STATUS]],
        at,
        row[USER_ID],
        row[ITEM_ID],
        record,
        data,
        seq,
    )
