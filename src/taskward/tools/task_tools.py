"""The task tools every `ToolRegistry` offers a model: `check_task`, `list_tasks`,
`stop_task` and `redirect_task`.

Each is an ordinary tool function (an `async def` taking a `ToolContext`), so a
further task tool is written the same way and added with
``registry.add(function, no_background=True)``; `TASK_TOOLS` is what a registry
registers unless told not to. They act for `context.caller`: another user's task
answers exactly like a missing one. Each answers compact JSON, with
`poll_after_s` while a task runs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from .._records import StopOutcome, StopResult, TaskStatus
from ..errors import TaskNotFound, TaskTimeout
from .calls import usable_task_id
from .context import ToolContext  # noqa: TC001 - read at runtime by the schema builder
from .envelopes import (
    dumps,
    list_envelope,
    not_found_envelope,
    record_envelope,
    stop_envelope,
)

if TYPE_CHECKING:
    from .definition import ToolFunction

__all__ = [
    "MAX_CHECK_WAIT",
    "TASK_TOOLS",
    "check_task",
    "list_tasks",
    "redirect_task",
    "stop_task",
]

#: The longest `check_task` waits for a task, in seconds (a longer `wait` is cut to it).
MAX_CHECK_WAIT = 30.0
#: The most tasks one `list_tasks` answer lists.
MAX_LISTED = 100

StatusName = Literal["running", "completed", "failed", "cancelled", "lost"]


async def check_task(
    task_id: str,
    wait: Annotated[float, Field(ge=0)] = 0,
    *,
    ctx: ToolContext,
) -> str:
    """Check a task that went on in the background: its status and progress while it runs,
    its result or error once it has finished.

    Args:
        task_id: The task_id a tool call answered with when it went on in the background.
        wait: Seconds to wait for the task to finish before answering, at most 30.
            0 answers at once. While it runs, poll_after_s in the answer says when to
            check again.
    """
    if not usable_task_id(task_id):
        return not_found_envelope(task_id)
    manager, caller = ctx.manager, ctx.caller
    note = ""
    if wait > 0:
        waited = min(float(wait), MAX_CHECK_WAIT)
        try:
            rec = await manager.wait(task_id, waited, caller=caller)
        except TaskNotFound:
            return not_found_envelope(task_id)
        except TaskTimeout:
            found = await manager.get_record(task_id, caller=caller)
            if found is None:
                return not_found_envelope(task_id)
            rec, note = found, f"still running after waiting {waited:g}s"
    else:
        found = await manager.get_record(task_id, caller=caller)
        if found is None:
            return not_found_envelope(task_id)
        rec = found
    return record_envelope(rec, time.time(), note=note, poll_hint=True)


async def list_tasks(
    status: StatusName | None = None,
    limit: Annotated[int, Field(ge=1, le=MAX_LISTED)] = 20,
    *,
    ctx: ToolContext,
) -> str:
    """List your tasks, newest first, with their status and progress.

    Args:
        status: Only tasks in this status; null for every status.
        limit: How many tasks to list, 1 to 100.
    """
    page = await ctx.manager.records(
        caller=ctx.caller, status=None if status is None else TaskStatus(status), limit=limit
    )
    return list_envelope(page.records, time.time(), cursor=None, poll_hint=True)


async def stop_task(task_id: str, *, ctx: ToolContext) -> str:
    """Stop a task that is running in the background, and say what happened:
    cancelled, already_finished (with its final status), not_found, or pending
    (requested but not confirmed yet; it will be honoured).

    Args:
        task_id: The task_id of the task to stop.
    """
    if not usable_task_id(task_id):
        return stop_envelope(StopResult(task_id, StopOutcome.NOT_FOUND))
    result = await ctx.manager.stop_task(task_id, caller=ctx.caller)
    return stop_envelope(result)


async def redirect_task(
    task_id: str,
    channel_id: str,
    platform: str,
    max_chars: Annotated[int, Field(ge=0)] = 0,
    *,
    ctx: ToolContext,
) -> str:
    """Have a background task's result delivered to a chat channel when it finishes
    (at once if it already has), instead of checking it yourself.

    Args:
        task_id: The task_id of the task whose result to deliver.
        channel_id: The channel to deliver it to (as the platform names it).
        platform: The platform of the channel: webhook, slack, discord or telegram.
        max_chars: Cut the delivered text to this many characters; 0 for the
            platform's own limit.
    """
    if not usable_task_id(task_id):
        return not_found_envelope(task_id)
    try:
        redirected = await ctx.manager.set_output_redirect(
            task_id, channel_id, platform, max_chars, caller=ctx.caller
        )
    except (TypeError, ValueError) as exc:
        return dumps(
            {
                "task_id": task_id,
                "status": "rejected",
                "tool": "redirect_task",
                "error": {"type": "invalid_arguments", "message": str(exc)},
            }
        )
    if not redirected:
        return not_found_envelope(task_id)
    rec = await ctx.manager.get_record(task_id, caller=ctx.caller)
    if rec is None:
        return not_found_envelope(task_id)
    state = (rec.redirect or {}).get("state")
    return dumps(
        {
            "task_id": task_id,
            "status": rec.status.value,
            "redirected_to": {"channel_id": channel_id, "platform": platform},
            "delivery": state or "when the task finishes",
        }
    )


#: The task tools a registry offers unless made with ``task_tools=False``.
TASK_TOOLS: tuple[ToolFunction, ...] = (check_task, list_tasks, stop_task, redirect_task)
