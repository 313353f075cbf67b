"""Failures across OS processes: a worker killed with -9, and a Redis outage with data loss.

Rule 4 of the design: liveness is per instance (one short-TTL key), a crashed
instance's tasks are marked `lost` within seconds, and after an outage an
instance re-registers and re-asserts its running tasks before anyone may reap
them. Rule 3: outcomes reached while the store is away are queued and written
when it returns; nothing is dropped or duplicated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio

from distributed_helpers import (
    ManagerFactory,
    TcpProxy,
    WorkerPool,
    close_manager,
    eventually,
    index_size,
    members,
    task_hashes,
    timed,
)
from taskward import StopOutcome, TaskManager, TaskRecord, TaskStatus
from taskward.stores.keys import Keys

if TYPE_CHECKING:
    from servers import ServerProcess

pytestmark = pytest.mark.redis

logger = logging.getLogger(__name__)

LONG = 60.0


def statuses(hashes: dict[str, dict[str, str]], ids: list[str]) -> list[str | None]:
    return [hashes.get(t, {}).get("s") for t in ids]


# -- liveness ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_tasks_of_a_killed_worker_are_lost_within_five_seconds(
    pool: WorkerPool, start_manager: ManagerFactory, keys: Keys, redis_client: redis.asyncio.Redis
) -> None:
    # The defaults: heartbeat every 1 s, liveness TTL 3 s, everywhere.
    defaults = {"heartbeat": 1.0, "liveness_ttl": 3.0}
    doomed, survivor = await pool.launch_many("worker-doomed", "worker-survivor", **defaults)
    here = await start_manager("observer", heartbeat_interval=1.0, liveness_ttl=3.0)
    doomed_ids = [await doomed.create("sleep", seconds=LONG, user_id="u1") for _ in range(5)]
    kept_ids = [await survivor.create("sleep", seconds=LONG, user_id="u1") for _ in range(5)]
    waiter = asyncio.create_task(here.wait(doomed_ids[0], timeout=15.0))
    try:
        await asyncio.sleep(0.1)
        await doomed.kill()
        await lost_within_five_seconds(doomed_ids, waiter, here, keys, redis_client)
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)

    # The survivor's tasks are untouched, a full TTL later too.
    await asyncio.sleep(1.5)
    hashes = await task_hashes(redis_client, keys)
    assert statuses(hashes, kept_ids) == ["running"] * len(kept_ids)
    assert await survivor.running_count() == len(kept_ids)
    page = await here.records(user_id="u1", status="running")
    assert sorted(r.task_id for r in page.records) == sorted(kept_ids)


async def lost_within_five_seconds(
    doomed_ids: list[str],
    waiter: asyncio.Task[TaskRecord],
    here: TaskManager,
    keys: Keys,
    redis_client: redis.asyncio.Redis,
) -> None:
    killed = time.monotonic()

    async def doomed_statuses() -> list[str | None]:
        return statuses(await task_hashes(redis_client, keys), doomed_ids)

    _, took = await eventually(
        doomed_statuses,
        timeout=8.0,
        what="the killed worker's tasks marked lost",
        accept=lambda s: s == ["lost"] * len(doomed_ids),
    )
    assert took < 5.0, f"lost only {took:.2f}s after the kill (must be < 5 s)"
    logger.info("tasks of a killed instance marked lost after %.2fs", took)
    final = await asyncio.wait_for(waiter, 5.0)
    assert final.status is TaskStatus.LOST
    woke = time.monotonic() - killed
    assert woke < 6.0, f"a waiter on another instance learned of the loss after {woke:.2f}s"
    rec = await here.get_record(doomed_ids[1])
    assert rec is not None and rec.error is not None and rec.error.type == "TaskLost"
    assert rec.finished_at is not None
    stop = await here.stop_task(doomed_ids[2])
    assert stop.outcome is StopOutcome.ALREADY_FINISHED
    assert stop.status is TaskStatus.LOST
    assert await index_size(redis_client, keys.instance_tasks("worker-doomed")) == 0
    assert not await redis_client.sismember(keys.instances, "worker-doomed")


async def test_a_healthy_instance_is_never_presumed_dead(
    pool: WorkerPool, start_manager: ManagerFactory, keys: Keys, redis_client: redis.asyncio.Redis
) -> None:
    """Heartbeats that arrive in time must not send an instance down its recovery path.

    That path re-writes every running record on every tick, so an idle fleet with many
    running tasks would rewrite all of them each heartbeat.
    """
    worker = await pool.launch("worker-a", log_level="INFO")
    await start_manager("observer")
    ids = await worker.burst(50, "sleep", seconds=LONG)
    await asyncio.sleep(1.5)  # seven heartbeats, all well within the 1 s TTL
    assert await worker.running_count() == len(ids)
    hashes = await task_hashes(redis_client, keys)
    assert statuses(hashes, ids) == ["running"] * len(ids)
    recovering = [
        line for line in worker.stderr_text.splitlines() if "liveness had expired" in line
    ]
    assert not recovering, f"{len(recovering)} heartbeats took the recovery path: {recovering[:2]}"


# -- a Redis outage ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("retry_budget", "outage"),
    [
        pytest.param(None, 2.5, id="ridden-out-by-retries"),
        pytest.param(0.5, 3.0, id="longer-than-the-retry-budget"),
    ],
)
async def test_a_redis_outage_with_data_loss(
    private_redis: ServerProcess, key_prefix: str, retry_budget: float | None, outage: float
) -> None:
    """Stop the server (no persistence: it comes back empty), keep the worker running."""
    url = private_redis.url
    keys = Keys(key_prefix)
    async with (
        WorkerPool(url, key_prefix) as pool,
        ManagerFactory(url, key_prefix) as start_manager,
    ):
        worker = await pool.launch("worker-a", retry_budget=retry_budget)
        here = await start_manager("observer")
        keep = [await worker.create("sleep", seconds=LONG, user_id="u1") for _ in range(3)]
        ending = [
            await worker.create("sleep", seconds=1.0, result=f"r{i}", user_id="u1")
            for i in range(3)
        ]
        to_stop = await worker.create("sleep", seconds=LONG, user_id="u1")

        await asyncio.to_thread(private_redis.stop)
        down = time.monotonic()

        # During the outage: tasks run, a local stop is confirmed, finishing tasks finish,
        # and new tasks can be created (answered whenever the manager lets go of it).
        answer, took = await timed(worker.stop(to_stop))
        assert answer["outcome"] == "cancelled", answer
        # Bounded: the owner may wait a moment for the write (src: SYNC_TIMEOUT = 1 s),
        # never for the store's 10 s retry budget.
        assert took < 2.0, f"a local stop took {took:.2f}s during the outage"
        creating = asyncio.create_task(
            worker.create("noop", result="made offline", reply_timeout=30.0)
        )
        await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - down)))
        assert await worker.running_count() == len(keep)
        await asyncio.sleep(max(0.0, outage - (time.monotonic() - down)))
        assert worker.alive

        await asyncio.to_thread(private_redis.restart)
        back = time.monotonic()
        try:
            offline = await asyncio.wait_for(creating, 30.0)
        finally:
            creating.cancel()
        client = redis.asyncio.Redis.from_url(url)
        try:
            everything = [*keep, *ending, to_stop, offline]
            expected = [
                *(["running"] * len(keep)),
                *(["completed"] * len(ending)),
                "cancelled",
                "completed",
            ]

            async def stored() -> list[str | None]:
                return statuses(await task_hashes(client, keys), everything)

            _, took = await eventually(
                stored, timeout=15.0, what="every outcome written", accept=expected.__eq__
            )
            logger.info("store caught up %.2fs after the server came back", took)
            hashes = await task_hashes(client, keys)
            assert sorted(hashes) == sorted(everything), "records missing or duplicated"
            assert [json.loads(hashes[t]["r"]) for t in ending] == ["r0", "r1", "r2"]
            assert json.loads(hashes[offline]["r"]) == "made offline"
            assert sorted(await members(client, keys.status_index("running"))) == sorted(keep)
            assert sorted(await members(client, keys.instance_tasks("worker-a"))) == sorted(keep)

            # Nobody reaps the live worker afterwards (two TTLs of watching).
            while time.monotonic() - back < took + 2.5:
                hashes = await task_hashes(client, keys)
                assert statuses(hashes, keep) == ["running"] * len(keep), pool.logs()
                await asyncio.sleep(0.1)
            assert await worker.running_count() == len(keep)
            stats = await worker.stats()
            assert stats["connected"] is True
            assert stats["backlog"] == 0

            # Stops work across instances again.
            result = await here.stop_task(keep[0])
            assert result.outcome is StopOutcome.CANCELLED, (result, pool.logs())
        finally:
            await client.aclose()


@pytest.mark.slow
@pytest.mark.parametrize(
    "retry_budget",
    [
        pytest.param(None, id="still-retrying-when-it-heals"),
        pytest.param(0.3, id="gave-up-and-queued-locally"),
    ],
)
async def test_an_instance_cut_off_longer_than_its_ttl_cancels_what_was_marked_lost(
    pool: WorkerPool,
    start_manager: ManagerFactory,
    keys: Keys,
    redis_client: redis.asyncio.Redis,
    redis_url: str,
    retry_budget: float | None,
) -> None:
    """Only the worker loses Redis (a partition): the others rightly mark its tasks lost.

    When it comes back, terminal states never change, so those tasks stay `lost`, and
    the worker must stop running them: nobody could read or stop them any more.
    """
    host, port = (
        redis_client.connection_pool.connection_kwargs["host"],
        int(redis_client.connection_pool.connection_kwargs["port"]),
    )
    async with TcpProxy(host, port) as proxy:
        worker = await pool.launch("worker-a", redis_url=proxy.url, retry_budget=retry_budget)
        here = await start_manager("observer")
        long_ids = [await worker.create("sleep", seconds=LONG) for _ in range(2)]
        ending = await worker.create("sleep", seconds=1.5, result="too late")

        await proxy.cut()

        async def stored() -> list[str | None]:
            return statuses(await task_hashes(redis_client, keys), [*long_ids, ending])

        _, took = await eventually(
            stored,
            timeout=5.0,
            what="the cut-off worker's tasks lost",
            accept=lambda s: s == ["lost"] * 3,
        )
        logger.info("tasks of the cut-off worker marked lost after %.2fs", took)
        await asyncio.sleep(max(0.0, 3.0 - took))
        await proxy.heal()
        healed = time.monotonic()

        _, waited = await eventually(
            worker.running_count,
            timeout=4.0,
            what="the worker to stop running tasks the store says are lost",
            accept=(0).__eq__,
        )
        logger.info("worker dropped its lost tasks %.2fs after the partition healed", waited)
        assert await stored() == ["lost"] * 3  # terminal states never change
        assert await members(redis_client, keys.instance_tasks("worker-a")) == []
        assert await members(redis_client, keys.status_index("running")) == []

        # The worker is a full member again: new tasks are visible and stoppable.
        fresh = await worker.create("sleep", seconds=LONG)
        assert (await here.get_record(fresh) or TaskRecord("")).status is TaskStatus.RUNNING
        result = await here.stop_task(fresh)
        assert result.outcome is StopOutcome.CANCELLED, (result, pool.logs())
        assert time.monotonic() - healed < 15.0


@pytest.mark.slow
async def test_create_task_does_not_wait_for_an_unreachable_store(
    private_redis: ServerProcess, key_prefix: str
) -> None:
    """The manager's own contract: "an unreachable store does not block" task creation."""
    async with WorkerPool(private_redis.url, key_prefix) as pool:
        worker = await pool.launch("worker-a")  # default retry budget (10 s)
        await asyncio.to_thread(private_redis.stop)
        try:
            try:
                task_id, took = await timed(
                    worker.create("noop", result="ran anyway", reply_timeout=3.0)
                )
            except TimeoutError:
                pytest.fail("create_task blocked more than 3 s on an unreachable store")
            logger.info("create_task with the server down answered after %.2fs", took)
            assert took < 2.0, f"create_task blocked {took:.2f}s on an unreachable store"
            record = await worker.get(task_id)
            assert record is not None and record["status"] == "completed"
        finally:
            await asyncio.to_thread(private_redis.restart)


async def test_aclose_returns_while_housekeeping_is_talking_to_redis(
    redis_url: str, keys: Keys
) -> None:
    """Closing must not depend on the housekeeping task honouring one cancellation.

    redis-py (8.1, CPython 3.11) can swallow a cancellation that lands while a command
    is in flight; a manager whose housekeeper is mid-heartbeat then never closed.
    A tiny heartbeat interval keeps the housekeeper inside Redis calls almost always.
    """
    for attempt in range(8):
        tm = TaskManager(
            redis=redis_url,
            prefix=keys.prefix,
            instance_id=f"closer-{attempt}",
            heartbeat_interval=0.001,
            liveness_ttl=1.0,
            shutdown_grace=0.0,
        )
        await tm.start()
        await asyncio.sleep(0.1)
        closed = await close_manager(tm, timeout=2.0)
        assert closed, f"aclose() hung (attempt {attempt + 1}); it only ended when cancelled again"
