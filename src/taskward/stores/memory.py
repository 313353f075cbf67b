"""The in-process store: the default, no server needed.

Records live in dicts as the owners' rows (plain tuples, see
`taskward.stores.base`), running and terminal alike: they are the truth in one
process, and every read returns a fresh `TaskRecord`. The garbage collector
stops tracking such a tuple (when its result is a plain value too), so
thousands of kept results cost a full collection nothing.

Every record gets a *position* when the store first sees it: a number that
only grows, so positions are creation order. Listings read indexes of
positions (all tasks, by user, by item, by status), each a list kept sorted,
newest last: a page seeks its cursor (a position) by bisection and reads
newest first from there, so the first page of any listing costs the same
whether a thousand records are kept or a million, and so does a page from a
cursor. A new record's position is the largest yet, so entering it is an
append; only a finished status takes its tasks in finish order, each put in
its place by `insort` (a move of the newer entries, in C). A record leaving an index (a task finishing leaves the running one,
an evicted record leaves them all) is not cut out of the list: its position
goes in the index's set of departed ones, which readers skip, and the list
is rebuilt without them once they are as many as the rest (so an index is
at most about twice what it holds, and rebuilding costs under two steps per
departure). Finished records sit in a queue ordered by finish time and are
evicted by age (`result_ttl`) and count (`max_finished`), taking their index
entries and output with them: memory stays flat under endless load.

One `MemoryStore` may be shared by several managers in a process (each an
"instance"); liveness then works as in Redis, with deadlines instead of TTLs,
and so do stop requests: the store keeps a request on its copy of the record
(an owner's later writes do not erase it) and in the owner's pending stops. The
owner of a running task is a known instance from that task's first write (it
is reaped if it never heartbeats, as in Redis). The running tasks of an instance are found by a scan when it dies or closes, or
when `instances()` counts them, which is rare, instead of an index every task
would pay for.
"""

from __future__ import annotations

import heapq
import time
import uuid
from bisect import bisect_left, insort
from collections import Counter, deque
from dataclasses import replace as changed
from itertools import filterfalse
from typing import TYPE_CHECKING, Any

from .._live import (
    ERROR,
    FINISHED_AT,
    INSTANCE_ID,
    ITEM_ID,
    NAME,
    REDIRECT,
    RESULT,
    STATUS,
    STOP_REQUESTED_AT,
    TASK_ID,
    USER_ID,
    V_LOST,
    V_RUNNING,
    finished,
    replace,
    snapshot,
)
from .._records import OutputChunk, TaskError, TaskRecord, TaskStatus
from .base import Delivery, InstanceInfo, Page, Retention, Row, WriteBatch

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["MemoryStore"]

# Departed entries an index may hold beyond as many as it has live ones, so a
# small index is not rebuilt at every departure.
_SLACK = 64


class _Index:
    """The positions of one index's tasks, ascending, and those of tasks that left it.

    A task new to the store has the largest position yet, so entering it is an
    append; only a finished status takes tasks in another order (`insort`).
    """

    __slots__ = ("departed", "positions")

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.departed: set[int] = set()

    def __len__(self) -> int:
        """How many tasks are in the index."""
        return len(self.positions) - len(self.departed)

    def tidy(self) -> None:
        """Rebuild the list without the departed entries once they are as many as
        the rest (in place: the list stays the same object)."""
        departed = self.departed
        if 2 * len(departed) > len(self.positions) + _SLACK:
            self.positions[:] = filterfalse(departed.__contains__, self.positions)
            departed.clear()

    def newest_first(self, before: int | None) -> Iterator[int]:
        """Positions in the index, below `before` if given, newest first."""
        positions = self.positions
        departed = self.departed
        k = len(positions) if before is None else bisect_left(positions, before)
        while k:
            k -= 1
            position = positions[k]
            if position not in departed:
                yield position


def _enter(indexes: dict[str, _Index], key: str, position: int) -> None:
    """A new task, at `position`, enters the index of `key`."""
    index = indexes.get(key)
    if index is None:
        index = indexes[key] = _Index()
    index.positions.append(position)


def _leave(indexes: dict[str, _Index], key: str, position: int) -> None:
    """The task at `position` leaves the index of `key`; an emptied index goes."""
    index = indexes[key]
    if len(index) == 1:
        del indexes[key]
    else:
        index.departed.add(position)
        index.tidy()


class MemoryStore:
    """A `Store` in this process's memory; an `InProcessStore`."""

    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._live: dict[str, Row] = {}  # running, in creation order
        self._done: dict[str, Row] = {}  # terminal
        self._order: dict[str, int] = {}  # task id -> its position
        self._at: dict[int, str] = {}  # position -> task id
        self._seq = 0  # the last position given
        self._all = _Index()
        self._by_status = {status.value: _Index() for status in TaskStatus}
        self._by_user: dict[str, _Index] = {}
        self._by_item: dict[str, _Index] = {}
        self._finished: deque[str] = deque()  # terminal task ids, oldest finished first
        self._outputs: dict[str, deque[OutputChunk]] = {}
        # Instance id -> liveness deadline (monotonic); 0.0 for an owner of running
        # tasks that never heartbeat (it is reaped as dead).
        self._alive: dict[str, float] = {}
        self._beats: dict[str, float] = {}  # instance id -> last heartbeat (Unix time)
        self._stops: dict[str, dict[str, None]] = {}
        # The delivery queue: deliveries by id, and when each is due (Unix time).
        self._deliveries: dict[str, Delivery] = {}
        self._due: dict[str, float] = {}
        # (due, id) of every due time given; an entry whose time is no longer the
        # delivery's (retried, claimed, ended) is skipped when it comes up.
        self._due_heap: list[tuple[float, str]] = []

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
        at = self._at
        every = self._all.positions
        by_user = self._by_user
        by_item = self._by_item
        by_status = self._by_status
        running = by_status[V_RUNNING]
        alive = self._alive
        finished = self._finished
        stops = self._stops
        seq = self._seq
        for rec in batch.records:
            task_id = rec[TASK_ID]
            status = rec[STATUS]
            stored = live.get(task_id)
            if stored is None:
                if task_id in order:
                    continue  # terminal here, and terminal states never change
                if rec[REDIRECT] is not None:
                    rec = replace(rec, {REDIRECT: None})  # only set_redirect sets it
                seq += 1
                position = seq
                order[task_id] = position
                at[position] = task_id
                every.append(position)
                if rec[USER_ID] is not None:
                    _enter(by_user, rec[USER_ID], position)
                if rec[ITEM_ID] is not None:
                    _enter(by_item, rec[ITEM_ID], position)
                if status == V_RUNNING:
                    live[task_id] = rec
                    running.positions.append(position)
                    alive.setdefault(rec[INSTANCE_ID], 0.0)
                    continue
            else:
                if stored[STOP_REQUESTED_AT] is not None and rec[STOP_REQUESTED_AT] is None:
                    # Asked here, not yet seen by the owner: the request stays.
                    rec = replace(rec, {STOP_REQUESTED_AT: stored[STOP_REQUESTED_AT]})
                if rec[REDIRECT] is not stored[REDIRECT]:
                    rec = replace(rec, {REDIRECT: stored[REDIRECT]})  # the store's own
                if status == V_RUNNING:
                    live[task_id] = rec
                    continue
                # just finished
                if rec[REDIRECT] is not None:
                    rec = self._enqueue(rec, rec[FINISHED_AT] or batch.now or time.time())
                del live[task_id]
                position = order[task_id]
                running.departed.add(position)
                if stops:
                    _discard(stops, rec[INSTANCE_ID], task_id)
            insort(by_status[status].positions, position)
            done[task_id] = rec
            finished.append(task_id)
        self._seq = seq
        running.tidy()
        for task_id, chunks in batch.outputs.items():
            if task_id not in live and task_id not in done:
                continue
            stream = self._outputs.get(task_id)
            if stream is None:
                stream = self._outputs[task_id] = deque(maxlen=self.retention.max_output)
            elif stream and chunks and chunks[0].seq <= stream[-1].seq:
                last = stream[-1].seq  # sent again: what is kept stays as it is
                chunks = [chunk for chunk in chunks if chunk.seq > last]
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
        at = self._at
        every = self._all
        by_status = self._by_status
        outputs = self._outputs
        statuses: set[str] = set()
        for task_id in gone:
            rec = done.pop(task_id)
            position = order.pop(task_id)
            del at[position]
            every.departed.add(position)
            statuses.add(rec[STATUS])
            by_status[rec[STATUS]].departed.add(position)
            if rec[USER_ID] is not None:
                _leave(self._by_user, rec[USER_ID], position)
            if rec[ITEM_ID] is not None:
                _leave(self._by_item, rec[ITEM_ID], position)
            if outputs:
                outputs.pop(task_id, None)
        every.tidy()
        for status in statuses:  # only the indexes these left
            by_status[status].tidy()

    # -- reads ----------------------------------------------------------------

    def peek(self, task_id: str) -> TaskRecord | None:
        """`get` without the coroutine, for the manager: a fresh record or None."""
        rec = self._live.get(task_id) or self.kept(task_id)
        if rec is None:
            if task_id in self._done:  # expired: gone for readers, whether or not writes come
                self._evict(time.time())
            return None
        return snapshot(rec)

    def kept(self, task_id: str) -> Row | None:
        """A terminal task's row as kept (a tuple: nothing to copy), or None.

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
        before = _decode_cursor(cursor) if cursor is not None else None
        if self._finished:
            self._evict(time.time())
        value = None if status is None else TaskStatus(status).value
        # The smallest index of the filters given; the others are checked per record.
        index = self._all
        for candidate in (
            None if user_id is None else self._by_user.get(user_id, _EMPTY),
            None if item_id is None else self._by_item.get(item_id, _EMPTY),
            None if value is None else self._by_status[value],
        ):
            if candidate is not None and (index is self._all or len(candidate) < len(index)):
                index = candidate
        at = self._at
        live = self._live
        done = self._done
        out: list[TaskRecord] = []
        more = False
        for position in index.newest_first(before):
            if len(out) == limit:
                more = True
                break
            task_id = at[position]
            rec = live.get(task_id) or done[task_id]
            if (
                (user_id is None or rec[USER_ID] == user_id)
                and (item_id is None or rec[ITEM_ID] == item_id)
                and (value is None or rec[STATUS] == value)
            ):
                out.append(snapshot(rec))
        next_cursor = str(self._order[out[-1].task_id]) if more else None
        return Page(out, next_cursor)

    async def counts(self) -> dict[TaskStatus, int]:
        if self._finished:
            self._evict(time.time())
        return {status: len(self._by_status[status.value]) for status in TaskStatus}

    async def running_ids_by_item(self, item_id: str) -> list[str]:
        index = self._by_item.get(item_id)
        if index is None:
            return []
        at = self._at
        live = self._live
        departed = index.departed
        return [
            task_id
            for position in index.positions
            if position not in departed and (task_id := at[position]) in live
        ]

    async def read_output(
        self, task_id: str, after: int = 0, limit: int = 1000
    ) -> list[OutputChunk]:
        if self._finished:
            self._evict(time.time())
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
        self, instance_id: str, ttl: float, running: Sequence[Row] | None = None
    ) -> bool:
        was_alive = self._alive.get(instance_id, 0.0) > time.monotonic()
        self._alive[instance_id] = time.monotonic() + ttl
        self._beats[instance_id] = time.time()
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
            self._forget(instance_id)
        return lost

    async def retire(self, instance_id: str) -> None:
        if any(rec[INSTANCE_ID] == instance_id for rec in self._live.values()):
            self._alive[instance_id] = 0.0  # tasks still running: leave them to the reaper
            return
        self._forget(instance_id)

    def _forget(self, instance_id: str) -> None:
        self._alive.pop(instance_id, None)
        self._beats.pop(instance_id, None)
        self._stops.pop(instance_id, None)

    async def instances(self) -> list[InstanceInfo]:
        clock = time.monotonic()
        running = Counter(rec[INSTANCE_ID] for rec in self._live.values())
        return [
            InstanceInfo(
                instance_id, deadline > clock, running[instance_id], self._beats.get(instance_id)
            )
            for instance_id, deadline in sorted(self._alive.items())
        ]

    # -- redirects and the delivery queue ---------------------------------------

    async def set_redirect(
        self, task_id: str, target: dict[str, Any], at: float, user_id: str | None = None
    ) -> TaskRecord | None:
        row = self._live.get(task_id) or self.kept(task_id)
        if row is None or (user_id is not None and row[USER_ID] != user_id):
            return None
        if row[STATUS] == V_RUNNING:
            row = self._live[task_id] = replace(row, {REDIRECT: dict(target)})
            return snapshot(row)
        old = row[REDIRECT]
        if old is None or old["delivery_id"] is None or not _same_target(old, target):
            row = self._done[task_id] = self._enqueue(replace(row, {REDIRECT: dict(target)}), at)
        return snapshot(row)

    def _enqueue(self, row: Row, at: float) -> Row:
        """`row` (terminal, with a redirect) with its delivery enqueued, due at `at`."""
        rd = row[REDIRECT]
        delivery_id = "dlv_" + uuid.uuid4().hex
        self._deliveries[delivery_id] = Delivery(
            delivery_id,
            row[TASK_ID],
            rd["channel_id"],
            rd["platform"],
            rd["max_chars"],
            at,
            0,
            "",
            TaskStatus(row[STATUS]),
            row[NAME],
            row[RESULT],
            row[ERROR],
            row[USER_ID],
            row[ITEM_ID],
            row[FINISHED_AT],
        )
        self._set_due(delivery_id, at)
        rd = {**rd, "delivery_id": delivery_id, "state": "pending", "enqueued_at": at}
        return replace(row, {REDIRECT: rd})

    def _set_due(self, delivery_id: str, at: float) -> None:
        self._due[delivery_id] = at
        heapq.heappush(self._due_heap, (at, delivery_id))

    def _record_delivery(self, delivery: Delivery, **state: Any) -> None:
        """Write a delivery's state on its record's redirect, if that still names it."""
        row = self._done.get(delivery.task_id)
        if row is None:
            return
        rd = row[REDIRECT]
        if rd is not None and rd["delivery_id"] == delivery.delivery_id:
            self._done[delivery.task_id] = replace(row, {REDIRECT: {**rd, **state}})

    async def claim_deliveries(self, now: float, lease: float, limit: int) -> list[Delivery]:
        heap = self._due_heap
        due: list[str] = []
        while heap and heap[0][0] <= now and len(due) < limit:
            at, delivery_id = heapq.heappop(heap)
            if self._due.get(delivery_id) == at and delivery_id not in due:
                due.append(delivery_id)
        claimed: list[Delivery] = []
        for delivery_id in due:
            delivery = changed(
                self._deliveries[delivery_id],
                attempts=self._deliveries[delivery_id].attempts + 1,
                token=uuid.uuid4().hex,
            )
            self._deliveries[delivery_id] = delivery
            self._set_due(delivery_id, now + lease)
            self._record_delivery(delivery, attempts=delivery.attempts)
            claimed.append(delivery)
        return claimed

    def _holds(self, delivery: Delivery) -> bool:
        kept = self._deliveries.get(delivery.delivery_id)
        return kept is not None and kept.token == delivery.token

    async def retry_delivery(self, delivery: Delivery, due: float, error: str) -> bool:
        if not self._holds(delivery):
            return False
        self._deliveries[delivery.delivery_id] = changed(delivery, token="")
        self._set_due(delivery.delivery_id, due)
        self._record_delivery(delivery, last_error=error)
        return True

    async def end_delivery(
        self, delivery: Delivery, delivered: bool, error: str | None, at: float
    ) -> bool:
        if not self._holds(delivery):
            return False
        del self._deliveries[delivery.delivery_id]
        del self._due[delivery.delivery_id]
        state: dict[str, Any] = {"state": "delivered" if delivered else "failed", "done_at": at}
        if error is not None:
            state["last_error"] = error
        self._record_delivery(delivery, **state)
        return True

    async def pending_deliveries(self) -> int:
        return len(self._deliveries)


_EMPTY = _Index()  # the index of a user or item without tasks


def _same_target(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return all(old[k] == new[k] for k in ("channel_id", "platform", "max_chars"))


def _discard(index: dict[str, dict[str, None]], key: str, task_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.pop(task_id, None)
        if not ids:
            del index[key]


def _decode_cursor(cursor: object) -> int:
    """The position of the last task of the previous page."""
    if not isinstance(cursor, str):
        raise TypeError(f"cursor must be a str, not {type(cursor).__name__}")
    if not cursor.isdigit() or len(cursor) > 20:
        raise ValueError(f"malformed cursor {cursor!r}")
    return int(cursor)
