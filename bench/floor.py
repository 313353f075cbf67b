"""How close taskward is to the least that tracking a task can cost.

`bench/lifecycle.py` compares taskward with bare `asyncio.create_task`, which
tracks nothing. This benchmark adds a yardstick between the two: `Floor`, a
model that does only what issue 2's rules require of every task and nothing
more, written as lean as Python allows:

- a random uuid4 id (taskward's own generator);
- a record made at creation and replaced by its final state at the end (the
  same plain tuple as taskward's, so the collector can untrack it);
- a wrapper coroutine that makes the task's id visible to code inside it (a
  context variable, as `report_progress` needs) and records the outcome inside
  the task, not in a callback (DESIGN.md, rule 3);
- waiting for a result on a future per waiter;
- finished records kept up to a count, the oldest finished dropped first.

Left out, and in taskward: argument checks, indexes by item, user and status,
listing in creation order with cursors, the result TTL, stop requests and
their bookkeeping, events, output streams, and the write-behind flush that lets
the same code run against Redis. So the model is not a usable task manager; it
shows how much of taskward's cost per task any design under those rules pays.

    python bench/floor.py [--sizes 10000 100000] [--repeat 8]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from lifecycle import bare_asyncio, best_of, trivial, with_taskward
from taskward import TaskManager
from taskward._ids import new_task_id
from taskward._live import (
    FINISHED_AT,
    RESULT,
    STATUS,
    V_COMPLETED,
    V_FAILED,
    V_RUNNING,
    finished,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

_current: ContextVar[tuple[Floor, str] | None] = ContextVar("floor_current", default=None)
_time = time.time


async def _run(floor: Floor, task_id: str, coro: Coroutine[Any, Any, Any]) -> Any:
    _current.set((floor, task_id))
    try:
        result = await coro
    except BaseException:
        floor.finish(task_id, V_FAILED, None)
        raise
    floor.finish(task_id, V_COMPLETED, result)
    return result


class Floor:
    """The model: tracked tasks with the rules' minimum and nothing else."""

    def __init__(self, max_finished: int) -> None:
        self.max_finished = max_finished
        self.running: dict[str, tuple[Any, ...]] = {}
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.done: dict[str, tuple[Any, ...]] = {}
        self.finished: deque[str] = deque()
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.spawn = asyncio.get_running_loop().create_task

    async def create_task(self, coro: Coroutine[Any, Any, Any]) -> str:
        now = _time()
        task_id = new_task_id()
        # Built in one go, as taskward does; the last ten fields are unset.
        self.running[task_id] = (
            task_id, V_RUNNING, "", None, None, "", "", "floor", now, now, now,
            None, None, None, None, None, None, None, None, None, None,
        )  # fmt: skip
        self.tasks[task_id] = self.spawn(_run(self, task_id, coro))
        return task_id

    def finish(self, task_id: str, status: str, result: Any) -> None:
        del self.tasks[task_id]
        rec = self.running.pop(task_id)
        self.done[task_id] = finished(rec, status, result, None, _time())
        order = self.finished
        order.append(task_id)
        if len(order) > self.max_finished:
            del self.done[order.popleft()]
        if self.waiters:
            for fut in self.waiters.pop(task_id, ()):
                if not fut.done():
                    fut.set_result(None)

    async def result(self, task_id: str) -> Any:
        while True:
            rec = self.done.get(task_id)
            if rec is not None:
                if rec[STATUS] == V_COMPLETED and rec[FINISHED_AT] is not None:
                    return rec[RESULT]
                raise RuntimeError(f"task {task_id} ended {rec[STATUS]}")
            if task_id not in self.running:
                raise KeyError(task_id)
            fut = asyncio.get_running_loop().create_future()
            self.waiters.setdefault(task_id, []).append(fut)
            await fut


def with_floor(floor: Floor) -> Callable[[int], Awaitable[None]]:
    async def run(n: int) -> None:
        ids = [await floor.create_task(trivial(i)) for i in range(n)]
        for i, task_id in enumerate(ids):
            if await floor.result(task_id) != i:
                raise AssertionError("wrong result")

    return run


async def main(sizes: list[int], repeat: int) -> None:
    print(f"best of {repeat} interleaved rounds; microseconds per task, create to result")
    print(f"{'tasks':>8}  {'asyncio':>8}  {'floor':>14}  {'taskward':>14}  {'taskward/floor':>14}")
    for n in sizes:
        async with TaskManager(max_finished=n) as tm:
            best = await best_of([bare_asyncio, with_floor(Floor(n)), with_taskward(tm)], n, repeat)
        (base, _), (floor, _), (ours, _) = best
        print(
            f"{n:>8}  {base:>8.2f}  {floor:>6.2f} ({floor / base:.2f}x)"
            f"  {ours:>6.2f} ({ours / base:.2f}x)  {ours / floor:>13.2f}x"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.repeat))
