"""Housekeeping: liveness, reaping the tasks of dead instances, stops, reconnects.

One background loop per manager (`Housekeeper.run`) runs a `tick`
every `heartbeat_interval`: it renews this instance's liveness, re-asserts its
tasks after an outage or a stall, honours stop requests the bus did not deliver,
and marks `lost` the tasks of instances whose liveness expired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ._live import STATUS, STOP_REQUESTED_AT, TASK_ID, V_RUNNING
from ._records import TaskEvent, TaskStatus
from ._table import STOP_REASON
from .errors import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._hub import EventHub
    from ._live import Live
    from ._sync import Flusher
    from ._table import LocalTable
    from .bus.base import Bus
    from .stores.base import Store

__all__ = ["RECONNECT_INTERVAL", "Housekeeper"]

logger = logging.getLogger(__name__)

# How often a disconnected instance tries the store again.
RECONNECT_INTERVAL = 0.25


class Housekeeper:
    """The liveness and reconciliation rules of one instance, run by its housekeeping loop.

    It owns whether the store is reachable (`connected`), which creating a task
    reads: while it is not, writes wait in the flusher and creations do not wait
    for them.
    """

    def __init__(
        self,
        *,
        instance_id: str,
        table: LocalTable,
        store: Store,
        bus: Bus,
        flusher: Flusher,
        hub: EventHub,
        has_peers: Callable[[], bool],
        heartbeat_interval: float,
        liveness_ttl: float,
    ) -> None:
        self.connected = True
        self._instance_id = instance_id
        self._table = table
        self._store = store
        self._bus = bus
        self._flusher = flusher
        self._hub = hub
        self._has_peers = has_peers
        self._interval = heartbeat_interval
        self._ttl = liveness_ttl
        self._connected_since = 0.0
        self._last_beat = 0.0
        # A heartbeat slower than this, or a longer gap between two, is a hiccup (see tick).
        self._beat_slow = max(heartbeat_interval, liveness_ttl / 2)
        self._beat_gap = heartbeat_interval + (liveness_ttl - heartbeat_interval) / 2
        # Stops asked while the store did not answer, as (task or item id, when, user).
        self._stops: list[tuple[str, float, str | None]] = []
        self._item_stops: list[tuple[str, float, str | None]] = []

    def queue_stop(self, task_id: str, at: float, user_id: str | None) -> None:
        """A stop the store could not take: written at the next tick that reaches it."""
        self._stops.append((task_id, at, user_id))

    def queue_item_stop(self, item_id: str, at: float, user_id: str | None) -> None:
        """An item stop the store could not take: its tasks created by `at` are stopped later."""
        self._item_stops.append((item_id, at, user_id))

    def started(self) -> None:
        """The instance has just connected and sent its first heartbeat."""
        self._connected_since = self._last_beat = time.monotonic()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval if self.connected else RECONNECT_INTERVAL)
            try:
                await self.tick()
            except StoreUnavailable as exc:
                self.set_disconnected(exc)
            except Exception:
                logger.exception("housekeeping failed; will retry")

    async def tick(self) -> None:
        store = self._store
        started = time.monotonic()
        if not self.connected:
            tasks = self._table.started_rows()
            running = [row for row in tasks if row[STATUS] == V_RUNNING]
            was_alive = await store.heartbeat(self._instance_id, self._ttl, running)
            logger.warning("store reachable again: re-asserted %d running tasks", len(running))
            if not was_alive and self._has_peers():
                await self._settle_reaped(running)
            self.connected = True
            self._connected_since = time.monotonic()
            self._flusher.resume()
        elif (
            not await store.heartbeat(self._instance_id, self._ttl)
            and self._has_peers()  # alone, nobody can have reaped our tasks
        ):
            await self._presumed_dead()
        beat = time.monotonic()
        if beat - started > self._beat_slow or beat - self._last_beat > self._beat_gap:
            # A hiccup (failover, slow server, blocked loop): others may have missed
            # their heartbeats too, so give them a full TTL before reaping anyone.
            self._connected_since = beat
        self._last_beat = beat
        if self._stops or self._item_stops:
            await self._replay_stops()
        await self.reconcile_stops()
        if beat - self._connected_since > self._ttl:
            await self._reap()

    async def _replay_stops(self) -> None:
        """Write the stops queued while the store did not answer (in memory only)."""
        store = self._store
        while self._item_stops:
            item_id, at, user_id = self._item_stops[0]
            page = await store.query(
                item_id=item_id, user_id=user_id, status=TaskStatus.RUNNING, limit=10_000
            )
            self._stops += [
                (rec.task_id, at, user_id) for rec in page.records if rec.created_at <= at
            ]
            self._item_stops.pop(0)
        while self._stops:
            task_id, at, user_id = self._stops[0]
            rec = await store.request_stop(task_id, at, user_id)
            if rec is not None and rec.status is TaskStatus.RUNNING:
                await self._bus.send_command(rec.instance_id, {"op": "stop", "task_id": task_id})
            self._stops.pop(0)

    async def _presumed_dead(self) -> None:
        """Our liveness had expired (a stall longer than `liveness_ttl`).

        Tasks another instance has meanwhile marked `lost` stay lost (terminal
        states never change): they are cancelled here, since nobody could read
        their results or stop them any more. The others are re-asserted.
        """
        started = self._table.started_rows()
        running = [row for row in started if row[STATUS] == V_RUNNING]
        logger.warning("this instance's liveness had expired; checking %d tasks", len(started))
        await self._store.heartbeat(self._instance_id, self._ttl, running)
        await self._settle_reaped(running)

    async def _settle_reaped(self, running: list[Live]) -> None:
        """Cancel the tasks that another instance marked terminal (lost) meanwhile.

        Only those: a task that ended here normally while we asked is left alone
        (and not logged about).
        """
        stored = await self._store.get_many([row[TASK_ID] for row in running])
        for row, now in zip(running, stored, strict=True):
            if (
                now is not None
                and now.status is not TaskStatus.RUNNING
                and self._table.settle(row, now)
            ):
                logger.warning(
                    "task %s was marked %s elsewhere: cancelled it", row[TASK_ID], now.status
                )

    async def _reap(self) -> None:
        lost = await self._store.reap(time.time())
        if lost:
            self._hub.publish(
                [TaskEvent.of("finished", rec, rec.finished_at or time.time()) for rec in lost]
            )

    def set_disconnected(self, exc: BaseException) -> None:
        if self.connected:
            logger.error("store unreachable (%s); outcomes are queued locally", exc)
        self.connected = False
        self._flusher.pause()

    async def reconcile_stops(self) -> None:
        """Honour stop requests the bus did not deliver, or that a task swallowed."""
        table = self._table
        for row in table.running_rows():
            if row[STOP_REQUESTED_AT] is not None:
                table.cancel(row[TASK_ID], STOP_REASON)  # asked before, still running: again
        for task_id in await self._store.pending_stops(self._instance_id):
            pending = table.rows.get(task_id)
            # One cancellation per tick: those known already were asked again above.
            if (
                pending is not None
                and pending[STATUS] == V_RUNNING
                and pending[STOP_REQUESTED_AT] is None
            ):
                table.request_stop(pending)
