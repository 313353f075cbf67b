"""The strings a language model reads: `TaskManager.get_result`, `execute` and friends.

Each answer is compact JSON built by `_envelopes`; nothing here raises into a
tool loop for a model's bad input (an unusable id is simply `not_found`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from . import _envelopes as env
from ._checks import check_positive, close_if_coroutine, is_coroutine
from ._ids import check_id, check_optional_id
from ._records import TaskError, TaskStatus
from .errors import TaskNotFound, TaskTimeout

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ._records import TaskRecord
    from .manager import TaskManager

__all__ = ["await_result", "execute", "get_result", "list_tasks", "lookup"]

_RUNNING = TaskStatus.RUNNING
_COMPLETED = TaskStatus.COMPLETED
_FAILED = TaskStatus.FAILED
_time = time.time


async def get_result(manager: TaskManager, task_id: str, user_id: str | None) -> str:
    rec = await lookup(manager, task_id, user_id)
    if rec is None:
        return env.not_found_envelope(task_id)
    return env.record_envelope(rec, _time())


async def await_result(
    manager: TaskManager, task_id: str, timeout: float, user_id: str | None
) -> str:
    check_positive("timeout", timeout, allow_zero=True)
    if not _usable(task_id, user_id):
        return env.not_found_envelope(task_id)
    try:
        final = await manager.wait(task_id, timeout, user_id or None)
    except TaskNotFound:
        return env.not_found_envelope(task_id)
    except TaskTimeout:
        rec = await lookup(manager, task_id, user_id)
        if rec is None:
            return env.not_found_envelope(task_id)
        return env.record_envelope(rec, _time(), note=f"still running after waiting {timeout:g}s")
    return env.record_envelope(final, _time())


async def list_tasks(
    manager: TaskManager,
    user_id: str | None,
    item_id: str | None,
    status: TaskStatus | str | None,
) -> str:
    page = await manager.records(
        user_id=user_id or None, item_id=item_id or None, status=status or None
    )
    return env.list_envelope(page.records, _time(), cursor=page.cursor)


async def lookup(manager: TaskManager, task_id: object, user_id: str | None) -> TaskRecord | None:
    """The record a model asked for, or None; an empty `user_id` means no user."""
    if not _usable(task_id, user_id):
        return None
    assert isinstance(task_id, str)  # narrowed by check_id
    await manager._ensure_started()
    return await manager._lookup(task_id, user_id or None)


def _usable(task_id: object, user_id: str | None) -> bool:
    """Whether a model's task id can name a task: its garbage is simply not found.

    `user_id` (empty: no user) comes from the application and must be valid.
    """
    check_optional_id(user_id or None, "user_id")
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
    wait_for = manager.timeout if timeout is None else timeout
    try:
        check_positive("timeout", wait_for, allow_zero=True)
    except (TypeError, ValueError):
        close_if_coroutine(coro)
        raise
    if not background:
        if not is_coroutine(coro):
            raise TypeError(f"execute needs a coroutine, not {type(coro).__name__}")
        try:
            return env.result_text(await coro)
        except Exception as exc:  # noqa: BLE001 - the tool loop gets an envelope, never a raise
            return env.dumps(
                {
                    "status": _FAILED.value,
                    "tool": tool_name,
                    "error": TaskError.from_exception(exc).to_dict(),
                }
            )
    task_id = await manager.create_task(
        coro,
        user_id=user_id or None,
        name=tool_name,
        channel_id=channel_id,
        platform=platform,
    )
    if wait_for > 0 and manager._runs_here(task_id, None):
        await asyncio.wait((manager._add_waiter(task_id),), timeout=wait_for)
    # Local, or (when it finished and was written while create_task synced with
    # a shared store) from the store.
    rec = await manager._lookup(task_id, None)
    if rec is None:
        return env.not_found_envelope(task_id)
    if rec.status is _RUNNING:
        return env.background_envelope(rec, wait_for)
    if rec.status is _COMPLETED:
        return env.result_text(rec.result)
    return env.error_envelope(rec)
