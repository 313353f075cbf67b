"""Progress and output from inside a task, without passing the manager around."""

from __future__ import annotations

import json
import logging
import math
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .manager import TaskManager

__all__ = ["current_task_id", "emit", "report_progress"]

logger = logging.getLogger(__name__)

# Set by the wrapper that runs each task (its manager and task id); child tasks
# inherit it.
_current: ContextVar[tuple[TaskManager, str] | None] = ContextVar("taskward_current", default=None)

MAX_PROGRESS_MESSAGE = 1_000


def current_task_id() -> str | None:
    """The id of the taskward task this code runs in, or None outside one."""
    current = _current.get()
    return None if current is None else current[1]


def report_progress(fraction: float, message: str | None = None) -> None:
    """Record how far the current task is (0.0 to 1.0), with an optional message.

    Visible in `get_result`, `get_record`, listings and events, from any instance.
    Outside a taskward task this does nothing (and logs at debug level).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"fraction must be a number, not {type(fraction).__name__}")
    if not (0.0 <= fraction <= 1.0) or math.isnan(fraction):
        raise ValueError(f"fraction must be between 0 and 1, not {fraction!r}")
    if message is not None:
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, not {type(message).__name__}")
        message = message[:MAX_PROGRESS_MESSAGE]
    current = _current.get()
    if current is None:
        logger.debug("report_progress(%r) outside a taskward task: ignored", fraction)
        return
    manager, task_id = current
    manager._on_progress(task_id, float(fraction), message)


def emit(data: Any) -> None:
    """Append to the current task's output stream.

    A `str` is appended as it is; anything else is serialised to JSON first
    (`TypeError` if it cannot be). Readers page through the stream from a cursor
    (`TaskManager.read_output`). Outside a taskward task this does nothing (and
    logs at debug level).
    """
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    current = _current.get()
    if current is None:
        logger.debug("emit() outside a taskward task: ignored")
        return
    manager, task_id = current
    manager._on_output(task_id, text)
