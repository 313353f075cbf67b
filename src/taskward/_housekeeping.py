"""Housekeeping: liveness, reaping the tasks of dead instances, stops, reconnects.

One background loop per manager (`TaskManager._housekeeping`) runs a `tick`
every `heartbeat_interval`: it renews this instance's liveness, re-asserts its
tasks after an outage or a stall, honours stop requests the bus did not deliver,
and marks `lost` the tasks of instances whose liveness expired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ._live import STATUS, STOP_REQUESTED_AT, TASK_ID, V_RUNNING, finished
from ._records import TaskEvent, TaskStatus
from ._stopping import STOP_REASON, stop_local
from .errors import StoreUnavailable

if TYPE_CHECKING:
    from ._live import Live
    from .manager import TaskManager

__all__ = ["Housekeeper"]

logger = logging.getLogger(__name__)

_RUNNING = TaskStatus.RUNNING
# How often a disconnected instance tries the store again.
RECONNECT_INTERVAL = 0.25


class Housekeeper:
    """The liveness and reconciliation rules of one manager, run by its housekeeping loop.

    Whether the store is reachable stays on the manager (`_connected`), since
    creating a task reads it.
    """

    def __init__(self, manager: TaskManager) -> None:
        self._manager = manager
        self._connected_since = 0.0
        self._last_beat = 0.0
        # A heartbeat slower than this, or a longer gap between two, is a hiccup (see tick).
        interval, ttl = manager.heartbeat_interval, manager.liveness_ttl
        self._beat_slow = max(interval, ttl / 2)
        self._beat_gap = interval + (ttl - interval) / 2

    def started(self) -> None:
        """The manager has just connected and sent its first heartbeat."""
        self._connected_since = self._last_beat = time.monotonic()

    async def run(self) -> None:
        manager = self._manager
        while True:
            await asyncio.sleep(
                manager.heartbeat_interval if manager._connected else RECONNECT_INTERVAL
            )
            try:
                await self.tick()
            except StoreUnavailable as exc:
                self.set_disconnected(exc)
            except Exception:
                logger.exception("housekeeping failed; will retry")

    async def tick(self) -> None:
        manager = self._manager
        store = manager._store
        started = time.monotonic()
        if not manager._connected:
            tasks = self._started_tasks()
            running = [rec for rec in tasks if rec[STATUS] == V_RUNNING]
            was_alive = await store.heartbeat(manager.instance_id, manager.liveness_ttl, running)
            logger.warning("store reachable again: re-asserted %d running tasks", len(running))
            if not was_alive and manager._has_peers():
                await self._settle_reaped(tasks, running)
            manager._connected = True
            self._connected_since = time.monotonic()
            manager._flusher.resume()
        elif (
            not await store.heartbeat(manager.instance_id, manager.liveness_ttl)
            and manager._has_peers()  # alone, nobody can have reaped our tasks
        ):
            await self._presumed_dead()
        beat = time.monotonic()
        if beat - started > self._beat_slow or beat - self._last_beat > self._beat_gap:
            # A hiccup (failover, slow server, blocked loop): others may have missed
            # their heartbeats too, so give them a full TTL before reaping anyone.
            self._connected_since = beat
        self._last_beat = beat
        await self.reconcile_stops()
        if beat - self._connected_since > manager.liveness_ttl:
            await self._reap()

    async def _presumed_dead(self) -> None:
        """Our liveness had expired (a stall longer than `liveness_ttl`).

        Tasks another instance has meanwhile marked `lost` stay lost (terminal
        states never change): they are cancelled here, since nobody could read
        their results or stop them any more. The others are re-asserted.
        """
        manager = self._manager
        started = self._started_tasks()
        running = [rec for rec in started if rec[STATUS] == V_RUNNING]
        logger.warning("this instance's liveness had expired; checking %d tasks", len(started))
        await manager._store.heartbeat(manager.instance_id, manager.liveness_ttl, running)
        await self._settle_reaped(started, running)

    def _started_tasks(self) -> list[Live]:
        """Records of this instance's tasks whose asyncio task has not ended."""
        local = self._manager._local
        return [
            local[task_id]
            for task_id, task in self._manager._tasks.items()
            if not task.done() and task_id in local
        ]

    async def _settle_reaped(self, started: list[Live], running: list[Live]) -> None:
        """Cancel the tasks that another instance marked terminal (lost) meanwhile."""
        manager = self._manager
        local = manager._local
        stored = await manager._store.get_many([rec[TASK_ID] for rec in running])
        for rec, now in zip(running, stored, strict=True):
            task_id = rec[TASK_ID]
            if now is not None and now.status is not _RUNNING and local.get(task_id) is rec:
                ended_at = now.finished_at if now.finished_at is not None else now.updated_at
                local[task_id] = finished(rec, now.status.value, None, now.error, ended_at)
        for rec in started:
            task_id = rec[TASK_ID]
            current = local.get(task_id)  # None: finished and written meanwhile
            if current is None:
                continue
            status = current[STATUS]
            if status != V_RUNNING:
                logger.warning("task %s was marked %s elsewhere: cancelling it", task_id, status)
                manager._cancel(task_id, f"marked {status} while this instance was presumed dead")
                manager._mark(current)  # so it leaves the local table once written
                manager._wake(task_id)

    async def _reap(self) -> None:
        manager = self._manager
        lost = await manager._store.reap(time.time())
        if not lost:
            return
        events = [TaskEvent.of("finished", rec, rec.finished_at or time.time()) for rec in lost]
        manager.on_events(events)
        if manager._has_peers():
            for event in events:
                manager._flusher.add_event(event)

    def set_disconnected(self, exc: BaseException) -> None:
        manager = self._manager
        if manager._connected:
            logger.error("store unreachable (%s); outcomes are queued locally", exc)
        manager._connected = False
        manager._flusher.pause()

    async def reconcile_stops(self) -> None:
        """Honour stop requests the bus did not deliver, or that a task swallowed."""
        manager = self._manager
        for rec in list(manager._local.values()):
            if rec[STATUS] == V_RUNNING and rec[STOP_REQUESTED_AT] is not None:
                manager._cancel(rec[TASK_ID], STOP_REASON)  # asked before, still running: again
        for task_id in await manager._store.pending_stops(manager.instance_id):
            live = manager._local.get(task_id)
            # One cancellation per tick: those known already were asked again above.
            if live is not None and live[STATUS] == V_RUNNING and live[STOP_REQUESTED_AT] is None:
                stop_local(manager, live)
