"""The tasks of this instance: their rows, asyncio tasks, and what waits on them.

`LocalTable` is the one owner of that state. A task's row stays here from its
creation until its final state is written (the flusher then calls `forget`);
with a remote store, final rows stay readable here for a while (`recent`), so
the instance that ran a task answers reads of its result without a round trip.

Each task's `asyncio.Task` runs `_run`, which records the outcome itself, in
the task, before the task ends: finishing is part of the task, never a
callback.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from ._context import current
from ._live import (
    FINISHED_AT,
    ITEM_ID,
    NAME,
    PROGRESS,
    PROGRESS_MESSAGE,
    STATUS,
    STOP_REQUESTED_AT,
    TASK_ID,
    UPDATED_AT,
    USER_ID,
    V_CANCELLED,
    V_COMPLETED,
    V_FAILED,
    V_LOST,
    V_RUNNING,
    Live,
    finished,
    new_row,
    replace,
    snapshot,
)
from ._records import OutputChunk, StopOutcome, StopResult, TaskError, TaskStatus, dump_json
from .errors import MaxRuntimeExceeded, ValueNotEncodable

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ._hub import EventHub
    from ._records import TaskRecord

__all__ = ["MAX_PROGRESS_MESSAGE", "STOP_REASON", "Encoder", "Fence", "LocalTable", "Writes"]

logger = logging.getLogger(__name__)

MAX_PROGRESS_MESSAGE = 1_000
STOP_REASON = "stopped on request"


class Writes(Protocol):
    """What the table hands the flusher: rows that changed, output chunks."""

    def mark(self, row: Live) -> None: ...

    def add_output(self, task_id: str, chunk: OutputChunk) -> None: ...


class Encoder(Protocol):
    """The encoding rule (`taskward._encoding.ValueEncoder`)."""

    def value(self, value: Any, what: str) -> Any: ...

    def text(self, text: str, what: str, *, truncate: bool = False) -> str: ...


class Fence:
    """What one `stop_item_tasks` call has stopped, for tasks created meanwhile."""

    __slots__ = ("results", "user_id")

    def __init__(self, user_id: str | None) -> None:
        self.user_id = user_id
        self.results: dict[str, StopResult] = {}


class LocalTable:
    """The tasks of one instance until their final state is written.

    `rows` holds each task's row; `tasks` the asyncio tasks not finished yet;
    `fences` the running `stop_item_tasks` calls by item id. Only this object's
    methods change them.
    """

    def __init__(
        self,
        *,
        instance_id: str,
        writes: Writes,
        hub: EventHub,
        encoder: Encoder,
        keep_recent: int,
        result_ttl: float,
    ) -> None:
        self.instance_id = instance_id
        self.rows: dict[str, Live] = {}
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.fences: dict[str, list[Fence]] = {}
        self._writes = writes
        self._hub = hub
        self._encoder = encoder
        # The coroutines of each running task, its own and the `_run` around it: one
        # stopped before `_run` began never runs them, so `cancel` closes them.
        # (Two maps, not one of pairs: a pair per task is an object the garbage
        # collector tracks for as long as the task runs, measured at 0.7 us a task.)
        self._coros: dict[str, Coroutine[Any, Any, Any]] = {}
        self._runs: dict[str, Coroutine[Any, Any, Any]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._seqs: dict[str, int] = {}  # the seq of each task's last output chunk
        self._recent: OrderedDict[str, Live] | None = OrderedDict() if keep_recent else None
        self._recent_limit = keep_recent
        self._result_ttl = result_ttl
        self._spawn = asyncio.create_task

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start tasks through `loop.create_task` (its task factory included)."""
        self._spawn = loop.create_task

    # -- a task's life -------------------------------------------------------------

    def start(
        self,
        task_id: str,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str,
        item_id: str | None,
        user_id: str | None,
        channel_id: str,
        platform: str,
        metadata: dict[str, Any] | None,
        max_runtime: float | None,
    ) -> Live:
        """Run `coro` as the task `task_id` (its arguments already checked)."""
        now = time.time()
        self.rows[task_id] = row = new_row(
            task_id,
            name,
            item_id,
            user_id,
            channel_id,
            platform,
            self.instance_id,
            now,
            metadata,
            max_runtime,
        )
        run = _run(self, task_id, coro, max_runtime)
        self._coros[task_id] = coro
        self._runs[task_id] = run
        self.tasks[task_id] = self._spawn(run)
        self._writes.mark(row)
        if not self._hub.quiet:  # (checked here too: every task passes by)
            self._hub.emit("created", row, now)
        if self.fences and item_id is not None and item_id in self.fences:
            self._fence(row)
        return row

    def complete(self, task_id: str, result: Any) -> None:
        """The coroutine returned `result`: stored as the encoding rule has it."""
        try:
            value = self._encoder.value(result, "result")
        except ValueNotEncodable as exc:
            self.finish(task_id, V_FAILED, None, self._error(exc))
            return
        self.finish(task_id, V_COMPLETED, value, None)

    def failed(self, task_id: str, exc: BaseException) -> bool:
        """Record how the task ended on `exc`; True if `exc` must go on (cancellation, exits)."""
        if isinstance(exc, asyncio.CancelledError):
            reason = self._cancel_reasons.get(task_id, "cancelled")
            self.finish(task_id, V_CANCELLED, None, TaskError("CancelledError", reason))
            return True
        if isinstance(exc, MaxRuntimeExceeded):
            self.finish(task_id, V_CANCELLED, None, self._error(exc))
            return False
        # A task's failure is its outcome, not ours; SystemExit and KeyboardInterrupt
        # are recorded, then let go.
        self.finish(task_id, V_FAILED, None, self._error(exc))
        return not isinstance(exc, Exception)

    def _error(self, exc: BaseException) -> TaskError:
        try:
            message = str(exc)
        except Exception as broken:  # noqa: BLE001 - a failing __str__ must not lose the outcome
            message = f"<str() of the exception failed: {type(broken).__name__}>"
        return TaskError(type(exc).__name__, self._encoder.text(message, "error", truncate=True))

    def finish(self, task_id: str, status: str, result: Any, error: TaskError | None) -> None:
        """Record the end of a task (`status` is a terminal value); the first end counts."""
        self.tasks.pop(task_id, None)
        self._coros.pop(task_id, None)
        self._runs.pop(task_id, None)
        row = self.rows.get(task_id)
        if row is None or row[STATUS] != V_RUNNING:
            return  # terminal states never change
        now = time.time()
        self.rows[task_id] = row = finished(row, status, result, error, now)
        self._writes.mark(row)
        if self._waiters:
            self.wake(task_id)
        if not self._hub.quiet:
            self._hub.emit("finished", row, now)

    def update(self, row: Live, changes: dict[int, Any]) -> Live:
        """Change a task's row (a new tuple) and mark it for the next flush."""
        self.rows[row[TASK_ID]] = row = replace(row, changes)
        self._writes.mark(row)
        return row

    def cancel(self, task_id: str, reason: str) -> None:
        """Cancel a task of this instance; one that never got to run is finished right here."""
        task = self.tasks.get(task_id)
        if task is None:
            return  # finished already
        self._cancel_reasons[task_id] = reason
        task.cancel()
        run = self._runs.get(task_id)
        if run is None or inspect.getcoroutinestate(run) != inspect.CORO_CREATED:
            return
        # Not started: `_run` will never run its body. The task's first step throws
        # the cancellation into its outermost coroutine, which must stay open for
        # that: ours, or a wrapper a loop's task factory put around it (then ours
        # is closed too). The task's own coroutine is closed: it never ran.
        self._coros[task_id].close()
        if task.get_coro() is not run:
            run.close()
        self.finish(task_id, V_CANCELLED, None, TaskError("CancelledError", reason))

    def request_stop(self, row: Live) -> float:
        """Stop a running task here: note the request (once), then cancel it.

        Returns when the stop was first requested.
        """
        requested_at: float | None = row[STOP_REQUESTED_AT]
        if requested_at is None:
            requested_at = time.time()
            row = self.update(row, {STOP_REQUESTED_AT: requested_at})
            self._hub.emit("stop_requested", row, requested_at)
        self.cancel(row[TASK_ID], STOP_REASON)
        return requested_at

    def _fence(self, row: Live) -> None:
        """A task created on an item that is being stopped is stopped at once."""
        for fence in self.fences[row[ITEM_ID]]:
            if fence.user_id is None or fence.user_id == row[USER_ID]:
                task_id = row[TASK_ID]
                self.request_stop(row)  # not started yet: recorded cancelled right here
                status = TaskStatus(self.rows[task_id][STATUS])
                fence.results[task_id] = StopResult(task_id, StopOutcome.CANCELLED, status)
                return

    # -- progress and output (through taskward.report_progress / emit) -------------

    def progress(self, task_id: str, fraction: float, message: str | None) -> None:
        row = self.rows.get(task_id)
        if row is None or row[STATUS] != V_RUNNING:
            return
        now = time.time()
        changes: dict[int, Any] = {PROGRESS: fraction, UPDATED_AT: now}
        if message is not None:
            changes[PROGRESS_MESSAGE] = self._encoder.text(
                message[:MAX_PROGRESS_MESSAGE], "progress message"
            )
        row = self.update(row, changes)
        self._hub.emit("progress", row, now)

    def output(self, task_id: str, data: Any) -> None:
        row = self.rows.get(task_id)
        if row is None or row[STATUS] != V_RUNNING:
            return  # finished (a child task outlived it): its output is closed
        if isinstance(data, str):
            text = self._encoder.text(data, "output")
        else:
            text = self._encoder.text(dump_json(self._encoder.value(data, "output")), "output")
        self._seqs[task_id] = seq = self._seqs.get(task_id, 0) + 1
        now = time.time()
        self._writes.add_output(task_id, OutputChunk(seq, text, now))
        self._hub.emit("output", row, now, text, seq)

    # -- waits -----------------------------------------------------------------------

    def runs_here(self, task_id: str, user_id: str | None) -> bool:
        """Whether the task is running on this instance (and is the user's, if given)."""
        row = self.rows.get(task_id)
        return (
            row is not None
            and row[STATUS] == V_RUNNING
            and (user_id is None or row[USER_ID] == user_id)
        )

    def add_waiter(self, task_id: str) -> asyncio.Future[None]:
        """A future that is set when this instance's task `task_id` finishes."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.get(task_id)
        if waiters is None:
            self._waiters[task_id] = [fut]
        else:
            waiters.append(fut)
        return fut

    def wake(self, task_id: str) -> None:
        """Wake the local waits for a task (it finished, or was found finished)."""
        for fut in self._waiters.pop(task_id, ()):
            if not fut.done():
                fut.set_result(None)

    # -- reads -----------------------------------------------------------------------

    def peek(self, task_id: str) -> TaskRecord | None:
        """The task's record if this instance has it (running, or finished lately)."""
        row = self.rows.get(task_id)
        if row is None:
            row = self.recent(task_id)
        return None if row is None else snapshot(row)

    def recent(self, task_id: str) -> Live | None:
        """The final row of a task run here and already written, while it is kept."""
        recent = self._recent
        row = None if recent is None else recent.get(task_id)
        if row is None:
            return None
        if (row[FINISHED_AT] or 0.0) + self._result_ttl < time.time():
            del recent[task_id]  # type: ignore[union-attr]  # recent is set when row is
            return None
        return row

    def running_rows(self) -> list[Live]:
        return [row for row in self.rows.values() if row[STATUS] == V_RUNNING]

    def running_ids(self, item_id: str, user_id: str | None) -> list[str]:
        """Ids of the item's tasks running here (the user's only, if given)."""
        return [
            row[TASK_ID]
            for row in self.rows.values()
            if row[ITEM_ID] == item_id
            and row[STATUS] == V_RUNNING
            and (user_id is None or row[USER_ID] == user_id)
        ]

    def started_rows(self) -> list[Live]:
        """Rows of the tasks whose asyncio task has not ended."""
        rows = self.rows
        return [
            rows[task_id]
            for task_id, task in self.tasks.items()
            if not task.done() and task_id in rows
        ]

    @property
    def running_count(self) -> int:
        return sum(row[STATUS] == V_RUNNING for row in self.rows.values())

    # -- what the flusher and the housekeeper tell the table -----------------------

    def forget(self, rows: list[Live]) -> None:
        """Drop the rows of tasks whose final state is now in the store.

        Terminal rows never change, so the one kept in `recent` is the one written
        and cannot go stale; it may only outlive a trim by `max_finished` done
        elsewhere, by seconds.
        """
        local = self.rows
        recent = self._recent
        extras = self._cancel_reasons or self._seqs
        for row in rows:
            if row[STATUS] != V_RUNNING:
                task_id = row[TASK_ID]
                if local.pop(task_id, None) is None:
                    continue  # forgotten already
                if recent is not None:
                    recent[task_id] = row
                if extras:
                    self._cancel_reasons.pop(task_id, None)
                    self._seqs.pop(task_id, None)
        if recent is not None:
            while len(recent) > self._recent_limit:
                recent.popitem(last=False)

    def unwritable(self, row: Live, reason: str) -> Live | None:
        """The store refused this row: the task is recorded as failed with the reason.

        Returns the failed row to write instead, or None if the task is not here
        any more or its state was already final (then only the log says so).
        """
        task_id = row[TASK_ID]
        current_row = self.rows.get(task_id)
        if current_row is None:
            return None
        error = TaskError("StoreWriteError", self._encoder.text(reason, "error", truncate=True))
        now = time.time()
        self.rows[task_id] = failed = finished(current_row, V_FAILED, None, error, now)
        if self.tasks.get(task_id) is not None:
            self.cancel(task_id, f"its record could not be written: {reason}")
        self.wake(task_id)
        self._hub.emit("finished", failed, now)
        return failed

    def settle(self, row: Live, stored: TaskRecord) -> bool:
        """Another instance marked this running task terminal (lost) while we were away.

        Terminal states never change: the row takes the stored end, and the task is
        cancelled, since nobody could read its result or stop it any more. Returns
        whether it did (False if the task ended here meanwhile).
        """
        task_id = row[TASK_ID]
        if self.rows.get(task_id) is not row:
            return False
        ended_at = stored.finished_at if stored.finished_at is not None else stored.updated_at
        self.rows[task_id] = row = finished(row, stored.status.value, None, stored.error, ended_at)
        self.cancel(task_id, f"marked {stored.status.value} while this instance was presumed dead")
        self._writes.mark(row)  # so it leaves the table once written
        self.wake(task_id)
        return True

    async def drain(self, grace: float, deadline: float, reason: str) -> None:
        """Shutdown's two phases: `grace` seconds to finish, then cancel and wait up to
        `deadline` seconds; a task still running then is recorded lost, and logged."""
        running = [task for task in self.tasks.values() if not task.done()]
        if running and grace > 0:
            _, pending = await asyncio.wait(running, timeout=grace)
            running = list(pending)
        if not running:
            return
        logger.info("closing: cancelling %d running tasks", len(running))
        for task_id, task in list(self.tasks.items()):
            if not task.done():
                self.cancel(task_id, reason)
        if deadline > 0:
            await asyncio.wait(running, timeout=deadline)
        else:
            await asyncio.sleep(0)  # one turn to take the cancellation, no more
        lost = TaskError("TaskLost", "did not stop within the shutdown deadline")
        for row in self.running_rows():
            task_id = row[TASK_ID]
            logger.warning(
                "task %s (%s) ignored cancellation; abandoned as lost", task_id, row[NAME]
            )
            self.finish(task_id, V_LOST, None, lost)


async def _run(
    table: LocalTable, task_id: str, coro: Coroutine[Any, Any, Any], limit: float | None
) -> None:
    """What each task's `asyncio.Task` runs: the coroutine, then its outcome recorded.

    Few locals on purpose: this frame lives as long as the task, so its size is
    memory (and garbage-collector work) per running task.
    """
    current.set((table, task_id))
    try:
        result = await coro if limit is None else await _run_limited(task_id, limit, coro)
    except BaseException as exc:
        if table.failed(task_id, exc):
            raise
        return
    table.complete(task_id, result)


async def _run_limited(task_id: str, max_runtime: float, coro: Coroutine[Any, Any, Any]) -> Any:
    scope = asyncio.timeout(max_runtime)
    try:
        async with scope:
            return await coro
    except TimeoutError:
        if scope.expired():
            raise MaxRuntimeExceeded(task_id, max_runtime) from None
        raise
