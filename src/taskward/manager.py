"""TaskManager: the one place the lifecycle rules live.

It runs each task as an `asyncio.Task` on this instance, records its outcome
from inside the task's own wrapper (never a fire-and-forget callback), writes
through a `Store` in coalesced batches (one flush per loop turn, whatever the
number of tasks), and talks to other instances through a `Bus`. See
"How it works" in the README for the rules and why.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import time
from collections import OrderedDict
from types import CoroutineType, TracebackType
from typing import TYPE_CHECKING, Any, Self

from . import _llm, _stopping
from ._checks import (
    check_int,
    check_positive,
    check_retention,
    check_timings,
    close_if_coroutine,
    is_coroutine,
)
from ._context import _current
from ._events import EventStream
from ._housekeeping import Housekeeper
from ._ids import check_id, check_optional_id, default_instance_id, new_task_id
from ._live import (
    BURST,
    FINISHED_AT,
    NAME,
    PROGRESS,
    PROGRESS_MESSAGE,
    RESULT,
    STATUS,
    TASK_ID,
    UPDATED_AT,
    USER_ID,
    V_CANCELLED,
    V_COMPLETED,
    V_FAILED,
    V_LOST,
    V_RUNNING,
    Live,
    event_of,
    finished,
    outcome,
    pop_all,
    replace,
    snapshot,
    status_of,
    task_id_of,
)
from ._records import OutputChunk, TaskError, TaskEvent, TaskRecord, TaskStatus
from ._stopping import fence_new_task, stop_local
from ._sync import SYNC_TIMEOUT, Flusher, cancel_and_wait, unwait, wake_all
from .bus.memory import MemoryBus
from .errors import (
    ManagerClosed,
    MaxRuntimeExceeded,
    StoreUnavailable,
    TaskFailed,
    TaskIdInUse,
    TaskNotFound,
    TaskTimeout,
)
from .stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable, Sequence

    from ._pulse import Pulse
    from ._records import StopResult
    from ._stopping import Fence
    from .bus.base import Bus
    from .stores.base import Page, Store

__all__ = ["TaskManager"]

logger = logging.getLogger(__name__)

_RUNNING = TaskStatus.RUNNING
_COMPLETED = TaskStatus.COMPLETED
_time = time.time

RECENT_LIMIT = 10_000
# A wait for another instance's task re-reads the store this often (s), in case
# its `finished` event was lost.
WAIT_POLL = 2.0
CLOSE_REASON = "manager closed"


async def _run(
    manager: TaskManager, task_id: str, coro: Coroutine[Any, Any, Any], limit: float | None
) -> Any:
    """What each task's `asyncio.Task` runs: the coroutine, then its outcome recorded.

    Few locals on purpose: this frame lives as long as the task, so its size is
    memory (and garbage-collector work) per running task. `TaskManager._cancel`
    reads `coro` from this frame while it has not started.
    """
    _current.set((manager, task_id))
    try:
        result = await coro if limit is None else await _run_limited(task_id, limit, coro)
    except BaseException as exc:
        if manager._failed(task_id, exc):
            raise
        return None
    manager._finish(task_id, V_COMPLETED, result, None)
    return result


async def _run_limited(task_id: str, max_runtime: float, coro: Coroutine[Any, Any, Any]) -> Any:
    scope = asyncio.timeout(max_runtime)
    try:
        async with scope:
            return await coro
    except TimeoutError:
        if scope.expired():
            raise MaxRuntimeExceeded(task_id, max_runtime) from None
        raise


def _unstarted_run(outer: object) -> Coroutine[Any, Any, Any] | None:
    """The `_run` coroutine of a task that has not started yet, else None.

    Usually the task's own coroutine; a loop's task factory may have wrapped it,
    in which case it is an argument of the (not yet started) outer coroutine.
    """
    if not inspect.iscoroutine(outer) or inspect.getcoroutinestate(outer) != inspect.CORO_CREATED:
        return None
    if outer.cr_code is _run.__code__:
        return outer
    for value in inspect.getcoroutinelocals(outer).values():
        if inspect.iscoroutine(value) and value.cr_code is _run.__code__:
            return _unstarted_run(value)
    return None


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


# Read on every creation: a module constant is several times cheaper to load
# than an enum member (`_State.RUNNING` goes through the enum class).
_STARTED = _State.RUNNING


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
        check_timings(
            timeout,
            stop_timeout,
            shutdown_grace,
            shutdown_timeout,
            heartbeat_interval,
            liveness_ttl,
        )
        check_int("max_backlog", max_backlog, 1)
        retention = check_retention(result_ttl, max_finished, max_output, own_store=store is None)
        self.timeout = float(timeout)
        self.stop_timeout = float(stop_timeout)
        self.shutdown_grace = float(shutdown_grace)
        self.shutdown_timeout = float(shutdown_timeout)
        self.heartbeat_interval = float(heartbeat_interval)
        self.liveness_ttl = float(liveness_ttl)
        self.max_backlog = max_backlog
        self.instance_id = check_id(instance_id or default_instance_id(), "instance_id")
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
            self._encode_events = backend.bus.encode
            self._make_pulse = backend.pulse
            self._owned.append(backend.connection)
        self._store: Store = store if store is not None else MemoryStore(retention)
        self._bus: Bus = bus if bus is not None else MemoryBus()
        self.retention = self._store.retention
        # A store that answers without I/O (MemoryStore) lets reads skip a coroutine;
        # `peek` returns a fresh record, the caller's to keep.
        self._get_now: Callable[[str], TaskRecord | None] | None = getattr(
            self._store, "peek", None
        )
        # A terminal task's record as a memory store keeps it.
        self._kept: Callable[[str], Live | None] | None = getattr(self._store, "kept", None)
        # Final records of tasks run here, kept for reads when the store is remote.
        self._recent: OrderedDict[str, Live] | None = (
            OrderedDict() if self._get_now is None else None
        )
        self._recent_limit = min(self.retention.max_finished, RECENT_LIMIT)
        self._state = _State.NEW
        self._started: asyncio.Future[None] | None = None
        # The tasks of this instance until their final state is written: records
        # (tuples, see `_live.py`), the asyncio tasks of those not finished yet,
        # and what few tasks need besides: futures of local waits, the reason
        # they were cancelled for, the seq of their last output chunk.
        self._local: dict[str, Live] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._seqs: dict[str, int] = {}
        # Futures of waits and stops for tasks of other instances, woken by their
        # `finished` event (the event is the result; None if woken otherwise).
        self._remote_waiters: dict[str, list[asyncio.Future[Any]]] = {}
        self._streams: list[EventStream] = []
        self._flusher = Flusher(self)
        # Bound once: called for every task (create, finish).
        self._mark = self._flusher.mark
        self._has_peers = self._bus.has_peers
        # Nobody but this manager can ever hear of its tasks (the default: its own
        # store and bus in memory): the hot path skips events and store syncs.
        self._alone = store is None and bus is None and redis is None
        self._spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]] = (
            asyncio.create_task  # replaced by the running loop's own in start()
        )
        self._housekeeper: asyncio.Task[None] | None = None
        self._closed_event: asyncio.Event | None = None
        self._chores: set[asyncio.Task[Any]] = set()  # best-effort store calls in flight
        # item id -> result collectors of running stop_item_tasks calls (_fence_new_task)
        self._fences: dict[str, list[Fence]] = {}
        self._connected = True  # the store answers (read on every creation)
        # Liveness and reconciliation rules, run by the `_housekeeper` task.
        self._keeper = Housekeeper(self)

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
            self._spawn = asyncio.get_running_loop().create_task
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
        self._keeper.started()
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
        running = [task for task in self._tasks.values() if not task.done()]
        if running and self.shutdown_grace > 0:
            _, pending = await asyncio.wait(running, timeout=self.shutdown_grace)
            running = list(pending)
        if not running:
            return
        logger.info("closing: cancelling %d running tasks", len(running))
        for task_id, task in list(self._tasks.items()):
            if not task.done():
                self._cancel(task_id, CLOSE_REASON)
        if self.shutdown_timeout > 0:
            await asyncio.wait(running, timeout=self.shutdown_timeout)
        else:
            await asyncio.sleep(0)  # one turn to take the cancellation, no more
        for rec in list(self._local.values()):
            if rec[STATUS] == V_RUNNING:
                logger.warning(
                    "task %s (%s) ignored cancellation; abandoned as lost", rec[TASK_ID], rec[NAME]
                )
                self._finish(
                    rec[TASK_ID],
                    V_LOST,
                    None,
                    TaskError("TaskLost", "did not stop within the shutdown deadline"),
                )

    async def _ensure_started(self) -> None:
        if self._state is not _STARTED:
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
            if type(coro) is not CoroutineType and not is_coroutine(coro):
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
                check_positive("max_runtime", max_runtime)
            if self._state is not _STARTED:
                await self.start()
            if task_id is not None:
                await self._check_new_id(task_id)
            if not self._connected and len(self._local) >= self.max_backlog:
                raise StoreUnavailable(
                    f"store unreachable and {len(self._local)} tasks are waiting to be written"
                )
        except BaseException:
            close_if_coroutine(coro)
            raise
        now = _time()
        if task_id is None:
            task_id = new_task_id()
        rec: Live = (
            task_id,
            V_RUNNING,
            name or "",
            item_id,
            user_id,
            channel_id,
            platform,
            self.instance_id,
            now,  # created
            now,  # started
            now,  # updated
            None,  # finished
            None,  # result
            None,  # error type
            None,  # error message
            None,  # progress
            None,  # progress message
            dict(metadata) if metadata else None,
            None,  # redirect
            None,  # stop requested
            max_runtime,
        )
        self._local[task_id] = rec
        self._tasks[task_id] = self._spawn(_run(self, task_id, coro, max_runtime))
        self._mark(rec)
        if self._streams or not self._alone:  # a listener is possible
            self._emit("created", rec, now)
        if self._fences and item_id is not None and item_id in self._fences:
            fence_new_task(self, rec)
        if not self._alone and (self._get_now is None or self._has_peers()):
            # A shared store: return once the task is visible to every instance.
            # Concurrent creations share the write; an unreachable or slow store
            # does not block for long (the task runs and is written on reconnect).
            await self._flusher.sync(SYNC_TIMEOUT)
        return task_id

    async def _check_new_id(self, task_id: str) -> None:
        check_id(task_id, "task_id")
        if await self._lookup(task_id, None) is not None:
            raise TaskIdInUse(task_id)

    def _failed(self, task_id: str, exc: BaseException) -> bool:
        """Record how the task ended on `exc`; True if `exc` must go on (cancellation, exits)."""
        if isinstance(exc, asyncio.CancelledError):
            reason = self._cancel_reasons.get(task_id, "cancelled")
            self._finish(task_id, V_CANCELLED, None, TaskError("CancelledError", reason))
            return True
        if isinstance(exc, MaxRuntimeExceeded):
            self._finish(task_id, V_CANCELLED, None, TaskError.from_exception(exc))
            return False
        # A task's failure is its outcome, not ours; SystemExit and KeyboardInterrupt
        # are recorded, then let go.
        self._finish(task_id, V_FAILED, None, TaskError.from_exception(exc))
        return not isinstance(exc, Exception)

    def _finish(self, task_id: str, status: str, result: Any, error: TaskError | None) -> None:
        """Record the end of a task (`status` is a terminal value); the first end counts."""
        self._tasks.pop(task_id, None)
        rec = self._local.get(task_id)
        if rec is None or rec[STATUS] != V_RUNNING:
            return  # terminal states never change
        now = _time()
        self._local[task_id] = rec = finished(rec, status, result, error, now)
        self._mark(rec)
        if self._waiters:
            self._wake(task_id)
        if self._streams or not self._alone:  # a listener is possible
            self._emit("finished", rec, now)

    def _update(self, rec: Live, changes: dict[int, Any]) -> Live:
        """Change a task's record (a new tuple) and mark it for the next flush."""
        self._local[rec[TASK_ID]] = rec = replace(rec, changes)
        self._mark(rec)
        return rec

    def _wake(self, task_id: str) -> None:
        """Wake the local waits for a task (it finished, or was found finished)."""
        waiters = self._waiters.pop(task_id, None)
        if waiters is not None:
            wake_all(waiters)

    def _add_waiter(self, task_id: str) -> asyncio.Future[None]:
        """A future that is set when this instance's task `task_id` finishes."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.get(task_id)
        if waiters is None:
            self._waiters[task_id] = [fut]
        else:
            waiters.append(fut)
        return fut

    def _cancel(self, task_id: str, reason: str) -> None:
        """Cancel a task of this instance; one that never got to run is finished right here."""
        task = self._tasks.get(task_id)
        if task is None:
            return  # finished already
        self._cancel_reasons[task_id] = reason
        task.cancel()
        outer = task.get_coro()
        run = _unstarted_run(outer)
        if run is not None:
            # Not started: our wrapper will never run its body, so record the outcome
            # now and close the task's coroutine (no "never awaited" warning). The
            # task's first step throws the cancellation into its outermost
            # coroutine, which must stay open for that: a wrapper a task factory
            # put around ours is thrown into, and ours, inside it, is closed.
            inspect.getcoroutinelocals(run)["coro"].close()
            if run is not outer:
                run.close()
            self._finish(task_id, V_CANCELLED, None, TaskError("CancelledError", reason))

    def _forget(self, records: Sequence[Live]) -> None:
        """Drop local records of tasks whose final state is now in the store.

        With a remote store, the final records stay readable here for a while
        (`_recent`, bounded by `RECENT_LIMIT` and `result_ttl`), so the
        instance that ran a task answers reads of its result without a round
        trip. Terminal records never change, so the local one is the one
        written and the copy cannot go stale; it may only outlive a trim by
        `max_finished` done elsewhere, by seconds.
        """
        local = self._local
        recent = self._recent
        extras = self._cancel_reasons or self._seqs
        if recent is None and len(records) >= BURST and V_RUNNING not in map(status_of, records):
            # All final (the usual burst) and kept by a store in this process: the
            # local copies go at once.
            ids = list(map(task_id_of, records))
            pop_all(local, ids)
            if extras:
                pop_all(self._cancel_reasons, ids)
                pop_all(self._seqs, ids)
            return
        for rec in records:
            if rec[STATUS] != V_RUNNING:
                task_id = rec[TASK_ID]
                if local.pop(task_id, None) is None:
                    continue  # forgotten already
                if recent is not None:
                    recent[task_id] = rec
                if extras:
                    self._cancel_reasons.pop(task_id, None)
                    self._seqs.pop(task_id, None)
        if recent is not None:
            while len(recent) > self._recent_limit:
                recent.popitem(last=False)

    # -- progress and output (called through taskward.report_progress / emit) ---

    def _on_progress(self, task_id: str, fraction: float, message: str | None) -> None:
        rec = self._local.get(task_id)
        if rec is None or rec[STATUS] != V_RUNNING:
            return
        now = _time()
        changes: dict[int, Any] = {PROGRESS: fraction, UPDATED_AT: now}
        if message is not None:
            changes[PROGRESS_MESSAGE] = message
        rec = self._update(rec, changes)
        if self._streams or not self._alone:  # a listener is possible
            self._emit("progress", rec, now)

    def _on_output(self, task_id: str, text: str) -> None:
        rec = self._local.get(task_id)
        if rec is None or rec[STATUS] != V_RUNNING:
            return  # finished (a child task outlived it): its output is closed
        self._seqs[task_id] = seq = self._seqs.get(task_id, 0) + 1
        now = _time()
        self._flusher.add_output(task_id, OutputChunk(seq, text, now))
        if self._streams or not self._alone:  # a listener is possible
            self._emit("output", rec, now, text, seq)

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
        self, kind: str, rec: Live, at: float, data: str | None = None, seq: int | None = None
    ) -> None:
        """Tell local streams now and other instances at the next flush.

        Events other than `output` carry a snapshot of the record; local streams
        and the bus each get their own. The flusher drops a `created` or
        `progress` event that a later event of the same flush supersedes.
        """
        with_record = data is None
        if self._streams:
            event = event_of(kind, rec, at, snapshot(rec) if with_record else None, data, seq)
            for stream in self._streams:
                if stream.matches(event):
                    stream.push(event)
        if self._has_peers():
            self._flusher.add_event(
                event_of(kind, rec, at, snapshot(rec) if with_record else None, data, seq)
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
        rec = self._local.get(str(command.get("task_id")))
        if rec is not None and rec[STATUS] == V_RUNNING:
            stop_local(self, rec)

    async def on_reconnect(self) -> None:
        await self._keeper.reconcile_stops()

    # -- reading ---------------------------------------------------------------------

    async def get_record(self, task_id: str, user_id: str | None = None) -> TaskRecord | None:
        """A copy of the task's record, or None if unknown, expired or another user's."""
        check_id(task_id, "task_id")
        check_optional_id(user_id, "user_id")
        await self._ensure_started()
        return await self._lookup(task_id, user_id)

    def _peek(self, task_id: str, user_id: str | None) -> TaskRecord | None:
        """The record if it can be had without I/O (local, or an in-memory store).

        Like every read here, the record is a fresh one: the caller's to keep.
        """
        live = self._local.get(task_id)
        rec: TaskRecord | None
        if live is not None:
            rec = snapshot(live)
        elif self._get_now is not None:
            rec = self._get_now(task_id)
        else:
            rec = self._recent_record(task_id)
        if rec is None or (user_id is not None and rec.user_id != user_id):
            return None
        return rec

    def _recent_record(self, task_id: str) -> TaskRecord | None:
        recent = self._recent
        rec = None if recent is None else recent.get(task_id)
        if rec is None:
            return None
        if (rec[FINISHED_AT] or 0.0) + self.retention.result_ttl < _time():
            del recent[task_id]  # type: ignore[union-attr]  # recent is set when rec is
            return None
        return snapshot(rec)

    async def _lookup(self, task_id: str, user_id: str | None) -> TaskRecord | None:
        """The task's record, fresh (local or from the store); None if not visible."""
        rec = self._peek(task_id, None)
        if rec is None and self._get_now is None:
            rec = await self._store.get(task_id)
        if rec is None or (user_id is not None and rec.user_id != user_id):
            return None
        return rec

    async def wait(
        self, task_id: str, timeout: float | None = None, user_id: str | None = None
    ) -> TaskRecord:
        """Wait until the task is terminal and return (a copy of) its record.

        Raises `TaskNotFound` (unknown or not the user's) or `TaskTimeout`.
        Waiting is woken by the task's own finish (here) or by its event (from
        another instance), with a slow re-read of the store as a safety net.
        """
        if timeout is None:
            # Already terminal (the common case), or running here: waited for here,
            # with one record made at the end.
            if self._runs_here(task_id, user_id):
                await self._add_waiter(task_id)
            rec = self._peek(task_id, user_id)
            if rec is not None and rec.status is not _RUNNING:
                return rec
        return await self._terminal(task_id, timeout, user_id)

    async def result(
        self, task_id: str, timeout: float | None = None, user_id: str | None = None
    ) -> Any:
        """Wait until the task is terminal and return what its coroutine returned.

        Like `await task` for an `asyncio.Task`: raises `TaskFailed` (with the
        final status and the recorded error) if the task failed, was cancelled
        or was lost, and `TaskNotFound` or `TaskTimeout` like `wait`.
        """
        if timeout is None:  # a finished task's outcome, without making a record
            live = self._local.get(task_id)
            # (The status first: a finished task, the usual read, makes no call.)
            if live is not None and live[STATUS] == V_RUNNING and self._runs_here(task_id, user_id):
                await self._add_waiter(task_id)  # its end, here: no timer, no record
                live = self._local.get(task_id)
            if live is None and self._kept is not None:
                live = self._kept(task_id)
            if (
                live is not None
                and live[STATUS] != V_RUNNING
                and (user_id is None or live[USER_ID] == user_id)
            ):
                if live[STATUS] == V_COMPLETED:
                    return live[RESULT]
                status, _, error = outcome(live)
                raise TaskFailed(task_id, status, error)
        rec = await self._terminal(task_id, timeout, user_id)
        if rec.status is _COMPLETED:
            return rec.result
        raise TaskFailed(rec.task_id, rec.status, rec.error)

    def _runs_here(self, task_id: str, user_id: str | None) -> bool:
        """Whether the task is running on this instance (and is the user's)."""
        live = self._local.get(task_id)
        return (
            live is not None
            and live[STATUS] == V_RUNNING
            and (user_id is None or live[USER_ID] == user_id)
        )

    async def _terminal(
        self, task_id: str, timeout: float | None, user_id: str | None
    ) -> TaskRecord:
        """The task's terminal record, after waiting for it."""
        if timeout is not None:
            check_positive("timeout", timeout, allow_zero=True)
        rec = self._peek(task_id, user_id)
        if rec is None:
            check_id(task_id, "task_id")
            check_optional_id(user_id, "user_id")
            await self._ensure_started()
            rec = await self._lookup(task_id, user_id)
            if rec is None:
                raise TaskNotFound(task_id)
        if rec.status is not _RUNNING:
            return rec
        try:
            async with asyncio.timeout(timeout):
                return await self._wait_terminal(task_id)
        except TimeoutError:
            raise TaskTimeout(task_id, timeout or 0.0) from None

    async def _wait_terminal(self, task_id: str) -> TaskRecord:
        while True:
            live = self._local.get(task_id)
            if live is not None:
                if live[STATUS] != V_RUNNING:
                    return snapshot(live)
                await self._add_waiter(task_id)
                # Finished, or found finished: here, or (already written) kept
                # here or in a memory store, without a round trip.
                rec = self._peek(task_id, None)
                if rec is not None and rec.status is not _RUNNING:
                    return rec
                continue
            fut = asyncio.get_running_loop().create_future()
            self._remote_waiters.setdefault(task_id, []).append(fut)
            try:
                rec = await self._store.get(task_id)
                if rec is None:
                    raise TaskNotFound(task_id)
                if rec.status is not _RUNNING:
                    return rec
                await asyncio.wait((fut,), timeout=WAIT_POLL)
            finally:
                unwait(self._remote_waiters, task_id, fut)

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
        check_int("limit", limit, 1)
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
        check_int("after", after, 0)
        check_int("limit", limit, 1)
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
        return await _llm.get_result(self, task_id, user_id)

    async def await_result(
        self, task_id: str, timeout: float = 300.0, user_id: str | None = None
    ) -> str:
        """Like `get_result`, after waiting up to `timeout` seconds for the task to finish."""
        return await _llm.await_result(self, task_id, timeout, user_id)

    async def list_tasks(
        self,
        user_id: str | None = None,
        item_id: str | None = None,
        status: TaskStatus | str | None = None,
    ) -> str:
        """Compact JSON listing of tasks (newest first, up to 100) with their status."""
        return await _llm.list_tasks(self, user_id, item_id, status)

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
        return await _llm.execute(
            self,
            coro,
            tool_name,
            user_id,
            channel_id,
            platform,
            timeout=timeout,
            background=background,
        )

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
        return await _stopping.stop_task(self, task_id, user_id)

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run best-effort store work without waiting for it; failures are logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chore_done)

    def _chore_done(self, task: asyncio.Task[Any]) -> None:
        self._chores.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("background store call failed: %s", exc)

    async def stop_item_tasks(self, item_id: str, user_id: str | None = None) -> list[StopResult]:
        """Stop every running task of an item, including tasks added while stopping.

        Returns what happened to each task (another user's tasks are left alone
        and not mentioned).
        """
        check_id(item_id, "item_id")
        check_optional_id(user_id, "user_id")
        await self._ensure_started()
        return await _stopping.stop_item_tasks(self, item_id, user_id)

    # -- housekeeping: liveness, reaping, stop reconciliation, reconnects ---------------

    async def _housekeeping(self) -> None:
        """The loop the `_housekeeper` task runs (see `_housekeeping.py`)."""
        await self._keeper.run()

    def _set_disconnected(self, exc: BaseException) -> None:
        """The store went away (the flusher tells us too): queue writes until it is back."""
        self._keeper.set_disconnected(exc)

    # -- introspection -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def running_count(self) -> int:
        """Tasks of this instance that have not finished yet."""
        return sum(rec[STATUS] == V_RUNNING for rec in self._local.values())
