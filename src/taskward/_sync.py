"""The write-behind flusher: every state change of a loop turn in one store write.

Records, output chunks and events are collected as they happen (a dict insert,
nothing more) and written by one background task, once per loop turn: a burst
of a thousand tasks finishing together costs one `Store.save` (one Redis
pipeline) and one `Bus.publish`. While the store is unreachable, everything
waits here (records are kept once each, at their latest state) and is written
when the manager reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ._live import TASK_ID
from .errors import StoreUnavailable
from .stores.base import WriteBatch

if TYPE_CHECKING:
    from ._live import Live
    from ._records import OutputChunk, TaskEvent
    from .manager import TaskManager

__all__ = ["SYNC_TIMEOUT", "Flusher", "cancel_and_wait", "unwait", "wake_all"]

logger = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 10_000
# Longest a creation or a stop waits for its write to reach a shared store.
SYNC_TIMEOUT = 1.0


class Flusher:
    """Collects a manager's writes and flushes them in batches."""

    def __init__(self, manager: TaskManager) -> None:
        self._manager = manager
        self._dirty: dict[str, Live] = {}
        self._outputs: dict[str, list[OutputChunk]] = {}
        self._events: list[TaskEvent] = []
        self._sync_waiters: list[asyncio.Future[None]] = []
        self._online = asyncio.Event()
        self._online.set()
        # Set when there is something to write, until the flush that takes it;
        # `_waiter` is the flusher's own future while it waits for that.
        self._kicked = False
        self._waiter: asyncio.Future[None] | None = None
        self._flushing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Records waiting to be written."""
        return len(self._dirty)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="taskward-flusher")

    def mark(self, rec: Live) -> None:
        self._dirty[rec[TASK_ID]] = rec
        if not self._kicked:
            self._kick()

    def add_output(self, task_id: str, chunk: OutputChunk) -> None:
        chunks = self._outputs.get(task_id)
        if chunks is None:
            self._outputs[task_id] = [chunk]
        else:
            chunks.append(chunk)
        if not self._kicked:
            self._kick()

    def add_event(self, event: TaskEvent) -> None:
        self._events.append(event)
        if not self._kicked:
            self._kick()

    def _kick(self) -> None:
        """Have the flusher write soon (it lets the current loop turn finish first)."""
        self._kicked = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause(self) -> None:
        """The store went away: hold writes until `resume()`."""
        self._online.clear()

    def resume(self) -> None:
        self._online.set()
        self._kick()

    async def sync(self, timeout: float | None = None) -> None:
        """Return once everything marked so far has been written (or the store is away).

        With `timeout`, return after that many seconds at the latest; the write
        goes on regardless.
        """
        if not (self._dirty or self._outputs or self._flushing) or not self._online.is_set():
            return
        if self._task is None or self._task.done():
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._sync_waiters.append(fut)
        self._kick()
        if timeout is None:
            await fut
            return
        # Lighter than `asyncio.wait`, and this runs for every creation on a shared store.
        timer = loop.call_later(timeout, wake_all, [fut])
        try:
            await fut
        finally:
            timer.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._kicked:
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            await asyncio.sleep(0)  # let the tasks scheduled in this turn finish first
            self._kicked = False
            if not self._online.is_set():
                wake_all(self._take_waiters())
                await self._online.wait()
                continue
            await self._flush_once()

    def _take_waiters(self) -> list[asyncio.Future[None]]:
        waiters, self._sync_waiters = self._sync_waiters, []
        return waiters

    async def _flush_once(self) -> None:
        manager = self._manager
        records = list(self._dirty.values())
        outputs, self._outputs = self._outputs, {}
        events, self._events = self._events, []
        waiters = self._take_waiters()
        self._dirty = {}
        self._flushing = True
        notice = None
        if events and (records or outputs) and manager._encode_events is not None:
            events = coalesce(events)
            notice = manager._encode_events(events)
        try:
            if records or outputs:
                await manager._store.save(WriteBatch(records, outputs, time.time(), notice))
        except StoreUnavailable as exc:
            self._requeue(records, outputs, events)
            manager._set_disconnected(exc)  # pauses this flusher too
            wake_all(waiters)
            return
        except Exception:
            # A bug, not an outage: retrying would fail forever. The records stay
            # readable here (their records are kept); say loudly what was not written.
            logger.exception("could not write %d task records; they stay local only", len(records))
            notice = None  # the events did not ride on the write: publish them below
        else:
            manager._forget(records)
        finally:
            self._flushing = False
        if events and notice is None:
            try:
                await manager._bus.publish(coalesce(events))
            except Exception as exc:  # noqa: BLE001 - events are wake-ups; the store has the truth
                logger.warning("could not publish %d events: %s", len(events), exc)
        if waiters:
            wake_all(waiters)

    def _requeue(
        self,
        records: list[Live],
        outputs: dict[str, list[OutputChunk]],
        events: list[TaskEvent],
    ) -> None:
        newer = self._dirty
        self._dirty = {rec[TASK_ID]: rec for rec in records}
        self._dirty.update(newer)
        for task_id, chunks in self._outputs.items():
            outputs.setdefault(task_id, []).extend(chunks)
        self._outputs = outputs
        self._events = (events + self._events)[-MAX_QUEUED_EVENTS:]

    async def aclose(self, timeout: float = 5.0) -> None:
        """Write what is pending (within `timeout` seconds), then stop."""
        deadline = time.monotonic() + timeout
        while (self._dirty or self._outputs or self._flushing) and self._online.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self.sync()
            except TimeoutError:
                break
        if (
            (self._dirty or self._outputs)
            and self._online.is_set()
            and self._manager._get_now is not None
        ):
            # A store in this process answers without waiting: no deadline is too short.
            await self._flush_once()
        if self._dirty or self._outputs:
            logger.error(
                "closing with %d task records and %d output streams not written",
                len(self._dirty),
                len(self._outputs),
            )
        if self._task is not None:
            await cancel_and_wait(self._task)
        wake_all(self._take_waiters())


def coalesce(events: list[TaskEvent]) -> list[TaskEvent]:
    """Drop `created` and `progress` events a later event of the same batch supersedes.

    A task that finished in this batch is fully described by its `finished`
    event's record, and of several progress events only the last says anything
    new. Output events all stay.
    """
    last: dict[str, int] = {}
    finished: set[str] = set()
    for i, event in enumerate(events):
        if event.kind == "finished":
            finished.add(event.task_id)
        elif event.kind in ("created", "progress"):
            last[event.task_id] = i
    if not last:
        return events
    return [
        e
        for i, e in enumerate(events)
        if e.kind not in ("created", "progress")
        or (e.task_id not in finished and (e.kind == "created" or last[e.task_id] == i))
    ]


async def cancel_and_wait(task: asyncio.Task[None], patience: float = 1.0) -> None:
    """Cancel a background task and wait for it, cancelling again if it shrugs it off.

    redis-py on Python 3.11 can lose a cancellation that lands mid-command (its
    reads go through `asyncio.wait_for`, CPython gh-86296), so one `cancel()` is
    not always enough; after `patience` seconds of trying, give up with a warning.
    """
    deadline = time.monotonic() + patience
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=0.05)
        if time.monotonic() > deadline:
            logger.warning("background task %s did not stop when cancelled", task.get_name())
            return
    if not task.cancelled() and task.exception() is not None:
        logger.warning("background task %s failed: %r", task.get_name(), task.exception())


def wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)


def unwait(
    waiters: dict[str, list[asyncio.Future[Any]]], task_id: str, fut: asyncio.Future[Any]
) -> None:
    """Take `fut` off the futures waiting for `task_id`, and the entry when it is empty."""
    futs = waiters.get(task_id)
    if futs is not None:
        if fut in futs:
            futs.remove(fut)
        if not futs:
            del waiters[task_id]
