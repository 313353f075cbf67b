"""The same rules on Redis Cluster and behind Sentinel, with instances in separate processes.

Cluster: the whole lifecycle (progress, output, waits, listings, confirmed stops,
no ghosts) across two worker processes and the test process. Sentinel: the
master is killed while tasks finish; after the failover every outcome is in the
store and stops work again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

import pytest
from redis.asyncio.cluster import RedisCluster

from distributed_helpers import (
    ManagerFactory,
    WorkerPool,
    delete_prefix,
    eventually,
    index_size,
    task_hashes,
    timed,
)
from taskward import StopOutcome, TaskStatus
from taskward._redis import connect
from taskward.stores.keys import Keys

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from distributed_helpers import Worker
    from servers import ClusterProcesses, SentinelProcesses
    from taskward import TaskManager
    from taskward._redis import Client

logger = logging.getLogger(__name__)

LONG = 60.0


@pytest.fixture
async def cluster_client(cluster: ClusterProcesses) -> AsyncIterator[RedisCluster]:
    host, port = cluster.startup_nodes[0]
    client = RedisCluster(host=host, port=port)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.cluster
@pytest.mark.slow
async def test_the_whole_lifecycle_across_instances_on_a_cluster(
    cluster: ClusterProcesses, cluster_client: RedisCluster, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    try:
        async with (
            WorkerPool(cluster.url, key_prefix) as pool,
            ManagerFactory(cluster.url, key_prefix) as start_manager,
        ):
            # Owner A re-reads stop requests only every 5 s: fast stops come over pub/sub.
            a = await pool.launch("worker-a", heartbeat=5.0, liveness_ttl=15.0, max_output=3)
            b = await pool.launch("worker-b")
            here = await start_manager("observer")
            await lifecycle_on(cluster_client, keys, a, b, here)
    finally:
        await delete_prefix(cluster_client, keys)


async def lifecycle_on(client: Client, keys: Keys, a: Worker, b: Worker, here: TaskManager) -> None:
    # Progress and output from A, read on B and here.
    worker_task = await a.create(
        "progress", steps=6, interval=0.02, seconds=0.5, result={"ok": True}, user_id="u1"
    )
    rec, _ = await eventually(
        lambda: b.get(worker_task),
        timeout=3.0,
        what="progress on B",
        accept=lambda r: r is not None and r["progress"] == 1.0,
    )
    assert rec is not None and rec["status"] == "running"
    assert await b.read_output(worker_task) == [(4, "line 4"), (5, "line 5"), (6, "line 6")]
    assert [c.seq for c in await here.read_output(worker_task, after=5)] == [6]

    # A wait on B is woken by A's event, long before the 2 s safety poll.
    final = await b.wait(worker_task, timeout=10.0)
    assert final["status"] == "completed"
    assert final["result"] == {"ok": True}
    assert time.time() - final["finished_at"] < 0.5

    # Listing with a cursor across instances.
    created = [await a.create("sleep", seconds=LONG, user_id="u2") for _ in range(3)]
    created += [await b.create("sleep", seconds=LONG, user_id="u2") for _ in range(3)]
    first = await here.records(user_id="u2", limit=4)
    rest, cursor = await a.list_records(user_id="u2", limit=4, cursor=first.cursor)
    assert cursor is None
    listed = [r.task_id for r in first.records] + [r["task_id"] for r in rest]
    assert listed == created[::-1]

    # Confirmed stops: from B for A's task (pub/sub), from here for B's task.
    answer, took = await timed(b.stop(created[0]))
    assert answer["outcome"] == "cancelled", answer
    assert took < 1.0, f"stop over cluster pub/sub took {took:.2f}s"
    result = await here.stop_task(created[3])
    assert result.outcome is StopOutcome.CANCELLED
    results = await here.stop_item_tasks("nothing-here")
    assert results == []
    for task_id in created[1:3] + created[4:]:
        assert (await here.stop_task(task_id)).outcome is StopOutcome.CANCELLED

    # A burst leaves no ghosts.
    ids = await a.burst(200, "sleep", seconds=0.02, jitter=True)

    async def running_left() -> int:
        return await index_size(client, keys.status_index("running"))

    await eventually(running_left, timeout=5.0, what="an empty running index", accept=(0).__eq__)
    hashes = await task_hashes(client, keys)
    assert {hashes[t]["s"] for t in ids} == {"completed"}
    assert len(hashes) == 1 + len(created) + len(ids)


@pytest.mark.sentinel
@pytest.mark.slow
async def test_no_outcome_is_lost_when_the_master_fails_over(
    private_sentinel: SentinelProcesses, key_prefix: str
) -> None:
    url = private_sentinel.url
    keys = Keys(key_prefix)
    async with (
        WorkerPool(url, key_prefix) as pool,
        ManagerFactory(url, key_prefix) as start_manager,
    ):
        worker = await pool.launch("worker-a")
        here = await start_manager("observer")
        # Finishing every 0.25 s for 5 s: before, during and after the failover.
        finishing = [
            await worker.create("sleep", seconds=0.25 * i, result=f"r{i}", user_id="u1")
            for i in range(1, 21)
        ]
        long_running = [await worker.create("sleep", seconds=LONG, user_id="u1") for _ in range(3)]
        await asyncio.sleep(0.6)

        await asyncio.to_thread(private_sentinel.kill_master)
        killed = time.monotonic()
        address = await asyncio.to_thread(private_sentinel.wait_for_failover, 20.0)
        logger.info("failover to %s took %.2fs", address, time.monotonic() - killed)

        connection = connect(url)
        try:
            client = connection.client

            async def outcomes() -> list[str | None]:
                hashes = await task_hashes(client, keys)
                return [hashes.get(t, {}).get("s") for t in finishing]

            _, took = await eventually(
                outcomes,
                timeout=20.0,
                what="every outcome on the new master",
                accept=lambda s: s == ["completed"] * len(finishing),
            )
            logger.info("all outcomes on the new master %.2fs after the kill", took)
            hashes = await task_hashes(client, keys)
            assert [json.loads(hashes[t]["r"]) for t in finishing] == [
                f"r{i}" for i in range(1, 21)
            ]
            assert [hashes[t]["s"] for t in long_running] == ["running"] * 3, pool.logs()
            assert await worker.running_count() == 3

            # Stops work after the failover (both listeners followed the new master).
            result = await here.stop_task(long_running[0])
            assert result.outcome is StopOutcome.CANCELLED, (result, pool.logs())
            answer = await worker.stop(long_running[1])
            assert answer["outcome"] == "cancelled"
            rec = await here.wait(long_running[1], timeout=5.0)
            assert rec.status is TaskStatus.CANCELLED
            assert await index_size(client, keys.status_index("running")) == 1
        finally:
            await connection.aclose()
