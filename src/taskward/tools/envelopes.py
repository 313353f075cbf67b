"""The compact JSON strings a language model reads: results, statuses, listings.

Every envelope is a JSON object with at least `task_id` and `status`. Statuses
are those of `TaskStatus`, plus `not_found` for an id that does not exist or is
not the caller's (the two look exactly alike), and `rejected` for a tool call
that never ran (an unknown tool, arguments that are not JSON or do not fit the
tool's schema). A running task's envelope may carry `poll_after_s`: when it is
worth asking again.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .._records import StopOutcome, TaskRecord, TaskStatus, dump_json

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from .._records import StopResult

__all__ = [
    "background_envelope",
    "error_envelope",
    "list_envelope",
    "not_found_envelope",
    "poll_after",
    "record_envelope",
    "rejected_envelope",
    "result_text",
    "stop_envelope",
]

NOT_FOUND = "not_found"
REJECTED = "rejected"
#: The bounds of the `poll_after_s` hint, in seconds.
MIN_POLL_AFTER = 1
MAX_POLL_AFTER = 30


def poll_after(elapsed: float) -> int:
    """When to look at a running task again: half its age so far, 1 to 30 seconds.

    A task that has run for a long while is likely to run a while more, so the
    hint grows with it and a model polling by it asks O(log) times, not once a second.
    """
    return max(MIN_POLL_AFTER, min(MAX_POLL_AFTER, math.ceil(elapsed / 2)))


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


def record_envelope(rec: TaskRecord, now: float, *, note: str = "", poll_hint: bool = False) -> str:
    """What `check_task` says about one task: its result or error once terminal.

    With `poll_hint`, a running task's envelope says when to ask again (`poll_after_s`).
    """
    out = _summary(rec, now)
    if poll_hint and rec.status is TaskStatus.RUNNING:
        out["poll_after_s"] = poll_after(out["elapsed"])
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
            "poll_after_s": poll_after(timeout),
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


def list_envelope(
    records: Iterable[TaskRecord], now: float, *, cursor: str | None, poll_hint: bool = False
) -> str:
    """A listing; with `poll_hint`, `poll_after_s` for the youngest running task in it."""
    tasks = [_summary(rec, now) for rec in records]
    out: dict[str, Any] = {"count": len(tasks), "tasks": tasks}
    if cursor is not None:
        out["cursor"] = cursor
    running = [t["elapsed"] for t in tasks if t["status"] == TaskStatus.RUNNING.value]
    if poll_hint and running:
        out["poll_after_s"] = poll_after(min(running))
    return dumps(out)


_STOP_MESSAGES = {
    StopOutcome.CANCELLED: "The task was stopped.",
    StopOutcome.ALREADY_FINISHED: "The task had already finished; check_task gives its outcome.",
    StopOutcome.NOT_FOUND: "No task with this id.",
    StopOutcome.PENDING: (
        "The stop is requested but not confirmed yet; it will be honoured. "
        "Call check_task later to see the task end."
    ),
}


def stop_envelope(result: StopResult) -> str:
    """What `stop_task` says: the confirmed outcome, the task's status as last seen."""
    out: dict[str, Any] = {"task_id": result.task_id, "outcome": result.outcome.value}
    out["status"] = NOT_FOUND if result.status is None else result.status.value
    out["message"] = _STOP_MESSAGES[result.outcome]
    if result.detail:
        out["detail"] = result.detail
    if result.outcome is StopOutcome.PENDING:
        out["poll_after_s"] = MIN_POLL_AFTER
    return dumps(out)


def rejected_envelope(
    tool: str,
    error_type: str,
    message: str,
    *,
    fields: Sequence[dict[str, str]] = (),
    tools: Sequence[str] = (),
) -> str:
    """A tool call that never ran: what was wrong, so the model can call again correctly.

    `fields` lists invalid arguments (`field`, `problem`); `tools` the tools that
    exist, for an unknown name.
    """
    out: dict[str, Any] = {
        "status": REJECTED,
        "tool": tool,
        "error": {"type": error_type, "message": message},
    }
    if fields:
        out["error"]["fields"] = list(fields)
    if tools:
        out["error"]["tools"] = list(tools)
    return dumps(out)
