"""Exceptions raised by taskward.

The tree::

    TaskwardError
    ├── TaskNotFound          a task id that does not exist (or belongs to another user)
    ├── TaskIdInUse           a caller-chosen task id that names a known task
    ├── TaskTimeout           waiting for a task took longer than allowed
    ├── TaskFailed            `result()` of a task that failed, was cancelled or was lost
    ├── MaxRuntimeExceeded    a task ran past its max_runtime (recorded as the task's error)
    ├── TaskLost              a task's owner instance died (recorded as the task's error)
    ├── ValueNotEncodable     a value a task hands over has no JSON form (recorded as its error)
    ├── ManagerClosed         the manager was closed, or used before it started
    └── StoreUnavailable      the store (Redis) could not be reached

Argument checks raise the built-in `TypeError` and `ValueError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._records import TaskError, TaskStatus

__all__ = [
    "ManagerClosed",
    "MaxRuntimeExceeded",
    "StoreUnavailable",
    "TaskFailed",
    "TaskIdInUse",
    "TaskLost",
    "TaskNotFound",
    "TaskTimeout",
    "TaskwardError",
    "ValueNotEncodable",
]


class TaskwardError(Exception):
    """Base of every exception taskward raises on purpose."""


class TaskNotFound(TaskwardError, LookupError):
    """Raised when a task id is unknown, expired, or belongs to another user."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} not found")
        self.task_id = task_id


class TaskIdInUse(TaskwardError, ValueError):
    """Raised when `create_task(task_id=...)` names a task that is known (running or kept)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task id {task_id!r} is already in use")
        self.task_id = task_id


class TaskTimeout(TaskwardError, TimeoutError):
    """Raised when waiting for a task's result takes longer than the given timeout."""

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(f"task {task_id!r} did not finish within {timeout:g}s")
        self.task_id = task_id
        self.timeout = timeout


class TaskFailed(TaskwardError):
    """Raised by `TaskManager.result()` for a task that did not complete.

    `status` is the task's final status (`failed`, `cancelled` or `lost`) and
    `error` what went wrong, as recorded (a `TaskError`: type name and message).
    """

    def __init__(self, task_id: str, status: TaskStatus, error: TaskError | None) -> None:
        detail = f": {error.type}: {error.message}" if error is not None else ""
        super().__init__(f"task {task_id!r} ended {status.value}{detail}")
        self.task_id = task_id
        self.status = status
        self.error = error


class MaxRuntimeExceeded(TaskwardError):
    """Raised inside the record of a task cancelled for running past its `max_runtime`."""

    def __init__(self, task_id: str, max_runtime: float) -> None:
        super().__init__(f"task {task_id!r} exceeded its max_runtime of {max_runtime:g}s")
        self.task_id = task_id
        self.max_runtime = max_runtime


class TaskLost(TaskwardError):
    """Raised (as a recorded error) when a task's owner instance died with it running."""

    def __init__(self, task_id: str, instance_id: str) -> None:
        super().__init__(f"task {task_id!r} was lost with its instance {instance_id!r}")
        self.task_id = task_id
        self.instance_id = instance_id


class ValueNotEncodable(TaskwardError, ValueError):
    """Raised when a value a task hands over (result, metadata, message, output) has no JSON form.

    `what` names the value and where in it the trouble is (``result['a'][2]``), `reason`
    what the trouble is; the message is both. A result that is not encodable is recorded
    as the task's error.
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class ManagerClosed(TaskwardError, RuntimeError):
    """Raised when a closed (or never started) manager is asked to start a task."""


class StoreUnavailable(TaskwardError, ConnectionError):
    """Raised when the store cannot be reached and the call cannot be answered locally."""
