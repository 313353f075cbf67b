"""The in-process store: the default, no server needed.

Records live in dicts; the owner's live record objects are kept (they are the
truth in one process) and every read returns a copy. Indexes are insertion
ordered dicts (creation order), so listing walks an index, never every record.
Finished records sit in a queue ordered by finish time and are evicted by age
(`result_ttl`) and count (`max_finished`), taking their index entries and output
with them: memory stays flat under endless load.

One `MemoryStore` may be shared by several managers in a process (each an
"instance"); liveness then works as in Redis, with deadlines instead of TTLs.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from .._records import OutputChunk, TaskError, TaskRecord, TaskStatus
from .base import Page, Retention, WriteBatch

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["MemoryStore"]

_RUNNING = TaskStatus.RUNNING


class _Index:
    """Task ids by user, item and status, each in creation order."""

    __slots__ = ("by_item", "by_status", "by_user")

    def __init__(self) -> None:
        self.by_user: dict[str, dict[str, None]] = {}
        self.by_item: dict[str, dict[str, None]] = {}
        self.by_status: dict[TaskStatus, dict[str, None]] = {s: {} for s in TaskStatus}

    def add(self, rec: TaskRecord) -> None:
        if rec.user_id is not None:
            self.by_user.setdefault(rec.user_id, {})[rec.task_id] = None
        if rec.item_id is not None:
            self.by_item.setdefault(rec.item_id, {})[rec.task_id] = None
        self.by_status[rec.status][rec.task_id] = None

    def remove(self, rec: TaskRecord) -> None:
        _discard(self.by_user, rec.user_id, rec.task_id)
        _discard(self.by_item, rec.item_id, rec.task_id)
        self.by_status[rec.status].pop(rec.task_id, None)


def _discard(index: dict[str, dict[str, None]], key: str | None, task_id: str) -> None:
    if key is None:
        return
    ids = index.get(key)
    if ids is not None:
        ids.pop(task_id, None)
        if not ids:
            del index[key]


class MemoryStore:
    """A `Store` in this process's memory."""

    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._records: dict[str, TaskRecord] = {}
        self._index = _Index()
        self._finished: deque[TaskRecord] = deque()  # terminal records, oldest finished first
        self._order: dict[str, int] = {}  # task id -> position in creation order (the cursor)
        self._seq = 0
        self._outputs: dict[str, deque[OutputChunk]] = {}
        self._alive: dict[str, float] = {}  # instance id -> deadline (monotonic)
        self._instance_tasks: dict[str, dict[str, None]] = {}
        self._stops: dict[str, dict[str, None]] = {}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # -- writes ---------------------------------------------------------------

    async def save(self, batch: WriteBatch) -> None:
        self.save_now(batch)

    def save_now(self, batch: WriteBatch) -> None:
        """`save` without the coroutine: the memory store never waits."""
        records = self._records
        order = self._order
        index = self._index
        by_status = index.by_status
        running = by_status[_RUNNING]
        finished = self._finished
        seq = self._seq
        for rec in batch.records:
            task_id = rec.task_id
            status = rec.status
            if task_id not in records:  # new here
                records[task_id] = rec
                seq += 1
                order[task_id] = seq
                if rec.user_id is not None:
                    index.by_user.setdefault(rec.user_id, {})[task_id] = None
                if rec.item_id is not None:
                    index.by_item.setdefault(rec.item_id, {})[task_id] = None
                by_status[status][task_id] = None
                if status is _RUNNING:
                    self._instance_tasks.setdefault(rec.instance_id, {})[task_id] = None
                else:
                    finished.append(rec)
            elif records[task_id] is not rec and not self._replace(rec):
                continue
            elif status is not _RUNNING and task_id in running:  # just finished
                del running[task_id]
                by_status[status][task_id] = None
                _discard(self._instance_tasks, rec.instance_id, task_id)
                _discard(self._stops, rec.instance_id, task_id)
                finished.append(rec)
        self._seq = seq
        for task_id, chunks in batch.outputs.items():
            if task_id not in records:
                continue
            stream = self._outputs.get(task_id)
            if stream is None:
                stream = self._outputs[task_id] = deque(maxlen=self.retention.max_output)
            stream.extend(chunks)
        if finished:
            self._evict(batch.now or time.time())

    def _replace(self, rec: TaskRecord) -> bool:
        """A new object for a known id: take it, unless the stored one is terminal.

        Returns whether the caller should go on to index a status change.
        """
        stored = self._records[rec.task_id]
        if stored.status is not _RUNNING:
            return False  # terminal states never change
        self._records[rec.task_id] = rec
        return True

    def _evict(self, now: float) -> None:
        finished = self._finished
        cutoff = now - self.retention.result_ttl
        excess = len(finished) - self.retention.max_finished
        while finished:
            rec = finished[0]
            if excess <= 0 and (rec.finished_at or 0.0) > cutoff:
                break
            finished.popleft()
            excess -= 1
            task_id = rec.task_id
            del self._records[task_id]
            del self._order[task_id]
            self._index.remove(rec)
            self._outputs.pop(task_id, None)

    # -- reads ----------------------------------------------------------------

    def peek(self, task_id: str) -> TaskRecord | None:
        """The stored record itself, without a copy: for the manager, which copies."""
        rec = self._records.get(task_id)
        if (
            rec is not None
            and rec.finished_at is not None
            and rec.finished_at + self.retention.result_ttl <= time.time()
        ):
            self._evict(time.time())  # expired: gone for readers, whether or not writes come
            return None
        return rec

    async def get(self, task_id: str) -> TaskRecord | None:
        rec = self.peek(task_id)
        return None if rec is None else rec.copy()

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        return [None if (rec := self.peek(i)) is None else rec.copy() for i in task_ids]

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
        candidates: list[dict[str, None]] = []
        if user_id is not None:
            candidates.append(self._index.by_user.get(user_id, {}))
        if item_id is not None:
            candidates.append(self._index.by_item.get(item_id, {}))
        if status is not None:
            candidates.append(self._index.by_status[TaskStatus(status)])
        if candidates:
            smallest = candidates[0]
            for ids_of in candidates[1:]:
                if len(ids_of) < len(smallest):
                    smallest = ids_of
            if status is not None and status is not _RUNNING and smallest is candidates[-1]:
                # A finished-status index is in finish order: list by creation.
                ids: Sequence[str] = sorted(smallest, key=self._order.__getitem__)
            else:
                ids = list(smallest)
        else:
            ids = list(self._records)
        before = _decode_cursor(cursor) if cursor is not None else None
        order = self._order
        out: list[TaskRecord] = []
        pos = len(ids) - 1
        if before is not None:
            while pos >= 0 and order[ids[pos]] >= before:
                pos -= 1
        while pos >= 0 and len(out) < limit:
            rec = self._records[ids[pos]]
            if (
                (user_id is None or rec.user_id == user_id)
                and (item_id is None or rec.item_id == item_id)
                and (status is None or rec.status == status)
            ):
                out.append(rec.copy())
            pos -= 1
        next_cursor = str(order[out[-1].task_id]) if pos >= 0 and out else None
        return Page(out, next_cursor)

    async def running_ids_by_item(self, item_id: str) -> list[str]:
        ids = self._index.by_item.get(item_id, {})
        records = self._records
        return [task_id for task_id in ids if records[task_id].status is _RUNNING]

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
        rec = self._records.get(task_id)
        if rec is None or (user_id is not None and rec.user_id != user_id):
            return None
        if rec.status is _RUNNING and rec.stop_requested_at is None:
            rec.stop_requested_at = at
            self._stops.setdefault(rec.instance_id, {})[task_id] = None
        return rec.copy()

    async def pending_stops(self, instance_id: str) -> list[str]:
        return list(self._stops.get(instance_id, ()))

    async def heartbeat(
        self, instance_id: str, ttl: float, running: Sequence[TaskRecord] | None = None
    ) -> bool:
        was_alive = self._alive.get(instance_id, 0.0) > time.monotonic()
        self._alive[instance_id] = time.monotonic() + ttl
        if running:
            self.save_now(WriteBatch(records=[r for r in running if not r.is_terminal]))
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
            for task_id in self._instance_tasks.pop(instance_id, {}):
                rec = self._records[task_id]
                rec.status = TaskStatus.LOST
                rec.finished_at = rec.updated_at = now
                rec.error = TaskError(
                    "TaskLost", f"task {task_id!r} was lost with its instance {instance_id!r}"
                )
                batch.records.append(rec)
                lost.append(rec.copy())
            self.save_now(batch)
            self._stops.pop(instance_id, None)
        return lost

    async def retire(self, instance_id: str) -> None:
        if self._instance_tasks.get(instance_id):
            self._alive[instance_id] = 0.0  # tasks still running: leave them to the reaper
            return
        self._alive.pop(instance_id, None)
        self._instance_tasks.pop(instance_id, None)
        self._stops.pop(instance_id, None)


def _decode_cursor(cursor: object) -> int:
    """The creation position of the last task of the previous page."""
    if not isinstance(cursor, str):
        raise TypeError(f"cursor must be a str, not {type(cursor).__name__}")
    if not cursor.isdigit() or len(cursor) > 20:
        raise ValueError(f"malformed cursor {cursor!r}")
    return int(cursor)
