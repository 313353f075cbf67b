"""Progress and output from inside a task, without passing the manager around."""

from __future__ import annotations

import logging
import math
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = ["TaskSink", "current", "current_task_id", "emit", "report_progress"]

logger = logging.getLogger(__name__)


class TaskSink(Protocol):
    """Where a task's progress and output go: the table of the instance running it."""

    def progress(self, task_id: str, fraction: float, message: str | None) -> None: ...

    def output(self, task_id: str, data: Any) -> None: ...


#: Set by the wrapper that runs each task (its sink and task id); child tasks inherit it.
current: ContextVar[tuple[TaskSink, str] | None] = ContextVar("taskward_current", default=None)


def current_task_id() -> str | None:
    """The id of the taskward task this code runs in, or None outside one."""
    here = current.get()
    return None if here is None else here[1]


def report_progress(fraction: float, message: str | None = None) -> None:
    """Record how far the current task is (0.0 to 1.0), with an optional message.

    Visible in `get_result`, `get_record`, listings and events, from any instance.
    A bad value raises here, at the call, inside a task or not: `TypeError` for
    a fraction that is not a number or a message that is not a str,
    `ValueError` for a fraction outside 0..1. A valid call outside a taskward
    task does nothing (it logs at debug level). A long message is cut to 1,000
    characters.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"fraction must be a number, not {type(fraction).__name__}")
    if not (0.0 <= fraction <= 1.0) or math.isnan(fraction):
        raise ValueError(f"fraction must be between 0 and 1, not {fraction!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"message must be a str, not {type(message).__name__}")
    here = current.get()
    if here is None:
        logger.debug("report_progress(%r) outside a taskward task: ignored", fraction)
        return
    sink, task_id = here
    sink.progress(task_id, float(fraction), message)


def emit(data: Any) -> None:
    """Append to the current task's output stream.

    A `str` is appended as it is; anything else as its JSON text, encoded by the
    manager's encoding rule (see the README). Readers page through the stream
    from a cursor (`TaskManager.read_output`). Inside a task, a value that does
    not encode, or a chunk over the manager's `max_value_size`, raises
    `ValueNotEncodable` here, at the call. Outside a taskward task this does
    nothing at all (no manager, so no encoding rule to check by; it logs at
    debug level).
    """
    here = current.get()
    if here is None:
        logger.debug("emit() outside a taskward task: ignored")
        return
    sink, task_id = here
    sink.output(task_id, data)
