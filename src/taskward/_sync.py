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
from typing import TYPE_CHECKING

from ._live import TASK_ID
from .errors import StoreUnavailable
from .stores.base import WriteBatch

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._live import Live
    from ._records import OutputChunk, TaskEvent
    from .bus.base import Bus
    from .stores.base import Store

__all__ = ["SYNC_TIMEOUT", "Flusher", "cancel_and_wait", "wake_all"]

logger = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 10_000
# Longest a creation or a stop waits for its write to reach a shared store.
SYNC_TIMEOUT = 1.0
_MAX_LOGGED_IDS = 20


def _ids(records: Sequence[Live]) -> str:
    shown = ", ".join(rec[TASK_ID] for rec in records[:_MAX_LOGGED_IDS])
    more = len(records) - _MAX_LOGGED_IDS
    return shown + (f" and {more} more" if more > 0 else "")


def _nothing(*_: object) -> None:
    return None


class Flusher:
    """Collects an instance's writes and flushes them in batches.

    `bind` tells it whom to tell: `written(rows)` after a write (the local table
    forgets final rows), `unavailable(exc)` when the store went away (the
    housekeeper pauses writes until it is back), `unwritable(row, reason)` for a
    row the store refused (the table records that task as failed and returns
    the row to write instead, or None).

    It never dies: a write that fails for one row is retried row by row, so one
    bad row fails its own task and every other row is written; anything
    unexpected is logged with the ids of the rows concerned, and the next flush
    goes on.
    """

    def __init__(
        self,
        store: Store,
        bus: Bus,
        *,
        encode_events: Callable[[Sequence[TaskEvent]], str | None] | None,
        in_process: bool,
    ) -> None:
        self._store = store
        self._bus = bus
        self._encode_events = encode_events
        self._in_process = in_process
        self._written: Callable[[list[Live]], None] = _nothing
        self._unavailable: Callable[[BaseException], None] = _nothing
        self._unwritable: Callable[[Live, str], Live | None] = _nothing
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
        self._stalled = False  # a sync gave up on the flush in flight
        self._task: asyncio.Task[None] | None = None

    def bind(
        self,
        *,
        written: Callable[[list[Live]], None],
        unavailable: Callable[[BaseException], None],
        unwritable: Callable[[Live, str], Live | None],
    ) -> None:
        self._written = written
        self._unavailable = unavailable
        self._unwritable = unwritable

    @property
    def backlog(self) -> int:
        """Records waiting to be written."""
        return len(self._dirty)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="taskward-flusher")

    def mark(self, row: Live) -> None:
        self._dirty[row[TASK_ID]] = row
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
        if self._stalled or self._task is None or self._task.done():
            return  # a write already too slow (a frozen server) is not waited for again
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._sync_waiters.append(fut)
        self._kick()
        if timeout is None:
            await fut
            return
        # Lighter than `asyncio.wait`, and this runs for every creation on a shared store.
        timer = loop.call_later(timeout, self._give_up, fut)
        try:
            await fut
        finally:
            timer.cancel()

    def _give_up(self, fut: asyncio.Future[None]) -> None:
        if self._flushing:
            self._stalled = True
        wake_all([fut])

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
        records = list(self._dirty.values())
        outputs, self._outputs = self._outputs, {}
        events, self._events = self._events, []
        waiters = self._take_waiters()
        self._dirty = {}
        self._flushing = True
        try:
            if await self._write(records, outputs, events):
                await self._publish(events)
        except Exception:
            logger.exception("a flush failed unexpectedly (tasks %s); going on", _ids(records))
        finally:
            self._flushing = self._stalled = False
            wake_all(waiters)

    async def _write(
        self,
        records: list[Live],
        outputs: dict[str, list[OutputChunk]],
        events: list[TaskEvent],
    ) -> bool:
        """Write one flush; True if it has events still to be published.

        The events ride on the write when the store shares its server with the
        bus (`encode_events`), in the same round trip.
        """
        if not (records or outputs):
            return bool(events)
        notice = None
        try:
            if events and self._encode_events is not None:
                events[:] = coalesce(events)
                notice = self._encode_events(events)
            await self._store.save(WriteBatch(records, outputs, time.time(), notice))
        except StoreUnavailable as exc:
            self._requeue(records, outputs, events)
            self._unavailable(exc)  # pauses this flusher too
            return False
        except Exception as exc:  # noqa: BLE001 - one bad row must not cost the others
            logger.warning(
                "a write of %d task records failed (%r); writing them one by one", len(records), exc
            )
            return await self._write_one_by_one(records, outputs, events) and bool(events)
        self._written(records)
        return bool(events) and notice is None

    async def _write_one_by_one(
        self,
        records: list[Live],
        outputs: dict[str, list[OutputChunk]],
        events: list[TaskEvent],
    ) -> bool:
        """Write each row alone; a row the store refuses fails its task, with the reason."""
        pending = [(row, False) for row in records]  # (row, a failure written instead)
        refused: set[str] = set()
        while pending:
            row, instead = pending.pop(0)
            chunks = outputs.pop(row[TASK_ID], None)
            try:
                await self._save_alone(row, chunks)
            except StoreUnavailable as exc:
                rest = [row, *(r for r, _ in pending)]
                self._requeue(rest, {row[TASK_ID]: chunks or [], **outputs}, events)
                self._unavailable(exc)
                return False
            except Exception as exc:
                if instead:
                    logger.exception(
                        "task %s: not even its failure could be written; it stays local only",
                        row[TASK_ID],
                    )
                    continue
                reason = f"the store refused its record: {type(exc).__name__}: {exc}"
                logger.error("task %s: %s; recording it as failed", row[TASK_ID], reason)
                refused.add(row[TASK_ID])
                failed = self._unwritable(row, reason)
                if failed is not None:
                    pending.insert(0, (failed, True))
        # The events of refused rows told of a state nobody can read: the table has
        # sent `finished` events of their failures instead.
        events[:] = [event for event in events if event.task_id not in refused]
        if outputs:  # chunks of tasks whose record did not change in this flush
            try:
                await self._store.save(WriteBatch([], outputs, time.time()))
            except StoreUnavailable as exc:
                self._requeue([], outputs, events)
                self._unavailable(exc)
                return False
            except Exception:
                logger.exception("output chunks of tasks %s could not be written", list(outputs))
        return True

    async def _save_alone(self, row: Live, chunks: list[OutputChunk] | None) -> None:
        outputs = {row[TASK_ID]: chunks} if chunks else {}
        await self._store.save(WriteBatch([row], outputs, time.time()))
        self._written([row])

    async def _publish(self, events: list[TaskEvent]) -> None:
        if not events:
            return
        try:
            await self._bus.publish(coalesce(events))
        except Exception as exc:  # noqa: BLE001 - events are wake-ups; the store has the truth
            logger.warning("could not publish %d events: %s", len(events), exc)

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
        self._outputs = {task_id: chunks for task_id, chunks in outputs.items() if chunks}
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
        if (self._dirty or self._outputs) and self._online.is_set() and self._in_process:
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
