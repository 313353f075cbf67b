"""Stopping tasks: here, on another instance, or every task of an item.

A stop writes a durable request, wakes the owner, and waits (up to
`stop_timeout`) for the owner's confirmation. The answer is always the record
as the store holds it: the owner's `finished` event only says when to read it
(a forged or early event costs a read, never a wrong answer), and a slow re-read
covers a lost event. A request that is not confirmed in time stays, and is
honoured by the owner's housekeeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ._live import STATUS, USER_ID, V_RUNNING
from ._records import STATUS_BY_VALUE, StopOutcome, StopResult, TaskStatus
from ._sync import SYNC_TIMEOUT
from ._table import Fence
from .errors import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ._housekeeping import Housekeeper
    from ._hub import EventHub
    from ._reads import Reader
    from ._records import TaskRecord
    from ._sync import Flusher
    from ._table import LocalTable
    from .bus.base import Bus
    from .stores.base import Store

__all__ = ["STOP_POLL", "Stopper", "stop_outcome"]

logger = logging.getLogger(__name__)


# How often a stop re-reads the record while it waits for the owner's event.
STOP_POLL = 0.5


class Stopper:
    """The stops of one manager.

    A stop the store cannot take now (it does not answer within `stop_timeout`)
    answers `pending` and is queued on the housekeeper, which writes it once the
    store answers again: the request stays, as promised.
    """

    def __init__(
        self,
        *,
        table: LocalTable,
        reader: Reader,
        store: Store,
        bus: Bus,
        hub: EventHub,
        flusher: Flusher,
        keeper: Housekeeper,
        stop_timeout: float,
        remote_store: bool,
    ) -> None:
        self._table = table
        self._reader = reader
        self._store = store
        self._bus = bus
        self._hub = hub
        self._flusher = flusher
        self._stop_timeout = stop_timeout
        self._remote_store = remote_store
        self._keeper = keeper
        self._chores: set[asyncio.Task[Any]] = set()  # best-effort store calls in flight

    async def stop_task(self, task_id: str, user_id: str | None) -> StopResult:
        row = self._table.rows.get(task_id)
        if row is not None:
            if user_id is not None and row[USER_ID] != user_id:
                return StopResult(task_id, StopOutcome.NOT_FOUND)
            if row[STATUS] != V_RUNNING:
                status = STATUS_BY_VALUE[row[STATUS]]
                return StopResult(task_id, StopOutcome.ALREADY_FINISHED, status)
            return await self._stop_here(task_id, row)
        # Listen for the finish before asking, so the wake-up cannot slip by.
        fut = self._hub.wait_remote(task_id)
        try:
            at = time.time()
            try:
                async with asyncio.timeout(self._stop_timeout):
                    requested = await self._store.request_stop(task_id, at, user_id)
            except (StoreUnavailable, TimeoutError) as exc:
                self._keeper.set_disconnected(exc)
                self._keeper.queue_stop(task_id, at, user_id)
                return _pending(task_id, "the store does not answer; the request stays")
            if requested is None:
                return StopResult(task_id, StopOutcome.NOT_FOUND)
            if requested.status is not TaskStatus.RUNNING:
                return StopResult(task_id, StopOutcome.ALREADY_FINISHED, requested.status)
            await self._bus.send_command(requested.instance_id, {"op": "stop", "task_id": task_id})
            return await self._confirm_remote(task_id, fut)
        finally:
            self._hub.unwait(task_id, fut)

    async def _stop_here(self, task_id: str, row: tuple[Any, ...]) -> StopResult:
        table = self._table
        requested_at = table.request_stop(row)
        if self._remote_store and self._keeper.connected:
            # Leave the same durable trace as a stop from elsewhere, in the
            # background: a stop here must work while the store is away.
            self._background(self._store.request_stop(task_id, requested_at))
        if table.runs_here(task_id, None):
            await asyncio.wait((table.add_waiter(task_id),), timeout=self._stop_timeout)
        try:
            result = stop_outcome(task_id, await self._reader.lookup(task_id, None))
        except StoreUnavailable:
            return _pending(task_id, "the store does not answer; the request stays")
        await self._flusher.sync(SYNC_TIMEOUT)  # what we answer is what others read
        return result

    async def _confirm_remote(self, task_id: str, fut: asyncio.Future[None]) -> StopResult:
        """The owner's answer, as the store has it: read when its event wakes us, or on a timer."""
        deadline = time.monotonic() + self._stop_timeout
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                await asyncio.wait((fut,), timeout=min(STOP_POLL, remaining))
                try:
                    rec = await self._store.get(task_id)
                except StoreUnavailable:
                    continue  # a freeze: read again, until the deadline
                if rec is None or rec.status is not TaskStatus.RUNNING:
                    return stop_outcome(task_id, rec)
                if fut.done():  # woken, yet the task runs: an early or forged event
                    self._hub.unwait(task_id, fut)
                    fut = self._hub.wait_remote(task_id)
            return stop_outcome(task_id, await self._store.get(task_id))
        except StoreUnavailable:
            return _pending(task_id, "the store does not answer; the request stays")
        finally:
            self._hub.unwait(task_id, fut)

    async def stop_item_tasks(self, item_id: str, user_id: str | None) -> list[StopResult]:
        """Stop every running task of an item, including tasks added while stopping."""
        fence = Fence(user_id)
        fences = self._table.fences
        fences.setdefault(item_id, []).append(fence)
        results = fence.results
        try:
            deadline = time.monotonic() + self._stop_timeout * 2
            at = time.time()
            while True:  # rounds: other instances may add tasks while we stop these
                await self._flusher.sync(SYNC_TIMEOUT)
                try:
                    page = await self._store.query(
                        item_id=item_id, user_id=user_id, status=TaskStatus.RUNNING, limit=10_000
                    )
                except StoreUnavailable as exc:
                    # Stop what runs here now; the rest once the store answers again.
                    self._keeper.set_disconnected(exc)
                    self._keeper.queue_item_stop(item_id, at, user_id)
                    ids = [i for i in self._table.running_ids(item_id, user_id) if i not in results]
                    await self._stop_each(ids, user_id, results)
                    break
                ids = [rec.task_id for rec in page.records if rec.task_id not in results]
                if not ids or time.monotonic() > deadline:
                    break
                await self._stop_each(ids, user_id, results)
        finally:
            fences[item_id].remove(fence)
            if not fences[item_id]:
                del fences[item_id]
        return list(results.values())

    async def _stop_each(
        self, ids: list[str], user_id: str | None, results: dict[str, StopResult]
    ) -> None:
        for result in await asyncio.gather(*(self.stop_task(i, user_id) for i in ids)):
            results[result.task_id] = result

    def on_command(self, command: dict[str, Any]) -> None:
        """A command from the bus (a wake-up: the stop request is in the store already)."""
        if command.get("op") != "stop":
            logger.warning("ignoring unknown command %r", command.get("op"))
            return
        row = self._table.rows.get(str(command.get("task_id")))
        if row is not None and row[STATUS] == V_RUNNING:
            self._table.request_stop(row)

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run best-effort store work without waiting for it; failures are logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chore_done)

    def _chore_done(self, task: asyncio.Task[Any]) -> None:
        self._chores.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("background store call failed: %s", exc)

    async def aclose(self, timeout: float) -> None:
        """Let the background store calls finish (within `timeout`), then cancel them."""
        if self._chores:
            await asyncio.wait(self._chores, timeout=max(timeout, 0.1))
            for chore in list(self._chores):
                chore.cancel()


def _pending(task_id: str, detail: str) -> StopResult:
    return StopResult(task_id, StopOutcome.PENDING, TaskStatus.RUNNING, detail)


def stop_outcome(task_id: str, rec: TaskRecord | None) -> StopResult:
    """What a stop achieved, from the task's record as it now stands."""
    if rec is None:
        return StopResult(task_id, StopOutcome.NOT_FOUND)
    status = rec.status
    if status is TaskStatus.CANCELLED:
        return StopResult(task_id, StopOutcome.CANCELLED, status)
    if status is TaskStatus.RUNNING:
        return _pending(task_id, "not confirmed in time; the request stays")
    return StopResult(
        task_id,
        StopOutcome.ALREADY_FINISHED,
        status,
        f"the task finished as {status.value} instead of being cancelled",
    )
