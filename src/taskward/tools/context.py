"""`ToolContext`: what a tool call knows about where it runs, injected by the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._context import emit, report_progress
from .._scope import Caller

if TYPE_CHECKING:
    from ..manager import TaskManager

__all__ = ["ToolContext"]


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who calls a tool, from where, and through which manager.

    A tool asks for it by annotating a parameter with `ToolContext`; that
    parameter is injected by `ToolRegistry.call` and is not part of the tool's
    schema. `task_id` is None when the call is awaited inline (a `no_background`
    tool, or the context an application builds for `ToolRegistry.call`) and the
    id of the task once the call runs as one.

    The context is frozen, so a backgrounded tool that outlives the tool loop
    cannot change what the loop sees; what it reports goes to its task
    (`progress`, `emit`), where `check_task` reads it.
    """

    manager: TaskManager
    caller: Caller
    channel_id: str = ""
    platform: str = ""
    task_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.caller, Caller):
            raise TypeError(f"caller must be a Caller, not {type(self.caller).__name__}")
        for what, value in (("channel_id", self.channel_id), ("platform", self.platform)):
            if not isinstance(value, str):
                raise TypeError(f"{what} must be a str, not {type(value).__name__}")

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the call is (0.0 to 1.0): `taskward.report_progress`.

        It lands on the task the call runs in; inline, outside any task, a valid
        call does nothing.
        """
        report_progress(fraction, message)

    def emit(self, data: Any) -> None:
        """Append to the output stream of the task the call runs in: `taskward.emit`."""
        emit(data)
