"""Stopping tasks: here, on another instance, or every task of an item.

A stop writes a durable request, wakes the owner, and waits (up to the
manager's `stop_timeout`) for the owner's confirmation: its `finished` event,
with a slow re-read of the store in case the event is lost. A request that is
not confirmed in time stays, and is honoured by the owner's housekeeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ._live import ITEM_ID, STATUS, STOP_REQUESTED_AT, TASK_ID, USER_ID, V_RUNNING
from ._records import STATUS_BY_VALUE, StopOutcome, StopResult, TaskStatus
from ._sync import SYNC_TIMEOUT, unwait

if TYPE_CHECKING:
    from ._live import Live
    from ._records import TaskEvent, TaskRecord
    from .manager import TaskManager

__all__ = [
    "STOP_POLL",
    "STOP_REASON",
    "Fence",
    "fence_new_task",
    "stop_item_tasks",
    "stop_local",
    "stop_outcome",
    "stop_outcome_of",
    "stop_task",
]


_RUNNING = TaskStatus.RUNNING
_CANCELLED = TaskStatus.CANCELLED
_time = time.time

STOP_REASON = "stopped on request"
# How often a stop re-reads the record while it waits for the owner's event.
STOP_POLL = 0.5


class Fence:
    """What one `stop_item_tasks` call has stopped, for tasks created meanwhile."""

    __slots__ = ("results", "user_id")

    def __init__(self, user_id: str | None) -> None:
        self.user_id = user_id
        self.results: dict[str, StopResult] = {}


async def stop_task(manager: TaskManager, task_id: str, user_id: str | None) -> StopResult:
    """`TaskManager.stop_task` once its arguments are checked and the manager started."""
    rec = manager._local.get(task_id)
    if rec is not None:
        if user_id is not None and rec[USER_ID] != user_id:
            return StopResult(task_id, StopOutcome.NOT_FOUND)
        if rec[STATUS] != V_RUNNING:
            return StopResult(task_id, StopOutcome.ALREADY_FINISHED, STATUS_BY_VALUE[rec[STATUS]])
        requested_at = stop_local(manager, rec)
        if manager._get_now is None and manager._connected:
            # Leave the same durable trace as a stop from elsewhere, in the
            # background: a stop here must work while the store is away.
            manager._background(manager._store.request_stop(task_id, requested_at))
        if manager._runs_here(task_id, None):
            await asyncio.wait((manager._add_waiter(task_id),), timeout=manager.stop_timeout)
        outcome = stop_outcome(task_id, await manager._lookup(task_id, None))
        await manager._flusher.sync(SYNC_TIMEOUT)  # what we answer is what others read
        return outcome
    # Listen for the finish before asking, so the confirmation cannot slip by.
    fut: asyncio.Future[TaskEvent | None] = asyncio.get_running_loop().create_future()
    manager._remote_waiters.setdefault(task_id, []).append(fut)
    try:
        requested = await manager._store.request_stop(task_id, _time(), user_id)
        if requested is None:
            return StopResult(task_id, StopOutcome.NOT_FOUND)
        if requested.status is not _RUNNING:
            return StopResult(task_id, StopOutcome.ALREADY_FINISHED, requested.status)
        await manager._bus.send_command(requested.instance_id, {"op": "stop", "task_id": task_id})
        return await _confirm_remote_stop(manager, task_id, fut)
    finally:
        unwait(manager._remote_waiters, task_id, fut)


async def _confirm_remote_stop(
    manager: TaskManager, task_id: str, fut: asyncio.Future[TaskEvent | None]
) -> StopResult:
    """The owner's answer: its `finished` event, or the record if events are lost."""
    deadline = time.monotonic() + manager.stop_timeout
    while (remaining := deadline - time.monotonic()) > 0:
        await asyncio.wait((fut,), timeout=min(STOP_POLL, remaining))
        if fut.done() and (event := fut.result()) is not None:
            return stop_outcome_of(task_id, event.status)
        rec = await manager._store.get(task_id)  # a safety net for a lost event
        if rec is None or rec.status is not _RUNNING:
            return stop_outcome(task_id, rec)
    return stop_outcome(task_id, await manager._store.get(task_id))


def stop_local(manager: TaskManager, rec: Live) -> float:
    """Stop a task of this instance: note the request (once), then cancel it.

    Returns when the stop was first requested.
    """
    requested_at: float | None = rec[STOP_REQUESTED_AT]
    if requested_at is None:
        requested_at = _time()
        rec = manager._update(rec, {STOP_REQUESTED_AT: requested_at})
        if manager._streams or not manager._alone:
            manager._emit("stop_requested", rec, requested_at)
    manager._cancel(rec[TASK_ID], STOP_REASON)
    return requested_at


async def stop_item_tasks(
    manager: TaskManager, item_id: str, user_id: str | None
) -> list[StopResult]:
    """`TaskManager.stop_item_tasks` once its arguments are checked and the manager started."""
    fence = Fence(user_id)
    manager._fences.setdefault(item_id, []).append(fence)
    results = fence.results
    try:
        deadline = time.monotonic() + manager.stop_timeout * 2
        while True:  # rounds: other instances may add tasks while we stop these
            await manager._flusher.sync()
            page = await manager._store.query(
                item_id=item_id, user_id=user_id, status=_RUNNING, limit=10_000
            )
            ids = [rec.task_id for rec in page.records if rec.task_id not in results]
            if not ids or time.monotonic() > deadline:
                break
            for result in await asyncio.gather(*(manager.stop_task(i, user_id) for i in ids)):
                results[result.task_id] = result
    finally:
        fences = manager._fences[item_id]
        fences.remove(fence)
        if not fences:
            del manager._fences[item_id]
    return list(results.values())


def fence_new_task(manager: TaskManager, rec: Live) -> None:
    """A task created here on an item that is being stopped is stopped at once."""
    for fence in manager._fences[rec[ITEM_ID] or ""]:
        if fence.user_id is None or fence.user_id == rec[USER_ID]:
            task_id = rec[TASK_ID]
            manager._update(rec, {STOP_REQUESTED_AT: _time()})
            manager._cancel(task_id, STOP_REASON)  # not started yet: recorded cancelled right here
            now = manager._peek(task_id, None)  # its final record, local or already written
            status = _CANCELLED if now is None else now.status
            fence.results[task_id] = StopResult(task_id, StopOutcome.CANCELLED, status)
            return


def stop_outcome(task_id: str, rec: TaskRecord | None) -> StopResult:
    if rec is None:
        return StopResult(task_id, StopOutcome.NOT_FOUND)
    return stop_outcome_of(task_id, rec.status)


def stop_outcome_of(task_id: str, status: TaskStatus) -> StopResult:
    if status is _CANCELLED:
        return StopResult(task_id, StopOutcome.CANCELLED, status)
    if status is _RUNNING:
        return StopResult(
            task_id, StopOutcome.PENDING, status, "not confirmed in time; the request stays"
        )
    return StopResult(
        task_id,
        StopOutcome.ALREADY_FINISHED,
        status,
        f"the task finished as {status.value} instead of being cancelled",
    )
