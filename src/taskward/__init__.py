"""taskward: run, track, stop and report background asyncio work in AI applications."""

from __future__ import annotations

from ._context import current_task_id as current_task_id
from ._context import emit as emit
from ._context import report_progress as report_progress
from ._encoding import ValueEncoder as ValueEncoder
from ._events import EventStream as EventStream
from ._records import TERMINAL as TERMINAL
from ._records import OutputChunk as OutputChunk
from ._records import StopOutcome as StopOutcome
from ._records import StopResult as StopResult
from ._records import TaskError as TaskError
from ._records import TaskEvent as TaskEvent
from ._records import TaskRecord as TaskRecord
from ._records import TaskStatus as TaskStatus
from ._scope import Caller as Caller
from .errors import ManagerClosed as ManagerClosed
from .errors import MaxRuntimeExceeded as MaxRuntimeExceeded
from .errors import StoreUnavailable as StoreUnavailable
from .errors import TaskFailed as TaskFailed
from .errors import TaskIdInUse as TaskIdInUse
from .errors import TaskLost as TaskLost
from .errors import TaskNotFound as TaskNotFound
from .errors import TaskTimeout as TaskTimeout
from .errors import TaskwardError as TaskwardError
from .errors import ValueNotEncodable as ValueNotEncodable
from .manager import TaskManager as TaskManager
from .stores.base import InstanceInfo as InstanceInfo
from .stores.base import Page as Page
from .stores.base import Retention as Retention

__version__ = "0.1.0"

__all__ = (
    "TERMINAL",
    "Caller",
    "EventStream",
    "InstanceInfo",
    "ManagerClosed",
    "MaxRuntimeExceeded",
    "OutputChunk",
    "Page",
    "Retention",
    "StopOutcome",
    "StopResult",
    "StoreUnavailable",
    "TaskError",
    "TaskEvent",
    "TaskFailed",
    "TaskIdInUse",
    "TaskLost",
    "TaskManager",
    "TaskNotFound",
    "TaskRecord",
    "TaskStatus",
    "TaskTimeout",
    "TaskwardError",
    "ValueEncoder",
    "ValueNotEncodable",
    "current_task_id",
    "emit",
    "report_progress",
)
