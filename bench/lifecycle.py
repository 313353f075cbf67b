"""Create-to-result cost of trivial tasks: taskward vs bare asyncio vs aiojobs.

Each contender starts N trivial coroutines and then collects every result, in
the same process and the same run; the figure is microseconds per task
(best of `--repeat` rounds) and the ratio to bare `asyncio.create_task` + await,
with the part of that round spent in Python's cyclic garbage collector (which
walks every object of every task in flight, so it grows with their number).
taskward's `result()` is the counterpart of `await task` and `job.wait()`; the
last line reads each outcome as a record (`wait()`, a copy per call) instead.
A taskward round ends once its write-behind flush has stored every outcome.

Then the same one task at a time (created, then awaited, before the next), as
an application that is not under load runs them: each round of the write-behind
flush then carries a single task.

    python bench/lifecycle.py [--sizes 10000 100000] [--repeat 8] [--one-at-a-time 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from typing import TYPE_CHECKING

import aiojobs

from taskward import TaskManager

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


async def trivial(i: int) -> int:
    return i


async def bare_asyncio(n: int) -> None:
    tasks = [asyncio.create_task(trivial(i)) for i in range(n)]
    for i, task in enumerate(tasks):
        if await task != i:
            raise AssertionError("wrong result")


async def with_aiojobs(n: int) -> None:
    scheduler = aiojobs.Scheduler(limit=None, pending_limit=0)
    try:
        jobs = [await scheduler.spawn(trivial(i)) for i in range(n)]
        for i, job in enumerate(jobs):
            if await job.wait() != i:
                raise AssertionError("wrong result")
    finally:
        await scheduler.close()


def with_taskward(tm: TaskManager) -> Callable[[int], Awaitable[None]]:
    async def run(n: int) -> None:
        ids = [await tm.create_task(trivial(i)) for i in range(n)]
        for i, task_id in enumerate(ids):
            if await tm.result(task_id) != i:
                raise AssertionError("wrong result")
        await settled(tm)

    return run


def with_taskward_records(tm: TaskManager) -> Callable[[int], Awaitable[None]]:
    async def run(n: int) -> None:
        ids = [await tm.create_task(trivial(i)) for i in range(n)]
        for i, task_id in enumerate(ids):
            if (await tm.wait(task_id)).result != i:
                raise AssertionError("wrong result")
        await settled(tm)

    return run


async def bare_asyncio_one_by_one(n: int) -> None:
    for i in range(n):
        if await asyncio.create_task(trivial(i)) != i:
            raise AssertionError("wrong result")


async def with_aiojobs_one_by_one(n: int) -> None:
    scheduler = aiojobs.Scheduler(limit=None, pending_limit=0)
    try:
        for i in range(n):
            if await (await scheduler.spawn(trivial(i))).wait() != i:
                raise AssertionError("wrong result")
    finally:
        await scheduler.close()


def with_taskward_one_by_one(tm: TaskManager) -> Callable[[int], Awaitable[None]]:
    async def run(n: int) -> None:
        for i in range(n):
            if await tm.result(await tm.create_task(trivial(i))) != i:
                raise AssertionError("wrong result")
        await settled(tm)

    return run


async def settled(tm: TaskManager) -> None:
    """Wait for the write-behind flush of the round (it stores every outcome), so the
    round pays for it rather than whichever contender runs next."""
    await tm.records(limit=1)


class GcClock:
    """Seconds spent in the cyclic garbage collector (a `gc.callbacks` entry)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


GC_CLOCK = GcClock()


async def once(fn: Callable[[int], Awaitable[None]], n: int) -> tuple[float, float]:
    """Microseconds per task for one round, and how many of them the collector took."""
    gc.collect()
    in_gc = GC_CLOCK.seconds
    start = time.perf_counter()
    await fn(n)
    elapsed = time.perf_counter() - start
    return elapsed / n * 1e6, (GC_CLOCK.seconds - in_gc) / n * 1e6


async def main(sizes: list[int], repeat: int, one_at_a_time: int) -> None:
    # One manager, kept across rounds like an application's: the results it
    # keeps (up to max_finished) are part of what it costs.
    async with TaskManager(max_finished=max(sizes)) as tm:
        contenders: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
            ("asyncio.create_task + await", bare_asyncio),
            ("aiojobs 1.x spawn + wait", with_aiojobs),
            ("taskward create_task + result", with_taskward(tm)),
            ("taskward ... + wait (a record)", with_taskward_records(tm)),
        ]
        print(
            f"best of {repeat} interleaved rounds (the contenders take turns and the order"
            " rotates, so drift and the heap left by the one before hit all alike)"
        )
        print(
            f"{'tasks':>8}  {'contender':<30} {'us/task':>8}  {'vs asyncio':>10}"
            f"  {'of which in the garbage collector':>33}"
        )
        one_by_one: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
            ("asyncio, one at a time", bare_asyncio_one_by_one),
            ("aiojobs, one at a time", with_aiojobs_one_by_one),
            ("taskward, one at a time", with_taskward_one_by_one(tm)),
        ]
        gc.callbacks.append(GC_CLOCK)
        try:
            for n in sizes:
                await compare(contenders, n, repeat)
            if one_at_a_time:
                print("each task created and awaited before the next (the loop turns between)")
                await compare(one_by_one, one_at_a_time, repeat)
        finally:
            gc.callbacks.remove(GC_CLOCK)


async def best_of(
    fns: list[Callable[[int], Awaitable[None]]], n: int, repeat: int
) -> list[tuple[float, float]]:
    """Per contender, its best of `repeat` rounds of `n` tasks (microseconds per
    task, and of them in the collector); the contenders take turns, the order
    rotating."""
    best = [(float("inf"), 0.0)] * len(fns)
    for round_no in range(repeat):
        for k in range(len(fns)):
            i = (round_no + k) % len(fns)
            best[i] = min(best[i], await once(fns[i], n))
    return best


async def compare(
    contenders: list[tuple[str, Callable[[int], Awaitable[None]]]], n: int, repeat: int
) -> None:
    """Print each contender's best against the first's, the baseline."""
    best = await best_of([fn for _, fn in contenders], n, repeat)
    base = best[0][0]
    for (name, _), (us, in_gc) in zip(contenders, best, strict=True):
        print(
            f"{n:>8}  {name:<30} {us:>8.2f}  {us / base:>9.2f}x"
            f"  {in_gc:>25.2f} us ({in_gc / us:.0%})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument(
        "--one-at-a-time", type=int, default=5000, help="tasks in the sequential rounds (0: none)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.repeat, args.one_at_a_time))
