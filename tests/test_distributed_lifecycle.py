"""Task lifecycles seen across OS processes: no ghosts, prompt waits, output, retention, paging.

Workers (`tests/instance_worker.py`) run the tasks; the test process runs its own
`TaskManager` as one more instance and reads what the workers wrote, straight
from the server too (key names from `taskward.stores.keys.Keys`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from distributed_helpers import (
    ManagerFactory,
    WorkerPool,
    eventually,
    index_size,
    scan_keys,
    task_hashes,
    timed,
)
from taskward import TaskNotFound, TaskStatus

if TYPE_CHECKING:
    import redis.asyncio

    from taskward.stores.keys import Keys

pytestmark = pytest.mark.redis

BURST = 500


# -- no ghosts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param({"kind": "noop"}, id="instant"),
        pytest.param({"kind": "sleep", "seconds": 0.05}, id="together-after-a-sleep"),
        pytest.param({"kind": "sleep", "seconds": 0.05, "jitter": True}, id="spread-out"),
    ],
)
async def test_a_burst_of_trivial_tasks_leaves_no_ghosts(
    pool: WorkerPool,
    start_manager: ManagerFactory,
    keys: Keys,
    redis_client: redis.asyncio.Redis,
    shape: dict[str, Any],
) -> None:
    worker = await pool.launch("worker-a")
    await start_manager("observer")  # a peer: the worker publishes events as well
    ids = await worker.burst(BURST, result="done", item_id="chat-1", user_id="u1", **shape)
    assert len(set(ids)) == BURST

    async def running_left() -> int:
        return await index_size(redis_client, keys.status_index("running"))

    await eventually(running_left, timeout=5.0, what="an empty running index", accept=(0).__eq__)
    hashes = await task_hashes(redis_client, keys)
    assert sorted(hashes) == sorted(ids), "records missing or extra under the prefix"
    not_done = {t: h.get("s") for t, h in hashes.items() if h.get("s") != "completed"}
    assert not not_done, f"{len(not_done)} records not completed: {list(not_done.items())[:5]}"
    assert {h.get("r") for h in hashes.values()} == {json.dumps("done")}
    assert await index_size(redis_client, keys.instance_tasks("worker-a")) == 0
    assert await index_size(redis_client, keys.status_index("completed")) == BURST
    assert await index_size(redis_client, keys.all) == BURST
    stats = await worker.stats()
    assert stats["running"] == 0
    assert stats["backlog"] == 0
    # Nothing keeps a handle for a finished task once it is written (bounded memory).
    await eventually(
        worker.stats, timeout=2.0, what="no local handles", accept=lambda s: not s["local"]
    )


async def test_bursts_on_two_workers_at_once_leave_no_ghosts(
    pool: WorkerPool, start_manager: ManagerFactory, keys: Keys, redis_client: redis.asyncio.Redis
) -> None:
    a, b = await pool.launch_many("worker-a", "worker-b")
    here = await start_manager("observer")
    on_a, on_b = await asyncio.gather(
        a.burst(BURST // 2, "sleep", seconds=0.02, jitter=True, item_id="chat-2"),
        b.burst(BURST // 2, "noop", item_id="chat-2"),
    )

    async def running_left() -> int:
        return await index_size(redis_client, keys.status_index("running"))

    await eventually(running_left, timeout=5.0, what="an empty running index", accept=(0).__eq__)
    hashes = await task_hashes(redis_client, keys)
    assert sorted(hashes) == sorted(on_a + on_b)
    assert {h.get("s") for h in hashes.values()} == {"completed"}
    assert await here.list_task_ids_by_item_id("chat-2") == []
    page = await here.records(item_id="chat-2", status="running")
    assert page.records == []


# -- waiting across instances -------------------------------------------------------------------


async def test_a_wait_on_another_instance_is_woken_by_the_finish_event(
    pool: WorkerPool, start_manager: ManagerFactory
) -> None:
    owner = await pool.launch("worker-a")
    other = await pool.launch("worker-b")
    here = await start_manager("observer")
    first = await owner.create("sleep", seconds=1.0, result={"answer": 42}, user_id="u1")
    second = await owner.create("sleep", seconds=1.2, result="two")

    # await_result here (the safety poll is every 2 s: only the event is this prompt)...
    text, waited_here = await timed(here.await_result(first, timeout=10.0, user_id="u1"))
    envelope = json.loads(text)
    assert envelope["status"] == "completed", envelope
    assert envelope["result"] == {"answer": 42}
    rec = await here.get_record(first)
    assert rec is not None and rec.finished_at is not None
    lag = time.time() - rec.finished_at
    assert lag < 0.5, f"await_result returned {lag:.2f}s after the task finished"
    assert waited_here < 5.0

    # ... and `wait` in a third process.
    final = await other.wait(second, timeout=10.0)
    assert final["status"] == "completed"
    assert final["result"] == "two"
    lag = time.time() - final["finished_at"]
    assert lag < 0.5, f"wait on worker-b answered {lag:.2f}s after the task finished"


async def test_await_result_of_another_users_task_is_not_found(
    pool: WorkerPool, start_manager: ManagerFactory
) -> None:
    owner = await pool.launch("worker-a")
    here = await start_manager("observer")
    task_id = await owner.create("sleep", seconds=0.3, user_id="u1")
    envelope = json.loads(await here.await_result(task_id, timeout=2.0, user_id="u2"))
    assert envelope["status"] == "not_found"
    with pytest.raises(TaskNotFound):
        await here.wait(task_id, timeout=2.0, user_id="u2")


# -- progress and output --------------------------------------------------------------------------


async def test_progress_and_output_are_readable_from_another_instance(
    pool: WorkerPool, start_manager: ManagerFactory, keys: Keys, redis_client: redis.asyncio.Redis
) -> None:
    # The observer first: the owner then knows from its start that someone listens
    # (a bus learns of later listeners from their announcement, a moment later).
    here = await start_manager("observer", max_output=5, result_ttl=1.5)
    owner = await pool.launch("worker-a", max_output=5, result_ttl=1.5)
    steps = 20
    async with here.events(kinds=["output", "progress"]) as stream:
        task_id = await owner.create(
            "progress", steps=steps, interval=0.02, seconds=0.6, result="written", user_id="u1"
        )

        # Progress, while it runs, from the store.
        rec, _ = await eventually(
            lambda: here.get_record(task_id),
            timeout=3.0,
            what="progress 1.0",
            accept=lambda r: r is not None and r.progress == 1.0,
        )
        assert rec is not None
        assert rec.status is TaskStatus.RUNNING
        assert rec.progress_message == f"step {steps}/{steps}"

        # Output: only the last `max_output` chunks are kept, and reads resume from a cursor.
        chunks = await here.read_output(task_id, user_id="u1")
        assert [(c.seq, c.data) for c in chunks] == [(s, f"line {s}") for s in range(16, 21)]
        assert await here.read_output(task_id, after=18) == chunks[3:]
        assert await here.read_output(task_id, after=17, limit=2) == chunks[2:4]
        assert await here.read_output(task_id, after=20) == []
        assert await owner.read_output(task_id, after=19) == [(20, "line 20")]
        with pytest.raises(TaskNotFound):
            await here.read_output(task_id, user_id="u2")

        # The same stream, live, through the bus: every chunk in order, then progress.
        seen: list[tuple[int, str]] = []
        fractions: list[float] = []
        async with asyncio.timeout(3.0):
            async for event in stream:
                if event.kind == "output":
                    assert event.seq is not None and event.data is not None
                    seen.append((event.seq, event.data))
                elif event.record is not None and event.record.progress is not None:
                    fractions.append(event.record.progress)
                if len(seen) == steps and fractions and fractions[-1] == 1.0:
                    break
        assert seen == [(s, f"line {s}") for s in range(1, steps + 1)]
        assert fractions == sorted(fractions)

    final = await here.wait(task_id, timeout=5.0)
    assert final.status is TaskStatus.COMPLETED
    assert final.result == "written"
    assert [c.seq for c in await here.read_output(task_id)] == [16, 17, 18, 19, 20]

    # The output expires with its record (result_ttl = 1.5 s).
    assert await redis_client.exists(keys.output(task_id))
    await eventually(
        lambda: here.get_record(task_id), timeout=4.0, what="expiry", accept=lambda r: r is None
    )
    assert not await redis_client.exists(keys.output(task_id))
    with pytest.raises(TaskNotFound):
        await here.read_output(task_id)
    assert await owner.get(task_id) is None


# -- retention and listings ---------------------------------------------------------------------


async def test_finished_records_and_their_index_entries_expire(
    pool: WorkerPool, start_manager: ManagerFactory, keys: Keys, redis_client: redis.asyncio.Redis
) -> None:
    ttl = 1.0
    a, b = await pool.launch_many("worker-a", "worker-b", result_ttl=ttl)
    here = await start_manager("observer", result_ttl=ttl)
    done = await a.burst(30, "noop", user_id="u1", item_id="chat-3")
    failed = await b.create("fail", user_id="u1", item_id="chat-3", message="on purpose")
    alive = await b.create("sleep", seconds=60.0, user_id="u1", item_id="chat-3")
    await here.wait(failed, timeout=5.0)
    assert len(await task_hashes(redis_client, keys)) == 32

    async def leftovers() -> list[str]:
        names = await scan_keys(redis_client, keys.pattern)
        # Instance bookkeeping (liveness, sets) belongs to the live workers, not to tasks.
        return [
            n
            for n in names
            if not n.startswith(keys.instance_prefix) and n not in (keys.instances, keys.heartbeats)
        ]

    expected = sorted(
        [
            keys.all,
            keys.task(alive),
            keys.user_index("u1"),
            keys.item_index("chat-3"),
            keys.status_index("running"),
        ]
    )
    # (Kept until then: all 32 records were there after the tasks finished, above.)
    await eventually(leftovers, timeout=ttl + 4.0, what="retention", accept=lambda n: n == expected)
    for index in (keys.all, keys.user_index("u1"), keys.item_index("chat-3")):
        members = await redis_client.zrange(index, 0, -1)
        assert members == [alive.encode()], index
    page = await here.records(user_id="u1")
    assert [r.task_id for r in page.records] == [alive]
    for task_id in (*done[:3], failed):
        assert await here.get_record(task_id) is None
        assert await a.get(task_id) is None


async def test_listing_pages_with_a_cursor_across_instances(
    pool: WorkerPool, start_manager: ManagerFactory
) -> None:
    a, b = await pool.launch_many("worker-a", "worker-b")
    here = await start_manager("observer")
    created: list[str] = []
    for i in range(12):  # alternate owners, one at a time: a known creation order
        worker = a if i % 2 == 0 else b
        created.append(await worker.create("sleep", seconds=60.0, user_id="u7", item_id="chat-7"))
    await b.create("sleep", seconds=60.0, user_id="someone-else", item_id="chat-7")
    newest_first = created[::-1]

    # Pages of 5 here, then the cursor handed to another process, and back.
    first = await here.records(user_id="u7", limit=5)
    assert [r.task_id for r in first.records] == newest_first[:5]
    assert first.cursor is not None
    second, cursor = await a.list_records(user_id="u7", limit=5, cursor=first.cursor)
    assert [r["task_id"] for r in second] == newest_first[5:10]
    assert cursor is not None
    third = await here.records(user_id="u7", limit=5, cursor=cursor)
    assert [r.task_id for r in third.records] == newest_first[10:]
    assert third.cursor is None

    # Filters combine across owners; the running listing follows stops made elsewhere.
    owners = {r.task_id: r.instance_id for r in (first.records + third.records)}
    assert set(owners.values()) == {"worker-a", "worker-b"}
    stopped = await b.stop(created[0])
    assert stopped["outcome"] == "cancelled"
    running, _ = await b.list_records(user_id="u7", status="running", limit=100)
    assert sorted(r["task_id"] for r in running) == sorted(created[1:])
    cancelled = await here.records(user_id="u7", status="cancelled")
    assert [r.task_id for r in cancelled.records] == [created[0]]
    everyone = await here.records(item_id="chat-7", limit=100)
    assert len(everyone.records) == 13
