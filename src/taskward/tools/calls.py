"""The strings a language model reads: tool calls that beat their timeout or go on
in the background, and the answers of the task tools.

Each answer is compact JSON built by `envelopes`; nothing here raises into a
tool loop for a model's bad input (an unusable id is simply `not_found`). Only
the public API of `TaskManager` is used here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TypeGuard

from .._checks import check_positive, close_if_coroutine, is_coroutine
from .._ids import check_id
from .._records import TaskError, TaskStatus
from .._scope import Caller
from ..errors import TaskNotFound, TaskTimeout, ValueNotEncodable
from .envelopes import (
    background_envelope,
    dumps,
    error_envelope,
    list_envelope,
    not_found_envelope,
    record_envelope,
    result_text,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from .._records import TaskRecord
    from ..manager import TaskManager

__all__ = ["await_result", "execute", "get_result", "list_tasks", "lookup", "usable_task_id"]


def _caller(user_id: str | None) -> Caller | None:
    """The tool APIs' user: an empty or missing `user_id` means every task."""
    return Caller(user_id) if user_id else None


async def get_result(manager: TaskManager, task_id: object, user_id: str | None) -> str:
    """`check_task`: the task's status, with its result or error once terminal."""
    rec = await lookup(manager, task_id, user_id)
    if rec is None:
        return not_found_envelope(task_id)
    return record_envelope(rec, time.time())


async def await_result(
    manager: TaskManager, task_id: object, timeout: float, user_id: str | None
) -> str:
    """Like `get_result`, after waiting up to `timeout` seconds for the task to finish."""
    check_positive("timeout", timeout, allow_zero=True)
    caller = _caller(user_id)
    if not usable_task_id(task_id):
        return not_found_envelope(task_id)
    try:
        final = await manager.wait(task_id, timeout, caller=caller)
    except TaskNotFound:
        return not_found_envelope(task_id)
    except TaskTimeout:
        rec = await manager.get_record(task_id, caller=caller)
        if rec is None:
            return not_found_envelope(task_id)
        note = f"still running after waiting {timeout:g}s"
        return record_envelope(rec, time.time(), note=note)
    return record_envelope(final, time.time())


async def list_tasks(
    manager: TaskManager,
    user_id: str | None,
    item_id: str | None,
    status: TaskStatus | str | None,
) -> str:
    """Up to 100 tasks, newest first, with their status."""
    page = await manager.records(
        caller=_caller(user_id), item_id=item_id or None, status=status or None
    )
    return list_envelope(page.records, time.time(), cursor=page.cursor)


async def lookup(manager: TaskManager, task_id: object, user_id: str | None) -> TaskRecord | None:
    """The record a model asked for, or None; an empty `user_id` means no user."""
    caller = _caller(user_id)
    if not usable_task_id(task_id):
        return None
    return await manager.get_record(task_id, caller=caller)


def usable_task_id(task_id: object) -> TypeGuard[str]:
    """Whether a model's task id can name a task: its garbage is simply not found."""
    try:
        check_id(task_id, "task_id")
    except (TypeError, ValueError):
        return False
    return True


async def execute(
    manager: TaskManager,
    coro: Coroutine[Any, Any, Any],
    tool_name: str,
    user_id: str,
    channel_id: str,
    platform: str,
    *,
    timeout: float | None,
    background: bool,
) -> str:
    """Run a tool call: its result inline if it beats the timeout, else an envelope."""
    wait_for = manager.timeout if timeout is None else timeout
    try:
        check_positive("timeout", wait_for, allow_zero=True)
        caller = _caller(user_id)
    except (TypeError, ValueError):
        close_if_coroutine(coro)
        raise
    if not background:
        return await _inline(manager, coro, tool_name)
    task_id = await manager.create_task(
        coro, caller=caller, name=tool_name, channel_id=channel_id, platform=platform
    )
    rec: TaskRecord | None
    try:
        rec = await manager.wait(task_id, wait_for)
    except TaskTimeout:
        rec = await manager.get_record(task_id)
    if rec is None:
        return not_found_envelope(task_id)
    if rec.status is TaskStatus.RUNNING:
        return background_envelope(rec, wait_for)
    if rec.status is TaskStatus.COMPLETED:
        return result_text(rec.result)
    return error_envelope(rec)


async def _inline(manager: TaskManager, coro: Coroutine[Any, Any, Any], tool_name: str) -> str:
    """A tool awaited in the caller's task (no task is created)."""
    if not is_coroutine(coro):
        raise TypeError(f"execute needs a coroutine, not {type(coro).__name__}")
    try:
        return result_text(manager.encoder.value(await coro, "result"))
    except Exception as exc:  # noqa: BLE001 - the tool loop gets an envelope, never a raise
        error = TaskError.from_exception(exc)
        if not isinstance(exc, ValueNotEncodable):
            error = TaskError(
                error.type, manager.encoder.text(error.message, "error", truncate=True)
            )
        return dumps(
            {"status": TaskStatus.FAILED.value, "tool": tool_name, "error": error.to_dict()}
        )
