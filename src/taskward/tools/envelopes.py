"""The compact JSON strings a language model reads: results, statuses, listings.

Every envelope is a JSON object with at least `task_id` and `status`. Statuses
are those of `TaskStatus`, plus `not_found` for an id that does not exist or is
not the caller's (the two look exactly alike).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._records import TaskRecord, TaskStatus, dump_json

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "background_envelope",
    "error_envelope",
    "list_envelope",
    "not_found_envelope",
    "record_envelope",
    "result_text",
]

NOT_FOUND = "not_found"


def dumps(obj: Any) -> str:
    """Compact JSON (of values the encoding rule has made JSON already)."""
    return dump_json(obj)


def result_text(result: Any) -> str:
    """A tool result as the model sees it: a str as is, anything else as JSON."""
    return result if isinstance(result, str) else dumps(result)


def _summary(rec: TaskRecord, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {"task_id": rec.task_id, "status": rec.status.value}
    if rec.name:
        out["tool"] = rec.name
    if rec.item_id is not None:
        out["item_id"] = rec.item_id
    out["elapsed"] = round(rec.elapsed(now), 3)
    if rec.progress is not None:
        out["progress"] = rec.progress
    if rec.progress_message:
        out["progress_message"] = rec.progress_message
    return out


def record_envelope(rec: TaskRecord, now: float, *, note: str = "") -> str:
    """What `check_task` says about one task: its result or error once terminal."""
    out = _summary(rec, now)
    if rec.status is TaskStatus.COMPLETED:
        out["result"] = rec.result
    elif rec.error is not None:
        out["error"] = rec.error.to_dict()
    if note:
        out["note"] = note
    return dumps(out)


def background_envelope(rec: TaskRecord, timeout: float) -> str:
    """What a tool call returns when it outlives its timeout and keeps running."""
    return dumps(
        {
            "task_id": rec.task_id,
            "status": TaskStatus.RUNNING.value,
            "tool": rec.name,
            "message": (
                f"Still running after {timeout:g}s; it continues in the background. "
                "Call check_task with this task_id to get its result."
            ),
        }
    )


def error_envelope(rec: TaskRecord) -> str:
    """What a tool call returns when the tool raised or was cancelled in time."""
    out: dict[str, Any] = {"task_id": rec.task_id, "status": rec.status.value}
    if rec.name:
        out["tool"] = rec.name
    if rec.error is not None:
        out["error"] = rec.error.to_dict()
    return dumps(out)


def not_found_envelope(task_id: object) -> str:
    return dumps(
        {
            "task_id": task_id if isinstance(task_id, str) else repr(task_id),
            "status": NOT_FOUND,
            "error": "no task with this id",
        }
    )


def list_envelope(records: Iterable[TaskRecord], now: float, *, cursor: str | None) -> str:
    tasks = [_summary(rec, now) for rec in records]
    out: dict[str, Any] = {"count": len(tasks), "tasks": tasks}
    if cursor is not None:
        out["cursor"] = cursor
    return dumps(out)
