"""TaskManager: the one place the lifecycle rules live.

It runs each task as an `asyncio.Task` on this instance, records its outcome
from inside the task's own wrapper (never a fire-and-forget callback), writes
through a `Store` in coalesced batches (one flush per loop turn, whatever the
number of tasks), and talks to other instances through a `Bus`. See
`DESIGN.md` in the repository for the rules and why.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Coroutine
from types import CoroutineType, TracebackType
from typing import TYPE_CHECKING, Any, Self

from . import _envelopes as env
from ._context import _current
from ._events import EventStream
from ._ids import check_id, check_optional_id, new_task_id
from ._records import (
    EMPTY,
    OutputChunk,
    StopOutcome,
    StopResult,
    TaskError,
    TaskEvent,
    TaskRecord,
    TaskStatus,
)
from ._sync import Flusher, cancel_and_wait, wake_all
from .bus.memory import MemoryBus
from .errors import ManagerClosed, MaxRuntimeExceeded, StoreUnavailable, TaskNotFound, TaskTimeout
from .stores.base import Page, Retention
from .stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from ._pulse import Pulse
    from .bus.base import Bus
    from .stores.base import Store

__all__ = ["TaskManager"]

logger = logging.getLogger(__name__)

_RUNNING = TaskStatus.RUNNING
_COMPLETED = TaskStatus.COMPLETED
_FAILED = TaskStatus.FAILED
_CANCELLED = TaskStatus.CANCELLED
_time = time.time

STOP_REASON = "stopped on request"
RECENT_LIMIT = 10_000
# Longest a creation or a stop waits for its write to reach a shared store.
SYNC_TIMEOUT = 1.0
# How often a stop re-reads the record while it waits for the owner's event.
STOP_POLL = 0.5
CLOSE_REASON = "manager closed"


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _Live(TaskRecord):
    """The record of a task running on this instance, with what only its owner needs.

    One object instead of a record plus a handle: creating a task should cost
    little more than `asyncio.create_task`. Never handed out: callers get copies.
    """

    __slots__ = ("cancel_reason", "coro", "manager", "seq", "task", "waiters")

    manager: TaskManager
    coro: Coroutine[Any, Any, Any] | None
    task: asyncio.Task[Any] | None
    waiters: list[asyncio.Future[None]] | None
    cancel_reason: str | None
    seq: int

    def cancel(self, reason: str) -> None:
        """Cancel the task; one that never got to run is finished right here."""
        self.cancel_reason = reason
        if self.task is not None:
            self.task.cancel()
        coro, self.coro = self.coro, None
        if coro is not None:
            # Not started: its wrapper will never run, so record the outcome now
            # and close the coroutine (no "never awaited" warning).
            coro.close()
            self.manager._finish(self, _CANCELLED, None, TaskError("CancelledError", reason))


class TaskManager:
    """Runs coroutines as tracked tasks; reads, waits for, lists and stops them.

    Usable directly (it starts on first use) or as ``async with TaskManager() as
    tm``; `aclose()` ends it: running tasks get `shutdown_grace` seconds to
    finish, then are cancelled, and all final states are written.

    `redis` is None for the in-process default, or a Redis/Valkey URL
    (`redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://`) or a
    `redis.asyncio` client, for a store and bus shared by every instance.
    """

    def __init__(
        self,
        timeout: float = 10.0,
        redis: Any = None,
        *,
        store: Store | None = None,
        bus: Bus | None = None,
        prefix: str = "taskward",
        instance_id: str | None = None,
        result_ttl: float | None = None,
        max_finished: int | None = None,
        max_output: int | None = None,
        stop_timeout: float = 5.0,
        shutdown_grace: float = 5.0,
        shutdown_timeout: float = 5.0,
        heartbeat_interval: float = 1.0,
        liveness_ttl: float = 3.0,
        secret: str | bytes | None = None,
        max_backlog: int = 100_000,
    ) -> None:
        for name, value in (
            ("timeout", timeout),
            ("stop_timeout", stop_timeout),
            ("heartbeat_interval", heartbeat_interval),
            ("liveness_ttl", liveness_ttl),
        ):
            _check_positive(name, value)
        for name, value in (
            ("shutdown_grace", shutdown_grace),
            ("shutdown_timeout", shutdown_timeout),
        ):
            _check_positive(name, value, allow_zero=True)
        if liveness_ttl <= heartbeat_interval:
            raise ValueError("liveness_ttl must be longer than heartbeat_interval")
        _check_int("max_backlog", max_backlog, 1)
        limits = {
            name: value
            for name, value in (
                ("result_ttl", result_ttl),
                ("max_finished", max_finished),
                ("max_output", max_output),
            )
            if value is not None
        }
        if limits and store is not None:
            raise ValueError(
                f"{', '.join(limits)} configure the store this manager creates; "
                "with store=..., give them to the store (its `retention`)"
            )
        defaults = Retention()
        retention = Retention(
            result_ttl=defaults.result_ttl if result_ttl is None else result_ttl,
            max_finished=defaults.max_finished if max_finished is None else max_finished,
            max_output=defaults.max_output if max_output is None else max_output,
        )
        self.timeout = float(timeout)
        self.stop_timeout = float(stop_timeout)
        self.shutdown_grace = float(shutdown_grace)
        self.shutdown_timeout = float(shutdown_timeout)
        self.heartbeat_interval = float(heartbeat_interval)
        self.liveness_ttl = float(liveness_ttl)
        self.max_backlog = max_backlog
        self.instance_id = check_id(instance_id or _default_instance_id(), "instance_id")
        self._owned: list[Any] = []  # what aclose() must close: things we created
        # Set when store and bus share a server: events then ride on the store's write.
        self._encode_events: Callable[[Sequence[TaskEvent]], str | None] | None = None
        # A liveness thread (see _pulse.py), where the store can give one.
        self._make_pulse: Callable[[str, float, float], Pulse | None] | None = None
        self._pulse: Pulse | None = None
        if redis is not None:
            if store is not None or bus is not None:
                raise ValueError("pass either redis or store/bus, not both")
            from ._backends import open_redis

            backend = open_redis(redis, prefix=prefix, retention=retention, secret=secret)
            store, bus = backend.store, backend.bus
            self._encode_events = backend.encode_events
            self._make_pulse = backend.pulse
            self._owned.append(backend.connection)
        self._store: Store = store if store is not None else MemoryStore(retention)
        self._bus: Bus = bus if bus is not None else MemoryBus()
        self.retention = self._store.retention
        # A store that answers without I/O (MemoryStore) lets reads skip a coroutine;
        # `peek` returns its own object, so callers get a copy.
        self._get_now: Callable[[str], TaskRecord | None] | None = getattr(
            self._store, "peek", None
        )
        # Final records of tasks run here, kept for reads when the store is remote.
        self._recent: OrderedDict[str, TaskRecord] | None = (
            OrderedDict() if self._get_now is None else None
        )
        self._recent_limit = min(self.retention.max_finished, RECENT_LIMIT)
        self._state = _State.NEW
        self._started: asyncio.Future[None] | None = None
        self._local: dict[str, _Live] = {}
        # Futures of waits and stops for tasks of other instances, woken by their
        # `finished` event (the event is the result; None if woken otherwise).
        self._remote_waiters: dict[str, list[asyncio.Future[Any]]] = {}
        self._streams: list[EventStream] = []
        self._flusher = Flusher(self)
        self._housekeeper: asyncio.Task[None] | None = None
        self._closed_event: asyncio.Event | None = None
        self._chores: set[asyncio.Task[Any]] = set()  # best-effort store calls in flight
        # item id -> result collectors of running stop_item_tasks calls (_fence_new_task)
        self._fences: dict[str, list[_Fence]] = {}
        self._connected = True
        self._connected_since = 0.0
        self._last_beat = 0.0
        # A heartbeat slower than this, or a longer gap between two, is a hiccup (see _tick).
        self._beat_slow = max(self.heartbeat_interval, self.liveness_ttl / 2)
        self._beat_gap = self.heartbeat_interval + (self.liveness_ttl - self.heartbeat_interval) / 2

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect and register this instance. Called for you on first use."""
        if self._state is _State.RUNNING:
            return
        if self._state in (_State.CLOSING, _State.CLOSED):
            raise ManagerClosed("this TaskManager is closed; create a new one")
        if self._started is not None:
            await asyncio.shield(self._started)
            return
        self._state = _State.STARTING
        self._started = asyncio.get_running_loop().create_future()
        try:
            await self._store.start()
            await self._store.heartbeat(self.instance_id, self.liveness_ttl)
            await self._bus.start(self.instance_id, self)
            if self._make_pulse is not None:
                self._pulse = self._make_pulse(
                    self.instance_id, self.liveness_ttl, self.heartbeat_interval
                )
                if self._pulse is not None:
                    self._pulse.start()
        except BaseException as exc:
            self._state = _State.NEW
            started, self._started = self._started, None
            started.set_exception(exc)
            started.exception()  # retrieved: concurrent starters see it via shield
            raise
        self._connected_since = self._last_beat = time.monotonic()
        self._flusher.start()
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="taskward-housekeeping")
        self._state = _State.RUNNING
        self._started.set_result(None)

    async def aclose(self) -> None:
        """Finish, cancel, record, disconnect. Idempotent; concurrent calls wait for the first."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            if self._closed_event is not None:
                await self._closed_event.wait()
            return
        was_started = self._state is _State.RUNNING
        self._state = _State.CLOSING
        closed = self._closed_event = asyncio.Event()
        try:
            if was_started:
                await self._drain_tasks()
                await self._flusher.aclose(self.shutdown_timeout)
                if self._chores:
                    await asyncio.wait(self._chores, timeout=max(self.shutdown_timeout, 0.1))
                    for chore in self._chores:
                        chore.cancel()
                if self._housekeeper is not None:
                    await cancel_and_wait(self._housekeeper)
                await self._bus.aclose()
                if self._pulse is not None:
                    await asyncio.to_thread(self._pulse.stop)  # before retiring: no more beats
                try:
                    await self._store.retire(self.instance_id)
                except StoreUnavailable:
                    logger.warning(
                        "could not retire instance %s: store unreachable", self.instance_id
                    )
            for stream in self._streams:
                stream.close_from_manager()
            self._streams.clear()
            await self._store.aclose()
            for resource in self._owned:
                await resource.aclose()
        finally:
            self._state = _State.CLOSED
            closed.set()

    async def _drain_tasks(self) -> None:
        running = [h.task for h in self._local.values() if h.task is not None and not h.task.done()]
        if running and self.shutdown_grace > 0:
            _, pending = await asyncio.wait(running, timeout=self.shutdown_grace)
            running = list(pending)
        if not running:
            return
        logger.info("closing: cancelling %d running tasks", len(running))
        for handle in list(self._local.values()):
            if handle.task is not None and not handle.task.done():
                handle.cancel(CLOSE_REASON)
        if self.shutdown_timeout > 0:
            await asyncio.wait(running, timeout=self.shutdown_timeout)
        else:
            await asyncio.sleep(0)  # one turn to take the cancellation, no more
        for handle in list(self._local.values()):
            if handle.status is _RUNNING:
                logger.warning(
                    "task %s (%s) ignored cancellation; abandoned as lost",
                    handle.task_id,
                    handle.name,
                )
                self._finish(
                    handle,
                    TaskStatus.LOST,
                    None,
                    TaskError("TaskLost", "did not stop within the shutdown deadline"),
                )

    async def _ensure_started(self) -> None:
        if self._state is not _State.RUNNING:
            await self.start()

    # -- creating tasks --------------------------------------------------------

    async def create_task(
        self,
        coro: Coroutine[Any, Any, Any],
        item_id: str | None = None,
        *,
        user_id: str | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        max_runtime: float | None = None,
        channel_id: str = "",
        platform: str = "",
        task_id: str | None = None,
    ) -> str:
        """Start `coro` as a tracked task and return its id (a random uuid4).

        `item_id` groups tasks (a chat, a document); `user_id` owns it: reads,
        stops and listings that pass a user id only see that user's tasks.
        `max_runtime` (seconds) cancels the task when it runs longer, recording
        a `MaxRuntimeExceeded` error. `task_id` chooses the id (checked like
        every caller id; `ValueError` if a task with it is known), for callers
        whose ids come from elsewhere, such as a chat message id. On bad
        arguments the coroutine is closed, so nothing is left half-started.
        """
        try:
            if type(coro) is not CoroutineType and not _is_coroutine(coro):
                raise TypeError(f"create_task needs a coroutine, not {type(coro).__name__}")
            if item_id is not None:
                check_id(item_id, "item_id")
            if user_id is not None:
                check_id(user_id, "user_id")
            if name is not None and type(name) is not str:
                raise TypeError(f"name must be a str, not {type(name).__name__}")
            if type(channel_id) is not str or type(platform) is not str:
                raise TypeError("channel_id and platform must be str")
            if metadata is not None and not isinstance(metadata, dict):
                raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
            if max_runtime is not None:
                _check_positive("max_runtime", max_runtime)
            if self._state is not _State.RUNNING:
                await self.start()
            if task_id is not None:
                await self._check_new_id(task_id)
            if not self._connected and len(self._local) >= self.max_backlog:
                raise StoreUnavailable(
                    f"store unreachable and {len(self._local)} tasks are waiting to be written"
                )
        except BaseException:
            _close_if_coroutine(coro)
            raise
        now = _time()
        if task_id is None:
            task_id = new_task_id()
        rec = _Live(
            task_id,
            _RUNNING,
            name or "",
            item_id,
            user_id,
            channel_id,
            platform,
            self.instance_id,
            now,
            now,
            now,
            None,
            None,
            None,
            None,
            None,
            EMPTY if metadata is None else dict(metadata),
            None,
            None,
            max_runtime,
        )
        rec.manager = self
        rec.coro = coro
        rec.waiters = rec.cancel_reason = None
        rec.seq = 0
        self._local[task_id] = rec
        rec.task = asyncio.get_running_loop().create_task(self._run(rec, coro))
        self._flusher.mark(rec)
        if self._streams or self._bus.has_peers():
            self._emit("created", rec, now)
        if self._fences and item_id is not None and item_id in self._fences:
            self._fence_new_task(rec)
        if self._get_now is None or self._bus.has_peers():
            # A shared store: return once the task is visible to every instance.
            # Concurrent creations share the write; an unreachable or slow store
            # does not block for long (the task runs and is written on reconnect).
            await self._flusher.sync(SYNC_TIMEOUT)
        return task_id

    async def _check_new_id(self, task_id: str) -> None:
        check_id(task_id, "task_id")
        if self._peek(task_id, None) is not None or (
            self._get_now is None and await self._store.get(task_id) is not None
        ):
            raise ValueError(f"task id {task_id!r} is already in use")

    async def _run(self, rec: _Live, coro: Coroutine[Any, Any, Any]) -> Any:
        rec.coro = None  # started: from here on the outcome is recorded below
        _current.set(rec)
        try:
            if rec.max_runtime is None:
                result = await coro
            else:
                result = await self._run_limited(rec, coro)
        except asyncio.CancelledError:
            self._finish(
                rec, _CANCELLED, None, TaskError("CancelledError", rec.cancel_reason or "cancelled")
            )
            raise
        except MaxRuntimeExceeded as exc:
            self._finish(rec, _CANCELLED, None, TaskError.from_exception(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a task's failure is its outcome, not ours
            self._finish(rec, _FAILED, None, TaskError.from_exception(exc))
            return None
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: record, then let it go
            self._finish(rec, _FAILED, None, TaskError.from_exception(exc))
            raise
        self._finish(rec, _COMPLETED, result, None)
        return result

    @staticmethod
    async def _run_limited(rec: TaskRecord, coro: Coroutine[Any, Any, Any]) -> Any:
        assert rec.max_runtime is not None  # checked by the caller; narrows the type
        scope = asyncio.timeout(rec.max_runtime)
        try:
            async with scope:
                return await coro
        except TimeoutError:
            if scope.expired():
                raise MaxRuntimeExceeded(rec.task_id, rec.max_runtime) from None
            raise

    def _finish(self, rec: _Live, status: TaskStatus, result: Any, error: TaskError | None) -> None:
        if rec.status is not _RUNNING:
            return  # terminal states never change
        rec.status = status
        rec.result = result
        rec.error = error
        rec.finished_at = rec.updated_at = now = _time()
        self._flusher.mark(rec)
        rec.task = None
        waiters = rec.waiters
        if waiters is not None:
            rec.waiters = None
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        if self._streams or self._bus.has_peers():
            self._emit("finished", rec, now)

    def _forget(self, records: Iterable[TaskRecord]) -> None:
        """Drop local handles of tasks whose final state is now in the store.

        With a remote store, the final records stay readable here for a while
        (`_recent`, bounded by `RECENT_LIMIT` and `result_ttl`), so the
        instance that ran a task answers reads of its result without a round
        trip. Terminal records never change, so the copy cannot go stale; it
        may only outlive a trim by `max_finished` done elsewhere, by seconds.
        """
        local = self._local
        recent = self._recent
        for rec in records:
            if rec.status is not _RUNNING:
                task_id = rec.task_id
                if local.get(task_id) is rec:
                    del local[task_id]
                    if recent is not None:
                        recent[task_id] = rec
        if recent is not None:
            while len(recent) > self._recent_limit:
                recent.popitem(last=False)

    # -- progress and output (called through taskward.report_progress / emit) ---

    def _on_progress(self, rec: _Live, fraction: float, message: str | None) -> None:
        if rec.status is not _RUNNING:
            return
        rec.progress = fraction
        if message is not None:
            rec.progress_message = message
        rec.updated_at = now = _time()
        self._flusher.mark(rec)
        if self._streams or self._bus.has_peers():
            self._emit("progress", rec, now)

    def _on_output(self, rec: _Live, text: str) -> None:
        rec.seq += 1
        now = _time()
        self._flusher.add_output(rec.task_id, OutputChunk(rec.seq, text, now))
        if self._streams or self._bus.has_peers():
            self._emit("output", rec, now, text, rec.seq)

    # -- events ------------------------------------------------------------------

    def events(
        self,
        *,
        task_id: str | None = None,
        user_id: str | None = None,
        item_id: str | None = None,
        kinds: Iterable[str] | None = None,
        maxsize: int = 1000,
    ) -> EventStream:
        """Subscribe to task events (of this and, through the bus, every instance).

        Filters combine with AND; `kinds` picks among `created`, `progress`,
        `output`, `finished`, `stop_requested`. Use as an async context manager.
        """
        for what, value in (("task_id", task_id), ("user_id", user_id), ("item_id", item_id)):
            check_optional_id(value, what)
        if self._state is _State.CLOSED:
            raise ManagerClosed("this TaskManager is closed")
        stream = EventStream(
            task_id=task_id,
            user_id=user_id,
            item_id=item_id,
            kinds=kinds,
            maxsize=maxsize,
            on_close=self._drop_stream,
        )
        self._streams.append(stream)
        return stream

    def _drop_stream(self, stream: EventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def _emit(
        self, kind: str, rec: TaskRecord, at: float, data: str | None = None, seq: int | None = None
    ) -> None:
        """Tell local streams now (with a snapshot) and other instances at the next flush.

        The bus gets the live record, read when the flush encodes it, so the
        flusher can drop a `created` or `progress` event that a later event of
        the same flush supersedes.
        """
        with_record = data is None
        if self._streams:
            event = TaskEvent(
                kind,
                rec.task_id,
                rec.status,
                at,
                rec.user_id,
                rec.item_id,
                rec.copy() if with_record else None,
                data,
                seq,
            )
            for stream in self._streams:
                if stream.matches(event):
                    stream.push(event)
        if self._bus.has_peers():
            self._flusher.add_event(
                TaskEvent(
                    kind,
                    rec.task_id,
                    rec.status,
                    at,
                    rec.user_id,
                    rec.item_id,
                    rec if with_record else None,
                    data,
                    seq,
                )
            )

    # Bus callbacks ---------------------------------------------------------------

    def wants_events(self) -> bool:
        return bool(self._streams or self._remote_waiters)

    def on_events(self, events: Sequence[TaskEvent]) -> None:
        waiters = self._remote_waiters
        for event in events:
            if event.kind == "finished" and event.task_id in waiters:
                for fut in waiters.pop(event.task_id):
                    if not fut.done():
                        fut.set_result(event)
            for stream in self._streams:
                if stream.matches(event):
                    stream.push(event)

    def on_command(self, command: dict[str, Any]) -> None:
        if command.get("op") != "stop":
            logger.warning("ignoring unknown command %r", command.get("op"))
            return
        handle = self._local.get(str(command.get("task_id")))
        if handle is not None and handle.status is _RUNNING:
            self._stop_local(handle)

    async def on_reconnect(self) -> None:
        await self._reconcile_stops()

    # -- reading ---------------------------------------------------------------------

    async def get_record(self, task_id: str, user_id: str | None = None) -> TaskRecord | None:
        """A copy of the task's record, or None if unknown, expired or another user's."""
        check_id(task_id, "task_id")
        check_optional_id(user_id, "user_id")
        await self._ensure_started()
        rec = await self._lookup(task_id, user_id)
        return None if rec is None else rec.copy()

    def _peek(self, task_id: str, user_id: str | None) -> TaskRecord | None:
        """The record if it can be had without I/O (local, or an in-memory store)."""
        rec: TaskRecord | None = self._local.get(task_id)
        if rec is None:
            if self._get_now is not None:
                rec = self._get_now(task_id)
            else:
                rec = self._recent_record(task_id)
        if rec is None or (user_id is not None and rec.user_id != user_id):
            return None
        return rec

    def _recent_record(self, task_id: str) -> TaskRecord | None:
        recent = self._recent
        rec = None if recent is None else recent.get(task_id)
        if rec is not None and (rec.finished_at or 0.0) + self.retention.result_ttl < _time():
            del recent[task_id]  # type: ignore[union-attr]  # recent is set when rec is
            return None
        return rec

    async def _lookup(self, task_id: str, user_id: str | None) -> TaskRecord | None:
        """The live record (local) or a fresh one (store); None if not visible."""
        rec = self._peek(task_id, None)
        if rec is None and self._get_now is None:
            rec = await self._store.get(task_id)
        if rec is None or (user_id is not None and rec.user_id != user_id):
            return None
        return rec

    async def wait(
        self, task_id: str, timeout: float | None = None, user_id: str | None = None
    ) -> TaskRecord:
        """Wait until the task is terminal and return its record.

        Raises `TaskNotFound` (unknown or not the user's) or `TaskTimeout`.
        Waiting is woken by the task's own finish (here) or by its event (from
        another instance), with a slow re-read of the store as a safety net.
        """
        if timeout is not None:
            _check_positive("timeout", timeout, allow_zero=True)
        rec = self._peek(task_id, user_id)
        if rec is None:
            check_id(task_id, "task_id")
            check_optional_id(user_id, "user_id")
            await self._ensure_started()
            rec = await self._lookup(task_id, user_id)
            if rec is None:
                raise TaskNotFound(task_id)
        if rec.status is not _RUNNING:
            return rec.copy()
        try:
            async with asyncio.timeout(timeout):
                return await self._wait_terminal(task_id)
        except TimeoutError:
            raise TaskTimeout(task_id, timeout or 0.0) from None

    async def _wait_terminal(self, task_id: str, poll: float = 2.0) -> TaskRecord:
        while True:
            fut = asyncio.get_running_loop().create_future()
            handle = self._local.get(task_id)
            if handle is not None:
                if handle.status is not _RUNNING:
                    return handle.copy()
                if handle.waiters is None:
                    handle.waiters = []
                handle.waiters.append(fut)
                await fut
                return handle.copy()
            self._remote_waiters.setdefault(task_id, []).append(fut)
            try:
                rec = await self._store.get(task_id)
                if rec is None:
                    raise TaskNotFound(task_id)
                if rec.status is not _RUNNING:
                    return rec
                await asyncio.wait((fut,), timeout=poll)
            finally:
                _unwait(self._remote_waiters, task_id, fut)

    async def records(
        self,
        *,
        user_id: str | None = None,
        item_id: str | None = None,
        status: TaskStatus | str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """A page of records matching the filters, newest first, with a cursor for the next."""
        check_optional_id(user_id, "user_id")
        check_optional_id(item_id, "item_id")
        wanted = None if status is None else TaskStatus(status)
        _check_int("limit", limit, 1)
        await self._ensure_started()
        await self._flusher.sync()
        return await self._store.query(
            user_id=user_id, item_id=item_id, status=wanted, limit=limit, cursor=cursor
        )

    async def read_output(
        self, task_id: str, after: int = 0, limit: int = 1000, user_id: str | None = None
    ) -> list[OutputChunk]:
        """Output chunks of a task with `seq > after`, oldest first.

        Pass the `seq` of the last chunk you read as `after` to resume.
        """
        check_id(task_id, "task_id")
        check_optional_id(user_id, "user_id")
        _check_int("after", after, 0)
        _check_int("limit", limit, 1)
        await self._ensure_started()
        if await self._lookup(task_id, user_id) is None:
            raise TaskNotFound(task_id)
        await self._flusher.sync()
        return await self._store.read_output(task_id, after, limit)

    async def list_task_ids_by_item_id(self, item_id: str) -> list[str]:
        """Ids of the item's running tasks (on any instance), oldest first."""
        check_id(item_id, "item_id")
        await self._ensure_started()
        await self._flusher.sync()
        return await self._store.running_ids_by_item(item_id)

    # -- the strings a language model reads ------------------------------------------

    async def get_result(self, task_id: str, user_id: str | None = None) -> str:
        """The task's status as compact JSON: result or error once terminal.

        An unknown id and another user's task give the same `not_found` answer.
        An empty `user_id` means no user, as in the tool APIs this replaces.
        """
        rec = await self._llm_lookup(task_id, user_id)
        if rec is None:
            return env.not_found_envelope(task_id)
        return env.record_envelope(rec, _time())

    async def await_result(
        self, task_id: str, timeout: float = 300.0, user_id: str | None = None
    ) -> str:
        """Like `get_result`, after waiting up to `timeout` seconds for the task to finish."""
        _check_positive("timeout", timeout, allow_zero=True)
        rec = await self._llm_lookup(task_id, user_id)
        if rec is None:
            return env.not_found_envelope(task_id)
        try:
            final = await self.wait(task_id, timeout, rec.user_id if user_id else None)
        except TaskNotFound:
            return env.not_found_envelope(task_id)
        except TaskTimeout:
            rec = await self._llm_lookup(task_id, user_id)
            if rec is None:
                return env.not_found_envelope(task_id)
            return env.record_envelope(
                rec, _time(), note=f"still running after waiting {timeout:g}s"
            )
        return env.record_envelope(final, _time())

    async def list_tasks(
        self,
        user_id: str | None = None,
        item_id: str | None = None,
        status: TaskStatus | str | None = None,
    ) -> str:
        """Compact JSON listing of tasks (newest first, up to 100) with their status."""
        page = await self.records(
            user_id=user_id or None, item_id=item_id or None, status=status or None
        )
        return env.list_envelope(page.records, _time(), cursor=page.cursor)

    async def _llm_lookup(self, task_id: object, user_id: str | None) -> TaskRecord | None:
        check_optional_id(user_id or None, "user_id")
        try:
            check_id(task_id, "task_id")
        except (TypeError, ValueError):
            return None  # a model's garbage id is simply not found
        assert isinstance(task_id, str)  # narrowed by check_id
        await self._ensure_started()
        return await self._lookup(task_id, user_id or None)

    async def execute(
        self,
        coro: Coroutine[Any, Any, Any],
        tool_name: str = "",
        user_id: str = "",
        channel_id: str = "",
        platform: str = "",
        *,
        timeout: float | None = None,
        background: bool = True,
    ) -> str:
        """Run a tool call: its result inline if it beats the timeout, else an envelope.

        A result that is not a `str` is returned as JSON. When the tool is still
        running after `timeout` (default: the manager's), it keeps running
        (never cancelled by the timeout) and a JSON envelope with its `task_id`
        is returned for the model to poll with `check_task`. A tool that raises
        gives an error envelope, never an exception into the tool loop. With
        `background=False` the tool is simply awaited.
        """
        wait_for = self.timeout if timeout is None else timeout
        try:
            _check_positive("timeout", wait_for, allow_zero=True)
        except (TypeError, ValueError):
            _close_if_coroutine(coro)
            raise
        if not background:
            if not _is_coroutine(coro):
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
        task_id = await self.create_task(
            coro,
            user_id=user_id or None,
            name=tool_name,
            channel_id=channel_id,
            platform=platform,
        )
        handle = self._local[task_id]
        rec = handle
        if rec.status is _RUNNING and wait_for > 0:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if handle.waiters is None:
                handle.waiters = []
            handle.waiters.append(fut)
            await asyncio.wait((fut,), timeout=wait_for)
        if rec.status is _RUNNING:
            return env.background_envelope(rec, wait_for)
        if rec.status is _COMPLETED:
            return env.result_text(rec.result)
        return env.error_envelope(rec)

    # -- stopping -----------------------------------------------------------------------

    async def stop_task(self, task_id: str, user_id: str | None = None) -> StopResult:
        """Stop a task wherever it runs and say what happened.

        Writes a durable stop request, wakes the owner, and waits up to
        `stop_timeout` for its confirmation: `cancelled`; `already_finished`
        (with the final status, also when the task swallowed the cancellation and
        finished otherwise); `not_found` (unknown or another user's); or
        `pending` (not confirmed in time: the request stays and will be honoured).
        """
        check_id(task_id, "task_id")
        check_optional_id(user_id, "user_id")
        await self._ensure_started()
        handle = self._local.get(task_id)
        if handle is not None:
            rec = handle
            if user_id is not None and rec.user_id != user_id:
                return StopResult(task_id, StopOutcome.NOT_FOUND)
            if rec.status is not _RUNNING:
                return StopResult(task_id, StopOutcome.ALREADY_FINISHED, rec.status)
            self._stop_local(handle)
            if self._get_now is None and self._connected:
                # Leave the same durable trace as a stop from elsewhere, in the
                # background: a stop here must work while the store is away.
                self._background(
                    self._store.request_stop(task_id, rec.stop_requested_at or _time())
                )
            outcome = _stop_outcome(task_id, await self._wait_briefly(task_id))
            await self._flusher.sync(SYNC_TIMEOUT)  # what we answer is what others read
            return outcome
        # Listen for the finish before asking, so the confirmation cannot slip by.
        fut: asyncio.Future[TaskEvent | None] = asyncio.get_running_loop().create_future()
        self._remote_waiters.setdefault(task_id, []).append(fut)
        try:
            requested = await self._store.request_stop(task_id, _time(), user_id)
            if requested is None:
                return StopResult(task_id, StopOutcome.NOT_FOUND)
            if requested.status is not _RUNNING:
                return StopResult(task_id, StopOutcome.ALREADY_FINISHED, requested.status)
            await self._bus.send_command(requested.instance_id, {"op": "stop", "task_id": task_id})
            return await self._confirm_remote_stop(task_id, fut)
        finally:
            _unwait(self._remote_waiters, task_id, fut)

    async def _confirm_remote_stop(
        self, task_id: str, fut: asyncio.Future[TaskEvent | None]
    ) -> StopResult:
        """The owner's answer: its `finished` event, or the record if events are lost."""
        deadline = time.monotonic() + self.stop_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait((fut,), timeout=min(STOP_POLL, remaining))
            if fut.done() and (event := fut.result()) is not None:
                return _stop_outcome_of(task_id, event.status)
            rec = await self._store.get(task_id)  # a safety net for a lost event
            if rec is None or rec.status is not _RUNNING:
                return _stop_outcome(task_id, rec)
        return _stop_outcome(task_id, await self._store.get(task_id))

    async def _wait_briefly(self, task_id: str) -> TaskRecord | None:
        try:
            async with asyncio.timeout(self.stop_timeout):
                return await self._wait_terminal(task_id, poll=min(0.5, self.stop_timeout))
        except TimeoutError:
            handle = self._local.get(task_id)
            return handle.copy() if handle is not None else await self._store.get(task_id)
        except TaskNotFound:
            return None

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run best-effort store work without waiting for it; failures are logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chore_done)

    def _chore_done(self, task: asyncio.Task[Any]) -> None:
        self._chores.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("background store call failed: %s", exc)

    def _stop_local(self, rec: _Live) -> None:
        if rec.stop_requested_at is None:
            rec.stop_requested_at = now = _time()
            if self._streams or self._bus.has_peers():
                self._emit("stop_requested", rec, now)
        rec.cancel(STOP_REASON)

    async def stop_item_tasks(self, item_id: str, user_id: str | None = None) -> list[StopResult]:
        """Stop every running task of an item, including tasks added while stopping.

        Returns what happened to each task (another user's tasks are left alone
        and not mentioned).
        """
        check_id(item_id, "item_id")
        check_optional_id(user_id, "user_id")
        await self._ensure_started()
        fence = _Fence(user_id)
        self._fences.setdefault(item_id, []).append(fence)
        results = fence.results
        try:
            deadline = time.monotonic() + self.stop_timeout * 2
            while True:  # rounds: other instances may add tasks while we stop these
                await self._flusher.sync()
                page = await self._store.query(
                    item_id=item_id, user_id=user_id, status=_RUNNING, limit=10_000
                )
                ids = [rec.task_id for rec in page.records if rec.task_id not in results]
                if not ids or time.monotonic() > deadline:
                    break
                for result in await asyncio.gather(*(self.stop_task(i, user_id) for i in ids)):
                    results[result.task_id] = result
        finally:
            fences = self._fences[item_id]
            fences.remove(fence)
            if not fences:
                del self._fences[item_id]
        return list(results.values())

    def _fence_new_task(self, rec: _Live) -> None:
        """A task created here on an item that is being stopped is stopped at once."""
        for fence in self._fences[rec.item_id or ""]:
            if fence.user_id is None or fence.user_id == rec.user_id:
                rec.stop_requested_at = _time()
                rec.cancel(STOP_REASON)  # not started yet: recorded cancelled right here
                fence.results[rec.task_id] = StopResult(
                    rec.task_id, StopOutcome.CANCELLED, rec.status
                )
                return

    # -- housekeeping: liveness, reaping, stop reconciliation, reconnects ---------------

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval if self._connected else 0.25)
            try:
                await self._tick()
            except StoreUnavailable as exc:
                self._set_disconnected(exc)
            except Exception:
                logger.exception("housekeeping failed; will retry")

    async def _tick(self) -> None:
        started = time.monotonic()
        if not self._connected:
            tasks = self._started_tasks()
            running = [rec for rec in tasks if rec.status is _RUNNING]
            was_alive = await self._store.heartbeat(self.instance_id, self.liveness_ttl, running)
            logger.warning("store reachable again: re-asserted %d running tasks", len(running))
            if not was_alive and self._bus.has_peers():
                await self._settle_reaped(tasks, running)
            self._connected = True
            self._connected_since = time.monotonic()
            self._flusher.resume()
        elif (
            not await self._store.heartbeat(self.instance_id, self.liveness_ttl)
            and self._bus.has_peers()  # alone, nobody can have reaped our tasks
        ):
            await self._presumed_dead()
        beat = time.monotonic()
        if beat - started > self._beat_slow or beat - self._last_beat > self._beat_gap:
            # A hiccup (failover, slow server, blocked loop): others may have missed
            # their heartbeats too, so give them a full TTL before reaping anyone.
            self._connected_since = beat
        self._last_beat = beat
        await self._reconcile_stops()
        if beat - self._connected_since > self.liveness_ttl:
            await self._reap()

    async def _presumed_dead(self) -> None:
        """Our liveness had expired (a stall longer than `liveness_ttl`).

        Tasks another instance has meanwhile marked `lost` stay lost (terminal
        states never change): they are cancelled here, since nobody could read
        their results or stop them any more. The others are re-asserted.
        """
        started = self._started_tasks()
        running = [rec for rec in started if rec.status is _RUNNING]
        logger.warning("this instance's liveness had expired; checking %d tasks", len(started))
        await self._store.heartbeat(self.instance_id, self.liveness_ttl, running)
        await self._settle_reaped(started, running)

    def _started_tasks(self) -> list[_Live]:
        return [rec for rec in self._local.values() if rec.task is not None and not rec.task.done()]

    async def _settle_reaped(self, started: list[_Live], running: list[_Live]) -> None:
        """Cancel the tasks that another instance marked terminal (lost) meanwhile."""
        stored = await self._store.get_many([rec.task_id for rec in running])
        for rec, now in zip(running, stored, strict=True):
            if now is not None and now.status is not _RUNNING and rec.status is _RUNNING:
                rec.status, rec.error, rec.finished_at = now.status, now.error, now.finished_at
        for rec in started:
            if rec.status is not _RUNNING:
                logger.warning(
                    "task %s was marked %s elsewhere: cancelling it", rec.task_id, rec.status
                )
                rec.cancel(f"marked {rec.status.value} while this instance was presumed dead")
                self._flusher.mark(rec)  # so it leaves the local table once written
                if rec.waiters is not None:
                    wake_all(rec.waiters)
                    rec.waiters = None

    async def _reap(self) -> None:
        lost = await self._store.reap(_time())
        if not lost:
            return
        events = [
            TaskEvent(
                "finished",
                rec.task_id,
                rec.status,
                rec.finished_at or _time(),
                rec.user_id,
                rec.item_id,
                rec,
            )
            for rec in lost
        ]
        self.on_events(events)
        if self._bus.has_peers():
            for event in events:
                self._flusher.add_event(event)

    def _set_disconnected(self, exc: BaseException) -> None:
        if self._connected:
            logger.error("store unreachable (%s); outcomes are queued locally", exc)
        self._connected = False
        self._flusher.pause()

    async def _reconcile_stops(self) -> None:
        """Honour stop requests the bus did not deliver, or that a task swallowed."""
        for rec in list(self._local.values()):
            if rec.status is _RUNNING and rec.stop_requested_at is not None:
                rec.cancel(STOP_REASON)  # asked before and still running: ask again
        for task_id in await self._store.pending_stops(self.instance_id):
            handle = self._local.get(task_id)
            if handle is not None and handle.status is _RUNNING:
                self._stop_local(handle)

    # -- introspection -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def running_count(self) -> int:
        """Tasks of this instance that have not finished yet."""
        return sum(rec.status is _RUNNING for rec in self._local.values())


def _stop_outcome(task_id: str, rec: TaskRecord | None) -> StopResult:
    if rec is None:
        return StopResult(task_id, StopOutcome.NOT_FOUND)
    return _stop_outcome_of(task_id, rec.status)


def _stop_outcome_of(task_id: str, status: TaskStatus) -> StopResult:
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


def _unwait(
    waiters: dict[str, list[asyncio.Future[Any]]], task_id: str, fut: asyncio.Future[Any]
) -> None:
    futs = waiters.get(task_id)
    if futs is not None:
        if fut in futs:
            futs.remove(fut)
        if not futs:
            del waiters[task_id]


def _check_positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero) or math.isnan(value):
        raise ValueError(
            f"{name} must be {'non-negative' if allow_zero else 'positive'}, not {value!r}"
        )


class _Fence:
    """What one `stop_item_tasks` call has stopped, for tasks created meanwhile."""

    __slots__ = ("results", "user_id")

    def __init__(self, user_id: str | None) -> None:
        self.user_id = user_id
        self.results: dict[str, StopResult] = {}


def _is_coroutine(obj: object) -> bool:
    # Not asyncio.iscoroutine: on 3.11 it also accepts plain generators.
    return isinstance(obj, Coroutine)


def _close_if_coroutine(obj: object) -> None:
    """Close a coroutine we will not run, so it never warns "was never awaited"."""
    if isinstance(obj, Coroutine):
        obj.close()


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")


def _default_instance_id() -> str:
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:64] or "host"
    return f"{host}-{os.getpid()}-{new_task_id()[:8]}"
