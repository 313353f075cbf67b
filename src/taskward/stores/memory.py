"""The in-process store: the default, no server needed.

Records live in dicts as the owners' live records (plain tuples, see
`_live.py`), running and terminal alike: they are the truth in one process, and
every read returns a fresh `TaskRecord`. The garbage collector stops tracking
such a tuple (when its result is a plain value too), so thousands of kept
results cost a full collection nothing. Indexes are insertion ordered dicts
(creation order), so listing walks an index, never every record; the table of
running records is itself the running index. Finished
records sit in a queue ordered by finish time and are evicted by age
(`result_ttl`) and count (`max_finished`), taking their index entries and output
with them: memory stays flat under endless load.

One `MemoryStore` may be shared by several managers in a process (each an
"instance"); liveness then works as in Redis, with deadlines instead of TTLs,
and so do stop requests: the store keeps a request on its copy of the record
(an owner's later writes do not erase it) and in the owner's pending stops. The
running tasks of an instance are found by a scan when it dies or closes, which
is rare, instead of an index every task would pay for.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .._live import (
    FINISHED_AT,
    INSTANCE_ID,
    ITEM_ID,
    STATUS,
    STOP_REQUESTED_AT,
    TASK_ID,
    USER_ID,
    V_LOST,
    V_RUNNING,
    Live,
    finished,
    replace,
    snapshot,
)
from .._records import OutputChunk, TaskError, TaskRecord, TaskStatus
from .base import Page, Retention, WriteBatch

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["MemoryStore"]


class _Index:
    """Task ids by user and by item, each in creation order.

    Not by status: the running tasks are the keys of `MemoryStore._live` (in
    creation order too), and a listing by a finished status filters the finished
    records, which it has to sort by creation anyway (they are kept in finish
    order). Every task would pay for such an index; few listings would use it.
    """

    __slots__ = ("by_item", "by_user")

    def __init__(self) -> None:
        self.by_user: dict[str, dict[str, None]] = {}
        self.by_item: dict[str, dict[str, None]] = {}


def _discard(index: dict[str, dict[str, None]], key: str, task_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.pop(task_id, None)
        if not ids:
            del index[key]


class MemoryStore:
    """A `Store` in this process's memory."""

    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._live: dict[str, Live] = {}  # running, in creation order
        self._done: dict[str, Live] = {}  # terminal
        self._index = _Index()
        self._finished: deque[str] = deque()  # terminal task ids, oldest finished first
        self._order: dict[str, int] = {}  # task id -> position in creation order (the cursor)
        self._seq = 0
        self._outputs: dict[str, deque[OutputChunk]] = {}
        self._alive: dict[str, float] = {}  # instance id -> deadline (monotonic)
        self._stops: dict[str, dict[str, None]] = {}

    def __len__(self) -> int:
        """Records kept, running and terminal."""
        return len(self._live) + len(self._done)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._live or task_id in self._done

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # -- writes ---------------------------------------------------------------

    async def save(self, batch: WriteBatch) -> None:
        self.save_now(batch)

    def save_now(self, batch: WriteBatch) -> None:
        """`save` without the coroutine: the memory store never waits."""
        live = self._live
        done = self._done
        order = self._order
        index = self._index
        finished = self._finished
        stops = self._stops
        seq = self._seq
        for rec in batch.records:
            task_id = rec[TASK_ID]
            status = rec[STATUS]
            stored = live.get(task_id)
            if stored is None:
                # New here, it takes the next position; known, it is terminal here
                # (positions only grow, so a known one is smaller).
                if order.setdefault(task_id, seq + 1) <= seq:
                    continue  # terminal states never change
                seq += 1
                user_id = rec[USER_ID]
                if user_id is not None:
                    index.by_user.setdefault(user_id, {})[task_id] = None
                item_id = rec[ITEM_ID]
                if item_id is not None:
                    index.by_item.setdefault(item_id, {})[task_id] = None
                if status == V_RUNNING:
                    live[task_id] = rec
                    continue
            else:
                if stored[STOP_REQUESTED_AT] is not None and rec[STOP_REQUESTED_AT] is None:
                    # Asked here, not yet seen by the owner: the request stays.
                    rec = replace(rec, {STOP_REQUESTED_AT: stored[STOP_REQUESTED_AT]})
                if status == V_RUNNING:
                    live[task_id] = rec
                    continue
                # just finished
                del live[task_id]
                if stops:
                    _discard(stops, rec[INSTANCE_ID], task_id)
            done[task_id] = rec
            finished.append(task_id)
        self._seq = seq
        for task_id, chunks in batch.outputs.items():
            if task_id not in live and task_id not in done:
                continue
            stream = self._outputs.get(task_id)
            if stream is None:
                stream = self._outputs[task_id] = deque(maxlen=self.retention.max_output)
            stream.extend(chunks)
        if finished:
            self._evict(batch.now or time.time())

    def _evict(self, now: float) -> None:
        """Drop the finished records beyond `max_finished` and those past `result_ttl`,
        oldest finished first, with their index entries and output."""
        finished = self._finished
        excess = len(finished) - self.retention.max_finished
        cutoff = now - self.retention.result_ttl
        done = self._done
        gone: list[str] = []
        while finished and (excess > 0 or (done[finished[0]][FINISHED_AT] or 0.0) <= cutoff):
            gone.append(finished.popleft())
            excess -= 1
        if gone:
            self._drop(gone)

    def _drop(self, gone: list[str]) -> None:
        """Forget finished tasks taken off `_finished`: records, positions, index
        entries and output."""
        done = self._done
        order = self._order
        by_user = self._index.by_user
        by_item = self._index.by_item
        outputs = self._outputs
        for task_id in gone:
            rec = done.pop(task_id)
            del order[task_id]
            if rec[USER_ID] is not None:
                _discard(by_user, rec[USER_ID], task_id)
            if rec[ITEM_ID] is not None:
                _discard(by_item, rec[ITEM_ID], task_id)
            if outputs:
                outputs.pop(task_id, None)

    # -- reads ----------------------------------------------------------------

    def peek(self, task_id: str) -> TaskRecord | None:
        """`get` without the coroutine, for the manager: a fresh record or None."""
        rec = self._live.get(task_id) or self.kept(task_id)
        if rec is None:
            if task_id in self._done:  # expired: gone for readers, whether or not writes come
                self._evict(time.time())
            return None
        return snapshot(rec)

    def kept(self, task_id: str) -> Live | None:
        """A terminal task's record as kept (a tuple: nothing to copy), or None.

        None when the task is not terminal here (running, unknown or expired).
        """
        rec = self._done.get(task_id)
        if rec is None:
            return None
        finished_at = rec[FINISHED_AT]
        if finished_at is not None and finished_at + self.retention.result_ttl <= time.time():
            return None
        return rec

    async def get(self, task_id: str) -> TaskRecord | None:
        return self.peek(task_id)

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        return [self.peek(task_id) for task_id in task_ids]

    async def query(
        self,
        *,
        user_id: str | None = None,
        item_id: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if self._finished:
            self._evict(time.time())
        value = None if status is None else TaskStatus(status).value
        live = self._live
        done = self._done
        candidates: list[dict[str, Any]] = []
        if user_id is not None:
            candidates.append(self._index.by_user.get(user_id, {}))
        if item_id is not None:
            candidates.append(self._index.by_item.get(item_id, {}))
        if value == V_RUNNING:
            candidates.append(live)
        before = _decode_cursor(cursor) if cursor is not None else None
        order = self._order
        # Newest first, without copying an index: a page costs what it reads.
        newest_first: Iterable[str]
        if candidates:
            smallest: dict[str, Any] = min(candidates, key=len)
            newest_first = reversed(smallest)
        elif value is not None:
            # A finished status: its records, kept in finish order, listed by creation.
            newest_first = sorted(
                (task_id for task_id, rec in done.items() if rec[STATUS] == value),
                key=order.__getitem__,
                reverse=True,
            )
        else:
            newest_first = reversed(order)
        out: list[TaskRecord] = []
        more = False
        for task_id in newest_first:
            if before is not None and order[task_id] >= before:
                continue  # on the pages before this one
            if len(out) == limit:
                more = True
                break
            rec = live.get(task_id) or done[task_id]
            if (
                (user_id is None or rec[USER_ID] == user_id)
                and (item_id is None or rec[ITEM_ID] == item_id)
                and (value is None or rec[STATUS] == value)
            ):
                out.append(snapshot(rec))
        next_cursor = str(order[out[-1].task_id]) if more and out else None
        return Page(out, next_cursor)

    async def running_ids_by_item(self, item_id: str) -> list[str]:
        live = self._live
        return [task_id for task_id in self._index.by_item.get(item_id, {}) if task_id in live]

    async def read_output(
        self, task_id: str, after: int = 0, limit: int = 1000
    ) -> list[OutputChunk]:
        stream = self._outputs.get(task_id)
        if not stream:
            return []
        # seq numbers are contiguous, so the position of `after` is arithmetic.
        skip = max(0, after - stream[0].seq + 1)
        return [stream[i] for i in range(skip, min(len(stream), skip + limit))]

    # -- stops and liveness ----------------------------------------------------

    async def request_stop(
        self, task_id: str, at: float, user_id: str | None = None
    ) -> TaskRecord | None:
        rec = self.peek(task_id)
        if rec is None or (user_id is not None and rec.user_id != user_id):
            return None
        live = self._live.get(task_id)
        if live is not None and live[STOP_REQUESTED_AT] is None:
            self._live[task_id] = replace(live, {STOP_REQUESTED_AT: at})
            rec.stop_requested_at = at
            self._stops.setdefault(live[INSTANCE_ID], {})[task_id] = None
        return rec

    async def pending_stops(self, instance_id: str) -> list[str]:
        return list(self._stops.get(instance_id, ()))

    async def heartbeat(
        self, instance_id: str, ttl: float, running: Sequence[Live] | None = None
    ) -> bool:
        was_alive = self._alive.get(instance_id, 0.0) > time.monotonic()
        self._alive[instance_id] = time.monotonic() + ttl
        if running:
            self.save_now(WriteBatch(records=[r for r in running if r[STATUS] == V_RUNNING]))
        if self._finished:
            self._evict(time.time())
        return was_alive

    async def reap(self, now: float) -> list[TaskRecord]:
        clock = time.monotonic()
        lost: list[TaskRecord] = []
        for instance_id, deadline in list(self._alive.items()):
            if deadline > clock:
                continue
            del self._alive[instance_id]
            batch = WriteBatch(now=now)
            # Scanned, not indexed by instance: an instance dies rarely, tasks
            # start and end all the time.
            for task_id, running in list(self._live.items()):
                if running[INSTANCE_ID] != instance_id:
                    continue
                error = TaskError(
                    "TaskLost", f"task {task_id!r} was lost with its instance {instance_id!r}"
                )
                rec = finished(running, V_LOST, None, error, now)
                batch.records.append(rec)
                lost.append(snapshot(rec))
            self.save_now(batch)
            self._stops.pop(instance_id, None)
        return lost

    async def retire(self, instance_id: str) -> None:
        if any(rec[INSTANCE_ID] == instance_id for rec in self._live.values()):
            self._alive[instance_id] = 0.0  # tasks still running: leave them to the reaper
            return
        self._alive.pop(instance_id, None)
        self._stops.pop(instance_id, None)


def _decode_cursor(cursor: object) -> int:
    """The creation position of the last task of the previous page."""
    if not isinstance(cursor, str):
        raise TypeError(f"cursor must be a str, not {type(cursor).__name__}")
    if not cursor.isdigit() or len(cursor) > 20:
        raise ValueError(f"malformed cursor {cursor!r}")
    return int(cursor)
