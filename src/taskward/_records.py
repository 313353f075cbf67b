"""Task records, statuses, events and the answers the manager gives."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "OutputChunk",
    "StopOutcome",
    "StopResult",
    "TaskError",
    "TaskEvent",
    "TaskRecord",
    "TaskStatus",
]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. Terminal states never change."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # the owner instance died or went away with the task running

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[TaskStatus] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.LOST}
)
#: Statuses by their value, for decoders (a dict lookup, unlike `TaskStatus(value)`).
STATUS_BY_VALUE: dict[str, TaskStatus] = {status.value: status for status in TaskStatus}

#: Compact JSON (no spaces, non-ASCII kept), one encoder
#: for every writer: stored records, bus messages, envelopes.
dump_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(slots=True, frozen=True)
class TaskError:
    """What went wrong: the exception type name and its message."""

    type: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}

    @classmethod
    def from_exception(cls, exc: BaseException) -> TaskError:
        return cls(type(exc).__name__, str(exc))


EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(slots=True)
class TaskRecord:
    """Everything known about one task.

    Every record handed to callers is made for them from the owner's or the
    store's state, so a record you hold never changes under you (`copy()` for
    another). Times are Unix seconds (`time.time()`).
    """

    task_id: str
    status: TaskStatus = TaskStatus.RUNNING
    name: str = ""
    item_id: str | None = None
    user_id: str | None = None
    channel_id: str = ""
    platform: str = ""
    instance_id: str = ""
    created_at: float = 0.0
    started_at: float | None = None
    updated_at: float = 0.0
    finished_at: float | None = None
    result: Any = None
    error: TaskError | None = None
    progress: float | None = None
    progress_message: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    redirect: dict[str, Any] | None = None
    stop_requested_at: float | None = None
    max_runtime: float | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def elapsed(self, now: float) -> float:
        """Seconds from start (or creation) to finish, or to `now` while running."""
        start = self.started_at if self.started_at is not None else self.created_at
        end = self.finished_at if self.finished_at is not None else now
        return max(0.0, end - start)

    def copy(self) -> TaskRecord:
        """A copy whose metadata and redirect are its own too."""
        return replace(
            self,
            metadata=self.metadata if self.metadata is EMPTY else dict(self.metadata),
            redirect=None if self.redirect is None else dict(self.redirect),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (status as its string value)."""
        out = {name: getattr(self, name) for name in _RECORD_FIELDS}
        out["status"] = self.status.value
        if self.error is not None:
            out["error"] = self.error.to_dict()
        out["metadata"] = dict(self.metadata)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRecord:
        """Build a record from `to_dict()` output; unknown keys are ignored."""
        kwargs = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
        if "task_id" not in kwargs:
            raise ValueError("a task record needs a task_id")
        kwargs["status"] = TaskStatus(kwargs.get("status", TaskStatus.RUNNING))
        error = kwargs.get("error")
        if isinstance(error, dict):
            kwargs["error"] = TaskError(str(error.get("type", "")), str(error.get("message", "")))
        elif error is not None and not isinstance(error, TaskError):
            raise ValueError(f"error must be a mapping, not {type(error).__name__}")
        return cls(**kwargs)


_RECORD_FIELDS = tuple(f.name for f in fields(TaskRecord))


@dataclass(slots=True, frozen=True)
class OutputChunk:
    """One piece of a task's output stream; `seq` is the cursor after it."""

    seq: int
    data: str
    at: float


@dataclass(slots=True, frozen=True)
class TaskEvent:
    """Something that happened to a task, as seen by `TaskManager.events()`.

    `kind` is one of `created`, `progress`, `output`, `finished`, `stop_requested`.
    `record` is a snapshot for `created`, `progress` and `finished`;
    `data` carries the chunk text for `output`.
    """

    kind: str
    task_id: str
    status: TaskStatus
    at: float
    user_id: str | None = None
    item_id: str | None = None
    record: TaskRecord | None = None
    data: str | None = None
    seq: int | None = None

    @classmethod
    def of(cls, kind: str, rec: TaskRecord, at: float) -> TaskEvent:
        """An event carrying `rec` (a snapshot the event keeps)."""
        return cls(kind, rec.task_id, rec.status, at, rec.user_id, rec.item_id, rec)


class StopOutcome(enum.StrEnum):
    """What a stop request achieved."""

    CANCELLED = "cancelled"
    ALREADY_FINISHED = "already_finished"
    NOT_FOUND = "not_found"
    PENDING = "pending"  # the owner did not confirm in time; the request stays and will be honoured


@dataclass(slots=True, frozen=True)
class StopResult:
    """The answer to `TaskManager.stop_task()`.

    `status` is the task's status as last seen: the final one for `cancelled` and
    `already_finished` (for instance `completed` when a task swallowed the
    cancellation and returned normally), `running` for `pending`, `None` for
    `not_found`.
    """

    task_id: str
    outcome: StopOutcome
    status: TaskStatus | None = None
    detail: str = ""

    @property
    def stopped(self) -> bool:
        return self.outcome is StopOutcome.CANCELLED

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task_id": self.task_id, "outcome": self.outcome.value}
        if self.status is not None:
            out["status"] = self.status.value
        if self.detail:
            out["detail"] = self.detail
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))
