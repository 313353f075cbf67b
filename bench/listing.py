"""What the first page of a listing costs with few records kept and with many.

Fills a store with `--small` records, then another with `--large` (1,000 and
1,000,000; `--quick`: 1,000 and 100,000), spread as an application's are: 10
users, 10 tasks per item (a chat), 5% running, 75% completed, 10% failed, 5%
cancelled, 5% lost: every listing timed fills its page at both sizes, or
finds the same few records at both. Then times the first page (50 records) of a
listing by each filter and by combinations of them, and a page read from a
cursor halfway down the unfiltered listing, best of `--repeat` reads each. A
listing that reads an index costs about the same at both sizes (a ratio near
1); one that goes over the records kept grows with them.

The memory store always; a Redis store too with ``--redis [URL]`` (default
``redis://127.0.0.1:6379/0``), under a key prefix of its own that is deleted
afterwards.

    python bench/listing.py [--quick] [--redis [URL]] [--repeat 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from taskward import TaskError, TaskRecord, TaskStatus
from taskward.stores.base import Retention, Row, Store, WriteBatch, record_to_row
from taskward.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager

    OpenStore = Callable[[], AbstractAsyncContextManager[Store]]

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
USERS = 10
TASKS_PER_ITEM = 10
PAGE = 50
WRITE = 5_000  # records per store write while filling
# (status, share of the records), in the order records are given statuses.
MIX = [
    (TaskStatus.RUNNING, 5),
    (TaskStatus.COMPLETED, 75),
    (TaskStatus.FAILED, 10),
    (TaskStatus.CANCELLED, 5),
    (TaskStatus.LOST, 5),
]
STATUS_OF = [status for status, share in MIX for _ in range(share)]  # 100 slots

FILTERS: list[tuple[str, dict[str, Any]]] = [
    ("all tasks", {}),
    ("user", {"user_id": "user-7"}),
    ("item", {"item_id": "item-3"}),
    ("status running", {"status": TaskStatus.RUNNING}),
    ("status completed", {"status": TaskStatus.COMPLETED}),
    ("status lost", {"status": TaskStatus.LOST}),
    ("user + status completed", {"user_id": "user-7", "status": TaskStatus.COMPLETED}),
    ("user + item", {"user_id": "user-3", "item_id": "item-3"}),
    ("item + status completed", {"item_id": "item-3", "status": TaskStatus.COMPLETED}),
]
FROM_CURSOR = "all tasks, from a cursor halfway"


def row(i: int, now: float) -> Row:
    """The i-th record: created one ms after the one before, finished at once."""
    status = STATUS_OF[(i * 61 + i // USERS * 17) % 100]  # spread over users and items
    created = now - 3600 + i / 1000
    terminal = status is not TaskStatus.RUNNING
    return record_to_row(
        TaskRecord(
            f"task-{i:08d}",
            status,
            name="tool",
            item_id=f"item-{i // TASKS_PER_ITEM}",
            user_id=f"user-{i % USERS}",
            instance_id="bench",
            created_at=created,
            started_at=created,
            updated_at=created,
            finished_at=created if terminal else None,
            result=i if status is TaskStatus.COMPLETED else None,
            error=TaskError("RuntimeError", "no") if status is TaskStatus.FAILED else None,
        )
    )


async def fill(store: Store, n: int) -> float:
    """Write `n` records; seconds it took."""
    now = time.time()
    started = time.perf_counter()
    for first in range(0, n, WRITE):
        rows = [row(i, now) for i in range(first, min(n, first + WRITE))]
        await store.save(WriteBatch(rows, {}, now))
    return time.perf_counter() - started


async def cursor_halfway(store: Store, total: int) -> str:
    """A cursor to the middle of the unfiltered listing of `total` records, found by
    paging with big pages."""
    cursor: str | None = None
    seen = 0
    while True:
        page = await store.query(limit=min(10_000, total // 2 - seen), cursor=cursor)
        seen += len(page.records)
        cursor = page.cursor
        if cursor is None:
            raise RuntimeError("the listing ended before its middle")
        if seen >= total // 2:
            return cursor


async def best_read(store: Store, repeat: int, **filters: Any) -> float:
    """Milliseconds of the fastest of `repeat` reads of one page."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        page = await store.query(limit=PAGE, **filters)
        best = min(best, time.perf_counter() - started)
        if not page.records:
            raise RuntimeError(f"nothing listed for {filters}")
    return best * 1000


async def measure(store: Store, n: int, repeat: int) -> dict[str, float]:
    seconds = await fill(store, n)
    print(f"  {n:>9,} records written in {seconds:.1f} s")
    times = {name: await best_read(store, repeat, **filters) for name, filters in FILTERS}
    times[FROM_CURSOR] = await best_read(store, repeat, cursor=await cursor_halfway(store, n))
    return times


async def compare(kind: str, open_store: OpenStore, sizes: list[int], repeat: int) -> None:
    print(f"{kind} store")
    results: list[dict[str, float]] = []
    for n in sizes:
        async with open_store() as store:
            results.append(await measure(store, n, repeat))
    small, large = results
    print(
        f"  {'first page of ' + str(PAGE) + ', by':<36} {sizes[0]:>9,} kept"
        f" {sizes[1]:>11,} kept  {'ratio':>7}"
    )
    for name in [*(name for name, _ in FILTERS), FROM_CURSOR]:
        ratio = large[name] / small[name]
        print(f"  {name:<36} {small[name]:>9.3f} ms {large[name]:>11.3f} ms  {ratio:>6.2f}x")


def memory_stores(n: int) -> OpenStore:
    @asynccontextmanager
    async def open_one() -> AsyncIterator[Store]:
        yield MemoryStore(Retention(result_ttl=86_400, max_finished=n))

    return open_one


def redis_stores(url: str, n: int) -> OpenStore:
    @asynccontextmanager
    async def open_one() -> AsyncIterator[Store]:
        from _common import delete_prefix, new_prefix
        from taskward._redis import connect
        from taskward.stores.keys import Keys
        from taskward.stores.redis import RedisStore

        prefix = new_prefix("listing")
        connection = connect(url)
        try:
            store = RedisStore(
                connection.client,
                keys=Keys(prefix),
                retention=Retention(result_ttl=86_400, max_finished=n),
            )
            await store.start()
            yield store
        finally:
            await connection.aclose()
            delete_prefix(url, prefix)

    return open_one


async def main(args: argparse.Namespace) -> None:
    sizes = [args.small, 100_000 if args.quick else args.large]
    print(
        f"best of {args.repeat} reads of each page; {USERS} users, {TASKS_PER_ITEM} tasks an item"
    )
    await compare("memory", memory_stores(max(sizes)), sizes, args.repeat)
    if args.redis is not None:
        await compare("redis", redis_stores(args.redis, max(sizes)), sizes, args.repeat)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 records as the large size")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--redis",
        nargs="?",
        const=DEFAULT_REDIS,
        default=None,
        metavar="URL",
        help=f"also a Redis store (default URL {DEFAULT_REDIS})",
    )
    asyncio.run(main(parser.parse_args()))
