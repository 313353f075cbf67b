"""The baseline side of `redis_lifecycle.py`: open-webui 0.12.4's own task code on Redis.

Runs in a separate venv that holds ``open-webui==0.12.4`` (installed without its
dependencies) and the few packages ``open_webui.tasks`` imports (see
`bench/setup_openwebui.sh`). Only ``open_webui.tasks`` is imported, and none of
its logic is replaced: tasks are created with its ``create_task(redis, coro,
id=item_id)`` on a client built the way the web UI builds its own
(``redis.asyncio.Redis.from_url(url, decode_responses=True, retry=...)``), with
its command listener and heartbeat running, as in the app.

A lifecycle is: ``create_task`` (its registration pipeline), the trivial
coroutine runs, and its done-callback cleanup (a second pipeline) has been
written. Results are not persisted: the web UI keeps none. Round trips are
counted on the client, one per write to the socket (a pipeline is one), by the
connection class below. Entries left behind are counted once every task and
every cleanup has finished. Prints one JSON object on stdout.

One deviation, needed to measure at all: redis-py 8 (open-webui pins 8.0.1)
gives an asyncio client a pool of at most 100 connections and raises
``MaxConnectionsError`` past that, and the web UI holds one connection per
concurrent registration and cleanup, so the timed runs use a bigger pool
(``--max-connections``, default 2 x burst + 16). What a burst does on the
default pool is measured separately (``as_shipped``).

    .bench-venv/openwebui/bin/python bench/openwebui_baseline.py --prefix P [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import json
import os
import secrets
import sys
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

if TYPE_CHECKING:
    import contextvars
    from collections.abc import Coroutine, Generator, Iterable

T = TypeVar("T")


class CountingConnection(aioredis.Connection):
    """Counts writes to the socket: one per command, one per pipeline."""

    round_trips: ClassVar[int] = 0

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        CountingConnection.round_trips += 1
        await super().send_packed_command(command, check_health)


class TaskTracker:
    """A task factory that remembers every task started, to wait for the cleanups.

    The web UI starts each cleanup with a bare ``asyncio.create_task`` in a
    done-callback and keeps no reference; this finds them (and their errors)
    without touching that code.
    """

    def __init__(self) -> None:
        self.started: list[asyncio.Task[Any]] = []

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        /,
        *,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        task = asyncio.Task(coro, loop=loop, context=context)
        self.started.append(task)
        return task

    async def settle(self) -> int:
        """Wait until every task started so far (and those they start) has finished.

        Returns how many cleanups raised (their errors are retrieved here, so
        asyncio does not log them as never retrieved).
        """
        me = asyncio.current_task()
        failed = 0
        while self.started:
            batch, self.started = self.started, []
            batch = [t for t in batch if t is not me and not _is_app_task(t)]
            outcomes = await asyncio.gather(*batch, return_exceptions=True)
            for task, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception) and _coro_name(task) == "cleanup_task":
                    failed += 1
        return failed


_APP_TASKS = frozenset({"redis_task_command_listener", "redis_task_heartbeat"})


def _coro_name(task: asyncio.Task[Any]) -> str:
    return getattr(task.get_coro(), "__name__", "")


def _is_app_task(task: asyncio.Task[Any]) -> bool:
    return _coro_name(task) in _APP_TASKS


async def trivial(i: int) -> int:
    return i


def import_tasks(prefix: str) -> Any:
    """``open_webui.tasks``, configured through the environment as the web UI is."""
    os.environ["REDIS_KEY_PREFIX"] = prefix
    os.environ.setdefault("WEBUI_SECRET_KEY", secrets.token_hex(16))
    os.environ.setdefault("GLOBAL_LOG_LEVEL", "WARNING")
    # open_webui.env prints notes on import ("dotenv not installed, skipping...");
    # stdout carries our JSON only, and the notes are shown only if the import fails.
    notes = io.StringIO()
    try:
        with contextlib.redirect_stdout(notes):
            return importlib.import_module("open_webui.tasks")
    except BaseException:
        sys.stderr.write(notes.getvalue())
        raise


def web_ui_client(url: str, *, counting: bool, max_connections: int | None) -> aioredis.Redis:
    """A client built as open_webui.utils.redis.get_redis_connection builds one.

    `max_connections=None` keeps redis-py's default pool.
    """
    retry = Retry(NoBackoff(), 1, supported_errors=(aioredis.ConnectionError,))
    options: dict[str, Any] = {"decode_responses": True, "retry": retry}
    if counting:
        options["connection_class"] = CountingConnection
    if max_connections is not None:
        options["max_connections"] = max_connections
    return aioredis.Redis.from_url(url, **options)


async def burst(
    owui: Any, client: aioredis.Redis, tracker: TaskTracker, n: int, items: int
) -> tuple[float, int, int]:
    """One burst of `n` concurrent lifecycles: (seconds, creates raised, cleanups raised).

    A create that raised has still started its task (the web UI starts the
    task before registering it); that task runs to its end all the same.
    """
    start = time.perf_counter()
    created = await asyncio.gather(
        *(owui.create_task(client, trivial(i), id=f"chat{i % items}") for i in range(n)),
        return_exceptions=True,
    )
    started = [c[1] for c in created if not isinstance(c, BaseException)]
    results = await asyncio.gather(*started)
    cleanup_errors = await tracker.settle()
    elapsed = time.perf_counter() - start
    create_errors = sum(isinstance(c, BaseException) for c in created)
    if not create_errors and results != list(range(n)):
        raise AssertionError("wrong results")
    return elapsed, create_errors, cleanup_errors


async def sequential(
    owui: Any, client: aioredis.Redis, tracker: TaskTracker, n: int
) -> tuple[float, int]:
    """`n` lifecycles one after another: (seconds, cleanups raised)."""
    failed = 0
    start = time.perf_counter()
    for i in range(n):
        _, task = await owui.create_task(client, trivial(i), id=f"chat{i % 64}")
        if await task != i:
            raise AssertionError("wrong result")
        failed += await tracker.settle()
    return time.perf_counter() - start, failed


async def left_behind(owui: Any, url: str, prefix: str) -> dict[str, int]:
    """What the web UI's keys still hold, read by a second client (another instance)."""
    async with web_ui_client(url, counting=False, max_connections=None) as other:
        hash_entries = int(await other.hlen(owui.REDIS_TASKS_KEY))
        item_members = 0
        async for key in other.scan_iter(match=f"{owui.REDIS_ITEM_TASKS_KEY}:*", count=1000):
            item_members += int(await other.scard(key))
        task_keys = 0
        async for key in other.scan_iter(match=f"{owui.REDIS_TASKS_KEY}:*", count=1000):
            # <prefix>:tasks:<task_id>, not the item sets or the response-stream hash
            if key.count(":") == prefix.count(":") + 2 and key != owui.REDIS_RESPONSE_STREAMS_KEY:
                task_keys += 1
        # What another instance's listing (open_webui.tasks.list_tasks) reports as running.
        listed = len(await owui.list_tasks(other))
    return {
        "hash_entries": hash_entries,
        "item_set_members": item_members,
        "task_keys": task_keys,
        "listed_running": listed,
    }


async def as_shipped(
    owui: Any, url: str, tracker: TaskTracker, n: int, items: int
) -> dict[str, Any]:
    """One burst on a client with redis-py's default pool, as the web UI builds it."""
    async with web_ui_client(url, counting=False, max_connections=None) as client:
        hash_before = int(await client.hlen(owui.REDIS_TASKS_KEY))
        local_before = len(owui.tasks)
        _, create_errors, cleanup_errors = await burst(owui, client, tracker, n, items)
        return {
            "size": n,
            "pool_max_connections": client.connection_pool.max_connections,
            "create_errors": create_errors,
            "cleanup_errors": cleanup_errors,
            "hash_entries_left": int(await client.hlen(owui.REDIS_TASKS_KEY)) - hash_before,
            "local_entries_left": len(owui.tasks) - local_before,
        }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    owui = import_tasks(args.prefix)
    tracker = TaskTracker()
    asyncio.get_running_loop().set_task_factory(tracker)
    pool = args.max_connections or 2 * args.burst + 16
    client = web_ui_client(args.redis, counting=True, max_connections=pool)
    app = SimpleNamespace(state=SimpleNamespace(redis=client))
    background = [
        asyncio.create_task(owui.redis_task_command_listener(app)),
        asyncio.create_task(owui.redis_task_heartbeat(app)),
    ]
    out: dict[str, Any] = {
        "open_webui_tasks": owui.__file__,
        "redis_py": redis.__version__,
        "pool_max_connections": pool,
    }
    try:
        await client.ping()
        for _ in range(args.warmup):
            await burst(owui, client, tracker, args.burst, args.items)
        rt = CountingConnection.round_trips
        seconds = 0.0
        create_errors = cleanup_errors = 0
        for _ in range(args.bursts):
            elapsed, errors, failed = await burst(owui, client, tracker, args.burst, args.items)
            seconds += elapsed
            create_errors += errors
            cleanup_errors += failed
        lifecycles = args.burst * args.bursts
        round_trips = CountingConnection.round_trips - rt
        out["burst"] = {
            "size": args.burst,
            "lifecycles": lifecycles,
            "seconds": seconds,
            "per_second": lifecycles / seconds,
            "round_trips": round_trips,
            "round_trips_per_lifecycle": round_trips / lifecycles,
            "create_errors": create_errors,
            "cleanup_errors": cleanup_errors,
            "connections_opened": len(client.connection_pool._available_connections),
            "left_behind": await left_behind(owui, args.redis, args.prefix),
            "lifecycles_incl_warmup": lifecycles + args.warmup * args.burst,
        }
        if args.sequential:
            await client.delete(owui.REDIS_TASKS_KEY)  # count this variant's leftovers alone
            rt = CountingConnection.round_trips
            seconds, failed = await sequential(owui, client, tracker, args.sequential)
            out["sequential"] = {
                "lifecycles": args.sequential,
                "seconds": seconds,
                "per_second": args.sequential / seconds,
                "round_trips_per_lifecycle": (CountingConnection.round_trips - rt)
                / args.sequential,
                "cleanup_errors": failed,
                "hash_entries_left": int(await client.hlen(owui.REDIS_TASKS_KEY)),
            }
        if args.as_shipped:
            out["as_shipped"] = await as_shipped(owui, args.redis, tracker, args.burst, args.items)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await client.aclose()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", metavar="URL")
    parser.add_argument("--prefix", required=True, help="REDIS_KEY_PREFIX for this run")
    parser.add_argument("--burst", type=int, default=400)
    parser.add_argument("--bursts", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2, help="bursts before measuring")
    parser.add_argument("--items", type=int, default=64, help="distinct item (chat) ids")
    parser.add_argument("--sequential", type=int, default=2000, help="0 to skip")
    parser.add_argument(
        "--max-connections", type=int, default=0, help="client pool size (default 2*burst+16)"
    )
    parser.add_argument(
        "--no-as-shipped",
        dest="as_shipped",
        action="store_false",
        help="skip the burst on redis-py's default pool",
    )
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
